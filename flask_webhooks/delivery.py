"""Sending one delivery: claim, build the request, send, record, schedule.

Per attempt the database sees one claim ``UPDATE`` (the lease), one read of
the delivery and its webhook, and one transaction recording the result (the
delivery row, the attempt row and the webhook's health).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
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
    from .extension import WebhooksState

logger = logging.getLogger("flask_webhooks.delivery")

USER_AGENT = f"flask-webhooks/{__version__}"
#: Longest wait a ``Retry-After`` header can ask for.
MAX_RETRY_AFTER = 24 * 3600.0
#: Extra time a lease lasts beyond the request timeouts.
LEASE_MARGIN = 30.0


@dataclass
class Outcome:
    """What one call of :func:`deliver` did."""

    delivery_id: str
    claimed: bool
    status: str | None = None
    retry_in: float | None = None
    result: HTTPResult | None = None


def retry_delay(
    schedule: t.Sequence[float],
    attempts: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when
    the schedule is exhausted.

    The step gets +/-20 % jitter; a ``Retry-After`` can lengthen the wait (up
    to :data:`MAX_RETRY_AFTER`) but never shorten it below the step.
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    step = float(schedule[attempts - 1])
    delay = step * (rng or random).uniform(0.8, 1.2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def claim(
    conn: sa.Connection,
    table: sa.Table,
    delivery_id: str,
    now: dt.datetime,
    lease: float,
) -> bool:
    """Atomically take the delivery for one attempt; False if someone else has it
    or it is not due."""
    c = table.c
    due = sa.or_(
        c.next_attempt_at.is_(None), c.next_attempt_at <= now + dt.timedelta(seconds=1)
    )
    stmt = (
        sa.update(table)
        .where(c.id == delivery_id)
        .where(
            sa.or_(
                sa.and_(c.status.in_((m.PENDING, m.RETRYING)), due),
                sa.and_(c.status == m.DELIVERING, c.leased_until < now),
            )
        )
        .values(
            status=m.DELIVERING,
            leased_until=now + dt.timedelta(seconds=lease),
            attempts=c.attempts + 1,
            updated_at=now,
        )
    )
    return conn.execute(stmt).rowcount == 1


def deliver(
    ext: WebhooksState, delivery_id: str, *, now: dt.datetime | None = None
) -> Outcome:
    """Make one attempt of ``delivery_id`` (call inside an app context)."""
    D = ext.models.Delivery.__table__
    W = ext.models.Webhook.__table__
    engine = ext.engine()
    now = now or m.utcnow()
    cfg = ext.config
    lease = cfg.connect_timeout + cfg.timeout + LEASE_MARGIN
    with engine.begin() as conn:
        if not claim(conn, D, delivery_id, now, lease):
            return Outcome(delivery_id, claimed=False)
    with engine.connect() as conn:
        row = conn.execute(sa.select(D).where(D.c.id == delivery_id)).one()
        hook = None
        if row.webhook_id is not None:
            hook = conn.execute(
                sa.select(W).where(W.c.id == row.webhook_id)
            ).one_or_none()
    attempt_no = row.attempts
    if hook is not None and hook.timeout and float(hook.timeout) > cfg.timeout:
        # This webhook may take longer than the lease allows: extend it.
        with engine.begin() as conn:
            conn.execute(
                sa.update(D)
                .where(D.c.id == delivery_id)
                .values(
                    leased_until=now
                    + dt.timedelta(
                        seconds=cfg.connect_timeout + float(hook.timeout) + LEASE_MARGIN
                    )
                )
            )
    started = m.utcnow()
    if hook is None:
        return _finish_without_sending(
            ext, row, m.FAILED, "webhook was deleted", started
        )
    if not hook.enabled:
        reason = "webhook is disabled" + (
            f": {hook.disabled_reason}" if hook.disabled_reason else ""
        )
        return _finish_without_sending(ext, row, m.FAILED, reason, started)

    try:
        request = build_request(ext, row, hook, attempt_no)
    except Exception as e:
        return _finish_without_sending(
            ext, row, m.FAILED, f"could not build the request: {e}", started
        )
    result = ext.transport().send(request)

    disable_reason = None
    retry_in = None
    if result.ok:
        status = m.SUCCEEDED
    elif result.status_code == 410:
        status = m.FAILED
        disable_reason = "the receiver answered 410 Gone"
    elif not result.retryable:
        status = m.FAILED
    else:
        retry_in = retry_delay(
            cfg.retry_schedule, attempt_no, retry_after=result.retry_after
        )
        status = m.RETRYING if retry_in is not None else m.FAILED
    error = None if result.ok else result.error
    finished = m.utcnow()
    next_at = (
        finished + dt.timedelta(seconds=retry_in) if retry_in is not None else None
    )

    with engine.begin() as conn:
        conn.execute(
            sa.update(D)
            .where(D.c.id == row.id)
            .values(
                status=status,
                leased_until=None,
                next_attempt_at=next_at,
                last_status_code=result.status_code,
                last_error=_clip(error),
                updated_at=finished,
                completed_at=finished if status in (m.SUCCEEDED, m.FAILED) else None,
                request_method=request.method,
                request_url=request.url[:2000],
                request_headers=_redact(request.headers),
                response_headers=result.headers or None,
                response_body=result.body_excerpt,
                duration_ms=round(result.duration * 1000, 3),
            )
        )
        conn.execute(
            sa.insert(ext.models.DeliveryAttempt.__table__).values(
                delivery_id=row.id,
                number=attempt_no,
                started_at=started,
                duration_ms=round(result.duration * 1000, 3),
                status_code=result.status_code,
                error=_clip(error),
                request_url=request.url[:2000],
                request_headers=_redact(request.headers),
                response_headers=result.headers or None,
                response_body=result.body_excerpt,
            )
        )
        if status in (m.SUCCEEDED, m.FAILED):
            disable_reason = _record_health(
                ext, conn, hook, status, finished, disable_reason
            )

    ext.after_attempt(row.id, status, retry_in, hook, disable_reason, error)
    return Outcome(row.id, True, status, retry_in, result)


def build_request(
    ext: WebhooksState, row: t.Any, hook: t.Any, attempt: int
) -> HTTPRequest:
    """The HTTP request for one attempt, signed for this attempt."""
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
            hook.signature_scheme or "netbox", hook.secret or "", row.id, body
        )
    )
    timeout = float(hook.timeout) if hook.timeout else ext.config.timeout
    verify: bool | str = bool(hook.ssl_verification)
    if verify and hook.ca_file_path:
        verify = hook.ca_file_path
    return HTTPRequest(
        method=(hook.http_method or "POST").upper(),
        url=url,
        headers=headers,
        body=body,
        connect_timeout=min(ext.config.connect_timeout, timeout),
        read_timeout=timeout,
        verify=verify,
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


def _finish_without_sending(
    ext: WebhooksState, row: t.Any, status: str, reason: str, now: dt.datetime
) -> Outcome:
    D = ext.models.Delivery.__table__
    with ext.engine().begin() as conn:
        conn.execute(
            sa.update(D)
            .where(D.c.id == row.id)
            .values(
                status=status,
                leased_until=None,
                next_attempt_at=None,
                last_error=reason,
                updated_at=now,
                completed_at=now,
                # Nothing was sent: this does not count as an attempt.
                attempts=D.c.attempts - 1,
            )
        )
    ext.after_attempt(row.id, status, None, None, None, reason)
    return Outcome(row.id, True, status)


def _record_health(
    ext: WebhooksState,
    conn: sa.Connection,
    hook: t.Any,
    status: str,
    now: dt.datetime,
    disable_reason: str | None,
) -> str | None:
    """Update the webhook's failure streak; disable it when configured to."""
    W = ext.models.Webhook.__table__
    values: dict[str, t.Any] = {"last_delivery_status": status, "last_delivery_at": now}
    if status == m.SUCCEEDED:
        values["consecutive_failures"] = 0
    else:
        streak = (hook.consecutive_failures or 0) + 1
        values["consecutive_failures"] = W.c.consecutive_failures + 1
        limit = ext.config.disable_after_failures
        if disable_reason is None and limit and streak >= limit:
            disable_reason = f"{streak} consecutive failed deliveries"
    if disable_reason is not None:
        values.update(
            enabled=False,
            disabled_reason=disable_reason,
            disabled_at=now,
            updated_at=now,
        )
    conn.execute(sa.update(W).where(W.c.id == hook.id).values(**values))
    return disable_reason


