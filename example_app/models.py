"""A small NetBox-like inventory: tenants, tags, sites and devices.

Plus :class:`ReceivedWebhook`, where the demo receiver stores what it got. It
is *not* registered with flask-webhooks: storing a received webhook must not
send another one.
"""

from __future__ import annotations

import datetime as dt
import enum
import typing as t

import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import validates

from .extensions import db


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Status(enum.Enum):
    """Site and device status, as in NetBox."""

    active = "active"
    planned = "planned"
    staged = "staged"
    decommissioning = "decommissioning"
    retired = "retired"

    @property
    def label(self) -> str:
        return self.value.capitalize()

    def __str__(self) -> str:
        return self.label

    @classmethod
    def coerce(cls, value: Status | str) -> Status:
        """A member from a member, its name or its value (forms send strings)."""
        if isinstance(value, cls):
            return value
        try:
            return cls[str(value)]
        except KeyError:
            return cls(str(value))


site_tags = db.Table(
    "site_tags",
    sa.Column(
        "site_id", sa.ForeignKey("site.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("tag_id", sa.ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True),
)


class Tenant(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tenant"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    description: Mapped[str] = mapped_column(sa.String(200), default="")

    def __str__(self) -> str:
        return self.name


class Tag(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "tag"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    color: Mapped[str] = mapped_column(sa.String(6), default="9e9e9e")

    def __str__(self) -> str:
        return self.name


class Site(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "site"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    status: Mapped[Status] = mapped_column(sa.Enum(Status), default=Status.active)
    tenant_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("tenant.id", ondelete="SET NULL"), default=None
    )
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_updated: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    tenant: Mapped[Tenant | None] = relationship()
    tags: Mapped[list[Tag]] = relationship(secondary=site_tags, order_by=Tag.name)
    devices: Mapped[list[Device]] = relationship(
        back_populates="site", cascade="all, delete-orphan", order_by="Device.name"
    )

    @validates("status")
    def _status(self, key: str, value: Status | str) -> Status:
        return Status.coerce(value)

    def __str__(self) -> str:
        return self.name


class Device(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "device"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    serial: Mapped[str] = mapped_column(sa.String(50), default="")
    status: Mapped[Status] = mapped_column(sa.Enum(Status), default=Status.active)
    site_id: Mapped[int] = mapped_column(sa.ForeignKey("site.id", ondelete="CASCADE"))
    tenant_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("tenant.id", ondelete="SET NULL"), default=None
    )
    created: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_updated: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    site: Mapped[Site] = relationship(back_populates="devices")
    tenant: Mapped[Tenant | None] = relationship()

    @validates("status")
    def _status(self, key: str, value: Status | str) -> Status:
        return Status.coerce(value)

    __table_args__ = (sa.UniqueConstraint("site_id", "name"),)

    def __str__(self) -> str:
        return self.name


class ReceivedWebhook(db.Model):  # type: ignore[name-defined,misc]
    """One request the demo receiver got (not a registered model)."""

    __tablename__ = "demo_received_webhook"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    method: Mapped[str] = mapped_column(sa.String(10))
    event: Mapped[str | None] = mapped_column(sa.String(32))
    model: Mapped[str | None] = mapped_column(sa.String(100))
    object_id: Mapped[str | None] = mapped_column(sa.String(255))
    #: X-Webhook-ID and X-Webhook-Attempt: the delivery, and which attempt.
    delivery_id: Mapped[str | None] = mapped_column(sa.String(64))
    attempt: Mapped[str | None] = mapped_column(sa.String(10))
    #: True when every signature present verified (and at least one was present).
    verified: Mapped[bool] = mapped_column(default=False)
    #: One line per scheme: what was checked and the outcome.
    verification: Mapped[str] = mapped_column(sa.Text, default="")
    headers: Mapped[dict[str, t.Any]] = mapped_column(sa.JSON, default=dict)
    body: Mapped[str] = mapped_column(sa.Text, default="")

    @property
    def sequence(self) -> str | None:
        """``X-Webhook-Sequence``, when the sender puts one on the request."""
        return self.headers.get("X-Webhook-Sequence")

    def to_json(self) -> dict[str, t.Any]:
        """What ``/receiver/?format=json`` lists: everything the HTML page shows."""
        return {
            "id": self.id,
            "received_at": self.received_at.replace(tzinfo=dt.UTC).isoformat(),
            "method": self.method,
            "event": self.event,
            "model": self.model,
            "object_id": self.object_id,
            "delivery_id": self.delivery_id,
            "attempt": self.attempt,
            "sequence": self.sequence,
            "verified": self.verified,
            "verification": self.verification.splitlines(),
            "headers": self.headers,
            "body": self.body,
        }
