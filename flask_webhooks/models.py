"""The extension's tables: webhook configuration, delivery log, attempts.

The mapped classes are built on the application's ``db.Model`` by
:func:`build_models`, so they live in the app's metadata: ``db.create_all()``
creates them and Flask-Migrate / Alembic autogenerate sees them.
"""

from __future__ import annotations

import datetime as dt
import typing as t
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import declared_attr
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from .validation import validate_webhook

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .registry import Registry

#: Delivery status: queued, not yet tried.
PENDING = "pending"
#: Delivery status: leased by a worker that is sending it now.
DELIVERING = "delivering"
#: Delivery status: failed, another attempt is scheduled at ``next_attempt_at``.
RETRYING = "retrying"
#: Delivery status: the receiver answered 2xx.
SUCCEEDED = "succeeded"
#: Delivery status: attempts exhausted, permanent error, or webhook disabled.
FAILED = "failed"
#: Delivery status: cancelled by an admin before it was sent.
CANCELLED = "cancelled"
#: Delivery status: an ``updated`` delivery that was never sent because a
#: newer ``updated`` delivery of the same object replaced it (webhooks with
#: ``collapse_updates``). Final: never sent, never retried.
SUPERSEDED = "superseded"
STATUSES = (PENDING, DELIVERING, RETRYING, SUCCEEDED, FAILED, CANCELLED, SUPERSEDED)
#: Statuses of a delivery that is not finished: it holds back the later
#: deliveries of its object (``WEBHOOKS_ORDERING = "object"``).
OPEN_STATUSES = (PENDING, DELIVERING, RETRYING)
#: Statuses of a finished delivery.
FINAL_STATUSES = (SUCCEEDED, FAILED, CANCELLED, SUPERSEDED)

#: Event names, as in the payload's ``event`` key.
CREATED, UPDATED, DELETED = "created", "updated", "deleted"
EVENTS = (CREATED, UPDATED, DELETED)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Stores naive UTC, returns aware UTC, on every database.

    SQLite keeps no offset; PostgreSQL ``timestamp without time zone`` neither.
    Storing naive UTC everywhere keeps comparisons in SQL correct.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(
        self, value: dt.datetime | None, dialect: sa.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: sa.Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class WebhookBase:
    """Columns of the webhook configuration table (``webhooks_webhook``)."""

    __tablename__ = "webhooks_webhook"
    #: Set by :func:`build_models`: the registry validation checks model names against.
    _webhooks_registry: t.ClassVar[Registry | None] = None

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    enabled: Mapped[bool] = mapped_column(default=True)
    models: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    on_create: Mapped[bool] = mapped_column(default=False)
    on_update: Mapped[bool] = mapped_column(default=False)
    on_delete: Mapped[bool] = mapped_column(default=False)
    #: Declared app event types (``Webhooks.event_type``) that fire it.
    event_types: Mapped[list[str]] = mapped_column(
        sa.JSON, default=list, server_default="[]"
    )
    payload_url: Mapped[str] = mapped_column(sa.String(500))
    http_method: Mapped[str] = mapped_column(sa.String(10), default="POST")
    http_content_type: Mapped[str] = mapped_column(
        sa.String(100), default="application/json"
    )
    additional_headers: Mapped[str] = mapped_column(sa.Text, default="")
    body_template: Mapped[str] = mapped_column(sa.Text, default="")
    secret: Mapped[str] = mapped_column(sa.String(255), default="")
    signature_scheme: Mapped[str] = mapped_column(sa.String(16), default="netbox")
    ssl_verification: Mapped[bool] = mapped_column(default=True)
    ca_file_path: Mapped[str | None] = mapped_column(sa.String(4096), default=None)
    conditions: Mapped[t.Any | None] = mapped_column(sa.JSON, default=None)
    timeout: Mapped[float | None] = mapped_column(default=None)
    #: Send only the newest of several ``updated`` deliveries of one object
    #: that wait behind an earlier one; the others end ``superseded``.
    collapse_updates: Mapped[bool] = mapped_column(
        default=False, server_default=sa.false()
    )
    #: Most requests per second to this webhook, across every worker thread
    #: and process (None: no limit). See :mod:`flask_webhooks.delivery.rate`.
    rate_limit: Mapped[float | None] = mapped_column(default=None)
    #: The rate limiter's state: the Unix time before which no further
    #: request may start (written by workers, never by a form).
    rate_next_at: Mapped[float | None] = mapped_column(sa.Float, default=None)
    #: Failed attempts in a row (the circuit breaker's count, reset by a
    #: success; see :mod:`flask_webhooks.delivery.breaker`).
    breaker_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    #: While set, the breaker is open: deliveries wait until this time, then
    #: one probe attempt decides.
    breaker_open_until: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, default=None
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Bumped on every change; the capture index reloads when it moves.
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    #: Why and when the webhook was disabled automatically (410 Gone, failures).
    disabled_reason: Mapped[str | None] = mapped_column(sa.Text, default=None)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Deliveries that ended ``failed`` in a row, reset by a success.
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    last_delivery_status: Mapped[str | None] = mapped_column(
        sa.String(16), default=None
    )
    last_delivery_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, default=None
    )
    #: The secret being rotated out (write-only, like ``secret``): while
    #: ``secret_rotated_until`` is in the future, ``netbox`` requests are still
    #: signed with it and ``standard`` requests carry a signature with each.
    #: See :func:`flask_webhooks.rotation.rotate_secret`.
    previous_secret: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    #: When the rotation overlap ends (None: no rotation in progress).
    secret_rotated_until: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, default=None
    )

    def __init__(self, **kwargs: t.Any) -> None:
        # Column defaults apply at INSERT; set them now so a new Webhook reads
        # (and validates) like the row it will become.
        for column in self.__table__.columns:  # type: ignore[attr-defined]
            default = column.default
            if column.key in kwargs or default is None or not default.is_scalar:
                continue
            kwargs[column.key] = default.arg
        kwargs.setdefault("models", [])
        kwargs.setdefault("event_types", [])
        super().__init__(**kwargs)

    @property
    def events(self) -> list[str]:
        """The event names this webhook fires for."""
        return [
            e
            for e, on in zip(
                EVENTS, (self.on_create, self.on_update, self.on_delete), strict=True
            )
            if on
        ]

    def validate(self) -> dict[str, str]:
        """Check every field; return ``{field: message}`` for the bad ones."""
        return validate_webhook(self, self._webhooks_registry)

    def __repr__(self) -> str:
        return f"<Webhook {self.id} {self.name!r}>"


