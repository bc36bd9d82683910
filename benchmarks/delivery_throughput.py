"""Delivery throughput: the worker path against a raw ``requests`` loop.

A fast receiver runs in its own process on 127.0.0.1 (``fast_receiver.py``).
Each round commits N registered objects with one matching webhook (N
committed deliveries in the queue, no worker running yet), then, in an order
that alternates between rounds:

* ``raw``: T threads, one ``requests.Session`` each, POST the same N bodies
  with the same signature work (HMAC-SHA512 hex in ``X-Hook-Signature``);
* ``webhooks``: one worker process, ``flask webhooks worker --workers T`` on
  ``bench_app.py``, drains the N deliveries (claim, send, record).

Throughput is measured at the receiver: (N - 1) / (last receipt - first
receipt), so process start-up is not counted. ``ratio`` is the median over
rounds of webhooks / raw in the same round. The script checks that every
delivery ended ``succeeded`` and that every request was signed.

With ``--ordering`` the worker is compared with itself instead:
``WEBHOOKS_ORDERING = "object"`` against ``"none"`` (alternating), on two
workloads of N deliveries each: N distinct objects (one commit), and N / 10
objects with 10 events each (a commit creating them, then 9 commits
updating every one). ``ordered_ratio`` and ``per_object_ratio`` are the
medians of ordered / unordered in the same round.

Usage::

    python benchmarks/delivery_throughput.py --deliveries 2000 --queue sqlite|redis
        [--database-url URL] [--threads 4] [--rounds 3] [--ordering]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import tempfile
import threading
import time
import typing as t

import requests
import sqlalchemy as sa

import benchlib as bl


def commit_items(s: bl.Setup, n: int, start: int) -> None:
    with s.app.app_context():
        s.db.session.add_all([bl.new_item(s.models.Item, start + i) for i in range(n)])
        s.db.session.commit()
        s.db.session.remove()


def commit_per_object(s: bl.Setup, n: int, start: int, events: int) -> None:
    """``n`` deliveries: ``n // events`` objects created in one commit, then
    updated ``events - 1`` times, each time all of them in one commit."""
    with s.app.app_context():
        session = s.db.session
        items = [bl.new_item(s.models.Item, start + i) for i in range(n // events)]
        session.add_all(items)
        session.commit()
        for k in range(1, events):
            for item in items:
                item.serial = f"SN{start + k:06d}-{k}"
            session.commit()
        session.remove()


def pending(s: bl.Setup) -> list[tuple[str, bytes]]:
    """(id, body) of the deliveries waiting in the outbox."""
    assert s.webhooks is not None
    with s.app.app_context():
        D = s.webhooks.Delivery
        rows = s.db.session.execute(
            sa.select(D.id, D.body).where(D.status == "pending")
        ).all()
        s.db.session.remove()
    return [(r[0], bytes(r[1])) for r in rows]


def count_status(s: bl.Setup, status: str) -> int:
    assert s.webhooks is not None
    with s.app.app_context():
        D = s.webhooks.Delivery
        n = s.db.session.scalar(
            sa.select(sa.func.count()).select_from(D).where(D.status == status)
        )
        s.db.session.remove()
    return int(n or 0)


def raw_send(url: str, items: list[tuple[str, bytes]], threads: int) -> None:
    """POST every body once from ``threads`` threads, signed like a delivery."""
    errors: list[str] = []
    key = bl.SECRET.encode("utf-8")

    def run(part: list[tuple[str, bytes]]) -> None:
        with requests.Session() as session:
            session.trust_env = False
            for delivery_id, body in part:
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "flask-webhooks-bench/raw",
                    "X-Webhook-ID": delivery_id,
                    "X-Webhook-Attempt": "1",
                    "X-Hook-Signature": hmac.new(key, body, hashlib.sha512).hexdigest(),
                }
                r = session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=(5, 10),
                    allow_redirects=False,
                )
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}")

    workers = [
        threading.Thread(target=run, args=(items[i::threads],)) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"raw loop: {len(errors)} failed requests: {errors[:3]}")


def rate(stats: dict[str, t.Any]) -> float:
    span = stats["last"] - stats["first"]
    return float((stats["count"] - 1) / span) if span > 0 else float("inf")


def run_raw(
    receiver: bl.ReceiverProcess, items: list[tuple[str, bytes]], threads: int
) -> tuple[float, float]:
    """(deliveries/s, CPU seconds the sending process used per request)."""
    receiver.reset()
    cpu0 = time.process_time()
    raw_send(receiver.url, items, threads)
    cpu = time.process_time() - cpu0
    stats = receiver.wait_for(len(items))
    if stats["signed"] != len(items):
        raise AssertionError(f"raw: {stats['signed']} of {len(items)} requests signed")
    return rate(stats), cpu / len(items)


def run_worker(
    s: bl.Setup,
    receiver: bl.ReceiverProcess,
    env: dict[str, str],
    n: int,
    threads: int,
    log_path: str,
    timeout: float,
    py_spy: str | None = None,
    profile_path: str | None = None,
) -> tuple[float, float]:
    """(deliveries/s, CPU seconds the worker process used per delivery).

    The worker's CPU includes its start-up (imports, app creation), read
    before the first delivery arrives and subtracted.
    """
    receiver.reset()
    worker = bl.WorkerProcess(env, threads, log_path, py_spy, profile_path)
    try:
        receiver.wait_for(1, timeout=timeout)
        cpu0 = worker.cpu_seconds()
        stats = receiver.wait_for(n, timeout=timeout)
        deadline = time.monotonic() + 30
        while count_status(s, "succeeded") < n and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = worker.cpu_seconds() - cpu0
    finally:
        worker.stop()
    done = count_status(s, "succeeded")
    if done != n or stats["count"] != n or stats["signed"] != n:
        raise AssertionError(
            f"worker: {done} succeeded, {stats['count']} received, "
            f"{stats['signed']} signed, expected {n} (log: {log_path})"
        )
    return rate(stats), cpu / (n - 1)


#: Events per object in the ``--ordering`` per-object workload.
EVENTS_PER_OBJECT = 10


def main_ordering(args: argparse.Namespace, database: str) -> dict[str, t.Any]:
    """``--ordering``: the worker's own setup, ordered and unordered."""
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as workdir:
        queue = bl.queue_url(args.queue, args.redis_url, workdir)
        huey_name = bl.unique("flask-webhooks-bench")
        url = bl.setup_url(args.database_url, workdir, "delivery")
        schema = bl.unique("bench_delivery")
        receiver = bl.ReceiverProcess()
        s = None
        try:
            s = bl.driver_setup(
                url,
                workdir,
                receiver.url,
                queue,
                huey_name,
                schema,
                sqlite_wal=args.sqlite_wal,
            )
            envs = {
                mode: bl.bench_env(
                    database_url=url,
                    schema=schema,
                    queue=queue,
                    huey_name=huey_name,
                    sqlite_wal=args.sqlite_wal,
                    ordering=mode,
                )
                for mode in ("none", "object")
            }
            result = run_ordering(s, receiver, envs, args)
        finally:
            if s is not None:
                s.close()
            receiver.stop()
    result.update(
        threads=args.threads,
        queue=args.queue,
        database=database
        + ("-wal" if args.sqlite_wal and database == "sqlite" else ""),
        deliveries=args.deliveries,
    )
    print()
    bl.emit_json(result)
    return result


