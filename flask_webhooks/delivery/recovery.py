"""Finding and re-queueing deliveries: the sweep and manual retries.

:func:`sweep` finds what a lost enqueue, a flushed queue or a killed worker
left behind: deliveries that are due and not leased. The periodic sweeper
marks the rows it enqueues by setting ``leased_until`` on
``pending``/``retrying`` rows ("queued by the sweeper until"), so several
sweepers do not enqueue the same row again and again while a backlog drains;
a worker's claim ignores that mark. :func:`requeue` makes deliveries due now
(manual retry) with one conditional ``UPDATE``.
"""

from __future__ import annotations

import datetime as dt
import logging
import typing as t

import sqlalchemy as sa

from .. import models as m
from .order import in_order
from .poison import fail_poisoned

if t.TYPE_CHECKING:
    from ..state import WebhooksState

logger = logging.getLogger(__name__)

#: Ids per ``IN (...)`` list and per enqueue batch.
CHUNK = 500

_CLAIMABLE = (m.PENDING, m.RETRYING)
_REQUEUEABLE = (m.FAILED, m.RETRYING, m.CANCELLED, m.PENDING)


def due_condition(table: sa.Table, now: dt.datetime) -> sa.ColumnElement[bool]:
    """Deliveries that are due and not leased by a worker at ``now``."""
    c = table.c
    return sa.or_(
        sa.and_(
            c.status.in_(_CLAIMABLE),
            sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
        ),
        _expired_lease(table, now),
    )


def _expired_lease(table: sa.Table, now: dt.datetime) -> sa.ColumnElement[bool]:
    c = table.c
    return sa.and_(
        c.status == m.DELIVERING,
        sa.or_(c.leased_until.is_(None), c.leased_until < now),
    )


def due_rows(
    state: WebhooksState, *, now: dt.datetime | None = None, older_than: float = 0
) -> list[tuple[str, t.Any]]:
    """(id, webhook_id) of the deliveries that are due and not leased by a
    live worker: ``pending`` rows, ``retrying`` rows whose
    ``next_attempt_at`` has come, ``delivering`` rows whose lease expired
    (their worker died).

    With ``WEBHOOKS_ORDERING = "object"``, rows that an earlier open
    delivery of their object holds back are left out: the earlier one
    releases them when it finishes.

    :param older_than: only rows due for at least this many seconds.
    """
    D = state.models.Delivery.__table__
    now = now or m.utcnow()
    cutoff = now - dt.timedelta(seconds=older_than)
    c = D.c
    stmt = sa.select(c.id, c.webhook_id).where(
        sa.or_(
            sa.and_(
                c.status.in_(_CLAIMABLE),
                sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= cutoff),
                *_heads_only(state, D),
            ),
            _expired_lease(D, now),
        )
    )
    with state.engine().connect() as conn:
        return [
            (r.id, r.webhook_id)
            for r in conn.execute(stmt.order_by(c.next_attempt_at, c.created_at))
        ]


def _heads_only(state: WebhooksState, table: sa.Table) -> list[t.Any]:
    """The condition that keeps blocked rows out of a sweep, if ordered."""
    return [in_order(table)] if state.config.ordered else []


def _waiting_tasks(state: WebhooksState) -> int:
    """Tasks waiting in the queue (0 when the backend cannot tell)."""
    try:
        return int(state.huey.pending_count())
    except Exception:
        return 0


def _count(conn: sa.Connection, table: sa.Table, where: t.Any) -> int:
    return int(conn.execute(sa.select(sa.func.count()).where(where)).scalar_one())


