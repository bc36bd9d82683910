"""``flask webhooks worker``: a dedicated delivery worker."""

from __future__ import annotations

import click
from flask import current_app

from ..worker.consumers import run_worker
from .common import webhooks_cli


@webhooks_cli.command("worker")
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 1000),
    default=4,
    show_default=True,
    help="Deliveries sent at the same time (threads, or processes).",
)
@click.option(
    "--processes", is_flag=True, help="Fork worker processes instead of threads."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Logging to stderr (unless the app configures logging itself).",
)
def worker_command(workers: int, processes: bool, log_level: str) -> None:
    """Run a dedicated delivery worker (Huey consumer with the app loaded).

    Sends queued deliveries, retries them on schedule and sweeps every
    WEBHOOKS_SWEEP_INTERVAL seconds for deliveries whose enqueue was lost or
    whose worker died. SIGTERM or SIGINT stop it gracefully (running
    deliveries finish; a second signal interrupts them). Run as many workers,
    on as many hosts, as you like: they share the queue and the database.
    """
    try:
        run_worker(
            current_app._get_current_object(),  # type: ignore[attr-defined]
            workers=workers,
            processes=processes,
            log_level=log_level,
        )
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
