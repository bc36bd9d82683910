"""The periodic sweeper thread and the worker heartbeats it records.

Every worker (embedded threads or ``flask webhooks worker``) runs a
:class:`Sweeper`: every ``WEBHOOKS_SWEEP_INTERVAL`` seconds it enqueues what a
lost enqueue, a flushed queue or a dead worker left behind, and records a
heartbeat in the queue's key-value store that :func:`heartbeats` reads back
for the admin's status page.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import typing as t

from .. import models as m
from ..delivery.recovery import sweep
from ..rotation import forget_expired_secrets

if t.TYPE_CHECKING:
    from ..state import WebhooksState

# The sweeper's messages keep the logger they had before it left worker.py.
logger = logging.getLogger(__name__)

#: Key prefix of worker heartbeats in the queue's key-value store.
HEARTBEAT_PREFIX = "flask-webhooks.worker."
#: Heartbeats not refreshed for this long are deleted when a worker starts.
HEARTBEAT_EXPIRY = dt.timedelta(days=1)
#: A row the periodic sweeper enqueued is not enqueued again for this many
#: sweep intervals (unless a worker picks it up and it becomes due again).
SWEEP_HOLD_INTERVALS = 3


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
        """One periodic sweep; returns how many deliveries it enqueued.

        Also erases old secrets whose rotation overlap has ended.
        """
        with self.state.app.app_context():
            forget_expired_secrets(self.state)
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
