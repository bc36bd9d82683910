"""Sending one delivery: claim, build the request, send, record, schedule.

Per attempt the database sees two short transactions:

1. the *claim*: one conditional ``UPDATE ... RETURNING`` that takes the lease
   (status ``delivering``, ``leased_until``, ``attempts + 1``) only if the row
   is due and nobody holds it, plus a read of its webhook;
2. the *result*: the delivery row, the attempt row and, when the delivery
   ends, the webhook's health, in one transaction.

The lease outlives the longest request (connect timeout + read timeout +
``WEBHOOKS_LEASE_MARGIN``). The result is written only while the row is still
ours (status ``delivering`` and the attempt number we claimed): a worker that
overran its lease and lost the row to another worker records its attempt in
the history but does not overwrite the newer outcome.

What a lost enqueue, a flushed queue or a killed worker leaves behind is
found by :func:`flask_webhooks.sweeping.sweep`; a worker's claim ignores the
sweeper's marks.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import random
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

from . import __version__
from . import models as m
from .payload import render_headers
from .payload import render_url
from .payload import template_context
from .signing import signature_headers
from .transport import HTTPRequest
from .transport import HTTPResult

if t.TYPE_CHECKING:
    from .extension import Config
    from .extension import WebhooksState

logger = logging.getLogger("flask_webhooks.delivery")

USER_AGENT = f"flask-webhooks/{__version__}"
#: Longest wait a ``Retry-After`` header can ask for (24 hours).
MAX_RETRY_AFTER = 24 * 3600.0
#: Shortest wait a ``Retry-After`` header can ask for.
MIN_RETRY_AFTER = 1.0
#: A task may arrive this early (clock skew between hosts) and still claim.
EARLY_TOLERANCE = dt.timedelta(seconds=1)
#: The health columns of a webhook are rewritten after a success at most this
#: often (every success would otherwise update the same hot row).
HEALTH_WRITE_INTERVAL = dt.timedelta(seconds=1)
_CLAIMABLE = (m.PENDING, m.RETRYING)
_FINAL = (m.SUCCEEDED, m.FAILED)


@dataclass
class Outcome:
    """What one call of :func:`deliver` did.

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


def retry_delay(
    schedule: t.Sequence[float],
    attempts: int,
    *,
    retry_after: float | None = None,
    at_least_step: bool = False,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when
    the schedule is exhausted (``len(schedule) + 1`` attempts made).

    The schedule step gets +/-20 % jitter. A ``Retry-After`` from the
    receiver replaces it, clamped to [:data:`MIN_RETRY_AFTER`,
    :data:`MAX_RETRY_AFTER`] (never below a step that is itself shorter than
    the minimum). With ``at_least_step`` (a 429 or a timeout: the receiver is
    overloaded) the wait is never shorter than the jittered step.

    :param rng: the random source for the jitter (tests pass a seeded one).
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    step = float(schedule[attempts - 1]) * (rng or random).uniform(0.8, 1.2)
    if retry_after is None:
        return step
    wanted = min(max(retry_after, min(MIN_RETRY_AFTER, step)), MAX_RETRY_AFTER)
    return max(wanted, step) if at_least_step else wanted


def lease_seconds(config: Config, hook_timeout: float | None = None) -> float:
    """How long a claim lasts: connect + read timeout + the lease margin."""
    timeout = max(config.timeout, float(hook_timeout or 0))
    return config.connect_timeout + timeout + config.lease_margin


def _claim_columns(table: sa.Table) -> list[sa.ColumnElement[t.Any]]:
    c = table.c
    return [c.id, c.webhook_id, c.attempts, c.body, c.payload, c.content_type]


@functools.lru_cache(maxsize=32)
def _claim_statements(table: sa.Table) -> tuple[t.Any, t.Any, t.Any]:
    """The claim ``UPDATE`` (plain and with ``RETURNING``) and the read-back
    ``SELECT``, built once per table.

    Building a statement and its cache key costs SQLAlchemy more than running
    it (measured ~570 us vs ~110 us for the claim), so the statements of an
    attempt are built once with bind parameters.
    """
    c = table.c
    stmt = (
        sa.update(table)
        .where(c.id == sa.bindparam("b_id"))
        .where(
            sa.or_(
                sa.and_(
                    c.status.in_(_CLAIMABLE),
                    sa.or_(
                        c.next_attempt_at.is_(None),
                        c.next_attempt_at <= sa.bindparam("b_due"),
                    ),
                ),
                sa.and_(
                    c.status == m.DELIVERING,
                    sa.or_(
                        c.leased_until.is_(None),
                        c.leased_until < sa.bindparam("b_now"),
                    ),
                ),
            )
        )
        .values(
            status=m.DELIVERING,
            leased_until=sa.bindparam("b_lease_until"),
            attempts=c.attempts + 1,
            updated_at=sa.bindparam("b_updated_at"),
        )
    )
    columns = _claim_columns(table)
    read_back = sa.select(*columns).where(c.id == sa.bindparam("b_id"))
    return stmt, stmt.returning(*columns), read_back


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
)