def due_condition(table: sa.Table, now: dt.datetime) -> sa.ColumnElement[bool]:
    """Deliveries that are due and not leased: what :func:`due_ids` finds."""
    c = table.c
    return sa.or_(
        sa.and_(
            c.status.in_((m.PENDING, m.RETRYING)),
            sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
        ),
        sa.and_(
            c.status == m.DELIVERING,
            sa.or_(c.leased_until.is_(None), c.leased_until < now),
        ),
    )


def due_ids(
    ext: WebhooksState, *, now: dt.datetime | None = None, older_than: float = 0
) -> list[str]:
    """Ids of deliveries that are due now and not leased by a live worker.

    :param older_than: only rows due for at least this many seconds (the
        periodic sweep leaves fresh rows to the enqueue that follows commit).
    """
    D = ext.models.Delivery.__table__
    now = now or m.utcnow()
    cutoff = now - dt.timedelta(seconds=older_than)
    stmt = (
        sa.select(D.c.id).where(due_condition(D, cutoff)).order_by(D.c.next_attempt_at)
    )
    with ext.engine().connect() as conn:
        return [r[0] for r in conn.execute(stmt)]


def requeue(ext: WebhooksState, ids: t.Sequence[str]) -> list[str]:
    """Make deliveries due now (manual retry); returns the ids that changed.

    Deliveries being sent or already succeeded are left alone.
    """
    if not ids:
        return []
    D = ext.models.Delivery.__table__
    now = m.utcnow()
    c = D.c
    with ext.engine().begin() as conn:
        changed = [
            r[0]
            for r in conn.execute(
                sa.select(c.id).where(
                    c.id.in_(ids),
                    c.status.in_((m.FAILED, m.RETRYING, m.CANCELLED, m.PENDING)),
                )
            )
        ]
        if changed:
            conn.execute(
                sa.update(D)
                .where(c.id.in_(changed))
                .values(
                    status=m.PENDING,
                    next_attempt_at=now,
                    leased_until=None,
                    completed_at=None,
                    updated_at=now,
                )
            )
    return changed
