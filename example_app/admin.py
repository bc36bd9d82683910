"""Flask-Admin for the inventory, plus flask-webhooks' own screens."""

from __future__ import annotations

import typing as t

from flask import Flask
from flask_admin import Admin
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla.fields import QuerySelectField
from flask_admin.contrib.sqla.fields import QuerySelectMultipleField
from flask_admin.form import SecureForm
from flask_admin.theme import Bootstrap4Theme
from wtforms import SelectField

from .extensions import db
from .extensions import webhooks
from .models import Device
from .models import Site
from .models import Status
from .models import Tag
from .models import Tenant

try:  # WTForms 3.3 deprecates tuples as choices; Flask-Admin 2.2 still yields them
    from wtforms import SelectChoice
    from wtforms.fields.choices import Choice
except ImportError:  # pragma: no cover - WTForms < 3.3
    SelectChoice = Choice = None


def _status_choices() -> list[t.Any]:
    if SelectChoice is None:  # pragma: no cover
        return [(s.name, s.label) for s in Status]
    return [SelectChoice(s.name, s.label) for s in Status]


def _status_name(value: Status | str) -> str:
    return value.name if isinstance(value, Status) else str(value)


def _as_choices(items: t.Iterable[t.Any]) -> t.Iterator[t.Any]:
    for item in items:
        if Choice is not None and not isinstance(item, Choice):
            value, label, selected, *rest = item
            item = Choice(value, label, selected, rest[0] if rest else {})
        yield item


class RelationSelect(QuerySelectField):
    """Flask-Admin's select for a related object, yielding WTForms ``Choice``s."""

    def iter_choices(self) -> t.Iterator[t.Any]:
        return _as_choices(super().iter_choices())


class RelationSelectMultiple(QuerySelectMultipleField):
    """Flask-Admin's multiple select for a collection, yielding ``Choice``s."""

    def iter_choices(self) -> t.Iterator[t.Any]:
        return _as_choices(super().iter_choices())


def _query(model: type[t.Any]) -> t.Callable[[], t.Any]:
    return lambda: db.session.query(model).order_by(model.name)


class InventoryView(ModelView):
    """CSRF-protected forms; saves go through ``db.session``, so they fire webhooks."""

    form_base_class = SecureForm
    can_view_details = True
    page_size = 50
    form_excluded_columns: tuple[str, ...] = ("created", "last_updated")
    # A plain select with the status names (the models turn names into Status)
    # and relation selects without WTForms deprecation warnings.
    form_overrides = {
        "status": SelectField,
        "tenant": RelationSelect,
        "site": RelationSelect,
        "tags": RelationSelectMultiple,
    }
    form_args = {
        "status": {
            "choices": _status_choices(),
            "coerce": _status_name,
            "default": "active",
        },
        "tenant": {"query_factory": _query(Tenant)},
        "site": {"query_factory": _query(Site)},
        "tags": {"query_factory": _query(Tag)},
    }
    column_formatters = {
        "status": lambda view, context, obj, name: obj.status.label,
        "last_updated": lambda view, context, obj, name: obj.last_updated.strftime(
            "%Y-%m-%d %H:%M:%S"
        ),
    }


class TenantView(InventoryView):
    column_list = ("name", "slug", "description")
    column_searchable_list = ("name", "slug")


class TagView(InventoryView):
    column_list = ("name", "slug", "color")
    column_searchable_list = ("name", "slug")
    form_excluded_columns: tuple[str, ...] = ()


class SiteView(InventoryView):
    column_list = ("name", "slug", "status", "tenant", "tags", "last_updated")
    column_searchable_list = ("name", "slug")
    column_filters = ("status",)
    form_columns = ("name", "slug", "status", "tenant", "tags", "description")


class DeviceView(InventoryView):
    column_list = ("name", "serial", "status", "site", "tenant", "last_updated")
    column_searchable_list = ("name", "serial")
    column_filters = ("status",)
    form_columns = ("name", "serial", "status", "site", "tenant")


def init_admin(app: Flask) -> Admin:
    """Create the app's ``Admin`` with the inventory and the webhook screens."""
    admin = Admin(
        app,
        name="flask-webhooks demo",
        theme=Bootstrap4Theme(),
        index_view=_home(),
    )
    category = "Inventory"
    admin.add_view(SiteView(Site, db, category=category, endpoint="inventory_site"))
    admin.add_view(
        DeviceView(Device, db, category=category, endpoint="inventory_device")
    )
    admin.add_view(
        TenantView(Tenant, db, category=category, endpoint="inventory_tenant")
    )
    admin.add_view(TagView(Tag, db, category=category, endpoint="inventory_tag"))
    _webhook_screens(app, admin)
    return admin


def _home() -> t.Any:
    """The admin home page: the webhook dashboard (an empty page without it)."""
    try:
        from flask_webhooks.admin import WebhooksIndexView
    except ImportError:
        return None
    return WebhooksIndexView(name="Home")


def _webhook_screens(app: Flask, admin: Admin) -> None:
    try:
        webhooks.init_admin(admin)
    except ImportError as e:
        # The webhook screens are optional for this demo to start: without
        # them deliveries still flow, only the admin pages are missing.
        if not (e.name or "").startswith("flask_webhooks"):
            raise
        app.logger.warning(
            "the flask-webhooks admin screens are not available (%s): "
            "the admin shows the inventory only",
            e,
        )
