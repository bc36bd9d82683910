"""Sequence numbers of events: the order of commits, per object.

Every captured event gets an integer (the delivery's ``sequence``, sent as
``X-Webhook-Sequence``). The numbers are drawn in ``before_commit``, after
the transaction's last flush: two transactions that change one object are
serialized by the database's row locks (the second one's flush waits for
the first one's commit), so the one that commits later draws later and
gets the larger number.

* PostgreSQL: a real sequence (``webhooks_delivery_sequence``), ``n``
  values in one round trip; it never blocks other transactions.
* Elsewhere (SQLite): a row of ``webhooks_counter`` incremented by ``n``
  inside the transaction. SQLite runs one writer at a time, so this adds
  no waiting; on other databases the row lock serializes committing
  transactions until they end.
"""

from __future__ import annotations

import logging
import threading
import typing as t

import sqlalchemy as sa

logger = logging.getLogger(__name__)

#: The ``webhooks_counter`` row that numbers events.
COUNTER_NAME = "delivery"


class Numbering:
    """Draws event sequence numbers on a connection (see the module doc).

    :param counter: the ``webhooks_counter`` table.
    :param sequence: the database sequence (used where the dialect has
        sequences).
    """

    def __init__(self, counter: sa.Table | None, sequence: sa.Sequence | None) -> None:
        self.counter = counter
        self.sequence = sequence
        self._lock = threading.Lock()
        self._available: dict[t.Any, bool] = {}
        self._compiled: dict[tuple[str, ...], tuple[str, bool, int]] = {}

    def draw(self, conn: sa.Connection, n: int) -> list[int | None]:
        """``n`` increasing numbers, larger than every number drawn by a
        transaction that committed before this one drew.

        If the database lacks the sequence or the counter table (an app that
        upgraded without creating them), a warning is logged once per engine
        and the events get no number (``None``): their deliveries are then
        sent in no particular order.
        """
        if n <= 0:
            return []
        engine = conn.engine
        available = self._available.get(engine)
        if available is False:
            return [None] * n
        if available is None:
            try:
                if conn.dialect.name == "sqlite":
                    # A failed statement leaves the transaction be.
                    numbers = self._draw(conn, n)
                else:
                    # Elsewhere the first draw runs in a savepoint: a missing
                    # sequence must not abort the user's transaction.
                    with conn.begin_nested():
                        numbers = self._draw(conn, n)
            except Exception:
                logger.warning(
                    "flask-webhooks: cannot draw event sequence numbers (create "
                    "the %r sequence and the %r table: db.create_all() or a "
                    "migration); deliveries are sent in no particular order until then",
                    self.sequence.name if self.sequence is not None else None,
                    self.counter.name if self.counter is not None else None,
                    exc_info=True,
                )
                with self._lock:
                    self._available[engine] = False
                return [None] * n
            with self._lock:
                self._available[engine] = True
            return t.cast(list[int | None], numbers)
        return t.cast(list[int | None], self._draw(conn, n))

    def inline(self, conn: sa.Connection) -> sa.ColumnElement[int] | None:
        """A SQL expression that draws the next number, for an ``INSERT``
        whose every row is an event of its own; None where numbers must be
        drawn beforehand (:meth:`draw`).

        PostgreSQL only (``nextval``), once a draw on this engine has shown
        that the sequence exists: it saves the commit a round trip.
        """
        if (
            self.sequence is None
            or conn.dialect.name != "postgresql"
            or self._available.get(conn.engine) is not True
        ):
            return None
        return self.sequence.next_value()

    def _draw(self, conn: sa.Connection, n: int) -> list[int]:
        dialect = conn.dialect
        if dialect.supports_sequences and self.sequence is not None:
            if dialect.name == "postgresql":
                found = self._run(conn, "series", n).scalars()
                return sorted(int(v) for v in found)
            return [int(self._run(conn, "next", n).scalar_one()) for _ in range(n)]
        if self.counter is None:
            raise RuntimeError("no sequence and no counter table to number events")
        if dialect.update_returning:
            last = self._run(conn, "bump_returning", n).scalar()
        elif self._run(conn, "bump", n).rowcount:
            last = self._run(conn, "read", n).scalar()
        else:
            last = None
        if last is None:
            self._run(conn, "create", n)
            last = n
        return list(range(int(last) - n + 1, int(last) + 1))

    def _run(self, conn: sa.Connection, name: str, n: int) -> sa.CursorResult[t.Any]:
        """Run one of :meth:`_statements`, compiled once per dialect: built
        and executed through SQLAlchemy's statement layer, a draw would cost
        several times the database's own work (it runs in every commit)."""
        dialect = conn.dialect
        key = (dialect.name, dialect.driver, dialect.paramstyle, name)
        found = self._compiled.get(key)
        if found is None:
            compiled = self._statements()[name].compile(dialect=dialect)
            # The parameter names in order: ``n`` is the only one.
            names = (
                list(compiled.positiontup or ())
                if compiled.positional
                else list(compiled.binds)
            )
            found = (str(compiled), bool(compiled.positional), len(names))
            with self._lock:
                self._compiled[key] = found
        sql, positional, count = found
        if not count:
            return conn.exec_driver_sql(sql)
        return conn.exec_driver_sql(sql, (n,) * count if positional else {"n": n})

    def _statements(self) -> dict[str, t.Any]:
        n = sa.bindparam("n", type_=sa.BigInteger)
        out: dict[str, t.Any] = {}
        if self.sequence is not None:
            next_value = self.sequence.next_value()
            out["next"] = sa.select(next_value)
            out["series"] = sa.select(next_value).select_from(
                sa.func.generate_series(sa.literal_column("1"), n)
            )
        if self.counter is not None:
            c = self.counter.c
            named = c.name == sa.literal_column(f"'{COUNTER_NAME}'")
            bump = sa.update(self.counter).where(named).values(value=c.value + n)
            out["bump"] = bump
            out["bump_returning"] = bump.returning(c.value)
            out["read"] = sa.select(c.value).where(named)
            out["create"] = sa.insert(self.counter).values(
                name=sa.literal_column(f"'{COUNTER_NAME}'"), value=n
            )
        return out
