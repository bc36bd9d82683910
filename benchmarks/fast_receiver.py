"""A fast local webhook receiver for the benchmarks (run as its own process).

An asyncio HTTP/1.1 server on 127.0.0.1 that answers every request with
``200 ok`` (keep-alive), so the receiver is never what limits a benchmark. It
records the ``time.monotonic()`` of each receipt (CLOCK_MONOTONIC is
system-wide on Linux, so the driver process can compare it with its own
clock) and whether the request carried an ``X-Hook-Signature``.

Control endpoints (GET): ``/__stats``, ``/__times``, ``/__reset`` and
``/__wait?count=N&timeout=S`` (answers when N requests have arrived).

Prints ``listening on PORT`` on its first stdout line. Stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from urllib.parse import parse_qs
from urllib.parse import urlsplit

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class State:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.signed = 0
        self.changed = asyncio.Event()

    def reset(self) -> None:
        self.times.clear()
        self.signed = 0

    def stats(self) -> dict[str, object]:
        return {
            "count": len(self.times),
            "signed": self.signed,
            "first": self.times[0] if self.times else None,
            "last": self.times[-1] if self.times else None,
        }


STATE: State


def _json(status: str, body: object) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


async def control(path: str) -> bytes:
    parts = urlsplit(path)
    if parts.path == "/__stats":
        return _json("200 OK", STATE.stats())
    if parts.path == "/__times":
        return _json("200 OK", {"times": STATE.times})
    if parts.path == "/__reset":
        STATE.reset()
        return _json("200 OK", STATE.stats())
    if parts.path == "/__wait":
        query = parse_qs(parts.query)
        count = int(query["count"][0])
        timeout = float(query.get("timeout", ["10"])[0])
        deadline = time.monotonic() + timeout
        while len(STATE.times) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            STATE.changed.clear()
            try:
                await asyncio.wait_for(STATE.changed.wait(), remaining)
            except TimeoutError:
                break
        return _json("200 OK", STATE.stats())
    return _json("404 Not Found", {"error": "unknown control path"})


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            _method, path, _ = lines[0].split(" ", 2)
            length = 0
            signed = False
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "x-hook-signature":
                    signed = True
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if length:
                await reader.readexactly(length)
            if path.startswith("/__"):
                writer.write(await control(path))
            else:
                STATE.times.append(time.monotonic())
                STATE.signed += signed
                STATE.changed.set()
                writer.write(OK)
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        return  # client went away, or the server is shutting down
    finally:
        writer.close()


async def main() -> None:
    global STATE
    STATE = State()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
