"""The outbox: building and writing the delivery rows of a commit.

:func:`build_rows` turns a transaction's journal (see :mod:`.capture`) into
rows: one per event x matching webhook.

A commit can produce tens of thousands of rows (objects x webhooks). Going
through ``Connection.execute(insert(table), rows)`` costs SQLAlchemy a
parameter dict and a type-processor call per column per row, more than the
database's own insert. The rows here are plain values, and the columns that
need conversion (the timestamps) hold the same value in every row of a
commit, so :class:`OutboxWriter` converts those once and hands the driver
one ``executemany`` with the statement SQLAlchemy compiled for the dialect.
"""

from __future__ import annotations

import datetime as dt
import logging
import operator
import os
import threading
import typing as t
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from . import models as m
from .payload import comparable
from .payload import dumps
from .payload import envelope
from .payload import render_body

if t.TYPE_CHECKING:
    from sqlalchemy.orm.state import InstanceState

    from .capture import Entry
    from .index import Hook
    from .index import Index

logger = logging.getLogger("flask_webhooks.capture")

#: Columns every row of one commit shares: converted once per commit.
_SHARED = ("created_at", "updated_at", "next_attempt_at")


#: Name of the staging table of the SQL fan-out (:class:`.models.OutboxEventBase`).
EVENTS_TABLE = "webhooks_outbox_event"
_STAGED_COLUMNS = (
    "batch",
    "seq",
    "grp",
    "id_prefix",
    "event",
    "model",
    "object_id",
    "request_id",
    "username",
    "body",
)
#: Delivery ids made by the fan-out: the first 33 characters of a random
#: version 4 UUID per event, then 3 hex digits numbering the webhook.
_ID_PREFIX = 33


