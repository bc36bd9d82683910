"""Delivery commands: ``deliveries``, ``retry``, ``sweep`` and ``prune``."""

from __future__ import annotations

import datetime as dt
import json

import click
import sqlalchemy as sa

from .. import models as m
from ..delivery.order import newer_delivered
from ..delivery.recovery import requeue
from ..delivery.recovery import sweep
from ..delivery.replay import count_replay
from ..delivery.replay import replay
from ..delivery.replay import REPLAY_CHOICES
from ..delivery.replay import replay_filter
from ..delivery.replay import replay_statuses
from ..delivery.replay import select_replay
from ..state import get_state
from ..wording import plural
from .common import _clip
from .common import _duration_option
from .common import _find_webhook
from .common import _on_terminal
from .common import _progress
from .common import _queue_note
from .common import _queue_only
from .common import _table
from .common import _when
from .common import parse_duration
from .common import webhooks_cli


@webhooks_cli.command("deliveries")
@click.option(
    "--status",
    type=click.Choice(m.STATUSES),
    help="Only deliveries with this status.",
)
@click.option(
    "--webhook",
    "webhook_ref",
    metavar="WEBHOOK",
    help="Only this webhook (a name or an id).",
)
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
    status: str | None, webhook_ref: str | None, limit: int, as_json: bool
) -> None:
    """Show the delivery log, newest first."""
    state = get_state()
    D = state.models.Delivery
    stmt = sa.select(D).order_by(D.created_at.desc(), D.id).limit(limit)
    if status:
        stmt = stmt.where(D.status == status)
    if webhook_ref:
        stmt = stmt.where(D.webhook_id == _find_webhook(state, webhook_ref).id)
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
                    ":".join(p for p in (d.model, d.object_id) if p) or "-",
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


#: Deliveries requeued (and enqueued) per step of ``retry``'s progress bar.
RETRY_CHUNK = 500

#: Why ``retry`` left a delivery alone, by its status.
_NOT_RETRIED = {
    m.SUCCEEDED: "already succeeded",
    m.DELIVERING: "being sent right now",
}


def _time_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dt.datetime | None:
    """A duration before now (``2h``) or a UTC time (``2026-05-01 12:00``)."""
    if value is None:
        return None
    try:
        return m.utcnow() - parse_duration(value)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a duration (2h, 30m, 7d) nor a UTC time "
            "(2026-05-01 12:00)",
            ctx,
            param,
        ) from None
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when


@webhooks_cli.command("retry")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option("--failed", is_flag=True, help="Retry every failed delivery.")
@click.option(
    "--webhook",
    "webhook_ref",
    metavar="WEBHOOK",
    help="With --failed, --since or --status: only this webhook (a name or an id).",
)
@click.option(
    "--since",
    callback=_time_option,
    help="Replay deliveries created since this long ago (2h, 30m, 7d) or "
    "this UTC time.",
)
@click.option(
    "--until",
    callback=_time_option,
    help="With --since: only deliveries created before this long ago or UTC time.",
)
@click.option(
    "--status",
    "status_choice",
    type=click.Choice(tuple(REPLAY_CHOICES)),
    help="Which deliveries of the range to send again [default: failed].",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before replaying.")
def retry_command(
    ids: tuple[str, ...],
    failed: bool,
    webhook_ref: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    status_choice: str | None,
    yes: bool,
) -> None:
    """Queue failed deliveries for another attempt now, or replay a time range.

    Give delivery ids (from `flask webhooks deliveries`), or --failed for all
    failed deliveries. The attempt count goes on; succeeded deliveries and
    deliveries being sent are left alone. Shows a progress bar on a terminal.

    With --since (and --until, --status, --webhook) the matching deliveries
    are replayed: their stored bytes are sent again with the same
    X-Webhook-ID and X-Webhook-Sequence, in sequence order, after the count
    is shown and confirmed (--yes skips the question). --status all also
    re-sends deliveries that succeeded.
    """
    ranged = since is not None or until is not None or status_choice is not None
    if (failed or ranged) and ids:
        raise click.UsageError(
            "give delivery ids or a selection (--failed, --since, --status), not both"
        )
    if not failed and not ids and not ranged:
        raise click.UsageError(
            "give delivery ids (see `flask webhooks deliveries --status failed`), "
            "--failed, or a time range with --since"
        )
    if webhook_ref and not (failed or ranged):
        raise click.UsageError(
            "--webhook only works with --failed, --since or --status"
        )
    if until is not None and since is None:
        raise click.UsageError("--until needs --since")
    if failed and status_choice not in (None, "failed"):
        raise click.UsageError(f"--failed contradicts --status {status_choice}")
    if ranged:
        _replay(webhook_ref, since, until, status_choice or "failed", yes)
        return
    state = _queue_only(get_state())
    D = state.models.Delivery
    session = state.db.session
    if failed:
        stmt = sa.select(D.id).where(D.status == m.FAILED).order_by(D.created_at)
        if webhook_ref:
            stmt = stmt.where(D.webhook_id == _find_webhook(state, webhook_ref).id)
        wanted = list(session.scalars(stmt))
        if not wanted:
            click.echo("No failed deliveries.")
            return
    else:
        wanted = list(dict.fromkeys(ids))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), RETRY_CHUNK):
        chunk = wanted[start : start + RETRY_CHUNK]
        found.update(
            (row.id, row.status)
            for row in session.execute(sa.select(D.id, D.status).where(D.id.in_(chunk)))
        )
    session.rollback()  # end the read transaction before writing elsewhere
    todo = [i for i in wanted if i in found]
    changed: list[str] = []
    stale: set[str] = set()
    with _progress(len(todo), "Retrying") as bar:
        for start in range(0, len(todo), RETRY_CHUNK):
            chunk = todo[start : start + RETRY_CHUNK]
            requeued = requeue(state, chunk)
            stale.update(newer_delivered(state, requeued))
            state.enqueue(requeued)
            changed.extend(requeued)
            bar.update(len(chunk))
    if changed:
        click.echo(f"queued {plural(len(changed), 'delivery')} for retry")
        note = _queue_note(state)
        if note:
            click.echo(note)
    for delivery_id in (i for i in changed if i in stale):
        click.echo(
            f"note: {delivery_id} is older than what the receiver already has (a "
            "later event of the same object was delivered); it keeps its sequence "
            "number, so a receiver that checks X-Webhook-Sequence ignores it"
        )
    done = set(changed)
    problems = []
    for delivery_id in wanted:
        if delivery_id not in found:
            problems.append(f"{delivery_id}: no such delivery")
        elif delivery_id not in done:
            status = found[delivery_id]
            why = _NOT_RETRIED.get(status, f"is {status}")
            problems.append(f"{delivery_id}: {why}, not retried")
    if problems:
        for line in problems:
            click.echo(line, err=True)
        raise click.exceptions.Exit(1)


