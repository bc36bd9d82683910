"""The Webhooks admin screen: list, create/edit form and actions.

The form writes the model and runs the model-level validation
(:func:`flask_webhooks.validation.validate_webhook`), so the admin shows the
same messages as code and CLI, each beside its field. The secret is write-only.
"""

from __future__ import annotations

import json
import typing as t

import sqlalchemy as sa
from flask import flash
from flask import jsonify
from flask import redirect
from flask import request
from flask_admin import expose
from flask_admin.actions import action
from flask_admin.contrib.sqla import filters as sqla_filters
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import SecureForm
from markupsafe import Markup
from sqlalchemy.exc import IntegrityError

from .. import models as m
from ..capture.outbox import test_delivery_row
from ..capture.outbox import TEST_EVENT
from ..signing import generate_secret
from ..validation import WebhookValidationError
from ..wording import plural
from .base import AdminViewMixin
from .base import release_session
from .base import ViewOptions
from .deliveries import filter_query
from .formatters import badges
from .formatters import display_url
from .formatters import format_time
from .formatters import status_badge
from .formatters import truncate
from .forms import apply_form
from .forms import attach_errors
from .forms import clear_disabled
from .forms import prepare_form
from .forms import WebhookForm
from .webhook_tools import list_sparkline
from .webhook_tools import newest_deliveries
from .webhook_tools import preview_response
from .webhook_tools import rotate_from_form
from .webhook_tools import RotateForm
from .webhook_tools import rotation_state
from .webhook_tools import webhook_activity


def _formatter(
    fn: t.Callable[[t.Any], t.Any],
) -> t.Callable[[t.Any, t.Any, t.Any, str], t.Any]:
    return lambda view, context, model, name: fn(model)


def _name_cell(view: t.Any, context: t.Any, hook: t.Any, name: str) -> Markup:
    return Markup(
        '<a href="{}" class="wh-name">{}</a>'
        '<div><a class="small wh-deliveries-link" href="{}">deliveries &rarr;</a></div>'
    ).format(
        view.get_url(".edit_view", id=hook.id),
        hook.name,
        view.wh_url("delivery", **filter_query(webhook=hook.id)),
    )


def _url_cell(hook: t.Any) -> Markup:
    url = display_url(hook.payload_url)
    return Markup(
        '<span class="badge badge-light wh-tag">{}</span> <code title="{}">{}</code>'
    ).format(hook.http_method, url, truncate(url, 48))


def _enabled_cell(hook: t.Any) -> Markup:
    if hook.enabled:
        return Markup('<span class="badge badge-success">enabled</span>')
    return Markup('<span class="badge badge-secondary">disabled</span>')


def _health_cell(hook: t.Any) -> Markup:
    parts = [status_badge(hook.last_delivery_status)]
    if hook.last_delivery_at is not None:
        parts.append(
            Markup('<small class="text-muted">{}</small>').format(
                format_time(hook.last_delivery_at)
            )
        )
    if hook.consecutive_failures:
        n = hook.consecutive_failures
        parts.append(
            Markup('<div class="small text-danger">{} failed in a row</div>').format(n)
        )
    if hook.disabled_reason:
        parts.append(
            Markup(
                '<div class="small text-danger wh-disabled-reason">disabled: {}</div>'
            ).format(hook.disabled_reason)
        )
    return Markup(" ").join(parts)


def _secret_cell(hook: t.Any) -> Markup:
    if not hook.secret:
        return Markup('<span class="text-muted">none</span>')
    cell = Markup(
        '<span class="wh-masked" title="write-only">••••••••</span> '
        '<small class="text-muted">{}</small>'
    ).format(hook.signature_scheme)
    rotation = rotation_state(hook)
    if rotation is not None:
        cell += Markup(
            '<div class="small text-info wh-rotating">rotating: switches at {} UTC</div>'
        ).format(f"{rotation['until']:%Y-%m-%d %H:%M}")
    return cell


class ModelFilter(sqla_filters.BaseSQLAFilter):
    """Webhooks whose ``models`` list contains a registered model name."""

    def __init__(self, column: t.Any, options: ViewOptions) -> None:
        super().__init__(column, "Model", options=lambda: _model_choices(options))

    def apply(self, query: t.Any, value: t.Any, alias: t.Any = None) -> t.Any:
        column = self.get_column(alias)
        # JSON text is ["a", "b"] on every database; match the quoted name.
        needle = json.dumps(str(value))
        return query.filter(sa.cast(column, sa.Text).contains(needle, autoescape=True))

    def operation(self) -> str:
        return "includes"


class EventTypeFilter(ModelFilter):
    """Webhooks subscribed to a declared app event type."""

    def __init__(self, column: t.Any, options: ViewOptions) -> None:
        sqla_filters.BaseSQLAFilter.__init__(
            self,
            column,
            "App event type",
            options=lambda: [
                (n, n) for n in options.webhooks.registry.event_type_names()
            ],
        )


def _model_choices(options: ViewOptions) -> list[tuple[str, str]]:
    return [(n, n) for n in options.webhooks.registry.names()]


