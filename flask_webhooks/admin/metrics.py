"""Aggregates behind the admin's charts: deliveries per hour, latency, rates.

Every number comes from aggregate SQL over a time window, grouped by hour
bucket (``date_trunc`` on PostgreSQL, ``strftime`` on SQLite), so a page
reads a few hundred rows whatever the size of the delivery log. The
delivery counts read only the ``(created_at, webhook_id, status)`` index, the
latency only ``(started_at, duration_ms)`` on the attempt table.

Latency percentiles are exact on PostgreSQL (``percentile_cont``); elsewhere
they are computed in Python from the durations of the window's newest
:data:`LATENCY_SAMPLE` attempts, so the page stays bounded.
"""

from __future__ import annotations

import datetime as dt
import math
import typing as t
from collections import defaultdict
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa

from .. import models as m

#: Windows the status page offers: query value -> hours.
WINDOWS = {"24h": 24, "7d": 168}
#: Attempts whose durations make the percentiles where SQL has no percentile.
LATENCY_SAMPLE = 50_000
#: Statuses in chart order: outcomes first, work in progress on top.
CHART_ORDER = (m.SUCCEEDED, m.FAILED, m.RETRYING, m.DELIVERING, m.PENDING, m.CANCELLED)
#: Newest deliveries of a webhook whose attempts "last attempts" lists.
RECENT_DELIVERIES = 200


