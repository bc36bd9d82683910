"""The Webhooks admin screen: list, create/edit form and actions.

The form writes the model and runs the model-level validation
(:func:`flask_webhooks.validation.validate_webhook`), so the admin shows the
same messages as code and CLI, each beside its field. The secret is write-only.
"""

from __future__ import annotations

import json
import typing as t
import uuid

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
from flask_admin.form.widgets import Select2Widget
from markupsafe import Markup
from sqlalchemy.exc import IntegrityError
from wtforms import BooleanField
from wtforms import FloatField
from wtforms import PasswordField
from wtforms import SelectField
from wtforms import SelectMultipleField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms import validators

try:  # WTForms 3.3 deprecates tuples as choices
    from wtforms import SelectChoice
except ImportError:  # pragma: no cover - WTForms < 3.3
    SelectChoice = None

from . import models as m
from .admin import AdminViewMixin
from .admin import badges
from .admin import display_url
from .admin import format_time
from .admin import pretty_json
from .admin import release_session
from .admin import status_badge
from .admin import truncate
from .admin import ViewOptions
from .payload import dumps
from .payload import envelope
from .payload import render_body
from .signing import generate_secret
from .validation import HTTP_METHODS
from .validation import WebhookValidationError

#: Event name of deliveries made by "send test delivery".
TEST_EVENT = "test"

CONTENT_TYPES = (
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/xml",
)
SIGNATURE_SCHEMES = (
    ("netbox", "NetBox (X-Hook-Signature, HMAC-SHA512)"),
    ("standard", "Standard Webhooks (webhook-signature)"),
    ("both", "Both"),
)


def _choice(value: str, label: str | None = None) -> t.Any:
    if SelectChoice is None:  # pragma: no cover
        return (value, label or value)
    return SelectChoice(value, label or value)


#: Model-level field name -> form field name, where they differ.
_FORM_FIELD = {"secret": "new_secret"}


class JSONTextField(TextAreaField):
    """JSON edited as text: shown pretty-printed, parsed on submit."""

    def _value(self) -> str:
        if self.raw_data:
            return str(self.raw_data[0])
        return pretty_json(self.data)

    def process_formdata(self, valuelist: list[t.Any]) -> None:
        if not valuelist:
            return
        text = str(valuelist[0]).strip()
        if not text:
            self.data = None
            return
        try:
            self.data = json.loads(text)
        except ValueError as e:
            self.data = None
            raise ValueError(f"not valid JSON: {e}") from None


class WebhookForm(SecureForm):
    """The create/edit form; choices of ``models`` are filled per request."""

    name = StringField("Name", description="A unique name for this webhook.")
    enabled = BooleanField("Enabled", default=True)
    models = SelectMultipleField(
        "Models",
        choices=[],
        widget=Select2Widget(multiple=True),
        description="Changes to these registered models fire the webhook.",
    )
    on_create = BooleanField("Created")
    on_update = BooleanField("Updated")
    on_delete = BooleanField("Deleted")
    payload_url = StringField(
        "Payload URL",
        description="http:// or https:// URL; may be a Jinja2 template.",
        render_kw={"placeholder": "https://example.com/hooks/netbox"},
    )
    http_method = SelectField(
        "HTTP method", choices=[_choice(v) for v in HTTP_METHODS], default="POST"
    )
    http_content_type = SelectField(
        "Content type",
        choices=[_choice(v) for v in CONTENT_TYPES],
        default="application/json",
        validate_choice=False,
    )
    additional_headers = TextAreaField(
        "Additional headers",
        description="One <code>Name: Value</code> per line; values may be Jinja2 templates.",
        render_kw={
            "rows": 3,
            "placeholder": "Authorization: Bearer {{ webhook.name }}",
        },
    )
    body_template = TextAreaField(
        "Body template",
        description="Jinja2 template for the request body; empty sends the default JSON payload.",
        render_kw={"rows": 5},
    )
    new_secret = PasswordField(
        "Secret",
        description="Write-only. Leave blank to keep the current secret.",
        render_kw={"autocomplete": "new-password"},
    )
    clear_secret = BooleanField("Remove the secret (send unsigned requests)")
    signature_scheme = SelectField(
        "Signature scheme",
        choices=[_choice(v, label) for v, label in SIGNATURE_SCHEMES],
        default="netbox",
    )
    ssl_verification = BooleanField("Verify TLS certificates", default=True)
    ca_file_path = StringField(
        "CA bundle path",
        description="A CA bundle on the server to verify the receiver's certificate.",
    )
    conditions = JSONTextField(
        "Conditions",
        description=(
            'A NetBox condition set as JSON, e.g. <code>{"attr": "status.value", '
            '"value": "active"}</code>; empty fires for every change.'
        ),
        render_kw={"rows": 5, "spellcheck": "false"},
    )
    timeout = FloatField(
        "Timeout (seconds)",
        validators=[validators.Optional()],
        description="Overrides WEBHOOKS_TIMEOUT for this webhook.",
    )


