"""marshmallow schemas: what the webhook payload's ``data`` holds for sites and
devices (NetBox-like: nested brief objects, ``status`` as value and label), and
what the JSON API accepts.

Tenant and Tag are registered without a schema: flask-webhooks builds an auto
schema for them (marshmallow-sqlalchemy, foreign keys as ids).
"""

from __future__ import annotations

import datetime as dt
import typing as t

import marshmallow as ma
from marshmallow import validate

from .models import Status


def _iso(value: dt.datetime | None) -> str | None:
    """Naive UTC from the database as ISO 8601 with the offset."""
    return None if value is None else value.replace(tzinfo=dt.UTC).isoformat()


class StatusField(ma.fields.Field):  # type: ignore[type-arg]
    """Dumps a :class:`Status` the way NetBox does: ``{"value", "label"}``."""

    def _serialize(
        self, value: t.Any, attr: str | None, obj: t.Any, **kwargs: t.Any
    ) -> t.Any:
        if value is None:
            return None
        return {"value": value.value, "label": value.label}


class BriefTenantSchema(ma.Schema):
    id = ma.fields.Integer()
    name = ma.fields.String()
    slug = ma.fields.String()


class BriefTagSchema(ma.Schema):
    id = ma.fields.Integer()
    name = ma.fields.String()
    slug = ma.fields.String()
    color = ma.fields.String()


class BriefSiteSchema(ma.Schema):
    id = ma.fields.Integer()
    name = ma.fields.String()
    slug = ma.fields.String()


class SiteSchema(ma.Schema):
    """The ``data`` of site events and the API's site representation."""

    id = ma.fields.Integer()
    name = ma.fields.String()
    slug = ma.fields.String()
    status = StatusField()
    tenant = ma.fields.Nested(BriefTenantSchema, allow_none=True)
    description = ma.fields.String()
    tags = ma.fields.List(ma.fields.Nested(BriefTagSchema))
    created = ma.fields.Function(lambda site: _iso(site.created))
    last_updated = ma.fields.Function(lambda site: _iso(site.last_updated))


class DeviceSchema(ma.Schema):
    """The ``data`` of device events and the API's device representation."""

    id = ma.fields.Integer()
    name = ma.fields.String()
    serial = ma.fields.String()
    status = StatusField()
    site = ma.fields.Nested(BriefSiteSchema)
    tenant = ma.fields.Nested(BriefTenantSchema, allow_none=True)
    created = ma.fields.Function(lambda device: _iso(device.created))
    last_updated = ma.fields.Function(lambda device: _iso(device.last_updated))


# -- API input -------------------------------------------------------------------


class SiteInput(ma.Schema):
    """``POST /api/sites`` and ``PATCH /api/sites/<id>`` bodies."""

    name = ma.fields.String(required=True, validate=validate.Length(1, 100))
    slug = ma.fields.String(
        validate=validate.Regexp(
            r"^[-a-z0-9_]+$", error="use lowercase letters, digits, - and _"
        )
    )
    status = ma.fields.Enum(Status, by_value=True)
    tenant_id = ma.fields.Integer(allow_none=True)
    tags = ma.fields.List(ma.fields.String(), metadata={"description": "tag slugs"})
    description = ma.fields.String(validate=validate.Length(max=200))


class DeviceInput(ma.Schema):
    """``POST /api/devices`` and ``PATCH /api/devices/<id>`` bodies."""

    name = ma.fields.String(required=True, validate=validate.Length(1, 100))
    serial = ma.fields.String(validate=validate.Length(max=50))
    status = ma.fields.Enum(Status, by_value=True)
    site_id = ma.fields.Integer(required=True)
    tenant_id = ma.fields.Integer(allow_none=True)