def run_ordering(
    s: bl.Setup,
    receiver: bl.ReceiverProcess,
    envs: dict[str, dict[str, str]],
    args: argparse.Namespace,
) -> dict[str, t.Any]:
    """Ordered against unordered workers, per workload; see the module doc."""
    n, threads = args.deliveries, args.threads
    log_path = bl.worker_log("delivery_worker.log")
    rates: dict[tuple[str, str], list[float]] = {}
    start = 0
    for rnd in range(args.rounds):
        for workload in ("distinct", "per_object"):
            modes = ["none", "object"] if rnd % 2 == 0 else ["object", "none"]
            for mode in modes:
                s.clear_outbox()
                start += n
                if workload == "distinct":
                    commit_items(s, n, start)
                else:
                    commit_per_object(s, n, start, EVENTS_PER_OBJECT)
                if len(pending(s)) != n:
                    raise AssertionError(f"expected {n} pending deliveries")
                value, _ = run_worker(
                    s, receiver, envs[mode], n, threads, log_path, args.timeout
                )
                rates.setdefault((workload, mode), []).append(value)
                bl.log(
                    f"round {rnd + 1}/{args.rounds} {workload} ordering={mode}: "
                    f"{value:.0f} deliveries/s"
                )
    ratio = {
        w: bl.ratios(rates[(w, "object")], rates[(w, "none")])
        for w in ("distinct", "per_object")
    }
    print()
    bl.print_table(
        [
            "round",
            "distinct none /s",
            "distinct object /s",
            "ratio",
            "10/object none /s",
            "10/object object /s",
            "ratio",
        ],
        [
            [
                i + 1,
                rates[("distinct", "none")][i],
                rates[("distinct", "object")][i],
                ratio["distinct"][i],
                rates[("per_object", "none")][i],
                rates[("per_object", "object")][i],
                ratio["per_object"][i],
            ]
            for i in range(args.rounds)
        ],
    )
    return {
        "unordered_rps": bl.median(rates[("distinct", "none")]),
        "ordered_rps": bl.median(rates[("distinct", "object")]),
        "ordered_ratio": bl.median(ratio["distinct"]),
        "per_object_unordered_rps": bl.median(rates[("per_object", "none")]),
        "per_object_ordered_rps": bl.median(rates[("per_object", "object")]),
        "per_object_ratio": bl.median(ratio["per_object"]),
        "events_per_object": EVENTS_PER_OBJECT,
    }


