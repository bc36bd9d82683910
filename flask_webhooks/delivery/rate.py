"""Per-webhook rate limits, shared by every worker thread and process.

A webhook with ``rate_limit`` (requests per second) keeps the limiter's
state in its own row: ``rate_next_at``, the Unix time before which no
further request may start. Before each request a worker takes a slot with
one conditional ``UPDATE`` (:func:`take_slot`): the next slot is
``max(rate_next_at, now)``, and taking it moves ``rate_next_at`` on by
``1 / rate_limit``. The database serialises the updates of one row, so the
requests to a webhook start at least ``1 / rate_limit`` seconds apart
whatever the number of threads, processes and hosts. A worker reserves a
slot at most :data:`MAX_SLEEP` seconds ahead and waits for it.

A delivery whose slot would be further away is not failed: :func:`defer`
hands it back (``pending``/``retrying`` again, the claim's attempt and
claim counts undone) due when a slot can be reserved, and enqueues it with
that delay; the deliveries behind it in the same batch are spread one
interval apart.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import typing as t

import sqlalchemy as sa

from .. import models as m

if t.TYPE_CHECKING:
    from ..state import WebhooksState

#: The shortest wait of a deferred delivery, in seconds.
MIN_WAIT = 0.01
#: A worker reserves a slot up to this many seconds ahead and waits for it;
#: a delivery whose slot is further away is handed back (:func:`defer`).
MAX_SLEEP = 1.0


class Slot(t.NamedTuple):
    """The answer of :func:`take_slot`."""

    #: Whether a slot was reserved.
    taken: bool
    #: Seconds until the slot (taken), or until a slot may be reserved.
    wait: float


@functools.lru_cache(maxsize=32)
def _take_statement(webhooks: sa.Table) -> t.Any:
    c = webhooks.c
    now: t.Any = sa.bindparam("b_now")
    return (
        sa.update(webhooks)
        .where(
            c.id == sa.bindparam("b_id"),
            sa.or_(
                c.rate_next_at.is_(None),
                c.rate_next_at <= now + sa.bindparam("b_ahead"),
            ),
        )
        .values(
            rate_next_at=sa.case(
                (sa.or_(c.rate_next_at.is_(None), c.rate_next_at < now), now),
                else_=c.rate_next_at,
            )
            + sa.bindparam("b_interval"),
            # Not a change of the webhook's settings: cached copies stay valid.
            updated_at=c.updated_at,
        )
    )


def take_slot(
    state: WebhooksState,
    hook_id: t.Any,
    rate: float,
    *,
    now: float | None = None,
    ahead: float = MAX_SLEEP,
) -> Slot:
    """Reserve the next request slot of webhook ``hook_id``, limited to
    ``rate`` requests per second, if it starts within ``ahead`` seconds.

    Slots are ``1 / rate`` apart; after a pause the next one is now. Returns
    ``Slot(True, seconds until it starts)`` (the caller waits that long,
    then sends), or ``Slot(False, seconds until a slot can be reserved)``.

    :param now: the Unix time (tests pin it).
    """
    W = state.models.Webhook.__table__
    at = time.time() if now is None else now
    interval = 1.0 / float(rate)
    with state.engine().begin() as conn:
        done = conn.execute(
            _take_statement(W),
            {"b_id": hook_id, "b_now": at, "b_interval": interval, "b_ahead": ahead},
        ).rowcount
        next_at = conn.execute(
            sa.select(W.c.rate_next_at).where(W.c.id == hook_id)
        ).scalar_one_or_none()
    if next_at is None:
        return Slot(bool(done), 0.0)
    if done:
        return Slot(True, max(float(next_at) - interval - at, 0.0))
    return Slot(False, max(float(next_at) - ahead - at, MIN_WAIT))


@functools.lru_cache(maxsize=32)
def _defer_statement(table: sa.Table) -> t.Any:
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id == sa.bindparam("b_id"),
            c.status == m.DELIVERING,
            c.leased_until == sa.bindparam("b_lease"),
        )
        .values(
            status=sa.case((c.attempts > 1, m.RETRYING), else_=m.PENDING),
            attempts=c.attempts - 1,
            claims=sa.case((c.claims > 0, c.claims - 1), else_=0),
            next_attempt_at=sa.bindparam("b_due"),
            leased_until=None,
            updated_at=sa.bindparam("b_updated"),
        )
    )


def defer(
    state: WebhooksState,
    ids: t.Sequence[str],
    lease_until: dt.datetime,
    wait: float,
    rate: float,
) -> dict[str, float]:
    """Hand claimed deliveries back because their webhook's rate limit has
    no free slot; return each one's delay in seconds.

    The first is due in ``wait`` seconds, each next one ``1 / rate`` later.
    Only rows still carrying this claim's lease (``lease_until``) change;
    their attempt and claim counts go back to what they were before the
    claim, so waiting for the limit never uses up retries. Each is enqueued
    with its delay (the sweep finds any whose enqueue is lost).
    """
    if not ids:
        return {}
    D = state.models.Delivery.__table__
    now = m.utcnow()
    delays = {i: wait + n / float(rate) for n, i in enumerate(ids)}
    with state.engine().begin() as conn:
        conn.execute(
            _defer_statement(D),
            [
                {
                    "b_id": i,
                    "b_lease": lease_until,
                    "b_due": now + dt.timedelta(seconds=delay),
                    "b_updated": now,
                }
                for i, delay in delays.items()
            ],
        )
    for delivery_id, delay in delays.items():
        state.enqueue([delivery_id], delay=delay)
    return delays
