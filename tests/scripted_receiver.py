"""A receiver on 127.0.0.1 whose answer depends on the request.

Unlike :class:`tests.receiver.Receiver` (answers in arrival order), a
:class:`ScriptedReceiver` asks a function for each request's answer, so a
test can say "fail the first attempt of every delivery" while several worker
processes send in any order. Every request is recorded with the client port
and the times it started and ended (for overlap checks).
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
import typing as t
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer

from tests.receiver import Answer


@dataclass
class Hit:
    delivery_id: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    client_port: int
    started: float
    ended: float = 0.0
    status: int = 0

    def json(self) -> t.Any:
        return json.loads(self.body)


Decide = t.Callable[[str, int], Answer]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        # A killed worker resets its keep-alive connection: expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def always_ok(delivery_id: str, attempt: int) -> Answer:
    return Answer()


class ScriptedReceiver:
    """Threaded HTTP server; ``decide(delivery_id, attempt)`` gives each answer."""

    def __init__(self, decide: Decide = always_ok) -> None:
        self.decide = decide
        self.hits: list[Hit] = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without TCP_NODELAY the
            # body waits for the client's delayed ACK (about 40 ms).
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                started = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                delivery_id = self.headers.get("X-Webhook-ID", "")
                attempt = int(self.headers.get("X-Webhook-Attempt") or 0)
                hit = Hit(
                    delivery_id,
                    attempt,
                    dict(self.headers.items()),
                    body,
                    self.client_address[1],
                    started,
                )
                with receiver._cond:
                    receiver.hits.append(hit)
                    receiver._cond.notify_all()
                answer = receiver.decide(delivery_id, attempt)
                hit.status = answer.status
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender timed out and went away
                hit.ended = time.monotonic()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 128
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )

    def __enter__(self) -> ScriptedReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self._cond:
            return len(self.hits)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Hit]:
        """Block until at least ``count`` requests arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.hits) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} requests, got {len(self.hits)}"
                    )
                self._cond.wait(remaining)
            return list(self.hits)

    def by_delivery(self) -> dict[str, list[Hit]]:
        with self._cond:
            grouped: dict[str, list[Hit]] = collections.defaultdict(list)
            for hit in self.hits:
                grouped[hit.delivery_id].append(hit)
            return dict(grouped)
