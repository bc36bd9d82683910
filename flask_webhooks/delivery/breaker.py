"""The circuit breaker: a receiver that keeps failing is paused, then probed.

With ``WEBHOOKS_BREAKER_THRESHOLD = N``, a webhook whose last N attempts
failed (any delivery) is *open* for ``WEBHOOKS_BREAKER_COOLDOWN`` seconds
(``breaker_open_until`` on the webhook): its deliveries are handed back to
the queue until then instead of each one burning its own retries. When
the cool-down is over the breaker is *half-open*: the first worker to
claim the probe (one conditional ``UPDATE`` that also pushes the
cool-down on) sends one attempt; the others keep waiting. A successful
probe closes the breaker (every success resets the count); a failed one
leaves it open for another cool-down. Auto-disable
(``WEBHOOKS_DISABLE_AFTER_FAILURES``) stays the last resort.

The state lives in the webhook's row and is written without moving its
``updated_at``, so cached copies of the webhook stay valid; workers read
it fresh for every batch.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa

from .. import models as m

if t.TYPE_CHECKING:
    from ..state import WebhooksState

#: The breaker's states, as shown on the status page.
CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"


def breaker_state(open_until: dt.datetime | None, now: dt.datetime) -> str:
    """``closed``, ``open`` (cooling down) or ``half-open`` (probe due)."""
    if open_until is None:
        return CLOSED
    return OPEN if open_until > now else HALF_OPEN


def open_until(state: WebhooksState, hook_ids: t.Iterable[t.Any]) -> dict[t.Any, t.Any]:
    """``breaker_open_until`` of the given webhooks, read now (None: closed)."""
    wanted = list({i for i in hook_ids if i is not None})
    if not wanted:
        return {}
    W = state.models.Webhook.__table__
    with state.engine().connect() as conn:
        return dict(
            conn.execute(
                sa.select(W.c.id, W.c.breaker_open_until).where(W.c.id.in_(wanted))
            ).all()
        )


def take_probe(state: WebhooksState, hook_id: t.Any, now: dt.datetime) -> bool:
    """Claim the half-open breaker's one probe attempt: True for the one
    caller that gets it (the cool-down starts again meanwhile)."""
    W = state.models.Webhook.__table__
    c = W.c
    cooldown = dt.timedelta(seconds=state.config.breaker_cooldown)
    with state.engine().begin() as conn:
        return bool(
            conn.execute(
                sa.update(W)
                .where(c.id == hook_id, c.breaker_open_until <= now)
                .values(breaker_open_until=now + cooldown, updated_at=c.updated_at)
            ).rowcount
        )


def record(
    state: WebhooksState, hook_id: t.Any, succeeded: bool, now: dt.datetime
) -> None:
    """Count one attempt of ``hook_id``: a success closes the breaker, the
    threshold's failure in a row opens it."""
    threshold = state.config.breaker_threshold
    if threshold is None or hook_id is None:
        return
    W = state.models.Webhook.__table__
    c = W.c
    if succeeded:
        values: dict[str, t.Any] = {"breaker_failures": 0, "breaker_open_until": None}
        where = sa.or_(c.breaker_failures != 0, c.breaker_open_until.is_not(None))
    else:
        count = c.breaker_failures + 1
        opens = now + dt.timedelta(seconds=state.config.breaker_cooldown)
        values = {
            "breaker_failures": count,
            "breaker_open_until": sa.case(
                (
                    sa.and_(count >= threshold, c.breaker_open_until.is_(None)),
                    opens,
                ),
                else_=c.breaker_open_until,
            ),
        }
        where = sa.true()
    with state.engine().begin() as conn:
        conn.execute(
            sa.update(W)
            .where(c.id == hook_id, where)
            .values(updated_at=c.updated_at, **values)
        )


def open_count(state: WebhooksState) -> list[tuple[str, t.Any, str]]:
    """(name, open until, state) of every webhook whose breaker is not
    closed, for the status page."""
    W = state.models.Webhook.__table__
    now = m.utcnow()
    with state.engine().connect() as conn:
        rows = conn.execute(
            sa.select(W.c.name, W.c.breaker_open_until)
            .where(W.c.breaker_open_until.is_not(None))
            .order_by(W.c.name)
        ).all()
    return [(name, until, breaker_state(until, now)) for name, until in rows]
