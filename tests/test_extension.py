"""The extension object: setup, registration, configuration, public helpers."""

from __future__ import annotations

import subprocess
import sys
import typing as t

import huey
import marshmallow as ma
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.worker.queue import make_huey
from flask_webhooks.worker.queue import redact_url


def test_double_init_app_refused(app, db, models):
    webhooks = Webhooks(app, db=db)
    with pytest.raises(RuntimeError, match="already initialised"):
        webhooks.init_app(app, db=db)
    with pytest.raises(RuntimeError, match="already initialised"):
        Webhooks(app, db=db)


def test_init_app_needs_db(app):
    with pytest.raises(RuntimeError, match="db=db"):
        Webhooks().init_app(app)


def test_factory_pattern(tmp_path):
    db = SQLAlchemy()
    webhooks = Webhooks()

    class Thing(db.Model):  # type: ignore[name-defined]
        id = sa.Column(sa.Integer, primary_key=True)

    webhooks.register(Thing)

    def create_app() -> Flask:
        app = Flask("factory", instance_path=str(tmp_path / "inst"))
        app.config.update(
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'f.sqlite'}",
            WEBHOOKS_QUEUE_URL="immediate://",
        )
        db.init_app(app)
        webhooks.init_app(app, db=db)
        return app

    app = create_app()
    with app.app_context():
        db.create_all()
        assert sa.inspect(db.engine).has_table("webhooks_delivery")
        assert webhooks.huey is app.extensions["webhooks"].huey
        assert app.config["WEBHOOKS_TIMEOUT"] == 10.0
        db.engine.dispose()


def test_register_forms_and_errors(app, db, models):
    webhooks = Webhooks(app, db=db)
    assert webhooks.register(models.Site) is models.Site
    assert webhooks.registration("site").model is models.Site

    @webhooks.register(name="gear")
    class Gear(db.Model):  # type: ignore[name-defined]
        id = sa.Column(sa.Integer, primary_key=True)

    assert webhooks.registration(Gear).name == "gear"
    with pytest.raises(ValueError, match="already registered"):
        webhooks.register(models.Site)
    with pytest.raises(ValueError, match="already used by Site"):
        webhooks.register(models.Tag, name="site")
    with pytest.raises(TypeError, match="mapped model class"):
        webhooks.register(dict)
    with pytest.raises(TypeError, match="marshmallow Schema"):
        webhooks.register(models.Tag, schema=object())
    with pytest.raises(LookupError):
        webhooks.registration("nope")


def test_schema_class_or_instance(app, db, models):
    class TagSchema(ma.Schema):
        slug = ma.fields.String()

    webhooks = Webhooks(app, db=db)
    webhooks.register(models.Tag, schema=TagSchema)
    webhooks.register(models.Tenant, schema=TagSchema(only=()))
    assert isinstance(webhooks.registration("tag").schema, TagSchema)
    assert webhooks.registration("tenant").schema.only == ()


def test_auto_schema_falls_back_to_raw_for_unknown_types(app, db, receiver):
    class Point(sa.types.UserDefinedType[t.Any]):
        cache_ok = True

        def get_col_spec(self, **kw: t.Any) -> str:
            return "TEXT"

    class Place(db.Model):  # type: ignore[name-defined]
        id = sa.Column(sa.Integer, primary_key=True)
        where = sa.Column(Point())

    webhooks = Webhooks(app, db=db)
    webhooks.register(Place)
    db.create_all()
    db.session.add(
        webhooks.Webhook(
            name="p", models=["place"], on_create=True, payload_url=receiver.url
        )
    )
    db.session.commit()
    db.session.add(Place(where="1,2"))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.json()["data"]["where"] == "1,2"


def test_bad_config_names_the_key(tmp_path):
    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://",
        WEBHOOKS_TIMEOUT="soon",
    )
    db = SQLAlchemy(app)
    with pytest.raises(ValueError, match="WEBHOOKS_TIMEOUT"):
        Webhooks(app, db=db)
    app2 = Flask("bad2", instance_path=str(tmp_path))
    app2.config.update(
        SQLALCHEMY_DATABASE_URI="sqlite://", WEBHOOKS_RETRY_SCHEDULE=["x"]
    )
    db2 = SQLAlchemy(app2)
    with pytest.raises(ValueError, match="WEBHOOKS_RETRY_SCHEDULE"):
        Webhooks(app2, db=db2)


