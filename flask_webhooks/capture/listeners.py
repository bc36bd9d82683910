"""Session listeners: collect changes, coalesce them, write outbox rows.

How a transaction flows through here:

1. ``before_flush``: every new, really-modified or deleted instance of a
   registered model that some enabled webhook listens to is appended to the
   transaction's *journal* (creates as a reference, updates with the column
   values before the change, deletes serialized now, while the row exists).
2. Savepoints record the journal length when they begin; rolling one back
   truncates the journal to it. A rollback or a close without commit drops it.
3. ``before_commit`` (outermost transaction only): flush, then hand the
   journal to :func:`.outbox.build_chunks` (coalesce into one event per
   object with its final state, serialize each object once, match webhooks)
   and write the deliveries chunk by chunk with one executemany each (plus,
   for events several plain webhooks take, one staged row per event copied
   per webhook in SQL), in the user's transaction (transactional outbox).
4. ``after_commit``: hand the new delivery ids to the queue.

:func:`journal_app_event` (``Webhooks.publish``) appends app events to the
same journal, so they follow the same savepoints, rollbacks and commit, and
keep their place among the model changes.

Nothing here may break the user's commit: errors are logged, or recorded on
the delivery rows as ``failed``.
"""

from __future__ import annotations

import logging
import typing as t
import uuid
import warnings
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from flask import g
from flask import has_app_context
from flask import has_request_context
from flask import request
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm.base import PASSIVE_NO_INITIALIZE
from sqlalchemy.orm.state import InstanceState

from .. import models as m
from ..sanitize import scrub
from ..state import lookup_state
from .journal import AppEntry
from .journal import Entry
from .outbox import build_chunks
from .outbox import failed_rows

if t.TYPE_CHECKING:
    from ..registry import Registration
    from ..state import WebhooksState
    from .index import Index

logger = logging.getLogger(__name__)

_INFO_KEY = "flask_webhooks"
_DIRECT_COLLECTION = "flask_webhooks.collection_changed"


@dataclass(eq=False)
class _Transaction:
    """Per-session capture state for the outermost transaction."""

    state: WebhooksState
    index: Index
    journal: list[Entry | AppEntry] = field(default_factory=list)
    marks: dict[SessionTransaction, int] = field(default_factory=dict)
    deleted: set[InstanceState[t.Any]] = field(default_factory=set)
    to_enqueue: list[str] = field(default_factory=list)
    #: The webhook id of each id in ``to_enqueue`` (batches group by webhook).
    enqueue_keys: list[t.Hashable] = field(default_factory=list)


# -- listener registration ---------------------------------------------------


def install_session_listeners(session_cls: t.Any) -> None:
    """Attach the capture listeners to a session class (or scoped_session)."""
    for name, fn in (
        ("after_transaction_create", _after_transaction_create),
        ("before_flush", _before_flush),
        ("after_flush_postexec", _after_flush_postexec),
        ("after_rollback", _after_rollback),
        ("after_transaction_end", _after_transaction_end),
        ("before_commit", _before_commit),
        ("after_commit", _after_commit),
        ("do_orm_execute", _do_orm_execute),
    ):
        if not event.contains(session_cls, name, fn):
            event.listen(session_cls, name, fn)


def install_model_listeners(reg: Registration) -> None:
    """Attribute and mapper listeners a registered model needs.

    * Column attributes get ``active_history`` so the old value is known even
      on an expired instance: an update of a column to its current value is
      then no change at all.
    * Collections mark their owner when changed directly (not through a
      backref), so ``site.tags.append(tag)`` updates the site, not the tag.
    * ``after_delete`` catches deletes the flush decides itself (orphans).
    """
    model = reg.model
    for key, _ in reg.columns:
        # The flag alone, no "set" listener: a listener would run a Python
        # call on every attribute set of every instance, a cost paid even
        # with nothing subscribed (benchmarks/README.md). Subclasses mapped
        # later copy the flag from their base class's attribute.
        for mapper in reg.mapper.self_and_descendants:
            if key in mapper.class_manager:
                mapper.class_manager[key].impl.active_history = True
    for key in reg.collections:
        attr = getattr(model, key)
        listener = _collection_listener(key)
        for name in ("append", "remove"):
            event.listen(attr, name, listener, raw=True, propagate=True)
    if not event.contains(model, "after_delete", _after_delete):
        event.listen(model, "after_delete", _after_delete, propagate=True)


