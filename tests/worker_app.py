"""A small app for worker tests, in process and as a real worker process::

    WORKER_SETTINGS='{"database_url": ..., "queue_url": ...}' \\
        flask --app tests.worker_app webhooks worker

Settings (a JSON object in ``WORKER_SETTINGS``, or a dict passed to
:func:`create_app`): ``database_url``, ``queue_url``, ``instance_path``,
``schema`` (PostgreSQL: tables live in this schema) and ``config`` (extra
``WEBHOOKS_*`` keys). One registered model, ``Item``.
"""

from __future__ import annotations

import json
import os
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks


def engine_options(database_url: str, schema: str | None) -> dict[str, t.Any]:
    if database_url.startswith("sqlite"):
        # Several processes write: wait for locks instead of failing fast.
        return {"connect_args": {"timeout": 30}}
    if schema:
        return {"connect_args": {"options": f"-csearch_path={schema}"}}
    return {}


def create_app(settings: dict[str, t.Any] | None = None) -> Flask:
    if settings is None:
        settings = json.loads(os.environ["WORKER_SETTINGS"])
    database_url = settings["database_url"]
    app = Flask("worker_app", instance_path=settings["instance_path"])
    app.config.update(
        SECRET_KEY="test",
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(database_url, settings.get("schema")),
        WEBHOOKS_QUEUE_URL=settings.get("queue_url"),
        WEBHOOKS_EMBEDDED_WORKERS=0,
    )
    app.config.update(settings.get("config") or {})
    db = SQLAlchemy(app)
    if database_url.startswith("sqlite"):
        with app.app_context():

            @sa.event.listens_for(db.engine, "connect")
            def _wal(dbapi_connection: t.Any, record: t.Any) -> None:
                # Readers do not block the writer (and the other way round).
                dbapi_connection.execute("pragma journal_mode=wal")

    class Item(db.Model):  # type: ignore[name-defined]
        __tablename__ = "item"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)

    webhooks = Webhooks(app, db=db)
    webhooks.register(Item)
    app.extensions["worker_app"] = {"db": db, "webhooks": webhooks, "Item": Item}
    return app
