"""Admin page times with a large delivery log (the charts' aggregate SQL).

Fills the delivery and attempt tables with one ``INSERT ... SELECT`` over
``generate_series`` (a recursive CTE on SQLite): ``--rows`` deliveries spread
evenly over the last ``--days`` days across ``--webhooks`` webhooks (5 %
failed, 2 % retrying in the last day and failed before, the rest succeeded;
one attempt each with a random duration), and times the admin pages through the Flask test client: the
status page (24 hours and 7 days), the webhook list (a sparkline per
webhook) and a webhook's edit page (its chart and last 20 attempts).

The table is filled in two steps: first the deliveries of the last 7 days,
then the older history up to ``--rows``. Both windows hold the same rows at
both steps, so the ratio (page time with the full table over page time with
only the last week) shows whether a page depends on the size of the log or
only on the window it draws. Also the status page without the charts'
indexes over with them. Absolute median times are printed too; with
``--days 7`` every row is in the 7-day window (the worst case: no history to
skip, no ratio).

    python benchmarks/admin_pages.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test

PostgreSQL runs use their own schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flask_webhooks import Webhooks

import benchlib as bl

PAGES = {
    "status_24h": "/admin/webhooks/status/",
    "status_7d": "/admin/webhooks/status/?window=7d",
    "webhook_list": "/admin/webhooks/",
    "webhook_edit": "/admin/webhooks/edit/?id=1",
}
STATS_INDEXES = {
    "ix_webhooks_delivery_stats": (
        "webhooks_delivery",
        "created_at, webhook_id, status",
    ),
    "ix_webhooks_delivery_attempt_started": (
        "webhooks_delivery_attempt",
        "started_at, duration_ms",
    ),
}


def build_app(
    url: str, schema: str | None, webhooks_count: int
) -> tuple[Flask, SQLAlchemy]:
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme

    app = Flask("bench_admin", instance_path=tempfile.mkdtemp(prefix="bench-admin-"))
    app.config.update(
        SECRET_KEY="bench",
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=bl.engine_options(url, schema),
        WEBHOOKS_QUEUE_URL="memory://",
        WEBHOOKS_EMBEDDED_WORKERS=0,
    )
    db = SQLAlchemy(app)

    class Item(db.Model):  # type: ignore[name-defined]
        __tablename__ = "item"
        id = sa.Column(sa.Integer, primary_key=True)

    webhooks = Webhooks(app, db=db)
    webhooks.register(Item)
    with app.app_context():
        db.create_all()
        for i in range(1, webhooks_count + 1):
            db.session.add(
                webhooks.Webhook(
                    name=f"hook-{i}",
                    models=["item"],
                    on_create=True,
                    payload_url="http://127.0.0.1:9/hook",
                    secret="bench",
                )
            )
        db.session.commit()
    admin = Admin(app, name="Bench", theme=Bootstrap4Theme())
    with app.app_context():
        webhooks.init_admin(admin)
    return app, db


def fill(
    db: SQLAlchemy, first: int, last: int, total: int, days: int, hooks: int
) -> None:
    """Deliveries ``first..last`` of ``total`` (spread over ``days``) and one
    attempt each, in one INSERT ... SELECT per table."""
    step = days * 86400 / total
    with db.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(
                f"""
                INSERT INTO webhooks_delivery (id, webhook_id, webhook_name, event, model,
                    object_id, status, attempts, created_at, updated_at, next_attempt_at,
                    body, content_type)
                SELECT md5(i::text)::uuid::text, 1 + mod(i, {hooks}), 'hook-' || (1 + mod(i, {hooks})),
                    'created', 'item', i::text,
                    CASE WHEN mod(i, 20) = 0 THEN 'failed'
                         WHEN mod(i, 50) = 1 AND i * {step} < 86400 THEN 'retrying'
                         WHEN mod(i, 50) = 1 THEN 'failed' ELSE 'succeeded' END,
                    1, ts, ts,
                    CASE WHEN mod(i, 50) = 1 AND i * {step} < 86400
                         THEN ts + interval '1 hour' END,
                    '\\x7b7d'::bytea, 'application/json'
                FROM (SELECT i, (now() AT TIME ZONE 'utc') - make_interval(secs => i * {step})
                      AS ts FROM generate_series({first}, {last}) AS i) AS s
                """
            )
            conn.exec_driver_sql(
                f"""
                INSERT INTO webhooks_delivery_attempt (delivery_id, number, started_at,
                    duration_ms, status_code)
                SELECT md5(i::text)::uuid::text, 1,
                    (now() AT TIME ZONE 'utc') - make_interval(secs => i * {step}),
                    5 + random() * 300, 200
                FROM generate_series({first}, {last}) AS i
                """
            )
        else:
            series = (
                f"WITH RECURSIVE s(i) AS (SELECT {first} UNION ALL "
                f"SELECT i + 1 FROM s WHERE i < {last}) "
            )
            stamp = f"strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (i * {step}) || ' seconds')"
            conn.exec_driver_sql(
                series
                + f"""
                INSERT INTO webhooks_delivery (id, webhook_id, webhook_name, event, model,
                    object_id, status, attempts, created_at, updated_at, next_attempt_at,
                    body, content_type)
                SELECT 'd-' || i, 1 + i % {hooks}, 'hook-' || (1 + i % {hooks}), 'created',
                    'item', i, CASE WHEN i % 20 = 0 THEN 'failed'
                    WHEN i % 50 = 1 AND i * {step} < 86400 THEN 'retrying'
                    WHEN i % 50 = 1 THEN 'failed' ELSE 'succeeded' END, 1, {stamp}, {stamp},
                    NULL, x'7b7d', 'application/json'
                FROM s
                """
            )
            conn.exec_driver_sql(
                series
                + f"""
                INSERT INTO webhooks_delivery_attempt (delivery_id, number, started_at,
                    duration_ms, status_code)
                SELECT 'd-' || i, 1, {stamp}, 5 + abs(random() % 300), 200 FROM s
                """
            )
    analyze(db)


def analyze(db: SQLAlchemy) -> None:
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("VACUUM ANALYZE webhooks_delivery")
            conn.exec_driver_sql("VACUUM ANALYZE webhooks_delivery_attempt")
        else:
            conn.exec_driver_sql("ANALYZE")


def time_pages(
    app: Flask, db: SQLAlchemy, rounds: int, pages: t.Mapping[str, str] = PAGES
) -> dict[str, list[float]]:
    client = app.test_client()
    times: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(rounds + 1):  # the first round warms caches and is dropped
        for name, url in pages.items():
            start = time.perf_counter()
            response = client.get(url)
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}")
            times[name].append(elapsed)
    return {name: values[1:] for name, values in times.items()}


def drop_indexes(db: SQLAlchemy) -> None:
    with db.engine.begin() as conn:
        for name in STATS_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")


def create_indexes(db: SQLAlchemy) -> None:
    with db.engine.begin() as conn:
        for name, (table, columns) in STATS_INDEXES.items():
            conn.exec_driver_sql(f"CREATE INDEX {name} ON {table} ({columns})")
    analyze(db)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--webhooks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="bench-admin-")
    url = args.database_url or bl.sqlite_url(workdir, "admin")
    schema = bl.unique("bench_admin") if bl.is_postgres(url) else None
    if schema:
        bl.create_pg_schema(url, schema)
    info = bl.machine_info(url)
    bl.print_machine(info)
    try:
        app, db = build_app(url, schema, args.webhooks)
        week = min(args.rows, args.rows * 7 // args.days)
        with app.app_context():
            bl.log(f"filling the last 7 days: {week} deliveries ...")
            fill(db, 1, week, args.rows, args.days, args.webhooks)
            db.session.remove()
            small = time_pages(app, db, args.rounds) if week < args.rows else None
            if week < args.rows:
                bl.log(f"filling the older history up to {args.rows} deliveries ...")
                fill(db, week + 1, args.rows, args.rows, args.days, args.webhooks)
            large = time_pages(app, db, args.rounds)
            drop_indexes(db)
            analyze(db)
            status_only = {k: PAGES[k] for k in ("status_24h", "status_7d")}
            unindexed = time_pages(app, db, max(args.rounds // 2, 1), status_only)
            create_indexes(db)
    finally:
        if schema:
            bl.drop_pg_schema(url, schema)
    rows = []
    figures: dict[str, t.Any] = {
        "database": bl.database_name(args.database_url),
        "rows": args.rows,
        "days": args.days,
        "rows_in_7d": week,
    }
    for name in PAGES:
        big_ms = bl.median(large[name]) * 1000
        small_ms = bl.median(small[name]) * 1000 if small else None
        figures[f"{name}_ms"] = big_ms
        figures[f"{name}_ratio"] = big_ms / small_ms if small_ms else None
        rows.append((name, small_ms or "-", big_ms, figures[f"{name}_ratio"] or "-"))
    bl.print_table(
        ("page", f"ms, {week} rows (7 days)", f"ms, {args.rows} rows", "ratio"), rows
    )
    for name in status_only:
        without = bl.median(unindexed[name]) * 1000
        figures[f"{name}_no_index_ratio"] = without / figures[f"{name}_ms"]
        print(
            f"{name} without the charts' indexes: {without:.1f} ms "
            f"({figures[f'{name}_no_index_ratio']:.2f} x)"
        )
    bl.emit_json(figures)


if __name__ == "__main__":
    main()
