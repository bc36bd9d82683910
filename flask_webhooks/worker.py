"""Huey tasks, the sweeper, embedded consumer threads and the dedicated worker.

Tasks are registered on the app's Huey instance by ``init_app``; a worker
process must therefore load the app (``flask webhooks worker`` does).

Two ways to run deliveries:

* **Embedded workers** (SQLite and memory queues): consumer threads inside the
  web process, started lazily by the first enqueue or request (never at
  import, never in the Werkzeug reloader's parent process), stopped at exit.
  ``WEBHOOKS_EMBEDDED_WORKERS`` threads (0 turns them off). An idle thread
  sleeps until this process enqueues something, so there is no busy polling.
* **Dedicated workers**: :func:`run_worker` (``flask webhooks worker``), a Huey
  consumer with the app loaded, threads or processes, stopping gracefully on
  SIGTERM and SIGINT.

Both run a :class:`Sweeper` every ``WEBHOOKS_SWEEP_INTERVAL`` seconds, which
enqueues what a lost enqueue, a flushed queue or a dead worker left behind,
and records a heartbeat that :func:`heartbeats` reads back for the admin.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import os
import signal
import socket
import sys
import threading
import time
import typing as t
import weakref

from huey.consumer import Consumer
from huey.consumer import ConsumerStopped
from huey.consumer import Worker

from . import models as m
from .delivery import deliver
from .delivery import deliver_batch
from .delivery import lease_seconds
from .queue import backend_name
from .queue import enqueue_many
from .queue import is_blocking
from .sweeping import sweep

if t.TYPE_CHECKING:
    import huey as huey_mod
    from flask import Flask

    from .extension import WebhooksState

logger = logging.getLogger("flask_webhooks.worker")

DELIVER_TASK = "deliver"
DELIVER_BATCH_TASK = "deliver_batch"
SWEEP_TASK = "sweep"
#: An enqueue with at least this many deliveries of one webhook (a burst:
#: a bulk change, a backlog) sends them as batch tasks of up to
#: ``WEBHOOKS_DELIVERY_BATCH_SIZE`` deliveries; smaller groups get one task
#: per delivery, so they are sent in parallel by several worker threads.
BATCH_THRESHOLD = 10
#: Key prefix of worker heartbeats in the queue's key-value store.
HEARTBEAT_PREFIX = "flask-webhooks.worker."
#: Heartbeats not refreshed for this long are deleted when a worker starts.
HEARTBEAT_EXPIRY = dt.timedelta(days=1)
#: A row the periodic sweeper enqueued is not enqueued again for this many
#: sweep intervals (unless a worker picks it up and it becomes due again).
SWEEP_HOLD_INTERVALS = 3
#: Longest sleep of an idle worker thread between polls of a non-blocking
#: queue (SQLite). Embedded threads are also woken by every local enqueue.
POLL_MAX_DELAY = 1.0
#: Longest back-off of a worker thread while a blocking queue (Redis) is down.
BLOCKING_MAX_DELAY = 5.0

_TRANSPORT_HOOK = "flask_webhooks.close_transport"
_FORK_HOOK = "flask_webhooks.after_fork"


def register_tasks(state: WebhooksState) -> None:
    """Register the ``deliver`` and ``sweep`` tasks on the app's Huey.

    Also closes each worker thread's HTTP session when the thread stops, and,
    for queues served by embedded workers, starts them on the first request.
    """
    huey = state.huey
    app = state.app
    key = f"{__name__}.{DELIVER_TASK}"
    if key in huey._registry._registry:
        raise RuntimeError(
            "this Huey instance already runs flask-webhooks tasks for another app; "
            "give each app its own Huey (or WEBHOOKS_QUEUE_URL)"
        )

    @huey.task(name=DELIVER_TASK)
    def deliver_task(delivery_id: str) -> None:
        with app.app_context():
            deliver(state, delivery_id)

    @huey.task(name=DELIVER_BATCH_TASK)
    def deliver_batch_task(delivery_ids: list[str]) -> None:
        with app.app_context():
            deliver_batch(state, delivery_ids)

    @huey.task(name=SWEEP_TASK)
    def sweep_task() -> None:
        with app.app_context():
            sweep(state)

    @huey.on_shutdown(name=_TRANSPORT_HOOK)
    def close_transport() -> None:
        _close_thread_transport(state)

    state.deliver_task = deliver_task
    state.deliver_batch_task = deliver_batch_task
    state.sweep_task = sweep_task

    if backend_name(huey) in ("memory", "sqlite") and state.config.embedded_workers > 0:

        @app.before_request
        def start_embedded() -> None:
            # Queued deliveries from before a restart go out without waiting
            # for the next commit.
            if state.workers is None:
                start_embedded_workers(state)


def _close_thread_transport(state: WebhooksState) -> None:
    """Close the calling thread's pooled HTTP session, if it has one."""
    transport = state.__dict__.get("_transport")
    if transport is not None:
        transport.close()