def test_queue_urls(tmp_path):
    assert make_huey("immediate://", str(tmp_path)).immediate
    assert isinstance(make_huey("memory://", str(tmp_path)), huey.MemoryHuey)
    default = make_huey(None, str(tmp_path))
    assert isinstance(default, huey.SqliteHuey)
    assert default.storage.filename == str(tmp_path / "webhooks-queue.sqlite")
    relative = make_huey("sqlite:///q.db", str(tmp_path))
    assert relative.storage.filename == str(tmp_path / "q.db")
    absolute = make_huey(f"sqlite:///{tmp_path}/abs.db", str(tmp_path))
    assert absolute.storage.filename == f"{tmp_path}/abs.db"
    with pytest.raises(ValueError, match="unsupported scheme 'amqp'"):
        make_huey("amqp://guest:pw@localhost", str(tmp_path))
    assert redact_url("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"


def test_signing_imports_without_flask():
    code = (
        "import sys, flask_webhooks.signing\n"
        "bad = [m for m in ('flask', 'sqlalchemy', 'huey') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_username_from_flask_login(app, webhooks, db, models, receiver, make_hook):
    from flask_login import login_user
    from flask_login import LoginManager
    from flask_login import UserMixin

    class User(UserMixin):
        id = "7"
        username = "netadmin"

    manager = LoginManager(app)
    manager.user_loader(lambda uid: User() if uid == "7" else None)
    make_hook()
    with app.test_request_context():
        login_user(User())
        db.session.add(models.Site(name="a"))
        db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.json()["username"] == "netadmin"


def test_retry_and_sweep(webhooks, db, models, receiver, make_hook):
    from flask_webhooks.testing import Answer

    make_hook()
    receiver.respond(Answer(status=503))
    db.session.add(models.Site(name="a"))
    db.session.commit()
    receiver.wait_for(1)
    delivery = db.session.scalars(sa.select(webhooks.Delivery)).one()
    assert delivery.status == "retrying"
    assert delivery.next_attempt_at is not None
    assert delivery.last_status_code == 503
    delivery_id = delivery.id
    # End the session's read transaction: SQLite lets no writer commit while
    # another connection holds one open.
    db.session.commit()
    # Not due yet: the sweep leaves it alone.
    assert webhooks.sweep() == 0
    assert webhooks.retry(delivery_id) is True
    receiver.wait_for(2)
    assert delivery.status == "succeeded"
    assert delivery.attempts == 2
    assert [r.headers["X-Webhook-Attempt"] for r in receiver.requests] == ["1", "2"]
    assert len({r.headers["X-Webhook-ID"] for r in receiver.requests}) == 1
    assert receiver.requests[0].body == receiver.requests[1].body
    # Succeeded deliveries are not retried.
    assert webhooks.retry(delivery) is False


def test_deleting_a_webhook_keeps_its_deliveries_detached(
    webhooks, db, models, receiver, make_hook
):
    hook = make_hook()
    db.session.add(models.Site(name="a"))
    db.session.commit()
    receiver.wait_for(1)
    db.session.delete(hook)
    db.session.commit()
    (delivery,) = db.session.scalars(sa.select(webhooks.Delivery)).all()
    assert delivery.webhook_id is None
    assert delivery.webhook_name == hook.name
    assert delivery.status == "succeeded"


def test_invalid_webhook_leaves_the_session_usable(webhooks, db, receiver):
    from flask_webhooks import WebhookValidationError

    hook = webhooks.Webhook(
        name="h", models=["site"], on_create=True, payload_url="ftp://nope"
    )
    db.session.add(hook)
    with pytest.raises(WebhookValidationError) as info:
        db.session.commit()
    assert set(info.value.errors) == {"payload_url"}
    # Nothing was flushed: fix the field and commit again, no rollback needed.
    hook.payload_url = receiver.url
    db.session.commit()
    assert db.session.scalars(sa.select(webhooks.Webhook)).one().name == "h"
