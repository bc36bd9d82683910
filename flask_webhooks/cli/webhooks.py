"""Webhook commands: ``list``, ``ping`` and ``secret`` (with ``--rotate``)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import typing as t

import click
import sqlalchemy as sa

from .. import models as m
from ..capture.outbox import test_delivery_row
from ..delivery.engine import deliver
from ..rotation import DEFAULT_OVERLAP
from ..signing import generate_secret
from ..state import get_state
from ..state import WebhooksState
from .common import _clip
from .common import _duration_option
from .common import _failing_attempts
from .common import _find_webhook
from .common import _health
from .common import _queue_only
from .common import _table
from .common import _when
from .common import webhooks_cli
from .tools import rotate_command


@webhooks_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List webhooks with their health.

    Health shows whether the webhook is enabled, its failure streak, and how
    many of its deliveries are queued or failed.
    """
    state = get_state()
    shown_url = state.config.redactor.url
    W = state.models.Webhook
    D = state.models.Delivery
    session = state.db.session
    hooks = session.scalars(sa.select(W).order_by(W.name)).all()
    counts: dict[int, dict[str, int]] = {}
    for webhook_id, status, count in session.execute(
        sa.select(D.webhook_id, D.status, sa.func.count())
        .where(D.status.in_((m.PENDING, m.RETRYING, m.FAILED)))
        .group_by(D.webhook_id, D.status)
    ):
        counts.setdefault(webhook_id, {})[status] = count
    # Attempts are read only where deliveries are being retried: a webhook
    # with a delivery streak already shows it, the others are not failing.
    health = {
        h.id: _health(
            h,
            counts.get(h.id, {}),
            _failing_attempts(state, h.id)
            if counts.get(h.id, {}).get(m.RETRYING) and not h.consecutive_failures
            else (0, None),
        )
        for h in hooks
    }
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": h.id,
                        "name": h.name,
                        "enabled": h.enabled,
                        "models": list(h.models or []),
                        "events": h.events,
                        "event_types": list(h.event_types or []),
                        "payload_url": shown_url(h.payload_url),
                        "last_delivery_status": h.last_delivery_status,
                        "last_delivery_at": h.last_delivery_at.isoformat()
                        if h.last_delivery_at
                        else None,
                        "consecutive_failures": h.consecutive_failures,
                        "disabled_reason": h.disabled_reason,
                        "deliveries": counts.get(h.id, {}),
                        "health": health[h.id],
                    }
                    for h in hooks
                ],
                indent=2,
            )
        )
        return
    if not hooks:
        click.echo(
            "No webhooks yet. Create one in the admin, or in code with "
            "webhooks.Webhook(...)."
        )
        return
    rows = [
        (
            h.id,
            h.name,
            "yes" if h.enabled else "no",
            ",".join(h.models or []) or "-",
            ",".join(e[0] for e in h.events) or "-",
            ",".join(h.event_types or []) or "-",
            _clip(shown_url(h.payload_url), 50),
            _when(h.last_delivery_at),
            health[h.id],
        )
        for h in hooks
    ]
    headers = ("ID", "NAME", "ENABLED", "MODELS", "EVENTS", "EVENT TYPES", "URL")
    click.echo(_table((*headers, "LAST", "HEALTH"), rows))


def _create_test_delivery(state: WebhooksState, hook: t.Any) -> str:
    """Write a ``test`` delivery for ``hook`` (a sample payload, no object);
    return its id."""
    row = test_delivery_row(
        hook,
        message="This is a test delivery from `flask webhooks ping`.",
        username=state.username(),
        limits=state.config.template_limits,
    )
    if row["status"] != m.PENDING:
        raise click.ClickException(
            f"webhook {hook.name!r}: {row['last_error']}; fix the template and try again"
        )
    # Hold no read transaction while another connection writes (SQLite locks).
    state.db.session.close()
    with state.engine().begin() as conn:
        state.outbox.write_numbered(conn, [row])
    return str(row["id"])


def _one_attempt(state: WebhooksState) -> WebhooksState:
    """``state`` with an empty retry schedule: every failure is final.

    A shallow copy for this command only; the app's own state (and any
    worker sharing it) keeps its schedule.
    """
    single = copy.copy(state)
    single.config = dataclasses.replace(state.config, retry_schedule=())
    return single


@webhooks_cli.command("ping")
@click.argument("webhook")
@click.option(
    "--retry",
    is_flag=True,
    help="Retry a failed ping on the WEBHOOKS_RETRY_SCHEDULE like any delivery "
    "(default: one attempt, no retries).",
)
def ping_command(webhook: str, retry: bool) -> None:
    """Send a test delivery to WEBHOOK (a name or an id) now; print the result.

    The request is signed and logged like any delivery (event ``test``), and
    sent once, from this process: a failed ping is not retried unless
    --retry is given. Exits with status 1 unless the receiver answered with
    a 2xx.
    """
    state = _queue_only(get_state())
    hook = _find_webhook(state, webhook)
    name = hook.name
    if not hook.enabled:
        reason = f" ({hook.disabled_reason})" if hook.disabled_reason else ""
        raise click.ClickException(
            f"webhook {name!r} is disabled{reason}; enable it first "
            "(admin, or set enabled=True)"
        )
    url = state.config.redactor.url(hook.payload_url)
    delivery_id = _create_test_delivery(state, hook)
    # Hold no read transaction while the delivery engine writes (SQLite locks).
    state.db.session.close()
    click.echo(f"sending test delivery {delivery_id} to {url} ...")
    outcome = deliver(state if retry else _one_attempt(state), delivery_id)
    result = outcome.result
    if result is None:
        row = state.db.session.get(state.models.Delivery, delivery_id)
        why = (row.last_error or row.status) if row is not None else "unknown"
        raise click.ClickException(f"not sent: {why}")
    took = f"{result.duration * 1000:.0f} ms"
    if result.ok:
        click.echo(f"OK: HTTP {result.status_code} in {took}")
        if result.body_excerpt:
            click.echo(f"response: {_clip(result.body_excerpt, 200)}")
        return
    click.echo(f"FAILED after {took}: {result.error}", err=True)
    if result.body_excerpt:
        click.echo(f"response: {_clip(result.body_excerpt, 200)}", err=True)
    if outcome.status == m.RETRYING:
        click.echo(
            "another attempt is scheduled; see `flask webhooks deliveries`", err=True
        )
    elif not retry and result.retryable:
        click.echo(
            "not retried: a ping is one attempt (`--retry` schedules retries)",
            err=True,
        )
    raise click.exceptions.Exit(1)


@webhooks_cli.command("secret")
@click.option(
    "--rotate",
    "rotate_name",
    metavar="NAME",
    help="Rotate webhook NAME's secret to the one read from standard input.",
)
@click.option(
    "--overlap",
    callback=_duration_option,
    help="With --rotate: how long the old secret keeps working (default 24h).",
)
def secret_command(rotate_name: str | None, overlap: dt.timedelta | None) -> None:
    """Print a new Standard Webhooks secret (whsec_...), or rotate a webhook's.

    A new secret works for every signature scheme; paste it into the
    webhook's secret and into the receiver's configuration. With --rotate
    NAME the new secret is read from standard input (a hidden prompt on a
    terminal) and nothing secret is printed; the old secret keeps working
    for --overlap (see docs/signatures.rst).
    """
    if rotate_name is None:
        if overlap is not None:
            raise click.UsageError("--overlap only works with --rotate")
        click.echo(generate_secret())
        return
    rotate_command(
        get_state(), rotate_name, DEFAULT_OVERLAP if overlap is None else overlap
    )