def _formatter(
    fn: t.Callable[[t.Any], t.Any],
) -> t.Callable[[t.Any, t.Any, t.Any, str], t.Any]:
    return lambda view, context, model, name: fn(model)


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
    return Markup(
        '<span class="wh-masked" title="write-only">••••••••</span> '
        '<small class="text-muted">{}</small>'
    ).format(hook.signature_scheme)


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
        "secret",
    )
    column_labels = {
        "payload_url": "URL",
        "health": "Health",
        "secret": "Signature",
        "events": "Events",
    }
    column_sortable_list = ("name", "payload_url", "enabled")
    column_default_sort = ("name", False)
    column_searchable_list = ("name", "payload_url")
    column_formatters = {
        "name": lambda view, context, model, name: Markup(
            '<a href="{}" class="wh-name">{}</a>'
        ).format(view.get_url(".edit_view", id=model.id), model.name),
        "models": _formatter(lambda h: badges(h.models or [], "info")),
        "events": _formatter(lambda h: badges(h.events, "light")),
        "payload_url": _formatter(
            lambda h: Markup(
                '<code title="{}">{}</code> <small class="text-muted">{}</small>'
            ).format(
                display_url(h.payload_url),
                truncate(display_url(h.payload_url), 48),
                h.http_method,
            )
        ),
        "enabled": _formatter(_enabled_cell),
        "health": _formatter(_health_cell),
        "secret": _formatter(_secret_cell),
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
        self._prepare_form(form, None)
        return form

    def edit_form(self, obj: t.Any = None) -> t.Any:
        form = super().edit_form(obj)
        self._prepare_form(form, obj)
        return form

    def _prepare_form(self, form: t.Any, hook: t.Any) -> None:
        names = self.options.webhooks.registry.names()
        current = list(hook.models or []) if hook is not None else []
        extra = [n for n in current if n not in names]
        form.models.choices = [_choice(n) for n in names + extra]
        content_type = hook.http_content_type if hook is not None else None
        if content_type and content_type not in CONTENT_TYPES:
            form.http_content_type.choices = [
                _choice(content_type),
                *(_choice(v) for v in CONTENT_TYPES),
            ]
        if request.method == "GET" and hook is None:
            form.on_create.data = form.on_update.data = form.on_delete.data = True

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
        _apply_form(form, hook)
        if hook.enabled and not was_enabled:
            _clear_disabled(hook)
        errors = hook.validate()
        errors.update(self._name_taken(hook))
        if errors:
            _attach_errors(form, errors)
            session.rollback()
            return False
        try:
            if created:
                session.add(hook)
            session.commit()
        except WebhookValidationError as e:
            session.rollback()
            _attach_errors(form, e.errors)
            return False
        except IntegrityError:
            session.rollback()
            _attach_errors(form, {"name": "a webhook with this name already exists"})
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

    # -- actions ---------------------------------------------------------------

    @action("enable", "Enable")
    def action_enable(self, ids: list[str]) -> None:
        hooks = self._hooks(ids)
        for hook in hooks:
            hook.enabled = True
            _clear_disabled(hook)
        self.options.state.db.session.commit()
        flash(f"Enabled {_plural(len(hooks), 'webhook')}.", "success")

    @action("disable", "Disable")
    def action_disable(self, ids: list[str]) -> None:
        hooks = self._hooks(ids)
        for hook in hooks:
            hook.enabled = False
        self.options.state.db.session.commit()
        flash(f"Disabled {_plural(len(hooks), 'webhook')}.", "success")

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
            rows.append(test_delivery_row(state, hook))
        # End the session's read transaction before other connections write
        # (SQLite would otherwise see the database as locked).
        release_session(state)
        if not rows:
            return None
        with state.engine().begin() as conn:
            conn.execute(sa.insert(state.models.Delivery.__table__), rows)
        pending = [r["id"] for r in rows if r["status"] == m.PENDING]
        if pending:
            state.enqueue(pending)
        for row in rows:
            _flash_test_result(state, row["webhook_name"], row["id"])
        if len(rows) == 1:
            return redirect(self.wh_url("delivery", "details_view", id=rows[0]["id"]))
        from .admin_deliveries import filter_query

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


def test_delivery_row(state: t.Any, hook: t.Any) -> dict[str, t.Any]:
    """The outbox row of a ``test`` delivery for ``hook``, with a sample payload.

    The body is rendered like any other delivery's (the webhook's body
    template, or the default JSON payload), so the test goes through the
    normal pipeline: queue, signing, transport, attempt log.
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
            "message": "This is a test delivery from the flask-webhooks admin.",
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


def _apply_form(form: t.Any, hook: t.Any) -> None:
    """Copy the form into the model (the secret only when a new one was typed)."""
    hook.name = (form.name.data or "").strip()
    hook.enabled = bool(form.enabled.data)
    hook.models = list(form.models.data or [])
    hook.on_create = bool(form.on_create.data)
    hook.on_update = bool(form.on_update.data)
    hook.on_delete = bool(form.on_delete.data)
    hook.payload_url = (form.payload_url.data or "").strip()
    hook.http_method = (form.http_method.data or "POST").upper()
    hook.http_content_type = (form.http_content_type.data or "").strip()
    hook.additional_headers = form.additional_headers.data or ""
    hook.body_template = form.body_template.data or ""
    if form.clear_secret.data:
        hook.secret = ""
    elif (form.new_secret.data or "").strip():
        hook.secret = form.new_secret.data.strip()
    hook.signature_scheme = form.signature_scheme.data or "netbox"
    hook.ssl_verification = bool(form.ssl_verification.data)
    hook.ca_file_path = (form.ca_file_path.data or "").strip() or None
    hook.conditions = form.conditions.data if form.conditions.data != {} else None
    hook.timeout = form.timeout.data


def _clear_disabled(hook: t.Any) -> None:
    """Re-enabling forgets why it was disabled and restarts the failure streak."""
    hook.disabled_reason = None
    hook.disabled_at = None
    hook.consecutive_failures = 0


def _attach_errors(form: t.Any, errors: t.Mapping[str, str]) -> None:
    """Show model-level errors beside their fields (unknown fields: flashed)."""
    for field_name, message in errors.items():
        field = getattr(form, _FORM_FIELD.get(field_name, field_name), None)
        if field is None:
            flash(f"{field_name}: {message}", "error")
            continue
        field.errors = [*field.errors, message]
    flash("The webhook was not saved: please correct the fields marked below.", "error")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
