"""Writing the delivery rows of a commit (built by :mod:`.outbox`).

A commit can produce tens of thousands of rows (objects x webhooks). Going
through ``Connection.execute(insert(table), rows)`` costs SQLAlchemy a
parameter dict and a type-processor call per column per row, more than the
database's own insert. The rows here are plain values, and the columns that
need conversion (the timestamps) hold the same value in every row of a
commit, so :class:`OutboxWriter` converts those once and hands the driver
one ``executemany`` with the statement SQLAlchemy compiled for the dialect.
Events that several plain webhooks take are staged once and fanned out in
SQL (:meth:`OutboxWriter.write_chunks`).
"""

from __future__ import annotations

import logging
import operator
import threading
import typing as t

import sqlalchemy as sa

from .. import models as m
from .numbering import Numbering
from .outbox import Chunk
from .outbox import new_uuid

if t.TYPE_CHECKING:
    from .index import Hook

logger = logging.getLogger(__name__)

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
    "sequence",
    "body",
)
#: Index of ``sequence`` in a staged row (:class:`.outbox.Chunk`, without ``batch``).
_STAGED_SEQUENCE = _STAGED_COLUMNS.index("sequence") - 1


class OutboxWriter:
    """Inserts delivery rows with one driver-level ``executemany``.

    :meth:`write_chunks` also fans events out in SQL: an event that several
    plain webhooks take is inserted once into ``webhooks_outbox_event`` and
    copied into one delivery row per webhook by ``INSERT ... SELECT``, then
    the staged rows are deleted, all in the caller's transaction. Each copy's
    id is the event's random UUID prefix plus the webhook's number, so the
    ids are known without reading them back. Without the table (an app that
    upgraded without creating it) every delivery is a row built in Python.

    :param numbering: draws the events' sequence numbers; default: the
        ``webhooks_counter`` table of ``table``'s metadata (no sequence).
    """

    def __init__(
        self,
        table: sa.Table,
        events: sa.Table | None = None,
        numbering: Numbering | None = None,
    ) -> None:
        self.table = table
        self.events = (
            events if events is not None else table.metadata.tables.get(EVENTS_TABLE)
        )
        if numbering is None:
            counter = table.metadata.tables.get(m.CounterBase.__tablename__)
            numbering = Numbering(counter, None)
        self.numbering = numbering
        self._compiled: dict[t.Any, tuple[str, list[str], bool, dict[str, t.Any]]] = {}
        self._lock = threading.Lock()
        self._fanout_ok: dict[t.Any, bool] = {}
        self._fanout_sql: dict[t.Any, tuple[sa.Insert, sa.Delete]] = {}
        self._staging_sql: dict[t.Any, tuple[str, list[int] | None]] = {}

    def _plan(
        self,
        dialect: sa.Dialect,
        given: frozenset[str],
        numbered: sa.ColumnElement[int] | None = None,
    ) -> tuple[str, list[str], bool, dict[str, t.Any]]:
        """SQL, parameter order, positional?, and fill-in values for columns
        the rows do not give (their scalar default; nullable columns without
        any default are left out, the database makes them NULL). With
        ``numbered``, the database computes ``sequence`` with it."""
        key = (
            dialect.name,
            dialect.driver,
            dialect.paramstyle,
            given,
            numbered is None,
        )
        found = self._compiled.get(key)
        if found is not None:
            return found
        columns: list[str] = []
        fill: dict[str, t.Any] = {}
        for column in self.table.columns:
            default = column.default
            if numbered is not None and column.key == "sequence":
                continue
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
        insert = sa.insert(self.table)
        if numbered is not None:
            insert = insert.values(sequence=numbered)
        compiled = insert.compile(dialect=dialect, column_keys=columns)
        positional = bool(compiled.positional)
        order = list(compiled.positiontup or ()) if positional else columns
        found = (str(compiled), order, positional, fill)
        with self._lock:
            self._compiled[key] = found
        return found

    def write(
        self,
        conn: sa.Connection,
        rows: list[dict[str, t.Any]],
        *,
        numbered: sa.ColumnElement[int] | None = None,
    ) -> None:
        """Insert ``rows`` (dicts keyed by column) in ``conn``'s transaction.

        Every row must have the same keys. With ``numbered`` (see
        :meth:`.Numbering.inline`) each row's ``sequence`` is computed by
        the database instead of taken from the row.
        """
        if not rows:
            return
        dialect = conn.dialect
        sql, order, positional, fill = self._plan(dialect, frozenset(rows[0]), numbered)
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

    def write_numbered(self, conn: sa.Connection, rows: list[dict[str, t.Any]]) -> None:
        """Give each row (an event of its own, such as a ``test`` delivery)
        the next sequence number, then :meth:`write` them."""
        numbers = self.numbering.draw(conn, len(rows))
        for row, number in zip(rows, numbers, strict=True):
            row["sequence"] = number
        self.write(conn, rows)

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
        inline = self.numbering.inline(conn)
        for chunk in chunks:
            rows = chunk.rows
            # The chunk numbers its events 0..events-1; now, after the last
            # flush, they get their place in commit order: in the INSERT
            # itself when every row (or staged row) is an event of its own,
            # else drawn first.
            numbered = inline
            if numbered is not None and (
                (rows and chunk.staged)
                or len({r["sequence"] for r in rows}) != len(rows)
            ):
                numbered = None
            if numbered is None:
                numbers = self.numbering.draw(conn, chunk.events)
                for r in rows:
                    r["sequence"] = numbers[r["sequence"]]
                if chunk.staged:
                    i = _STAGED_SEQUENCE
                    chunk.staged = [
                        (*row[:i], numbers[row[i]], *row[i + 1 :])
                        for row in chunk.staged
                    ]
            if rows:
                # In key order, as the fan-out's copies (see _fan_out); the
                # ids are enqueued in event order. Numbered in the INSERT, the
                # rows go in event order: the database numbers them as they
                # come.
                order = "id" if numbered is None else "sequence"
                self.write(
                    conn,
                    sorted(rows, key=operator.itemgetter(order)),
                    numbered=numbered,
                )
                for r in rows:
                    if r["status"] == m.PENDING:
                        ids.append(r["id"])
                        keys.append(r["webhook_id"])
            if chunk.staged:
                self._fan_out(conn, chunk, ids, keys, numbered)
        return ids, keys

    def _fan_out(
        self,
        conn: sa.Connection,
        chunk: Chunk,
        ids: list[str],
        keys: list[t.Any],
        numbered: sa.ColumnElement[int] | None = None,
    ) -> None:
        dialect = conn.dialect
        batch = new_uuid()
        staged = chunk.staged
        # Staged in the order of their ids (renumbered): each copy then adds
        # to the delivery table's primary key index in key order, a sweep
        # instead of random writes (SQLite: ten webhooks 2.74 -> 2.33 x).
        # Numbered in the INSERT, they go in event order instead: the database
        # numbers them as they come.
        key = operator.itemgetter(2 if numbered is None else _STAGED_SEQUENCE)
        in_key_order = (
            (seq, *row[1:]) for seq, row in enumerate(sorted(staged, key=key))
        )
        sql, order = self._staging_statement(dialect, numbered)
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

    def _staging_statement(
        self, dialect: sa.Dialect, numbered: sa.ColumnElement[int] | None = None
    ) -> tuple[str, list[int] | None]:
        """The staging INSERT for the driver, and the parameter order when
        positional (indexes into :data:`_STAGED_COLUMNS`). With ``numbered``
        the database computes ``sequence``."""
        key = (dialect.name, dialect.driver, dialect.paramstyle, numbered is None)
        found = self._staging_sql.get(key)
        if found is None:
            assert self.events is not None
            insert = sa.insert(self.events)
            columns = list(_STAGED_COLUMNS)
            if numbered is not None:
                insert = insert.values(sequence=numbered)
                columns.remove("sequence")
            compiled = insert.compile(dialect=dialect, column_keys=columns)
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
            "sequence": E.c.sequence,
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
