"""The Status admin screen: queue, workers, recent delivery counts, disabled webhooks."""

from __future__ import annotations

import datetime as dt
import os
import typing as t
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from flask import request
from flask_admin import BaseView
from flask_admin import expose
from flask_admin.form import SecureForm
from markupsafe import Markup

from .. import models as m
from ..delivery.breaker import open_count
from ..delivery.recovery import due_condition
from ..worker import sweeper
from ..worker.queue import backend_name
from ..worker.queue import redact_url
from . import charts
from . import metrics
from .base import AdminViewMixin
from .base import ViewOptions

if t.TYPE_CHECKING:
    from ..state import WebhooksState

#: A worker whose heartbeat is older than this is shown as not seen recently.
HEARTBEAT_STALE = dt.timedelta(minutes=5)


@dataclass
class QueueInfo:
    backend: str
    url: str
    pending: int | None = None
    scheduled: int | None = None
    error: str | None = None


@dataclass
class WorkerInfo:
    #: Embedded consumer threads in this web process: "off", "not started", or a count.
    embedded: str
    embedded_alive: int | None = None
    #: Heartbeats of worker processes, newest first; None when not recorded.
    heartbeats: list[dict[str, t.Any]] | None = None


@dataclass
class DeliveryStats:
    last_hour: dict[str, int] = field(default_factory=dict)
    last_day: dict[str, int] = field(default_factory=dict)
    oldest_pending: dt.datetime | None = None
    overdue: int = 0


def queue_info(state: WebhooksState) -> QueueInfo:
    """Backend, redacted URL and task counts of the app's Huey queue."""
    huey = state.huey
    backend = backend_name(huey)
    url = state.config.queue_url
    if url:
        shown = redact_url(url)
    else:
        filename = getattr(huey.storage, "filename", None)
        shown = f"sqlite:///{filename}" if filename else "(passed as huey=)"
    info = QueueInfo(backend=backend, url=shown)
    try:
        info.pending = int(huey.pending_count())
        info.scheduled = int(huey.scheduled_count())
    except Exception as e:  # the queue server may be down: show it, do not fail
        info.error = f"{type(e).__name__}: {e}"
    return info


def worker_info(state: WebhooksState) -> WorkerInfo:
    """Embedded workers of this process and, when recorded, worker heartbeats."""
    workers = state.workers
    if workers is None:
        embedded = "not started (they start with the first delivery)"
        if backend_name(state.huey) not in ("memory", "sqlite"):
            embedded = "not used with this queue backend"
        elif state.config.embedded_workers <= 0:
            embedded = "off (WEBHOOKS_EMBEDDED_WORKERS = 0)"
        info = WorkerInfo(embedded=embedded)
    elif workers is False:
        info = WorkerInfo(embedded="off")
    else:
        threads = getattr(workers.consumer, "worker_threads", [])
        alive = sum(1 for _, thread in threads if thread.is_alive())
        info = WorkerInfo(embedded="running", embedded_alive=alive)
    info.heartbeats = _heartbeats(state)
    return info


def _heartbeats(state: WebhooksState) -> list[dict[str, t.Any]] | None:
    """Worker heartbeats, if the sweeper module records them (else None: unknown).

    Expected: ``flask_webhooks.sweeper.heartbeats(state)`` returning dicts with
    at least ``name`` and ``last_seen`` (aware datetime).
    """
    reader = getattr(sweeper, "heartbeats", None)
    if reader is None:
        return None
    try:
        beats = list(reader(state))
    except Exception:
        return None
    now = m.utcnow()
    for beat in beats:
        seen = beat.get("last_seen")
        beat["recent"] = seen is not None and now - seen <= HEARTBEAT_STALE
    return sorted(
        beats,
        key=lambda b: b.get("last_seen") or dt.datetime.min.replace(tzinfo=dt.UTC),
        reverse=True,
    )


