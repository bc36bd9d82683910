"""The app a benchmark worker process loads.

``flask --app benchmarks/bench_app.py webhooks worker --workers 4`` builds the
same app as the driver script (models, registration, database, queue) from
environment variables set by :func:`benchlib.bench_env`:

``BENCH_DATABASE_URL``, ``BENCH_SCHEMA`` (PostgreSQL schema, may be empty),
``BENCH_QUEUE`` (``sqlite:///path`` or ``redis://...``), ``BENCH_HUEY_NAME``,
``BENCH_SQLITE_WAL`` (non-empty: WAL and ``synchronous=NORMAL``).

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
    )
    return setup.app


app = create_app()
