"""Building the Huey instance from ``WEBHOOKS_QUEUE_URL``, and batch enqueue."""

from __future__ import annotations

import importlib
import os
import typing as t
import weakref
from urllib.parse import urlsplit

import huey
from huey import signals as huey_signals
from huey.storage import RedisStorage
from huey.storage import SqliteStorage

from ..sanitize import mask_url
from .serializer import JSONSerializer

QUEUE_NAME = "flask-webhooks"

#: Socket settings for Redis connections (a ``redis://`` URL's query string
#: overrides them): a dead server is noticed instead of blocking forever.
REDIS_OPTIONS: dict[str, t.Any] = {
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
    "socket_keepalive": True,
    "health_check_interval": 30,
}

#: Task messages per ``LPUSH`` / ``INSERT`` when enqueueing many ids.
BATCH = 1000


def make_huey(url: str | None, instance_path: str) -> huey.Huey:
    """A Huey instance for ``url``.

    * ``immediate://``: tasks run synchronously when enqueued (tests, scripts).
    * ``memory://``: in-process queue; needs embedded workers.
    * ``sqlite:///path``: a SQLite file (relative paths are in the instance
      folder). The default is ``instance/webhooks-queue.sqlite``.
    * ``redis://host:port/db`` (or ``rediss://``, ``unix://``): Redis, for
      scale-out (the ``redis`` extra).
    * ``postgresql://...``: Huey's PostgreSQL storage (psycopg 3, the
      ``postgres`` extra). A SQLAlchemy-style ``postgresql+psycopg://`` URL
      is accepted too.

    :raises ModuleNotFoundError: the URL's client library is missing; the
        message names the extra that installs it.

    Task results are not stored (``results=False``): nothing reads them, and
    a result store would grow with every delivery. Messages are JSON
    (:class:`~flask_webhooks.worker.serializer.JSONSerializer`), never pickles:
    whoever can write to the queue cannot run code in the workers.
    """
    options: dict[str, t.Any] = {"results": False, "serializer": JSONSerializer()}
    if not url:
        os.makedirs(instance_path, exist_ok=True)
        return huey.SqliteHuey(
            QUEUE_NAME,
            filename=os.path.join(instance_path, "webhooks-queue.sqlite"),
            **options,
        )
    scheme = urlsplit(url).scheme.lower()
    base = scheme.split("+", 1)[0]
    if scheme == "immediate":
        return huey.MemoryHuey(QUEUE_NAME, immediate=True, **options)
    if scheme == "memory":
        return huey.MemoryHuey(QUEUE_NAME, **options)
    if scheme == "sqlite":
        path = url.split("://", 1)[1]
        path = path[1:] if path.startswith("/") else path
        if path in ("", ":memory:"):
            raise ValueError(
                "WEBHOOKS_QUEUE_URL: an in-memory SQLite queue is not shared "
                "between threads; use memory:// instead"
            )
        if not os.path.isabs(path):
            os.makedirs(instance_path, exist_ok=True)
            path = os.path.join(instance_path, path)
        return huey.SqliteHuey(QUEUE_NAME, filename=path, **options)
    if scheme in ("redis", "rediss", "unix"):
        _require("redis", "redis", url)
        from redis import ConnectionPool

        sockets = dict(REDIS_OPTIONS)
        if scheme == "unix":
            sockets.pop("socket_keepalive")
        pool = ConnectionPool.from_url(url, **sockets)
        return huey.RedisHuey(QUEUE_NAME, connection_pool=pool, **options)
    if base in ("postgres", "postgresql"):
        _require("psycopg", "postgres", url)
        dsn = "postgresql" + url[len(scheme) :]
        return t.cast(huey.Huey, huey.PostgresHuey(QUEUE_NAME, dsn=dsn, **options))
    raise ValueError(
        f"WEBHOOKS_QUEUE_URL: unsupported scheme {scheme!r} in {redact_url(url)!r} "
        "(expected immediate://, memory://, sqlite:///path, redis://, postgresql://)"
    )


