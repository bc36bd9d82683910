"""The Event types admin screen: the catalog of declared app event types.

For each type declared with :meth:`flask_webhooks.Webhooks.event_type`: its
description, the webhooks subscribed to it, a link to its deliveries and,
when it has a marshmallow schema, the JSON Schema of ``data``
(:func:`flask_webhooks.catalog.json_schema`) and the envelope around it.
"""

from __future__ import annotations

import json
import typing as t

import sqlalchemy as sa
from flask_admin import BaseView
from flask_admin import expose

from ..catalog import catalog
from .base import AdminViewMixin
from .base import ViewOptions
from .deliveries import filter_query


def example_envelope(name: str) -> str:
    """The default JSON body of an app event, ``data`` elided, pretty-printed."""
    return json.dumps(
        {
            "event": name,
            "timestamp": "2026-01-31T12:00:00.000000+00:00",
            "model": None,
            "username": "admin",
            "request_id": "43d8e212-94c7-4f67-b544-0dcde4fc0f43",
            "data": {"...": "see the schema"},
            "snapshots": None,
        },
        indent=2,
    )


class EventTypeView(AdminViewMixin, BaseView):
    """Declared app event types, their subscribers and the shape of their data."""

    def __init__(self, *, options: ViewOptions, **kwargs: t.Any) -> None:
        self.options = options
        super().__init__(**kwargs)

    @expose("/")
    def index(self) -> t.Any:
        state = self.options.state
        W = state.models.Webhook
        subscribers: dict[str, list[t.Any]] = {}
        for hook in state.db.session.execute(
            sa.select(W.id, W.name, W.enabled, W.event_types).order_by(W.name)
        ):
            for name in hook.event_types or ():
                if isinstance(name, str):
                    subscribers.setdefault(name, []).append(hook)
        entries = catalog(self.options.webhooks.registry)
        return self.render(
            "webhooks/admin/event_types.html",
            entries=entries,
            subscribers=subscribers,
            schemas={
                e.name: json.dumps(e.schema, indent=2)
                for e in entries
                if e.schema is not None
            },
            envelopes={e.name: example_envelope(e.name) for e in entries},
            deliveries_url=lambda name: self.wh_url(
                "delivery", **filter_query(event=name)
            ),
        )
