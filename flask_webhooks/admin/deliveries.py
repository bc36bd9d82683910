"""The Deliveries admin screen: the delivery log, its detail page and actions.

Actions (all POST with a CSRF token): retry (row button and bulk), retry every
failed delivery matching the current filter, replay every delivery matching
it (after a page showing the count), cancel pending deliveries.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa
from flask import flash
from flask import has_app_context
from flask import redirect
from flask import request
from flask_admin import expose
from flask_admin.actions import action
from flask_admin.contrib.sqla import filters as sqla_filters
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import SecureForm
from flask_admin.helpers import get_redirect_target
from markupsafe import Markup

from .. import models as m
from ..delivery.order import newer_delivered
from ..delivery.order import release_quietly
from ..delivery.recovery import requeue
from ..delivery.replay import replay
from ..delivery.replay import REPLAYABLE
from ..wording import plural
from .base import AdminViewMixin
from .base import release_session
from .base import ViewOptions
from .formatters import format_time
from .formatters import pretty_body
from .formatters import status_badge
from .formatters import truncate

#: Query-string names of the list filters (``named_filter_urls``), for links.
FILTER_ARGS = {
    "status": "status_equals",
    "webhook": "webhook_equals",
    "model": "model_equals",
    "event": "event_equals",
    "within": "created_within",
    "after": "created_after",
    "before": "created_before",
}

#: Choices of the "created within" filter.
WITHIN = {
    "1h": ("last hour", dt.timedelta(hours=1)),
    "24h": ("last 24 hours", dt.timedelta(hours=24)),
    "7d": ("last 7 days", dt.timedelta(days=7)),
    "30d": ("last 30 days", dt.timedelta(days=30)),
}

RETRYABLE = (m.FAILED, m.RETRYING, m.CANCELLED, m.PENDING)
CANCELLABLE = (m.PENDING, m.RETRYING)
#: Show at most this much of a body on the detail page.
MAX_BODY_DISPLAY = 256 * 1024
_CHUNK = 500


def filter_query(**values: t.Any) -> dict[str, str]:
    """Query-string arguments that filter the delivery list, e.g.
    ``filter_query(status="failed", webhook=3)``."""
    return {
        f"flt{i}_{FILTER_ARGS[key]}": str(value)
        for i, (key, value) in enumerate(values.items())
    }


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


class _AfterFilter(sqla_filters.DateTimeGreaterFilter):
    """Created at or after a UTC time (``YYYY-MM-DD HH:MM:SS``)."""

    def clean(self, value: str) -> dt.datetime:
        return _aware(super().clean(value))

    def operation(self) -> str:
        return "after"


class _BeforeFilter(sqla_filters.DateTimeSmallerFilter):
    """Created before a UTC time."""

    def clean(self, value: str) -> dt.datetime:
        return _aware(super().clean(value))

    def operation(self) -> str:
        return "before"


class _BetweenFilter(sqla_filters.DateTimeBetweenFilter):
    def clean(self, value: str) -> list[dt.datetime]:
        return [_aware(v) for v in super().clean(value)]


class _WithinFilter(sqla_filters.BaseSQLAFilter):
    """Created within the last hour, day, week or month."""

    def __init__(self, column: t.Any, name: str) -> None:
        super().__init__(
            column, name, options=[(k, label) for k, (label, _) in WITHIN.items()]
        )

    def validate(self, value: str) -> bool:
        return value in WITHIN

    def apply(self, query: t.Any, value: str, alias: t.Any = None) -> t.Any:
        since = m.utcnow() - WITHIN[value][1]
        return query.filter(self.get_column(alias) >= since)

    def operation(self) -> str:
        return "within"


def _status_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup:
    badge = status_badge(d.status)
    if d.last_error and d.status in (m.FAILED, m.RETRYING):
        return Markup(
            '{} <div class="small text-danger wh-error" title="{}">{}</div>'
        ).format(badge, d.last_error, truncate(d.last_error, 50))
    return badge


def _webhook_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup:
    if d.webhook_id is None:
        return Markup('{} <small class="text-muted">(deleted)</small>').format(
            d.webhook_name or "—"
        )
    return Markup('<a href="{}">{}</a>').format(
        view.wh_url("webhook", "edit_view", id=d.webhook_id), d.webhook_name
    )


def _created_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup:
    return Markup('<a href="{}" class="wh-detail-link">{}</a>').format(
        view.get_url(".details_view", id=d.id), format_time(d.created_at)
    )


def _next_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup:
    if d.status not in (m.PENDING, m.RETRYING):
        return Markup('<span class="text-muted">&mdash;</span>')
    return format_time(d.next_attempt_at)


def _code_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup:
    code = d.last_status_code
    if code is None:
        return Markup('<span class="text-muted">&mdash;</span>')
    kind = "success" if 200 <= code < 300 else "danger"
    return Markup('<span class="text-{} font-weight-bold">{}</span>').format(kind, code)


def _model_cell(view: t.Any, context: t.Any, d: t.Any, name: str) -> Markup | str:
    if not d.model:  # an app event about no model instance
        return Markup('<span class="text-muted">&mdash;</span>')
    return str(d.model)


class DeliveryView(AdminViewMixin, ModelView):
    """The delivery log: newest first, filters, detail page, retry and cancel."""

    form_base_class = SecureForm
    list_template = "webhooks/admin/delivery_list.html"
    details_template = "webhooks/admin/delivery_details.html"
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    can_export = False
    named_filter_urls = True
    page_size = 50
    column_display_actions = True
    column_list = (
        "status",
        "created_at",
        "webhook_name",
        "model",
        "event",
        "object_id",
        "sequence",
        "attempts",
        "last_status_code",
        "next_attempt_at",
    )
    column_labels = {
        "created_at": "Created (UTC)",
        "webhook_name": "Webhook",
        "object_id": "Object",
        "sequence": "Seq.",
        "last_status_code": "HTTP",
        "next_attempt_at": "Next attempt",
    }
    column_sortable_list = (
        "status",
        "created_at",
        "webhook_name",
        "model",
        "event",
        "sequence",
        "attempts",
        "last_status_code",
        "next_attempt_at",
    )
    column_default_sort = [("created_at", True), ("id", True)]
    column_searchable_list = ("id", "object_id", "request_id", "webhook_name")
    column_formatters = {
        "status": _status_cell,
        "webhook_name": _webhook_cell,
        "created_at": _created_cell,
        "next_attempt_at": _next_cell,
        "last_status_code": _code_cell,
        "model": _model_cell,
    }

    def __init__(
        self, model: t.Any, db: t.Any, *, options: ViewOptions, **kwargs: t.Any
    ) -> None:
        self.options = options
        D = model
        self.column_filters = [
            sqla_filters.FilterEqual(
                D.status, "Status", options=[(s, s) for s in m.STATUSES]
            ),
            sqla_filters.IntEqualFilter(
                D.webhook_id, "Webhook", options=self._webhook_choices
            ),
            sqla_filters.FilterEqual(D.model, "Model", options=self._model_choices),
            sqla_filters.FilterEqual(D.event, "Event", options=self._event_choices),
            _WithinFilter(D.created_at, "Created"),
            _AfterFilter(D.created_at, "Created"),
            _BeforeFilter(D.created_at, "Created"),
            _BetweenFilter(D.created_at, "Created"),
            sqla_filters.FilterEqual(D.object_id, "Object id"),
        ]
        super().__init__(model, db, **kwargs)

    def _webhook_choices(self) -> list[tuple[str, str]]:
        if not has_app_context():
            return []
        W = self.options.state.models.Webhook
        session = self.options.state.db.session
        rows = session.execute(sa.select(W.id, W.name).order_by(W.name))
        return [(str(i), n) for i, n in rows]

    def _model_choices(self) -> list[tuple[str, str]]:
        return [(n, n) for n in self.options.webhooks.registry.names()]

    def _event_choices(self) -> list[tuple[str, str]]:
        """Model events, test deliveries, then the declared app event types."""
        names = self.options.webhooks.registry.event_type_names()
        return [(e, e) for e in (*m.EVENTS, "test", *names)]

    # -- list ------------------------------------------------------------------

    @expose("/")
    def index_view(self) -> t.Any:
        # Webhook and model choices change at run time.
        self._refresh_filters_cache()
        return super().index_view()

    @expose("/retry-failed/", methods=("POST",))
    def retry_failed_view(self) -> t.Any:
        """Retry every ``failed`` delivery that matches the list's filter and search.

        The filter arrives in the query string, exactly as the list shows it.
        """
        back = get_redirect_target() or self.get_url(".index_view", **request.args)
        form = self.action_form()
        if not form.validate():
            flash(
                "Retry refused: the form's CSRF token is missing or expired.", "error"
            )
            return redirect(back)
        args = self._get_list_extra_args()
        _, query = self.get_list(
            None, None, False, args.search, args.filters, execute=False, page_size=0
        )
        D = self.model
        query = query.filter(D.status == m.FAILED).order_by(None)
        ids = [row[0] for row in query.with_entities(D.id)]
        if not ids:
            flash("No failed deliveries match the current filter.", "info")
            return redirect(back)
        self._retry(ids)
        return redirect(back)

    @expose("/replay/", methods=("GET", "POST"))
    def replay_view(self) -> t.Any:
        """Replay every delivery matching the list's filter and search.

        ``GET`` shows how many match, per status, and asks to confirm;
        ``POST`` (with the CSRF token) makes them due again in sequence
        order: the stored bytes are sent again with the same
        ``X-Webhook-ID`` and ``X-Webhook-Sequence``.
        """
        args = self._get_list_extra_args()
        _, query = self.get_list(
            None, None, False, args.search, args.filters, execute=False, page_size=0
        )
        D = self.model
        query = query.filter(D.status.in_(REPLAYABLE)).order_by(None)
        listing = self.get_url(".index_view", **request.args)
        if request.method == "GET":
            counts = {
                status: n
                for status, n in query.with_entities(D.status, sa.func.count())
                .group_by(D.status)
                .all()
            }
            ordered = {s: int(counts[s]) for s in m.STATUSES if counts.get(s)}
            release_session(self.options.state)
            return self.render(
                "webhooks/admin/delivery_replay.html",
                counts=ordered,
                total=sum(ordered.values()),
                filters=[
                    f"{self._filters[i].name} {self._filters[i].operation()} {v}"
                    for i, _, v in args.filters or ()
                ],
                search=args.search,
                action_form=self.action_form(),
                return_url=listing,
            )
        form = self.action_form()
        if not form.validate():
            flash(
                "Replay refused: the form's CSRF token is missing or expired.", "error"
            )
            return redirect(listing)
        ids = [
            str(row[0])
            for row in query.with_entities(D.id).order_by(
                D.sequence.is_(None), D.sequence, D.created_at, D.id
            )
        ]
        state = self.options.state
        release_session(state)
        done: list[str] = []
        for chunk in _chunks(ids):
            done.extend(replay(state, chunk))
        if not done:
            flash("Nothing to replay: no delivery matches the filter.", "info")
            return redirect(listing)
        message = f"Replaying {plural(len(done), 'delivery')} in sequence order."
        if len(done) < len(ids):
            message += f" {len(ids) - len(done)} left alone (being sent)."
        flash(message, "success")
        return redirect(listing)

    # -- detail ----------------------------------------------------------------

    @expose("/details/")
    def details_view(self) -> t.Any:
        back = get_redirect_target() or self.get_url(".index_view")
        delivery_id = request.args.get("id")
        delivery = self.get_one(delivery_id) if delivery_id else None
        if delivery is None:
            flash("Delivery not found.", "error")
            return redirect(back)
        W = self.options.state.models.Webhook
        hook = (
            self.options.state.db.session.get(W, delivery.webhook_id)
            if delivery.webhook_id is not None
            else None
        )
        body = delivery.body or b""
        clipped = len(body) > MAX_BODY_DISPLAY
        body_text, body_is_json = pretty_body(
            body[:MAX_BODY_DISPLAY], delivery.content_type
        )
        return self.render(
            self.details_template,
            model=delivery,
            delivery=delivery,
            hook=hook,
            attempts=list(delivery.attempt_history),
            body_text=body_text,
            body_is_json=body_is_json,
            body_size=len(body),
            body_clipped=clipped,
            response_text=pretty_body(
                (delivery.response_body or "").encode("utf-8"),
                (delivery.response_headers or {}).get("Content-Type"),
            )[0],
            action_form=self.action_form(),
            can_retry=delivery.status in RETRYABLE,
            can_cancel=delivery.status in CANCELLABLE,
            auto_refresh=delivery.status in (m.PENDING, m.DELIVERING),
            return_url=back,
        )

    # -- actions ---------------------------------------------------------------

    @action("retry", "Retry")
    def action_retry(self, ids: list[str]) -> None:
        self._retry([str(i) for i in ids])

    @action(
        "cancel",
        "Cancel",
        "Cancel the selected pending deliveries? They will not be sent.",
    )
    def action_cancel(self, ids: list[str]) -> None:
        state = self.options.state
        release_session(state)
        D = state.models.Delivery.__table__
        now = m.utcnow()
        count = 0
        with state.engine().begin() as conn:
            for chunk in _chunks([str(i) for i in ids]):
                count += conn.execute(
                    sa.update(D)
                    .where(D.c.id.in_(chunk), D.c.status.in_(CANCELLABLE))
                    .values(
                        status=m.CANCELLED,
                        next_attempt_at=None,
                        leased_until=None,
                        completed_at=now,
                        updated_at=now,
                    )
                ).rowcount
        if count:
            # The next delivery of each cancelled one's object may go now.
            release_quietly(state, [str(i) for i in ids])
        skipped = len(ids) - count
        message = f"Cancelled {plural(count, 'delivery')}."
        if skipped:
            message += f" {skipped} could not be cancelled (already sent, being sent or finished)."
        flash(message, "success" if count else "warning")

    def _retry(self, ids: list[str]) -> None:
        state = self.options.state
        release_session(state)
        changed: list[str] = []
        for chunk in _chunks(ids):
            changed.extend(requeue(state, chunk))
        stale = newer_delivered(state, changed)
        if changed:
            state.enqueue(changed)
        skipped = len(ids) - len(changed)
        if not changed:
            flash(
                "Nothing to retry: the selected deliveries are being sent or have succeeded.",
                "warning",
            )
            return
        outcome = self._outcome(changed)
        parts = [f"Retrying {plural(len(changed), 'delivery')}"]
        done = ", ".join(f"{n} {s}" for s, n in outcome.items() if n)
        if done:
            parts.append(f"now: {done}")
        message = "; ".join(parts) + "."
        if skipped:
            message += f" {skipped} skipped (being sent or already succeeded)."
        if stale:
            message += (
                f" {plural(len(stale), 'delivery is', 'deliveries are')} older than "
                "what the receiver already has: a later event of the same object "
                "was delivered. They keep their sequence numbers "
                "(X-Webhook-Sequence), so a receiver that checks them ignores them."
            )
        failed = outcome.get(m.FAILED, 0) + outcome.get(m.RETRYING, 0)
        flash(message, "warning" if failed or stale else "success")

    def _outcome(self, ids: list[str]) -> dict[str, int]:
        """Statuses of ``ids`` right now (the immediate queue has sent them)."""
        state = self.options.state
        D = state.models.Delivery.__table__
        counts: dict[str, int] = {}
        with state.engine().connect() as conn:
            for chunk in _chunks(ids):
                for status, n in conn.execute(
                    sa.select(D.c.status, sa.func.count())
                    .where(D.c.id.in_(chunk))
                    .group_by(D.c.status)
                ):
                    counts[status] = counts.get(status, 0) + n
        return {s: counts[s] for s in m.STATUSES if counts.get(s)}


def _chunks(ids: list[str]) -> t.Iterator[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]
