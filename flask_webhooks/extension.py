"""The :class:`Webhooks` extension object and its per-app state."""

from __future__ import annotations

import logging
import threading
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app
from flask import Flask
from sqlalchemy import event
from werkzeug.utils import import_string

from . import models as m
from .capture import install_model_listeners
from .capture import install_session_listeners
from .index import Index
from .index import IndexCache
from .models import build_models
from .models import Models
from .outbox_writer import OutboxWriter
from .registry import Registration
from .registry import Registry
from .validation import WebhookValidationError

if t.TYPE_CHECKING:
    import huey as huey_mod
    import marshmallow as ma
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

    from .transport import Transport

logger = logging.getLogger("flask_webhooks")

#: Retry schedule default: seconds to wait after each failed attempt
#: (8 attempts over about 27 hours).
DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)

#: Every configuration key with its default.
DEFAULTS: dict[str, t.Any] = {
    "WEBHOOKS_ENABLED": True,
    "WEBHOOKS_QUEUE_URL": None,
    "WEBHOOKS_EMBEDDED_WORKERS": 2,
    "WEBHOOKS_TIMEOUT": 10.0,
    "WEBHOOKS_CONNECT_TIMEOUT": 5.0,
    "WEBHOOKS_RETRY_SCHEDULE": list(DEFAULT_RETRY_SCHEDULE),
    "WEBHOOKS_MAX_RESPONSE_BYTES": 65536,
    "WEBHOOKS_DISABLE_AFTER_FAILURES": None,
    "WEBHOOKS_ALLOWED_NETWORKS": [],
    "WEBHOOKS_DENIED_NETWORKS": None,
    "WEBHOOKS_USERNAME_GETTER": None,
    "WEBHOOKS_SWEEP_INTERVAL": 60,
    "WEBHOOKS_LEASE_MARGIN": 30.0,
    "WEBHOOKS_DELIVERY_BATCH_SIZE": 50,
    "WEBHOOKS_INDEX_TTL": 0.0,
}


@dataclass(frozen=True)
class Config:
    """The ``WEBHOOKS_*`` settings of one app, read once at ``init_app``."""

    enabled: bool
    queue_url: str | None
    embedded_workers: int
    timeout: float
    connect_timeout: float
    retry_schedule: tuple[float, ...]
    max_response_bytes: int
    disable_after_failures: int | None
    allowed_networks: tuple[str, ...]
    denied_networks: tuple[str, ...] | None
    username_getter: t.Callable[[], str | None] | None
    sweep_interval: float
    lease_margin: float = 30.0
    delivery_batch_size: int = 50
    index_ttl: float = 0.0

    @classmethod
    def from_app(cls, app: Flask) -> Config:
        c = app.config

        def number(key: str, kind: type = float, minimum: float = 0) -> t.Any:
            value = c[key]
            try:
                result = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a number, got {value!r}") from None
            if result < minimum:
                raise ValueError(f"{key} must be at least {minimum}, got {value!r}")
            return result

        schedule = c["WEBHOOKS_RETRY_SCHEDULE"]
        try:
            steps = tuple(float(s) for s in schedule)
        except (TypeError, ValueError):
            raise ValueError(
                f"WEBHOOKS_RETRY_SCHEDULE must be a list of seconds, got {schedule!r}"
            ) from None
        if any(s < 0 for s in steps):
            raise ValueError("WEBHOOKS_RETRY_SCHEDULE: delays must not be negative")
        getter = c["WEBHOOKS_USERNAME_GETTER"]
        if isinstance(getter, str):
            getter = import_string(getter)
        if getter is not None and not callable(getter):
            raise ValueError(
                "WEBHOOKS_USERNAME_GETTER must be a callable or import path"
            )
        disable = c["WEBHOOKS_DISABLE_AFTER_FAILURES"]
        denied = c["WEBHOOKS_DENIED_NETWORKS"]
        return cls(
            enabled=bool(c["WEBHOOKS_ENABLED"]),
            queue_url=c["WEBHOOKS_QUEUE_URL"] or None,
            embedded_workers=number("WEBHOOKS_EMBEDDED_WORKERS", int),
            timeout=number("WEBHOOKS_TIMEOUT", float, 0.001),
            connect_timeout=number("WEBHOOKS_CONNECT_TIMEOUT", float, 0.001),
            retry_schedule=steps,
            max_response_bytes=number("WEBHOOKS_MAX_RESPONSE_BYTES", int, 0),
            disable_after_failures=(
                number("WEBHOOKS_DISABLE_AFTER_FAILURES", int, 1) if disable else None
            ),
            allowed_networks=tuple(c["WEBHOOKS_ALLOWED_NETWORKS"] or ()),
            denied_networks=tuple(denied) if denied is not None else None,
            username_getter=getter,
            sweep_interval=number("WEBHOOKS_SWEEP_INTERVAL", float, 1),
            lease_margin=number("WEBHOOKS_LEASE_MARGIN", float, 0),
            delivery_batch_size=number("WEBHOOKS_DELIVERY_BATCH_SIZE", int, 1),
            index_ttl=number("WEBHOOKS_INDEX_TTL", float, 0),
        )


