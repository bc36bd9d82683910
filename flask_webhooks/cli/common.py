"""What the ``flask webhooks`` commands share: the group, lookups, output."""

from __future__ import annotations

import datetime as dt
import typing as t

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from .. import models as m
from ..state import WebhooksState
from ..worker.queue import backend_name

webhooks_cli = AppGroup("webhooks", help="Webhook deliveries, workers and maintenance.")


def _queue_only(state: WebhooksState) -> WebhooksState:
    """Make this process hand deliveries to the queue without running them.

    A CLI command is short-lived: embedded worker threads started here would
    be stopped at exit, possibly mid-delivery. The app's workers (embedded or
    ``flask webhooks worker``) send what this command queues.
    """
    if state.workers is None:
        state.workers = False
    return state


def _queue_note(state: WebhooksState) -> str | None:
    backend = backend_name(state.huey)
    if backend == "immediate":
        return None
    if backend == "memory":
        return (
            "note: WEBHOOKS_QUEUE_URL is memory://, which this process does not "
            "share with the app; the deliveries are due and the app's periodic "
            "sweep sends them"
        )
    return (
        "a running worker sends them (`flask webhooks worker`, or the app's "
        "embedded workers)"
    )


def _table(headers: t.Sequence[str], rows: t.Sequence[t.Sequence[t.Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _clip(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _find_webhook(state: WebhooksState, name: str) -> t.Any:
    W = state.models.Webhook
    session = state.db.session
    hook = session.scalar(sa.select(W).where(W.name == name))
    if hook is None:
        names = session.scalars(sa.select(W.name).order_by(W.name)).all()
        known = ", ".join(names) if names else "none yet"
        raise click.ClickException(
            f"no webhook named {name!r} (known: {known}); see `flask webhooks list`"
        )
    return hook


def _health(hook: t.Any, counts: t.Mapping[str, int]) -> str:
    parts: list[str] = []
    if not hook.enabled:
        reason = f": {hook.disabled_reason}" if hook.disabled_reason else ""
        parts.append(f"disabled{reason}")
    if hook.consecutive_failures:
        parts.append(f"failing ({hook.consecutive_failures} in a row)")
    elif hook.last_delivery_status == m.SUCCEEDED:
        parts.append("ok")
    elif hook.last_delivery_status is None:
        parts.append("no deliveries yet")
    else:
        parts.append(str(hook.last_delivery_status))
    queued = counts.get(m.PENDING, 0) + counts.get(m.RETRYING, 0)
    if queued:
        parts.append(f"{queued} queued")
    if counts.get(m.FAILED):
        parts.append(f"{counts[m.FAILED]} failed")
    return ", ".join(parts)
