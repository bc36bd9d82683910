"""The :class:`Webhooks` extension object: the one module that wires the stages.

``init_app`` builds the per-app :class:`~flask_webhooks.state.WebhooksState`
and hands each stage what it needs from the others: capture gets the
index cache, the outbox writer and ``enqueue``; delivery gets the transport
factory; the worker stage gets the start of embedded workers.
"""

from __future__ import annotations

import functools
import typing as t

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event

from . import models as m
from .capture.index import expire_all
from .capture.index import IndexCache
from .capture.listeners import install_model_listeners
from .capture.listeners import install_session_listeners
from .capture.numbering import Numbering
from .capture.writer import OutboxWriter
from .cli import webhooks_cli
from .delivery import recovery
from .delivery.tasks import enqueue
from .delivery.tasks import register_tasks
from .models import build_models
from .models import Models
from .registry import Registration
from .registry import Registry
from .state import Config
from .state import DEFAULTS
from .state import get_state
from .state import WebhooksState
from .transport.client import Transport
from .transport.policy import DEFAULT_DENIED_NETWORKS
from .transport.policy import URLPolicy
from .validation import WebhookValidationError
from .worker.consumers import start_embedded_workers
from .worker.queue import make_huey

if t.TYPE_CHECKING:
    import huey as huey_mod
    import marshmallow as ma
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session


def _transport_factory(config: Config) -> t.Callable[[], Transport]:
    """What builds the app's transport: the URL policy from the config."""

    def make() -> Transport:
        denied = (
            config.denied_networks
            if config.denied_networks is not None
            else DEFAULT_DENIED_NETWORKS
        )
        policy = URLPolicy(allowed=config.allowed_networks, denied=denied)
        return Transport(policy, max_response_bytes=config.max_response_bytes)

    return make


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
            huey = make_huey(config.queue_url, app.instance_path)
        state = WebhooksState(
            app,
            db,
            models,
            huey,
            config,
            self.registry,
            index_cache=IndexCache(
                models.Webhook.__table__,
                config.index_ttl,
                regex_timeout=config.condition_timeout,
                limits=config.template_limits,
            ),
            outbox=OutboxWriter(
                models.Delivery.__table__,
                models.OutboxEvent.__table__,
                Numbering(models.Counter.__table__, models.sequence),
            ),
            make_transport=_transport_factory(config),
        )
        state.enqueue_ids = functools.partial(enqueue, state)
        state.start_workers = functools.partial(start_embedded_workers, state)
        register_tasks(state)
        app.extensions["webhooks"] = state
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

    @property
    def db(self) -> SQLAlchemy:
        """The Flask-SQLAlchemy instance this extension is bound to."""
        if self._db is None:
            raise RuntimeError("pass db= to Webhooks() or init_app() first")
        return self._db

    def _require_models(self) -> Models:
        if self._models is None:
            raise RuntimeError("pass db= to Webhooks() or init_app() first")
        return self._models

    @property
    def state(self) -> WebhooksState:
        """The current app's :class:`~flask_webhooks.state.WebhooksState`."""
        return get_state()

    @property
    def huey(self) -> huey_mod.Huey:
        """The Huey instance the current app uses."""
        return self.state.huey

    def retry(self, delivery: t.Any) -> bool:
        """Re-queue a delivery now (a :attr:`Delivery` or its id).

        Works for ``failed``, ``retrying``, ``cancelled`` and ``pending``
        deliveries; the attempt count goes on. Returns False if the delivery is
        being sent, has succeeded or was superseded.

        The delivery keeps its sequence number (``X-Webhook-Sequence``): with
        ``WEBHOOKS_ORDERING = "object"`` it waits for earlier open deliveries
        of its object, and later ones wait for it. Retrying a delivery older
        than one the receiver already got is allowed (the admin and ``flask
        webhooks retry`` point those out).
        """
        delivery_id = getattr(delivery, "id", delivery)
        state = self.state
        if not recovery.requeue(state, [str(delivery_id)]):
            return False
        state.enqueue([str(delivery_id)])
        return True

    def sweep(self) -> int:
        """Enqueue every delivery that is due and not leased; return the count."""
        return recovery.sweep(self.state)

    def init_admin(self, admin: t.Any, **kwargs: t.Any) -> None:
        """Add the webhook screens to an existing ``flask_admin.Admin``.

        See :func:`flask_webhooks.admin.init_admin` for the options.
        """
        # Imported here: Flask-Admin is an optional dependency.
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
