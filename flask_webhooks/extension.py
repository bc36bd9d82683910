"""The :class:`Webhooks` extension object: the one module that wires the stages.

``init_app`` builds the per-app :class:`~flask_webhooks.state.WebhooksState`
and hands each stage what it needs from the others: capture gets the
index cache, the outbox writer and ``enqueue``; delivery gets the transport
factory; the worker stage gets the start of embedded workers.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
from flask import Flask
from sqlalchemy import event

from . import models as m
from . import rotation
from .capture.index import expire_all
from .capture.index import IndexCache
from .capture.journal import AppEntry
from .capture.listeners import install_model_listeners
from .capture.listeners import install_session_listeners
from .capture.listeners import journal_app_event
from .capture.numbering import Numbering
from .capture.writer import OutboxWriter
from .cli import webhooks_cli
from .delivery import recovery
from .delivery.tasks import enqueue
from .delivery.tasks import register_tasks
from .models import build_models
from .models import Models
from .registry import EventType
from .registry import Registration
from .registry import Registry
from .state import Config
from .state import DEFAULTS
from .state import get_state
from .state import WebhooksState
from .transport.client import SessionFactory
from .transport.client import Transport
from .transport.policy import DEFAULT_DENIED_NETWORKS
from .transport.policy import URLPolicy
from .validation import WebhookValidationError
from .worker.consumers import start_embedded_workers
from .worker.queue import make_huey
from .worker.serializer import pickles

if t.TYPE_CHECKING:
    import huey as huey_mod
    import marshmallow as ma
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)


def _transport_factory(
    config: Config, session_factory: SessionFactory | None
) -> t.Callable[[], Transport]:
    """What builds the app's transport: the URL policy and proxies from the
    config, the app's ``session_factory``."""

    def make() -> Transport:
        denied = (
            config.denied_networks
            if config.denied_networks is not None
            else DEFAULT_DENIED_NETWORKS
        )
        policy = URLPolicy(allowed=config.allowed_networks, denied=denied)
        return Transport(
            policy,
            max_response_bytes=config.max_response_bytes,
            session_factory=session_factory,
            proxies=dict(config.proxies),
            trust_env=config.trust_env,
        )

    return make


