"""What the admin views share: options, access control, the CSRF requirement.

The views live in :mod:`~flask_webhooks.admin.webhooks`,
:mod:`~flask_webhooks.admin.deliveries` and :mod:`~flask_webhooks.admin.status`;
the formatting helpers their templates use in
:mod:`~flask_webhooks.admin.formatters`.
"""

from __future__ import annotations

import logging
import typing as t

from flask import abort
from flask import Blueprint
from flask import current_app
from flask import Flask
from flask import url_for

from .formatters import HELPERS

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from ..registry import Registry
    from ..state import WebhooksState


logger = logging.getLogger(__name__)

#: ``() -> bool``: may the current user use the webhook screens?
AccessCheck = t.Callable[[], bool]

#: Config key: the app means its webhook screens to be open to everyone who
#: can reach them (protected some other way); no warning, no banner.
ADMIN_OPEN = "WEBHOOKS_ADMIN_OPEN"

#: Ships ``templates/webhooks/admin/*.html``; registered on the app with the views.
templates_blueprint = Blueprint(
    "flask_webhooks_admin", __name__, template_folder="templates"
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


class Extension(t.Protocol):
    """What the screens use of :class:`flask_webhooks.Webhooks`."""

    registry: Registry

    @property
    def db(self) -> SQLAlchemy: ...

    @property
    def Webhook(self) -> type[t.Any]: ...

    @property
    def Delivery(self) -> type[t.Any]: ...

    @property
    def state(self) -> WebhooksState: ...


class ViewOptions:
    """What every webhook admin view needs: the extension, the access hook and
    the endpoint prefix (to link to the other views)."""

    def __init__(
        self, webhooks: Extension, is_accessible: AccessCheck | None, prefix: str
    ) -> None:
        self.webhooks = webhooks
        self.is_accessible = is_accessible
        self.prefix = prefix
        self.warned = False

    def endpoint(self, view: str) -> str:
        return f"{self.prefix}_{view}"

    @property
    def state(self) -> WebhooksState:
        return self.webhooks.state

    def is_open(self, app: Flask) -> bool:
        """Whether anyone who reaches the screens may use them, without the
        app saying so on purpose (:data:`ADMIN_OPEN`): no ``is_accessible``
        hook and no Flask-Login ``LoginManager``."""
        return (
            self.is_accessible is None
            and getattr(app, "login_manager", None) is None
            and not app.config.get(ADMIN_OPEN)
        )

    def warn_if_open(self, app: Flask) -> None:
        """Log a warning (once) when the screens are open to everyone."""
        if self.warned or not self.is_open(app):
            return
        self.warned = True
        logger.warning(
            "flask-webhooks admin: the webhook screens of app %r are open to "
            "EVERYONE who can reach them: init_admin() got no is_accessible hook "
            "and the app has no Flask-Login LoginManager. Anyone could create "
            "webhooks that make this server send requests (to internal services "
            "too) and read the answers. Pass is_accessible=, set up Flask-Login, "
            "or set %s = True if the screens are protected another way",
            app.name,
            ADMIN_OPEN,
        )


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
        self.options.warn_if_open(app)
        if templates_blueprint.name not in app.blueprints:
            app.register_blueprint(templates_blueprint)
        return super().create_blueprint(admin)  # type: ignore[misc]

    def render(self, template: str, **kwargs: t.Any) -> str:
        kwargs.setdefault("wh", HELPERS)
        kwargs.setdefault("wh_url", self.wh_url)
        kwargs.setdefault("wh_admin_open", self.options.is_open(current_app))
        return super().render(template, **kwargs)  # type: ignore[misc]

    def wh_url(self, view: str, endpoint: str = "index_view", **kwargs: t.Any) -> str:
        """URL of another webhook admin view (``view``: webhook, delivery, status)."""
        return url_for(f"{self.options.endpoint(view)}.{endpoint}", **kwargs)


def _user_is_authenticated() -> bool:
    # Imported here: Flask-Login is optional.
    from flask_login import current_user

    return bool(getattr(current_user, "is_authenticated", False))