@functools.lru_cache(maxsize=32)
def _webhook_statement(table: sa.Table) -> t.Any:
    return sa.select(table).where(table.c.id == sa.bindparam("b_id"))


@functools.lru_cache(maxsize=32)
def _result_statement(table: sa.Table) -> t.Any:
    """The result ``UPDATE``: applies only while the row is still ours."""
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id == sa.bindparam("b_id"),
            c.status == m.DELIVERING,
            c.attempts == sa.bindparam("b_attempt"),
        )
        .values({name: sa.bindparam(f"v_{name}") for name in _RESULT_COLUMNS})
    )


@functools.lru_cache(maxsize=32)
def _insert_statement(table: sa.Table) -> t.Any:
    return sa.insert(table)


def claim(
    conn: sa.Connection,
    table: sa.Table,
    delivery_id: str,
    now: dt.datetime,
    lease: float,
) -> sa.Row[t.Any] | None:
    """Atomically take the delivery for one attempt.

    One conditional ``UPDATE``: it matches only a ``pending``/``retrying`` row
    that is due, or a ``delivering`` row whose lease has expired (its worker
    died). Returns the claimed row (``id``, ``webhook_id``, ``attempts`` (this
    attempt's number), ``body``, ``payload``, ``content_type``), or None if
    someone else has it or it is not due.
    """
    update, update_returning, read_back = _claim_statements(table)
    params = {
        "b_id": delivery_id,
        "b_due": now + EARLY_TOLERANCE,
        "b_now": now,
        "b_lease_until": now + dt.timedelta(seconds=lease),
        "b_updated_at": now,
    }
    if conn.dialect.update_returning:
        return conn.execute(update_returning, params).one_or_none()
    if conn.execute(update, params).rowcount != 1:
        return None
    return conn.execute(read_back, {"b_id": delivery_id}).one()