def sweep(
    state: WebhooksState,
    *,
    now: dt.datetime | None = None,
    older_than: float = 0.0,
    hold: float | None = None,
) -> int:
    """Enqueue every delivery that is due and not leased; return the count.

    Without ``hold`` this is :meth:`Webhooks.sweep`: everything due is
    enqueued. The periodic sweeper passes ``hold``: the rows it enqueues are
    marked (``leased_until = now + hold``) in one atomic ``UPDATE ...
    RETURNING``, and marked rows are skipped until the mark expires, so
    several sweepers and repeated sweeps over a large backlog enqueue each
    row once per ``hold``. If the enqueue fails (queue down) the marks are
    removed again. Rows an earlier open delivery of their object holds back
    are left to its release (``WEBHOOKS_ORDERING = "object"``). While the
    queue holds at least as many tasks as there are due rows, the periodic
    sweep takes them for a backlog still draining and enqueues only rows
    whose worker died (expired leases).

    Deliveries claimed ``WEBHOOKS_MAX_CLAIMS`` times without a recorded
    result are ended as ``failed`` first (:func:`.poison.fail_poisoned`).

    :param older_than: leave rows due for less than this many seconds to the
        enqueue that follows their commit.
    """
    now = now or m.utcnow()
    fail_poisoned(state, now=now)
    if hold is None:
        rows = due_rows(state, now=now, older_than=older_than)
        _enqueue(state, rows)
        return len(rows)
    D = state.models.Delivery.__table__
    c = D.c
    cutoff = now - dt.timedelta(seconds=older_than)
    mark = now + dt.timedelta(seconds=hold)
    fresh = sa.and_(
        c.status.in_(_CLAIMABLE),
        sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= cutoff),
        sa.or_(c.leased_until.is_(None), c.leased_until < now),
        *_heads_only(state, D),
    )
    engine = state.engine()
    waiting = _waiting_tasks(state)
    with engine.begin() as conn:
        expired = [
            (r.id, r.webhook_id)
            for r in conn.execute(
                sa.select(c.id, c.webhook_id).where(_expired_lease(D, now))
            )
        ]
        stmt = sa.update(D).where(fresh).values(leased_until=mark)
        due = _count(conn, D, fresh) if waiting else None
        # A waiting task carries one delivery, or up to a batch of them.
        capacity = waiting * state.config.delivery_batch_size
        marked: list[tuple[str, t.Any]]
        if due == 0 or (due is not None and capacity >= due):
            # A backlog the workers have not reached yet, not a lost enqueue:
            # the queue's tasks may hold every due row. Enqueueing them again
            # would only double the backlog; once the queue is empty, a lost
            # row is enqueued by the next sweep.
            marked = []
        elif due is None and _nothing_to_write(conn, D, fresh):
            marked = []
        elif conn.dialect.update_returning:
            marked = [
                (r.id, r.webhook_id)
                for r in conn.execute(stmt.returning(c.id, c.webhook_id))
            ]
        else:
            marked = [
                (r.id, r.webhook_id)
                for r in conn.execute(sa.select(c.id, c.webhook_id).where(fresh))
            ]
            for chunk in _chunks([i for i, _ in marked]):
                conn.execute(stmt.where(c.id.in_(chunk)))
    rows = expired + marked
    try:
        _enqueue(state, rows)
    except Exception:
        if marked:
            with engine.begin() as conn:
                conn.execute(
                    sa.update(D)
                    .where(c.status.in_(_CLAIMABLE), c.leased_until == mark)
                    .values(leased_until=None)
                )
        raise
    return len(rows)


def _nothing_to_write(
    conn: sa.Connection, table: sa.Table, where: sa.ColumnElement[bool]
) -> bool:
    """On SQLite, whether a conditional write would match no row.

    SQLite commits even a no-op ``UPDATE`` with a database-wide exclusive
    lock, which waits for every open reader (a web request's session, say).
    Checking first keeps no-op retries and sweeps from blocking. The
    ``UPDATE`` that follows still decides atomically.
    """
    if conn.dialect.name != "sqlite":
        return False
    return conn.execute(sa.select(table.c.id).where(where).limit(1)).first() is None


def _enqueue(state: WebhooksState, rows: list[tuple[str, t.Any]]) -> None:
    """Enqueue (id, webhook_id) pairs: bursts of one webhook as batches."""
    if rows:
        state.enqueue(
            [i for i, _ in rows],
            keys=[w for _, w in rows],
        )


def _chunks(ids: t.Sequence[str], size: int = CHUNK) -> t.Iterator[t.Sequence[str]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def requeue(
    state: WebhooksState,
    ids: t.Sequence[str],
    *,
    now: dt.datetime | None = None,
    statuses: t.Sequence[str] = _REQUEUEABLE,
) -> list[str]:
    """Make deliveries due now (manual retry); returns the ids that changed.

    One conditional ``UPDATE`` (with ``RETURNING`` where the dialect has it)
    per chunk of ids: ``failed``, ``retrying``, ``cancelled`` and ``pending``
    deliveries become ``pending``; deliveries being sent or already succeeded
    are left alone. The attempt count goes on, so a delivery that exhausted
    its schedule gets one more attempt.

    :param statuses: the statuses that may be made due again (a replay,
        :mod:`.replay`, adds ``succeeded`` and ``superseded``); ``delivering``
        is never touched.
    """
    if not ids:
        return []
    D = state.models.Delivery.__table__
    c = D.c
    now = now or m.utcnow()
    changed: list[str] = []
    with state.engine().begin() as conn:
        for chunk in _chunks(list(dict.fromkeys(str(i) for i in ids))):
            where = sa.and_(
                c.id.in_(chunk),
                c.status.in_([s for s in statuses if s != m.DELIVERING]),
            )
            if _nothing_to_write(conn, D, where):
                continue
            stmt = (
                sa.update(D)
                .where(where)
                .values(
                    status=m.PENDING,
                    next_attempt_at=now,
                    leased_until=None,
                    completed_at=None,
                    updated_at=now,
                    claims=0,
                )
            )
            if conn.dialect.update_returning:
                changed.extend(conn.execute(stmt.returning(c.id)).scalars())
            else:
                conn.execute(stmt)
                changed.extend(
                    conn.execute(
                        sa.select(c.id).where(
                            c.id.in_(chunk),
                            c.status == m.PENDING,
                            c.updated_at == now,
                        )
                    ).scalars()
                )
    return changed