def _collection_listener(key: str) -> t.Callable[..., None]:
    def listener(insp: InstanceState[t.Any], value: t.Any, initiator: t.Any) -> None:
        if initiator is not None and initiator.impl is insp.manager[key].impl:
            insp.info[_DIRECT_COLLECTION] = True

    return listener


# -- transaction bookkeeping -------------------------------------------------


def _state_for(session: Session) -> WebhooksState | None:
    if not has_app_context():
        return None
    state = lookup_state()
    if state is None or not state.enabled:
        return None
    # Listeners sit on the Flask-SQLAlchemy session class of one ``db``.
    if getattr(session, "_db", None) is not state.db:
        return None
    return state


def _tx(session: Session, create: bool = True) -> _Transaction | None:
    tx: _Transaction | None = session.info.get(_INFO_KEY)
    if tx is not None or not create:
        return tx
    state = _state_for(session)
    if state is None:
        return None
    try:
        index = state.index(session)
    except Exception:
        logger.exception("flask-webhooks: could not load the webhook index")
        return None
    tx = _Transaction(state, index)
    session.info[_INFO_KEY] = tx
    # Savepoints begun before we started capturing get a mark at the start.
    nested = session.get_nested_transaction()
    while nested is not None and nested.nested:
        tx.marks[nested] = 0
        nested = nested.parent
    return tx


def _after_transaction_create(
    session: Session, transaction: SessionTransaction
) -> None:
    if transaction.nested:
        tx = _tx(session, create=False)
        if tx is not None:
            tx.marks[transaction] = len(tx.journal)


def _after_rollback(session: Session) -> None:
    tx = _tx(session, create=False)
    if tx is None:
        return
    if session.in_nested_transaction():
        nested = session.get_nested_transaction()
        mark = tx.marks.get(nested) if nested is not None else None
        if mark is not None:
            _truncate(tx, mark)
            return
    session.info.pop(_INFO_KEY, None)


def _truncate(tx: _Transaction, mark: int) -> None:
    for entry in tx.journal[mark:]:
        if isinstance(entry, Entry) and entry.op == m.DELETED:
            tx.deleted.discard(entry.insp)
    del tx.journal[mark:]


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        # Outermost transaction over: committed (handled) or abandoned.
        session.info.pop(_INFO_KEY, None)
        return
    if transaction.nested:
        tx = _tx(session, create=False)
        if tx is not None:
            tx.marks.pop(transaction, None)


# -- collecting --------------------------------------------------------------


def _interested(tx: _Transaction, obj: t.Any) -> Registration | None:
    reg = tx.state.registry.for_class(type(obj))
    if reg is None or reg.name not in tx.index.models:
        return None
    return reg


def _before_flush(session: Session, flush_context: t.Any, instances: t.Any) -> None:
    tx: _Transaction | None = session.info.get(_INFO_KEY)
    new, dirty, deleted = session.new, session.dirty, session.deleted
    if tx is None:
        state = _state_for(session)
        if state is None:
            return
        lookup = state.registry.for_class
        if not any(
            lookup(type(obj)) is not None
            for objs in (new, dirty, deleted)
            for obj in objs
        ):
            return  # nothing registered in this flush: not even the index query
        tx = _tx(session)
        if tx is None:
            return
    journal = tx.journal
    for obj in new:
        reg = _interested(tx, obj)
        if reg is not None:
            journal.append(Entry(m.CREATED, reg, obj, sa.inspect(obj)))
    for obj in dirty:
        reg = _interested(tx, obj)
        if reg is None:
            continue
        insp: InstanceState[t.Any] = sa.inspect(obj)
        direct = insp.info.pop(_DIRECT_COLLECTION, False)
        pre = _update_prechange(reg, insp, direct)
        if pre is not None:
            journal.append(
                Entry(m.UPDATED, reg, obj, insp, pre=pre, collection_changed=direct)
            )
    for obj in deleted:
        reg = _interested(tx, obj)
        if reg is None:
            continue
        insp = sa.inspect(obj)
        entry = Entry(m.DELETED, reg, obj, insp, pre=_committed_snapshot(reg, insp))
        _dump_into(entry)
        journal.append(entry)
        tx.deleted.add(insp)


def _update_prechange(
    reg: Registration, insp: InstanceState[t.Any], direct_collection: bool
) -> dict[str, t.Any] | None:
    """Column values before this flush, or None when nothing really changed."""
    changed = direct_collection
    old: dict[str, t.Any] = {}
    manager = insp.manager
    for key in insp.committed_state:
        impl = manager[key].impl
        history = impl.get_history(insp, insp.dict, PASSIVE_NO_INITIALIZE)
        if not (history.added or history.deleted):
            continue
        if key in reg.collections:
            continue  # counted only when changed directly (see listeners)
        changed = True
        if history.deleted:
            old[key] = history.deleted[0]
    if not changed:
        return None
    pre = reg.snapshot(insp.obj())
    for key, value in old.items():
        if key in pre:
            pre[key] = value
    return pre


