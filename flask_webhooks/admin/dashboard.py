"""The admin home page as a webhook dashboard: :class:`WebhooksIndexView`.

Flask-Admin's default home page is empty. Pass this view as the ``Admin``'s
``index_view`` and the home page summarises the webhooks: how many there
are, which ones need attention (failing, retrying, disabled), the latest
deliveries and links to the webhook screens. The summary itself
(:func:`dashboard_summary`) and its template
(``webhooks/admin/_dashboard.html``) serve an app that has its own home page.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from flask import url_for
from flask_admin import AdminIndexView
from flask_admin import expose

from .. import models as m
from ..state import get_state
from ..state import WebhooksState
from .base import templates_blueprint
from .deliveries import filter_query
from .formatters import HELPERS

#: Latest deliveries shown on the dashboard.
RECENT = 10


@dataclass
class Attention:
    """A webhook that needs a look: disabled, failing, or retrying deliveries."""

    id: int
    name: str
    enabled: bool
    disabled_reason: str | None
    consecutive_failures: int
    retrying: int
    failed: int
    last_error: str | None


@dataclass
class DashboardSummary:
    """What the dashboard shows; built by :func:`dashboard_summary`."""

    webhooks: int = 0
    enabled: int = 0
    #: Deliveries created in the last 24 hours, by status.
    last_day: dict[str, int] = field(default_factory=dict)
    #: Deliveries waiting to be sent (pending or retrying), at any age.
    queued: int = 0
    attention: list[Attention] = field(default_factory=list)
    recent: list[t.Any] = field(default_factory=list)


def dashboard_summary(
    state: WebhooksState, *, recent: int = RECENT, now: dt.datetime | None = None
) -> DashboardSummary:
    """Count webhooks and deliveries for the dashboard.

    :param recent: how many of the latest deliveries to include.
    :param now: the time the 24-hour counts end (tests pin it).
    """
    W = state.models.Webhook.__table__
    D = state.models.Delivery.__table__
    now = now or m.utcnow()
    summary = DashboardSummary()
    with state.engine().connect() as conn:
        hooks = conn.execute(
            sa.select(
                W.c.id,
                W.c.name,
                W.c.enabled,
                W.c.disabled_reason,
                W.c.consecutive_failures,
            ).order_by(W.c.name)
        ).all()
        summary.webhooks = len(hooks)
        summary.enabled = sum(1 for h in hooks if h.enabled)
        open_counts: dict[t.Any, dict[str, int]] = {}
        for webhook_id, status, count in conn.execute(
            sa.select(D.c.webhook_id, D.c.status, sa.func.count())
            .where(D.c.status.in_((m.PENDING, m.RETRYING, m.FAILED)))
            .group_by(D.c.webhook_id, D.c.status)
        ):
            open_counts.setdefault(webhook_id, {})[status] = int(count)
            if status != m.FAILED:
                summary.queued += int(count)
        day: dict[str, int] = {
            status: int(count)
            for status, count in conn.execute(
                sa.select(D.c.status, sa.func.count())
                .where(D.c.created_at >= now - dt.timedelta(hours=24))
                .group_by(D.c.status)
            )
        }
        summary.last_day = {s: int(day.get(s, 0)) for s in m.STATUSES}
        for h in hooks:
            counts = open_counts.get(h.id, {})
            retrying = counts.get(m.RETRYING, 0)
            if h.enabled and not h.consecutive_failures and not retrying:
                continue
            last_error = conn.scalar(
                sa.select(D.c.last_error)
                .where(D.c.webhook_id == h.id, D.c.last_error.is_not(None))
                .order_by(D.c.updated_at.desc())
                .limit(1)
            )
            summary.attention.append(
                Attention(
                    id=h.id,
                    name=h.name,
                    enabled=bool(h.enabled),
                    disabled_reason=h.disabled_reason,
                    consecutive_failures=int(h.consecutive_failures or 0),
                    retrying=retrying,
                    failed=counts.get(m.FAILED, 0),
                    last_error=last_error,
                )
            )
        summary.recent = list(
            conn.execute(
                sa.select(
                    D.c.id,
                    D.c.created_at,
                    D.c.webhook_id,
                    D.c.webhook_name,
                    D.c.event,
                    D.c.model,
                    D.c.object_id,
                    D.c.status,
                    D.c.last_status_code,
                    D.c.last_error,
                )
                .order_by(D.c.created_at.desc(), D.c.id)
                .limit(recent)
            ).all()
        )
    return summary


class WebhooksIndexView(AdminIndexView):
    """Flask-Admin's home page with the webhook dashboard.

    ``Admin(app, index_view=WebhooksIndexView(), theme=Bootstrap4Theme())``,
    then :meth:`Webhooks.init_admin <flask_webhooks.Webhooks.init_admin>`
    as usual. The summary is shown to whoever may open the webhook screens
    (their ``is_accessible`` decides); others see an empty home page.

    :param endpoint_prefix: the ``endpoint`` given to ``init_admin`` (change
        it only if you changed that one).
    :param recent: how many of the latest deliveries to list.
    :param kwargs: passed to Flask-Admin's ``AdminIndexView`` (``name``,
        ``url``, ``template`` ...).
    """

    def __init__(
        self,
        *,
        endpoint_prefix: str = "webhooks",
        recent: int = RECENT,
        **kwargs: t.Any,
    ) -> None:
        kwargs.setdefault("template", "webhooks/admin/index.html")
        super().__init__(**kwargs)
        self.endpoint_prefix = endpoint_prefix
        self.recent = recent

    def create_blueprint(self, admin: t.Any) -> t.Any:
        app = admin.app
        if app is not None and templates_blueprint.name not in app.blueprints:
            app.register_blueprint(templates_blueprint)
        return super().create_blueprint(admin)

    def _webhook_list(self) -> t.Any:
        """The webhook list view of the same Admin, if ``init_admin`` added it."""
        wanted = f"{self.endpoint_prefix}_webhook"
        for view in getattr(self.admin, "_views", []):
            if getattr(view, "endpoint", None) == wanted:
                return view
        return None

    @expose("/")
    def index(self) -> t.Any:
        hooks_view = self._webhook_list()
        summary = None
        if hooks_view is not None and hooks_view.is_accessible():
            summary = dashboard_summary(get_state(), recent=self.recent)
        return self.render(
            self._template,
            summary=summary,
            screens=hooks_view is not None,
            wh=HELPERS,
            wh_url=self.wh_url,
            filter_query=filter_query,
        )

    def wh_url(self, view: str, endpoint: str = "index_view", **kwargs: t.Any) -> str:
        """URL of a webhook admin view (``view``: webhook, delivery, status)."""
        return url_for(f"{self.endpoint_prefix}_{view}.{endpoint}", **kwargs)
