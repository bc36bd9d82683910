"""Operator commands: ``flask webhooks preview`` and the secret rotation of
``flask webhooks secret --rotate``.

Registered on the ``flask webhooks`` group by :mod:`flask_webhooks.cli`.
Stored secrets are never printed: the preview shows signatures, the rotation
reads the new secret from standard input.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import typing as t

import click
import sqlalchemy as sa

from ..preview import delivery_envelope
from ..preview import first_event
from ..preview import object_envelope
from ..preview import preview
from ..rotation import rotate_secret
from ..state import get_state
from ..validation import WebhookValidationError
from .common import webhooks_cli

if t.TYPE_CHECKING:
    from ..state import WebhooksState


def _webhook_named(state: WebhooksState, name: str) -> t.Any:
    W = state.models.Webhook
    hook = state.db.session.scalar(sa.select(W).where(W.name == name))
    if hook is None:
        raise click.ClickException(
            f"no webhook named {name!r}; see `flask webhooks list`"
        )
    return hook


def _newest_delivery(state: WebhooksState, hook: t.Any) -> str | None:
    D = state.models.Delivery
    return state.db.session.scalar(
        sa.select(D.id)
        .where(D.webhook_id == hook.id, D.body != b"")
        .order_by(D.created_at.desc())
        .limit(1)
    )


@webhooks_cli.command("preview")
@click.argument("name")
@click.option("--model", metavar="MODEL", help="A registered model name, with --id.")
@click.option("--id", "object_id", metavar="ID", help="The object's primary key.")
@click.option(
    "--event",
    type=click.Choice(("created", "updated", "deleted")),
    help="With --model: the event to show (default: updated, or the one the "
    "webhook listens to).",
)
@click.option(
    "--delivery",
    "delivery_id",
    metavar="ID",
    help="A stored delivery's event instead of an object.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def preview_command(
    name: str,
    model: str | None,
    object_id: str | None,
    event: str | None,
    delivery_id: str | None,
    as_json: bool,
) -> None:
    """Show what webhook NAME would send, without sending anything.

    For an object (--model site --id 3) as it is now, or the event of a
    stored delivery (--delivery ID); by default the webhook's newest
    delivery. Prints whether the event fires the webhook (models, events,
    conditions), the URL, the headers with the signatures as they would be
    computed (never the secret) and the body. Exits with status 1 when a
    template or the conditions fail.
    """
    if (model is None) != (object_id is None):
        raise click.UsageError("--model and --id go together")
    if model is not None and delivery_id is not None:
        raise click.UsageError("give --model/--id or --delivery, not both")
    if event is not None and model is None:
        raise click.UsageError("--event only works with --model/--id")
    state = get_state()
    hook = _webhook_named(state, name)
    try:
        if model is not None and object_id is not None:
            payload = object_envelope(
                state, model, object_id, event=event or first_event(hook)
            )
            source = f"{model} {object_id}"
        else:
            if delivery_id is None:
                delivery_id = _newest_delivery(state, hook)
                if delivery_id is None:
                    raise click.UsageError(
                        f"webhook {name!r} has no delivery yet: give --model and --id"
                    )
            payload = delivery_envelope(state, delivery_id)
            source = f"delivery {delivery_id}"
    except LookupError as e:
        raise click.ClickException(str(e).strip("'\"")) from None
    result = preview(state, hook, payload, source=source, delivery_id=delivery_id)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        _print_preview(hook, result)
    if result.errors:
        raise click.exceptions.Exit(1)


def _print_preview(hook: t.Any, result: t.Any) -> None:
    click.echo(
        f"Preview of webhook {hook.name!r} for {result.source}; nothing is sent."
    )
    what = f"{result.model}/{result.event}" if result.model else str(result.event)
    if result.listens is False:
        verdict = f"no: it does not listen to {what}"
    elif result.conditions_match is False:
        verdict = "no: the conditions do not match"
    elif "conditions" in result.errors:
        verdict = "no: the conditions fail"
    else:
        verdict = "yes" + (" (the conditions match)" if result.conditions_match else "")
    click.echo(f"Fires for {what}: {verdict}")
    for note in result.notes:
        click.echo(f"note: {note}")
    for field, message in result.errors.items():
        click.echo(f"error in {field}: {message}", err=True)
    click.echo("")
    click.echo(f"{result.method} {result.url or '(no URL)'}")
    for key, value in result.headers.items():
        click.echo(f"{key}: {value}")
    click.echo("")
    click.echo(result.body_text)


def _read_new_secret() -> str:
    stdin = sys.stdin
    if stdin.isatty():
        return str(
            click.prompt(
                "New secret", hide_input=True, confirmation_prompt=True, err=True
            )
        )
    return stdin.readline().strip()


def rotate_command(state: WebhooksState, name: str, overlap: dt.timedelta) -> None:
    """``flask webhooks secret --rotate NAME``: the new secret comes from
    standard input (a hidden prompt on a terminal) and is never printed."""
    hook = _webhook_named(state, name)
    secret = _read_new_secret()
    if not secret:
        raise click.ClickException(
            "no new secret on standard input; make one with `flask webhooks secret`"
            " and pipe it in"
        )
    try:
        rotate_secret(state, hook, secret, overlap)
    except WebhookValidationError as e:
        raise click.ClickException(
            "; ".join(f"{f}: {msg}" for f, msg in e.errors.items())
        ) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    until = hook.secret_rotated_until
    if until is None:
        click.echo(
            f"webhook {name!r}: secret replaced; requests are signed with it now"
        )
        return
    when = f"{until:%Y-%m-%d %H:%M:%S} UTC"
    scheme = hook.signature_scheme
    lines = [f"webhook {name!r}: secret rotated, overlap until {when}."]
    if scheme in ("standard", "both"):
        lines.append(
            "webhook-signature carries a signature with the old and one with the"
            " new secret until then."
        )
    if scheme in ("netbox", "both"):
        lines.append(
            f"X-Hook-Signature stays signed with the old secret until {when}, then"
            " with the new one: let the receiver accept both meanwhile."
        )
    click.echo("\n".join(lines))
