"""The per-app state of flask-webhooks and its configuration.

:class:`Config` reads the ``WEBHOOKS_*`` settings once at ``init_app``;
:class:`WebhooksState` is what ``app.extensions["webhooks"]`` holds: the
app, its ``db``, the mapped models, the Huey instance and the parts the
pipeline stages share (the capture index, the outbox writer, the transport,
the task handles). :func:`get_state` is the one way to look it up.

This module sits below every stage: it imports nothing from capture,
delivery, transport, worker or admin at run time. :mod:`flask_webhooks.extension`
builds the stages' objects and hands them in (``index_cache``, ``outbox``,
the transport factory, the enqueue and worker-start functions).
"""

from __future__ import annotations

import functools
import logging
import threading
import typing as t
from dataclasses import dataclass
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app
from flask import Flask
from flask import has_request_context
from werkzeug.utils import import_string

from .conditions import DEFAULT_CONDITION_TIMEOUT
from .sanitize import DEFAULT_REDACT_HEADERS
from .sanitize import Redactor
from .templating import DEFAULT_TEMPLATE_TIMEOUT
from .templating import MAX_RENDERED_CHARS
from .templating import TemplateLimits

if t.TYPE_CHECKING:
    import huey as huey_mod
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

    from .capture.index import Index
    from .capture.index import IndexCache
    from .capture.writer import OutboxWriter
    from .models import Models
    from .registry import Registry
    from .transport.client import Transport

logger = logging.getLogger(__name__)

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
    "WEBHOOKS_TEMPLATE_TIMEOUT": DEFAULT_TEMPLATE_TIMEOUT,
    "WEBHOOKS_TEMPLATE_MAX_CHARS": MAX_RENDERED_CHARS,
    "WEBHOOKS_CONDITION_TIMEOUT": DEFAULT_CONDITION_TIMEOUT,
    "WEBHOOKS_ENQUEUE_TIMEOUT": 1.0,
    "WEBHOOKS_ADMIN_OPEN": False,
    "WEBHOOKS_REDACT_HEADERS": list(DEFAULT_REDACT_HEADERS),
    "WEBHOOKS_MAX_CLAIMS": 3,
    "WEBHOOKS_PROXIES": None,
    "WEBHOOKS_TRUST_ENV": False,
    "WEBHOOKS_ORDERING": "object",
    "WEBHOOKS_BREAKER_THRESHOLD": None,
    "WEBHOOKS_BREAKER_COOLDOWN": 60.0,
}

#: Values of ``WEBHOOKS_ORDERING``: ``"object"`` sends the deliveries of one
#: webhook for one object in commit order, ``"none"`` as soon as possible.
ORDERINGS = ("object", "none")


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
    template_timeout: float | None = DEFAULT_TEMPLATE_TIMEOUT
    template_max_chars: int = MAX_RENDERED_CHARS
    condition_timeout: float | None = DEFAULT_CONDITION_TIMEOUT
    #: Seconds the enqueue after a commit may wait for a Redis queue.
    enqueue_timeout: float | None = 1.0
    #: Header (and query parameter) names whose values are never stored or shown.
    redact_headers: tuple[str, ...] = DEFAULT_REDACT_HEADERS
    #: Claims without a recorded result after which a delivery is poison.
    max_claims: int = 3
    #: ``WEBHOOKS_PROXIES`` as (key, proxy URL) pairs, in the order given.
    proxies: tuple[tuple[str, str], ...] = ()
    trust_env: bool = False
    ordering: str = "object"
    #: Failed attempts in a row that open a webhook's circuit breaker.
    breaker_threshold: int | None = None
    #: Seconds an open breaker pauses a webhook before one probe attempt.
    breaker_cooldown: float = 60.0

    @property
    def ordered(self) -> bool:
        """Whether deliveries of one object wait for the earlier ones."""
        return self.ordering == "object"

    @functools.cached_property
    def template_limits(self) -> TemplateLimits:
        """The sandbox's limits for every template render of this app."""
        return TemplateLimits(
            timeout=self.template_timeout, max_chars=self.template_max_chars
        )

    @functools.cached_property
    def redactor(self) -> Redactor:
        """Masks credentials in the headers and URLs this app stores and shows."""
        return Redactor(self.redact_headers)

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

        def optional(key: str) -> float | None:
            # A time limit: seconds, or None (or 0) for no limit.
            if not c[key]:
                return None
            return t.cast(float, number(key, float, 0.001))

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
        redact = c["WEBHOOKS_REDACT_HEADERS"]
        if isinstance(redact, str) or not isinstance(redact, t.Iterable):
            raise ValueError(
                f"WEBHOOKS_REDACT_HEADERS must be a list of header names, got {redact!r}"
            )
        redact = tuple(redact)
        Redactor(redact)  # raises for a bad entry, naming the key
        ordering = c["WEBHOOKS_ORDERING"]
        if ordering not in ORDERINGS:
            raise ValueError(
                f"WEBHOOKS_ORDERING must be one of {', '.join(map(repr, ORDERINGS))}, "
                f"got {ordering!r}"
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
            template_timeout=optional("WEBHOOKS_TEMPLATE_TIMEOUT"),
            template_max_chars=number("WEBHOOKS_TEMPLATE_MAX_CHARS", int, 1),
            condition_timeout=optional("WEBHOOKS_CONDITION_TIMEOUT"),
            enqueue_timeout=optional("WEBHOOKS_ENQUEUE_TIMEOUT"),
            redact_headers=redact,
            max_claims=number("WEBHOOKS_MAX_CLAIMS", int, 1),
            proxies=_proxies(c["WEBHOOKS_PROXIES"]),
            trust_env=bool(c["WEBHOOKS_TRUST_ENV"]),
            ordering=ordering,
            breaker_threshold=(
                number("WEBHOOKS_BREAKER_THRESHOLD", int, 1)
                if c["WEBHOOKS_BREAKER_THRESHOLD"]
                else None
            ),
            breaker_cooldown=number("WEBHOOKS_BREAKER_COOLDOWN", float, 0.01),
        )