class OutboxWriter:
    """Inserts delivery rows with one driver-level ``executemany``.

    :meth:`write_chunks` also fans events out in SQL: an event that several
    plain webhooks take is inserted once into ``webhooks_outbox_event`` and
    copied into one delivery row per webhook by ``INSERT ... SELECT``, then
    the staged rows are deleted, all in the caller's transaction. Each copy's
    id is the event's random UUID prefix plus the webhook's number, so the
    ids are known without reading them back. Without the table (an app that
    upgraded without creating it) every delivery is a row built in Python.
    """

    def __init__(self, table: sa.Table, events: sa.Table | None = None) -> None:
        self.table = table
        self.events = (
            events if events is not None else table.metadata.tables.get(EVENTS_TABLE)
        )
        self._compiled: dict[t.Any, tuple[str, list[str], bool, dict[str, t.Any]]] = {}
        self._lock = threading.Lock()
        self._fanout_ok: dict[t.Any, bool] = {}
        self._fanout_sql: dict[t.Any, tuple[sa.Insert, sa.Delete]] = {}
        self._staging_sql: dict[t.Any, tuple[str, list[int] | None]] = {}

    def _plan(
        self, dialect: sa.Dialect, given: frozenset[str]
    ) -> tuple[str, list[str], bool, dict[str, t.Any]]:
        """SQL, parameter order, positional?, and fill-in values for columns
        the rows do not give (their scalar default; nullable columns without
        any default are left out, the database makes them NULL)."""
        key = (dialect.name, dialect.driver, dialect.paramstyle, given)
        found = self._compiled.get(key)
        if found is not None:
            return found
        columns: list[str] = []
        fill: dict[str, t.Any] = {}
        for column in self.table.columns:
            default = column.default
            if column.key in given:
                columns.append(column.key)
            elif default is not None and getattr(default, "is_scalar", False):
                columns.append(column.key)
                fill[column.key] = default.arg  # type: ignore[attr-defined]
            elif default is None and column.server_default is None:
                if column.nullable:
                    continue  # NULL by the database: one parameter less per row
                columns.append(column.key)
                fill[column.key] = None
            elif default is not None:
                raise RuntimeError(
                    f"outbox rows must give {column.key!r} (it has a callable default)"
                )
        compiled = sa.insert(self.table).compile(dialect=dialect, column_keys=columns)
        positional = bool(compiled.positional)
        order = list(compiled.positiontup or ()) if positional else columns
        found = (str(compiled), order, positional, fill)
        with self._lock:
            self._compiled[key] = found
        return found

    def write(self, conn: sa.Connection, rows: list[dict[str, t.Any]]) -> None:
        """Insert ``rows`` (dicts keyed by column) in ``conn``'s transaction.

        Every row must have the same keys.
        """
        if not rows:
            return
        dialect = conn.dialect
        sql, order, positional, fill = self._plan(dialect, frozenset(rows[0]))
        columns = self.table.c
        processors = {
            key: proc
            for key in order
            if (proc := columns[key].type._cached_bind_processor(dialect)) is not None
        }
        # Values shared by the whole commit are converted once.
        shared: dict[str, t.Any] = {}
        for key in _SHARED:
            proc = processors.get(key)
            if proc is None or key not in rows[0]:
                continue
            value = rows[0][key]
            if all(r[key] is value for r in rows):
                shared[key] = proc(value)
                del processors[key]
        for key, value in fill.items():
            proc = processors.pop(key, None)
            shared[key] = (
                proc(value) if proc is not None and value is not None else value
            )
        per_row = list(processors.items())
        pick = operator.itemgetter(*order) if positional else None
        prepared: list[t.Any]
        if not per_row and pick is not None:
            prepared = [pick({**row, **shared}) for row in rows]
        else:
            prepared = []
            for row in rows:
                values = {**row, **shared}
                for key, proc in per_row:
                    value = values[key]
                    if value is not None:
                        values[key] = proc(value)
                prepared.append(pick(values) if pick is not None else values)
        conn.exec_driver_sql(sql, prepared)

    # -- fan-out in SQL --------------------------------------------------------

    def fanout_available(self, conn: sa.Connection) -> bool:
        """Whether :meth:`write_chunks` can fan out in SQL on ``conn``."""
        if self.events is None:
            return False
        engine = conn.engine
        found = self._fanout_ok.get(engine)
        if found is None:
            found = self._probe(conn)
            with self._lock:
                self._fanout_ok[engine] = found
        return found

    def _probe(self, conn: sa.Connection) -> bool:
        """Check once per engine that the staging table exists."""
        assert self.events is not None
        query = sa.select(self.events.c.batch).limit(0)
        try:
            if conn.dialect.name == "sqlite":
                conn.execute(query)  # a failed SELECT leaves the transaction be
            else:
                # Elsewhere an error would abort the user's transaction.
                with conn.begin_nested():
                    conn.execute(query)
        except Exception:
            logger.warning(
                "flask-webhooks: table %r is missing (create it: db.create_all() "
                "or a migration); deliveries are written one row each until then",
                EVENTS_TABLE,
            )
            return False
        return True

    def write_chunks(
        self, conn: sa.Connection, chunks: t.Iterable[Chunk]
    ) -> tuple[list[str], list[t.Any]]:
        """Write every chunk; return the ids of the ``pending`` deliveries and
        the webhook id of each (in the same order)."""
        ids: list[str] = []
        keys: list[t.Any] = []
        for chunk in chunks:
            rows = chunk.rows
            if rows:
                # In key order, as the fan-out's copies (see _fan_out); the
                # ids are enqueued in event order.
                self.write(conn, sorted(rows, key=operator.itemgetter("id")))
                for r in rows:
                    if r["status"] == m.PENDING:
                        ids.append(r["id"])
                        keys.append(r["webhook_id"])
            if chunk.staged:
                self._fan_out(conn, chunk, ids, keys)
        return ids, keys

    def _fan_out(
        self,
        conn: sa.Connection,
        chunk: Chunk,
        ids: list[str],
        keys: list[t.Any],
    ) -> None:
        dialect = conn.dialect
        batch = new_uuid()
        staged = chunk.staged
        # Staged in the order of their ids (renumbered): each copy then adds
        # to the delivery table's primary key index in key order, a sweep
        # instead of random writes (SQLite: ten webhooks 2.74 -> 2.33 x).
        in_key_order = (
            (seq, *row[1:])
            for seq, row in enumerate(sorted(staged, key=operator.itemgetter(2)))
        )
        sql, order = self._staging_statement(dialect)
        if order is None:
            params: list[t.Any] = [
                dict(zip(_STAGED_COLUMNS, (batch, *row), strict=True))
                for row in in_key_order
            ]
        else:
            params = [
                tuple(full[i] for i in order)
                for full in ((batch, *row) for row in in_key_order)
            ]
        conn.exec_driver_sql(sql, params)
        fan_out, delete = self._fanout_statements(dialect)
        by_hook: dict[Hook, list[int]] = {}
        for hooks, grp in chunk.groups.items():
            for hook in hooks:
                by_hook.setdefault(hook, []).append(grp)
        everything = len(chunk.groups) == 1
        for number, (hook, grps) in enumerate(by_hook.items()):
            suffix = f"{number:03x}"
            conn.execute(
                fan_out,
                {
                    "batch": batch,
                    "grps": grps,
                    "id_suffix": suffix,
                    "webhook_id": hook.id,
                    "webhook_name": hook.name,
                    "content_type": hook.content_type,
                    "now": chunk.now,
                },
            )
            # The ids just inserted: the staged rows of these groups.
            if everything:
                new = [row[2] + suffix for row in staged]
            else:
                wanted = set(grps)
                new = [row[2] + suffix for row in staged if row[1] in wanted]
            ids.extend(new)
            keys.extend([hook.id] * len(new))
        conn.execute(delete, {"batch": batch})

    def _staging_statement(self, dialect: sa.Dialect) -> tuple[str, list[int] | None]:
        """The staging INSERT for the driver, and the parameter order when
        positional (indexes into :data:`_STAGED_COLUMNS`)."""
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        found = self._staging_sql.get(key)
        if found is None:
            assert self.events is not None
            compiled = sa.insert(self.events).compile(
                dialect=dialect, column_keys=list(_STAGED_COLUMNS)
            )
            order = None
            if compiled.positional:
                order = [_STAGED_COLUMNS.index(k) for k in compiled.positiontup or ()]
            found = (str(compiled), order)
            with self._lock:
                self._staging_sql[key] = found
        return found

    def _fanout_statements(self, dialect: sa.Dialect) -> tuple[sa.Insert, sa.Delete]:
        """``INSERT INTO webhooks_delivery (...) SELECT ... FROM`` the staged
        rows, for one webhook, and the staged rows' DELETE."""
        found = self._fanout_sql.get(dialect.name)
        if found is not None:
            return found
        D, E = self.table.c, t.cast(sa.Table, self.events)
        now = sa.bindparam("now", type_=D.created_at.type)
        values: dict[str, t.Any] = {
            "id": E.c.id_prefix + sa.bindparam("id_suffix", type_=sa.String),
            "webhook_id": sa.bindparam("webhook_id", type_=D.webhook_id.type),
            "webhook_name": sa.bindparam("webhook_name", type_=D.webhook_name.type),
            "event": E.c.event,
            "model": E.c.model,
            "object_id": E.c.object_id,
            "request_id": E.c.request_id,
            "username": E.c.username,
            "status": sa.literal(m.PENDING, D.status.type),
            "attempts": sa.literal(0, D.attempts.type),
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            "completed_at": sa.null(),
            "body": E.c.body,
            "payload": sa.null(),
            "content_type": sa.bindparam("content_type", type_=D.content_type.type),
            "last_error": sa.null(),
        }
        select = sa.select(*values.values()).where(
            E.c.batch == sa.bindparam("batch"),
            E.c.grp.in_(sa.bindparam("grps", expanding=True)),
        )
        insert = sa.insert(self.table).from_select(
            list(values), select, include_defaults=False
        )
        if dialect.name == "sqlite":
            # One writer at a time: the staged rows are all ours, and a DELETE
            # without WHERE frees their pages at once instead of row by row.
            delete = sa.delete(E)
        else:
            delete = sa.delete(E).where(E.c.batch == sa.bindparam("batch"))
        found = (insert, delete)
        with self._lock:
            self._fanout_sql[dialect.name] = found
        return found


