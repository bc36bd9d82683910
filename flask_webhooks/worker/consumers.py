"""Embedded consumer threads and the dedicated worker that run deliveries.

Two ways to run them:

* **Embedded workers** (SQLite and memory queues): consumer threads inside the
  web process, started lazily by the first enqueue or request (never at
  import, never in the Werkzeug reloader's parent process), stopped at exit.
  ``WEBHOOKS_EMBEDDED_WORKERS`` threads (0 turns them off). An idle thread
  sleeps until this process enqueues something, so there is no busy polling.
* **Dedicated workers**: :func:`run_worker` (``flask webhooks worker``), a Huey
  consumer with the app loaded, threads or processes, stopping gracefully on
  SIGTERM and SIGINT.

Both run a :class:`~flask_webhooks.worker.sweeper.Sweeper`, which also
records the worker heartbeat. The tasks they execute are registered by
:mod:`flask_webhooks.delivery.tasks`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import typing as t
import weakref

from huey.consumer import Consumer
from huey.consumer import ConsumerStopped
from huey.consumer import Worker

from ..delivery.claim import lease_seconds
from ..state import get_state
from ..wording import plural
from .queue import backend_name
from .queue import is_blocking
from .sweeper import Sweeper

if t.TYPE_CHECKING:
    import huey as huey_mod
    from flask import Flask

    from ..state import WebhooksState

logger = logging.getLogger(__name__)

#: Longest sleep of an idle worker thread between polls of a non-blocking
#: queue (SQLite). Embedded threads are also woken by every local enqueue.
POLL_MAX_DELAY = 1.0
#: Longest back-off of a worker thread while a blocking queue (Redis) is down.
BLOCKING_MAX_DELAY = 5.0

_FORK_HOOK = "flask_webhooks.after_fork"


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
            self.state.close_transport()
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
    state = get_state(app)
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
        "flask-webhooks: worker for %s: %s, queue %s, sweep every %g s",
        app.name,
        plural(workers, "process", "processes")
        if processes
        else plural(workers, "thread"),
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
    logging.getLogger(__name__).setLevel(level)
