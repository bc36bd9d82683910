"""Recording what delivery attempts did: result rows, webhook health, signals.

:func:`flask_webhooks.delivery.deliver_batch` sends; this module writes.
Several attempts are recorded in one transaction (:func:`record`): per
attempt the delivery row (only while the row is still ours: status
``delivering`` and the attempt number we claimed), the attempt history row
and, when the delivery ends, the webhook's health. After the commit the
retries are scheduled and the signals sent.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

from .. import models as m
from .. import signals
from ..capture.index import expire_all
from ..sanitize import DEFAULT_REDACTOR
from ..sanitize import Redactor
from ..sanitize import scrub
from ..sanitize import scrub_optional
from ..transport.message import HTTPRequest
from ..transport.message import HTTPResult
from .order import release_quietly

if t.TYPE_CHECKING:
    from ..state import WebhooksState

logger = logging.getLogger(__name__)

#: The health columns of a webhook are rewritten after a success at most this
#: often (every success would otherwise update the same hot row).
HEALTH_WRITE_INTERVAL = dt.timedelta(seconds=1)
FINAL = (m.SUCCEEDED, m.FAILED)

_RESULT_COLUMNS = (
    "status",
    "leased_until",
    "next_attempt_at",
    "last_status_code",
    "last_error",
    "updated_at",
    "completed_at",
    "request_method",
    "request_url",
    "request_headers",
    "response_headers",
    "response_body",
    "duration_ms",
    "claims",
)


@dataclass
class Outcome:
    """What one attempt of a delivery did (see :func:`~flask_webhooks.delivery.deliver`).

    :param claimed: False when the delivery was not due, already leased by
        another worker, or finished; nothing was done then.
    :param status: the delivery's new status; None when it was not claimed,
        or when another worker took it over while this attempt ran (the
        attempt is in the history, the other worker's outcome stands).
    :param retry_in: seconds until the next attempt (status ``retrying``).
    :param result: the HTTP result, when a request was sent.
    :param disabled_reason: set when this attempt disabled the webhook.
    """

    delivery_id: str
    claimed: bool
    status: str | None = None
    retry_in: float | None = None
    result: HTTPResult | None = None
    disabled_reason: str | None = None


@dataclass
class Attempt:
    """One claimed attempt, waiting to be recorded.

    ``request``/``result`` are None when nothing was sent (the webhook was
    deleted or disabled, or the request could not be built): the delivery
    then ends ``failed`` and the attempt is not counted.
    """

    delivery_id: str
    number: int
    hook: t.Any  # a mutable copy of the webhook row (types.SimpleNamespace)
    started_at: dt.datetime
    finished_at: dt.datetime
    status: str
    error: str | None = None
    retry_in: float | None = None
    next_attempt_at: dt.datetime | None = None
    request: HTTPRequest | None = None
    result: HTTPResult | None = None
    disable_reason: str | None = None
    count_failure: bool = False
    #: Masks credentials in what is stored (``WEBHOOKS_REDACT_HEADERS``).
    redactor: Redactor = DEFAULT_REDACTOR

    @property
    def sent(self) -> bool:
        return self.request is not None and self.result is not None


def redact(
    headers: t.Mapping[str, str], redactor: Redactor = DEFAULT_REDACTOR
) -> dict[str, str]:
    """Headers as stored for the admin: signatures and credentials masked."""
    return redactor.headers(headers)


def clip(text: str | None, limit: int = 4000) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _still_ours(table: sa.Table) -> sa.Update:
    """An ``UPDATE`` of one delivery that applies only while the row is still
    ours: ``delivering``, at the attempt number we claimed."""
    c = table.c
    return sa.update(table).where(
        c.id == sa.bindparam("b_id"),
        c.status == m.DELIVERING,
        c.attempts == sa.bindparam("b_attempt"),
    )


@functools.lru_cache(maxsize=32)
def _result_statement(table: sa.Table, waited: bool = False) -> t.Any:
    """The result ``UPDATE``: by default only of rows no later delivery of
    the object waits for (``has_waiters`` clear); with ``waited``, of the
    others (see order.py)."""
    waiters = table.c.has_waiters
    return (
        _still_ours(table)
        .where(waiters if waited else sa.not_(waiters))
        .values({name: sa.bindparam(f"v_{name}") for name in _RESULT_COLUMNS})
    )


@functools.lru_cache(maxsize=32)
def _unsent_statement(table: sa.Table) -> t.Any:
    """Ends a claimed delivery as ``failed`` without counting the attempt."""
    c = table.c
    return _still_ours(table).values(
        status=m.FAILED,
        leased_until=None,
        next_attempt_at=None,
        last_error=sa.bindparam("v_error"),
        updated_at=sa.bindparam("v_now"),
        completed_at=sa.bindparam("v_now"),
        # Nothing was sent: this does not count as an attempt.
        attempts=c.attempts - 1,
        claims=0,
    )


@functools.lru_cache(maxsize=32)
def _insert_statement(table: sa.Table) -> t.Any:
    return sa.insert(table)


def record(state: WebhooksState, attempts: t.Sequence[Attempt]) -> list[Outcome]:
    """Write ``attempts`` (of different deliveries) in one transaction, then
    schedule retries and send signals. Returns one :class:`Outcome` per
    attempt, in order."""
    D = state.models.Delivery.__table__
    sent = [a for a in attempts if a.sent]
    history = [_history_row(a) for a in sent]
    owned: dict[str, bool] = {}
    waited: set[str] = set()
    with state.engine().begin() as conn:
        if sent:
            owned.update(_write_results(conn, D, sent, waited))
        for a in attempts:
            if not a.sent:
                owned[a.delivery_id] = (
                    conn.execute(
                        _unsent_statement(D),
                        {
                            "b_id": a.delivery_id,
                            "b_attempt": a.number,
                            "v_error": scrub_optional(clip(a.error)),
                            "v_now": a.finished_at,
                        },
                    ).rowcount
                    == 1
                )
        if history:
            conn.execute(
                _insert_statement(state.models.DeliveryAttempt.__table__), history
            )
        # Health, in order; of a run of successes of one webhook only the
        # last is written (a failure first writes the successes before it).
        successes: dict[t.Any, Attempt] = {}
        reasons: dict[str, str | None] = {}
        for a in attempts:
            final = a.status in FINAL if a.sent else a.count_failure
            if not (owned[a.delivery_id] and final and a.hook is not None):
                continue
            if a.status == m.SUCCEEDED:
                successes[a.hook.id] = a
                continue
            earlier = successes.pop(a.hook.id, None)
            if earlier is not None:
                record_health(
                    state, conn, a.hook, m.SUCCEEDED, earlier.finished_at, None
                )
            reasons[a.delivery_id] = record_health(
                state, conn, a.hook, a.status, a.finished_at, a.disable_reason
            )
        for a in successes.values():
            record_health(state, conn, a.hook, m.SUCCEEDED, a.finished_at, None)
    disabled = [reasons.get(a.delivery_id) for a in attempts]
    if any(disabled):
        # Committed: capture stops matching the webhook at once in this process.
        expire_all()
    outcomes = []
    for a, reason in zip(attempts, disabled, strict=True):
        if not owned[a.delivery_id]:
            if a.sent:
                logger.warning(
                    "flask-webhooks: delivery %s attempt %d outlived its lease; "
                    "another worker took the delivery over, this attempt's result "
                    "is only kept in the attempt history",
                    a.delivery_id,
                    a.number,
                )
            outcomes.append(Outcome(a.delivery_id, True, None, None, a.result))
            continue
        after_attempt(
            state,
            a.delivery_id,
            a.status,
            a.retry_in,
            a.hook,
            reason,
            error=a.error,
            status_code=a.result.status_code if a.result is not None else None,
            attempts=a.number if a.sent else a.number - 1,
        )
        outcomes.append(
            Outcome(a.delivery_id, True, a.status, a.retry_in, a.result, reason)
        )
    # Finished deliveries that later ones wait for (or that ended unsent)
    # let the next delivery of their object go now.
    done = [
        a.delivery_id
        for a in attempts
        if owned[a.delivery_id]
        and a.status in FINAL
        and (a.delivery_id in waited or not a.sent)
    ]
    release_quietly(state, done)
    return outcomes


def _stored(a: Attempt) -> dict[str, t.Any]:
    """What the delivery row and the attempt row both keep of a sent attempt:
    credentials masked, NUL characters replaced (PostgreSQL refuses them)."""
    request, result = a.request, a.result
    assert request is not None and result is not None
    redactor = a.redactor
    return {
        "status_code": result.status_code,
        "error": scrub_optional(clip(a.error)),
        "request_url": redactor.url(scrub(request.url))[:2000],
        "request_headers": redactor.headers(request.headers),
        "response_headers": redactor.headers(result.headers) or None,
        "response_body": scrub_optional(result.body_excerpt),
        "duration_ms": round(result.duration * 1000, 3),
    }


def _result_params(a: Attempt) -> dict[str, t.Any]:
    kept = _stored(a)
    assert a.request is not None
    return {
        "b_id": a.delivery_id,
        "b_attempt": a.number,
        "v_status": a.status,
        "v_leased_until": None,
        "v_next_attempt_at": a.next_attempt_at,
        "v_last_status_code": kept["status_code"],
        "v_last_error": kept["error"],
        "v_updated_at": a.finished_at,
        "v_completed_at": a.finished_at if a.status in FINAL else None,
        "v_request_method": a.request.method,
        "v_request_url": kept["request_url"],
        "v_request_headers": kept["request_headers"],
        "v_response_headers": kept["response_headers"],
        "v_response_body": kept["response_body"],
        "v_duration_ms": kept["duration_ms"],
        "v_claims": 0,  # a result is recorded: not poison (see .poison)
    }


def _history_row(a: Attempt) -> dict[str, t.Any]:
    return {
        "delivery_id": a.delivery_id,
        "number": a.number,
        "started_at": a.started_at,
        **_stored(a),
    }


def _write_results(
    conn: sa.Connection, D: sa.Table, sent: list[Attempt], waited: set[str]
) -> dict[str, bool]:
    """Write the delivery rows of ``sent`` (one executemany); say which were
    still ours, by delivery id. Adds to ``waited`` the ids of the rows a
    later delivery of their object waits for."""
    params = [_result_params(a) for a in sent]
    done = conn.execute(_result_statement(D), params)
    if done.rowcount == len(sent):
        return {a.delivery_id: True for a in sent}
    # Rows a later delivery waits for: the same write (the rows written
    # above are no longer ``delivering``, so they do not match again).
    conn.execute(_result_statement(D, waited=True), params)
    # Some row may also have been taken over by another worker (our lease
    # ran out): the rows we wrote carry exactly our values.
    c = D.c
    found = {
        r.id: r
        for r in conn.execute(
            sa.select(c.id, c.status, c.attempts, c.updated_at, c.has_waiters).where(
                c.id.in_([a.delivery_id for a in sent])
            )
        )
    }
    owned: dict[str, bool] = {}
    for a in sent:
        r = found.get(a.delivery_id)
        owned[a.delivery_id] = mine = (
            r is not None
            and r.status == a.status
            and r.attempts == a.number
            and r.updated_at == a.finished_at
        )
        if mine and r is not None and r.has_waiters:
            waited.add(a.delivery_id)
    return owned


@functools.lru_cache(maxsize=32)
def _success_statement(table: sa.Table) -> t.Any:
    """Reset the failure streak after a success, unless the webhook already
    shows a success less than :data:`HEALTH_WRITE_INTERVAL` away (every
    success would otherwise rewrite the same hot row)."""
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id == sa.bindparam("b_id"),
            sa.or_(
                c.consecutive_failures.is_(None),
                c.consecutive_failures != 0,
                c.last_delivery_status.is_(None),
                c.last_delivery_status != m.SUCCEEDED,
                c.last_delivery_at.is_(None),
                c.last_delivery_at < sa.bindparam("b_lo"),
                c.last_delivery_at > sa.bindparam("b_hi"),
            ),
        )
        .values(
            consecutive_failures=0,
            last_delivery_status=m.SUCCEEDED,
            last_delivery_at=sa.bindparam("b_now"),
            updated_at=c.updated_at,
        )
    )


def record_health(
    state: WebhooksState,
    conn: sa.Connection,
    hook: t.Any,
    status: str,
    now: dt.datetime,
    disable_reason: str | None,
) -> str | None:
    """Update the webhook's failure streak; disable it when it must be.

    ``hook`` is a mutable copy of the webhook row; it is updated to match
    what was written, so the next attempts of a batch see the new state.
    Returns the reason if this call disabled the webhook (so the
    ``webhook_disabled`` signal is sent once, by the worker that did it).
    ``updated_at`` is left alone unless the webhook is disabled: the capture
    index reloads webhooks when it moves.
    """
    W = state.models.Webhook.__table__
    c = W.c
    where = c.id == hook.id
    if status == m.SUCCEEDED:
        # Decided by the database, not by the (possibly cached) copy: another
        # worker may have recorded failures since.
        conn.execute(
            _success_statement(W),
            {
                "b_id": hook.id,
                "b_now": now,
                "b_lo": now - HEALTH_WRITE_INTERVAL,
                "b_hi": now + HEALTH_WRITE_INTERVAL,
            },
        )
        hook.consecutive_failures = 0
        hook.last_delivery_status = m.SUCCEEDED
        hook.last_delivery_at = now
        return None
    stmt = (
        sa.update(W)
        .where(where)
        .values(
            consecutive_failures=c.consecutive_failures + 1,
            last_delivery_status=m.FAILED,
            last_delivery_at=now,
            updated_at=c.updated_at,
        )
    )
    if conn.dialect.update_returning:
        streak = conn.execute(stmt.returning(c.consecutive_failures)).scalar()
    else:
        conn.execute(stmt)
        streak = conn.execute(sa.select(c.consecutive_failures).where(where)).scalar()
    hook.consecutive_failures = streak
    hook.last_delivery_status = m.FAILED
    hook.last_delivery_at = now
    limit = state.config.disable_after_failures
    if disable_reason is None and limit and streak is not None and streak >= limit:
        disable_reason = (
            f"{streak} consecutive failed deliveries "
            f"(WEBHOOKS_DISABLE_AFTER_FAILURES = {limit})"
        )
    if disable_reason is None:
        return None
    done = conn.execute(
        sa.update(W)
        .where(where, c.enabled.is_(True))
        .values(
            enabled=False,
            disabled_reason=disable_reason,
            disabled_at=now,
            updated_at=now,
        )
    ).rowcount
    hook.enabled = False
    if done == 1:
        hook.disabled_reason = disable_reason
        return disable_reason
    return None


def after_attempt(
    state: WebhooksState,
    delivery_id: str,
    status: str,
    retry_in: float | None,
    hook: t.Any,
    disabled_reason: str | None,
    *,
    error: str | None,
    status_code: int | None,
    attempts: int,
) -> None:
    """Schedule the next attempt and send signals (after the result committed)."""
    if status == m.RETRYING and retry_in is not None:
        try:
            state.enqueue([delivery_id], delay=retry_in)
        except Exception:
            logger.exception(
                "flask-webhooks: scheduling a retry of %s failed; sweep() will "
                "enqueue it when it is due",
                delivery_id,
            )
    webhook_id = hook.id if hook is not None else None
    sends: list[tuple[t.Any, dict[str, t.Any]]] = []
    common = {
        "delivery_id": delivery_id,
        "webhook_id": webhook_id,
        "status_code": status_code,
        "attempts": attempts,
    }
    if status == m.SUCCEEDED:
        sends.append((signals.delivery_succeeded, common))
    elif status == m.FAILED:
        sends.append((signals.delivery_failed, {**common, "error": error}))
    if disabled_reason is not None:
        sends.append(
            (
                signals.webhook_disabled,
                {
                    "webhook_id": webhook_id,
                    "webhook_name": hook.name if hook is not None else None,
                    "reason": disabled_reason,
                },
            )
        )
    for signal, kwargs in sends:
        try:
            signal.send(state.app, **kwargs)
        except Exception:
            logger.exception("flask-webhooks: a %s signal handler failed", signal.name)