#: Event name of test deliveries (the admin's "send test delivery", ``flask
#: webhooks ping``).
TEST_EVENT = "test"


def test_delivery_row(state: t.Any, hook: t.Any, *, message: str) -> dict[str, t.Any]:
    """The outbox row of a ``test`` delivery for ``hook``, with a sample payload.

    The body is rendered like any other delivery's (the webhook's body
    template, or the default JSON payload), so the test goes through the
    normal pipeline: queue, signing, transport, attempt log. A body template
    that fails gives a ``failed`` row with the error, as at capture.
    """
    now = m.utcnow()
    request_id = str(uuid.uuid4())
    username = state.username()
    model = (hook.models or [""])[0]
    payload = envelope(
        event=TEST_EVENT,
        timestamp=now.isoformat(),
        model=model,
        username=username,
        request_id=request_id,
        data={
            "id": None,
            "message": message,
            "webhook": {"id": hook.id, "name": hook.name},
        },
        prechange=None,
        postchange=None,
    )
    row: dict[str, t.Any] = {
        "id": m.new_id(),
        "webhook_id": hook.id,
        "webhook_name": hook.name,
        "event": TEST_EVENT,
        "model": model,
        "object_id": "",
        "request_id": request_id,
        "username": username[:255] if username else None,
        "status": m.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "content_type": hook.http_content_type or "application/json",
        "body": b"",
        "payload": None,
        "last_error": None,
        "completed_at": None,
    }
    try:
        body, is_default = render_body(hook, payload, None)
    except Exception as e:
        row.update(
            status=m.FAILED, last_error=f"body template error: {e}", completed_at=now
        )
    else:
        row.update(body=body, payload=None if is_default else dumps(payload))
    return row


