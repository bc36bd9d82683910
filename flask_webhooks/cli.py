"""``flask webhooks ...`` commands."""

from __future__ import annotations

import typing as t

import click
from flask import current_app
from flask.cli import AppGroup

if t.TYPE_CHECKING:
    from .extension import WebhooksState

webhooks_cli = AppGroup("webhooks", help="Webhook deliveries, workers and maintenance.")


def _state() -> WebhooksState:
    return t.cast("WebhooksState", current_app.extensions["webhooks"])


@webhooks_cli.command("sweep")
def sweep_command() -> None:
    """Enqueue every delivery that is due and not leased."""
    state = _state()
    count = state.ext.sweep()
    click.echo(f"enqueued {count} due deliveries")


@webhooks_cli.command("secret")
def secret_command() -> None:
    """Print a new Standard Webhooks secret (whsec_...)."""
    from .signing import generate_secret

    click.echo(generate_secret())


@webhooks_cli.command("worker")
@click.option("--workers", "-w", default=4, show_default=True, help="Worker count.")
@click.option("--processes", is_flag=True, help="Use processes instead of threads.")
def worker_command(workers: int, processes: bool) -> None:
    """Run a dedicated delivery worker (Huey consumer with the app loaded).

    Stops gracefully on SIGINT/SIGTERM. Runs the periodic sweep.
    """
    state = _state()
    if state.huey.immediate:
        raise click.ClickException(
            "WEBHOOKS_QUEUE_URL is immediate://: deliveries run at commit, "
            "there is nothing for a worker to do"
        )
    state.workers = False  # this process is the worker: no embedded threads
    consumer = state.huey.create_consumer(
        workers=workers,
        worker_type="process" if processes else "thread",
        periodic=True,
    )
    consumer.run()
