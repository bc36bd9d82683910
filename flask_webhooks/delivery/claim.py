"""Claiming deliveries: the lease that gives one worker one attempt at a time.

The claim is one conditional ``UPDATE ... RETURNING`` that takes the lease
(status ``delivering``, ``leased_until``, ``attempts + 1``) only if the row
is due and nobody holds it. The lease outlives the longest request (connect
timeout + read timeout + ``WEBHOOKS_LEASE_MARGIN``); a batch renews it
before a request it would not cover.
"""

from __future__ import annotations

import datetime as dt
import functools
import types
import typing as t

import sqlalchemy as sa

from .. import models as m
from .order import in_order
from .poison import count_claims
from .poison import DEFAULT_MAX_CLAIMS

if t.TYPE_CHECKING:
    from ..state import Config
    from ..state import WebhooksState

#: A task may arrive this early (clock skew between hosts) and still claim.
EARLY_TOLERANCE = dt.timedelta(seconds=1)
_CLAIMABLE = (m.PENDING, m.RETRYING)


def lease_seconds(config: Config, hook_timeout: float | None = None) -> float:
    """How long a claim lasts: connect + read timeout + the lease margin."""
    timeout = max(config.timeout, float(hook_timeout or 0))
    return config.connect_timeout + timeout + config.lease_margin


def _claim_columns(
    table: sa.Table, webhooks: sa.Table | None
) -> list[sa.ColumnElement[t.Any]]:
    c = table.c
    columns: list[sa.ColumnElement[t.Any]] = [
        c.id,
        c.webhook_id,
        c.attempts,
        c.body,
        c.payload,
        c.content_type,
        c.sequence,
    ]
    if webhooks is not None:
        # The webhook's version, so a cached copy of the webhook can be used
        # without reading it again.
        columns.append(
            sa.select(webhooks.c.updated_at)
            .where(webhooks.c.id == c.webhook_id)
            .scalar_subquery()
            .label("webhook_updated_at")
        )
    return columns


@functools.lru_cache(maxsize=32)
def _claim_statements(
    table: sa.Table,
    webhooks: sa.Table | None,
    no_flush_wait: bool = False,
    ordered: bool = False,
) -> tuple[t.Any, t.Any, t.Any]:
    """The claim ``UPDATE`` (plain and with ``RETURNING``) and the read-back
    ``SELECT``, built once per table.

    Building a statement and its cache key costs SQLAlchemy more than running
    it (benchmarks/README.md), so the statements of an attempt are built once
    with bind parameters.
    """
    c = table.c
    stmt = (
        sa.update(table)
        .where(c.id.in_(sa.bindparam("b_ids", expanding=True)))
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
    stmt = count_claims(stmt, table)
    if ordered:
        # Per-object order: not while an earlier delivery of the object is open.
        stmt = stmt.where(in_order(table))
    if no_flush_wait:
        # PostgreSQL: the (autocommitted) statement's own transaction commits
        # without waiting for the WAL flush; see _claiming.
        stmt = stmt.where(
            sa.func.set_config("synchronous_commit", "off", True) == "off"
        )
    columns = _claim_columns(table, webhooks)
    # Without RETURNING: the rows carrying this claim's lease are ours.
    read_back = sa.select(*columns).where(
        c.id.in_(sa.bindparam("b_ids", expanding=True)),
        c.status == m.DELIVERING,
        c.leased_until == sa.bindparam("b_lease_until"),
    )
    return stmt, stmt.returning(*columns), read_back


@functools.lru_cache(maxsize=32)
def _webhook_statement(table: sa.Table) -> t.Any:
    return sa.select(table).where(table.c.id.in_(sa.bindparam("b_ids", expanding=True)))


@functools.lru_cache(maxsize=32)
def _renew_statement(table: sa.Table) -> t.Any:
    """Extends the lease of rows still carrying this worker's lease."""
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id.in_(sa.bindparam("b_ids", expanding=True)),
            c.status == m.DELIVERING,
            c.leased_until == sa.bindparam("b_old"),
        )
        .values(leased_until=sa.bindparam("b_new"))
    )