# -- building rows -------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Final:
    op: str | None
    entry: Entry
    pre: dict[str, t.Any] | None
    collection_changed: bool


def _coalesce(journal: list[Entry]) -> list[_Final]:
    """One event per object: its net effect over the transaction."""
    finals: dict[InstanceState[t.Any], _Final] = {}
    for e in journal:
        f = finals.get(e.state)
        if f is None:
            finals[e.state] = _Final(e.op, e, e.pre, e.collection_changed)
            continue
        if e.op == m.UPDATED:
            if f.op is None:  # deleted in a savepoint-free way, then re-added
                f.op = m.UPDATED
            f.collection_changed = f.collection_changed or e.collection_changed
            if f.op != m.DELETED:
                f.entry = e if f.op == m.UPDATED else f.entry
        elif e.op == m.DELETED:
            f.op = None if f.op == m.CREATED else m.DELETED
            f.entry = e
        else:  # created again after a delete in the same transaction
            f.op = m.UPDATED if f.op == m.DELETED else m.CREATED
            f.entry = e
    return [f for f in finals.values() if f.op is not None]


def _object_id(state: InstanceState[t.Any]) -> str:
    key = state.key
    if key is None:
        key = state.mapper.identity_key_from_instance(state.obj())
    values = key[1]
    return ",".join(str(v) for v in values)[:255]


#: Events built and written together: the rows, bodies and parameter lists of
#: one chunk are released before the next is built, so a large commit's memory
#: stays flat.
CHUNK_EVENTS = 2000
#: Fan out in SQL when at least this many plain webhooks take an event.
FANOUT_MIN_HOOKS = 2


@dataclass(slots=True, eq=False)
class Chunk:
    """What one chunk of a commit's events gives the outbox.

    ``rows``: complete delivery rows (conditions, templates, failures, and
    events of a single plain webhook). ``staged``: one row per event for the
    ``webhooks_outbox_event`` table, ``(seq, grp, id_prefix, event, model,
    object_id, request_id, username, body)``, to be copied into one delivery
    row per webhook of its group; ``groups``: the group number of each tuple
    of plain webhooks.
    """

    rows: list[dict[str, t.Any]]
    staged: list[tuple[t.Any, ...]]
    groups: dict[tuple[Hook, ...], int]
    now: dt.datetime


def build_rows(
    journal: list[Entry],
    index: Index,
    *,
    request_id: str,
    username: str | None,
) -> list[dict[str, t.Any]]:
    """The delivery rows of a committing transaction, one per event x webhook.

    See :func:`build_chunks`; this is the same without fan-out in SQL.
    """
    rows: list[dict[str, t.Any]] = []
    for chunk in build_chunks(
        journal, index, request_id=request_id, username=username, fanout=False
    ):
        rows.extend(chunk.rows)
    return rows


def build_chunks(
    journal: list[Entry],
    index: Index,
    *,
    request_id: str,
    username: str | None,
    fanout: bool,
    chunk_events: int | None = None,
) -> t.Iterator[Chunk]:
    """The deliveries of a committing transaction, :data:`CHUNK_EVENTS`
    events at a time.

    Coalesces the journal into one event per object, serializes each object
    once (deletes were serialized while their row existed), matches the
    enabled webhooks (events, then conditions) and renders each body; the
    default JSON body is encoded once per event and shared. A schema or
    template error gives a ``failed`` row carrying the message.

    With ``fanout``, an event that several plain webhooks (no conditions,
    default body) take is staged once instead of as one row per webhook.
    """
    now = m.utcnow()
    timestamp = now.isoformat()
    db_username = username[:255] if username else None
    finals = _coalesce(journal)
    size = chunk_events or CHUNK_EVENTS
    for start in range(0, len(finals), size):
        chunk = Chunk([], [], {}, now)
        for final in finals[start : start + size]:
            _build_event(
                chunk,
                final,
                index,
                timestamp,
                request_id,
                username,
                db_username,
                fanout,
            )
        yield chunk


