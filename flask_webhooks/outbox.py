"""Writing delivery rows: the outbox insert of a committing transaction.

A commit can produce tens of thousands of rows (objects x webhooks). Going
through ``Connection.execute(insert(table), rows)`` costs SQLAlchemy a
parameter dict and a type-processor call per column per row, more than the
database's own insert. The rows here are plain values, and the columns that
need conversion (the timestamps) hold the same value in every row of a
commit, so :class:`OutboxWriter` converts those once and hands the driver
one ``executemany`` with the statement SQLAlchemy compiled for the dialect.
"""

from __future__ import annotations

import threading
import typing as t

import sqlalchemy as sa

#: Columns every row of one commit shares: converted once per commit.
_SHARED = ("created_at", "updated_at", "next_attempt_at")


class OutboxWriter:
    """Inserts delivery rows with one driver-level ``executemany``."""

    def __init__(self, table: sa.Table) -> None:
        self.table = table
        self._compiled: dict[t.Any, tuple[str, list[str], bool, dict[str, t.Any]]] = {}
        self._lock = threading.Lock()

    def _plan(
        self, dialect: sa.Dialect, given: frozenset[str]
    ) -> tuple[str, list[str], bool, dict[str, t.Any]]:
        """SQL, parameter order, positional?, and fill-in values for columns
        the rows do not give (their scalar default, or NULL)."""
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
        prepared: list[t.Any] = []
        for row in rows:
            values = {**row, **shared}
            for key, proc in per_row:
                value = values[key]
                if value is not None:
                    values[key] = proc(value)
            prepared.append(tuple(values[k] for k in order) if positional else values)
        conn.exec_driver_sql(sql, prepared)