def _replay(
    webhook_ref: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    status_choice: str,
    yes: bool,
) -> None:
    """``retry --since``: count, confirm, then replay in sequence order."""
    state = _queue_only(get_state())
    hook_id = _find_webhook(state, webhook_ref).id if webhook_ref is not None else None
    state.db.session.rollback()  # end the read transaction before writing
    where = replay_filter(
        state,
        webhook_id=hook_id,
        since=since,
        until=until,
        statuses=replay_statuses(status_choice),
    )
    counts = count_replay(state, where)
    total = sum(counts.values())
    span = f"created {_when(since) if since else 'ever'}"
    span += f" to {_when(until)} UTC" if until else " UTC until now"
    if not total:
        click.echo(f"No {status_choice} deliveries {span}.")
        return
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    where_to = f" to webhook {webhook_ref!r}" if webhook_ref else ""
    click.echo(f"{plural(total, 'delivery')}{where_to} {span}: {detail}")
    if not yes:
        click.confirm(
            "Send them again (same bytes, X-Webhook-ID and sequence)?", abort=True
        )
    ids = select_replay(state, where)
    done: list[str] = []
    with _progress(len(ids), "Replaying") as bar:
        for start in range(0, len(ids), RETRY_CHUNK):
            chunk = ids[start : start + RETRY_CHUNK]
            done.extend(replay(state, chunk))
            bar.update(len(chunk))
    click.echo(f"queued {plural(len(done), 'delivery')} for replay")
    if len(done) < len(ids):
        click.echo(f"{len(ids) - len(done)} left alone: being sent right now", err=True)
    note = _queue_note(state)
    if note and done:
        click.echo(note)


@webhooks_cli.command("sweep")
def sweep_command() -> None:
    """Enqueue every delivery that is due and not leased.

    Workers run this every minute; run it by hand after restoring a queue or
    to hurry deliveries along.
    """
    state = _queue_only(get_state())
    count = sweep(state)
    click.echo(f"enqueued {plural(count, 'due delivery', 'due deliveries')}")
    note = _queue_note(state) if count else None
    if note:
        click.echo(note)


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
            f"would delete {plural(count or 0, 'delivery')} ({', '.join(statuses)}) "
            f"created before {_when(cutoff)} UTC"
        )
        return
    total = 0
    if _on_terminal():  # the count only feeds the progress bar
        with engine.connect() as conn:
            total = (
                conn.scalar(sa.select(sa.func.count()).select_from(D).where(where)) or 0
            )
    deleted = attempts = 0
    with _progress(total, "Pruning") as bar:
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
            bar.update(len(ids))
    click.echo(
        f"deleted {plural(deleted, 'delivery')} ({', '.join(statuses)}) created "
        f"before {_when(cutoff)} UTC, and {plural(attempts, 'attempt')}"
    )
