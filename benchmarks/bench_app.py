"""The app a benchmark worker process loads.

``flask --app benchmarks/bench_app.py webhooks worker --workers 4`` builds the
same app as the driver script (models, registration, database, queue) from
environment variables set by :func:`benchlib.bench_env`:

``BENCH_DATABASE_URL``, ``BENCH_SCHEMA`` (PostgreSQL schema, may be empty),
``BENCH_QUEUE`` (``sqlite:///path`` or ``redis://...``), ``BENCH_HUEY_NAME``,
``BENCH_SQLITE_WAL`` (non-empty: WAL and ``synchronous=NORMAL``),
``BENCH_SWEEP_INTERVAL`` (``WEBHOOKS_SWEEP_INTERVAL`` of the worker, if set),
``BENCH_ORDERING`` (``WEBHOOKS_ORDERING`` of the worker, if set).

Tables and webhooks are created by the driver; this module only connects.
"""

from __future__ import annotations

import os
import sys
import tempfile

from flask import Flask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchlib as bl


def create_app() -> Flask:
    url = os.environ["BENCH_DATABASE_URL"]
    workdir = tempfile.mkdtemp(prefix="bench-worker-")
    huey = bl.new_huey(
        os.environ["BENCH_QUEUE"], os.environ["BENCH_HUEY_NAME"], workdir
    )
    setup = bl.build_setup(
        "worker",
        database_url=url,
        workdir=workdir,
        extension=True,
        huey=huey,
        schema=os.environ.get("BENCH_SCHEMA") or None,
        create=False,
        sqlite_wal=bool(os.environ.get("BENCH_SQLITE_WAL")),
        config=_config(),
    )
    return setup.app


def _config() -> dict[str, object]:
    config: dict[str, object] = {}
    if os.environ.get("BENCH_SWEEP_INTERVAL"):
        config["WEBHOOKS_SWEEP_INTERVAL"] = float(os.environ["BENCH_SWEEP_INTERVAL"])
    if os.environ.get("BENCH_ORDERING"):
        config["WEBHOOKS_ORDERING"] = os.environ["BENCH_ORDERING"]
    return config


def _install_snapshot_signal(prefix: str) -> None:
    """On SIGUSR2, write a tracemalloc snapshot to ``prefix-N.snap``.

    For leak hunting (``memory.py --tracemalloc``): the worker runs with
    ``PYTHONTRACEMALLOC`` set, the driver signals it at chosen points and
    compares the snapshots.
    """
    import itertools
    import signal
    import tracemalloc

    counter = itertools.count(1)

    def dump(signum: int, frame: object) -> None:
        tracemalloc.take_snapshot().dump(f"{prefix}-{next(counter)}.snap")

    signal.signal(signal.SIGUSR2, dump)


app = create_app()
if os.environ.get("BENCH_SNAPSHOT_PREFIX"):
    _install_snapshot_signal(os.environ["BENCH_SNAPSHOT_PREFIX"])