class WebhooksState:
    """Everything flask-webhooks keeps for one app (``app.extensions["webhooks"]``).

    Built by :meth:`flask_webhooks.Webhooks.init_app`; look it up with
    :func:`get_state`.
    """

    def __init__(
        self,
        app: Flask,
        db: SQLAlchemy,
        models: Models,
        huey: huey_mod.Huey,
        config: Config,
        registry: Registry,
        *,
        index_cache: IndexCache,
        outbox: OutboxWriter,
        make_transport: t.Callable[[], Transport],
    ) -> None:
        self.app = app
        self.db = db
        self.models = models
        self.huey = huey
        self.config = config
        self.registry = registry
        self.index_cache = index_cache
        self.outbox = outbox
        self._make_transport = make_transport
        self._transport_lock = threading.Lock()
        self._transport: Transport | None = None
        #: Set by the delivery stage: ``enqueue(ids, delay=, keys=)``.
        self.enqueue_ids: t.Callable[..., None] | None = None
        #: Set by the worker stage: starts embedded workers if this process
        #: runs them; returns whether they run.
        self.start_workers: t.Callable[[], bool] = lambda: False
        self.deliver_task: t.Any = None
        self.deliver_batch_task: t.Any = None
        self.sweep_task: t.Any = None
        #: Webhook rows the delivery engine read: id -> (updated_at, values).
        self.webhook_cache: dict[t.Any, tuple[t.Any, dict[str, t.Any]]] = {}
        #: The embedded workers (an object with ``wake()``/``stop()``), False
        #: when this process runs none, None until that is decided.
        self.workers: t.Any = None

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
        """The process's transport, built on first use."""
        if self._transport is None:
            with self._transport_lock:
                if self._transport is None:
                    self._transport = self._make_transport()
        return self._transport

    def close_transport(self) -> None:
        """Close the calling thread's pooled HTTP connections, if any."""
        if self._transport is not None:
            self._transport.close()

    def enqueue(
        self,
        ids: t.Iterable[str],
        delay: float | None = None,
        *,
        keys: t.Sequence[t.Hashable] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Hand delivery ids to the queue (after their rows are committed).

        :param keys: the webhook id of each delivery, in the order of ``ids``:
            many deliveries of one webhook then travel as batch tasks.
        :param timeout: give up on a Redis queue after this many seconds
            (the enqueue then raises; the sweep finds the rows later).
        """
        if self.enqueue_ids is None:
            raise RuntimeError("flask-webhooks: the delivery tasks are not registered")
        self.enqueue_ids(ids, delay=delay, keys=keys, timeout=timeout)


def lookup_state(app: Flask | None = None) -> WebhooksState | None:
    """The state of ``app`` (default: the current app), or None if
    flask-webhooks is not set up on it."""
    target = app if app is not None else current_app
    return t.cast("WebhooksState | None", target.extensions.get("webhooks"))


def get_state(app: Flask | None = None) -> WebhooksState:
    """The state of ``app`` (default: the current app).

    :raises RuntimeError: flask-webhooks is not set up on that app.
    """
    state = lookup_state(app)
    if state is None:
        raise RuntimeError(
            "flask-webhooks is not initialised on this app: "
            "Webhooks(app, db=db) or webhooks.init_app(app, db=db)"
        )
    return state


#: Proxy URL schemes requests can use (socks* need PySocks installed).
_PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


def _proxies(value: t.Any) -> tuple[tuple[str, str], ...]:
    """Check ``WEBHOOKS_PROXIES`` (a requests ``proxies`` dict)."""
    if not value:
        return ()
    if not isinstance(value, t.Mapping):
        raise ValueError(
            "WEBHOOKS_PROXIES must be a dict such as "
            "{'http': 'http://proxy:3128', 'https': 'http://proxy:3128'}, "
            f"got {type(value).__name__}"
        )
    pairs: list[tuple[str, str]] = []
    for key, url in value.items():
        if not isinstance(key, str) or not (
            key in ("http", "https", "all")
            or key.startswith(("http://", "https://", "all://"))
        ):
            raise ValueError(
                f"WEBHOOKS_PROXIES: key {key!r} must be 'http', 'https', 'all' "
                "or 'scheme://host' (requests' proxies keys)"
            )
        if not isinstance(url, str):
            raise ValueError(
                f"WEBHOOKS_PROXIES[{key!r}] must be a proxy URL string, "
                f"got {type(url).__name__}"
            )
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(
                f"WEBHOOKS_PROXIES[{key!r}]: invalid proxy URL: {exc}"
            ) from None
        if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
            raise ValueError(
                f"WEBHOOKS_PROXIES[{key!r}]: {_hide_password(url)!r} is not a proxy "
                "URL: it needs a scheme (" + ", ".join(_PROXY_SCHEMES) + ") and a host"
            )
        pairs.append((key, url))
    return tuple(pairs)


def _flask_login_username(app: Flask) -> str | None:
    if getattr(app, "login_manager", None) is None:
        return None
    if not has_request_context():
        return None
    # Imported here: Flask-Login is optional, and only apps that set up a
    # LoginManager get this far.
    from flask_login import current_user

    if not getattr(current_user, "is_authenticated", False):
        return None
    name = getattr(current_user, "username", None)
    if name is None:
        name = current_user.get_id()
    return None if name is None else str(name)