def deliver(
    ext: WebhooksState,
    delivery_id: str,
    *,
    now: dt.datetime | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """Make one attempt of ``delivery_id``.

    Claims the row, sends the request, records the attempt, sets
    ``succeeded``, ``retrying`` (and schedules the retry) or ``failed``, then
    sends the signals. Never raises for HTTP problems; database errors
    propagate (the row is then recovered by :func:`sweep`).

    :param now: the time of the attempt (tests pin it); ``next_attempt_at``
        is ``now`` + the request's duration + the retry delay.
    :param rng: random source for the retry jitter.
    """
    D = ext.models.Delivery.__table__
    W = ext.models.Webhook.__table__
    cfg = ext.config
    engine = ext.engine()
    start = now or m.utcnow()
    with engine.begin() as conn:
        row = claim(conn, D, delivery_id, start, lease_seconds(cfg))
        if row is None:
            return Outcome(delivery_id, claimed=False)
        hook = None
        if row.webhook_id is not None:
            hook = conn.execute(
                _webhook_statement(W), {"b_id": row.webhook_id}
            ).one_or_none()
        if hook is not None and hook.timeout and float(hook.timeout) > cfg.timeout:
            # This webhook may take longer than the default lease allows.
            lease = lease_seconds(cfg, float(hook.timeout))
            conn.execute(
                sa.update(D)
                .where(D.c.id == delivery_id)
                .values(leased_until=start + dt.timedelta(seconds=lease))
            )
    attempt = int(row.attempts)
    if hook is None:
        return _finish_unsent(ext, row, attempt, None, "webhook was deleted", start)
    if not hook.enabled:
        reason = "webhook is disabled" + (
            f": {hook.disabled_reason}" if hook.disabled_reason else ""
        )
        return _finish_unsent(ext, row, attempt, hook, reason, start)
    try:
        request = build_request(ext, row, hook, attempt)
    except Exception as e:
        return _finish_unsent(
            ext,
            row,
            attempt,
            hook,
            f"could not build the request: {e}",
            start,
            count_failure=True,
        )

    result = ext.transport().send(request)
    finished = (
        start + dt.timedelta(seconds=result.duration) if now is not None else m.utcnow()
    )

    disable_reason: str | None = None
    retry_in: float | None = None
    if result.ok:
        status = m.SUCCEEDED
    elif result.status_code == 410:
        status = m.FAILED
        disable_reason = "the receiver answered 410 Gone"
    elif not result.retryable:
        status = m.FAILED
    else:
        overloaded = result.status_code == 429 or result.error_kind == "timeout"
        retry_in = retry_delay(
            cfg.retry_schedule,
            attempt,
            retry_after=result.retry_after,
            at_least_step=overloaded,
            rng=rng,
        )
        status = m.RETRYING if retry_in is not None else m.FAILED
    error = None if result.ok else result.error
    next_at = (
        finished + dt.timedelta(seconds=retry_in) if retry_in is not None else None
    )
    duration_ms = round(result.duration * 1000, 3)
    stored_headers = _redact(request.headers)
    response_headers = result.headers or None

    with engine.begin() as conn:
        result_values = {
            "status": status,
            "leased_until": None,
            "next_attempt_at": next_at,
            "last_status_code": result.status_code,
            "last_error": _clip(error),
            "updated_at": finished,
            "completed_at": finished if status in _FINAL else None,
            "request_method": request.method,
            "request_url": request.url[:2000],
            "request_headers": stored_headers,
            "response_headers": response_headers,
            "response_body": result.body_excerpt,
            "duration_ms": duration_ms,
        }
        params = {f"v_{k}": v for k, v in result_values.items()}
        params.update(b_id=row.id, b_attempt=attempt)
        owned = conn.execute(_result_statement(D), params).rowcount == 1
        conn.execute(
            _insert_statement(ext.models.DeliveryAttempt.__table__),
            {
                "delivery_id": row.id,
                "number": attempt,
                "started_at": start,
                "duration_ms": duration_ms,
                "status_code": result.status_code,
                "error": _clip(error),
                "request_url": request.url[:2000],
                "request_headers": stored_headers,
                "response_headers": response_headers,
                "response_body": result.body_excerpt,
            },
        )
        disabled = None
        if owned and status in _FINAL:
            disabled = _record_health(ext, conn, hook, status, finished, disable_reason)
    if not owned:
        logger.warning(
            "flask-webhooks: delivery %s attempt %d outlived its lease; another "
            "worker took the delivery over, this attempt's result is only kept "
            "in the attempt history",
            row.id,
            attempt,
        )
        return Outcome(row.id, True, None, None, result)

    _after_attempt(
        ext,
        row.id,
        status,
        retry_in,
        hook,
        disabled,
        error=error,
        status_code=result.status_code,
        attempts=attempt,
    )
    return Outcome(row.id, True, status, retry_in, result, disabled)


def build_request(
    ext: WebhooksState,
    row: t.Any,
    hook: t.Any,
    attempt: int,
    *,
    timestamp: int | None = None,
) -> HTTPRequest:
    """The HTTP request for one attempt, signed for this attempt.

    The body bytes are the stored ones (identical on every attempt); URL and
    additional headers are rendered from the stored payload when they are
    templates. Timeouts: the webhook's ``timeout`` (else ``WEBHOOKS_TIMEOUT``)
    for reads, ``WEBHOOKS_CONNECT_TIMEOUT`` (never longer than the read
    timeout) for connecting. TLS: ``ssl_verification`` and ``ca_file_path``.

    :param timestamp: Unix time for the Standard Webhooks signature (default
        now).
    """
    body: bytes = row.body or b""
    needs_context = "{" in (hook.payload_url or "") or "{" in (
        hook.additional_headers or ""
    )
    context: dict[str, t.Any] = {}
    if needs_context:
        payload = json.loads(row.payload if row.payload is not None else body)
        context = template_context(payload, hook)
    url = render_url(hook, context)
    headers: dict[str, str] = {
        "Content-Type": row.content_type or "application/json",
        "User-Agent": USER_AGENT,
    }
    headers.update(render_headers(hook, context))
    headers["X-Webhook-ID"] = row.id
    headers["X-Webhook-Attempt"] = str(attempt)
    # Signatures are set last: they win over additional headers.
    headers.update(
        signature_headers(
            hook.signature_scheme or "netbox",
            hook.secret or "",
            row.id,
            body,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
    )
    timeout = float(hook.timeout) if hook.timeout else ext.config.timeout
    verify: bool | str = bool(hook.ssl_verification)
    if verify and hook.ca_file_path:
        verify = hook.ca_file_path
    connect_timeout = min(ext.config.connect_timeout, timeout)
    return HTTPRequest(
        method=(hook.http_method or "POST").upper(),
        url=url,
        headers=headers,
        body=body,
        connect_timeout=connect_timeout,
        read_timeout=timeout,
        verify=verify,
        # A trickling answer must not outlive the lease (connect + timeout +
        # margin): allow at most the margin's worth of extra time.
        total_timeout=connect_timeout
        + timeout
        + min(timeout, ext.config.lease_margin / 2),
    )


_SECRET_HEADERS = ("x-hook-signature", "webhook-signature", "authorization")


def _redact(headers: t.Mapping[str, str]) -> dict[str, str]:
    """Headers as stored for the admin: signatures and credentials masked."""
    return {
        k: ("<redacted>" if k.lower() in _SECRET_HEADERS else v)
        for k, v in headers.items()
    }


def _clip(text: str | None, limit: int = 4000) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _finish_unsent(
    ext: WebhooksState,
    row: t.Any,
    attempt: int,
    hook: t.Any,
    reason: str,
    now: dt.datetime,
    *,
    count_failure: bool = False,
) -> Outcome:
    """End a claimed delivery as ``failed`` without sending anything."""
    D = ext.models.Delivery.__table__
    disabled = None
    with ext.engine().begin() as conn:
        owned = (
            conn.execute(
                sa.update(D)
                .where(
                    D.c.id == row.id,
                    D.c.status == m.DELIVERING,
                    D.c.attempts == attempt,
                )
                .values(
                    status=m.FAILED,
                    leased_until=None,
                    next_attempt_at=None,
                    last_error=_clip(reason),
                    updated_at=now,
                    completed_at=now,
                    # Nothing was sent: this does not count as an attempt.
                    attempts=D.c.attempts - 1,
                )
            ).rowcount
            == 1
        )
        if owned and count_failure and hook is not None:
            disabled = _record_health(ext, conn, hook, m.FAILED, now, None)
    if not owned:
        return Outcome(row.id, True, None)
    _after_attempt(
        ext,
        row.id,
        m.FAILED,
        None,
        hook,
        disabled,
        error=reason,
        status_code=None,
        attempts=attempt - 1,
    )
    return Outcome(row.id, True, m.FAILED, disabled_reason=disabled)


def _record_health(
    ext: WebhooksState,
    conn: sa.Connection,
    hook: t.Any,
    status: str,
    now: dt.datetime,
    disable_reason: str | None,
) -> str | None:
    """Update the webhook's failure streak; disable it when it must be.

    Returns the reason if this call disabled the webhook (so the
    ``webhook_disabled`` signal is sent once, by the worker that did it).
    ``updated_at`` is left alone unless the webhook is disabled: the capture
    index reloads webhooks when it moves.
    """
    W = ext.models.Webhook.__table__
    c = W.c
    where = c.id == hook.id
    if status == m.SUCCEEDED:
        last_at = hook.last_delivery_at
        if (
            not hook.consecutive_failures
            and hook.last_delivery_status == m.SUCCEEDED
            and last_at is not None
            and abs(now - last_at) < HEALTH_WRITE_INTERVAL
        ):
            return None  # nothing new to say: spare the hot row a write
        conn.execute(
            sa.update(W)
            .where(where)
            .values(
                consecutive_failures=0,
                last_delivery_status=m.SUCCEEDED,
                last_delivery_at=now,
                updated_at=c.updated_at,
            )
        )
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
    limit = ext.config.disable_after_failures
    if disable_reason is None and limit:
        if conn.dialect.update_returning:
            streak = conn.execute(stmt.returning(c.consecutive_failures)).scalar()
        else:
            conn.execute(stmt)
            streak = conn.execute(
                sa.select(c.consecutive_failures).where(where)
            ).scalar()
        if streak is not None and streak >= limit:
            disable_reason = (
                f"{streak} consecutive failed deliveries "
                f"(WEBHOOKS_DISABLE_AFTER_FAILURES = {limit})"
            )
    else:
        conn.execute(stmt)
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
    return disable_reason if done == 1 else None


def _after_attempt(
    ext: WebhooksState,
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
    from . import signals

    if status == m.RETRYING and retry_in is not None:
        try:
            ext.enqueue([delivery_id], delay=retry_in)
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
            signal.send(ext.app, **kwargs)
        except Exception:
            logger.exception("flask-webhooks: a %s signal handler failed", signal.name)
