"""Memory: peak RSS of a big commit, and RSS growth of a draining worker.

(a) ``commit_peak_ratio``: one transaction inserting ``--objects`` (100,000)
    registered objects, each setup in its own fresh child process: extension
    off vs one matching webhook. Peak RSS is the child's
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (whole process: interpreter,
    imports, the ORM objects and whatever the extension keeps). The queue is
    a SQLite file (the default backend), so queued tasks live on disk, not in
    the process.
(b) ``worker_rss_growth``: one worker process (``flask webhooks worker
    --workers T`` on ``bench_app.py``) drains ``--deliveries`` (20,000)
    committed deliveries to the local fast receiver; its RSS (``VmRSS`` from
    ``/proc``, Linux) after the first 2,000 deliveries vs at the end. The
    peak (``VmHWM``, the same figure as ``ru_maxrss``) is shown too.

Usage::

    python benchmarks/memory.py [--objects 100000] [--deliveries 20000]
        [--database-url URL] [--queue sqlite|redis] [--threads 4]

``--deliveries`` scales part (b) down for quick runs; the documented figures
use the defaults. The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa

import benchlib as bl

MIB = 1024.0  # ru_maxrss and /proc figures are KiB on Linux


def child_commit(setup: str, n: int, database_url: str | None) -> None:
    """Build one setup, insert ``n`` objects in one transaction, print peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as workdir:
        huey = bl.new_huey(
            f"sqlite:///{os.path.join(workdir, 'queue.sqlite')}",
            bl.unique("flask-webhooks-bench"),
            workdir,
        )
        s = bl.build_setup(
            setup,
            database_url=bl.setup_url(database_url, workdir, setup),
            workdir=workdir,
            extension=setup == "one_webhook",
            hooks=1,
            huey=huey if setup == "one_webhook" else None,
            schema=bl.unique(f"bench_memory_{setup}"),
        )
        try:
            gc.collect()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            with s.app.app_context():
                s.db.session.add_all([bl.new_item(s.models.Item, i) for i in range(n)])
                s.db.session.commit()
                s.db.session.remove()
            elapsed = time.perf_counter() - t0
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            deliveries = 0
            if s.webhooks is not None:
                with s.app.app_context():
                    D = s.webhooks.Delivery
                    deliveries = int(
                        s.db.session.scalar(sa.select(sa.func.count()).select_from(D))
                        or 0
                    )
                    s.db.session.remove()
        finally:
            s.close()
    print(
        json.dumps(
            {
                "setup": setup,
                "before_kib": before,
                "peak_kib": peak,
                "seconds": elapsed,
                "deliveries": deliveries,
            }
        )
    )


