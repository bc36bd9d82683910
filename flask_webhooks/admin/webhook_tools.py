"""The operator tools of the Webhooks screen: activity charts, the form's
preview (dry run) and the secret rotation.

:class:`~flask_webhooks.admin.webhooks.WebhookView` exposes them; the work
is here so that the view stays about listing and editing.
"""

from __future__ import annotations

import datetime as dt
import types
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa
from flask import g
from flask import render_template
from flask import request
from flask_admin.form import SecureForm
from markupsafe import Markup
from wtforms import FloatField
from wtforms import PasswordField
from wtforms import validators

from .. import models as m
from ..preview import delivery_envelope
from ..preview import first_event
from ..preview import HOOK_FIELDS
from ..preview import hook_values
from ..preview import object_envelope
from ..preview import preview
from ..rotation import rotate_secret
from ..rotation import rotating_until
from ..validation import WebhookValidationError
from . import charts
from . import metrics
from .formatters import HELPERS
from .forms import apply_form

if t.TYPE_CHECKING:
    from ..state import WebhooksState

_LIST_CACHE = "flask_webhooks_list_activity"
#: Webhook field -> form field, where they differ.
_FORM_FIELD = {"secret": "new_secret"}


# -- charts --------------------------------------------------------------------


def list_sparkline(state: WebhooksState, hook_id: t.Any) -> Markup:
    """The list's 24 h sparkline of one webhook; the counts of every webhook
    are read once per request (one aggregate query)."""
    counts = g.get(_LIST_CACHE)
    if counts is None:
        window = metrics.Window.last(24)
        with state.engine().connect() as conn:
            counts = metrics.delivery_counts(
                conn, state.models.Delivery.__table__, window
            )
        setattr(g, _LIST_CACHE, counts)
    ok, failed = counts.outcomes(hook_id)
    return charts.sparkline(
        counts.window.buckets, ok, failed, chart_id=f"wh-spark-{hook_id}"
    ) + Markup(
        '<div class="small text-muted wh-spark-totals">{} ok · {} failed</div>'
    ).format(sum(ok), sum(failed))


@dataclass
class Activity:
    """The edit page's picture of one webhook."""

    chart: Markup
    totals: dict[str, int]
    attempts: list[t.Any]


def webhook_activity(
    state: WebhooksState, hook_id: t.Any, now: dt.datetime | None = None
) -> Activity:
    """Deliveries per hour by status over 24 h and the last 20 attempts."""
    window = metrics.Window.last(24, now)
    models = state.models
    D = models.Delivery.__table__
    with state.engine().connect() as conn:
        counts = metrics.delivery_counts(conn, D, window, webhook_id=hook_id)
        attempts = metrics.recent_attempts(
            conn, D, models.DeliveryAttempt.__table__, hook_id
        )
    series = counts.by_status()
    return Activity(
        charts.stacked_bars(
            window.buckets,
            series,
            chart_id="wh-chart-webhook",
            title="This webhook's deliveries per hour by status, last 24 hours (UTC)",
            width=720,
            height=220,
        ),
        {status: sum(values) for status, values in series.items()},
        attempts,
    )


# -- preview -------------------------------------------------------------------


