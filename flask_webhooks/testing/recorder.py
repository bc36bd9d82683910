"""In-process capture of deliveries: :func:`capture_deliveries`.

While the context is open, deliveries run synchronously right after each
commit and the requests they would send are recorded instead of sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import typing as t
from collections import deque
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from flask import Flask
from sqlalchemy.orm import selectinload
from sqlalchemy.orm import Session

from .. import models as m
from ..delivery.engine import deliver
from ..delivery.recovery import requeue
from ..state import get_state
from ..transport.message import HTTPRequest
from ..transport.message import HTTPResult
from .receiver import verify_headers

if t.TYPE_CHECKING:
    from ..state import WebhooksState


@dataclass(frozen=True)
class CapturedRequest:
    """One HTTP request a delivery attempt would have sent.

    ``method``, ``url``, ``headers`` and ``body`` are exactly what the
    transport was given (built by :func:`flask_webhooks.delivery.attempt.build_request`,
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
    #: The event's sequence number (``X-Webhook-Sequence``): larger for a
    #: later commit of the same object, the same on every attempt.
    sequence: int | None = None

    def json(self) -> t.Any:
        """The body parsed as JSON (the payload for the default body)."""
        return json.loads(self.body)

    def verify(self, secret: str) -> bool:
        """Whether the request's signature headers verify with ``secret``.

        ``X-Hook-Signature`` and the Standard Webhooks headers are checked
        when present; at least one must be present and all must verify.
        """
        return verify_headers(secret, self.headers, self.body, now=None)


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
        timeout: float | None = None,
    ) -> None:
        ids = list(ids)
        if delay:
            with self._lock:
                self.scheduled.extend((i, float(delay)) for i in ids)
            return
        self._deliver(ids)

    def _deliver(self, ids: t.Iterable[str]) -> None:
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
            sequence=int(request.headers["X-Webhook-Sequence"])
            if "X-Webhook-Sequence" in request.headers
            else None,
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
    state = get_state(app)
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