class WebhooksState:
    """Everything flask-webhooks keeps for one app (``app.extensions["webhooks"]``)."""

    def __init__(
        self,
        ext: Webhooks,
        app: Flask,
        db: SQLAlchemy,
        models: Models,
        huey: huey_mod.Huey,
        config: Config,
    ) -> None:
        self.ext = ext
        self.app = app
        self.db = db
        self.models = models
        self.huey = huey
        self.config = config
        self.registry = ext.registry
        self.index_cache = IndexCache(models.Webhook.__table__, config.index_ttl)
        self.outbox = OutboxWriter(
            models.Delivery.__table__, models.OutboxEvent.__table__
        )
        self._transport_lock = threading.Lock()
        self._transport: Transport | None = None
        self.deliver_task: t.Any = None
        self.deliver_batch_task: t.Any = None
        #: Webhook rows the delivery engine read: id -> (updated_at, values).
        self.webhook_cache: dict[t.Any, tuple[t.Any, dict[str, t.Any]]] = {}
        self.workers: t.Any = None
        self.sweep_task: t.Any = None

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def engine(self) -> sa.Engine:
        with self.app.app_context():
            return self.db.engine

    def index(self, session: Session) -> Index:
        conn = session.connection(
            bind_arguments={"mapper": sa.inspect(self.models.Webhook)}
        )
        return self.index_cache.get(conn)

    def username(self) -> str | None:
        """The acting user's name, for the payload; never raises."""
        try:
            getter = self.config.username_getter
            if getter is not None:
                name = getter()
                return None if name is None else str(name)
            return _flask_login_username(self.app)
        except Exception:
            logger.exception("flask-webhooks: the username getter failed")
            return None

    def transport(self) -> Transport:
        if self._transport is None:
            with self._transport_lock:
                if self._transport is None:
                    from .transport import Transport
                    from .urlpolicy import DEFAULT_DENIED_NETWORKS
                    from .urlpolicy import URLPolicy

                    c = self.config
                    denied = (
                        c.denied_networks
                        if c.denied_networks is not None
                        else DEFAULT_DENIED_NETWORKS
                    )
                    policy = URLPolicy(allowed=c.allowed_networks, denied=denied)
                    self._transport = Transport(
                        policy, max_response_bytes=c.max_response_bytes
                    )
        return self._transport

    def enqueue(
        self,
        ids: t.Iterable[str],
        delay: float | None = None,
        *,
        keys: t.Sequence[t.Hashable] | None = None,
    ) -> None:
        """Hand delivery ids to the queue (after their rows are committed).

        :param keys: the webhook id of each delivery, in the order of ``ids``:
            many deliveries of one webhook then travel as batch tasks.
        """
        from .tasks import enqueue

        enqueue(self, ids, delay=delay, keys=keys)


def _flask_login_username(app: Flask) -> str | None:
    if getattr(app, "login_manager", None) is None:
        return None
    from flask import has_request_context

    if not has_request_context():
        return None
    from flask_login import current_user

    if not getattr(current_user, "is_authenticated", False):
        return None
    name = getattr(current_user, "username", None)
    if name is None:
        name = current_user.get_id()
    return None if name is None else str(name)


