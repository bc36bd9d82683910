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
import uuid

import sqlalchemy as sa

from . import models as m
from .payload import dumps
from .payload import envelope
from .payload import render_body

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