def _committed_snapshot(
    reg: Registration, insp: InstanceState[t.Any]
) -> dict[str, t.Any]:
    pre = reg.snapshot(insp.obj())
    manager = insp.manager
    for key in insp.committed_state:
        if key in pre:
            history = manager[key].impl.get_history(
                insp, insp.dict, PASSIVE_NO_INITIALIZE
            )
            if history.deleted:
                pre[key] = history.deleted[0]
    return pre


def _dump_into(entry: Entry) -> None:
    try:
        entry.data = entry.reg.dump(entry.obj)
    except Exception as e:
        logger.exception(
            "flask-webhooks: schema for %r failed to serialize an object",
            entry.reg.name,
        )
        entry.error = f"serialization failed: {type(e).__name__}: {e}"


def _after_delete(mapper: t.Any, connection: t.Any, target: t.Any) -> None:
    """Deletes the flush decided itself (delete-orphan) reach us only here."""
    session = sa.orm.object_session(target)
    if session is None:
        return
    tx = _tx(session, create=False)
    insp: InstanceState[t.Any] = sa.inspect(target)
    if tx is None or insp in tx.deleted:
        return
    reg = _interested(tx, target)
    if reg is None:
        return
    entry = Entry(
        m.DELETED, reg, target, insp, pre=reg.snapshot(target), dump_later=True
    )
    tx.journal.append(entry)
    tx.deleted.add(insp)


def _after_flush_postexec(session: Session, flush_context: t.Any) -> None:
    tx = _tx(session, create=False)
    if tx is None:
        return
    for entry in reversed(tx.journal):
        if not isinstance(entry, Entry) or not entry.dump_later:
            break
        entry.dump_later = False
        _dump_into(entry)


def _do_orm_execute(orm_execute_state: t.Any) -> t.Any:
    """Capture ORM bulk ``update()`` and ``delete()`` on registered models.

    They fire no flush events, so the affected rows are loaded first (by the
    statement's WHERE clause, or by the primary keys of an executemany
    parameter list): deletes are serialized before the statement runs,
    updates record their values before and are reloaded at commit. Bulk
    ``insert()`` cannot be captured without changing its result: it warns once.
    """
    is_update = orm_execute_state.is_update
    is_delete = orm_execute_state.is_delete
    is_insert = orm_execute_state.is_insert
    if not (is_update or is_delete or is_insert):
        return None
    mapper = orm_execute_state.bind_mapper
    if mapper is None or not orm_execute_state.is_orm_statement:
        return None
    session = orm_execute_state.session
    state = _state_for(session)
    if state is None:
        return None
    reg = state.registry.for_class(mapper.class_)
    if reg is None:
        return None
    if is_insert:
        _warn_bulk_insert(reg)
        return None
    tx = _tx(session)
    if tx is None or reg.name not in tx.index.models:
        return None
    objs = _bulk_targets(session, mapper, orm_execute_state)
    if is_delete:
        for obj in objs:
            insp = sa.inspect(obj)
            entry = Entry(m.DELETED, reg, obj, insp, pre=_committed_snapshot(reg, insp))
            _dump_into(entry)
            tx.journal.append(entry)
            tx.deleted.add(insp)
        return None
    entries = []
    for obj in objs:
        insp = sa.inspect(obj)
        entries.append(
            Entry(m.UPDATED, reg, obj, insp, pre=_committed_snapshot(reg, insp))
        )
    result = orm_execute_state.invoke_statement()
    for entry in entries:
        # Reload what the statement may have changed (unflushed edits are kept).
        keys = [k for k, _ in reg.columns if k not in entry.insp.committed_state]
        session.expire(entry.obj, keys)
    tx.journal.extend(entries)
    return result


def _bulk_targets(
    session: Session, mapper: t.Any, orm_execute_state: t.Any
) -> list[t.Any]:
    params = orm_execute_state.parameters
    if isinstance(params, list | tuple) and params:
        # Bulk UPDATE/DELETE by primary key: one parameter dict per row.
        keys = [mapper.get_property_by_column(c).key for c in mapper.primary_key]
        objs = (session.get(mapper.class_, tuple(p[k] for k in keys)) for p in params)
        return [o for o in objs if o is not None]
    statement = orm_execute_state.statement
    query = sa.select(mapper)
    if statement.whereclause is not None:
        query = query.where(statement.whereclause)
    with session.no_autoflush:
        return list(session.scalars(query))


