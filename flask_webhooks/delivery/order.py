"""Per-object order: deliveries of one webhook for one object go in commit order.

The *order key* of a delivery is (webhook, model, object id); deliveries
with an empty object id (``test`` deliveries) have none. Each delivery has
a ``sequence`` that grows with commit order for one object (see
:mod:`flask_webhooks.capture.numbering`). With ``WEBHOOKS_ORDERING =
"object"`` (the default):

* **The claim enforces it.** A delivery is claimed only while no delivery
  of its key with a lower sequence is open (``pending``, ``delivering``,
  ``retrying``): :func:`in_order`, one more condition in the claim's
  conditional ``UPDATE``. Whatever runs a task (threads, processes, hosts,
  batches, sweeps, a worker taking over an expired lease), a later event of
  an object is never sent before an earlier one has finished.
* **Blocked deliveries are released at once.** A task whose delivery is
  blocked marks the open deliveries in its way (``has_waiters``,
  :func:`mark_blockers`) and ends; the row stays ``pending``. A delivery
  that finishes with ``has_waiters`` set (its result ``UPDATE`` is
  conditional on the flag being clear, so noticing costs nothing when
  nobody waits) runs :func:`release` after its result is committed: it
  enqueues the next open delivery of the key. The mark and the result
  write touch the same row, so one of the two sees the other: either the
  result sees the mark, or the mark finds the delivery finished and the
  blocked task claims again.
* **Updates may be collapsed.** For a webhook with ``collapse_updates``,
  :func:`release` sends only the newest of a run of ``updated`` deliveries
  that waited behind the finished one; the others end ``superseded``.
  ``created`` and ``deleted`` deliveries are never skipped, and an update
  never replaces one from the other side of a ``created`` or ``deleted``.

Different keys never wait for each other.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import typing as t

import sqlalchemy as sa

from .. import models as m

if t.TYPE_CHECKING:
    from ..state import WebhooksState

logger = logging.getLogger(__name__)

#: Ids per ``IN (...)`` list.
CHUNK = 500
#: Released deliveries of one webhook per batch task, at least (see
#: :func:`enqueue_released`): the enqueue's batch threshold.
RELEASE_BATCH = 10
#: A large release is cut into this many batch tasks, so that several
#: worker threads share it.
RELEASE_SPLIT = 4
_WAITING = (m.PENDING, m.RETRYING)


def _same_object(a: t.Any, b: t.Any) -> sa.ColumnElement[bool]:
    """``a`` and ``b`` (column collections of the delivery table or its
    aliases) have the same order key."""
    return sa.and_(
        a.webhook_id == b.webhook_id,
        a.object_id == b.object_id,
        sa.or_(a.model == b.model, sa.and_(a.model.is_(None), b.model.is_(None))),
    )


def is_open(status: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """``status IN ('pending', 'delivering', 'retrying')`` with the values
    written out: only then can SQLite use the partial index on open rows
    (it cannot prove that bound parameters match the index's condition)."""
    return status.in_([sa.literal_column(f"'{s}'") for s in m.OPEN_STATUSES])


def in_order(table: sa.Table) -> sa.ColumnElement[bool]:
    """The rows of ``table`` (in a statement on it) that no earlier open
    delivery of their key holds back."""
    c = table.c
    earlier = table.alias("earlier")
    e = earlier.c
    return sa.or_(
        c.object_id == "",
        ~sa.exists().where(
            _same_object(e, c),
            e.sequence < c.sequence,
            is_open(e.status),
        ),
    )


@functools.lru_cache(maxsize=32)
def _keys_statement(table: sa.Table) -> t.Any:
    """Order key and sequence of given deliveries, by primary key only.

    Used where the database plans joins without statistics (SQLite without
    ``ANALYZE``): a join of the given rows with the open ones was planned as
    a scan of every open delivery (ix_webhooks_delivery_due) per given row,
    seconds for a backlog of a few thousand.
    """
    c = table.c
    return sa.select(c.webhook_id, c.model, c.object_id, c.sequence).where(
        c.id.in_(sa.bindparam("b_ids", expanding=True)), c.object_id != ""
    )


def _one_object(c: t.Any) -> sa.ColumnElement[bool]:
    """``c`` has the order key given by the ``k_*`` parameters."""
    return sa.and_(
        c.webhook_id == sa.bindparam("k_webhook_id"),
        c.object_id == sa.bindparam("k_object_id"),
        c.model.is_not_distinct_from(sa.bindparam("k_model")),
    )


def _keys(
    conn: sa.Connection, table: sa.Table, ids: list[str], *, lowest: bool
) -> list[dict[str, t.Any]]:
    """The order keys of ``ids`` with, per key, their highest (or lowest)
    sequence, as ``k_*`` parameters."""
    found: dict[tuple[t.Any, ...], int] = {}
    for row in conn.execute(_keys_statement(table), {"b_ids": ids}):
        if row.webhook_id is None or row.sequence is None:
            continue
        key = (row.webhook_id, row.model, row.object_id)
        seen = found.get(key)
        if seen is None or (row.sequence < seen if lowest else row.sequence > seen):
            found[key] = row.sequence
    return [
        {"k_webhook_id": w, "k_model": model, "k_object_id": o, "k_sequence": seq}
        for (w, model, o), seq in found.items()
    ]


@functools.lru_cache(maxsize=32)
def _mark_statements(table: sa.Table) -> tuple[t.Any, t.Any, t.Any]:
    """The open deliveries in the way of some waiting ones (``SELECT``), the
    flag of one of them, and the flag of those in the way of one waiting
    key (``k_*`` parameters)."""
    waiting = table.alias("waiting")
    blocker = table.alias("blocker")
    w, b, c = waiting.c, blocker.c, table.c
    blockers = (
        sa.select(b.id)
        .select_from(waiting)
        .join(blocker, _same_object(b, w))
        .where(
            w.id.in_(sa.bindparam("b_ids", expanding=True)),
            w.object_id != "",
            b.sequence < w.sequence,
            is_open(b.status),
            sa.not_(b.has_waiters),
        )
    )
    flag = sa.update(table).values(has_waiters=True, updated_at=c.updated_at)
    one = flag.where(
        c.id == sa.bindparam("b_id"), is_open(c.status), sa.not_(c.has_waiters)
    )
    per_key = flag.where(
        _one_object(c),
        c.sequence < sa.bindparam("k_sequence"),
        is_open(c.status),
        sa.not_(c.has_waiters),
    )
    return blockers, one, per_key


def mark_blockers(conn: sa.Connection, table: sa.Table, ids: t.Sequence[str]) -> int:
    """Flag the open deliveries that hold back ``ids`` (deliveries a claim
    did not get): when one of them finishes, it releases the next.

    The caller claims ``ids`` again afterwards: a blocker that finished
    between the claim and this mark is not flagged, and its successor is
    free by then. Returns how many rows were flagged.

    On PostgreSQL (the claim's autocommitted connection) each row is flagged
    by a statement of its own, so a mark never holds one row lock while
    waiting for another: it cannot deadlock with a batch's claim or result,
    which lock several rows in their own order.
    """
    if not ids:
        return 0
    blockers, one, per_key = _mark_statements(table)
    params = {"b_ids": list(ids)}
    if conn.dialect.name != "postgresql":
        keys = _keys(conn, table, list(ids), lowest=False)
        return int(conn.execute(per_key, keys).rowcount) if keys else 0
    found = list(dict.fromkeys(conn.execute(blockers, params).scalars()))
    return sum(int(conn.execute(one, {"b_id": i}).rowcount) for i in found)


@functools.lru_cache(maxsize=32)
def _chains_statement(table: sa.Table, webhooks: sa.Table) -> t.Any:
    """The open deliveries of the keys of some given (finished) deliveries,
    with the sequence of the finished one they waited behind and whether
    their webhook collapses updates."""
    done = table.alias("done")
    d, c, w = done.c, table.c, webhooks.c
    return (
        sa.select(
            c.id,
            c.webhook_id,
            c.model,
            c.object_id,
            c.sequence,
            c.event,
            c.status,
            c.next_attempt_at,
            d.sequence.label("after"),
            sa.select(w.collapse_updates)
            .where(w.id == c.webhook_id)
            .scalar_subquery()
            .label("collapse"),
        )
        .select_from(done)
        .join(table, _same_object(c, d))
        .where(
            d.id.in_(sa.bindparam("b_ids", expanding=True)),
            d.object_id != "",
            is_open(c.status),
        )
    )


@functools.lru_cache(maxsize=32)
def _one_chain_statement(table: sa.Table, webhooks: sa.Table) -> t.Any:
    """The open deliveries of one order key (``k_*`` parameters)."""
    c, w = table.c, webhooks.c
    return sa.select(
        c.id,
        c.webhook_id,
        c.model,
        c.object_id,
        c.sequence,
        c.event,
        c.status,
        c.next_attempt_at,
        sa.bindparam("k_sequence", type_=sa.BigInteger).label("after"),
        sa.select(w.collapse_updates)
        .where(w.id == c.webhook_id)
        .scalar_subquery()
        .label("collapse"),
    ).where(_one_object(c), is_open(c.status))


def _chain_rows(
    conn: sa.Connection,
    table: sa.Table,
    statement: t.Any,
    one_chain: t.Any,
    ids: list[str],
) -> list[t.Any]:
    """The rows of :func:`_chains_statement` for ``ids``: that one join on
    PostgreSQL; elsewhere the keys by primary key, then ``one_chain`` per
    key (see :func:`_keys_statement`)."""
    if conn.dialect.name == "postgresql":
        return list(conn.execute(statement, {"b_ids": ids}))
    found: list[t.Any] = []
    for key in _keys(conn, table, ids, lowest=True):
        found.extend(conn.execute(one_chain, key))
    return found


@functools.lru_cache(maxsize=32)
def _supersede_statement(table: sa.Table) -> t.Any:
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id.in_(sa.bindparam("b_ids", expanding=True)),
            c.status.in_(_WAITING),
        )
        .values(
            status=m.SUPERSEDED,
            next_attempt_at=None,
            leased_until=None,
            completed_at=sa.bindparam("b_now"),
            updated_at=sa.bindparam("b_now"),
        )
    )


