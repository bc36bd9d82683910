"""Shared fixtures: a Flask app on a real database, a NetBox-like model set,
the extension with the ``immediate://`` queue, and a real HTTP receiver.

Every test that uses ``app`` runs on SQLite, and on PostgreSQL too when
``WEBHOOKS_TEST_DATABASE_URL`` is set (CI sets it).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import os
import ssl
import typing as t

import marshmallow as ma
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.testing import RecordingReceiver

from tests.skip_summary import pytest_terminal_summary as pytest_terminal_summary

PG_URL = os.environ.get("WEBHOOKS_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("WEBHOOKS_TEST_REDIS_URL")


def sqlite_savepoint_workaround(engine: sa.Engine) -> None:
    """pysqlite before Python 3.12 needs this for SAVEPOINT to work (SQLAlchemy docs)."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: t.Any, record: t.Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def drop_every_table(engine: sa.Engine) -> None:
    """Start from an empty shared database, whatever an earlier test left."""
    meta = sa.MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: t.Any) -> str:
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip("WEBHOOKS_TEST_DATABASE_URL not set")
        return PG_URL
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def config() -> dict[str, t.Any]:
    """Extra app config; override in a test module to change settings."""
    return {}


@pytest.fixture
def app(
    database_url: str, tmp_path: t.Any, config: dict[str, t.Any]
) -> t.Iterator[Flask]:
    app = Flask("testapp", instance_path=str(tmp_path / "instance"))
    app.config.update(
        TESTING=True,
        SECRET_KEY="test",
        SQLALCHEMY_DATABASE_URI=database_url,
        WEBHOOKS_QUEUE_URL="immediate://",
        WEBHOOKS_TIMEOUT=5,
    )
    app.config.update(config)
    with app.app_context():
        yield app


class Status(enum.Enum):
    active = "active"
    planned = "planned"
    retired = "retired"


class Models(t.NamedTuple):
    Tenant: t.Any
    Tag: t.Any
    Site: t.Any
    Device: t.Any


@pytest.fixture
def db(app: Flask) -> t.Iterator[SQLAlchemy]:
    db = SQLAlchemy(app)
    if db.engine.dialect.name == "sqlite":
        sqlite_savepoint_workaround(db.engine)
    else:
        drop_every_table(db.engine)
    yield db
    db.session.remove()
    if db.engine.dialect.name != "sqlite":
        db.drop_all()
    db.engine.dispose()


@pytest.fixture
def models(db: SQLAlchemy) -> Models:
    site_tags = db.Table(
        "site_tags",
        sa.Column("site_id", sa.ForeignKey("site.id"), primary_key=True),
        sa.Column("tag_id", sa.ForeignKey("tag.id"), primary_key=True),
    )

    class Tenant(db.Model):  # type: ignore[name-defined]
        __tablename__ = "tenant"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)

    class Tag(db.Model):  # type: ignore[name-defined]
        __tablename__ = "tag"
        id = sa.Column(sa.Integer, primary_key=True)
        slug = sa.Column(sa.String(50), nullable=False)

    class Site(db.Model):  # type: ignore[name-defined]
        __tablename__ = "site"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)
        status: sa.Column[Status] = sa.Column(
            sa.Enum(Status), default=Status.active, nullable=False
        )
        tenant_id: sa.Column[int] = sa.Column(sa.ForeignKey("tenant.id"))
        budget = sa.Column(sa.Numeric(12, 2))
        opened = sa.Column(sa.Date)
        tenant = sa.orm.relationship(Tenant)
        tags = sa.orm.relationship(Tag, secondary=site_tags, backref="sites")
        devices = sa.orm.relationship(
            "Device", back_populates="site", cascade="all, delete-orphan"
        )

    class Device(db.Model):  # type: ignore[name-defined]
        __tablename__ = "device"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)
        serial = sa.Column(sa.String(50))
        uid = sa.Column(sa.Uuid)
        site_id: sa.Column[int] = sa.Column(sa.ForeignKey("site.id"), nullable=False)
        site = sa.orm.relationship(Site, back_populates="devices")

    return Models(Tenant, Tag, Site, Device)


class TagSchema(ma.Schema):
    id = ma.fields.Integer()
    slug = ma.fields.String()


class SiteSchema(ma.Schema):
    id = ma.fields.Integer()
    name = ma.fields.String()
    status = ma.fields.Enum(Status, by_value=True)
    tenant = ma.fields.Integer(attribute="tenant_id", allow_none=True)
    budget = ma.fields.Decimal(allow_none=True)
    opened = ma.fields.Date(allow_none=True)
    tags = ma.fields.List(ma.fields.Nested(TagSchema))


@pytest.fixture
def webhooks(app: Flask, db: SQLAlchemy, models: Models) -> Webhooks:
    webhooks = Webhooks(app, db=db)
    webhooks.register(models.Site, schema=SiteSchema)
    webhooks.register(models.Device)
    webhooks.register(models.Tag)
    webhooks.register(models.Tenant)
    db.create_all()
    return webhooks


@pytest.fixture
def receiver() -> t.Iterator[RecordingReceiver]:
    with RecordingReceiver() as r:
        yield r


@pytest.fixture
def tls_host() -> str:
    """The name ``tls_receiver``'s certificate is for; override in a module."""
    return "127.0.0.1"


@pytest.fixture
def tls_receiver(
    tmp_path: t.Any, tls_host: str
) -> t.Iterator[tuple[RecordingReceiver, str]]:
    """A receiver speaking TLS on 127.0.0.1, with a certificate for ``tls_host``
    from a private CA; yields it and the path of the CA bundle."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(tls_host).configure_cert(context)
    ca_path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with RecordingReceiver(ssl_context=context) as r:
        yield r, str(ca_path)


@pytest.fixture
def make_hook(
    webhooks: Webhooks, db: SQLAlchemy, receiver: RecordingReceiver
) -> t.Callable[..., t.Any]:
    """Create and commit a webhook aimed at the receiver; kwargs override fields."""
    counter = iter(range(1, 1000))

    def make(**fields: t.Any) -> t.Any:
        values: dict[str, t.Any] = dict(
            name=f"hook-{next(counter)}",
            models=["site"],
            on_create=True,
            on_update=True,
            on_delete=True,
            payload_url=receiver.url,
            secret="s3cret",
        )
        values.update(fields)
        hook = webhooks.Webhook(**values)
        db.session.add(hook)
        db.session.commit()
        return hook

    return make


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args).replace(tzinfo=dt.UTC)  # type: ignore[arg-type]


D = decimal.Decimal
