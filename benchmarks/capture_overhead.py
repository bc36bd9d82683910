"""Capture overhead: what the extension adds to a committing transaction.

One transaction inserting N registered objects (an 8-column model with a
marshmallow schema), then one updating them all, then one deleting them all,
under four setups built side by side in this process:

* ``baseline``: a separate app + db, extension not initialised;
* ``unsubscribed``: extension on, one webhook on another model, none on ``item``;
* ``one_webhook``: one webhook on ``item`` (all events);
* ``ten_webhooks``: ten webhooks on ``item``.

The queue is ``memory://`` with ``WEBHOOKS_EMBEDDED_WORKERS=0``: nothing is
delivered during the measurement, but the enqueue of every delivery after the
commit is timed (it is part of ``commit()``). Each round runs the setups in a
rotated order; every figure is the median over rounds of the per-round ratio
to the baseline of the same round. The timed region is building the objects
(insert) or changing/deleting the loaded objects, plus ``commit()``; loading
the objects before an update or delete is not timed.

Usage::

    python benchmarks/capture_overhead.py --objects 10000 [--database-url URL]
        [--rounds 5] [--growth] [--profile one_webhook]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import os
import pstats
import tempfile
import time
import typing as t

import sqlalchemy as sa

import benchlib as bl

SETUPS: dict[str, dict[str, t.Any]] = {
    "baseline": {"extension": False},
    "unsubscribed": {"extension": True, "other_hook": True},
    "one_webhook": {"extension": True, "hooks": 1},
    "ten_webhooks": {"extension": True, "hooks": 10},
}
HOOKS = {"baseline": 0, "unsubscribed": 0, "one_webhook": 1, "ten_webhooks": 10}


def build(
    names: t.Iterable[str],
    database_url: str | None,
    workdir: str,
    queue: str = "memory",
    redis_url: str = bl.DEFAULT_REDIS_URL,
    index_ttl: float = 0.0,
) -> dict[str, bl.Setup]:
    """The setups, each with its own app, db and (extension on) queue.

    ``queue``: ``memory`` (the issue's default: nothing is delivered, enqueue
    is cheap), or ``sqlite`` / ``redis`` to see what enqueueing into a real
    backend adds to ``commit()``.
    """
    setups = {}
    tag = bl.unique("bench_capture")
    for name in names:
        url = bl.setup_url(database_url, workdir, name)
        huey = None
        if queue == "sqlite" and SETUPS[name]["extension"]:
            huey = bl.new_huey(
                f"sqlite:///{os.path.join(workdir, name + '-queue.sqlite')}",
                f"{tag}-{name}",
                workdir,
            )
        elif queue == "redis" and SETUPS[name]["extension"]:
            huey = bl.new_huey(redis_url, f"{tag}-{name}", workdir)
        setups[name] = bl.build_setup(
            name,
            database_url=url,
            workdir=workdir,
            schema=f"{tag}_{name}",
            huey=huey,
            config={"WEBHOOKS_INDEX_TTL": index_ttl},
            **SETUPS[name],
        )
    return setups


def timed_insert(s: bl.Setup, n: int, start: int) -> float:
    Item = s.models.Item
    with s.app.app_context():
        session = s.db.session
        gc.collect()
        t0 = time.perf_counter()
        session.add_all([bl.new_item(Item, start + i) for i in range(n)])
        session.commit()
        elapsed = time.perf_counter() - t0
        session.remove()
    return elapsed


def timed_update(s: bl.Setup, rnd: int) -> float:
    Item = s.models.Item
    with s.app.app_context():
        session = s.db.session
        items = session.scalars(sa.select(Item)).all()
        gc.collect()
        t0 = time.perf_counter()
        for item in items:
            item.serial = f"{item.serial[:12]}-r{rnd}"
            item.updated = bl.NOW + dt.timedelta(minutes=rnd + 1)
        session.commit()
        elapsed = time.perf_counter() - t0
        session.remove()
    return elapsed


def timed_delete(s: bl.Setup) -> float:
    Item = s.models.Item
    with s.app.app_context():
        session = s.db.session
        items = session.scalars(sa.select(Item)).all()
        gc.collect()
        t0 = time.perf_counter()
        for item in items:
            session.delete(item)
        session.commit()
        elapsed = time.perf_counter() - t0
        session.remove()
    return elapsed


def outbox_counts(s: bl.Setup) -> tuple[int, int]:
    """(delivery rows, delivery ids in queued tasks) of a setup; (0, 0) with
    the extension off. A queued task carries one id, or a list of ids (a
    batch task)."""
    if s.webhooks is None:
        return 0, 0
    with s.app.app_context():
        D = s.webhooks.Delivery
        rows = s.db.session.scalar(sa.select(sa.func.count()).select_from(D)) or 0
        s.db.session.remove()
        queued = 0
        for task in s.webhooks.huey.pending():
            arg = task.args[0] if task.args else None
            queued += len(arg) if isinstance(arg, list | tuple) else 1
        return int(rows), queued


def check_outbox(s: bl.Setup, expected_per_hook: int) -> None:
    """Fail loudly if a setup did not produce (and enqueue) what it should."""
    rows, queued = outbox_counts(s)
    expected = expected_per_hook * HOOKS[s.name]
    if rows != expected or queued != expected:
        raise AssertionError(
            f"{s.name}: expected {expected} deliveries, queued and in the "
            f"table, got {rows} rows and {queued} queued ids"
        )


def run_round(
    setups: dict[str, bl.Setup], order: list[str], n: int, rnd: int, start: int
) -> None:
    for name in order:
        s = setups[name]
        s.record("insert", timed_insert(s, n, start))
        check_outbox(s, n)
        s.clear_outbox()
    for name in order:
        s = setups[name]
        s.record("update", timed_update(s, rnd))
        check_outbox(s, n)
        s.clear_outbox()
    for name in order:
        s = setups[name]
        s.record("delete", timed_delete(s))
        check_outbox(s, n)
        s.clear_outbox()


def profile(s: bl.Setup, n: int, out_dir: str) -> None:
    """cProfile one insert, update and delete of ``s``; print the top functions."""
    os.makedirs(out_dir, exist_ok=True)
    for phase in ("insert", "update", "delete"):
        prof = cProfile.Profile()
        prof.enable()
        if phase == "insert":
            timed_insert(s, n, 10_000_000)
        elif phase == "update":
            timed_update(s, 99)
        else:
            timed_delete(s)
        prof.disable()
        s.clear_outbox()
        path = os.path.join(out_dir, f"capture_{s.name}_{phase}.prof")
        prof.dump_stats(path)
        print(f"\n== cProfile {s.name} {phase} ({n} objects), saved to {path}")
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> dict[str, t.Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument(
        "--database-url", default=None, help="default: SQLite files in a temp dir"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--growth", action="store_true", help="also time 100k vs 10k inserts"
    )
    parser.add_argument("--growth-rounds", type=int, default=3)
    parser.add_argument(
        "--small",
        type=int,
        default=200,
        metavar="K",
        help="also time K transactions of one object each (0: skip)",
    )
    parser.add_argument(
        "--queue",
        choices=("memory", "sqlite", "redis"),
        default="memory",
        help="queue backend of the extension setups (default memory://)",
    )
    parser.add_argument("--redis-url", default=bl.DEFAULT_REDIS_URL)
    parser.add_argument(
        "--index-ttl",
        type=float,
        default=0.0,
        help="WEBHOOKS_INDEX_TTL of the extension setups (default 0: checked "
        "in every commit)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(SETUPS),
        help="cProfile this setup (after the measurement) and print the hot spots",
    )
    args = parser.parse_args(argv)
    n = args.objects

    info = bl.machine_info(args.database_url)
    bl.print_machine(info)
    database = (
        "postgresql"
        if args.database_url and bl.is_postgres(args.database_url)
        else "sqlite"
    )
    print(
        f"capture overhead: {n} objects per transaction, {args.rounds} rounds, "
        f"{database} database, {args.queue} queue"
    )

    with tempfile.TemporaryDirectory(prefix="bench-capture-") as workdir:
        setups = build(
            SETUPS,
            args.database_url,
            workdir,
            args.queue,
            args.redis_url,
            args.index_ttl,
        )
        try:
            names = list(SETUPS)
            # Warm-up (not recorded): caches, compiled statements, the index.
            run_round(setups, names, max(n // 10, 100), 0, 0)
            for s in setups.values():
                s.timings.clear()
            for rnd in range(args.rounds):
                k = rnd % len(names)
                order = names[k:] + names[:k]
                bl.log(f"round {rnd + 1}/{args.rounds}: {' '.join(order)}")
                run_round(setups, order, n, rnd + 1, (rnd + 1) * n)

            base = setups["baseline"].timings
            rows = []
            figures: dict[str, t.Any] = {}
            for name, s in setups.items():
                row: list[t.Any] = [name]
                for phase in ("insert", "update", "delete"):
                    row.append(bl.median(s.timings[phase]))
                    row.append(bl.median(bl.ratios(s.timings[phase], base[phase])))
                rows.append(row)
                figures[name] = {
                    phase: bl.median(bl.ratios(s.timings[phase], base[phase]))
                    for phase in ("insert", "update", "delete")
                }
            print()
            bl.print_table(
                [
                    "setup",
                    "insert s",
                    "ratio",
                    "update s",
                    "ratio",
                    "delete s",
                    "ratio",
                ],
                rows,
            )

            result: dict[str, t.Any] = {
                "baseline_s": bl.median(base["insert"]),
                "unsubscribed_ratio": figures["unsubscribed"]["insert"],
                "one_webhook_ratio": figures["one_webhook"]["insert"],
                "ten_webhooks_ratio": figures["ten_webhooks"]["insert"],
                "update_one_webhook_ratio": figures["one_webhook"]["update"],
                "delete_one_webhook_ratio": figures["one_webhook"]["delete"],
            }

            if args.small:
                result.update(small_transactions(setups, args.small, args.rounds))

            if args.growth:
                result["growth_100k_over_10k"] = growth(setups, args.growth_rounds)

            if args.profile:
                profile(setups[args.profile], n, os.path.join(bl.HERE, "results"))
        finally:
            for s in setups.values():
                s.close()

    result.update(
        database=database,
        queue=args.queue,
        objects=n,
        rounds=args.rounds,
        index_ttl=args.index_ttl,
    )
    print()
    bl.emit_json(result)
    return result


def small_transactions(
    setups: dict[str, bl.Setup], k: int, rounds: int
) -> dict[str, float]:
    """Per-commit overhead when each transaction changes one object.

    The setups take turns at every transaction (not every round): one-object
    commits are short and dominated by the disk flush, whose cost drifts with
    whatever else the machine does, so alternating finely cancels the drift.
    """
    names = list(setups)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(rounds):
        totals = dict.fromkeys(names, 0.0)
        gc.collect()
        for i in range(k):
            j = i % len(names)
            for name in names[j:] + names[:j]:
                s = setups[name]
                with s.app.app_context():
                    session = s.db.session
                    item = bl.new_item(s.models.Item, 5_000_000 + rnd * k + i)
                    t0 = time.perf_counter()
                    session.add(item)
                    session.commit()
                    totals[name] += time.perf_counter() - t0
                    session.remove()
        for name in names:
            times[name].append(totals[name])
            check_outbox(setups[name], k)
            setups[name].clear_outbox()
    base = times["baseline"]
    print(f"\n{k} transactions of one object each (setups alternate per commit):")
    bl.print_table(
        ["setup", "total s", "ms/commit", "ratio"],
        [
            [
                name,
                bl.median(v),
                1000 * bl.median(v) / k,
                bl.median(bl.ratios(v, base)),
            ]
            for name, v in times.items()
        ],
    )
    return {
        "small_unsubscribed_ratio": bl.median(bl.ratios(times["unsubscribed"], base)),
        "small_one_webhook_ratio": bl.median(bl.ratios(times["one_webhook"], base)),
    }


def growth(setups: dict[str, bl.Setup], rounds: int) -> float:
    """Insert time at 100k objects over 10k, one webhook (baseline for context)."""
    small, large = 10_000, 100_000
    times: dict[tuple[str, int], list[float]] = {}
    for rnd in range(rounds):
        sizes = [small, large] if rnd % 2 == 0 else [large, small]
        for name in ("baseline", "one_webhook"):
            s = setups[name]
            for size in sizes:
                bl.log(f"growth round {rnd + 1}/{rounds}: {name} {size}")
                elapsed = timed_insert(s, size, 1_000_000 * (rnd + 1) + size)
                check_outbox(s, size)
                s.clear_outbox()
                with s.app.app_context(), s.db.engine.begin() as conn:
                    conn.execute(s.models.Item.__table__.delete())
                times.setdefault((name, size), []).append(elapsed)
    print()
    rows = []
    out = 0.0
    for name in ("baseline", "one_webhook"):
        g = bl.median(bl.ratios(times[(name, large)], times[(name, small)]))
        rows.append(
            [name, bl.median(times[(name, small)]), bl.median(times[(name, large)]), g]
        )
        if name == "one_webhook":
            out = g
    bl.print_table(["setup", "10k s", "100k s", "100k/10k"], rows)
    return out


if __name__ == "__main__":
    main()