class Webhooks:
    """The flask-webhooks extension.

    ::

        webhooks = Webhooks(app, db=db)      # or Webhooks() + init_app(app, db=db)
        webhooks.register(Site, schema=SiteSchema)

    :param app: the Flask app; optional, see :meth:`init_app`.
    :param db: the Flask-SQLAlchemy instance whose session is captured and whose
        metadata gets the extension's tables.
    :param huey: a Huey instance to use instead of one built from
        ``WEBHOOKS_QUEUE_URL``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        huey: huey_mod.Huey | None = None,
    ) -> None:
        self.registry = Registry()
        self._db = db
        self._huey = huey
        self._models: Models | None = None
        if db is not None:
            self._bind_db(db)
        if app is not None:
            self.init_app(app, db=db, huey=huey)

    # -- setup ------------------------------------------------------------------

    def _bind_db(self, db: SQLAlchemy) -> Models:
        if self._models is not None:
            if db is not self._db:
                raise RuntimeError(
                    "this Webhooks object is bound to another SQLAlchemy instance; "
                    "create one Webhooks per db"
                )
            return self._models
        self._db = db
        self._models = build_models(db, self.registry)
        _install_webhook_validation(self._models.Webhook, db.session)
        install_session_listeners(db.session)
        return self._models

    def init_app(
        self,
        app: Flask,
        *,
        db: SQLAlchemy | None = None,
        huey: huey_mod.Huey | None = None,
    ) -> None:
        """Set up ``app``: config defaults, the queue, tasks and listeners.

        :param db: required here if not given to the constructor.
        :param huey: overrides ``WEBHOOKS_QUEUE_URL`` for this app.
        :raises RuntimeError: if ``app`` is already set up with flask-webhooks.
        """
        if "webhooks" in app.extensions:
            raise RuntimeError(
                "flask-webhooks is already initialised on this app; "
                "call init_app() once per app"
            )
        db = db or self._db
        if db is None:
            raise RuntimeError(
                "Webhooks needs the Flask-SQLAlchemy instance: Webhooks(app, db=db) "
                "or webhooks.init_app(app, db=db)"
            )
        models = self._bind_db(db)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = Config.from_app(app)
        if huey is None:
            huey = self._huey
        if huey is None:
            from .queue import make_huey

            huey = make_huey(config.queue_url, app.instance_path)
        state = WebhooksState(self, app, db, models, huey, config)
        from .tasks import register_tasks

        register_tasks(state)
        app.extensions["webhooks"] = state
        from .cli import webhooks_cli

        if "webhooks" not in app.cli.commands:
            app.cli.add_command(webhooks_cli)

    # -- public API ------------------------------------------------------------

    @t.overload
    def register(
        self,
        model: type[t.Any],
        *,
        schema: type[ma.Schema] | ma.Schema | None = None,
        name: str | None = None,
    ) -> type[t.Any]: ...

    @t.overload
    def register(
        self,
        model: None = None,
        *,
        schema: type[ma.Schema] | ma.Schema | None = None,
        name: str | None = None,
    ) -> t.Callable[[type[t.Any]], type[t.Any]]: ...

    def register(
        self,
        model: type[t.Any] | None = None,
        *,
        schema: type[ma.Schema] | ma.Schema | None = None,
        name: str | None = None,
    ) -> t.Any:
        """Make ``model`` produce webhook events.

        Works as a call or as a class decorator (``@webhooks.register(schema=S)``).

        :param schema: a marshmallow schema class or instance that dumps the
            payload's ``data``; by default an auto schema (marshmallow-sqlalchemy,
            foreign keys and relationships as primary keys).
        :param name: the model name in payloads and ``Webhook.models``;
            default: the class name lower-cased.
        :returns: the model (so it can decorate a class).
        """

        def decorate(cls: type[t.Any]) -> type[t.Any]:
            reg = self.registry.add(cls, schema=schema, name=name)
            install_model_listeners(reg)
            return cls

        if model is None:
            return decorate
        return decorate(model)

    def registration(self, model_or_name: type[t.Any] | str) -> Registration:
        """The :class:`~flask_webhooks.registry.Registration` of a model or name."""
        reg = (
            self.registry.by_name(model_or_name)
            if isinstance(model_or_name, str)
            else self.registry.for_class(model_or_name)
        )
        if reg is None:
            raise LookupError(f"{model_or_name!r} is not registered")
        return reg

    @property
    def Webhook(self) -> type[m.WebhookBase]:
        """The mapped class of the webhook configuration table."""
        return t.cast(type[m.WebhookBase], self._require_models().Webhook)

    @property
    def Delivery(self) -> type[m.DeliveryBase]:
        """The mapped class of the delivery log (one row per event x webhook)."""
        return t.cast(type[m.DeliveryBase], self._require_models().Delivery)

    @property
    def DeliveryAttempt(self) -> type[m.DeliveryAttemptBase]:
        """The mapped class of the attempt history (one row per attempt)."""
        return t.cast(
            type[m.DeliveryAttemptBase], self._require_models().DeliveryAttempt
        )

    def _require_models(self) -> Models:
        if self._models is None:
            raise RuntimeError("pass db= to Webhooks() or init_app() first")
        return self._models

    @property
    def state(self) -> WebhooksState:
        """The current app's :class:`WebhooksState`."""
        try:
            return t.cast(WebhooksState, current_app.extensions["webhooks"])
        except KeyError:
            raise RuntimeError(
                "flask-webhooks is not initialised on the current app"
            ) from None

    @property
    def huey(self) -> huey_mod.Huey:
        """The Huey instance the current app uses."""
        return self.state.huey

    def retry(self, delivery: t.Any) -> bool:
        """Re-queue a delivery now (a :attr:`Delivery` or its id).

        Works for ``failed``, ``retrying``, ``cancelled`` and ``pending``
        deliveries; the attempt count goes on. Returns False if the delivery is
        being sent or has succeeded.
        """
        from .sweeping import requeue

        delivery_id = getattr(delivery, "id", delivery)
        state = self.state
        if not requeue(state, [str(delivery_id)]):
            return False
        state.enqueue([str(delivery_id)])
        return True

    def sweep(self) -> int:
        """Enqueue every delivery that is due and not leased; return the count."""
        from .sweeping import sweep

        return sweep(self.state)

    def init_admin(self, admin: t.Any, **kwargs: t.Any) -> None:
        """Add the webhook screens to an existing ``flask_admin.Admin``.

        See :func:`flask_webhooks.admin.init_admin` for the options.
        """
        from .admin import init_admin

        init_admin(self, admin, **kwargs)


