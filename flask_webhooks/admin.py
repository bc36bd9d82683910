"""Flask-Admin screens: webhooks, the delivery log and queue status.

Needs the ``admin`` extra (``pip install flask-webhooks[admin]``). This module
imports Flask-Admin, so the core only imports it from
:meth:`Webhooks.init_admin <flask_webhooks.Webhooks.init_admin>`::

    admin = Admin(app, theme=Bootstrap4Theme())
    webhooks.init_admin(admin, is_accessible=lambda: current_user.is_admin)

The views live in :mod:`flask_webhooks.admin_webhooks`,
:mod:`flask_webhooks.admin_deliveries` and :mod:`flask_webhooks.admin_status`;
this module holds what they share: access control, the CSRF requirement and
the small formatting helpers their templates use.
"""

from __future__ import annotations

import datetime as dt
import json
import typing as t

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import Flask
from flask import has_app_context
from markupsafe import escape
from markupsafe import Markup

from . import models as m
from .queue import redact_url

if t.TYPE_CHECKING:
    from .extension import Webhooks
    from .extension import WebhooksState


#: ``() -> bool``: may the current user use the webhook screens?
AccessCheck = t.Callable[[], bool]

#: Ships ``templates/webhooks/admin/*.html``; registered on the app with the views.
templates_blueprint = Blueprint(
    "flask_webhooks_admin", __name__, template_folder="templates"
)


def init_admin(
    webhooks: Webhooks,
    admin: t.Any,
    *,
    category: str = "Webhooks",
    is_accessible: AccessCheck | None = None,
    endpoint: str = "webhooks",
    url: str = "webhooks",
) -> None:
    """Add the Webhooks, Deliveries and Status screens to ``admin``.

    The screens are added under ``<admin url>/<url>/`` (by default
    ``/admin/webhooks/``, ``/admin/webhooks/deliveries/`` and
    ``/admin/webhooks/status/``) in the menu category ``category``.

    :param webhooks: the :class:`~flask_webhooks.Webhooks` extension.
    :param admin: the app's ``flask_admin.Admin`` (Bootstrap 4 theme).
    :param category: the menu category the three screens are grouped under.
    :param is_accessible: ``() -> bool``, called on every request to the
        screens. When it returns False the screens answer 403, or redirect to
        the login page when Flask-Login is set up with a ``login_view`` and
        nobody is logged in. When omitted: any logged-in user if Flask-Login is
        set up, everyone otherwise (Flask-Admin's own default).
    :param endpoint: prefix of the views' endpoint names (change it to add the
        screens to a second ``Admin`` of the same app).
    :param url: URL of the screens, relative to the admin's URL.
    :raises RuntimeError: if the app has no ``SECRET_KEY`` (the forms' CSRF
        tokens are signed with it).
    """
    from .admin_deliveries import DeliveryView
    from .admin_status import StatusView
    from .admin_webhooks import WebhookView

    folder = getattr(getattr(admin, "theme", None), "folder", "bootstrap4")
    if folder != "bootstrap4":
        raise ValueError(
            f"flask-webhooks admin screens need the Bootstrap 4 theme, not {folder!r}"
        )
    app = admin.app
    if app is None and has_app_context():
        app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app is not None:
        require_secret_key(app)
    models = webhooks._require_models()
    options = ViewOptions(webhooks, is_accessible, endpoint)
    url = url.strip("/")
    admin.add_view(
        WebhookView(
            models.Webhook,
            webhooks._db,
            options=options,
            name="Webhooks",
            category=category,
            endpoint=options.endpoint("webhook"),
            url=url,
        )
    )
    admin.add_view(
        DeliveryView(
            models.Delivery,
            webhooks._db,
            options=options,
            name="Deliveries",
            category=category,
            endpoint=options.endpoint("delivery"),
            url=f"{url}/deliveries",
        )
    )
    admin.add_view(
        StatusView(
            options=options,
            name="Status",
            category=category,
            endpoint=options.endpoint("status"),
            url=f"{url}/status",
        )
    )


def require_secret_key(app: Flask) -> None:
    """Refuse to serve the screens without a ``SECRET_KEY`` (CSRF needs it)."""
    if not app.secret_key:
        raise RuntimeError(
            "flask-webhooks admin: the app has no SECRET_KEY. The admin forms are "
            "protected by CSRF tokens signed with it; set SECRET_KEY (the same value "
            "in every process) before adding the webhook screens to Flask-Admin."
        )


def release_session(state: WebhooksState) -> None:
    """End the session's transaction before writing through other connections.

    The views read through ``db.session`` and write deliveries through the
    engine (like the workers do). On SQLite an open read transaction would
    make those writes wait for the lock.
    """
    state.db.session.commit()


