"""Flask-Admin for the inventory, plus flask-webhooks' own screens."""

from __future__ import annotations

from flask import Flask
from flask_admin import Admin
from flask_admin.contrib.sqla import ModelView
from flask_admin.form import SecureForm
from flask_admin.theme import Bootstrap4Theme

from .extensions import db
from .extensions import webhooks
from .models import Device
from .models import Site
from .models import Tag
from .models import Tenant


class InventoryView(ModelView):
    """CSRF-protected forms; saves go through ``db.session``, so they fire webhooks."""

    form_base_class = SecureForm
    can_view_details = True
    page_size = 50
    form_excluded_columns = ("created", "last_updated")


class TenantView(InventoryView):
    column_list = ("name", "slug", "description")
    column_searchable_list = ("name", "slug")


class TagView(InventoryView):
    column_list = ("name", "slug", "color")
    column_searchable_list = ("name", "slug")
    form_excluded_columns = ()


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
    admin = Admin(app, name="flask-webhooks demo", theme=Bootstrap4Theme())
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
