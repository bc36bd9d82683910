"""Replaying a time range: send stored deliveries again, exactly as they were.

A replay selects deliveries by webhook, creation time and status
(:func:`select_replay`), counts them (:func:`count_replay`) so the operator
can confirm, and makes them due again (:func:`replay`). Nothing is rendered
again: a replayed delivery sends its stored body bytes with its own
``X-Webhook-ID`` and its original ``X-Webhook-Sequence``, so a receiver
that deduplicates or checks order sees the same message it saw (or missed)
the first time.

Per-object order is kept: the deliveries are made due in sequence order
and, with ``WEBHOOKS_ORDERING = "object"``, the claim sends a delivery only
while no earlier one of its object is open, whatever the
number of workers.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa

from .. import models as m
from .recovery import requeue

if t.TYPE_CHECKING:
    from ..state import WebhooksState

#: Statuses a replay may send again (a delivery being sent is left alone).
REPLAYABLE = (
    m.FAILED,
    m.SUCCEEDED,
    m.CANCELLED,
    m.SUPERSEDED,
    m.RETRYING,
    m.PENDING,
)
#: The ``--status`` choices of a replay and the statuses each selects.
REPLAY_CHOICES: dict[str, tuple[str, ...]] = {
    "failed": (m.FAILED,),
    "succeeded": (m.SUCCEEDED,),
    "cancelled": (m.CANCELLED,),
    "superseded": (m.SUPERSEDED,),
    "all": REPLAYABLE,
}


def replay_statuses(choice: str) -> tuple[str, ...]:
    """The statuses a ``--status`` choice selects.

    :raises ValueError: ``choice`` is not one of :data:`REPLAY_CHOICES`.
    """
    try:
        return REPLAY_CHOICES[choice]
    except KeyError:
        known = ", ".join(REPLAY_CHOICES)
        raise ValueError(
            f"status {choice!r} cannot be replayed; use one of: {known}"
        ) from None


def replay_filter(
    state: WebhooksState,
    *,
    webhook_id: t.Any = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    statuses: t.Sequence[str] = REPLAYABLE,
) -> sa.ColumnElement[bool]:
    """The condition on the delivery table selecting a replay.

    :param webhook_id: only deliveries of this webhook.
    :param since: only deliveries created at or after this time.
    :param until: only deliveries created before this time.
    :param statuses: only deliveries with one of these statuses
        (``delivering`` is always left out).
    """
    c = state.models.Delivery.__table__.c
    wanted = [s for s in statuses if s in REPLAYABLE]
    where: list[sa.ColumnElement[bool]] = [c.status.in_(wanted)]
    if webhook_id is not None:
        where.append(c.webhook_id == webhook_id)
    if since is not None:
        where.append(c.created_at >= since)
    if until is not None:
        where.append(c.created_at < until)
    return sa.and_(*where)


def in_replay_order(
    state: WebhooksState, where: sa.ColumnElement[bool]
) -> sa.Select[t.Any]:
    """The ids matching ``where`` in the order a replay sends them: by
    sequence (commit order), then creation time."""
    c = state.models.Delivery.__table__.c
    return (
        sa.select(c.id)
        .where(where)
        .order_by(c.sequence.is_(None), c.sequence, c.created_at, c.id)
    )


def select_replay(state: WebhooksState, where: sa.ColumnElement[bool]) -> list[str]:
    """The ids of the deliveries matching ``where`` (see
    :func:`replay_filter`), in replay order."""
    with state.engine().connect() as conn:
        return list(conn.execute(in_replay_order(state, where)).scalars())


def count_replay(state: WebhooksState, where: sa.ColumnElement[bool]) -> dict[str, int]:
    """How many deliveries match ``where``, per status (only statuses with
    any, in the order of ``flask_webhooks.models.STATUSES``)."""
    c = state.models.Delivery.__table__.c
    with state.engine().connect() as conn:
        found = {
            status: n
            for status, n in conn.execute(
                sa.select(c.status, sa.func.count()).where(where).group_by(c.status)
            )
        }
    return {s: int(found[s]) for s in m.STATUSES if found.get(s)}


def replay(
    state: WebhooksState,
    ids: t.Sequence[str],
    *,
    now: dt.datetime | None = None,
    enqueue: bool = True,
) -> list[str]:
    """Make ``ids`` (in replay order) due now and hand them to the queue.

    Each delivery keeps its id, body and sequence; its status becomes
    ``pending`` and its attempt count goes on. Deliveries being sent right
    now are left alone. Returns the ids replayed, in the given order.

    :param enqueue: hand the replayed ids to the queue (otherwise the sweep
        finds them).
    """
    changed = set(requeue(state, ids, now=now, statuses=REPLAYABLE))
    done = [i for i in ids if i in changed]
    if enqueue and done:
        state.enqueue(done)
    return done
