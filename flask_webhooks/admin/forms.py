"""The webhook create/edit form and how it maps onto the model.

The form holds no validation of its own beyond parsing (JSON, numbers): the
model-level rules (:func:`flask_webhooks.validation.validate_webhook`) run on
the model the form fills, and :func:`attach_errors` puts each message beside
its field. The secret is write-only: its field is never filled from the model.
"""

from __future__ import annotations

import json
import typing as t

from flask import flash
from flask import request
from flask_admin.form import SecureForm
from flask_admin.form.widgets import Select2Widget
from wtforms import BooleanField
from wtforms import FloatField
from wtforms import PasswordField
from wtforms import SelectField
from wtforms import SelectMultipleField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms import validators

from ..validation import HTTP_METHODS
from .formatters import pretty_json

try:  # WTForms 3.3 deprecates tuples as choices
    from wtforms import SelectChoice
except ImportError:  # WTForms < 3.3
    SelectChoice = None


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
    if SelectChoice is None:
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
    event_types = SelectMultipleField(
        "App event types",
        choices=[],
        widget=Select2Widget(multiple=True),
        description=(
            "Events the app publishes (<code>webhooks.publish()</code>) that "
            "fire the webhook, with or without models."
        ),
    )
    on_create = BooleanField("Created")
    on_update = BooleanField("Updated")
    on_delete = BooleanField("Deleted")
    collapse_updates = BooleanField(
        "Collapse waiting updates",
        description=(
            "When several updates of one object wait behind an earlier delivery "
            "(a slow or failing receiver), send only the newest; the others end "
            "<em>superseded</em>. Creates and deletes are always sent."
        ),
    )
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
    rate_limit = FloatField(
        "Rate limit (requests per second)",
        validators=[validators.Optional()],
        description="At most this many requests per second, across all "
        "workers; queued deliveries wait. Empty: no limit.",
    )


def prepare_form(
    form: t.Any,
    hook: t.Any,
    names: list[str],
    event_types: t.Sequence[tuple[str, str]] = (),
) -> None:
    """Per-request choices: registered model names and declared event types
    ``(name, description)`` (plus any unknown ones the webhook already has,
    so validation can name them) and a custom content type."""
    current = list(hook.models or []) if hook is not None else []
    extra = [n for n in current if n not in names]
    form.models.choices = [_choice(n) for n in names + extra]
    declared = [n for n, _ in event_types]
    chosen = list(hook.event_types or []) if hook is not None else []
    form.event_types.choices = [
        _choice(n, f"{n} \u2014 {d}" if d else n) for n, d in event_types
    ] + [_choice(str(n)) for n in chosen if n not in declared]
    content_type = hook.http_content_type if hook is not None else None
    if content_type and content_type not in CONTENT_TYPES:
        form.http_content_type.choices = [
            _choice(content_type),
            *(_choice(v) for v in CONTENT_TYPES),
        ]
    if request.method == "GET" and hook is None:
        form.on_create.data = form.on_update.data = form.on_delete.data = True


def apply_form(form: t.Any, hook: t.Any) -> None:
    """Copy the form into the model (the secret only when a new one was typed)."""
    hook.name = (form.name.data or "").strip()
    hook.enabled = bool(form.enabled.data)
    hook.models = list(form.models.data or [])
    hook.event_types = list(form.event_types.data or [])
    hook.on_create = bool(form.on_create.data)
    hook.on_update = bool(form.on_update.data)
    hook.on_delete = bool(form.on_delete.data)
    hook.collapse_updates = bool(form.collapse_updates.data)
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
    hook.rate_limit = form.rate_limit.data


def clear_disabled(hook: t.Any) -> None:
    """Re-enabling forgets why it was disabled and restarts the failure streak."""
    hook.disabled_reason = None
    hook.disabled_at = None
    hook.consecutive_failures = 0


def attach_errors(form: t.Any, errors: t.Mapping[str, str]) -> None:
    """Show model-level errors beside their fields (unknown fields: flashed)."""
    for field_name, message in errors.items():
        field = getattr(form, _FORM_FIELD.get(field_name, field_name), None)
        if field is None:
            flash(f"{field_name}: {message}", "error")
            continue
        field.errors = [*field.errors, message]
    flash("The webhook was not saved: please correct the fields marked below.", "error")