def main(argv: list[str] | None = None) -> dict[str, t.Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--queue", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker round")
    parser.add_argument(
        "--ordering",
        action="store_true",
        help='compare WEBHOOKS_ORDERING "object" with "none" (distinct objects, '
        "and 10 events per object) instead of the worker with a raw loop",
    )
    parser.add_argument(
        "--sqlite-wal",
        action="store_true",
        help="SQLite application database with journal_mode=WAL and "
        "synchronous=NORMAL (default: SQLite's rollback journal and full "
        "synchronous, what an app gets unless it sets the pragmas)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="sample the worker with this py-spy binary in the last round "
        "(collapsed stacks in benchmarks/results/; summarise with profile_summary.py)",
    )
    args = parser.parse_args(argv)
    n, threads = args.deliveries, args.threads

    info = bl.machine_info(
        args.database_url, args.redis_url if args.queue == "redis" else None
    )
    bl.print_machine(info)
    database = bl.database_name(args.database_url)
    print(
        f"delivery throughput: {n} deliveries, {threads} threads, "
        f"{args.queue} queue, {database} database"
        f"{' (WAL)' if args.sqlite_wal and database == 'sqlite' else ''}, "
        f"{args.rounds} rounds"
        f"{', ordering object vs none' if args.ordering else ''}"
    )
    if args.ordering:
        return main_ordering(args, database)

    results: dict[str, list[float]] = {"raw": [], "webhooks": []}
    cpu: dict[str, list[float]] = {"raw": [], "webhooks": []}
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as workdir:
        queue = bl.queue_url(args.queue, args.redis_url, workdir)
        huey_name = bl.unique("flask-webhooks-bench")
        url = bl.setup_url(args.database_url, workdir, "delivery")
        schema = bl.unique("bench_delivery")
        receiver = bl.ReceiverProcess()
        s = None
        try:
            s = bl.driver_setup(
                url,
                workdir,
                receiver.url,
                queue,
                huey_name,
                schema,
                sqlite_wal=args.sqlite_wal,
            )
            assert s.webhooks is not None
            env = bl.bench_env(
                database_url=url,
                schema=schema,
                queue=queue,
                huey_name=huey_name,
                sqlite_wal=args.sqlite_wal,
            )
            log_path = bl.worker_log("delivery_worker.log")
            for rnd in range(args.rounds):
                s.clear_outbox()
                commit_items(s, n, rnd * n)
                items = pending(s)
                if len(items) != n:
                    raise AssertionError(
                        f"expected {n} pending deliveries, got {len(items)}"
                    )
                order = ["raw", "webhooks"] if rnd % 2 == 0 else ["webhooks", "raw"]
                for kind in order:
                    if kind == "raw":
                        value, per = run_raw(receiver, items, threads)
                    else:
                        last = rnd == args.rounds - 1
                        value, per = run_worker(
                            s,
                            receiver,
                            env,
                            n,
                            threads,
                            log_path,
                            args.timeout,
                            args.py_spy if last else None,
                            os.path.join(
                                bl.RESULTS, f"worker_{args.queue}_{database}.folded"
                            ),
                        )
                    results[kind].append(value)
                    cpu[kind].append(per)
                    bl.log(
                        f"round {rnd + 1}/{args.rounds} {kind}: {value:.0f} deliveries/s, "
                        f"{1000 * per:.2f} CPU ms each"
                    )
        finally:
            if s is not None:
                s.close()
            receiver.stop()

    per_round = bl.ratios(results["webhooks"], results["raw"])
    print()
    bl.print_table(
        ["round", "raw /s", "webhooks /s", "ratio", "raw CPU ms", "worker CPU ms"],
        [
            [i + 1, r, w, q, 1000 * cr, 1000 * cw]
            for i, (r, w, q, cr, cw) in enumerate(
                zip(
                    results["raw"],
                    results["webhooks"],
                    per_round,
                    cpu["raw"],
                    cpu["webhooks"],
                    strict=True,
                )
            )
        ],
    )
    print(
        "(CPU ms: CPU time of the sending process per request: the raw loop's "
        "process, or the worker process; the database and queue servers' own CPU "
        "is not included)"
    )
    result = {
        "raw_rps": bl.median(results["raw"]),
        "webhooks_rps": bl.median(results["webhooks"]),
        "ratio": bl.median(per_round),
        "raw_cpu_ms": 1000 * bl.median(cpu["raw"]),
        "worker_cpu_ms": 1000 * bl.median(cpu["webhooks"]),
        "threads": threads,
        "queue": args.queue,
        "database": database
        + ("-wal" if args.sqlite_wal and database == "sqlite" else ""),
        "deliveries": n,
    }
    print()
    bl.emit_json(result)
    return result


if __name__ == "__main__":
    main()
