"""Sending deliveries: claim, build the request, send, schedule.

Per attempt the database sees two short transactions:

1. the *claim*: one conditional ``UPDATE ... RETURNING`` that takes the lease
   (status ``delivering``, ``leased_until``, ``attempts + 1``) only if the row
   is due and nobody holds it, plus a read of its webhook;
2. the *result* (:mod:`flask_webhooks.recording`): the delivery row, the
   attempt row and, when the delivery ends, the webhook's health.

A batch (:func:`deliver_batch`, the task a burst of deliveries of one webhook
is queued as) shares both: one claim for the whole batch, one result
transaction for its successful attempts.

The lease outlives the longest request (connect timeout + read timeout +
``WEBHOOKS_LEASE_MARGIN``; twice that for a batch, renewed before a request
it would not cover). The result is written only while the row is still ours
(status ``delivering`` and the attempt number we claimed): a worker that
overran its lease and lost the row to another worker records its attempt in
the history but does not overwrite the newer outcome.

What a lost enqueue, a flushed queue or a killed worker leaves behind is
found by :func:`flask_webhooks.sweeping.sweep`; a worker's claim ignores the
sweeper's marks.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import random
import time
import types
import typing as t

import sqlalchemy as sa

from . import __version__
from . import models as m
from .payload import render_headers
from .payload import render_url
from .payload import template_context
from .recording import Attempt
from .recording import Outcome
from .recording import record
from .signing import signature_headers
from .transport import HTTPRequest

if t.TYPE_CHECKING:
    from .extension import Config
    from .extension import WebhooksState

logger = logging.getLogger("flask_webhooks.delivery")

USER_AGENT = f"flask-webhooks/{__version__}"
#: Longest wait a ``Retry-After`` header can ask for (24 hours).
MAX_RETRY_AFTER = 24 * 3600.0
#: Shortest wait a ``Retry-After`` header can ask for.
MIN_RETRY_AFTER = 1.0
#: A task may arrive this early (clock skew between hosts) and still claim.
EARLY_TOLERANCE = dt.timedelta(seconds=1)
#: A batch writes the results of successful attempts at least this often
#: (a failed attempt is written at once, so the webhook's health is current
#: for the next attempt).
RECORD_INTERVAL = 1.0
_CLAIMABLE = (m.PENDING, m.RETRYING)


def retry_delay(
    schedule: t.Sequence[float],
    attempts: int,
    *,
    retry_after: float | None = None,
    at_least_step: bool = False,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds to wait after the ``attempts``-th failed attempt, or None when
    the schedule is exhausted (``len(schedule) + 1`` attempts made).

    The schedule step gets +/-20 % jitter. A ``Retry-After`` from the
    receiver replaces it, clamped to [:data:`MIN_RETRY_AFTER`,
    :data:`MAX_RETRY_AFTER`] (never below a step that is itself shorter than
    the minimum). With ``at_least_step`` (a 429 or a timeout: the receiver is
    overloaded) the wait is never shorter than the jittered step.

    :param rng: the random source for the jitter (tests pass a seeded one).
    """
    if attempts < 1 or attempts > len(schedule):
        return None
    step = float(schedule[attempts - 1]) * (rng or random).uniform(0.8, 1.2)
    if retry_after is None:
        return step
    wanted = min(max(retry_after, min(MIN_RETRY_AFTER, step)), MAX_RETRY_AFTER)
    return max(wanted, step) if at_least_step else wanted


def lease_seconds(config: Config, hook_timeout: float | None = None) -> float:
    """How long a claim lasts: connect + read timeout + the lease margin."""
    timeout = max(config.timeout, float(hook_timeout or 0))
    return config.connect_timeout + timeout + config.lease_margin


def _claim_columns(
    table: sa.Table, webhooks: sa.Table | None
) -> list[sa.ColumnElement[t.Any]]:
    c = table.c
    columns: list[sa.ColumnElement[t.Any]] = [
        c.id,
        c.webhook_id,
        c.attempts,
        c.body,
        c.payload,
        c.content_type,
    ]
    if webhooks is not None:
        # The webhook's version, so a cached copy of the webhook can be used
        # without reading it again.
        columns.append(
            sa.select(webhooks.c.updated_at)
            .where(webhooks.c.id == c.webhook_id)
            .scalar_subquery()
            .label("webhook_updated_at")
        )
    return columns