class DeliveryBase:
    """Columns of the delivery log (``webhooks_delivery``): one row per event x webhook."""

    __tablename__ = "webhooks_delivery"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[t.Any, ...]:
        return (
            sa.Index("ix_webhooks_delivery_due", "status", "next_attempt_at"),
            sa.Index("ix_webhooks_delivery_webhook", "webhook_id", "created_at"),
            # Time-window aggregates (status page charts, per-webhook rates)
            # read only this index; it also serves plain created_at ranges.
            sa.Index(
                "ix_webhooks_delivery_stats", "created_at", "webhook_id", "status"
            ),
            # The open deliveries of one object in commit order: what the
            # claim, the sweep and the release look up (see delivery/order.py).
            sa.Index(
                "ix_webhooks_delivery_open_object",
                "webhook_id",
                "object_id",
                "sequence",
                postgresql_where=_open(),
                sqlite_where=_open(),
            ),
        )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)

    @declared_attr
    def webhook_id(cls) -> Mapped[int | None]:
        return mapped_column(
            sa.ForeignKey("webhooks_webhook.id", ondelete="SET NULL"), nullable=True
        )

    #: The webhook's name when the event was captured (kept if it is deleted).
    webhook_name: Mapped[str] = mapped_column(sa.String(100), default="")
    #: ``created``/``updated``/``deleted``, ``test``, or an app event type.
    event: Mapped[str] = mapped_column(sa.String(100))
    #: The registered model name; "" for an app event about no model instance.
    model: Mapped[str] = mapped_column(sa.String(100))
    object_id: Mapped[str] = mapped_column(sa.String(255), default="")
    request_id: Mapped[str | None] = mapped_column(sa.String(36), default=None)
    username: Mapped[str | None] = mapped_column(sa.String(255), default=None)
    #: The event's position in commit order (``X-Webhook-Sequence``): larger
    #: for a later commit of the same object; the same for every webhook's
    #: delivery of one event and on every attempt.
    sequence: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    status: Mapped[str] = mapped_column(sa.String(16), default=PENDING)
    #: A later delivery of the same object found this one in its way: when
    #: this one finishes, the next one is enqueued at once.
    has_waiters: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, default=utcnow
    )
    #: Set while a worker holds the delivery; an expired lease may be reclaimed.
    leased_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Claims since the last recorded result: counted by the claim, reset by
    #: the result write. At ``WEBHOOKS_MAX_CLAIMS`` the delivery is poison.
    claims: Mapped[int] = mapped_column(default=0, server_default="0")
    last_status_code: Mapped[int | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow
    )
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: The exact body bytes, rendered once at capture time.
    body: Mapped[bytes] = mapped_column(sa.LargeBinary, default=b"")
    content_type: Mapped[str] = mapped_column(
        sa.String(100), default="application/json"
    )
    #: The payload (JSON) when the body is not the default JSON payload, so URL
    #: and header templates can be rendered again at send time.
    payload: Mapped[str | None] = mapped_column(sa.Text, default=None)
    #: What the last attempt sent and got, for the admin.
    request_method: Mapped[str | None] = mapped_column(sa.String(10), default=None)
    request_url: Mapped[str | None] = mapped_column(sa.String(2000), default=None)
    request_headers: Mapped[dict[str, str] | None] = mapped_column(
        sa.JSON, default=None
    )
    response_headers: Mapped[dict[str, str] | None] = mapped_column(
        sa.JSON, default=None
    )
    response_body: Mapped[str | None] = mapped_column(sa.Text, default=None)
    duration_ms: Mapped[float | None] = mapped_column(default=None)

    @property
    def body_text(self) -> str:
        return (self.body or b"").decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Delivery {self.id} {self.event} {self.model}:{self.object_id} {self.status}>"


