"""Flask-Admin screens: webhooks, the delivery log and queue status, and a
dashboard for the admin's home page (:class:`WebhooksIndexView`).

Needs the ``admin`` extra (``pip install flask-webhooks[admin]``). Flask-Admin
is imported only when :func:`init_admin` (or
:meth:`Webhooks.init_admin <flask_webhooks.Webhooks.init_admin>`) adds the
screens::

    admin = Admin(app, theme=Bootstrap4Theme())
    webhooks.init_admin(admin, is_accessible=lambda: current_user.is_admin)
"""

from __future__ import annotations

import typing as t

from flask import current_app
from flask import has_app_context

from .base import AccessCheck
from .base import Extension
from .base import require_secret_key
from .base import ViewOptions

if t.TYPE_CHECKING:
    from .dashboard import dashboard_summary as dashboard_summary
    from .dashboard import DashboardSummary as DashboardSummary
    from .dashboard import WebhooksIndexView as WebhooksIndexView

__all__ = [
    "AccessCheck",
    "DashboardSummary",
    "WebhooksIndexView",
    "dashboard_summary",
    "init_admin",
]

#: Names that need Flask-Admin, imported on first use.
_LAZY = ("DashboardSummary", "WebhooksIndexView", "dashboard_summary")


def __getattr__(name: str) -> t.Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import dashboard
    except ModuleNotFoundError as e:
        _missing_admin(e)
    return getattr(dashboard, name)


def _missing_admin(e: ModuleNotFoundError) -> t.NoReturn:
    """Re-raise ``e`` with the extra to install when Flask-Admin is missing."""
    if e.name and e.name.split(".")[0] in ("flask_admin", "wtforms"):
        raise ModuleNotFoundError(
            f"flask-webhooks admin screens need Flask-Admin ({e.name} is not"
            ' installed): pip install "flask-webhooks[admin]"',
            name=e.name,
        ) from e
    raise e


def init_admin(
    webhooks: Extension,
    admin: t.Any,
    *,
    category: str = "Webhooks",
    is_accessible: AccessCheck | None = None,
    endpoint: str = "webhooks",
    url: str = "webhooks",
) -> None:
    """Add the Webhooks, Deliveries, Status and Event types screens to ``admin``.

    The screens are added under ``<admin url>/<url>/`` (by default
    ``/admin/webhooks/``, ``/admin/webhooks/deliveries/``,
    ``/admin/webhooks/status/`` and ``/admin/webhooks/event-types/``) in the
    menu category ``category``.

    :param webhooks: the :class:`~flask_webhooks.Webhooks` extension.
    :param admin: the app's ``flask_admin.Admin`` (Bootstrap 4 theme).
    :param category: the menu category the screens are grouped under.
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
    # Imported here: importing this package must work without Flask-Admin
    # (an optional extra); only adding the screens needs it.
    try:
        from .deliveries import DeliveryView
        from .events import EventTypeView
        from .status import StatusView
        from .webhooks import WebhookView
    except ModuleNotFoundError as e:
        _missing_admin(e)

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
    options = ViewOptions(webhooks, is_accessible, endpoint)
    url = url.strip("/")
    admin.add_view(
        WebhookView(
            webhooks.Webhook,
            webhooks.db,
            options=options,
            name="Webhooks",
            category=category,
            endpoint=options.endpoint("webhook"),
            url=url,
        )
    )
    admin.add_view(
        DeliveryView(
            webhooks.Delivery,
            webhooks.db,
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
    admin.add_view(
        EventTypeView(
            options=options,
            name="Event types",
            category=category,
            endpoint=options.endpoint("event_types"),
            url=f"{url}/event-types",
        )
    )
