"""A hung Redis does not hold up commits: the after-commit enqueue gives up
after ``WEBHOOKS_ENQUEUE_TIMEOUT``; the outbox row stays ``pending`` and the
sweep delivers it once the queue works again."""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time

import pytest
from flask_webhooks import models as m
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.worker.queue import REDIS_OPTIONS

from tests.test_faults import free_port
from tests.test_faults import RedisServer
from tests.worker_helpers import open_stack


class HungServer:
    """Accepts TCP connections on 127.0.0.1, reads what comes, never answers:
    a Redis that is stuck (swapping, paused, a dead proxy)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self.connections:
            conn.close()


@pytest.mark.slow
def test_hung_redis_commit_returns_and_the_sweep_delivers_later(tmp_path, caplog):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    hung = HungServer(port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with (
            open_stack(tmp_path, url) as stack,
            RecordingReceiver() as rx,
            caplog.at_level(logging.ERROR, "flask_webhooks"),
        ):
            assert stack.state.config.enqueue_timeout == 1.0
            stack.add_hook(rx.url)
            started = time.monotonic()
            (delivery_id,) = stack.commit_items(1)
            took = time.monotonic() - started
            # The queue's own socket timeout is 10 s; the commit gave up on
            # the enqueue long before that.
            assert REDIS_OPTIONS["socket_timeout"] == 10
            assert took < REDIS_OPTIONS["socket_timeout"] / 2
            assert hung.connections, "the enqueue did reach the hung server"
            assert "enqueue after commit failed" in caplog.text
            assert "Timeout" in caplog.text
            assert stack.rows()[delivery_id].status == m.PENDING

            # The queue works again (a real Redis on the same port): the
            # sweep enqueues the pending row and a worker delivers it.
            hung.close()
            server = RedisServer(tmp_path)
            server.port = port
            server.start()
            try:
                with stack.app.app_context():
                    assert stack.ext["webhooks"].sweep() == 1
                    huey = stack.state.huey
                    task = huey.dequeue()
                    assert task.args == (delivery_id,)
                    huey.execute(task)
                    assert huey.dequeue() is None
            finally:
                server.stop()
            assert [r.delivery_id for r in rx.requests] == [delivery_id]
            assert stack.rows()[delivery_id].status == m.SUCCEEDED
    finally:
        hung.close()


@pytest.mark.slow
def test_enqueue_timeout_off_waits_for_the_queue_socket_timeout(tmp_path):
    """``WEBHOOKS_ENQUEUE_TIMEOUT = 0`` keeps the queue's own timeouts (the
    behaviour the setting exists to avoid): the commit waits for them."""
    port = free_port()
    hung = HungServer(port)
    url = f"redis://127.0.0.1:{port}/0?socket_timeout=3"
    try:
        with open_stack(tmp_path, url, {"WEBHOOKS_ENQUEUE_TIMEOUT": 0}) as stack:
            assert stack.state.config.enqueue_timeout is None
            stack.add_hook("http://127.0.0.1:9/")
            started = time.monotonic()
            stack.commit_items(1)
            assert time.monotonic() - started >= 3
    finally:
        hung.close()