def _require(module: str, extra: str, url: str) -> None:
    """Import ``module``, which the queue ``url`` needs, or say which extra
    installs it."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"WEBHOOKS_QUEUE_URL {redact_url(url)!r} needs the {module!r} package, "
            f'which is not installed: pip install "flask-webhooks[{extra}]"',
            name=module,
        ) from e


def enqueue_many(
    h: huey.Huey, tasks: t.Sequence[t.Any], *, timeout: float | None = None
) -> None:
    """Put ``tasks`` (Huey task instances) on the queue with few round trips.

    Redis: one ``LPUSH`` per :data:`BATCH` messages (FIFO order is kept).
    SQLite: one transaction per batch. Other backends and immediate mode: one
    ``enqueue`` per task.

    :param timeout: Redis: give up after this many seconds (connect, send and
        answer each), through a connection of its own with no retries,
        instead of the queue's longer socket timeouts. The caller handles the
        error (the outbox and the sweep recover what was not enqueued).
    """
    storage = h.storage
    redis_list = type(storage) is RedisStorage and not storage.priority
    fast = timeout is not None and redis_list and not h.immediate
    if not fast and (h.immediate or len(tasks) < 2):
        for task in tasks:
            h.enqueue(task)
        return
    batched = redis_list or type(storage) is SqliteStorage
    if not batched:
        for task in tasks:
            h.enqueue(task)
        return
    for start in range(0, len(tasks), BATCH):
        chunk = tasks[start : start + BATCH]
        for task in chunk:
            h._emit(huey_signals.SIGNAL_ENQUEUED, task)
        messages = [h.serialize_task(task) for task in chunk]
        if isinstance(storage, RedisStorage):
            conn = _enqueue_client(storage, timeout) if fast else storage.conn
            # LPUSH a b c stores [c, b, a]; BRPOP takes a first: FIFO.
            conn.lpush(storage.queue_key, *messages)
        else:
            with storage.db(commit=True) as cursor:
                cursor.executemany(
                    "insert into task (queue, data, priority) values (?, ?, ?)",
                    [(storage.name, storage.to_blob(msg), 0) for msg in messages],
                )


_enqueue_clients: weakref.WeakKeyDictionary[RedisStorage, tuple[float, t.Any]] = (
    weakref.WeakKeyDictionary()
)


def _enqueue_client(storage: RedisStorage, timeout: t.Any) -> t.Any:
    """A Redis client to ``storage``'s server whose every wait (connect,
    send, answer) ends after ``timeout`` seconds, without retries.

    Built once per storage from its pool's connection settings, so it works
    for a Huey passed to ``init_app`` too; the workers' own connections (and
    their blocking reads) keep the queue's timeouts.
    """
    found = _enqueue_clients.get(storage)
    if found is not None and found[0] == timeout:
        return found[1]
    from redis import ConnectionPool
    from redis import Redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = storage.conn.connection_pool
    options = dict(pool.connection_kwargs)
    options.pop("retry_on_error", None)
    connect = options.get("socket_connect_timeout")
    options.update(
        socket_timeout=timeout,
        socket_connect_timeout=min(connect, timeout) if connect else timeout,
        retry_on_timeout=False,
        retry=Retry(NoBackoff(), 0),
    )
    client = Redis(
        connection_pool=ConnectionPool(
            connection_class=pool.connection_class, **options
        )
    )
    _enqueue_clients[storage] = (timeout, client)
    return client


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return mask_url(url)


def backend_name(h: huey.Huey) -> str:
    """``immediate``, ``memory``, ``sqlite``, ``redis``, ``postgres``, ..."""
    if h.immediate:
        return "immediate"
    return type(h.storage).__name__.replace("Storage", "").lower()


def is_blocking(h: huey.Huey) -> bool:
    """Whether the backend's dequeue blocks (Redis, PostgreSQL) or is polled."""
    return bool(getattr(h.storage, "blocking", False))
