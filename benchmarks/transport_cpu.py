"""CPU per request of the delivery transport against plain ``requests`` loops.

One thread, one keep-alive connection to ``fast_receiver.py`` (its own
process on 127.0.0.1), the same signed-delivery-like POST each time. Setups,
alternated over rounds:

* ``transport``: :meth:`flask_webhooks.transport.client.Transport.send` with
  an :class:`~flask_webhooks.transport.message.HTTPRequest` (what a worker
  thread does per delivery, without the database);
* ``session_post``: ``Session.post(..., allow_redirects=False)`` with
  ``trust_env = False`` (the loop a user would write);
* ``session_post_env``: the same with ``trust_env = True`` (requests' default).

The figure is CPU time (``time.thread_time``) per request, and the ratio
``transport / session_post`` (median over rounds). Lower is cheaper.

Usage::

    python benchmarks/transport_cpu.py [--requests 3000] [--rounds 5]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import time
import typing as t

import requests
from flask_webhooks.transport.client import Transport
from flask_webhooks.transport.message import HTTPRequest
from flask_webhooks.transport.policy import URLPolicy

import benchlib as bl

BODY = b'{"event": "created", "model": "item", "data": {"id": 1, "name": "x"}}'
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "flask-webhooks-bench",
    "X-Webhook-ID": "6f1c1c4e-0000-4000-8000-000000000001",
    "X-Webhook-Attempt": "1",
    "X-Hook-Signature": "ab" * 64,
}


def run_transport(url: str, n: int) -> float:
    transport = Transport(URLPolicy())
    request = HTTPRequest(
        "POST", url, HEADERS, BODY, connect_timeout=5, read_timeout=10
    )
    try:
        assert transport.send(request).ok
        cpu0 = time.thread_time()
        for _ in range(n):
            result = transport.send(request)
            if not result.ok:
                raise RuntimeError(f"transport: {result.error}")
        return (time.thread_time() - cpu0) / n
    finally:
        transport.close()


def run_session(url: str, n: int, trust_env: bool) -> float:
    with requests.Session() as session:
        session.trust_env = trust_env

        def post() -> requests.Response:
            return session.post(
                url, data=BODY, headers=HEADERS, timeout=(5, 10), allow_redirects=False
            )

        assert post().status_code == 200
        cpu0 = time.thread_time()
        for _ in range(n):
            if post().status_code != 200:
                raise RuntimeError("session: not 200")
        return (time.thread_time() - cpu0) / n


def main(argv: list[str] | None = None) -> dict[str, t.Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    bl.print_machine(bl.machine_info(None, None))
    setups: dict[str, t.Callable[[str, int], float]] = {
        "transport": run_transport,
        "session_post": lambda url, n: run_session(url, n, False),
        "session_post_env": lambda url, n: run_session(url, n, True),
    }
    cpu: dict[str, list[float]] = {name: [] for name in setups}
    receiver = bl.ReceiverProcess()
    try:
        for rnd in range(args.rounds):
            names = list(setups)
            if rnd % 2:
                names.reverse()
            for name in names:
                cpu[name].append(setups[name](receiver.url, args.requests))
                bl.log(
                    f"round {rnd + 1}/{args.rounds} {name}: "
                    f"{1e6 * cpu[name][-1]:.0f} CPU us per request"
                )
    finally:
        receiver.stop()
    ratio = bl.median(bl.ratios(cpu["transport"], cpu["session_post"]))
    print()
    bl.print_table(
        ["setup", "CPU us per request (median)"],
        [[name, 1e6 * bl.median(values)] for name, values in cpu.items()],
    )
    result = {
        **{f"{name}_cpu_us": 1e6 * bl.median(values) for name, values in cpu.items()},
        "transport_over_session_post": ratio,
        "requests": args.requests,
        "rounds": args.rounds,
    }
    print()
    bl.emit_json(result)
    return result


if __name__ == "__main__":
    main()
