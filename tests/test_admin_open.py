"""An admin without any access check warns at ``init_admin`` and shows a
banner on every webhook page, unless ``WEBHOOKS_ADMIN_OPEN = True``."""

from __future__ import annotations

import logging
import typing as t

import pytest
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_webhooks import Webhooks

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

BANNER = "These webhook screens are open to everyone"
WARNING = "open to EVERYONE"


def pages(
    app: Flask, webhooks: Webhooks, make_hook: t.Any, models: t.Any
) -> dict[str, str]:
    """Every webhook admin page, as the HTML a browser gets."""
    db = webhooks.db
    hook_id = make_hook().id
    db.session.add(models.Site(name="a"))
    db.session.commit()
    delivery_id = db.session.scalars(db.select(webhooks.Delivery.id)).one()
    db.session.remove()
    client = app.test_client()
    urls = [
        "/admin/webhooks/",
        "/admin/webhooks/new/",
        f"/admin/webhooks/edit/?id={hook_id}",
        "/admin/webhooks/deliveries/",
        f"/admin/webhooks/deliveries/details/?id={delivery_id}",
        "/admin/webhooks/status/",
    ]
    out = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        out[url] = response.get_data(as_text=True)
    return out


@sqlite_only
def test_open_admin_warns_and_every_page_shows_the_banner(
    app, webhooks, make_hook, models, caplog
):
    with caplog.at_level(logging.WARNING):
        webhooks.init_admin(Admin(app, name="Test", theme=Bootstrap4Theme()))
    assert caplog.text.count(WARNING) == 1
    assert "WEBHOOKS_ADMIN_OPEN = True" in caplog.text
    found = pages(app, webhooks, make_hook, models)
    assert {url: BANNER in html for url, html in found.items()} == dict.fromkeys(
        found, True
    )


@sqlite_only
@pytest.mark.parametrize("config", [{"WEBHOOKS_ADMIN_OPEN": True}])
def test_admin_open_on_purpose_is_quiet(app, webhooks, make_hook, models, caplog):
    with caplog.at_level(logging.WARNING):
        webhooks.init_admin(Admin(app, name="Test", theme=Bootstrap4Theme()))
    assert WARNING not in caplog.text
    assert not any(
        BANNER in html for html in pages(app, webhooks, make_hook, models).values()
    )


@sqlite_only
def test_admin_with_an_access_hook_is_quiet(app, webhooks, make_hook, models, caplog):
    with caplog.at_level(logging.WARNING):
        webhooks.init_admin(
            Admin(app, name="Test", theme=Bootstrap4Theme()), is_accessible=lambda: True
        )
    assert WARNING not in caplog.text
    assert not any(
        BANNER in html for html in pages(app, webhooks, make_hook, models).values()
    )


@sqlite_only
def test_admin_with_flask_login_is_quiet(app, webhooks, caplog):
    flask_login = pytest.importorskip("flask_login")
    manager = flask_login.LoginManager(app)
    manager.user_loader(lambda user_id: None)
    with caplog.at_level(logging.WARNING):
        webhooks.init_admin(Admin(app, name="Test", theme=Bootstrap4Theme()))
    assert WARNING not in caplog.text
    # Nobody is logged in: the screens are closed, not open with a banner.
    assert app.test_client().get("/admin/webhooks/").status_code == 403


@sqlite_only
def test_admin_added_before_init_app_warns_when_bound(app, webhooks, caplog):
    admin = Admin(name="Test", theme=Bootstrap4Theme())
    with caplog.at_level(logging.WARNING):
        webhooks.init_admin(admin)
        assert WARNING not in caplog.text
        admin.init_app(app)
    assert caplog.text.count(WARNING) == 1