@dataclass(frozen=True)
class Window:
    """``hours`` one-hour buckets ending with the current hour (UTC)."""

    hours: int
    start: dt.datetime

    @classmethod
    def last(cls, hours: int, now: dt.datetime | None = None) -> Window:
        now = now or m.utcnow()
        end = now.replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
        return cls(hours, end - dt.timedelta(hours=hours))

    @property
    def buckets(self) -> list[dt.datetime]:
        return [self.start + dt.timedelta(hours=i) for i in range(self.hours)]

    def index(self, value: t.Any) -> int | None:
        """The bucket number of a bucket value read back from SQL."""
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if not isinstance(value, dt.datetime):
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        i = int((value - self.start).total_seconds() // 3600)
        return i if 0 <= i < self.hours else None


def coarsen(
    buckets: t.Sequence[dt.datetime], series: t.Sequence[t.Sequence[int]], factor: int
) -> tuple[list[dt.datetime], list[list[int]]]:
    """Merge every ``factor`` consecutive buckets (sums), for small charts of
    long windows: the merged buckets' starts and each series merged."""
    starts = list(buckets[::factor])
    merged = [
        [sum(values[i : i + factor]) for i in range(0, len(values), factor)]
        for values in series
    ]
    return starts, merged


def hour_bucket(column: t.Any, dialect: sa.Dialect) -> t.Any:
    """SQL for the start of the hour of a (naive UTC) timestamp column."""
    if dialect.name == "postgresql":
        return sa.func.date_trunc("hour", column)
    if dialect.name == "sqlite":
        return sa.func.strftime("%Y-%m-%d %H:00:00", column)
    if dialect.name in ("mysql", "mariadb"):
        return sa.func.date_format(column, "%Y-%m-%d %H:00:00")
    return sa.func.date_trunc("hour", column)


@dataclass
class Counts:
    """Deliveries of a window by webhook, hour bucket and status."""

    window: Window
    #: (webhook id or None, bucket number, status) -> deliveries
    cells: dict[tuple[t.Any, int, str], int] = field(default_factory=dict)

    def by_status(self) -> dict[str, list[int]]:
        """Per status, the deliveries of each bucket (every status present,
        in :data:`CHART_ORDER`: the bottom of a stacked bar first)."""
        series = {s: [0] * self.window.hours for s in CHART_ORDER}
        for (_, i, status), n in self.cells.items():
            series.setdefault(status, [0] * self.window.hours)[i] += n
        return series

    def outcomes(self, webhook_id: t.Any = ...) -> tuple[list[int], list[int]]:
        """(succeeded, failed) per bucket, for one webhook or all (``...``)."""
        ok = [0] * self.window.hours
        failed = [0] * self.window.hours
        for (hook, i, status), n in self.cells.items():
            if webhook_id is not ... and hook != webhook_id:
                continue
            if status == m.SUCCEEDED:
                ok[i] += n
            elif status == m.FAILED:
                failed[i] += n
        return ok, failed

    def totals(self) -> dict[t.Any, dict[str, int]]:
        """Per webhook id, deliveries by status over the whole window."""
        found: dict[t.Any, dict[str, int]] = defaultdict(dict)
        for (hook, _, status), n in self.cells.items():
            found[hook][status] = found[hook].get(status, 0) + n
        return dict(found)


def delivery_counts(
    conn: sa.Connection,
    table: sa.Table,
    window: Window,
    *,
    webhook_id: t.Any = None,
) -> Counts:
    """One aggregate query: deliveries created in ``window`` by webhook, hour
    and status (only ``webhook_id``'s when given)."""
    c = table.c
    bucket = hour_bucket(c.created_at, conn.dialect).label("bucket")
    stmt = sa.select(c.webhook_id, bucket, c.status, sa.func.count()).where(
        c.created_at >= window.start
    )
    if webhook_id is not None:
        stmt = stmt.where(c.webhook_id == webhook_id)
    stmt = stmt.group_by(c.webhook_id, bucket, c.status)
    counts = Counts(window)
    for hook, value, status, n in conn.execute(stmt):
        i = window.index(value)
        if i is not None:
            key = (hook, i, str(status))
            counts.cells[key] = counts.cells.get(key, 0) + int(n)
    return counts


@dataclass
class Latency:
    """Attempt durations (ms) of a window: p50 and p95 per hour and overall."""

    p50: list[float | None]
    p95: list[float | None]
    overall_p50: float | None = None
    overall_p95: float | None = None
    attempts: int = 0
    #: True when the percentiles come from the newest :data:`LATENCY_SAMPLE`
    #: attempts only.
    sampled: bool = False


def percentile(ordered: t.Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, like ``percentile_cont``.

    :param ordered: values sorted ascending.
    """
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def attempt_latency(conn: sa.Connection, table: sa.Table, window: Window) -> Latency:
    """p50/p95 of attempt durations per hour bucket and over ``window``."""
    c = table.c
    where = sa.and_(c.started_at >= window.start, c.duration_ms.is_not(None))
    hours = window.hours
    result = Latency([None] * hours, [None] * hours)
    if conn.dialect.name == "postgresql":
        bucket = hour_bucket(c.started_at, conn.dialect).label("bucket")

        def pct(q: float) -> t.Any:
            return sa.func.percentile_cont(q).within_group(c.duration_ms)

        # ROLLUP: the hours and the whole window (bucket NULL) in one scan.
        stmt = (
            sa.select(bucket, sa.func.count(), pct(0.5), pct(0.95))
            .where(where)
            .group_by(sa.func.rollup(bucket))
        )
        for value, count, p50, p95 in conn.execute(stmt):
            if value is None:
                result.attempts = int(count)
                result.overall_p50 = None if p50 is None else float(p50)
                result.overall_p95 = None if p95 is None else float(p95)
                continue
            i = window.index(value)
            if i is not None:
                result.p50[i], result.p95[i] = float(p50), float(p95)
        return result
    # The bucket comes from SQL as text: no timestamp is parsed per row.
    bucket = hour_bucket(c.started_at, conn.dialect)
    rows = conn.execute(
        sa.select(bucket, c.duration_ms)
        .where(where)
        .order_by(c.started_at.desc())
        .limit(LATENCY_SAMPLE + 1)
    ).all()
    result.sampled = len(rows) > LATENCY_SAMPLE
    rows = rows[:LATENCY_SAMPLE]
    per_bucket: list[list[float]] = [[] for _ in range(hours)]
    positions: dict[t.Any, int | None] = {}
    for value, duration in rows:
        if value not in positions:
            positions[value] = window.index(value)
        i = positions[value]
        if i is not None:
            per_bucket[i].append(float(duration))
    everything: list[float] = []
    for i, values in enumerate(per_bucket):
        values.sort()
        result.p50[i] = percentile(values, 0.5)
        result.p95[i] = percentile(values, 0.95)
        everything.extend(values)
    everything.sort()
    result.attempts = len(everything)
    result.overall_p50 = percentile(everything, 0.5)
    result.overall_p95 = percentile(everything, 0.95)
    return result


@dataclass
class Rate:
    """One webhook's deliveries over a window."""

    webhook_id: t.Any
    name: str
    succeeded: int
    failed: int
    other: int

    @property
    def rate(self) -> float | None:
        """Succeeded / (succeeded + failed); None before any delivery ended."""
        done = self.succeeded + self.failed
        return self.succeeded / done if done else None


def success_rates(
    conn: sa.Connection, webhooks: sa.Table, counts: Counts
) -> list[Rate]:
    """Per webhook with deliveries in the window, worst success rate first."""
    totals = counts.totals()
    ids = [i for i in totals if i is not None]
    names = {}
    if ids:
        names = dict(
            conn.execute(
                sa.select(webhooks.c.id, webhooks.c.name).where(webhooks.c.id.in_(ids))
            ).all()
        )
    rates = []
    for hook, by_status in totals.items():
        ok = by_status.get(m.SUCCEEDED, 0)
        failed = by_status.get(m.FAILED, 0)
        rates.append(
            Rate(
                hook,
                str(names.get(hook, "(deleted webhook)")),
                ok,
                failed,
                sum(by_status.values()) - ok - failed,
            )
        )
    rates.sort(key=lambda r: (r.rate if r.rate is not None else 2.0, r.name))
    return rates


def recent_attempts(
    conn: sa.Connection,
    deliveries: sa.Table,
    attempts: sa.Table,
    webhook_id: t.Any,
    *,
    limit: int = 20,
) -> list[t.Any]:
    """The newest ``limit`` attempts among the webhook's newest
    :data:`RECENT_DELIVERIES` deliveries (read through the
    ``(webhook_id, created_at)`` index, so the cost does not grow with the log)."""
    d, a = deliveries.c, attempts.c
    newest = (
        sa.select(d.id, d.event, d.model, d.object_id)
        .where(d.webhook_id == webhook_id)
        .order_by(d.created_at.desc())
        .limit(RECENT_DELIVERIES)
        .subquery()
    )
    return list(
        conn.execute(
            sa.select(
                a.delivery_id,
                a.number,
                a.started_at,
                a.duration_ms,
                a.status_code,
                a.error,
                newest.c.event,
                newest.c.model,
                newest.c.object_id,
            )
            .join(newest, newest.c.id == a.delivery_id)
            .order_by(a.started_at.desc(), a.id.desc())
            .limit(limit)
        )
    )