def run_child(setup: str, n: int, database_url: str | None) -> dict[str, t.Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        setup,
        "--objects",
        str(n),
    ]
    if database_url:
        cmd += ["--database-url", database_url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = t.cast(dict[str, t.Any], json.loads(out.stdout.strip().splitlines()[-1]))
    expected = n if setup == "one_webhook" else 0
    if result["deliveries"] != expected:
        raise AssertionError(
            f"{setup}: {result['deliveries']} deliveries, expected {expected}"
        )
    return result


def commit_part(n: int, rounds: int, database_url: str | None) -> dict[str, float]:
    print(f"\n(a) one transaction of {n} objects, each setup in a fresh process")
    runs: dict[str, list[dict[str, t.Any]]] = {"baseline": [], "one_webhook": []}
    for rnd in range(rounds):
        order = (
            ["baseline", "one_webhook"] if rnd % 2 == 0 else ["one_webhook", "baseline"]
        )
        for setup in order:
            bl.log(f"commit round {rnd + 1}/{rounds}: {setup}")
            runs[setup].append(run_child(setup, n, database_url))
    rows = []
    for setup, results in runs.items():
        rows.append(
            [
                setup,
                bl.median([r["before_kib"] / MIB for r in results]),
                bl.median([r["peak_kib"] / MIB for r in results]),
                bl.median([(r["peak_kib"] - r["before_kib"]) / MIB for r in results]),
                bl.median([r["seconds"] for r in results]),
            ]
        )
    bl.print_table(
        ["setup", "before MiB", "peak MiB", "peak-before MiB", "commit s"], rows
    )
    ratio = bl.median(
        bl.ratios(
            [r["peak_kib"] for r in runs["one_webhook"]],
            [r["peak_kib"] for r in runs["baseline"]],
        )
    )
    return {
        "commit_peak_ratio": ratio,
        "commit_off_peak_mib": bl.median(
            [r["peak_kib"] / MIB for r in runs["baseline"]]
        ),
        "commit_one_peak_mib": bl.median(
            [r["peak_kib"] / MIB for r in runs["one_webhook"]]
        ),
    }


def worker_part(
    n: int,
    threads: int,
    queue_kind: str,
    database_url: str | None,
    redis_url: str,
    sweep_interval: float | None = None,
    trace: bool = False,
) -> dict[str, float]:
    first = min(2000, n)
    print(
        f"\n(b) one worker process ({threads} threads, {queue_kind} queue) "
        f"draining {n} deliveries"
    )
    samples: list[list[t.Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-worker-") as workdir:
        queue = bl.queue_url(queue_kind, redis_url, workdir)
        huey_name = bl.unique("flask-webhooks-bench")
        url = bl.setup_url(database_url, workdir, "memory_worker")
        schema = bl.unique("bench_memory_worker")
        log_path = bl.worker_log("memory_worker.log")
        receiver = bl.ReceiverProcess()
        s = worker = None
        try:
            s = bl.driver_setup(url, workdir, receiver.url, queue, huey_name, schema)
            assert s.webhooks is not None
            chunk = 5000
            for start in range(0, n, chunk):
                with s.app.app_context():
                    s.db.session.add_all(
                        [
                            bl.new_item(s.models.Item, i)
                            for i in range(start, min(n, start + chunk))
                        ]
                    )
                    s.db.session.commit()
                    s.db.session.remove()
            env = bl.bench_env(
                database_url=url,
                schema=schema,
                queue=queue,
                huey_name=huey_name,
                sweep_interval=sweep_interval,
            )
            snap_prefix = os.path.join(workdir, "worker")
            if trace:
                env.update(PYTHONTRACEMALLOC="12", BENCH_SNAPSHOT_PREFIX=snap_prefix)
            receiver.reset()
            worker = bl.WorkerProcess(env, threads, log_path)
            t0 = time.monotonic()
            marks = sorted({first, *range(first, n + 1, max(first, n // 10)), n})
            for mark in marks:
                stats = receiver.wait_for(mark, timeout=3600)
                rss, hwm = worker.rss_kib()
                samples.append(
                    [stats["count"], time.monotonic() - t0, rss / MIB, hwm / MIB]
                )
                if trace and mark in (first, n):
                    snapshot(worker, f"{snap_prefix}-{1 if mark == first else 2}.snap")
                bl.log(f"{stats['count']} delivered: RSS {rss / MIB:.1f} MiB")
            D = s.webhooks.Delivery
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with s.app.app_context():
                    done = s.db.session.scalar(
                        sa.select(sa.func.count())
                        .select_from(D)
                        .where(D.status == "succeeded")
                    )
                    s.db.session.remove()
                if done == n:
                    break
                time.sleep(0.2)
            rss, hwm = worker.rss_kib()
            samples.append(["end", time.monotonic() - t0, rss / MIB, hwm / MIB])
            if done != n:
                raise AssertionError(
                    f"only {done} of {n} deliveries succeeded (log: {log_path})"
                )
        finally:
            if worker is not None:
                worker.stop()
            if s is not None:
                s.close()
            receiver.stop()
            if trace:
                print_growth(f"{snap_prefix}-1.snap", f"{snap_prefix}-2.snap")
    bl.print_table(["delivered", "seconds", "VmRSS MiB", "VmHWM MiB"], samples)
    at_first, at_end = samples[0], samples[-1]
    return {
        "worker_rss_growth": at_end[2] / at_first[2],
        "worker_hwm_growth": at_end[3] / at_first[3],
        "worker_rss_first_mib": at_first[2],
        "worker_rss_end_mib": at_end[2],
    }


def snapshot(worker: bl.WorkerProcess, path: str) -> None:
    """Ask the worker for a tracemalloc snapshot and wait until it is written."""
    import signal

    worker.proc.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 120
    size = -1
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) == size > 0:
            return
        size = os.path.getsize(path) if os.path.exists(path) else -1
        time.sleep(0.5)
    raise TimeoutError(f"no snapshot at {path}")


def print_growth(before: str, after: str, top: int = 8) -> None:
    import tracemalloc

    old = tracemalloc.Snapshot.load(before)
    new = tracemalloc.Snapshot.load(after)
    stats = new.compare_to(old, "traceback")
    total = sum(st.size_diff for st in stats)
    print(f"\ntracemalloc: {total / 1024:.1f} KiB more traced memory at the end")
    for st in stats[:top]:
        print(f"{st.size_diff / 1024:9.1f} KiB {st.count_diff:+7d} blocks")
        for line in st.traceback.format()[-12:]:
            print("        " + line)


def main(argv: list[str] | None = None) -> dict[str, t.Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--database-url", default=None, help="default: SQLite files")
    parser.add_argument("--queue", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of part (a)")
    parser.add_argument(
        "--sweep-interval",
        type=float,
        default=None,
        help="WEBHOOKS_SWEEP_INTERVAL of the worker (default: the extension's)",
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="run the worker under tracemalloc and print what grew between "
        "the first mark and the end (slows the worker down)",
    )
    parser.add_argument("--skip-commit", action="store_true")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument(
        "--child", choices=("baseline", "one_webhook"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)

    if args.child:
        child_commit(args.child, args.objects, args.database_url)
        return {}

    info = bl.machine_info(
        args.database_url, args.redis_url if args.queue == "redis" else None
    )
    bl.print_machine(info)
    database = bl.database_name(args.database_url)
    result: dict[str, t.Any] = {}
    if not args.skip_commit:
        result.update(commit_part(args.objects, args.rounds, args.database_url))
    if not args.skip_worker:
        result.update(
            worker_part(
                args.deliveries,
                args.threads,
                args.queue,
                args.database_url,
                args.redis_url,
                args.sweep_interval,
                args.tracemalloc,
            )
        )
    result.update(
        database=database,
        queue=args.queue,
        objects=args.objects,
        deliveries=args.deliveries,
    )
    print()
    bl.emit_json(result)
    return result


if __name__ == "__main__":
    main()
