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

from flask_webhooks.worker.queue import backend_name
from werkzeug.serving import make_server

from . import create_app
from .extensions import webhooks
from .seed import DEMO_WEBHOOK
from .seed import init_db

HOST = "127.0.0.1"


def _interrupt(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt


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
        state = app.extensions["webhooks"]
        # Deliveries left over from a previous run are sent again; this also
        # starts the embedded workers now rather than on the first change.
        resumed = webhooks.sweep()
        if resumed:
            print(f"* resumed {resumed} pending deliveries")
    base = f"http://{HOST}:{port}"
    workers = state.config.embedded_workers if state.workers else 0
    print(
        f"""
flask-webhooks demo on {base}/
  admin:     {base}/admin/
  receiver:  {base}/receiver/          (JSON: {base}/receiver/?format=json)
  API:       {base}/api/sites  {base}/api/devices
  queue:     {backend_name(state.huey)}, {workers} embedded worker threads
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
