"""Huey tasks, embedded consumer threads and the dedicated worker.

Tasks are registered on the app's Huey instance by ``init_app``; a worker
process must therefore load the app (``flask webhooks worker`` does).
"""

from __future__ import annotations

import atexit
import logging
import threading
import typing as t

from huey import crontab
from huey.consumer import Consumer

from .delivery import deliver
from .delivery import due_ids

if t.TYPE_CHECKING:
    from .extension import WebhooksState

logger = logging.getLogger("flask_webhooks.worker")

DELIVER_TASK = "deliver"
SWEEP_TASK = "sweep"


def register_tasks(state: WebhooksState) -> None:
    """Register ``deliver`` and the periodic ``sweep`` on the app's Huey."""
    huey = state.huey
    app = state.app
    key = f"{__name__}.{DELIVER_TASK}"
    if key in huey._registry._registry:
        raise RuntimeError(
            "this Huey instance already runs flask-webhooks tasks for another app; "
            "give each app its own Huey (or WEBHOOKS_QUEUE_URL)"
        )

    @huey.task(name=DELIVER_TASK)
    def deliver_task(delivery_id: str) -> str | None:
        with app.app_context():
            outcome = deliver(state, delivery_id)
        return outcome.status

    @huey.periodic_task(crontab(minute="*"), name=SWEEP_TASK)
    def sweep_task() -> int:
        with app.app_context():
            ids = due_ids(state, older_than=state.config.sweep_interval)
            state.enqueue(ids)
        if ids:
            logger.info("flask-webhooks: sweep re-enqueued %d deliveries", len(ids))
        return len(ids)

    state.deliver_task = deliver_task
    state.sweep_task = sweep_task


class ThreadConsumer(Consumer):
    """A Huey consumer that can run off the main thread (no signal handlers)."""

    def _set_signal_handlers(self) -> None:
        pass


class EmbeddedWorkers:
    """Consumer threads inside the web process, for the SQLite and memory queues."""

    def __init__(self, state: WebhooksState, workers: int) -> None:
        self.consumer = ThreadConsumer(
            state.huey, workers=workers, worker_type="thread", periodic=True
        )
        self._started = False

    def start(self) -> None:
        self.consumer.start()
        self._started = True
        atexit.register(self.stop)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.consumer.stop(graceful=True)


_start_lock = threading.Lock()


def start_embedded_workers(state: WebhooksState) -> None:
    """Start embedded workers once, when the queue needs them and they are on."""
    from .queue import backend_name

    with _start_lock:
        if state.workers is not None:
            return
        backend = backend_name(state.huey)
        count = state.config.embedded_workers
        if count <= 0 or backend not in ("memory", "sqlite"):
            state.workers = False  # nothing to start, and do not ask again
            return
        workers = EmbeddedWorkers(state, count)
        workers.start()
        state.workers = workers
        logger.info("flask-webhooks: started %d embedded worker threads", count)
