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

    def _draw(self, conn: sa.Connection, n: int) -> list[int]:
        dialect = conn.dialect
        if dialect.supports_sequences and self.sequence is not None:
            values = conn.execute(
                sa.select(self.sequence.next_value()).select_from(
                    sa.func.generate_series(1, n)
                )
                if dialect.name == "postgresql"
                else sa.select(self.sequence.next_value())
            ).scalars()
            numbers = sorted(values)
            while len(numbers) < n:  # dialects without generate_series
                numbers.append(
                    int(
                        conn.execute(sa.select(self.sequence.next_value())).scalar_one()
                    )
                )
            return numbers
        if self.counter is None:
            raise RuntimeError("no sequence and no counter table to number events")
        c = self.counter.c
        stmt = (
            sa.update(self.counter)
            .where(c.name == COUNTER_NAME)
            .values(value=c.value + n)
        )
        if dialect.update_returning:
            last = conn.execute(stmt.returning(c.value)).scalar()
        elif conn.execute(stmt).rowcount:
            last = conn.scalar(sa.select(c.value).where(c.name == COUNTER_NAME))
        else:
            last = None
        if last is None:
            conn.execute(sa.insert(self.counter).values(name=COUNTER_NAME, value=n))
            last = n
        return list(range(int(last) - n + 1, int(last) + 1))
