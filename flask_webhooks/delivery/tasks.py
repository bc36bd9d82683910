"""The Huey tasks and how delivery ids are handed to the queue.

:func:`register_tasks` registers the ``deliver``, ``deliver_batch`` and
``sweep`` tasks on the app's Huey instance (``init_app`` calls it; a worker
process must therefore load the app, as ``flask webhooks worker`` does).
:func:`enqueue` turns committed delivery ids into queued tasks, one per
delivery or, for a webhook's burst, batches of them (:func:`batches`).
"""

from __future__ import annotations

import typing as t

from ..worker.queue import backend_name
from ..worker.queue import enqueue_many
from .engine import deliver
from .engine import deliver_batch
from .recovery import sweep

if t.TYPE_CHECKING:
    from ..state import WebhooksState

DELIVER_TASK = "deliver"
DELIVER_BATCH_TASK = "deliver_batch"
SWEEP_TASK = "sweep"
#: An enqueue with at least this many deliveries of one webhook (a burst:
#: a bulk change, a backlog) sends them as batch tasks of up to
#: ``WEBHOOKS_DELIVERY_BATCH_SIZE`` deliveries; smaller groups get one task
#: per delivery, so they are sent in parallel by several worker threads.
BATCH_THRESHOLD = 10

_TRANSPORT_HOOK = "flask_webhooks.close_transport"


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
        state.close_transport()

    state.deliver_task = deliver_task
    state.deliver_batch_task = deliver_batch_task
    state.sweep_task = sweep_task

    if backend_name(huey) in ("memory", "sqlite") and state.config.embedded_workers > 0:

        @app.before_request
        def start_embedded() -> None:
            # Queued deliveries from before a restart go out without waiting
            # for the next commit.
            if state.workers is None:
                state.start_workers()


def enqueue(
    state: WebhooksState,
    ids: t.Iterable[str],
    *,
    delay: float | None = None,
    keys: t.Sequence[t.Hashable] | None = None,
    timeout: float | None = None,
) -> None:
    """Hand delivery ids to the queue (after their rows are committed).

    Many ids cost one round trip per batch where the backend allows it (a
    Redis ``LPUSH`` of many messages, one SQLite transaction). With ``keys``
    (the webhook id of each delivery) a webhook's burst of at least
    :data:`BATCH_THRESHOLD` deliveries goes as batch tasks (see
    :func:`batches`). With ``delay`` the tasks go to the queue's schedule.
    Starts embedded workers on first use and wakes idle ones. ``timeout``
    bounds the wait for a Redis queue (see
    :func:`~flask_webhooks.worker.queue.enqueue_many`).
    """
    id_list = [str(i) for i in ids]
    if not id_list:
        return
    if state.workers is None:
        state.start_workers()
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
        enqueue_many(state.huey, tasks, timeout=timeout)
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