def _check_session_factory(value: t.Any) -> SessionFactory | None:
    if value is not None and not callable(value):
        raise TypeError(
            "session_factory must be a callable returning a requests.Session, "
            f"got {type(value).__name__}"
        )
    return t.cast("SessionFactory | None", value)


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
    :param session_factory: ``make_session() -> requests.Session``, called
        once per worker thread; every delivery of that thread goes through the
        session it returns (its adapters, ``cert``, ``verify``, ``auth``,
        headers, hooks and instrumentation apply). The URL policy adapter is
        mounted on it unless it has its own adapters (see
        :doc:`/workers`). Default: a plain session with the policy adapter.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        huey: huey_mod.Huey | None = None,
        session_factory: SessionFactory | None = None,
    ) -> None:
        self.registry = Registry()
        self._db = db
        self._huey = huey
        self._session_factory = _check_session_factory(session_factory)
        self._models: Models | None = None
        if db is not None:
            self._bind_db(db)
        if app is not None:
            self.init_app(app, db=db, huey=huey, session_factory=session_factory)

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
        session_factory: SessionFactory | None = None,
    ) -> None:
        """Set up ``app``: config defaults, the queue, tasks and listeners.

        :param db: required here if not given to the constructor.
        :param huey: overrides ``WEBHOOKS_QUEUE_URL`` for this app. Its
            serializer is left as it is; a pickling one (Huey's default) is
            logged as a warning, see :doc:`security`.
        :param session_factory: overrides the constructor's for this app.
        :raises RuntimeError: if ``app`` is already set up with flask-webhooks.
        :raises TypeError: ``session_factory`` is not callable.
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
        session_factory = _check_session_factory(session_factory)
        if session_factory is None:
            session_factory = self._session_factory
        models = self._bind_db(db)
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        config = Config.from_app(app)
        if huey is None:
            huey = self._huey
        if huey is None:
            huey = make_huey(config.queue_url, app.instance_path)
        elif pickles(huey):
            logger.warning(
                "flask-webhooks: the Huey instance given to init_app() pickles its "
                "messages: whoever can write to its queue can run code in the "
                "workers. Build it with serializer=flask_webhooks.worker."
                "JSONSerializer() (flask-webhooks' tasks need nothing else), or a "
                "huey SignedSerializer, and keep the queue private"
            )
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
            make_transport=_transport_factory(config, session_factory),
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

    # -- app events ------------------------------------------------------------

    def event_type(
        self,
        name: str,
        *,
        description: str = "",
        schema: type[ma.Schema] | ma.Schema | None = None,
    ) -> EventType:
        """Declare an app event type that :meth:`publish` can send.

        Declare each type once, next to :meth:`register` calls; webhooks
        subscribe to it through ``Webhook.event_types``, and the admin, the
        CLI (``flask webhooks events``) and the event catalog list it with its
        description and, with a schema, the JSON Schema of its ``data``.

        :param name: the payload's ``event``, e.g. ``"invoice.paid"``: letters,
            digits and ``_`` separated by ``.``, ``:``, ``/`` or ``-``, at most
            100 characters; ``created``, ``updated``, ``deleted`` and ``test``
            are reserved.
        :param description: what happened, for people subscribing to it.
        :param schema: a marshmallow schema (class or instance) that dumps the
            published data; without one, publish a dict or an instance of a
            registered model.
        :raises ValueError: the name is invalid or already declared.

        .. versionadded:: 0.2
        """
        return self.registry.add_event_type(
            name, description=description, schema=schema
        )

    def publish(self, name: str, data: t.Any, object_id: t.Any = None) -> None:
        """Publish an app event in the current ``db.session`` transaction.

        Every enabled webhook subscribed to ``name`` gets one delivery, written
        when the transaction commits, in the same transaction (like model
        changes) and sent after the commit. A rollback, of the transaction or
        of a savepoint (``begin_nested()``) the event was published in, drops
        it. Two publishes are two events, delivered in publish order. Nothing
        is done when no enabled webhook subscribes.

        ``data`` is dumped at commit time (after the final flush, so new
        objects have their primary keys): by the event type's schema if it
        has one, else by the registered model's schema for an instance of a
        registered model; a dict is sent as it is. A dump that fails records
        the deliveries as ``failed``; the commit goes on.

        :param name: a type declared with :meth:`event_type`.
        :param data: a dict, or an object the event type's schema dumps, or
            an instance of a registered model (then the payload's ``model``
            is its registered name; otherwise ``model`` is null).
        :param object_id: what the event is about, stored on the deliveries
            (``Delivery.object_id``) and used for per-object order; default:
            the primary key of a registered model's instance, else ``""``.
        :raises ValueError: ``name`` was not declared.
        :raises TypeError: ``data`` is neither a dict nor something a schema
            of the event type or of a registered model dumps.

        .. versionadded:: 0.2
        """
        found = self.registry.event_type(name)
        if found is None:
            declared = ", ".join(map(repr, self.registry.event_type_names()))
            raise ValueError(
                f"publish(): the event type {name!r} is not declared "
                f"(declared: {declared or 'none'}); declare it once with "
                f"webhooks.event_type({name!r}, description=...)"
            )
        reg = None
        if isinstance(data, Mapping):
            if found.schema is None:
                data = dict(data)
        else:
            reg = self.registry.for_class(type(data))
            if reg is None and found.schema is None:
                raise TypeError(
                    f"publish({name!r}): data must be a dict, an instance of a "
                    f"registered model, or an object the event type's schema "
                    f"dumps; got {type(data).__name__} and {name!r} has no schema"
                )
        state = self.state
        if not state.enabled:
            return
        entry = AppEntry(
            found, data, None if object_id is None else str(object_id), reg
        )
        journal_app_event(state.db.session(), entry)

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

    def rotate_secret(
        self,
        webhook_or_id: t.Any,
        new_secret: str | None = None,
        overlap: dt.timedelta = rotation.DEFAULT_OVERLAP,
    ) -> str | None:
        """Give a webhook a new secret; the old one stays valid for ``overlap``.

        ``standard`` requests carry a signature with each secret meanwhile;
        ``netbox`` requests stay signed with the old secret until the overlap
        ends, then switch by themselves. Commits ``db.session``. See
        :func:`flask_webhooks.rotation.rotate_secret` and
        ``docs/signatures.rst``.

        :param webhook_or_id: a :attr:`Webhook` or its id.
        :param new_secret: the new secret; None generates one.
        :param overlap: how long the old secret keeps working (default 24 h).
        :returns: the generated secret, or None when ``new_secret`` was given.
        """
        return rotation.rotate_secret(self.state, webhook_or_id, new_secret, overlap)

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