class ViewOptions:
    """What every webhook admin view needs: the extension, the access hook and
    the endpoint prefix (to link to the other views)."""

    def __init__(
        self, webhooks: Webhooks, is_accessible: AccessCheck | None, prefix: str
    ) -> None:
        self.webhooks = webhooks
        self.is_accessible = is_accessible
        self.prefix = prefix

    def endpoint(self, view: str) -> str:
        return f"{self.prefix}_{view}"

    @property
    def state(self) -> WebhooksState:
        return self.webhooks.state


class AdminViewMixin:
    """Access control, the CSRF key check and template helpers for every view.

    Mixed in before the Flask-Admin view class, so these methods win.
    """

    options: ViewOptions

    def is_accessible(self) -> bool:
        check = self.options.is_accessible
        if check is not None:
            return bool(check())
        if getattr(current_app, "login_manager", None) is not None:
            return _user_is_authenticated()
        return True

    def inaccessible_callback(self, name: str, **kwargs: t.Any) -> t.Any:
        manager = getattr(current_app, "login_manager", None)
        if (
            manager is not None
            and (manager.login_view or manager.blueprint_login_views)
            and not _user_is_authenticated()
        ):
            return manager.unauthorized()
        abort(403)

    def create_blueprint(self, admin: t.Any) -> t.Any:
        app = admin.app
        require_secret_key(app)
        if templates_blueprint.name not in app.blueprints:
            app.register_blueprint(templates_blueprint)
        return super().create_blueprint(admin)  # type: ignore[misc]

    def render(self, template: str, **kwargs: t.Any) -> str:
        kwargs.setdefault("wh", HELPERS)
        kwargs.setdefault("wh_url", self.wh_url)
        return super().render(template, **kwargs)  # type: ignore[misc]

    def wh_url(self, view: str, endpoint: str = "index_view", **kwargs: t.Any) -> str:
        """URL of another webhook admin view (``view``: webhook, delivery, status)."""
        from flask import url_for

        return url_for(f"{self.options.endpoint(view)}.{endpoint}", **kwargs)


def _user_is_authenticated() -> bool:
    from flask_login import current_user

    return bool(getattr(current_user, "is_authenticated", False))


# -- formatting helpers (also available in templates as ``wh``) --------------

_BADGES = {
    m.PENDING: "secondary",
    m.DELIVERING: "primary",
    m.RETRYING: "warning",
    m.SUCCEEDED: "success",
    m.FAILED: "danger",
    m.CANCELLED: "dark",
}


def status_badge(status: str | None, large: bool = False) -> Markup:
    """A Bootstrap badge for a delivery status."""
    if not status:
        return Markup('<span class="text-muted">&mdash;</span>')
    kind = _BADGES.get(status, "light")
    size = " wh-status-lg" if large else ""
    return Markup(
        '<span class="badge badge-{} wh-status{} wh-status-{}">{}</span>'
    ).format(kind, size, status, status)


def badges(values: t.Iterable[str], kind: str = "info") -> Markup:
    """Small badges, one per value (models, events)."""
    return Markup(" ").join(
        Markup('<span class="badge badge-{} wh-tag">{}</span>').format(kind, v)
        for v in values
    )


def format_time(value: dt.datetime | None) -> Markup:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, with the relative age as a tooltip."""
    if value is None:
        return Markup('<span class="text-muted">&mdash;</span>')
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    delta = (m.utcnow() - value).total_seconds()
    relative = f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"
    return Markup('<time datetime="{}" title="{}" class="wh-time">{}</time>').format(
        value.isoformat(), relative, value.strftime("%Y-%m-%d %H:%M:%S")
    )


def format_age(seconds: float | None) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    s = int(max(seconds, 0))
    if s < 90:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def display_url(url: str | None) -> str:
    """A URL for lists and logs: any password in it replaced by ``***``."""
    if not url:
        return ""
    try:
        return redact_url(url)
    except ValueError:
        return url


def pretty_body(body: bytes | None, content_type: str | None) -> tuple[str, bool]:
    """The body as text for display; JSON pretty-printed. Returns ``(text, is_json)``."""
    text = (body or b"").decode("utf-8", "replace")
    looks_json = "json" in (content_type or "").lower() or text[:1] in ("{", "[")
    if looks_json and text:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
        except ValueError:
            pass
    return text, False


def pretty_json(value: t.Any) -> str:
    if value in (None, "", {}):
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def truncate(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Helpers:
    """The helper functions, as attributes, for templates (``wh.status_badge``)."""

    status_badge = staticmethod(status_badge)
    badges = staticmethod(badges)
    format_time = staticmethod(format_time)
    format_age = staticmethod(format_age)
    format_duration = staticmethod(format_duration)
    display_url = staticmethod(display_url)
    pretty_body = staticmethod(pretty_body)
    pretty_json = staticmethod(pretty_json)
    truncate = staticmethod(truncate)
    escape = staticmethod(escape)
    statuses = m.STATUSES


HELPERS = _Helpers()