class DeliveryAttemptBase:
    """One row per attempt (``webhooks_delivery_attempt``)."""

    __tablename__ = "webhooks_delivery_attempt"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[t.Any, ...]:
        # Latency percentiles over a time window read only this index.
        return (
            sa.Index(
                "ix_webhooks_delivery_attempt_started", "started_at", "duration_ms"
            ),
        )

    id: Mapped[int] = mapped_column(primary_key=True)

    @declared_attr
    def delivery_id(cls) -> Mapped[str]:
        return mapped_column(
            sa.ForeignKey("webhooks_delivery.id", ondelete="CASCADE"), index=True
        )

    number: Mapped[int] = mapped_column()
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    duration_ms: Mapped[float | None] = mapped_column(default=None)
    status_code: Mapped[int | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(sa.Text, default=None)
    request_url: Mapped[str | None] = mapped_column(sa.String(2000), default=None)
    request_headers: Mapped[dict[str, str] | None] = mapped_column(
        sa.JSON, default=None
    )
    response_headers: Mapped[dict[str, str] | None] = mapped_column(
        sa.JSON, default=None
    )
    response_body: Mapped[str | None] = mapped_column(sa.Text, default=None)

    def __repr__(self) -> str:
        return f"<DeliveryAttempt {self.delivery_id}#{self.number}>"


class OutboxEventBase:
    """Events of a committing transaction on their way to the delivery table
    (``webhooks_outbox_event``).

    When several webhooks take an event's default JSON body, capture writes
    the event once here and copies it into one delivery row per webhook with
    ``INSERT ... SELECT`` (see :mod:`.outbox`). The rows are deleted in the
    same transaction: outside a commit in progress the table is empty.
    """

    __tablename__ = "webhooks_outbox_event"

    #: One value per write (random), so concurrent transactions never mix.
    batch: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    #: Which set of webhooks the event fans out to (numbered per write).
    grp: Mapped[int] = mapped_column()
    #: The delivery ids are this plus 3 hex digits numbering the webhook.
    id_prefix: Mapped[str] = mapped_column(sa.String(33))
    event: Mapped[str] = mapped_column(sa.String(100))
    model: Mapped[str] = mapped_column(sa.String(100))
    object_id: Mapped[str] = mapped_column(sa.String(255))
    request_id: Mapped[str | None] = mapped_column(sa.String(36))
    username: Mapped[str | None] = mapped_column(sa.String(255))
    #: The event's ``sequence``, copied to every delivery row.
    sequence: Mapped[int | None] = mapped_column(sa.BigInteger)
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)


class CounterBase:
    """Named counters (``webhooks_counter``): the source of delivery
    sequence numbers on databases without sequences (SQLite).

    On PostgreSQL the numbers come from the ``webhooks_delivery_sequence``
    sequence instead and this table stays empty.
    """

    __tablename__ = "webhooks_counter"

    name: Mapped[str] = mapped_column(sa.String(50), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger)


#: Name of the database sequence (PostgreSQL) that numbers events.
SEQUENCE_NAME = "webhooks_delivery_sequence"


def _open() -> sa.ColumnElement[bool]:
    return sa.column("status").in_(OPEN_STATUSES)


class Models(t.NamedTuple):
    Webhook: type[t.Any]
    Delivery: type[t.Any]
    DeliveryAttempt: type[t.Any]
    OutboxEvent: type[t.Any]
    Counter: type[t.Any]
    #: The PostgreSQL sequence numbering events (created by ``create_all``
    #: on databases that have sequences).
    sequence: sa.Sequence


_built: dict[int, Models] = {}


def build_models(db: SQLAlchemy, registry: Registry) -> Models:
    """Create (once per ``db``) the mapped classes on ``db.Model``."""
    key = id(db)
    if key in _built and _built[key].Webhook.metadata is db.metadata:
        return _built[key]
    webhook = type(
        "Webhook",
        (WebhookBase, db.Model),
        {"__module__": __name__, "_webhooks_registry": registry},
    )
    attempt = type(
        "DeliveryAttempt",
        (DeliveryAttemptBase, db.Model),
        {"__module__": __name__},
    )
    delivery = type(
        "Delivery",
        (DeliveryBase, db.Model),
        {
            "__module__": __name__,
            "attempt_history": relationship(
                attempt,
                order_by=lambda: attempt.number,  # type: ignore[attr-defined]
                cascade="all, delete-orphan",
                passive_deletes=True,
                lazy="select",
            ),
        },
    )
    outbox_event = type(
        "OutboxEvent", (OutboxEventBase, db.Model), {"__module__": __name__}
    )
    counter = type("Counter", (CounterBase, db.Model), {"__module__": __name__})
    sequence = sa.Sequence(SEQUENCE_NAME, metadata=db.metadata)
    models = Models(webhook, delivery, attempt, outbox_event, counter, sequence)
    _built[key] = models
    return models
