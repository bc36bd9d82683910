"""The example app's business event: ``site.decommissioned``.

An *app event* (``webhooks.event_type`` / ``webhooks.publish``): published
when a site's status becomes Retired, NetBox's status for a decommissioned
site, wherever that happens (the admin, the JSON API, code). It is published
from an ``after_flush`` hook, so it joins the transaction that retires the
site (sent after that commit, never if the change is rolled back) and comes
after the site's ``updated`` event in that object's order: the flush
journals the update first.

The demo webhook subscribes to it (``seed.py``); the demo receiver shows it
next to the model events, with ``"model": "site"`` because the published
data is a :class:`~example_app.models.Site`.
"""

from __future__ import annotations

import typing as t

import marshmallow as ma
import sqlalchemy as sa
from flask import current_app
from flask import has_app_context
from sqlalchemy.orm import Session

from .extensions import db
from .extensions import webhooks
from .models import Site
from .models import Status
from .schemas import BriefTenantSchema

#: The event type's name, as in the payload's ``event``.
SITE_DECOMMISSIONED = "site.decommissioned"


class BriefDeviceSchema(ma.Schema):
    name = ma.fields.String()


class SiteDecommissionedSchema(ma.Schema):
    """The ``data`` of ``site.decommissioned`` (the admin's event catalog
    shows it as a JSON Schema)."""

    id = ma.fields.Integer(metadata={"description": "the site's id"})
    name = ma.fields.String()
    slug = ma.fields.String()
    tenant = ma.fields.Nested(BriefTenantSchema, allow_none=True)
    devices = ma.fields.Pluck(
        BriefDeviceSchema,
        "name",
        many=True,
        metadata={"description": "names of the devices still at the site"},
    )


def install() -> None:
    """Declare the event type and publish it when a site is retired."""
    webhooks.event_type(
        SITE_DECOMMISSIONED,
        description="A site was decommissioned: its status became Retired.",
        schema=SiteDecommissionedSchema,
    )
    if not sa.event.contains(db.session, "after_flush", _publish_decommissioned):
        sa.event.listen(db.session, "after_flush", _publish_decommissioned)


def _publish_decommissioned(session: Session, flush_context: t.Any) -> None:
    if not has_app_context() or "webhooks" not in current_app.extensions:
        return
    for obj in session.dirty:
        if not isinstance(obj, Site):
            continue
        history: t.Any = sa.inspect(obj).attrs.status.history
        if Status.retired in history.added and Status.retired not in history.deleted:
            webhooks.publish(SITE_DECOMMISSIONED, obj)
