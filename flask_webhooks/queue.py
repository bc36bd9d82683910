"""Building the Huey instance from ``WEBHOOKS_QUEUE_URL``."""

from __future__ import annotations

import os
import typing as t
from urllib.parse import urlsplit

import huey

QUEUE_NAME = "flask-webhooks"


def make_huey(url: str | None, instance_path: str) -> huey.Huey:
    """A Huey instance for ``url``.

    * ``immediate://``: tasks run synchronously when enqueued (tests, scripts).
    * ``memory://``: in-process queue; needs embedded workers.
    * ``sqlite:///path``: a SQLite file (relative paths are in the instance
      folder). The default is ``instance/webhooks-queue.sqlite``.
    * ``redis://host:port/db`` (or ``rediss://``): Redis, for scale-out.
    * ``postgresql://...``: Huey's PostgreSQL storage (psycopg 2 style DSN).
    """
    if not url:
        os.makedirs(instance_path, exist_ok=True)
        return huey.SqliteHuey(
            QUEUE_NAME, filename=os.path.join(instance_path, "webhooks-queue.sqlite")
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "immediate":
        return huey.MemoryHuey(QUEUE_NAME, immediate=True)
    if scheme == "memory":
        return huey.MemoryHuey(QUEUE_NAME)
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
        return huey.SqliteHuey(QUEUE_NAME, filename=path)
    if scheme in ("redis", "rediss", "unix"):
        return huey.RedisHuey(QUEUE_NAME, url=url)
    if scheme in ("postgres", "postgresql"):
        return t.cast(huey.Huey, huey.PostgresHuey(QUEUE_NAME, dsn=url))
    raise ValueError(
        f"WEBHOOKS_QUEUE_URL: unsupported scheme {scheme!r} in {redact_url(url)!r} "
        "(expected immediate://, memory://, sqlite:///path, redis://, postgresql://)"
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def backend_name(h: huey.Huey) -> str:
    if h.immediate:
        return "immediate"
    return type(h.storage).__name__.replace("Storage", "").lower()
