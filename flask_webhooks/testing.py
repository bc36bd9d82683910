"""Helpers for testing an application that uses flask-webhooks.

Two ways to check what your app sends, from its own test suite:

:func:`capture_deliveries`
    No network, no worker: while the context is open, deliveries run
    synchronously right after each commit (like the ``immediate://`` queue)
    and the HTTP requests they would send are recorded instead of sent. The
    whole delivery pipeline runs (outbox row, request building, signing,
    attempt log), only the transport is replaced.

:class:`RecordingReceiver`
    A real HTTP server on ``127.0.0.1`` that records every request and
    answers as scripted (status, headers, body, delay: :class:`Answer`), for
    end-to-end tests that go through the real transport.

.. code-block:: python

    from flask_webhooks.testing import capture_deliveries

    def test_new_site_notifies_the_crm(app, db):
        with capture_deliveries(app) as sent:
            db.session.add(Site(name="Berlin 1"))
            db.session.commit()

        (request,) = sent.requests
        assert request.webhook == "crm"
        assert request.json()["event"] == "created"
        assert request.verify("the-webhook-secret")

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import threading
import time
import typing as t
from collections import deque
from dataclasses import dataclass
from dataclasses import field
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

import sqlalchemy as sa
from flask import current_app
from flask import Flask

from . import models as m
from .signing import SIGNATURE_HEADER
from .signing import STANDARD_SIGNATURE_HEADER
from .signing import verify
from .signing import verify_standard
from .transport import HTTPRequest
from .transport import HTTPResult

if t.TYPE_CHECKING:
    import ssl

    from .extension import WebhooksState

__all__ = [
    "Answer",
    "CapturedRequest",
    "DeliveryRecorder",
    "ReceivedRequest",
    "RecordingReceiver",
    "capture_deliveries",
]


def _verify_headers(
    secret: str, headers: t.Mapping[str, str], body: bytes, *, now: float | None
) -> bool:
    """True if at least one signature is present and every present one verifies."""
    lowered = {k.lower(): v for k, v in headers.items()}
    results: list[bool] = []
    netbox = lowered.get(SIGNATURE_HEADER.lower())
    if netbox is not None:
        results.append(verify(secret, body, netbox))
    if STANDARD_SIGNATURE_HEADER in lowered:
        try:
            results.append(verify_standard(secret, lowered, body, now=now))
        except ValueError:
            results.append(False)
    return bool(results) and all(results)


@dataclass(frozen=True)
class CapturedRequest:
    """One HTTP request a delivery attempt would have sent.

    ``method``, ``url``, ``headers`` and ``body`` are exactly what the
    transport was given (built by :func:`flask_webhooks.delivery.build_request`,
    signed); the other fields come from the delivery row.
    """

    delivery_id: str
    #: The webhook's name.
    webhook: str
    event: str
    model: str
    object_id: str
    #: The attempt number (``X-Webhook-Attempt``), 1 for the first.
    attempt: int
    method: str
    url: str
    headers: t.Mapping[str, str]
    body: bytes
    #: The status the recorder answered with.
    status_code: int | None

    def json(self) -> t.Any:
        """The body parsed as JSON (the payload for the default body)."""
        return json.loads(self.body)

    def verify(self, secret: str) -> bool:
        """Whether the request's signature headers verify with ``secret``.

        ``X-Hook-Signature`` and the Standard Webhooks headers are checked
        when present; at least one must be present and all must verify.
        """
        return _verify_headers(secret, self.headers, self.body, now=None)


def _result(answer: int | HTTPResult) -> HTTPResult:
    if isinstance(answer, HTTPResult):
        return answer
    status = int(answer)
    if 200 <= status < 300:
        return HTTPResult(status, body_excerpt="ok")
    kind = "redirect" if 300 <= status < 400 else "http"
    return HTTPResult(status, error=f"HTTP {status}", error_kind=kind)


class _RecordingTransport:
    """Stands in for :class:`~flask_webhooks.transport.Transport`: records, answers."""

    def __init__(self, recorder: DeliveryRecorder) -> None:
        self.recorder = recorder

    def send(self, request: HTTPRequest) -> HTTPResult:
        return self.recorder._record(request)

    def close(self) -> None:
        pass


class DeliveryRecorder:
    """What :func:`capture_deliveries` saw. Use it inside or after the block.

    :param state: the app's flask-webhooks state.
    :param status: the default answer to every request (a 2xx marks the
        delivery ``succeeded``).
    """

    def __init__(self, state: WebhooksState, status: int = 200) -> None:
        self._state = state
        self._lock = threading.Lock()
        self._answers: deque[HTTPResult] = deque()
        self._default = status
        self._started = m.utcnow() - dt.timedelta(microseconds=1)
        #: Every request, in the order they would have been sent.
        self.requests: list[CapturedRequest] = []
        #: Retries the delivery engine asked for: ``(delivery_id, delay_seconds)``.
        #: Nothing waits for them; see :meth:`run_scheduled`.
        self.scheduled: list[tuple[str, float]] = []

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> t.Iterator[CapturedRequest]:
        return iter(list(self.requests))

    def respond(self, *answers: int | HTTPResult) -> None:
        """Script the answers to the next requests (status codes or results).

        ``sent.respond(500, 200)``: the next attempt fails (and a retry is
        scheduled), the one after succeeds. Later requests get the default.
        """
        with self._lock:
            self._answers.extend(_result(a) for a in answers)

    def events(self) -> list[tuple[str, str, str]]:
        """``(event, model, object_id)`` of every request, in order."""
        return [(r.event, r.model, r.object_id) for r in self.requests]

    def for_webhook(self, name: str) -> list[CapturedRequest]:
        """The requests of one webhook, by name."""
        return [r for r in self.requests if r.webhook == name]

    def deliveries(self) -> list[t.Any]:
        """Delivery rows created since the capture began, oldest first.

        Includes rows that were never sent, such as deliveries recorded as
        ``failed`` at capture time because the schema or body template raised.
        They are :attr:`flask_webhooks.Webhooks.Delivery` objects with their
        ``attempt_history`` loaded, read in a session of their own (so your
        ``db.session`` is left alone) and detached from it.
        """
        from sqlalchemy.orm import selectinload
        from sqlalchemy.orm import Session

        D = self._state.models.Delivery
        stmt = (
            sa.select(D)
            .where(D.created_at >= self._started)
            .order_by(D.created_at, D.id)
            .options(selectinload(D.attempt_history))
        )
        with Session(self._state.engine()) as session:
            return list(session.scalars(stmt))

    def clear(self) -> None:
        """Forget the recorded requests and scheduled retries."""
        with self._lock:
            self.requests.clear()
            self.scheduled.clear()

    def run_scheduled(self) -> int:
        """Run the scheduled retries now, without waiting; return how many ran.

        Retries scheduled by these attempts are recorded again, so call it
        repeatedly to walk through a retry schedule.
        """
        from .sweeping import requeue

        with self._lock:
            due, self.scheduled = self.scheduled, []
        ids = requeue(self._state, [delivery_id for delivery_id, _ in due])
        self._deliver(ids)
        return len(ids)

    # -- internals ---------------------------------------------------------------

    def _enqueue(
        self,
        ids: t.Iterable[str],
        delay: float | None = None,
        *,
        keys: t.Sequence[t.Hashable] | None = None,
    ) -> None:
        ids = list(ids)
        if delay:
            with self._lock:
                self.scheduled.extend((i, float(delay)) for i in ids)
            return
        self._deliver(ids)

    def _deliver(self, ids: t.Iterable[str]) -> None:
        from .delivery import deliver

        app = self._state.app
        for delivery_id in ids:
            with app.app_context():
                deliver(self._state, delivery_id)

    def _record(self, request: HTTPRequest) -> HTTPResult:
        with self._lock:
            answer = (
                self._answers.popleft() if self._answers else _result(self._default)
            )
        delivery_id = request.headers.get("X-Webhook-ID", "")
        D = self._state.models.Delivery.__table__
        with self._state.engine().connect() as conn:
            row = conn.execute(
                sa.select(D.c.webhook_name, D.c.event, D.c.model, D.c.object_id).where(
                    D.c.id == delivery_id
                )
            ).one_or_none()
        captured = CapturedRequest(
            delivery_id=delivery_id,
            webhook=row.webhook_name if row is not None else "",
            event=row.event if row is not None else "",
            model=row.model if row is not None else "",
            object_id=row.object_id if row is not None else "",
            attempt=int(request.headers.get("X-Webhook-Attempt", "1")),
            method=request.method,
            url=request.url,
            headers=dict(request.headers),
            body=request.body,
            status_code=answer.status_code,
        )
        with self._lock:
            self.requests.append(captured)
        return answer


_MISSING = object()


@contextlib.contextmanager
def capture_deliveries(
    app: Flask | None = None, *, status: int = 200
) -> t.Iterator[DeliveryRecorder]:
    """Deliver synchronously and record the requests instead of sending them.

    While the block runs, every delivery enqueued by a commit is attempted at
    once in the committing thread, whatever ``WEBHOOKS_QUEUE_URL`` says, and
    no embedded worker is started. The attempt is real (the delivery row is
    claimed, the request built and signed, the attempt and the result
    recorded) except that the request goes to the recorder, which answers
    ``status``. Retries are recorded in :attr:`DeliveryRecorder.scheduled`
    instead of waiting.

    :param app: the app; default ``current_app``.
    :param status: the answer to every request unless scripted with
        :meth:`DeliveryRecorder.respond`.
    """
    app = app or t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
    try:
        state: WebhooksState = app.extensions["webhooks"]
    except KeyError:
        raise RuntimeError(
            "capture_deliveries(): flask-webhooks is not initialised on this app"
        ) from None
    recorder = DeliveryRecorder(state, status=status)
    transport = _RecordingTransport(recorder)
    saved = {
        name: state.__dict__.get(name, _MISSING) for name in ("enqueue", "transport")
    }
    # Instance attributes shadow the methods for this state only.
    state.__dict__["enqueue"] = recorder._enqueue
    state.__dict__["transport"] = lambda: transport
    try:
        yield recorder
    finally:
        for name, value in saved.items():
            if value is _MISSING:
                state.__dict__.pop(name, None)
            else:
                state.__dict__[name] = value


# -- a real receiver -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """How a :class:`RecordingReceiver` answers one request.

    ``Answer(503, headers={"Retry-After": "120"})``, ``Answer(delay=2)`` (a
    slow receiver), ``Answer(500, body=b"database unavailable")``.

    :param status: the HTTP status code.
    :param headers: response headers. ``Content-Type: text/plain`` is added
        unless they name a ``Content-Type``, and ``Content-Length``.
    :param body: the response body. None is sent with 1xx, 204 and 304
        statuses (nor are the two headers above), nor for ``HEAD`` requests.
    :param delay: seconds to wait before answering, e.g. to make the sender
        time out. The request is recorded (and :meth:`RecordingReceiver.wait_for`
        sees it) before the wait.
    """

    status: int = 200
    headers: t.Mapping[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


def _answer(answer: int | Answer) -> Answer:
    return answer if isinstance(answer, Answer) else Answer(status=int(answer))


@dataclass(frozen=True)
class ReceivedRequest:
    """One request a :class:`RecordingReceiver` got, with the exact body bytes."""

    method: str
    path: str
    headers: t.Mapping[str, str]
    body: bytes
    #: ``time.time()`` when it arrived.
    received_at: float = field(compare=False)
    #: The client's TCP port: requests sent over one keep-alive connection
    #: share it.
    client_port: int = field(default=0, compare=False)
    #: ``time.time()`` once the answer was sent; ``None`` until then (the
    #: receiver fills it in). With :attr:`received_at` it tells whether two
    #: requests were being answered at the same time.
    answered_at: float | None = field(default=None, compare=False)

    def header(self, name: str) -> str | None:
        """A header value by case-insensitive name."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    @property
    def delivery_id(self) -> str | None:
        """The ``X-Webhook-ID`` header: the delivery this attempt belongs to."""
        return self.header("X-Webhook-ID")

    @property
    def attempt(self) -> int | None:
        """The ``X-Webhook-Attempt`` header as a number, 1 for the first."""
        value = self.header("X-Webhook-Attempt")
        return int(value) if value else None

    def json(self) -> t.Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def verify(self, secret: str) -> bool:
        """Whether the signature headers verify with ``secret`` (as
        :meth:`CapturedRequest.verify`)."""
        return _verify_headers(secret, self.headers, self.body, now=self.received_at)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes: without TCP_NODELAY each
    # keep-alive request waits for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        receiver = self.server.receiver
        received_at = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = ReceivedRequest(
            self.command,
            self.path,
            dict(self.headers.items()),
            body,
            received_at,
            client_port=self.client_address[1],
        )
        answer = receiver._arrived(request)
        if answer.delay:
            time.sleep(answer.delay)
        # These statuses never have a body (RFC 9110).
        has_body = answer.status >= 200 and answer.status not in (204, 304)
        try:
            self.send_response(answer.status)
            typed = any(name.lower() == "content-type" for name in answer.headers)
            if has_body and not typed:
                self.send_header("Content-Type", "text/plain")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if has_body:
                self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if has_body and self.command != "HEAD":
                self.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up waiting and went away
        finally:
            receiver._answered(request)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: t.Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many worker threads may connect at once.
    request_queue_size = 128

    def __init__(self, receiver: RecordingReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A sender that timed out or was killed resets its keep-alive
        # connection: expected, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class RecordingReceiver:
    """A threaded HTTP server on ``127.0.0.1`` that records every request.

    Point a webhook's ``payload_url`` at :attr:`url` and deliveries go
    through the real transport. Use as a context manager (or
    :meth:`start` / :meth:`stop`)::

        with RecordingReceiver() as receiver:
            hook.payload_url = receiver.url
            ...
            (request,) = receiver.wait_for(1)
            assert request.verify("s3cret")

    Each request gets, in this order: the next answer queued with
    :meth:`respond`, else what ``answer`` returns for it, else ``status``.
    ``answer`` suits receivers shared by concurrent senders, whose arrival
    order is unknown::

        # The first attempt of every delivery fails, the second succeeds.
        RecordingReceiver(answer=lambda request: 500 if request.attempt == 1 else 200)

    Note that the default URL policy allows loopback addresses; if your
    tests deny private networks, allow ``127.0.0.1/32`` with
    ``WEBHOOKS_ALLOWED_NETWORKS``.

    :param status: the default answer status; script others with
        :meth:`respond` or ``answer``.
    :param answer: called with each request (a :class:`ReceivedRequest`, in
        the request's thread) that no :meth:`respond` answer is queued for;
        returns an :class:`Answer` or a status code.
    :param ssl_context: serve HTTPS with this server-side context (for
        example one with a certificate from `trustme
        <https://pypi.org/project/trustme/>`_); :attr:`url` then starts with
        ``https://``.
    """

    def __init__(
        self,
        status: int = 200,
        *,
        answer: t.Callable[[ReceivedRequest], Answer | int] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        #: Every request, in the order they arrived.
        self.requests: list[ReceivedRequest] = []
        self.default_status = status
        self._answer = answer
        self._answers: deque[Answer] = deque()
        self._cond = threading.Condition()
        self._server = _Server(self)
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(
                self._server.socket, server_side=True
            )
        self.port: int = self._server.server_address[1]
        scheme = "http" if ssl_context is None else "https"
        #: The URL to put in a webhook's ``payload_url``.
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # Also how long stop() may wait for the serving loop.
            kwargs={"poll_interval": 0.05},
            name="RecordingReceiver",
            daemon=True,
        )

    def start(self) -> RecordingReceiver:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def respond(self, *answers: int | Answer) -> None:
        """Answer the next requests with these (status codes or
        :class:`Answer` objects), then as before."""
        with self._cond:
            self._answers.extend(_answer(a) for a in answers)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until at least ``count`` requests arrived; return them all.

        :raises AssertionError: if they do not arrive within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} webhook requests, got {len(self.requests)}"
                    )
                self._cond.wait(remaining)
            return list(self.requests)

    def clear(self) -> None:
        """Forget the recorded requests and scripted answers."""
        with self._cond:
            self.requests.clear()
            self._answers.clear()

    # -- internals ---------------------------------------------------------------

    def _arrived(self, request: ReceivedRequest) -> Answer:
        """Record ``request`` and choose its answer."""
        with self._cond:
            self.requests.append(request)
            queued = self._answers.popleft() if self._answers else None
            self._cond.notify_all()
        if queued is not None:
            return queued
        if self._answer is not None:
            return _answer(self._answer(request))
        return Answer(status=self.default_status)

    def _answered(self, request: ReceivedRequest) -> None:
        with self._cond:
            # The record is frozen for its readers; this one field is filled
            # in once known, on the object wait_for() may already have handed out.
            object.__setattr__(request, "answered_at", time.time())