def delivery_stats(
    state: WebhooksState, now: dt.datetime | None = None
) -> DeliveryStats:
    """Counts by status over the last hour and day; backlog indicators."""
    D = state.models.Delivery.__table__
    now = now or m.utcnow()
    stats = DeliveryStats()
    with state.engine().connect() as conn:
        for target, since in (
            (stats.last_hour, now - dt.timedelta(hours=1)),
            (stats.last_day, now - dt.timedelta(hours=24)),
        ):
            rows = conn.execute(
                sa.select(D.c.status, sa.func.count())
                .where(D.c.created_at >= since)
                .group_by(D.c.status)
            )
            counts: dict[str, int] = {s: int(n) for s, n in rows}
            target.update({s: int(counts.get(s, 0)) for s in m.STATUSES})
        stats.oldest_pending = conn.execute(
            sa.select(sa.func.min(D.c.created_at)).where(D.c.status == m.PENDING)
        ).scalar()
        if stats.oldest_pending is not None and stats.oldest_pending.tzinfo is None:
            stats.oldest_pending = stats.oldest_pending.replace(tzinfo=dt.UTC)
        # Due for longer than a sweep interval and still not sent: the queue or
        # the workers are behind (or not running).
        cutoff = now - dt.timedelta(seconds=state.config.sweep_interval)
        stats.overdue = int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(D)
                .where(due_condition(D, cutoff))
            ).scalar()
            or 0
        )
    return stats


#: Hours per sparkline bar in the rates table of a window longer than 2 days.
SPARK_HOURS_LONG = 6


@dataclass
class StatusCharts:
    """The status page's pictures and the numbers behind them."""

    window: metrics.Window
    deliveries: Markup
    latency: Markup
    timings: metrics.Latency
    rates: list[tuple[metrics.Rate, Markup, Markup]]
    #: Hours per bar of the rates table's sparklines.
    spark_hours: int = 1


def status_charts(
    state: WebhooksState, hours: int, now: dt.datetime | None = None
) -> StatusCharts:
    """Deliveries per hour by status, attempt latency and per-webhook success
    rates over the last ``hours`` hours (three aggregate queries)."""
    window = metrics.Window.last(hours, now)
    models = state.models
    with state.engine().connect() as conn:
        counts = metrics.delivery_counts(conn, models.Delivery.__table__, window)
        timings = metrics.attempt_latency(
            conn, models.DeliveryAttempt.__table__, window
        )
        rates = metrics.success_rates(conn, models.Webhook.__table__, counts)
    buckets = window.buckets
    label = "last 24 hours" if hours == 24 else f"last {hours // 24} days"
    rows = []
    # A table cell has room for about 30 bars: 7 days in 6-hour buckets.
    factor = SPARK_HOURS_LONG if hours > 48 else 1
    for n, rate in enumerate(rates):
        starts, (ok, failed) = metrics.coarsen(
            buckets, counts.outcomes(rate.webhook_id), factor=factor
        )
        rows.append(
            (
                rate,
                charts.sparkline(
                    starts,
                    ok,
                    failed,
                    chart_id=f"wh-rate-spark-{n}",
                    label=label,
                    step=dt.timedelta(hours=factor),
                ),
                charts.rate_bar(rate.succeeded, rate.failed, chart_id=f"wh-rate-{n}"),
            )
        )
    return StatusCharts(
        window,
        charts.stacked_bars(
            buckets,
            counts.by_status(),
            chart_id="wh-chart-deliveries",
            title=f"Deliveries per hour by status, {label} (UTC)",
        ),
        charts.line_chart(
            buckets,
            {"p50": timings.p50, "p95": timings.p95},
            chart_id="wh-chart-latency",
            title=f"Attempt latency per hour, {label} (UTC)",
            # Drawn in a half-width column: a narrower canvas keeps its text legible.
            width=560,
            height=200,
        ),
        timings,
        rows,
        factor,
    )


class StatusView(AdminViewMixin, BaseView):
    """Queue backend and counts, workers, deliveries by status, disabled webhooks."""

    def __init__(self, *, options: ViewOptions, **kwargs: t.Any) -> None:
        self.options = options
        super().__init__(**kwargs)

    @expose("/")
    def index(self) -> t.Any:
        state = self.options.state
        W = state.models.Webhook
        disabled = list(
            state.db.session.scalars(
                sa.select(W)
                .where(W.enabled.is_(False))
                .order_by(W.disabled_at.desc(), W.name)
            )
        )
        stats = delivery_stats(state)
        now = m.utcnow()
        span = request.args.get("window", "24h")
        if span not in metrics.WINDOWS:
            span = "24h"
        return self.render(
            "webhooks/admin/status.html",
            charts=status_charts(state, metrics.WINDOWS[span], now),
            span=span,
            spans=metrics.WINDOWS,
            queue=queue_info(state),
            workers=worker_info(state),
            stats=stats,
            oldest_pending_age=(
                (now - stats.oldest_pending).total_seconds()
                if stats.oldest_pending is not None
                else None
            ),
            disabled=disabled,
            breakers=open_count(state),
            breaker_threshold=state.config.breaker_threshold,
            csrf_form=SecureForm(),
            statuses=m.STATUSES,
            pid=os.getpid(),
        )
