"""Helpers for tests that run real worker processes.

A :class:`Stack` is one database + one queue shared by the test process (which
commits events) and any number of ``flask --app tests.worker_app webhooks
worker`` processes (which deliver them). Settings travel to the workers in the
``WORKER_SETTINGS`` environment variable.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from flask import Flask
from flask_webhooks.worker.sweeper import heartbeats

from tests.worker_app import create_app

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(
    predicate: t.Callable[[], t.Any], timeout: float, what: str, interval: float = 0.05
) -> t.Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def pg_schema(database_url: str) -> t.Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards (the database is shared)."""
    schema = f"fw_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        yield schema
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


@dataclass
class Stack:
    settings: dict[str, t.Any]
    app: Flask
    log_dir: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ext(self) -> dict[str, t.Any]:
        return t.cast(dict[str, t.Any], self.app.extensions["worker_app"])

    @property
    def state(self) -> t.Any:
        return self.app.extensions["webhooks"]

    def add_hook(self, url: str, **fields: t.Any) -> int:
        with self.app.app_context():
            db = self.ext["db"]
            hook = self.ext["webhooks"].Webhook(
                name=fields.pop("name", f"hook-{uuid.uuid4().hex[:6]}"),
                models=["item"],
                on_create=True,
                on_update=True,
                on_delete=True,
                payload_url=url,
                secret="s3cret",
                **fields,
            )
            db.session.add(hook)
            db.session.commit()
            return int(hook.id)

    def commit_items(self, count: int) -> list[str]:
        """Create ``count`` items in one transaction; return the new delivery ids."""
        with self.app.app_context():
            db = self.ext["db"]
            Item = self.ext["Item"]
            D = self.state.models.Delivery
            before = set(db.session.scalars(sa.select(D.id)))
            db.session.add_all(Item(name=f"item-{i}") for i in range(count))
            db.session.commit()
            ids = [i for i in db.session.scalars(sa.select(D.id)) if i not in before]
            db.session.remove()
            return ids

    def statuses(self) -> collections.Counter[str]:
        D = self.state.models.Delivery.__table__
        with self.app.app_context(), self.state.engine().connect() as conn:
            return collections.Counter(
                dict(
                    conn.execute(
                        sa.select(D.c.status, sa.func.count()).group_by(D.c.status)
                    ).all()
                )
            )

    def rows(self) -> dict[str, t.Any]:
        D = self.state.models.Delivery.__table__
        with self.app.app_context(), self.state.engine().connect() as conn:
            return {r.id: r for r in conn.execute(sa.select(D))}

    def wait_all(self, status: str, count: int, timeout: float) -> None:
        wait_until(
            lambda: self.statuses().get(status, 0) >= count,
            timeout,
            f"{count} deliveries {status} (now {dict(self.statuses())})",
            interval=0.2,
        )

    def start_worker(self, *args: str, threads: int = 4) -> subprocess.Popen[bytes]:
        """Start ``flask webhooks worker`` and wait for its first heartbeat."""
        index = len(self.workers)
        env = dict(os.environ, WORKER_SETTINGS=json.dumps(self.settings))
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        log = open(os.path.join(self.log_dir, f"worker-{index}.log"), "wb")  # noqa: SIM115
        with log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flask",
                    "--app",
                    "tests.worker_app",
                    "webhooks",
                    "worker",
                    "--workers",
                    str(threads),
                    *args,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(proc)
        wait_until(
            lambda: proc.poll() is not None or self.beating(proc.pid),
            30,
            f"worker {proc.pid} to start",
        )
        assert proc.poll() is None, self.log(index)
        return proc

    def beating(self, pid: int) -> bool:
        with self.app.app_context():
            try:
                return any(b.get("pid") == pid for b in heartbeats(self.state))
            except Exception:
                return False

    def log(self, index: int) -> str:
        with open(os.path.join(self.log_dir, f"worker-{index}.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop_workers()
        with self.app.app_context():
            self.ext["db"].session.remove()
            storage = self.state.huey.storage
            if hasattr(storage, "pool"):
                storage.pool.disconnect()
            elif hasattr(storage, "close"):
                storage.close()
            self.ext["db"].engine.dispose()


def make_stack(
    tmp_path: t.Any,
    *,
    database_url: str,
    queue_url: str | None,
    schema: str | None = None,
    config: dict[str, t.Any] | None = None,
) -> Stack:
    """Build the test-side app on a fresh database and queue."""
    settings: dict[str, t.Any] = {
        "database_url": database_url,
        "queue_url": queue_url,
        "schema": schema,
        "instance_path": str(tmp_path / "instance"),
        "config": {
            "WEBHOOKS_TIMEOUT": 2,
            "WEBHOOKS_CONNECT_TIMEOUT": 1,
            "WEBHOOKS_LEASE_MARGIN": 1,
            "WEBHOOKS_SWEEP_INTERVAL": 1,
            "WEBHOOKS_RETRY_SCHEDULE": [0.2, 0.2, 0.2],
            **(config or {}),
        },
    }
    app = create_app(settings)
    with app.app_context():
        app.extensions["worker_app"]["db"].create_all()
    return Stack(settings, app, str(tmp_path))


@contextlib.contextmanager
def open_stack(
    tmp_path: t.Any, queue_url: str | None, config: dict[str, t.Any] | None = None
) -> t.Iterator[Stack]:
    """PostgreSQL (in a schema of its own) when ``WEBHOOKS_TEST_DATABASE_URL``
    is set, else a SQLite file; and the given queue."""
    pg_url = os.environ.get("WEBHOOKS_TEST_DATABASE_URL")
    with contextlib.ExitStack() as cleanup:
        if pg_url:
            schema: str | None = cleanup.enter_context(pg_schema(pg_url))
            database_url = pg_url
        else:
            schema = None
            database_url = f"sqlite:///{tmp_path / 'app.sqlite'}"
        stack = make_stack(
            tmp_path,
            database_url=database_url,
            queue_url=queue_url,
            schema=schema,
            config=config,
        )
        try:
            yield stack
        finally:
            stack.close()
