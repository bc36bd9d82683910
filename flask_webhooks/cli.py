"""``flask webhooks ...`` commands.

``list``, ``deliveries``, ``ping``, ``retry``, ``sweep``, ``prune``, ``secret``
and ``worker``. Each exits non-zero on an error, with a message that says what
to do about it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import typing as t

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import AppGroup

from . import models as m
from .capture.outbox import test_delivery_row
from .delivery.engine import deliver
from .delivery.order import newer_delivered
from .delivery.recovery import requeue
from .delivery.recovery import sweep
from .signing import generate_secret
from .state import get_state
from .state import WebhooksState
from .worker.consumers import run_worker
from .worker.queue import backend_name

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


@webhooks_cli.command("deliveries")
@click.option(
    "--status",
    type=click.Choice(m.STATUSES),
    help="Only deliveries with this status.",
)
@click.option("--webhook", "webhook_name", metavar="NAME", help="Only this webhook.")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 100000),
    default=20,
    show_default=True,
    help="How many, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def deliveries_command(
    status: str | None, webhook_name: str | None, limit: int, as_json: bool
) -> None:
    """Show the delivery log, newest first."""
    state = get_state()
    D = state.models.Delivery
    stmt = sa.select(D).order_by(D.created_at.desc(), D.id).limit(limit)
    if status:
        stmt = stmt.where(D.status == status)
    if webhook_name:
        stmt = stmt.where(D.webhook_id == _find_webhook(state, webhook_name).id)
    rows = state.db.session.scalars(stmt).all()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": d.id,
                        "created_at": d.created_at.isoformat(),
                        "webhook": d.webhook_name,
                        "event": d.event,
                        "model": d.model,
                        "object_id": d.object_id,
                        "sequence": d.sequence,
                        "status": d.status,
                        "attempts": d.attempts,
                        "next_attempt_at": d.next_attempt_at.isoformat()
                        if d.next_attempt_at and d.status == m.RETRYING
                        else None,
                        "last_status_code": d.last_status_code,
                        "last_error": d.last_error,
                    }
                    for d in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        what = f" with status {status!r}" if status else ""
        click.echo(f"No deliveries{what}.")
        return
    click.echo(
        _table(
            (
                "ID",
                "CREATED",
                "WEBHOOK",
                "EVENT",
                "OBJECT",
                "SEQ",
                "STATUS",
                "TRIES",
                "RESULT",
            ),
            [
                (
                    d.id,
                    _when(d.created_at),
                    d.webhook_name,
                    d.event,
                    f"{d.model}:{d.object_id}" if d.object_id else d.model,
                    d.sequence,
                    d.status
                    + (
                        f" (next {_when(d.next_attempt_at)})"
                        if d.status == m.RETRYING
                        else ""
                    ),
                    d.attempts,
                    _clip(
                        d.last_error
                        or (f"HTTP {d.last_status_code}" if d.last_status_code else ""),
                        60,
                    ),
                )
                for d in rows
            ],
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
        state.outbox.write_numbered(conn, [row])
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


@webhooks_cli.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--failed", is_flag=True, help="Retry every failed delivery.")
@click.option(
    "--webhook",
    "webhook_name",
    metavar="NAME",
    help="With --failed: only this webhook.",
)
def retry_command(ids: tuple[str, ...], failed: bool, webhook_name: str | None) -> None:
    """Queue failed deliveries for another attempt now.

    Give delivery ids (from `flask webhooks deliveries`), or --failed for all
    failed deliveries. The attempt count goes on; succeeded deliveries and
    deliveries being sent are left alone.
    """
    if failed and ids:
        raise click.UsageError("give delivery ids or --failed, not both")
    if not failed and not ids:
        raise click.UsageError(
            "give delivery ids (see `flask webhooks deliveries --status failed`) "
            "or --failed"
        )
    if webhook_name and not failed:
        raise click.UsageError("--webhook only works with --failed")
    state = _queue_only(get_state())
    D = state.models.Delivery
    session = state.db.session
    if failed:
        stmt = sa.select(D.id).where(D.status == m.FAILED).order_by(D.created_at)
        if webhook_name:
            stmt = stmt.where(D.webhook_id == _find_webhook(state, webhook_name).id)
        wanted = list(session.scalars(stmt))
        if not wanted:
            click.echo("No failed deliveries.")
            return
    else:
        wanted = list(dict.fromkeys(ids))
    found = {
        row.id: row.status
        for row in session.execute(sa.select(D.id, D.status).where(D.id.in_(wanted)))
    }
    session.rollback()  # end the read transaction before writing elsewhere
    changed = requeue(state, [i for i in wanted if i in found])
    stale = newer_delivered(state, changed)
    state.enqueue(changed)
    if changed:
        click.echo(f"queued {len(changed)} deliveries for retry")
        note = _queue_note(state)
        if note:
            click.echo(note)
    for delivery_id in (i for i in changed if i in stale):
        click.echo(
            f"note: {delivery_id} is older than what the receiver already has (a "
            "later event of the same object was delivered); it keeps its sequence "
            "number, so a receiver that checks X-Webhook-Sequence ignores it"
        )
    problems = []
    for delivery_id in wanted:
        if delivery_id not in found:
            problems.append(f"{delivery_id}: no such delivery")
        elif delivery_id not in changed:
            problems.append(f"{delivery_id}: is {found[delivery_id]}, not retried")
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise click.exceptions.Exit(1)


@webhooks_cli.command("sweep")
def sweep_command() -> None:
    """Enqueue every delivery that is due and not leased.

    Workers run this every minute; run it by hand after restoring a queue or
    to hurry deliveries along.
    """
    state = _queue_only(get_state())
    count = sweep(state)
    click.echo(f"enqueued {count} due deliveries")
    note = _queue_note(state) if count else None
    if note:
        click.echo(note)


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


@webhooks_cli.command("prune")
@click.option(
    "--older-than",
    required=True,
    callback=_duration_option,
    help="Age of the deliveries to delete, e.g. 30d, 12h.",
)
@click.option(
    "--status",
    "statuses",
    type=click.Choice(m.FINAL_STATUSES),
    multiple=True,
    default=(m.SUCCEEDED,),
    show_default=True,
    help="Which deliveries to delete (repeat for several).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100000),
    default=1000,
    show_default=True,
    help="Rows deleted per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune_command(
    older_than: dt.timedelta,
    statuses: tuple[str, ...],
    batch_size: int,
    dry_run: bool,
) -> None:
    """Delete old finished deliveries and their attempts.

    By default only succeeded deliveries created more than --older-than ago;
    pending and retrying deliveries are never deleted. Works in batches so
    the table is not locked for long.
    """
    state = get_state()
    D = state.models.Delivery.__table__
    A = state.models.DeliveryAttempt.__table__
    cutoff = m.utcnow() - older_than
    where = sa.and_(D.c.status.in_(statuses), D.c.created_at < cutoff)
    engine = state.engine()
    if dry_run:
        with engine.connect() as conn:
            count = conn.scalar(sa.select(sa.func.count()).select_from(D).where(where))
        click.echo(
            f"would delete {count} deliveries ({', '.join(statuses)}) created "
            f"before {_when(cutoff)} UTC"
        )
        return
    deleted = attempts = 0
    while True:
        with engine.begin() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    sa.select(D.c.id)
                    .where(where)
                    .order_by(D.c.created_at)
                    .limit(batch_size)
                )
            ]
            if not ids:
                break
            # Attempts explicitly: SQLite only cascades with foreign keys on.
            attempts += conn.execute(
                sa.delete(A).where(A.c.delivery_id.in_(ids))
            ).rowcount
            deleted += conn.execute(sa.delete(D).where(D.c.id.in_(ids))).rowcount
    click.echo(
        f"deleted {deleted} deliveries ({', '.join(statuses)}) created before "
        f"{_when(cutoff)} UTC, and {attempts} attempts"
    )


@webhooks_cli.command("secret")
def secret_command() -> None:
    """Print a new Standard Webhooks secret (whsec_...).

    It works for every signature scheme; paste it into the webhook's secret
    and into the receiver's configuration.
    """
    click.echo(generate_secret())


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