class WebhookView(AdminViewMixin, ModelView):
    """List, create and edit webhooks; enable, disable, send a test delivery."""

    form = WebhookForm
    form_base_class = SecureForm
    list_template = "webhooks/admin/webhook_list.html"
    create_template = "webhooks/admin/webhook_create.html"
    edit_template = "webhooks/admin/webhook_edit.html"
    can_view_details = False
    can_export = False
    named_filter_urls = True
    page_size = 50
    column_list = (
        "name",
        "models",
        "events",
        "payload_url",
        "enabled",
        "health",
        "activity",
        "secret",
    )
    column_labels = {
        "activity": "Last 24 h",
        "payload_url": "URL",
        "health": "Health",
        "secret": "Signature",
        "events": "Events",
    }
    column_sortable_list = ("name", "payload_url", "enabled")
    column_default_sort = ("name", False)
    column_searchable_list = ("name", "payload_url")
    column_formatters = {
        "name": _name_cell,
        "models": _formatter(lambda h: badges(h.models or [], "info")),
        # Model events and app event types share one column.
        "events": _formatter(
            lambda h: (
                badges(h.events, "light")
                + Markup(" ")
                + badges(h.event_types or [], "primary")
            )
        ),
        "payload_url": _formatter(_url_cell),
        "enabled": _formatter(_enabled_cell),
        "health": _formatter(_health_cell),
        "secret": _formatter(_secret_cell),
        "activity": lambda view, context, hook, name: list_sparkline(
            view.options.state, hook.id
        ),
    }

    def __init__(
        self, model: t.Any, db: t.Any, *, options: ViewOptions, **kwargs: t.Any
    ) -> None:
        self.options = options
        W = model
        self.column_filters = [
            sqla_filters.BooleanEqualFilter(W.enabled, "Enabled"),
            sqla_filters.FilterEqual(
                W.last_delivery_status,
                "Last delivery",
                options=[(s, s) for s in m.STATUSES],
            ),
            ModelFilter(W.models, options),
            EventTypeFilter(W.event_types, options),
            sqla_filters.FilterLike(W.name, "Name"),
            sqla_filters.FilterLike(W.payload_url, "URL"),
            sqla_filters.IntGreaterFilter(W.consecutive_failures, "Failures in a row"),
        ]
        super().__init__(model, db, **kwargs)

    # -- list ------------------------------------------------------------------

    @expose("/")
    def index_view(self) -> t.Any:
        # Filter options (registered models) can change after the view was made.
        self._refresh_filters_cache()
        return super().index_view()

    # -- forms -----------------------------------------------------------------

    def create_form(self, obj: t.Any = None) -> t.Any:
        form = super().create_form(obj)
        prepare_form(form, None, self.options.webhooks.registry.names(), self._types())
        return form

    def edit_form(self, obj: t.Any = None) -> t.Any:
        form = super().edit_form(obj)
        prepare_form(form, obj, self.options.webhooks.registry.names(), self._types())
        return form

    def _types(self) -> list[tuple[str, str]]:
        """Declared app event types: ``(name, description)``."""
        registry = self.options.webhooks.registry
        return [(e.name, e.description) for e in registry.event_types()]

    def create_model(self, form: t.Any) -> t.Any:
        hook = self.model()
        if not self._save(form, hook, created=True):
            return False
        self.after_model_change(form, hook, True)
        return hook

    def update_model(self, form: t.Any, model: t.Any) -> bool:
        if not self._save(form, model, created=False):
            return False
        self.after_model_change(form, model, False)
        return True

    def _save(self, form: t.Any, hook: t.Any, *, created: bool) -> bool:
        session = self.options.state.db.session
        was_enabled = bool(hook.enabled) if not created else True
        apply_form(form, hook)
        if hook.enabled and not was_enabled:
            clear_disabled(hook)
        errors = hook.validate()
        errors.update(self._name_taken(hook))
        if errors:
            attach_errors(form, errors)
            session.rollback()
            return False
        try:
            if created:
                session.add(hook)
            session.commit()
        except WebhookValidationError as e:
            session.rollback()
            attach_errors(form, e.errors)
            return False
        except IntegrityError:
            session.rollback()
            attach_errors(form, {"name": "a webhook with this name already exists"})
            return False
        except Exception as e:
            session.rollback()
            if not self.handle_view_exception(e):
                flash(f"Failed to save the webhook: {e}", "error")
            return False
        return True

    def _name_taken(self, hook: t.Any) -> dict[str, str]:
        if not hook.name:
            return {}
        W = self.model
        session = self.options.state.db.session
        stmt = sa.select(W.id).where(W.name == hook.name)
        if hook.id is not None:
            stmt = stmt.where(W.id != hook.id)
        with session.no_autoflush:
            taken = session.execute(stmt.limit(1)).first() is not None
        return {"name": "a webhook with this name already exists"} if taken else {}

    @expose("/generate-secret/")
    def generate_secret_view(self) -> t.Any:
        """A fresh Standard Webhooks secret (JSON), for the form's helper button.

        Nothing is stored: the secret is saved only if the form is submitted.
        """
        response = jsonify(secret=generate_secret())
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- operator tools (see webhook_tools.py) ---------------------------------

    def render(self, template: str, **kwargs: t.Any) -> t.Any:
        if template in (self.edit_template, self.create_template):
            state = self.options.state
            hook = kwargs.get("model")
            kwargs["preview_models"] = self.options.webhooks.registry.names()
            if hook is not None and hook.id is not None:
                kwargs["activity"] = webhook_activity(state, hook.id)
                kwargs["rotation"] = rotation_state(hook)
                kwargs["rotate_form"] = RotateForm()
                kwargs["preview_deliveries"] = newest_deliveries(state, hook.id)
        return super().render(template, **kwargs)

    @expose("/preview/", methods=("POST",))
    def preview_view(self) -> t.Any:
        """The form's Preview button: render what the unsaved form would send
        for an object or a stored delivery (JSON); nothing is saved or sent."""
        hook_id = request.args.get("id")
        hook = self.get_one(hook_id) if hook_id else None
        form = self.edit_form(hook) if hook is not None else self.create_form()
        body, status = preview_response(self.options.state, form, hook)
        response = jsonify(body)
        response.status_code = status
        response.headers["Cache-Control"] = "no-store"
        return response

    @expose("/rotate-secret/", methods=("POST",))
    def rotate_secret_view(self) -> t.Any:
        """Rotate the webhook's secret with an overlap (the edit page's form)."""
        hook = self.get_one(request.args.get("id", ""))
        if hook is None:
            flash("No such webhook.", "error")
            return redirect(self.get_url(".index_view"))
        ok, message = rotate_from_form(self.options.state, hook)
        flash(message, "success" if ok else "error")
        return redirect(self.get_url(".edit_view", id=hook.id))

    # -- actions ---------------------------------------------------------------

    @action("enable", "Enable")
    def action_enable(self, ids: list[str]) -> None:
        hooks = self._hooks(ids)
        for hook in hooks:
            hook.enabled = True
            clear_disabled(hook)
        self.options.state.db.session.commit()
        flash(f"Enabled {plural(len(hooks), 'webhook')}.", "success")

    @action("disable", "Disable")
    def action_disable(self, ids: list[str]) -> None:
        hooks = self._hooks(ids)
        for hook in hooks:
            hook.enabled = False
        self.options.state.db.session.commit()
        flash(f"Disabled {plural(len(hooks), 'webhook')}.", "success")

    @action("send_test", "Send test delivery")
    def action_send_test(self, ids: list[str]) -> t.Any:
        state = self.options.state
        rows: list[dict[str, t.Any]] = []
        for hook in self._hooks(ids):
            if not hook.enabled:
                flash(
                    f"Webhook {hook.name!r} is disabled: enable it before sending a test.",
                    "warning",
                )
                continue
            rows.append(
                test_delivery_row(
                    hook,
                    message="This is a test delivery from the flask-webhooks admin.",
                    username=state.username(),
                    limits=state.config.template_limits,
                )
            )
        # End the session's read transaction before other connections write
        # (SQLite would otherwise see the database as locked).
        release_session(state)
        if not rows:
            return None
        with state.engine().begin() as conn:
            state.outbox.write_numbered(conn, rows)
        pending = [r["id"] for r in rows if r["status"] == m.PENDING]
        if pending:
            state.enqueue(pending)
        for row in rows:
            _flash_test_result(state, row["webhook_name"], row["id"])
        if len(rows) == 1:
            return redirect(self.wh_url("delivery", "details_view", id=rows[0]["id"]))
        return redirect(self.wh_url("delivery", **filter_query(event=TEST_EVENT)))

    def _hooks(self, ids: t.Sequence[str]) -> list[t.Any]:
        W = self.model
        keys = [int(i) for i in ids if str(i).isdigit()]
        if not keys:
            return []
        session = self.options.state.db.session
        return list(
            session.scalars(sa.select(W).where(W.id.in_(keys)).order_by(W.name))
        )


def _flash_test_result(state: t.Any, name: str, delivery_id: str) -> None:
    D = state.models.Delivery.__table__
    with state.engine().connect() as conn:
        row = conn.execute(
            sa.select(
                D.c.status, D.c.last_status_code, D.c.last_error, D.c.duration_ms
            ).where(D.c.id == delivery_id)
        ).one()
    code = f"HTTP {row.last_status_code}" if row.last_status_code else None
    if row.status == m.SUCCEEDED:
        took = f" in {row.duration_ms:.0f} ms" if row.duration_ms is not None else ""
        flash(f"Test delivery to {name!r} succeeded: {code}{took}.", "success")
    elif row.status in (m.FAILED, m.RETRYING):
        why = "; ".join(x for x in (code, row.last_error) if x) or row.status
        more = " Another attempt is scheduled." if row.status == m.RETRYING else ""
        flash(f"Test delivery to {name!r} failed: {why}.{more}", "error")
    else:
        flash(
            f"Test delivery to {name!r} queued; this page refreshes until it is sent.",
            "info",
        )
