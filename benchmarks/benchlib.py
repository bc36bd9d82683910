"""Shared pieces of the benchmark scripts.

A realistic registered model (8 columns, a marshmallow schema), one Flask app +
Flask-SQLAlchemy instance per setup (listeners are attached per ``db.session``
class, so "extension off" must be a separate app and db in the same process),
PostgreSQL schemas so several setups can share one database, the local fast
receiver process, statistics and output helpers.

Every figure the scripts report is a ratio of two things measured in the same
run, alternated over rounds, and the median of those per-round ratios: the
machines are shared and noisy, absolute times are printed for context only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import enum
import json
import os
import platform
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import marshmallow as ma
import requests
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: Logs, profiles and stacks that are not figures (git-ignored).
RESULTS = os.path.join(HERE, "results")
PYTHON = sys.executable
FLASK = os.path.join(os.path.dirname(sys.executable), "flask")

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
#: Secret of every benchmark webhook (and of the raw baseline's signatures).
SECRET = "bench-secret"


# -- the model -----------------------------------------------------------------


class Status(enum.Enum):
    active = "active"
    planned = "planned"
    retired = "retired"


class ItemSchema(ma.Schema):
    """The payload ``data`` of an :func:`define_models` ``Item``."""

    id = ma.fields.Integer()
    name = ma.fields.String()
    slug = ma.fields.String()
    status = ma.fields.Enum(Status, by_value=True)
    serial = ma.fields.String(allow_none=True)
    weight = ma.fields.Decimal(as_string=True, allow_none=True)
    installed = ma.fields.Date(allow_none=True)
    updated = ma.fields.DateTime(allow_none=True)


class BenchModels(t.NamedTuple):
    Item: t.Any
    Tenant: t.Any


def define_models(db: SQLAlchemy) -> BenchModels:
    """An 8-column ``Item`` (the measured model) and a small ``Tenant``."""

    class Tenant(db.Model):  # type: ignore[name-defined]
        __tablename__ = "bench_tenant"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)

    class Item(db.Model):  # type: ignore[name-defined]
        __tablename__ = "bench_item"
        id = sa.Column(sa.Integer, primary_key=True)
        name = sa.Column(sa.String(100), nullable=False)
        slug = sa.Column(sa.String(100), nullable=False)
        status = sa.Column(sa.Enum(Status), nullable=False, default=Status.active)
        serial = sa.Column(sa.String(50))
        weight = sa.Column(sa.Numeric(10, 2))
        installed = sa.Column(sa.Date)
        updated = sa.Column(sa.DateTime(timezone=True))

    return BenchModels(Item, Tenant)


TODAY = dt.date(2026, 1, 15)
NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)


def new_item(Item: t.Any, i: int) -> t.Any:
    """One ``Item`` with every column set, like a form or an import would."""
    return Item(
        name=f"device-{i:06d}",
        slug=f"device-{i:06d}",
        status=Status.active if i % 3 else Status.planned,
        serial=f"SN{i:010d}",
        weight=decimal.Decimal(i % 1000) / 10,
        installed=TODAY,
        updated=NOW,
    )


# -- setups --------------------------------------------------------------------


def is_postgres(url: str) -> bool:
    return url.startswith("postgres")


def engine_options(url: str, schema: str | None) -> dict[str, t.Any]:
    """Engine options that put a PostgreSQL setup in its own schema."""
    if schema and is_postgres(url):
        return {"connect_args": {"options": f"-csearch_path={schema}"}}
    return {}


def create_pg_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine.dispose()


def drop_pg_schema(url: str, schema: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    engine.dispose()


@dataclass
class Setup:
    """One app + db (+ extension) the benchmarks run a workload on."""

    name: str
    app: Flask
    db: SQLAlchemy
    models: BenchModels
    webhooks: Webhooks | None
    database_url: str
    schema: str | None = None
    timings: dict[str, list[float]] = field(default_factory=dict)

    def record(self, key: str, seconds: float) -> None:
        self.timings.setdefault(key, []).append(seconds)

    def clear_outbox(self) -> None:
        """Empty the delivery tables and the queue (between rounds, untimed)."""
        if self.webhooks is None:
            return
        with self.app.app_context():
            wh = self.webhooks
            tables = [
                wh.DeliveryAttempt.__table__,  # type: ignore[attr-defined]
                wh.Delivery.__table__,  # type: ignore[attr-defined]
            ]
            with self.db.engine.begin() as conn:
                if is_postgres(self.database_url):
                    names = ", ".join(tb.name for tb in tables)
                    conn.exec_driver_sql(f"TRUNCATE {names}")
                else:
                    for tb in tables:
                        conn.execute(tb.delete())
            wh.huey.flush()

    def close(self) -> None:
        with self.app.app_context():
            self.db.session.remove()
            if self.webhooks is not None:
                state = self.webhooks.state
                if state.workers:
                    state.workers.stop()
                with contextlib.suppress(Exception):
                    state.huey.flush()
                storage = state.huey.storage
                close = getattr(storage, "close", None)
                if close is not None:
                    close()
            self.db.engine.dispose()
        if self.schema and is_postgres(self.database_url):
            drop_pg_schema(self.database_url, self.schema)


def build_setup(
    name: str,
    *,
    database_url: str,
    workdir: str,
    extension: bool,
    hooks: int = 0,
    other_hook: bool = False,
    queue_url: str = "memory://",
    huey: t.Any = None,
    embedded_workers: int = 0,
    payload_url: str = "http://127.0.0.1:9/hook",
    schema: str | None = None,
    create: bool = True,
    sqlite_wal: bool = False,
    config: dict[str, t.Any] | None = None,
) -> Setup:
    """An app + db with the bench models; the extension on or off.

    :param hooks: matching webhooks (all events on ``item``) to create.
    :param other_hook: create one webhook on another model (``tenant``), so
        the extension has an index to check but nothing listens to ``item``.
    :param database_url: a SQLite URL is used as given (one file per setup);
        for PostgreSQL the setup lives in the schema ``schema``.
    :param sqlite_wal: SQLite tuned for concurrent writers: WAL journaling
        (stored in the file) and ``synchronous=NORMAL`` on every connection
        (no flush to disk at each commit; durable at checkpoints).
    """
    app = Flask(f"bench_{name}", instance_path=os.path.join(workdir, name))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(database_url, schema),
        WEBHOOKS_QUEUE_URL=queue_url,
        WEBHOOKS_EMBEDDED_WORKERS=embedded_workers,
    )
    app.config.update(config or {})
    if schema and is_postgres(database_url) and create:
        create_pg_schema(database_url, schema)
    db = SQLAlchemy(app)
    models = define_models(db)
    wh = None
    if extension:
        wh = Webhooks(app, db=db, huey=huey)
        wh.register(models.Item, schema=ItemSchema, name="item")
        wh.register(models.Tenant, name="tenant")
    with app.app_context():
        if sqlite_wal and db.engine.dialect.name == "sqlite":
            sa.event.listen(db.engine, "connect", _sqlite_wal_pragmas)
        if create:
            db.create_all()
        if wh is not None and create:
            for i in range(hooks):
                db.session.add(
                    wh.Webhook(
                        name=f"item-hook-{i}",
                        models=["item"],
                        on_create=True,
                        on_update=True,
                        on_delete=True,
                        payload_url=payload_url,
                        secret=SECRET,
                    )
                )
            if other_hook:
                db.session.add(
                    wh.Webhook(
                        name="tenant-hook",
                        models=["tenant"],
                        on_create=True,
                        on_update=True,
                        on_delete=True,
                        payload_url=payload_url,
                        secret=SECRET,
                    )
                )
            db.session.commit()
        db.session.remove()
    return Setup(name, app, db, models, wh, database_url, schema)


def _sqlite_wal_pragmas(dbapi_connection: t.Any, record: t.Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def sqlite_url(workdir: str, name: str) -> str:
    return f"sqlite:///{os.path.join(workdir, name + '.sqlite')}"


def setup_url(database_url: str | None, workdir: str, name: str) -> str:
    """The database URL of a setup: a fresh SQLite file unless one was given."""
    if database_url is None:
        return sqlite_url(workdir, name)
    return database_url


def database_name(database_url: str | None) -> str:
    """``postgresql`` or ``sqlite``, for tables and JSON context keys."""
    return "postgresql" if database_url and is_postgres(database_url) else "sqlite"


def queue_url(kind: str, redis_url: str, workdir: str) -> str:
    """The queue of a run: the given Redis, or a SQLite file in ``workdir``."""
    if kind == "redis":
        return redis_url
    return f"sqlite:///{os.path.join(workdir, 'queue.sqlite')}"


def worker_log(name: str) -> str:
    """An empty log file for a worker process, in ``benchmarks/results/``."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    open(path, "wb").close()
    return path


