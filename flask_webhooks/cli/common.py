"""What the ``flask webhooks`` commands share: the group, lookups, output."""

from __future__ import annotations

import datetime as dt
import re
import sys
import typing as t

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from .. import models as m
from ..state import WebhooksState
from ..wording import plural
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


def _find_webhook(state: WebhooksState, ref: str) -> t.Any:
    """The webhook named ``ref``, else the one whose id is ``ref`` (all digits).

    A name wins: a webhook named ``"2"`` is found by that name even when
    another webhook has the id 2 (``flask webhooks list`` shows both).
    """
    W = state.models.Webhook
    session = state.db.session
    hook = session.scalar(sa.select(W).where(W.name == ref))
    by_id = ref.isascii() and ref.isdigit()
    if hook is None and by_id:
        hook = session.get(W, int(ref))
    if hook is None:
        names = session.scalars(sa.select(W.name).order_by(W.name)).all()
        known = ", ".join(names) if names else "none yet"
        what = "named or numbered" if by_id else "named"
        raise click.ClickException(
            f"no webhook {what} {ref!r} (known: {known}); see `flask webhooks list`"
        )
    return hook


#: How many recent attempts ``list`` reads to measure a failure streak.
STREAK_SCAN = 100


def _failing_attempts(
    state: WebhooksState, webhook_id: t.Any
) -> tuple[int, str | None]:
    """Failed attempts of the webhook's deliveries since its last success.

    Returns the count (at most :data:`STREAK_SCAN`) and the latest error.
    The webhook's own streak counts deliveries that failed for good; this
    one sees a receiver that is down while its deliveries are still retrying.
    """
    A = state.models.DeliveryAttempt
    D = state.models.Delivery
    errors = state.db.session.scalars(
        sa.select(A.error)
        .join(D, A.delivery_id == D.id)
        .where(D.webhook_id == webhook_id)
        .order_by(A.started_at.desc(), A.id.desc())
        .limit(STREAK_SCAN)
    ).all()
    streak = 0
    for error in errors:
        if error is None:
            break
        streak += 1
    return streak, (errors[0] if streak else None)


def _health(
    hook: t.Any,
    counts: t.Mapping[str, int],
    failing: tuple[int, str | None] = (0, None),
) -> str:
    """The one-line health summary of ``flask webhooks list``.

    :param failing: the webhook's failed attempts since its last success
        and the latest error (:func:`_failing_attempts`), for webhooks whose
        deliveries are still being retried.
    """
    parts: list[str] = []
    if not hook.enabled:
        reason = f": {hook.disabled_reason}" if hook.disabled_reason else ""
        parts.append(f"disabled{reason}")
    attempts, error = failing
    if hook.consecutive_failures:
        parts.append(f"failing ({hook.consecutive_failures} in a row)")
    elif attempts:
        more = "+" if attempts >= STREAK_SCAN else ""
        why = f": {_clip(error, 40)}" if error else ""
        parts.append(f"failing ({plural(attempts, 'attempt')}{more} in a row{why})")
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


def _on_terminal() -> bool:
    """Whether stderr, where progress bars go, is a terminal."""
    return sys.stderr.isatty()


def _progress(length: int, label: str) -> t.Any:
    """A progress bar on stderr when it is a terminal; silent otherwise.

    Use as ``with _progress(n, "Deleting") as bar: ... bar.update(k)``.
    Output piped to a file or another program gets no bar at all (not even
    the label click would print once).
    """
    stream = sys.stderr
    return click.progressbar(
        length=length,
        label=label,
        file=stream,
        hidden=not _on_terminal(),
        show_pos=True,
    )


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` or ``2w`` as a timedelta."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit: "
            "30d, 12h, 90m, 3600s or 2w"
        )
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def _duration_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dt.timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None
