"""The sandbox and condition limits, set through the app's config."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from flask_webhooks.state import get_state

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
BUSY = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)
REDOS = {"attr": "name", "op": "regex", "value": "(a|aa)+$"}


@pytest.fixture
def config():
    return {
        "WEBHOOKS_TEMPLATE_TIMEOUT": 0.2,
        "WEBHOOKS_TEMPLATE_MAX_CHARS": 1000,
        "WEBHOOKS_CONDITION_TIMEOUT": 0.05,
    }


def _deliveries(webhooks, db):
    D = webhooks.Delivery
    return db.session.scalars(sa.select(D).order_by(D.webhook_name)).all()


@SQLITE_ONLY
def test_config_keys_reach_the_state(app, webhooks):
    with app.app_context():
        config = get_state().config
    assert config.template_limits.timeout == 0.2
    assert config.template_limits.max_chars == 1000
    assert config.condition_timeout == 0.05


@SQLITE_ONLY
def test_configured_template_budget_fails_the_delivery(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="busy", body_template=BUSY)
    make_hook(name="plain")
    started = time.monotonic()
    db.session.add(models.Site(name="ams1"))
    db.session.commit()
    assert time.monotonic() - started < 2.0
    busy, plain = _deliveries(webhooks, db)
    assert busy.status == "failed"
    assert "time budget of 0.2 s" in busy.last_error
    assert plain.status == "succeeded"
    assert [r.delivery_id for r in receiver.requests] == [plain.id]


@SQLITE_ONLY
def test_configured_size_cap_fails_the_delivery(webhooks, db, models, make_hook):
    make_hook(name="big", body_template="{{ 'x' * 5000 }}")
    db.session.add(models.Site(name="ams1"))
    db.session.commit()
    (big,) = _deliveries(webhooks, db)
    assert big.status == "failed"
    assert "1000" in big.last_error


@SQLITE_ONLY
def test_regex_condition_timeout_records_a_failed_delivery(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="redos", conditions=REDOS)
    make_hook(name="plain")
    started = time.monotonic()
    db.session.add(models.Site(name="a" * 40 + "!"))
    db.session.commit()
    assert time.monotonic() - started < 2.0
    plain, redos = _deliveries(webhooks, db)
    assert redos.status == "failed"
    assert redos.last_error.startswith("condition error: ")
    assert "(a|aa)+$" in redos.last_error
    assert plain.status == "succeeded"
    assert [r.delivery_id for r in receiver.requests] == [plain.id]


@SQLITE_ONLY
@pytest.mark.parametrize(
    "key", ["WEBHOOKS_TEMPLATE_TIMEOUT", "WEBHOOKS_CONDITION_TIMEOUT"]
)
def test_bad_limit_names_the_key(key, database_url, tmp_path):
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from flask_webhooks import Webhooks

    app = Flask("x", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        WEBHOOKS_QUEUE_URL="immediate://",
        **{key: "soon"},
    )
    with pytest.raises(ValueError, match=key):
        Webhooks(app, db=SQLAlchemy(app))