def driver_setup(
    database_url: str,
    workdir: str,
    receiver_url: str,
    queue: str,
    huey_name: str,
    schema: str,
    **options: t.Any,
) -> Setup:
    """The driver's side of a worker benchmark: the extension on, one webhook
    aimed at the receiver, the Huey the worker process will read."""
    return build_setup(
        "driver",
        database_url=database_url,
        workdir=workdir,
        extension=True,
        hooks=1,
        payload_url=receiver_url,
        huey=new_huey(queue, huey_name, workdir),
        schema=schema,
        **options,
    )


# -- statistics and output --------------------------------------------------------


def median(values: t.Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: t.Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 300 values is the 297th smallest)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), -(-len(ordered) * pct // 100)))
    return float(ordered[int(rank) - 1])


def ratios(values: t.Sequence[float], baseline: t.Sequence[float]) -> list[float]:
    """Per-round ratios (round i of ``values`` over round i of ``baseline``)."""
    return [v / b for v, b in zip(values, baseline, strict=True)]


def print_table(headers: t.Sequence[str], rows: t.Iterable[t.Sequence[t.Any]]) -> None:
    text_rows = [[_cell(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h)
        for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in text_rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    sys.stdout.flush()


def _cell(value: t.Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def emit_json(figures: dict[str, t.Any]) -> None:
    """The last line of every script: one JSON object with its figures."""
    rounded = {
        k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()
    }
    print(json.dumps(rounded, sort_keys=False), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_info(
    database_url: str | None = None, redis_url: str | None = None
) -> dict[str, str]:
    """nproc, CPU model, Python, SQLite and (when used) PostgreSQL/Redis versions."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
    }
    if database_url and is_postgres(database_url):
        try:
            engine = sa.create_engine(database_url)
            with engine.connect() as conn:
                info["postgresql"] = str(
                    conn.exec_driver_sql("SHOW server_version").scalar()
                )
            engine.dispose()
        except Exception as e:  # pragma: no cover - informational only
            info["postgresql"] = f"unavailable ({e})"
    if redis_url:
        try:
            import redis

            client = redis.Redis.from_url(redis_url)
            info["redis"] = str(client.info("server")["redis_version"])
            client.close()
        except Exception as e:  # pragma: no cover - informational only
            info["redis"] = f"unavailable ({e})"
    return info


def print_machine(info: dict[str, str]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


# -- the receiver process ----------------------------------------------------------


class ReceiverProcess:
    """``fast_receiver.py`` in its own process, on 127.0.0.1.

    It answers every request ``200 ok`` (keep-alive) and keeps the count and
    the ``time.monotonic()`` of each receipt; this class reads them through
    its control endpoints.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, os.path.join(HERE, "fast_receiver.py")],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.match(r"listening on (\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"receiver did not start: {line!r}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._control = requests.Session()
        self._control.trust_env = False

    def _get(self, path: str, timeout: float = 10.0) -> dict[str, t.Any]:
        r = self._control.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)
        r.raise_for_status()
        return t.cast(dict[str, t.Any], r.json())

    def reset(self) -> None:
        self._get("/__reset")

    def stats(self) -> dict[str, t.Any]:
        """``count``, ``signed``, ``first``, ``last`` (monotonic seconds)."""
        return self._get("/__stats")

    def wait_for(self, count: int, timeout: float = 120.0) -> dict[str, t.Any]:
        """Block until ``count`` requests arrived; return the stats."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"receiver got {self.stats()['count']} of {count} requests"
                )
            wait = min(remaining, 10.0)
            stats = self._get(f"/__wait?count={count}&timeout={wait}", timeout=wait + 5)
            if stats["count"] >= count:
                return stats

    def times(self) -> list[float]:
        return t.cast(list[float], self._get("/__times")["times"])

    def stop(self) -> None:
        self._control.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the worker process ----------------------------------------------------------


def bench_env(
    *,
    database_url: str,
    schema: str | None,
    queue: str,
    huey_name: str,
    sqlite_wal: bool = False,
    sweep_interval: float | None = None,
    ordering: str | None = None,
) -> dict[str, str]:
    """Environment that makes ``bench_app.create_app`` match the driver's app."""
    env = dict(os.environ)
    env.update(
        BENCH_DATABASE_URL=database_url,
        BENCH_SCHEMA=schema or "",
        BENCH_QUEUE=queue,
        BENCH_HUEY_NAME=huey_name,
        BENCH_SQLITE_WAL="1" if sqlite_wal else "",
        BENCH_SWEEP_INTERVAL="" if sweep_interval is None else str(sweep_interval),
        BENCH_ORDERING=ordering or "",
        PYTHONUNBUFFERED="1",
    )
    return env


class WorkerProcess:
    """``flask webhooks worker --workers T`` on ``bench_app``, as a child process."""

    def __init__(
        self,
        env: dict[str, str],
        threads: int,
        log_path: str,
        py_spy: str | None = None,
        profile_path: str | None = None,
    ) -> None:
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                FLASK,
                "--app",
                os.path.join(HERE, "bench_app.py"),
                "webhooks",
                "worker",
                "--workers",
                str(threads),
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.profiler: subprocess.Popen[bytes] | None = None
        if py_spy and profile_path:
            # Sample the running worker (all threads, with idle frames off):
            # collapsed stacks, one line per stack, for flame graphs or grep.
            self.profiler = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(self.proc.pid),
                    "--nonblocking",
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    profile_path,
                ],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the worker in KiB, from /proc (Linux)."""
        rss = hwm = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return rss, hwm

    def cpu_seconds(self) -> float:
        """User + system CPU time the worker process used so far (Linux)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3); utime and stime are fields 14, 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes its output
            self.profiler.wait(30)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Huey's graceful shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def new_huey(queue: str, name: str, instance_path: str) -> t.Any:
    """The Huey of the driver and of the worker: ``sqlite`` (a file) or Redis.

    Built like :func:`flask_webhooks.worker.queue.make_huey` builds it (no result
    store, the same Redis connection options), but with its own name so it
    never shares keys with a test run using the same Redis database.
    """
    import huey
    from flask_webhooks.worker import queue as wq

    # The options flask_webhooks.worker.queue.make_huey uses, with our own name.
    if queue.startswith(("redis://", "rediss://")):
        from redis import ConnectionPool

        options = getattr(wq, "REDIS_OPTIONS", {})
        pool = ConnectionPool.from_url(queue, **options)
        return huey.RedisHuey(name, connection_pool=pool, results=False)
    if queue.startswith("sqlite:///"):
        return huey.SqliteHuey(name, filename=queue[len("sqlite:///") :], results=False)
    raise ValueError(f"unsupported benchmark queue {queue!r}")


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
