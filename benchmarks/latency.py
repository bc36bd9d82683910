"""Commit-to-receipt latency of the worker path, against a raw POST.

A fast receiver runs in its own process on 127.0.0.1 and one worker process
(``flask webhooks worker --workers T`` on ``bench_app.py``) is running. The
events alternate between:

* ``webhooks``: commit one registered object with one matching webhook; the
  latency runs from the call of ``commit()`` to the receiver's receipt;
* ``raw``: one signed POST of a body of the same size from a pooled
  ``requests.Session``; from the call to the receipt.

Both clocks are ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide on Linux),
read in the driver and in the receiver process. Events are spaced by a random
pause (``--gap`` on average) so each finds the worker idle, as a lone change
in an application would. ``p50_ratio`` is the webhooks p50 over the raw p50.
The webhooks latency is also split where the worker's attempt began, after
its claim (``DeliveryAttempt.started_at``).

Usage::

    python benchmarks/latency.py --events 300 --queue redis|sqlite
        [--database-url URL] [--threads 4]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import random
import tempfile
import time
import typing as t

import requests
import sqlalchemy as sa

import benchlib as bl

#: Where the webhooks latency goes: split at the attempt's ``started_at``,
#: which the worker takes after its claim, just before building the request.
QUEUED = "commit returned -> attempt began (enqueue, queue, Huey, claim)"
SENT = "attempt began -> receipt (build, sign, send)"


def breakdown(
    s: bl.Setup,
    commits: dict[str, tuple[float, float]],
    receipts: dict[str, float],
) -> dict[str, list[float]]:
    """Split each webhooks latency where the worker's attempt began.

    ``DeliveryAttempt.started_at`` is the wall-clock time the worker took
    after its claim, before building the request; it is mapped onto the
    monotonic clock with the offset measured here (both processes run on this
    machine).
    """
    assert s.webhooks is not None
    offset = time.time() - time.monotonic()
    D = s.webhooks.Delivery
    A = s.webhooks.DeliveryAttempt
    with s.app.app_context():
        rows = s.db.session.execute(
            sa.select(D.object_id, A.started_at).join(A, A.delivery_id == D.id)
        ).all()
        s.db.session.remove()
    phases: dict[str, list[float]] = {
        "commit() call": [],
        QUEUED: [],
        SENT: [],
    }
    for object_id, started_at in rows:
        if object_id not in receipts:
            continue
        t0, t1 = commits[object_id]
        started = started_at.timestamp() - offset
        phases["commit() call"].append(t1 - t0)
        phases[QUEUED].append(started - t1)
        phases[SENT].append(receipts[object_id] - started)
    return phases


def main(argv: list[str] | None = None) -> dict[str, t.Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300, help="events of each kind")
    parser.add_argument("--queue", choices=("sqlite", "redis"), default="redis")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument(
        "--gap", type=float, default=0.05, help="mean pause between events (s)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--index-ttl",
        type=float,
        default=0.0,
        help="WEBHOOKS_INDEX_TTL of the committing app (default 0: the webhook "
        "index is checked in every commit)",
    )
    args = parser.parse_args(argv)

    info = bl.machine_info(
        args.database_url, args.redis_url if args.queue == "redis" else None
    )
    bl.print_machine(info)
    database = bl.database_name(args.database_url)
    print(
        f"latency: {args.events} events of each kind, {args.queue} queue, "
        f"{database} database, worker with {args.threads} threads"
    )
    rng = random.Random(args.seed)
    latencies: dict[str, list[float]] = {"raw": [], "webhooks": []}
    # webhooks latency from the return of commit() (the rows are committed and
    # the ids enqueued) to the receipt
    from_return: list[float] = []

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as workdir:
        queue = bl.queue_url(args.queue, args.redis_url, workdir)
        huey_name = bl.unique("flask-webhooks-bench")
        url = bl.setup_url(args.database_url, workdir, "latency")
        schema = bl.unique("bench_latency")
        log_path = bl.worker_log("latency_worker.log")
        receiver = bl.ReceiverProcess()
        s = worker = None
        session = requests.Session()
        session.trust_env = False
        try:
            s = bl.driver_setup(
                url,
                workdir,
                receiver.url,
                queue,
                huey_name,
                schema,
                config={"WEBHOOKS_INDEX_TTL": args.index_ttl},
            )
            assert s.webhooks is not None
            env = bl.bench_env(
                database_url=url, schema=schema, queue=queue, huey_name=huey_name
            )
            worker = bl.WorkerProcess(env, args.threads, log_path)
            Item = s.models.Item
            received = 0

            # object id -> (commit called, commit returned), monotonic seconds
            commits: dict[str, tuple[float, float]] = {}

            def commit_one(i: int) -> float:
                with s.app.app_context():
                    item = bl.new_item(Item, i)
                    s.db.session.add(item)
                    t0 = time.monotonic()
                    s.db.session.commit()
                    t1 = time.monotonic()
                    object_id = str(sa.inspect(item).identity[0])
                    s.db.session.remove()
                commits[object_id] = (t0, t1)
                return t0

            # Warm-up: the worker is up, its connections and the index are warm.
            for i in range(5):
                commit_one(i)
            received += 5
            receiver.wait_for(received, timeout=60)
            with s.app.app_context():
                D = s.webhooks.Delivery
                body = bytes(s.db.session.scalars(sa.select(D.body).limit(1)).one())
                s.db.session.remove()
            key = bl.SECRET.encode("utf-8")

            def post_one(i: int) -> float:
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "flask-webhooks-bench/raw",
                    "X-Webhook-ID": f"raw-{i}",
                    "X-Webhook-Attempt": "1",
                }
                t0 = time.monotonic()
                headers["X-Hook-Signature"] = hmac.new(
                    key, body, hashlib.sha512
                ).hexdigest()
                r = session.post(
                    receiver.url,
                    data=body,
                    headers=headers,
                    timeout=(5, 10),
                    allow_redirects=False,
                )
                if r.status_code != 200:
                    raise RuntimeError(f"raw POST: HTTP {r.status_code}")
                return t0

            post_one(0)  # opens the pooled connection
            received += 1
            receiver.wait_for(received)

            receipts: dict[str, float] = {}
            for i in range(args.events):
                order = ["raw", "webhooks"] if i % 2 == 0 else ["webhooks", "raw"]
                for kind in order:
                    time.sleep(rng.uniform(0, 2 * args.gap))
                    t0 = post_one(i + 1) if kind == "raw" else commit_one(100 + i)
                    received += 1
                    stats = receiver.wait_for(received, timeout=60)
                    latencies[kind].append(stats["last"] - t0)
                    if kind == "webhooks":
                        object_id = next(reversed(commits))
                        receipts[object_id] = stats["last"]
                        from_return.append(stats["last"] - commits[object_id][1])
                if (i + 1) % 50 == 0:
                    bl.log(f"{i + 1}/{args.events} events")
            phases = breakdown(s, commits, receipts)
        finally:
            session.close()
            if worker is not None:
                worker.stop()
            if s is not None:
                s.close()
            receiver.stop()

    rows = []
    for kind in ("raw", "webhooks"):
        values = latencies[kind]
        rows.append(
            [
                kind,
                1000 * bl.percentile(values, 50),
                1000 * bl.percentile(values, 90),
                1000 * bl.percentile(values, 99),
                1000 * max(values),
            ]
        )
    print()
    bl.print_table(["path", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
    print("\nwhere the webhooks latency goes (medians):")
    bl.print_table(
        ["phase", "p50 ms", "p90 ms"],
        [
            [name, 1000 * bl.percentile(v, 50), 1000 * bl.percentile(v, 90)]
            for name, v in phases.items()
        ],
    )
    p50 = bl.percentile(latencies["webhooks"], 50)
    raw_p50 = bl.percentile(latencies["raw"], 50)
    result = {
        "p50_ms": 1000 * p50,
        "p99_ms": 1000 * bl.percentile(latencies["webhooks"], 99),
        "raw_p50_ms": 1000 * raw_p50,
        "p50_ratio": p50 / raw_p50,
        "p50_from_return_ms": 1000 * bl.percentile(from_return, 50),
        "queue": args.queue,
        "database": database,
        "events": args.events,
        "index_ttl": args.index_ttl,
    }
    print()
    bl.emit_json(result)
    return result


if __name__ == "__main__":
    main()
