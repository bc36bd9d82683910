"""Webhook commands: ``list``, ``ping`` and ``secret``."""

from __future__ import annotations

import json
import typing as t

import click
import sqlalchemy as sa

from .. import models as m
from ..capture.outbox import test_delivery_row
from ..delivery.engine import deliver
from ..signing import generate_secret
from ..state import get_state
from ..state import WebhooksState
from .common import _clip
from .common import _find_webhook
from .common import _health
from .common import _queue_only
from .common import _table
from .common import _when
from .common import webhooks_cli


@webhooks_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(as_json: bool) -> None:
    """List webhooks with their health.

    Health shows whether the webhook is enabled, its failure streak, and how
    many of its deliveries are queued or failed.
    """
    state = get_state()
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
                        "payload_url": h.payload_url,
                        "last_delivery_status": h.last_delivery_status,
                        "last_delivery_at": h.last_delivery_at.isoformat()
                        if h.last_delivery_at
                        else None,
                        "consecutive_failures": h.consecutive_failures,
                        "disabled_reason": h.disabled_reason,
                        "deliveries": counts.get(h.id, {}),
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
            _clip(h.payload_url, 50),
            _when(h.last_delivery_at),
            _health(h, counts.get(h.id, {})),
        )
        for h in hooks
    ]
    click.echo(
        _table(
            ("ID", "NAME", "ENABLED", "MODELS", "EVENTS", "URL", "LAST", "HEALTH"),
            rows,
        )
    )


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
        state.outbox.write(conn, [row])
    return str(row["id"])


@webhooks_cli.command("ping")
@click.argument("name")
def ping_command(name: str) -> None:
    """Send a test delivery to webhook NAME now and print the result.

    The request is signed and logged like any delivery (event ``test``), and
    sent from this process. Exits with status 1 unless the receiver answered
    with a 2xx.
    """
    state = _queue_only(get_state())
    hook = _find_webhook(state, name)
    if not hook.enabled:
        reason = f" ({hook.disabled_reason})" if hook.disabled_reason else ""
        raise click.ClickException(
            f"webhook {name!r} is disabled{reason}; enable it first "
            "(admin, or set enabled=True)"
        )
    url = hook.payload_url
    delivery_id = _create_test_delivery(state, hook)
    # Hold no read transaction while the delivery engine writes (SQLite locks).
    state.db.session.close()
    click.echo(f"sending test delivery {delivery_id} to {url} ...")
    outcome = deliver(state, delivery_id)
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
    raise click.exceptions.Exit(1)


@webhooks_cli.command("secret")
def secret_command() -> None:
    """Print a new Standard Webhooks secret (whsec_...).

    It works for every signature scheme; paste it into the webhook's secret
    and into the receiver's configuration.
    """
    click.echo(generate_secret())