def claim_many(
    conn: sa.Connection,
    table: sa.Table,
    delivery_ids: t.Sequence[str],
    now: dt.datetime,
    lease: float,
    webhooks: sa.Table | None = None,
    *,
    no_flush_wait: bool = False,
    max_claims: int = DEFAULT_MAX_CLAIMS,
    ordered: bool = False,
) -> list[sa.Row[t.Any]]:
    """Atomically take the due ones of ``delivery_ids`` for one attempt each.

    One conditional ``UPDATE``: it matches only ``pending``/``retrying`` rows
    that are due, or ``delivering`` rows whose lease has expired (their
    worker died). Returns the claimed rows (``id``, ``webhook_id``,
    ``attempts`` (this attempt's number), ``body``, ``payload``,
    ``content_type``), in no particular order; rows someone else holds or
    that are not due are left out. All of them get the same ``leased_until``
    (``now`` + ``lease``), which identifies this claim. With ``webhooks``
    (the webhook table) each row also carries ``webhook_updated_at``.
    ``no_flush_wait`` (PostgreSQL, autocommit connections only) lets the
    statement's transaction commit without waiting for the disk. Rows
    already claimed ``max_claims`` times without a recorded result are
    skipped (poison, see :mod:`.poison`). With ``ordered`` a row is also
    left out while an earlier delivery of its object is open (see
    :mod:`.order`).
    """
    update, update_returning, read_back = _claim_statements(
        table, webhooks, no_flush_wait, ordered
    )
    params = {
        "b_ids": list(delivery_ids),
        "b_due": now + EARLY_TOLERANCE,
        "b_now": now,
        "b_lease_until": now + dt.timedelta(seconds=lease),
        "b_updated_at": now,
        "b_max_claims": max_claims,
    }
    if conn.dialect.update_returning:
        return list(conn.execute(update_returning, params))
    if conn.execute(update, params).rowcount == 0:
        return []
    return list(conn.execute(read_back, params))


def claim(
    conn: sa.Connection,
    table: sa.Table,
    delivery_id: str,
    now: dt.datetime,
    lease: float,
    *,
    ordered: bool = True,
) -> sa.Row[t.Any] | None:
    """Atomically take one delivery for one attempt (see :func:`claim_many`).

    Returns the claimed row, or None if someone else has it, it is not due
    or (``ordered``) an earlier delivery of its object is open.
    """
    rows = claim_many(conn, table, [delivery_id], now, lease, ordered=ordered)
    return rows[0] if rows else None


def claiming(engine: sa.Engine) -> t.ContextManager[sa.Connection]:
    """The connection of a claim.

    On PostgreSQL the claim is one autocommitted statement that also sets
    ``synchronous_commit`` off for its own transaction
    (``set_config(..., true)``), so it costs one round trip and does not wait
    for the WAL flush: the claim is the first database step on the path from
    a commit to the receiver, and ``BEGIN``, the flush and ``COMMIT`` would
    be most of its time (benchmarks/README.md). A database crash
    could at worst lose the claim of an attempt in flight; the delivery is
    then sent again under the same attempt number, which at-least-once
    delivery allows anyway. The next synchronous commit (the attempt's
    result) flushes the claim with it. Elsewhere (SQLite) the claim runs in
    a transaction: applications commonly take over SQLite's ``BEGIN`` (for
    SAVEPOINT support), which autocommit would bypass.
    """
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.begin()


def claimed_webhooks(
    state: WebhooksState, conn: sa.Connection, W: sa.Table, rows: list[sa.Row[t.Any]]
) -> dict[t.Any, types.SimpleNamespace]:
    """The webhooks of the claimed ``rows``, as mutable copies.

    Webhook rows are cached per process and used while their ``updated_at``
    (returned by the claim) is unchanged; every change of a webhook's
    settings moves it (the health columns, which do not, are rewritten by
    conditional statements). Only unknown or changed webhooks are read.
    """
    cache = state.webhook_cache
    wanted = {
        r.webhook_id: r.webhook_updated_at for r in rows if r.webhook_id is not None
    }
    stale = [
        hook_id
        for hook_id, version in wanted.items()
        if version is None or hook_id not in cache or cache[hook_id][0] != version
    ]
    if stale:
        found = {
            h.id: h._mapping
            for h in conn.execute(_webhook_statement(W), {"b_ids": stale})
        }
        for hook_id in stale:
            if hook_id in found:
                cache[hook_id] = (found[hook_id]["updated_at"], dict(found[hook_id]))
            else:
                cache.pop(hook_id, None)
    return {
        hook_id: types.SimpleNamespace(**cache[hook_id][1])
        for hook_id in wanted
        if hook_id in cache
    }


def renew(
    state: WebhooksState,
    table: sa.Table,
    delivery_ids: list[str],
    old: dt.datetime,
    new: dt.datetime,
) -> set[str]:
    """Move the lease of ``delivery_ids`` from ``old`` to ``new``; return the
    ids that were no longer ours (another worker claimed them after our lease
    ran out)."""
    with state.engine().begin() as conn:
        done = conn.execute(
            _renew_statement(table), {"b_ids": delivery_ids, "b_old": old, "b_new": new}
        ).rowcount
        if done == len(delivery_ids):
            return set()
        c = table.c
        kept = set(
            conn.execute(
                sa.select(c.id).where(c.id.in_(delivery_ids), c.leased_until == new)
            ).scalars()
        )
    return set(delivery_ids) - kept