#: ``session.info`` key: this transaction flushed webhook changes.
_WEBHOOKS_FLUSHED = "flask_webhooks.webhooks_flushed"


def _validate_webhooks(
    session: Session, flush_context: t.Any, instances: t.Any
) -> None:
    """Refuse to flush an invalid Webhook (code, CLI and admin alike).

    Runs before the flush starts, so on error nothing was sent to the
    database and the session stays usable: fix the fields and commit again,
    or roll back.
    """
    changed = False
    for obj in (*session.new, *session.dirty):
        if isinstance(obj, m.WebhookBase):
            changed = True
            errors = obj.validate()
            if errors:
                raise WebhookValidationError(errors)
    if changed or any(isinstance(obj, m.WebhookBase) for obj in session.deleted):
        session.info[_WEBHOOKS_FLUSHED] = True


def _expire_index(session: Session, *args: t.Any) -> None:
    """After a transaction that flushed webhook changes ends (committed or
    rolled back), this process's capture index checks the database again."""
    if session.info.pop(_WEBHOOKS_FLUSHED, None):
        from .index import expire_all

        expire_all()


def _detach_deliveries(mapper: t.Any, connection: t.Any, target: t.Any) -> None:
    # ON DELETE SET NULL in the ORM too: SQLite does not enforce foreign keys
    # unless asked to, and the log must not point at a webhook that is gone.
    deliveries = mapper.local_table.metadata.tables[m.DeliveryBase.__tablename__]
    connection.execute(
        sa.update(deliveries)
        .where(deliveries.c.webhook_id == target.id)
        .values(webhook_id=None)
    )


def _install_webhook_validation(webhook_cls: type[t.Any], session: t.Any) -> None:
    """Validate every Webhook before it is flushed, and detach its deliveries
    when it is deleted."""
    if not event.contains(session, "before_flush", _validate_webhooks):
        event.listen(session, "before_flush", _validate_webhooks)
    for name in ("after_commit", "after_soft_rollback"):
        if not event.contains(session, name, _expire_index):
            event.listen(session, name, _expire_index)
    if not event.contains(webhook_cls, "before_delete", _detach_deliveries):
        event.listen(webhook_cls, "before_delete", _detach_deliveries)