def preview_response(
    state: WebhooksState, form: t.Any, stored: t.Any
) -> tuple[dict[str, t.Any], int]:
    """The JSON answer of the form's Preview button: ``{"html", "errors"}``.

    ``errors`` maps form field ids to messages (shown beside the fields);
    the form's unsaved values are previewed, with the stored secret unless a
    new one was typed. Nothing is saved or sent.
    """
    if not form.validate():
        if form.csrf_token.errors:
            return {
                "html": "",
                "errors": {},
                "message": "The form's CSRF token is missing or expired: reload the page.",
            }, 400
        errors = {
            name: "; ".join(str(e) for e in messages)
            for name, messages in form.errors.items()
            if name != "csrf_token"
        }
        return {
            "html": "",
            "errors": errors,
            "message": "Fix the marked fields first.",
        }, 200
    hook = (
        hook_values(stored)
        if stored is not None
        else types.SimpleNamespace(**dict.fromkeys(HOOK_FIELDS))
    )
    apply_form(form, hook)
    hook.models = list(hook.models or [])
    delivery_id = (request.form.get("preview_delivery") or "").strip() or None
    model = (request.form.get("preview_model") or "").strip()
    object_id = (request.form.get("preview_id") or "").strip()
    event = (request.form.get("preview_event") or "").strip() or first_event(hook)
    try:
        if delivery_id:
            payload, source = (
                delivery_envelope(state, delivery_id),
                f"delivery {delivery_id}",
            )
        elif model and object_id:
            payload = object_envelope(state, model, object_id, event=event)
            source = f"{model} {object_id}"
        else:
            return {
                "html": "",
                "errors": {},
                "message": "Choose a model and an id, or give a delivery id.",
            }, 200
    except LookupError as e:
        field, _, message = str(e).strip("'\"").partition(": ")
        target = {"delivery": "preview_delivery", "id": "preview_id"}.get(
            field, "preview_model"
        )
        return {"html": "", "errors": {target: message}, "message": ""}, 200
    finally:
        state.db.session.rollback()
    result = preview(state, hook, payload, source=source, delivery_id=delivery_id)
    html = render_template(
        "webhooks/admin/_preview.html",
        result=result,
        wh=HELPERS,
    )
    errors = {_FORM_FIELD.get(k, k): v for k, v in result.errors.items()}
    return {"html": html, "errors": errors, "message": ""}, 200


# -- rotation ------------------------------------------------------------------


class RotateForm(SecureForm):
    """The edit page's "Rotate secret" form (CSRF-protected)."""

    rotate_secret = PasswordField(
        "New secret",
        description="Write-only; Generate makes one and shows it once.",
        render_kw={"autocomplete": "new-password"},
    )
    overlap_hours = FloatField(
        "Overlap (hours)",
        default=24,
        validators=[
            validators.InputRequired(),
            validators.NumberRange(min=0, max=24 * 90),
        ],
        description="How long the old secret keeps working.",
    )


def rotate_from_form(state: WebhooksState, hook: t.Any) -> tuple[bool, str]:
    """Run the rotation the form asks for; return ``(ok, message to flash)``.

    The message never holds a secret.
    """
    form = RotateForm(request.form)
    if not form.validate():
        problems = "; ".join(
            f"{name}: {', '.join(str(e) for e in errs)}"
            for name, errs in form.errors.items()
        )
        return False, f"The secret was not rotated: {problems}."
    secret = (form.rotate_secret.data or "").strip()
    if not secret:
        return False, "The secret was not rotated: type a new secret or press Generate."
    overlap = dt.timedelta(hours=float(form.overlap_hours.data))
    try:
        rotate_secret(state, hook, secret, overlap)
    except WebhookValidationError as e:
        return False, "The secret was not rotated: " + "; ".join(e.errors.values())
    except ValueError as e:
        return False, f"The secret was not rotated: {e}"
    until = hook.secret_rotated_until
    if until is None:
        return (
            True,
            f"Secret of {hook.name!r} replaced: requests are signed with it now.",
        )
    when = f"{until:%Y-%m-%d %H:%M} UTC"
    if hook.signature_scheme == "standard":
        return True, (
            f"Secret of {hook.name!r} rotated: requests carry signatures with the old"
            f" and the new secret until {when}."
        )
    if hook.signature_scheme == "both":
        return True, (
            f"Secret of {hook.name!r} rotated: until {when} X-Hook-Signature stays"
            " signed with the old secret and webhook-signature carries both."
        )
    return True, (
        f"Secret of {hook.name!r} rotated: requests stay signed with the old secret"
        f" until {when}, then switch to the new one."
    )


def rotation_state(hook: t.Any) -> dict[str, t.Any] | None:
    """What the admin shows of a rotation in progress (never a secret)."""
    until = rotating_until(hook)
    if until is None:
        return None
    return {"until": until, "scheme": hook.signature_scheme}


def newest_deliveries(
    state: WebhooksState, hook_id: t.Any, limit: int = 10
) -> list[t.Any]:
    """The webhook's newest deliveries with a body, for the preview's picker."""
    D = state.models.Delivery.__table__
    with state.engine().connect() as conn:
        return list(
            conn.execute(
                sa.select(D.c.id, D.c.event, D.c.model, D.c.object_id, D.c.created_at)
                .where(D.c.webhook_id == hook_id, D.c.status != m.CANCELLED)
                .order_by(D.c.created_at.desc())
                .limit(limit)
            )
        )
