"""``python -m example_app`` (what ``make demo`` runs).

Initialises the database, starts the server on 127.0.0.1:$PORT (default 5000)
with embedded delivery workers, prints the URLs, and stops cleanly on Ctrl-C
(or SIGTERM).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import types

from flask import Flask
from flask_webhooks.state import get_state
from flask_webhooks.worker.queue import backend_name
from werkzeug.serving import make_server

from . import create_app
from .extensions import webhooks
from .seed import DEMO_WEBHOOK
from .seed import init_db

HOST = "127.0.0.1"


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


def start_workers(app: Flask) -> str:
    """Start the embedded workers now and say what delivers the webhooks.

    flask-webhooks starts them by itself at the first request or change; the
    demo starts them before it prints the banner, so the banner is true and
    deliveries left from a previous run go out at once.
    """
    state = get_state(app)
    backend = backend_name(state.huey)
    if state.start_workers():
        return f"{backend}, {state.workers.count} embedded worker threads running"
    if backend == "immediate":
        return "immediate, each delivery is sent in the request that commits it"
    if backend == "memory":
        return "memory, embedded workers off: nothing sends the deliveries"
    if backend == "sqlite":
        return (
            "sqlite, embedded workers off (WEBHOOKS_EMBEDDED_WORKERS = 0): "
            "run `flask --app example_app webhooks worker` to send"
        )
    return (
        f"{backend}, no embedded workers for this queue: run "
        "`flask --app example_app webhooks worker` to send"
    )


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # Huey logs every task at INFO; the request log and flask-webhooks' own
    # messages are what a demo user wants to see.
    logging.getLogger("huey").setLevel(logging.WARNING)
    raw_port = os.environ.get("PORT") or "5000"
    try:
        port = int(raw_port)
    except ValueError:
        print(f"PORT must be a number, got {raw_port!r}", file=sys.stderr)
        return 2
    app = create_app()
    try:
        server = make_server(HOST, port, app, threaded=True)
    except (OSError, SystemExit) as e:
        # Werkzeug explains "address in use" itself and exits; add what to do.
        if isinstance(e, OSError):
            print(f"Cannot listen on {HOST}:{port}: {e.strerror or e}", file=sys.stderr)
        print(
            f"Is the demo already running? Stop it, or use another port: "
            f"PORT={port + 1} make demo",
            file=sys.stderr,
        )
        return 1
    with app.app_context():
        for line in init_db():
            print(f"* {line}")
        state = get_state(app)
        workers = start_workers(app)
        # Deliveries left over from a previous run are sent again (sweep()
        # only enqueues them; the workers above send them).
        resumed = webhooks.sweep()
        if resumed:
            print(f"* resumed {resumed} pending deliveries")
    base = f"http://{HOST}:{port}"
    print(
        f"""
flask-webhooks demo on {base}/
  admin:     {base}/admin/
  receiver:  {base}/receiver/          (JSON: {base}/receiver/?format=json)
  API:       {base}/api/sites  {base}/api/devices
  queue:     {workers}
  webhook:   {DEMO_WEBHOOK!r} -> {app.config["DEMO_RECEIVER_URL"]}

Try:
  curl -s -X POST {base}/api/sites -H 'Content-Type: application/json' \\
       -d '{{"name": "Berlin 1", "status": "planned", "tags": ["prod"]}}'
  curl -s '{base}/receiver/?format=json'

Press Ctrl-C to stop.
""",
        flush=True,
    )
    # Also when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if state.workers:
            state.workers.stop()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