@functools.lru_cache(maxsize=32)
def _claim_statements(
    table: sa.Table, webhooks: sa.Table | None, no_flush_wait: bool = False
) -> tuple[t.Any, t.Any, t.Any]:
    """The claim ``UPDATE`` (plain and with ``RETURNING``) and the read-back
    ``SELECT``, built once per table.

    Building a statement and its cache key costs SQLAlchemy more than running
    it (measured ~570 us vs ~110 us for the claim), so the statements of an
    attempt are built once with bind parameters.
    """
    c = table.c
    stmt = (
        sa.update(table)
        .where(c.id.in_(sa.bindparam("b_ids", expanding=True)))
        .where(
            sa.or_(
                sa.and_(
                    c.status.in_(_CLAIMABLE),
                    sa.or_(
                        c.next_attempt_at.is_(None),
                        c.next_attempt_at <= sa.bindparam("b_due"),
                    ),
                ),
                sa.and_(
                    c.status == m.DELIVERING,
                    sa.or_(
                        c.leased_until.is_(None),
                        c.leased_until < sa.bindparam("b_now"),
                    ),
                ),
            )
        )
        .values(
            status=m.DELIVERING,
            leased_until=sa.bindparam("b_lease_until"),
            attempts=c.attempts + 1,
            updated_at=sa.bindparam("b_updated_at"),
        )
    )
    if no_flush_wait:
        # PostgreSQL: the (autocommitted) statement's own transaction commits
        # without waiting for the WAL flush; see _claiming.
        stmt = stmt.where(
            sa.func.set_config("synchronous_commit", "off", True) == "off"
        )
    columns = _claim_columns(table, webhooks)
    # Without RETURNING: the rows carrying this claim's lease are ours.
    read_back = sa.select(*columns).where(
        c.id.in_(sa.bindparam("b_ids", expanding=True)),
        c.status == m.DELIVERING,
        c.leased_until == sa.bindparam("b_lease_until"),
    )
    return stmt, stmt.returning(*columns), read_back


@functools.lru_cache(maxsize=32)
def _webhook_statement(table: sa.Table) -> t.Any:
    return sa.select(table).where(table.c.id.in_(sa.bindparam("b_ids", expanding=True)))


@functools.lru_cache(maxsize=32)
def _renew_statement(table: sa.Table) -> t.Any:
    """Extends the lease of rows still carrying this worker's lease."""
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id.in_(sa.bindparam("b_ids", expanding=True)),
            c.status == m.DELIVERING,
            c.leased_until == sa.bindparam("b_old"),
        )
        .values(leased_until=sa.bindparam("b_new"))
    )


def claim_many(
    conn: sa.Connection,
    table: sa.Table,
    delivery_ids: t.Sequence[str],
    now: dt.datetime,
    lease: float,
    webhooks: sa.Table | None = None,
    *,
    no_flush_wait: bool = False,
) -> list[sa.Row[t.Any]]:
    """Atomically take the due ones of ``delivery_ids`` for one attempt each.

    One conditional ``UPDATE``: it matches only ``pending``/``retrying`` rows
    that are due, or ``delivering`` rows whose lease has expired (their
    worker died). Returns the claimed rows (``id``, ``webhook_id``,
    ``attempts`` (this attempt's number), ``body``, ``payload``,
    ``content_type``), in no particular order; rows someone else holds or
    that are not due are left out. All of them get the same ``leased_until``
    (``now`` + ``lease``), which identifies this claim. With ``webhooks``
    (the webhook table) each row also carries ``webhook_updated_at``.
    ``no_flush_wait`` (PostgreSQL, autocommit connections only) lets the
    statement's transaction commit without waiting for the disk.
    """
    update, update_returning, read_back = _claim_statements(
        table, webhooks, no_flush_wait
    )
    params = {
        "b_ids": list(delivery_ids),
        "b_due": now + EARLY_TOLERANCE,
        "b_now": now,
        "b_lease_until": now + dt.timedelta(seconds=lease),
        "b_updated_at": now,
    }
    if conn.dialect.update_returning:
        return list(conn.execute(update_returning, params))
    if conn.execute(update, params).rowcount == 0:
        return []
    return list(conn.execute(read_back, params))


