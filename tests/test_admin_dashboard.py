"""The admin home page as a webhook dashboard (``WebhooksIndexView``).

Through the Flask test client, on a real database, the ``immediate://`` queue
and the real receiver (deliveries really succeed or fail).
"""

from __future__ import annotations

import sys
import typing as t

import pytest
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.admin import dashboard_summary
from flask_webhooks.admin import WebhooksIndexView
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import Models
from tests.test_admin import Browser


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {"WEBHOOKS_RETRY_SCHEDULE": []}


@pytest.fixture
def access() -> dict[str, bool]:
    return {"allowed": True}


@pytest.fixture
def browser(
    app: Flask, db: SQLAlchemy, webhooks: Webhooks, access: dict[str, bool]
) -> Browser:
    admin = Admin(
        app, name="Test", theme=Bootstrap4Theme(), index_view=WebhooksIndexView()
    )
    webhooks.init_admin(admin, is_accessible=lambda: access["allowed"])
    return Browser(app, db)


def _activity(
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    db: SQLAlchemy,
    models: Models,
) -> None:
    """Two sites delivered to 'crm' (one 200, one 500), a disabled 'audit'."""
    make_hook(name="crm")
    make_hook(
        name="audit",
        models=["device"],
        enabled=False,
        disabled_reason="the receiver answered 410 Gone",
    )
    receiver.respond(200, 500)
    db.session.add_all([models.Site(name="ams1"), models.Site(name="ams2")])
    db.session.commit()
    db.session.remove()


def test_home_page_summarises_the_webhooks(
    browser: Browser,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    db: SQLAlchemy,
    models: Models,
) -> None:
    _activity(make_hook, receiver, db, models)
    page = browser.page("/admin/")
    assert 'id="wh-dashboard"' in page
    assert "1 / 2" in page  # webhooks enabled
    attention = page.split('id="wh-dash-attention"')[1].split('id="wh-dash-recent"')[0]
    assert "audit" in attention
    assert "the receiver answered 410 Gone" in attention
    assert "crm" in attention and "1 failed in a row" in attention
    assert "HTTP 500" in attention
    recent = page.split('id="wh-dash-recent"')[1]
    assert recent.count('class="wh-dash-delivery"') == 2
    assert "SUCCEEDED" in recent.upper() and "FAILED" in recent.upper()
    for link in (
        'href="/admin/webhooks/"',
        'href="/admin/webhooks/deliveries/"',
        'href="/admin/webhooks/status/"',
        'href="/admin/webhooks/new/',
        "flt0_status_equals=failed&amp;flt1_created_within=24h",
    ):
        assert link in page
    for link in ("/admin/webhooks/deliveries/details/?id=", "/admin/webhooks/edit/"):
        assert link in page
        target = page.split(link)[1].split('"')[0].replace("&amp;", "&")
        assert browser.get(link + target).status_code == 200


def test_summary_counts(
    app: Flask,
    browser: Browser,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    db: SQLAlchemy,
    models: Models,
) -> None:
    _activity(make_hook, receiver, db, models)
    summary = dashboard_summary(app.extensions["webhooks"], recent=1)
    assert (summary.webhooks, summary.enabled) == (2, 1)
    assert summary.last_day[m.SUCCEEDED] == 1
    assert summary.last_day[m.FAILED] == 1
    assert summary.queued == 0
    assert [a.name for a in summary.attention] == ["audit", "crm"]
    assert len(summary.recent) == 1


def test_an_empty_dashboard_says_what_to_do(browser: Browser) -> None:
    page = browser.page("/admin/")
    assert "No webhooks yet." in page
    assert "Create the first one" in page
    assert "No deliveries yet." in page


def test_no_summary_for_users_who_may_not_see_the_webhook_screens(
    browser: Browser,
    access: dict[str, bool],
    make_hook: t.Callable[..., t.Any],
) -> None:
    make_hook(name="secret-partner")
    access["allowed"] = False
    page = browser.page("/admin/")
    assert "wh-dashboard" not in page
    assert "secret-partner" not in page
    assert browser.get("/admin/webhooks/").status_code == 403


def test_without_the_webhook_screens_the_home_page_says_so(
    app: Flask, db: SQLAlchemy, webhooks: Webhooks
) -> None:
    Admin(app, name="Test", theme=Bootstrap4Theme(), index_view=WebhooksIndexView())
    page = Browser(app, db).page("/admin/")
    assert "webhooks.init_admin(admin)" in page
    assert "wh-dashboard" not in page


def test_dashboard_without_flask_admin_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flask_webhooks.admin as admin_pkg

    monkeypatch.delitem(sys.modules, "flask_webhooks.admin.dashboard")
    monkeypatch.delattr(admin_pkg, "dashboard", raising=False)
    monkeypatch.setitem(sys.modules, "flask_admin", None)
    with pytest.raises(ModuleNotFoundError, match=r"flask-webhooks\[admin\]"):
        admin_pkg.WebhooksIndexView  # noqa: B018