def collapsible(chain: t.Sequence[t.Any], after: int | None) -> list[str]:
    """The ids of ``chain`` (one key's open deliveries, in sequence order)
    that newer updates replace.

    Only deliveries that waited behind the finished one (sequence above
    ``after``) and are not being sent count. Of each run of ``updated``
    deliveries among them, all but the last are replaced; any other event,
    or a delivery being sent, ends a run.
    """
    skipped: list[str] = []
    run: list[str] = []
    for row in chain:
        waited = after is not None and row.sequence is not None and row.sequence > after
        if waited and row.event == m.UPDATED and row.status in _WAITING:
            run.append(row.id)
            continue
        skipped.extend(run[:-1])
        run = []
    skipped.extend(run[:-1])
    return skipped


def release(
    state: WebhooksState, ids: t.Iterable[str], *, now: dt.datetime | None = None
) -> list[str]:
    """After ``ids`` finished (committed): enqueue the next open delivery of
    each of their keys, if it is due. Collapses waiting updates first for
    webhooks with ``collapse_updates``. Returns the ids enqueued.

    One query for all of ``ids`` (per :data:`CHUNK`), plus one ``UPDATE``
    when updates are superseded. Does nothing with ``WEBHOOKS_ORDERING =
    "none"``.
    """
    ids = list(dict.fromkeys(ids))
    if not ids or not state.config.ordered:
        return []
    now = now or m.utcnow()
    D = state.models.Delivery.__table__
    statement = _chains_statement(D, state.models.Webhook.__table__)
    chains: dict[tuple[t.Any, ...], dict[str, t.Any]] = {}
    after: dict[tuple[t.Any, ...], int | None] = {}
    collapse: set[t.Any] = set()
    one_chain = _one_chain_statement(D, state.models.Webhook.__table__)
    with state.engine().connect() as conn:
        for start in range(0, len(ids), CHUNK):
            rows = _chain_rows(
                conn, D, statement, one_chain, ids[start : start + CHUNK]
            )
            for row in rows:
                key = (row.webhook_id, row.model, row.object_id)
                chains.setdefault(key, {})[row.id] = row
                if row.after is not None:
                    seen = after.get(key)
                    after[key] = row.after if seen is None else min(seen, row.after)
                if row.collapse:
                    collapse.add(row.webhook_id)
    if not chains:
        return []
    superseded: list[str] = []
    heads: list[tuple[str, t.Any]] = []
    for key, found in chains.items():
        chain = sorted(found.values(), key=_by_sequence)
        if key[0] in collapse:
            skip = collapsible(chain, after.get(key))
            if skip:
                superseded.extend(skip)
                gone = set(skip)
                chain = [r for r in chain if r.id not in gone]
        head = chain[0]
        due = head.next_attempt_at is None or head.next_attempt_at <= now
        if head.status in _WAITING and due:
            heads.append((head.id, head.webhook_id))
    if superseded:
        with state.engine().begin() as conn:
            for start in range(0, len(superseded), CHUNK):
                conn.execute(
                    _supersede_statement(D),
                    {"b_ids": superseded[start : start + CHUNK], "b_now": now},
                )
        logger.info(
            "flask-webhooks: %d updates superseded by newer ones", len(superseded)
        )
    if heads:
        enqueue_released(state, heads)
    return [i for i, _ in heads]