def enqueue(
    state: WebhooksState,
    ids: t.Iterable[str],
    *,
    delay: float | None = None,
    keys: t.Sequence[t.Hashable] | None = None,
) -> None:
    """Hand delivery ids to the queue (after their rows are committed).

    Many ids cost one round trip per batch where the backend allows it (a
    Redis ``LPUSH`` of many messages, one SQLite transaction). With ``keys``
    (the webhook id of each delivery) a webhook's burst of at least
    :data:`BATCH_THRESHOLD` deliveries goes as batch tasks (see
    :func:`batches`). With ``delay`` the tasks go to the queue's schedule.
    Starts embedded workers on first use and wakes idle ones.
    """
    id_list = [str(i) for i in ids]
    if not id_list:
        return
    if state.workers is None:
        start_embedded_workers(state)
    task = state.deliver_task
    if delay:
        for delivery_id in id_list:
            task.schedule(args=(delivery_id,), delay=delay)
    else:
        batch_task = state.deliver_batch_task
        tasks = [
            task.s(group[0]) if len(group) == 1 else batch_task.s(group)
            for group in batches(id_list, keys, state.config.delivery_batch_size)
        ]
        enqueue_many(state.huey, tasks)
    workers = state.workers
    if workers:
        workers.wake()


def batches(
    ids: t.Sequence[str], keys: t.Sequence[t.Hashable] | None, size: int
) -> list[list[str]]:
    """Split ``ids`` into the groups that become one task each.

    Deliveries are grouped by their key (webhook); a group of at least
    :data:`BATCH_THRESHOLD` is cut into near-equal batches of at most
    ``size``, smaller groups into single deliveries. Order is kept: a
    webhook's batches come where its first delivery was.
    """
    if keys is None or size <= 1 or len(ids) < BATCH_THRESHOLD:
        return [[i] for i in ids]
    if len(keys) != len(ids):
        raise ValueError("enqueue: keys must match ids one to one")
    groups: dict[t.Hashable, list[str]] = {}
    for delivery_id, key in zip(ids, keys, strict=True):
        groups.setdefault(key, []).append(delivery_id)
    out: list[list[str]] = []
    for delivery_id, key in zip(ids, keys, strict=True):
        group = groups[key]
        if len(group) < BATCH_THRESHOLD:
            out.append([delivery_id])
        elif group[0] == delivery_id:  # the whole burst, where it starts
            count = -(-len(group) // size)
            step = -(-len(group) // count)
            out.extend(group[i : i + step] for i in range(0, len(group), step))
    return out


# -- the sweeper and heartbeats -----------------------------------------------


class Sweeper:
    """Runs the periodic sweep in a thread and records the worker heartbeat.

    Every ``WEBHOOKS_SWEEP_INTERVAL`` seconds (and once at start) it enqueues
    deliveries that have been due for at least one interval and are not
    leased, marking them so other sweepers skip them for
    :data:`SWEEP_HOLD_INTERVALS` intervals.
    """

    def __init__(self, state: WebhooksState, *, kind: str, **info: t.Any) -> None:
        self.state = state
        self.interval = float(state.config.sweep_interval)
        self.name = f"{socket.gethostname()}:{os.getpid()}:{kind}"
        self.info: dict[str, t.Any] = {
            "name": self.name,
            "kind": kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": m.utcnow(),
            **info,
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return HEARTBEAT_PREFIX + self.name

    def start(self) -> None:
        """Start the sweeper thread (a daemon)."""
        self._thread = threading.Thread(
            target=self._run, name="flask-webhooks-sweeper", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread and remove this worker's heartbeat."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        try:
            self.state.huey.delete(self.key)
        except Exception:
            logger.debug(
                "flask-webhooks: could not remove the heartbeat", exc_info=True
            )

    def run_once(self) -> int:
        """One periodic sweep; returns how many deliveries it enqueued."""
        with self.state.app.app_context():
            return sweep(
                self.state,
                older_than=self.interval,
                hold=self.interval * SWEEP_HOLD_INTERVALS,
            )

    def beat(self, swept: int | None) -> None:
        """Record that this worker is alive (in the queue's key-value store)."""
        now = m.utcnow()
        self.info.update(last_seen=now, last_sweep=swept)
        self.state.huey.put(self.key, dict(self.info))

    def _run(self) -> None:
        try:
            _prune_heartbeats(self.state)
        except Exception:
            logger.debug("flask-webhooks: could not prune heartbeats", exc_info=True)
        while True:
            swept: int | None = None
            try:
                swept = self.run_once()
                if swept:
                    logger.info(
                        "flask-webhooks: sweep enqueued %d due deliveries", swept
                    )
            except Exception:
                logger.exception(
                    "flask-webhooks: sweep failed; trying again in %g s", self.interval
                )
            try:
                self.beat(swept)
            except Exception:
                logger.debug("flask-webhooks: heartbeat failed", exc_info=True)
            if self._stop.wait(self.interval):
                return


def heartbeats(state: WebhooksState) -> list[dict[str, t.Any]]:
    """Heartbeats of the workers (embedded and dedicated) using this queue.

    Each is a dict with ``name`` (``host:pid:kind``), ``kind``
    (``embedded``/``dedicated``), ``host``, ``pid``, ``workers``,
    ``worker_type``, ``started_at``, ``last_seen`` (aware datetimes) and
    ``last_sweep`` (deliveries the last sweep enqueued, None if it failed).
    A worker that stopped gracefully removes its heartbeat; a killed one
    stays until it is a day old.
    """
    huey = state.huey
    beats: list[dict[str, t.Any]] = []
    for key, raw in huey.storage.result_items().items():
        if not str(key).startswith(HEARTBEAT_PREFIX):
            continue
        try:
            value = huey.serializer.deserialize(raw)
        except Exception:
            continue
        if isinstance(value, dict):
            beats.append(value)
    return beats


def _prune_heartbeats(state: WebhooksState) -> None:
    cutoff = m.utcnow() - HEARTBEAT_EXPIRY
    for beat in heartbeats(state):
        seen = beat.get("last_seen")
        if seen is not None and seen < cutoff:
            state.huey.delete(HEARTBEAT_PREFIX + str(beat.get("name")))


# -- embedded workers ------------------------------------------------------------


class _Waker:
    """Lets idle worker threads sleep until something is enqueued locally."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.seq = 0

    def notify(self) -> None:
        with self._cond:
            self.seq += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self.seq == seen:
                self._cond.wait(timeout)


class _WakeableWorker(Worker):
    """A Huey worker whose idle sleep ends early when the waker fires."""

    waker: _Waker
    delay: float
    max_delay: float
    backoff: float
    _seen = 0

    def loop(self, now: t.Any = None) -> None:
        # Read the counter before looking at the queue: an enqueue after this
        # point makes the sleep below return at once (no lost wake-up).
        self._seen = self.waker.seq
        super().loop(now)

    def sleep(self) -> None:
        self.delay = min(self.delay, self.max_delay)
        if not self.stop_flag.is_set():
            self.waker.wait(self._seen, self.delay)
        self.delay *= self.backoff


class ThreadConsumer(Consumer):
    """A Huey consumer that can run off the main thread.

    Huey's ``Consumer.start()`` installs signal handlers, which only the main
    thread may do; this one installs none (the host process owns its
    signals). Idle workers sleep until :meth:`wake` or their poll interval;
    :meth:`stop` wakes them so a graceful stop does not wait for a poll.
    """

    worker_class = _WakeableWorker

    def __init__(self, huey: huey_mod.Huey, **options: t.Any) -> None:
        self.waker = _Waker()
        super().__init__(huey, **options)

    def _create_worker(self) -> Worker:
        worker = super()._create_worker()
        worker.waker = self.waker
        return worker

    def _set_signal_handlers(self) -> None:
        pass

    def wake(self) -> None:
        """Wake idle workers: something was enqueued."""
        self.waker.notify()

    def stop(self, graceful: bool = False) -> None:
        self.stop_flag.set()
        self.waker.notify()
        super().stop(graceful=graceful)


class EmbeddedWorkers:
    """Consumer threads and a sweeper inside the web process."""

    def __init__(self, state: WebhooksState, workers: int) -> None:
        self.state = state
        self.count = workers
        self.consumer = ThreadConsumer(
            state.huey,
            workers=workers,
            worker_type="thread",
            periodic=False,
            max_delay=POLL_MAX_DELAY,
            shutdown_timeout=lease_seconds(state.config),
        )
        self.sweeper = Sweeper(
            state, kind="embedded", workers=workers, worker_type="thread"
        )
        self._lock = threading.Lock()
        self._started = False

    @property
    def running(self) -> bool:
        return self._started

    def start(self) -> None:
        """Start the consumer threads and the sweeper; stop them at exit."""
        with self._lock:
            if self._started:
                return
            self.consumer.start()
            self.sweeper.start()
            self._started = True
        atexit.register(self.stop)
        _forget_in_forked_child(self.state, self)

    def wake(self) -> None:
        """Wake idle threads (called after every local enqueue)."""
        self.consumer.wake()

    def stop(self) -> None:
        """Stop gracefully: running deliveries finish, threads are joined."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        atexit.unregister(self.stop)
        self.sweeper.stop()
        self.consumer.stop(graceful=True)
        logger.info("flask-webhooks: embedded workers stopped")


def _forget_in_forked_child(state: WebhooksState, workers: EmbeddedWorkers) -> None:
    """A forked child (e.g. a pre-fork server) has none of the parent's
    threads: let it start its own workers lazily."""
    ref = weakref.ref(state)

    def reset() -> None:
        current = ref()
        if current is not None and current.workers is workers:
            current.workers = None

    os.register_at_fork(after_in_child=reset)


_start_lock = threading.Lock()


def in_reloader_parent() -> bool:
    """True in the parent process of ``flask run`` with the reloader on.

    That process only watches files and restarts the child that serves; it
    must not deliver. (The child has ``WERKZEUG_RUN_MAIN=true``.)
    """
    if os.environ.get("WERKZEUG_RUN_MAIN") == "true":
        return False
    import click

    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.info_name == "run" and "reload" in ctx.params:
            reload = ctx.params["reload"]
            if reload is None:
                from flask.helpers import get_debug_flag

                reload = get_debug_flag()
            return bool(reload)
        ctx = ctx.parent
    return False


def start_embedded_workers(state: WebhooksState) -> bool:
    """Start embedded workers once, when the queue needs them and they are on.

    Returns whether they run. Sets ``state.workers`` to the
    :class:`EmbeddedWorkers`, or to False when this process does not run
    them (other queue backends, ``WEBHOOKS_EMBEDDED_WORKERS = 0``).
    """
    with _start_lock:
        if state.workers is not None:
            return bool(state.workers)
        backend = backend_name(state.huey)
        count = state.config.embedded_workers
        if backend not in ("memory", "sqlite"):
            state.workers = False
            return False
        if count <= 0:
            if backend == "memory":
                logger.warning(
                    "flask-webhooks: memory:// queue with WEBHOOKS_EMBEDDED_WORKERS = 0:"
                    " nothing in this process sends the deliveries"
                )
            state.workers = False
            return False
        if in_reloader_parent():
            return False  # the reloader's child process delivers
        workers = EmbeddedWorkers(state, count)
        workers.start()
        state.workers = workers
    logger.info("flask-webhooks: started %d embedded worker threads", count)
    return True


def stop_embedded_workers(state: WebhooksState) -> None:
    """Stop this process's embedded workers, if they run."""
    workers = state.workers
    if isinstance(workers, EmbeddedWorkers):
        workers.stop()


# -- the dedicated worker --------------------------------------------------------


class WorkerConsumer(Consumer):
    """The Huey consumer of ``flask webhooks worker``.

    SIGTERM and SIGINT both stop it gracefully (running deliveries finish;
    a second signal interrupts), SIGHUP restarts it gracefully (same process
    id, re-executed). Runs the :class:`Sweeper` in the main process.
    """

    def __init__(self, state: WebhooksState, **options: t.Any) -> None:
        options.setdefault("graceful_signal", "TERM")
        super().__init__(state.huey, **options)
        self._signal_actions[signal.SIGINT] = (False, True)
        self._signal_actions[signal.SIGTERM] = (False, True)
        self.state = state
        self.sweeper = Sweeper(
            state,
            kind="dedicated",
            workers=self.workers,
            worker_type=self.worker_type,
        )

    def start(self) -> None:
        # Process workers fork in super().start(): no sweeper thread before it.
        super().start()
        self.sweeper.start()

    def run(self) -> None:
        """Run until a signal stops (or, for SIGHUP, restarts) the worker."""
        self.start()
        health_check = time.monotonic()
        try:
            while True:
                try:
                    health_check = self.loop(health_check)
                except ConsumerStopped:
                    break
            self.huey.notify_interrupted_tasks()
        finally:
            self.sweeper.stop()
            _close_thread_transport(self.state)
        if self._restart:
            # Huey re-executes sys.argv, which breaks `python -m flask ...`;
            # the interpreter's original command line works in every case.
            logger.info("flask-webhooks: worker restarting (SIGHUP)")
            os.execv(sys.executable, sys.orig_argv)
        logger.info("flask-webhooks: worker stopped")


def run_worker(
    app: Flask,
    *,
    workers: int = 4,
    processes: bool = False,
    log_level: int | str | None = logging.INFO,
) -> None:
    """Run a dedicated delivery worker until SIGTERM or SIGINT (blocking).

    Call from the main thread. This is what ``flask webhooks worker`` runs.

    :param workers: concurrent deliveries (threads, or processes).
    :param processes: fork worker processes instead of threads.
    :param log_level: configure logging to stderr at this level if the app
        has not configured logging; None leaves logging alone.
    :raises RuntimeError: the queue is ``immediate://`` (nothing to consume).
    """
    state: WebhooksState | None = app.extensions.get("webhooks")
    if state is None:
        raise RuntimeError("flask-webhooks is not initialised on this app")
    if state.huey.immediate:
        raise RuntimeError(
            "WEBHOOKS_QUEUE_URL is immediate://: deliveries run at commit, "
            "there is nothing for a worker to do"
        )
    if workers < 1:
        raise ValueError("workers must be at least 1")
    stop_embedded_workers(state)
    state.workers = False  # this process is the worker: no embedded threads
    if log_level is not None:
        _configure_logging(log_level)
    huey = state.huey
    if processes:
        engine = state.engine()

        @huey.on_startup(name=_FORK_HOOK)
        def fresh_connections() -> None:
            # A forked child must not share the parent's database sockets.
            engine.dispose(close=False)

    consumer = WorkerConsumer(
        state,
        workers=workers,
        worker_type="process" if processes else "thread",
        periodic=False,
        max_delay=BLOCKING_MAX_DELAY if is_blocking(huey) else POLL_MAX_DELAY,
        shutdown_timeout=lease_seconds(state.config),
    )
    logger.info(
        "flask-webhooks: worker for %s: %d %s, queue %s, sweep every %g s",
        app.name,
        workers,
        "processes" if processes else "threads",
        backend_name(huey),
        state.config.sweep_interval,
    )
    consumer.run()


def _configure_logging(level: int | str) -> None:
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {level!r}")
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s "
            "[%(process)d %(threadName)s] %(message)s",
        )
    # "Executing <task>" per delivery is noise at INFO; consumer events are not.
    huey_level = level if level <= logging.DEBUG else max(level, logging.WARNING)
    logging.getLogger("huey").setLevel(huey_level)
    logging.getLogger("huey.consumer").setLevel(level)
    logging.getLogger("flask_webhooks").setLevel(level)