def _build_event(
    chunk: Chunk,
    final: _Final,
    index: Index,
    timestamp: str,
    request_id: str,
    username: str | None,
    db_username: str | None,
    fanout: bool,
) -> None:
    entry = final.entry
    reg = entry.reg
    event = t.cast(str, final.op)
    plain, others = index.split(reg.name, event)
    if not (plain or others):
        return
    obj = entry.obj
    error = None
    if event == m.DELETED:
        data, error = entry.data, entry.error
        prechange, postchange = final.pre, None
    else:
        postchange = reg.snapshot(obj)
        prechange = final.pre if event == m.UPDATED else None
        if (
            event == m.UPDATED
            and not final.collection_changed
            and prechange == postchange
        ):
            return  # changed and changed back: no net change
        try:
            data = reg.dump(obj)
        except Exception as e:
            logger.exception(
                "flask-webhooks: schema for %r failed to serialize an object",
                reg.name,
            )
            data, error = None, f"serialization failed: {type(e).__name__}: {e}"
    now = chunk.now
    add = chunk.rows.append
    # What every delivery row of this event shares.
    shared = (event, reg.name, _object_id(entry.state), request_id, db_username)
    if error is not None:
        for hook in index.matching(reg.name, event):
            add(_row(shared, hook, m.FAILED, now, error=error))
        return
    payload = envelope(
        event=event,
        timestamp=timestamp,
        model=reg.name,
        username=username,
        request_id=request_id,
        data=data,
        prechange=prechange,
        postchange=postchange,
    )
    default_json: bytes | None = None
    if plain:
        # Fan-out: one JSON encoding per event, shared by every webhook.
        default_json = dumps(payload).encode("utf-8")
        if fanout and len(plain) >= FANOUT_MIN_HOOKS and index.fanout_ok:
            groups = chunk.groups
            grp = groups.get(plain)
            if grp is None:
                grp = groups[plain] = len(groups)
            staged = chunk.staged
            staged.append(
                (len(staged), grp, new_uuid()[:_ID_PREFIX], *shared, default_json)
            )
        else:
            for hook in plain:
                add(_row(shared, hook, m.PENDING, now, body=default_json))
    if not others:
        return
    payload_json: str | None = None
    seen: t.Any = None  # data and snapshots as the receiver will see them
    for hook in others:
        if hook.conditions is not None:
            if seen is None:
                seen = comparable((data, payload["snapshots"]))
            if not hook.matches(seen[0], seen[1]):
                continue
        if hook.default_body:
            if default_json is None:
                default_json = dumps(payload).encode("utf-8")
            add(_row(shared, hook, m.PENDING, now, body=default_json))
            continue
        try:
            body, _ = render_body(hook.row, payload, default_json)
        except Exception as e:
            add(_row(shared, hook, m.FAILED, now, error=f"body template error: {e}"))
            continue
        if payload_json is None:
            payload_json = dumps(payload)
        add(_row(shared, hook, m.PENDING, now, body=body, payload=payload_json))


def _row(
    shared: tuple[str, str, str, str | None, str | None],
    hook: Hook,
    status: str,
    now: dt.datetime,
    *,
    body: bytes = b"",
    payload: str | None = None,
    error: str | None = None,
) -> dict[str, t.Any]:
    event, model, object_id, request_id, username = shared
    return {
        "id": new_uuid(),
        "webhook_id": hook.id,
        "webhook_name": hook.name,
        "event": event,
        "model": model,
        "object_id": object_id,
        "request_id": request_id,
        "username": username,
        "status": status,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
        "completed_at": now if status == m.FAILED else None,
        "body": body,
        "payload": payload,
        "content_type": hook.content_type,
        "last_error": error,
    }


def new_uuid() -> str:
    """A random (version 4) UUID string, about 4x cheaper than ``str(uuid4())``."""
    h = os.urandom(16).hex()
    # Version nibble 4; variant bits 10xx in the first nibble of the 4th group.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