def _warn_bulk_insert(reg: Registration) -> None:
    if reg.bulk_insert_warned:
        return
    reg.bulk_insert_warned = True
    warnings.warn(
        f"flask-webhooks: a bulk insert() on registered model {reg.name!r} "
        "bypasses per-object events and produces no webhook events. Add the "
        "objects to the session instead (session.add_all).",
        BulkStatementWarning,
        stacklevel=5,
    )


class BulkStatementWarning(UserWarning):
    """A bulk ``insert()`` touched a registered model: it produces no events."""


# -- app events --------------------------------------------------------------


def journal_app_event(session: Session, entry: AppEntry) -> bool:
    """Add a published app event to the journal of ``session``'s transaction.

    Returns False, doing nothing more, when capture is off for this session
    or no enabled webhook subscribes to the event type (the check is the
    transaction's webhook index: at most one small query per transaction).
    """
    tx: _Transaction | None = session.info.get(_INFO_KEY)
    if tx is None:
        tx = _tx(session)
        if tx is None:
            return False
    if entry.name not in tx.index.event_types:
        return False
    tx.journal.append(entry)
    return True


# -- committing --------------------------------------------------------------


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    tx = _tx(session, create=False)
    if tx is None and not session._is_clean():
        # Changes not flushed yet: let the flush collect them first.
        session.flush()
        tx = _tx(session, create=False)
    elif tx is not None:
        session.flush()
    if tx is None or not tx.journal:
        return
    state = tx.state
    request_id = current_request_id() or str(uuid.uuid4())
    username = state.username()
    conn = None
    try:
        conn = session.connection(
            bind_arguments={"mapper": sa.inspect(state.models.Delivery)}
        )
        writer = state.outbox
        chunks = build_chunks(
            tx.journal,
            tx.index,
            request_id=request_id,
            username=username,
            fanout=writer.fanout_available(conn),
        )
        # A savepoint: a failed write leaves the user's transaction usable
        # (PostgreSQL would otherwise abort it, and roll it back at COMMIT).
        with conn.begin_nested():
            ids, keys = writer.write_chunks(conn, chunks)
        tx.to_enqueue.extend(ids)
        tx.enqueue_keys.extend(keys)
    except Exception as e:
        logger.exception(
            "flask-webhooks: failed to record deliveries; the commit goes on"
        )
        if conn is not None:
            record_capture_failure(tx, conn, e, request_id, username)
    tx.journal.clear()


def record_capture_failure(
    tx: _Transaction,
    conn: sa.Connection,
    error: Exception,
    request_id: str,
    username: str | None,
) -> None:
    """After writing a commit's delivery rows failed: write a ``failed`` row
    with the error for each event and webhook instead, so no delivery is
    lost without a trace. Never raises."""
    message = scrub(
        f"could not record this delivery at commit time: {type(error).__name__}: "
        f"{error}"
    )[:4000]
    try:
        rows = failed_rows(
            tx.journal, tx.index, message, request_id=request_id, username=username
        )
        with conn.begin_nested():
            tx.state.outbox.write(conn, rows)
    except Exception:
        logger.exception(
            "flask-webhooks: could not record the failure either; the events of "
            "this commit have no delivery rows"
        )


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    tx = session.info.pop(_INFO_KEY, None)
    if tx is None or not tx.to_enqueue:
        return
    state = tx.state
    try:
        # A hung queue must not hold up the user's commit for long: the rows
        # are committed, and the sweep enqueues whatever this misses.
        state.enqueue(
            tx.to_enqueue, keys=tx.enqueue_keys, timeout=state.config.enqueue_timeout
        )
    except Exception:
        # The rows are committed: the sweeper will find them.
        logger.exception(
            "flask-webhooks: enqueue after commit failed; sweep() will retry"
        )


# -- request context values --------------------------------------------------


def current_request_id() -> str | None:
    """The request id of the current HTTP request (None outside requests).

    A valid UUID in the ``X-Request-ID`` header is used as is; otherwise one is
    made per request.
    """
    if not has_request_context():
        return None
    rid: str | None = g.get("_webhooks_request_id")
    if rid is None:
        header = request.headers.get("X-Request-ID", "")
        try:
            rid = str(uuid.UUID(header.strip()))
        except ValueError:
            rid = str(uuid.uuid4())
        g._webhooks_request_id = rid
    return rid