def release_quietly(state: WebhooksState, ids: t.Sequence[str]) -> None:
    """:func:`release`, for code whose own work is already committed: a
    failure is logged, never raised (the sweep enqueues what it misses)."""
    if not ids:
        return
    try:
        release(state, ids)
    except Exception:
        logger.exception(
            "flask-webhooks: releasing the deliveries waiting for %s failed; "
            "sweep() will enqueue them",
            ", ".join(ids),
        )


def _by_sequence(row: t.Any) -> tuple[bool, int]:
    return (row.sequence is None, row.sequence or 0)


_local = threading.local()


def enqueue_released(state: WebhooksState, heads: list[tuple[str, t.Any]]) -> None:
    """Enqueue released deliveries (``(id, webhook_id)`` pairs).

    A webhook's released deliveries (a wave of many objects' next events)
    go as :data:`RELEASE_SPLIT` batch tasks, each claimed and recorded at
    once and taken by different worker threads, of at least
    :data:`RELEASE_BATCH` and at most ``WEBHOOKS_DELIVERY_BATCH_SIZE``
    deliveries; fewer than :data:`RELEASE_BATCH` go one task each.

    With a synchronous queue (``immediate://``, :func:`capture_deliveries`)
    the enqueue sends at once, and that delivery's own release would
    enqueue inside it: a long chain would nest one call per delivery.
    Releases made while one is running in this thread are queued and
    enqueued by the outermost one, in order.
    """
    by_hook: dict[t.Any, list[str]] = {}
    for delivery_id, hook_id in heads:
        by_hook.setdefault(hook_id, []).append(delivery_id)
    most = max(RELEASE_BATCH, state.config.delivery_batch_size)
    groups = []
    for hook_id, ids in by_hook.items():
        size = min(most, max(RELEASE_BATCH, -(-len(ids) // RELEASE_SPLIT)))
        groups += [(ids[i : i + size], hook_id) for i in range(0, len(ids), size)]
    waiting: list[tuple[list[str], t.Any]] | None = getattr(_local, "waiting", None)
    if waiting is not None:
        waiting.extend(groups)
        return
    _local.waiting = waiting = groups
    try:
        while waiting:
            ids, hook_id = waiting.pop(0)
            try:
                state.enqueue(ids, keys=[hook_id] * len(ids))
            except Exception:
                logger.exception(
                    "flask-webhooks: enqueueing %d released deliveries failed; "
                    "sweep() will enqueue them",
                    len(ids),
                )
    finally:
        _local.waiting = None


@functools.lru_cache(maxsize=32)
def _newer_statement(table: sa.Table) -> t.Any:
    newer = table.alias("newer")
    n, c = newer.c, table.c
    return sa.select(c.id).where(
        c.id.in_(sa.bindparam("b_ids", expanding=True)),
        c.object_id != "",
        sa.exists().where(
            _same_object(n, c),
            # Later in commit order means created later: this lets the
            # (webhook_id, created_at) index narrow the search.
            n.created_at >= c.created_at,
            n.sequence > c.sequence,
            n.status == m.SUCCEEDED,
        ),
    )


def newer_delivered(state: WebhooksState, ids: t.Sequence[str]) -> set[str]:
    """The ids of ``ids`` for which a later delivery of the same object (to
    the same webhook) has already succeeded: retrying them sends the
    receiver an older state than the one it has."""
    if not ids:
        return set()
    D = state.models.Delivery.__table__
    found: set[str] = set()
    with state.engine().connect() as conn:
        for start in range(0, len(ids), CHUNK):
            chunk = list(ids[start : start + CHUNK])
            found.update(conn.execute(_newer_statement(D), {"b_ids": chunk}).scalars())
    return found
