"""A raw-socket HTTP receiver on 127.0.0.1 that answers with exactly the bytes
a test gives it: what no well-behaved server library would send (NUL bytes
in the reason phrase, headers and body; headers trickled a byte at a time)."""

from __future__ import annotations

import socket
import threading
import typing as t

#: ``handler(conn, stop)``: answer one request on ``conn`` (its request has
#: been read); ``stop`` is set when the server closes.
Handler = t.Callable[[socket.socket, threading.Event], None]


def read_request(conn: socket.socket) -> bytes:
    """Read one request (headers and a ``Content-Length`` body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def fixed_answer(raw: bytes) -> Handler:
    """A handler sending ``raw`` (status line, headers, body) and closing."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(raw)

    return handle


def trickle_headers(interval: float) -> Handler:
    """A handler sending a status line, then one byte of a header every
    ``interval`` seconds until the server stops: a client waiting for the
    end of the headers never gets it."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.wait(interval):
            conn.sendall(b"z")

    return handle


class RawServer:
    """Serves each connection with ``handler`` in a thread of its own; counts
    the requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = read_request(conn)
                if not request:
                    return
                with self._lock:
                    self.requests.append(request)
                self.handler(conn, self.stop)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(5)
        self.sock.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
