"""``flask webhooks events``: the declared app event types (the catalog).

Added to the ``flask webhooks`` group by :mod:`flask_webhooks.cli`.
"""

from __future__ import annotations

import json

import click
import sqlalchemy as sa

from ..catalog import catalog
from ..state import get_state
from ..state import WebhooksState
from .common import webhooks_cli

__all__ = ["events_command"]


def _subscribers(state: WebhooksState) -> dict[str, list[str]]:
    """Event type name -> names of the enabled webhooks subscribed to it."""
    W = state.models.Webhook
    found: dict[str, list[str]] = {}
    rows = state.db.session.execute(
        sa.select(W.name, W.event_types).where(W.enabled).order_by(W.name)
    )
    for name, event_types in rows:
        for event_type in event_types or ():
            if isinstance(event_type, str):
                found.setdefault(event_type, []).append(name)
    return found


@webhooks_cli.command("events")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def events_command(name: str | None, as_json: bool) -> None:
    """List the declared app event types (webhooks.event_type()).

    With NAME, show that type's description, subscribed webhooks and the
    JSON Schema of its data (when it has a marshmallow schema).
    """
    state = get_state()
    entries = catalog(state.registry)
    if name is not None:
        entries = [e for e in entries if e.name == name]
        if not entries:
            declared = ", ".join(state.registry.event_type_names()) or "none"
            raise click.ClickException(
                f"no event type {name!r} is declared (declared: {declared})"
            )
    subscribers = _subscribers(state)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {**e.as_dict(), "webhooks": subscribers.get(e.name, [])}
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    if not entries:
        click.echo(
            "No app event types declared. Declare one with "
            'webhooks.event_type("invoice.paid", description="...").'
        )
        return
    if name is not None:
        (entry,) = entries
        click.echo(entry.name)
        click.echo(f"  description: {entry.description or '-'}")
        hooks = ", ".join(subscribers.get(entry.name, [])) or "none"
        click.echo(f"  enabled webhooks: {hooks}")
        if entry.schema is None:
            click.echo("  data: no schema declared (a dict or a model instance)")
        else:
            click.echo("  data (JSON Schema):")
            click.echo(_indent(json.dumps(entry.schema, indent=2), 4))
        return
    rows = [
        (
            e.name,
            str(len(subscribers.get(e.name, []))),
            "yes" if e.schema is not None else "-",
            e.description or "-",
        )
        for e in entries
    ]
    headers = ("NAME", "WEBHOOKS", "SCHEMA", "DESCRIPTION")
    widths = [max(len(r[i]) for r in (headers, *rows)) for i in range(3)]
    for row in (headers, *rows):
        cells = [v.ljust(w) for v, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[3]]).rstrip())


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in text.splitlines())