def claim(
    conn: sa.Connection,
    table: sa.Table,
    delivery_id: str,
    now: dt.datetime,
    lease: float,
) -> sa.Row[t.Any] | None:
    """Atomically take one delivery for one attempt (see :func:`claim_many`).

    Returns the claimed row, or None if someone else has it or it is not due.
    """
    rows = claim_many(conn, table, [delivery_id], now, lease)
    return rows[0] if rows else None


def deliver(
    ext: WebhooksState,
    delivery_id: str,
    *,
    now: dt.datetime | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """Make one attempt of ``delivery_id``.

    Claims the row, sends the request, records the attempt, sets
    ``succeeded``, ``retrying`` (and schedules the retry) or ``failed``, then
    sends the signals. Never raises for HTTP problems; database errors
    propagate (the row is then recovered by :func:`sweep`).

    :param now: the time of the attempt (tests pin it); ``next_attempt_at``
        is ``now`` + the request's duration + the retry delay.
    :param rng: random source for the retry jitter.
    """
    return deliver_batch(ext, [delivery_id], now=now, rng=rng)[0]


def deliver_batch(
    ext: WebhooksState,
    delivery_ids: t.Sequence[str],
    *,
    now: dt.datetime | None = None,
    rng: random.Random | None = None,
) -> list[Outcome]:
    """Make one attempt of each of ``delivery_ids``, one after the other.

    What :func:`deliver` does for one delivery, with the database work
    shared: one claim ``UPDATE`` and one read of the webhooks for the whole
    batch, and the results of successful attempts written together (at
    least every :data:`RECORD_INTERVAL` seconds; a failed attempt is written
    at once). The claim's lease covers two requests' worth of time and is
    renewed before a request that it would not cover, so a crashed worker's
    batch is taken over as soon as its lease runs out. Returns one
    :class:`Outcome` per id, in order (``claimed=False`` for ids that were
    not due or held by someone else).
    """
    ids = list(dict.fromkeys(str(i) for i in delivery_ids))
    if not ids:
        return []
    D = ext.models.Delivery.__table__
    W = ext.models.Webhook.__table__
    cfg = ext.config
    start = now or m.utcnow()
    lease = lease_seconds(cfg) * (2 if len(ids) > 1 else 1)
    engine = ext.engine()
    with _claiming(engine) as conn:
        rows = claim_many(
            conn,
            D,
            ids,
            start,
            lease,
            W,
            no_flush_wait=conn.dialect.name == "postgresql",
        )
        hooks = _webhooks(ext, conn, W, rows)
    outcomes = {i: Outcome(i, claimed=False) for i in ids}
    by_id = {r.id: r for r in rows}
    queue = [by_id[i] for i in ids if i in by_id]
    lease_until = start + dt.timedelta(seconds=lease)
    ours = set(by_id)
    waiting: list[Attempt] = []
    last_write = time.monotonic()
    for position, row in enumerate(queue):
        if row.id not in ours:
            outcomes[row.id] = Outcome(row.id, True, None)
            continue
        hook = hooks.get(row.webhook_id) if row.webhook_id is not None else None
        attempt_start = now or m.utcnow()
        if hook is not None and hook.enabled:
            need = dt.timedelta(
                seconds=lease_seconds(cfg, hook.timeout) - cfg.lease_margin / 2
            )
            if lease_until - attempt_start < need:
                rest = [r.id for r in queue[position:] if r.id in ours]
                new_until = attempt_start + dt.timedelta(
                    seconds=lease_seconds(cfg, hook.timeout)
                    * (2 if len(rest) > 1 else 1)
                )
                ours -= _renew(ext, D, rest, lease_until, new_until)
                lease_until = new_until
                if row.id not in ours:
                    outcomes[row.id] = Outcome(row.id, True, None)
                    continue
        a = _attempt(ext, row, hook, attempt_start, pinned=now is not None, rng=rng)
        waiting.append(a)
        if (
            a.status != m.SUCCEEDED
            or position == len(queue) - 1
            or time.monotonic() - last_write >= RECORD_INTERVAL
        ):
            for outcome in record(ext, waiting):
                outcomes[outcome.delivery_id] = outcome
            waiting = []
            last_write = time.monotonic()
    if waiting:
        for outcome in record(ext, waiting):
            outcomes[outcome.delivery_id] = outcome
    return [outcomes[i] for i in ids]


def _claiming(engine: sa.Engine) -> t.ContextManager[sa.Connection]:
    """The connection of a claim.

    On PostgreSQL the claim is one autocommitted statement that also sets
    ``synchronous_commit`` off for its own transaction
    (``set_config(..., true)``), so it costs one round trip and does not wait
    for the WAL flush: the claim is the first database step on the path from
    a commit to the receiver, and ``BEGIN``, the flush and ``COMMIT`` were
    most of its time (5.0 ms autocommitted and flushed vs 3.0 ms with ``SET
    LOCAL`` in a transaction, measured on an idle machine). A database crash
    could at worst lose the claim of an attempt in flight; the delivery is
    then sent again under the same attempt number, which at-least-once
    delivery allows anyway. The next synchronous commit (the attempt's
    result) flushes the claim with it. Elsewhere (SQLite) the claim runs in
    a transaction: applications commonly take over SQLite's ``BEGIN`` (for
    SAVEPOINT support), which autocommit would bypass.
    """
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.begin()


def _webhooks(
    ext: WebhooksState, conn: sa.Connection, W: sa.Table, rows: list[sa.Row[t.Any]]
) -> dict[t.Any, types.SimpleNamespace]:
    """The webhooks of the claimed ``rows``, as mutable copies.

    Webhook rows are cached per process and used while their ``updated_at``
    (returned by the claim) is unchanged; every change of a webhook's
    settings moves it (the health columns, which do not, are rewritten by
    conditional statements). Only unknown or changed webhooks are read.
    """
    cache = ext.webhook_cache
    wanted = {
        r.webhook_id: r.webhook_updated_at for r in rows if r.webhook_id is not None
    }
    stale = [
        hook_id
        for hook_id, version in wanted.items()
        if version is None or hook_id not in cache or cache[hook_id][0] != version
    ]
    if stale:
        found = {
            h.id: h._mapping
            for h in conn.execute(_webhook_statement(W), {"b_ids": stale})
        }
        for hook_id in stale:
            if hook_id in found:
                cache[hook_id] = (found[hook_id]["updated_at"], dict(found[hook_id]))
            else:
                cache.pop(hook_id, None)
    return {
        hook_id: types.SimpleNamespace(**cache[hook_id][1])
        for hook_id in wanted
        if hook_id in cache
    }


def _renew(
    ext: WebhooksState,
    table: sa.Table,
    delivery_ids: list[str],
    old: dt.datetime,
    new: dt.datetime,
) -> set[str]:
    """Move the lease of ``delivery_ids`` from ``old`` to ``new``; return the
    ids that were no longer ours (another worker claimed them after our lease
    ran out)."""
    with ext.engine().begin() as conn:
        done = conn.execute(
            _renew_statement(table), {"b_ids": delivery_ids, "b_old": old, "b_new": new}
        ).rowcount
        if done == len(delivery_ids):
            return set()
        c = table.c
        kept = set(
            conn.execute(
                sa.select(c.id).where(c.id.in_(delivery_ids), c.leased_until == new)
            ).scalars()
        )
    return set(delivery_ids) - kept


def _attempt(
    ext: WebhooksState,
    row: t.Any,
    hook: t.Any,
    start: dt.datetime,
    *,
    pinned: bool,
    rng: random.Random | None,
) -> Attempt:
    """Send one claimed delivery (or decide it cannot be sent)."""
    cfg = ext.config
    number = int(row.attempts)

    def unsent(reason: str, *, count_failure: bool = False) -> Attempt:
        return Attempt(
            row.id,
            number,
            hook,
            start,
            start,
            m.FAILED,
            error=reason,
            count_failure=count_failure,
        )

    if hook is None:
        return unsent("webhook was deleted")
    if not hook.enabled:
        return unsent(
            "webhook is disabled"
            + (f": {hook.disabled_reason}" if hook.disabled_reason else "")
        )
    try:
        request = build_request(ext, row, hook, number)
    except Exception as e:
        return unsent(f"could not build the request: {e}", count_failure=True)

    result = ext.transport().send(request)
    finished = start + dt.timedelta(seconds=result.duration) if pinned else m.utcnow()
    disable_reason: str | None = None
    retry_in: float | None = None
    if result.ok:
        status = m.SUCCEEDED
    elif result.status_code == 410:
        status = m.FAILED
        disable_reason = "the receiver answered 410 Gone"
    elif not result.retryable:
        status = m.FAILED
    else:
        overloaded = result.status_code == 429 or result.error_kind == "timeout"
        retry_in = retry_delay(
            cfg.retry_schedule,
            number,
            retry_after=result.retry_after,
            at_least_step=overloaded,
            rng=rng,
        )
        status = m.RETRYING if retry_in is not None else m.FAILED
    return Attempt(
        row.id,
        number,
        hook,
        start,
        finished,
        status,
        error=None if result.ok else result.error,
        retry_in=retry_in,
        next_attempt_at=(
            finished + dt.timedelta(seconds=retry_in) if retry_in is not None else None
        ),
        request=request,
        result=result,
        disable_reason=disable_reason,
    )


def build_request(
    ext: WebhooksState,
    row: t.Any,
    hook: t.Any,
    attempt: int,
    *,
    timestamp: int | None = None,
) -> HTTPRequest:
    """The HTTP request for one attempt, signed for this attempt.

    The body bytes are the stored ones (identical on every attempt); URL and
    additional headers are rendered from the stored payload when they are
    templates. Timeouts: the webhook's ``timeout`` (else ``WEBHOOKS_TIMEOUT``)
    for reads, ``WEBHOOKS_CONNECT_TIMEOUT`` (never longer than the read
    timeout) for connecting. TLS: ``ssl_verification`` and ``ca_file_path``.

    :param timestamp: Unix time for the Standard Webhooks signature (default
        now).
    """
    body: bytes = row.body or b""
    needs_context = "{" in (hook.payload_url or "") or "{" in (
        hook.additional_headers or ""
    )
    context: dict[str, t.Any] = {}
    if needs_context:
        payload = json.loads(row.payload if row.payload is not None else body)
        context = template_context(payload, hook)
    url = render_url(hook, context)
    headers: dict[str, str] = {
        "Content-Type": row.content_type or "application/json",
        "User-Agent": USER_AGENT,
    }
    headers.update(render_headers(hook, context))
    headers["X-Webhook-ID"] = row.id
    headers["X-Webhook-Attempt"] = str(attempt)
    # Signatures are set last: they win over additional headers.
    headers.update(
        signature_headers(
            hook.signature_scheme or "netbox",
            hook.secret or "",
            row.id,
            body,
            timestamp=int(time.time()) if timestamp is None else timestamp,
        )
    )
    timeout = float(hook.timeout) if hook.timeout else ext.config.timeout
    verify: bool | str = bool(hook.ssl_verification)
    if verify and hook.ca_file_path:
        verify = hook.ca_file_path
    connect_timeout = min(ext.config.connect_timeout, timeout)
    return HTTPRequest(
        method=(hook.http_method or "POST").upper(),
        url=url,
        headers=headers,
        body=body,
        connect_timeout=connect_timeout,
        read_timeout=timeout,
        verify=verify,
        # A trickling answer must not outlive the lease (connect + timeout +
        # margin): allow at most the margin's worth of extra time.
        total_timeout=connect_timeout
        + timeout
        + min(timeout, ext.config.lease_margin / 2),
    )
