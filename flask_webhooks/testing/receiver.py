"""A real HTTP receiver on ``127.0.0.1`` for end-to-end tests: :class:`RecordingReceiver`."""

from __future__ import annotations

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

from ..signing import SIGNATURE_HEADER
from ..signing import STANDARD_SIGNATURE_HEADER
from ..signing import verify
from ..signing import verify_standard

if t.TYPE_CHECKING:
    import ssl


def verify_headers(
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

    @property
    def sequence(self) -> int | None:
        """The ``X-Webhook-Sequence`` header as a number: the event's place
        in commit order (larger is later for one object)."""
        value = self.header("X-Webhook-Sequence")
        return int(value) if value else None

    def json(self) -> t.Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def verify(self, secret: str) -> bool:
        """Whether the signature headers verify with ``secret`` (as
        :meth:`CapturedRequest.verify`)."""
        return verify_headers(secret, self.headers, self.body, now=self.received_at)


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
