"""A NetBox-like example app for flask-webhooks.

Run it with ``python -m example_app`` (``make demo``): an inventory of
tenants, tags, sites and devices, Flask-Admin, a small JSON API, and a demo
receiver on the same server that verifies and shows the webhooks it gets.

Settings come from environment variables (see :func:`create_app`).
"""

from __future__ import annotations

import json
import os
import typing as t

import click
import sqlalchemy as sa
from flask import Flask
from flask import render_template
from flask import Response
from flask_webhooks.state import DEFAULTS

from . import events
from .extensions import db
from .extensions import webhooks
from .models import Device
from .models import Site
from .models import Tag
from .models import Tenant
from .schemas import DeviceSchema
from .schemas import SiteSchema

__all__ = ["DEMO_WEBHOOK_SECRET", "create_app", "db", "webhooks"]

#: The demo webhook's secret (a Standard Webhooks secret, so both signature
#: schemes work). Override with ``DEMO_WEBHOOK_SECRET``.
DEMO_WEBHOOK_SECRET = "whsec_ZGVtby1zZWNyZXQtZm9yLWZsYXNrLXdlYmhvb2tz"
_DEMO_SECRET_KEY = "flask-webhooks-demo-only-not-secret"

# Sites and devices dump with hand-written, NetBox-like schemas; tenants and
# tags with the auto schema flask-webhooks builds.
webhooks.register(Site, schema=SiteSchema)
webhooks.register(Device, schema=DeviceSchema)
webhooks.register(Tenant)
webhooks.register(Tag)
# A business event, published when a site is retired (see events.py).
events.install()


def create_app(config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Build the example app.

    Environment variables (``config`` overrides them):

    ``DATABASE_URL``
        SQLAlchemy URL; default ``sqlite:///<instance>/example.sqlite``.
    ``PORT``
        The port the server listens on (default 5000); the demo webhook sends
        to ``http://127.0.0.1:<PORT>/receiver/``.
    ``SECRET_KEY``
        Flask's secret key (sessions, CSRF). The default is for the demo only
        and a warning is logged.
    ``DEMO_WEBHOOK_SECRET``
        The demo webhook's secret, also used by the receiver to verify.
    ``INSTANCE_PATH``
        Where the SQLite database and queue live; default ``instance/``.
    ``WEBHOOKS_*``
        Any flask-webhooks setting, e.g. ``WEBHOOKS_QUEUE_URL`` (default: a
        SQLite queue in the instance folder) or ``WEBHOOKS_EMBEDDED_WORKERS``.
        Values are parsed as JSON when they can be (``2``, ``[5, 60]``).
    """
    config = dict(config or {})
    env = os.environ
    instance_path = config.pop("INSTANCE_PATH", None) or env.get("INSTANCE_PATH")
    app = Flask(
        __name__,
        instance_path=os.path.abspath(instance_path) if instance_path else None,
    )
    os.makedirs(app.instance_path, exist_ok=True)
    port = int(env.get("PORT") or 5000)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=env.get("DATABASE_URL")
        or "sqlite:///" + os.path.join(app.instance_path, "example.sqlite"),
        DEMO_RECEIVER_URL=f"http://127.0.0.1:{port}/receiver/",
        DEMO_WEBHOOK_SECRET=env.get("DEMO_WEBHOOK_SECRET") or DEMO_WEBHOOK_SECRET,
    )
    if env.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = env["SECRET_KEY"]
    for key in DEFAULTS:
        if key in env:
            app.config[key] = _env_value(env[key])
    app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _DEMO_SECRET_KEY
        app.logger.warning(
            "SECRET_KEY is not set: using a fixed demo key. Set SECRET_KEY for "
            "anything but this demo."
        )
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Web requests, the receiver and the delivery threads share one file.
        options = app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", {})
        options.setdefault("connect_args", {}).setdefault("timeout", 30)

    db.init_app(app)
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        with app.app_context():
            sa.event.listen(db.engine, "connect", _sqlite_wal)
    webhooks.init_app(app)

    from . import admin
    from . import api
    from . import receiver

    app.register_blueprint(api.bp)
    app.register_blueprint(receiver.bp)
    admin.init_admin(app)

    @app.get("/")
    def index() -> str:
        from .seed import DEMO_WEBHOOK

        return render_template("example_app/index.html", hook_name=DEMO_WEBHOOK)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        # Browsers ask for it on every page, the admin's included.
        return app.send_static_file("favicon.ico")

    @app.cli.command("init-db")
    def init_db_command() -> None:
        """Create the tables and seed an empty database."""
        from .seed import init_db

        for line in init_db() or ["database already initialised"]:
            click.echo(line)

    return app


def _env_value(raw: str) -> t.Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _sqlite_wal(dbapi_connection: t.Any, record: t.Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
