"""Sending deliveries: claim, build the request, send, schedule.

Per attempt the database sees two short transactions:

1. the *claim*: one conditional ``UPDATE ... RETURNING`` that takes the lease
   (status ``delivering``, ``leased_until``, ``attempts + 1``) only if the row
   is due and nobody holds it, plus a read of its webhook;
2. the *result* (:mod:`flask_webhooks.delivery.results`): the delivery row, the
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
found by :func:`flask_webhooks.delivery.recovery.sweep`; a worker's claim ignores the
sweeper's marks.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import typing as t

from .. import models as m
from . import breaker
from .attempt import make_attempt
from .claim import claim_many
from .claim import claimed_webhooks
from .claim import claiming
from .claim import lease_seconds
from .claim import renew
from .order import mark_blockers
from .poison import record_safely
from .rate import defer
from .rate import take_slot
from .results import Attempt
from .results import Outcome

if t.TYPE_CHECKING:
    from ..state import WebhooksState

#: A batch writes the results of successful attempts at least this often
#: (a failed attempt is written at once, so the webhook's health is current
#: for the next attempt).
RECORD_INTERVAL = 1.0


def deliver(
    state: WebhooksState,
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
    return deliver_batch(state, [delivery_id], now=now, rng=rng)[0]


def deliver_batch(
    state: WebhooksState,
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
    D = state.models.Delivery.__table__
    W = state.models.Webhook.__table__
    cfg = state.config
    start = now or m.utcnow()
    lease = lease_seconds(cfg) * (2 if len(ids) > 1 else 1)
    engine = state.engine()
    ordered = cfg.ordered
    with claiming(engine) as conn:
        no_flush_wait = conn.dialect.name == "postgresql"
        rows = claim_many(
            conn,
            D,
            ids,
            start,
            lease,
            W,
            no_flush_wait=no_flush_wait,
            max_claims=cfg.max_claims,
            ordered=ordered,
        )
        if ordered and len(rows) < len(ids):
            # Some may wait for an earlier delivery of their object: flag
            # those in the way so they release them, then claim again in
            # case one finished in between (see order.py).
            got = {r.id for r in rows}
            rest = [i for i in ids if i not in got]
            mark_blockers(conn, D, rest)
            rows += claim_many(
                conn,
                D,
                rest,
                start,
                lease,
                W,
                no_flush_wait=no_flush_wait,
                max_claims=cfg.max_claims,
                ordered=True,
            )
        hooks = claimed_webhooks(state, conn, W, rows)
    outcomes = {i: Outcome(i, claimed=False) for i in ids}
    # In commit order (a batch never holds two claimed deliveries of one
    # object when ordered; without order, the earlier one goes first).
    queue = sorted(rows, key=_by_sequence)
    lease_until = start + dt.timedelta(seconds=lease)
    ours = {r.id for r in rows}
    waiting: list[Attempt] = []
    last_write = time.monotonic()
    deferred: set[str] = set()
    breakers = (
        breaker.open_until(state, hooks) if cfg.breaker_threshold is not None else {}
    )

    def wait_behind(position: int, row: t.Any, wait: float, rate: float) -> None:
        # This and the rest of the batch for the webhook go back to the queue.
        later = [
            r.id
            for r in queue[position:]
            if r.id in ours and r.webhook_id == row.webhook_id
        ]
        for i, delay in defer(state, later, lease_until, wait, rate).items():
            outcomes[i] = Outcome(i, True, None, retry_in=delay)
        deferred.update(later)
        ours.difference_update(deferred)

    for position, row in enumerate(queue):
        if row.id in deferred:
            continue
        if row.id not in ours:
            outcomes[row.id] = Outcome(row.id, True, None)
            continue
        hook = hooks.get(row.webhook_id) if row.webhook_id is not None else None
        live = hook is not None and hook.enabled
        paused = breakers.get(row.webhook_id) if live else None
        if paused is not None:
            clock = m.utcnow()
            if paused > clock or not breaker.take_probe(state, row.webhook_id, clock):
                # Open breaker: wait for the cool-down (or the probe) to end.
                wait = max((paused - clock).total_seconds(), 0.0)
                wait_behind(position, row, wait or cfg.breaker_cooldown, 1000.0)
                continue
        rate = hook.rate_limit if hook is not None and hook.enabled else None
        if rate:
            slot = take_slot(state, row.webhook_id, rate)
            if not slot.taken:
                # No slot soon: wait in the queue (see rate.py).
                wait_behind(position, row, slot.wait, rate)
                continue
            time.sleep(slot.wait)
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
                ours -= renew(state, D, rest, lease_until, new_until)
                lease_until = new_until
                if row.id not in ours:
                    outcomes[row.id] = Outcome(row.id, True, None)
                    continue
        a = make_attempt(
            state, row, hook, attempt_start, pinned=now is not None, rng=rng
        )
        waiting.append(a)
        if cfg.breaker_threshold is not None and a.result is not None:
            ok = a.status == m.SUCCEEDED
            breaker.record(state, row.webhook_id, ok, m.utcnow())
            breakers.update(
                {row.webhook_id: None}
                if ok
                else breaker.open_until(state, [row.webhook_id])
            )
        if (
            a.status != m.SUCCEEDED
            or position == len(queue) - 1
            or time.monotonic() - last_write >= RECORD_INTERVAL
        ):
            for outcome in record_safely(state, waiting):
                outcomes[outcome.delivery_id] = outcome
            waiting = []
            last_write = time.monotonic()
    if waiting:
        for outcome in record_safely(state, waiting):
            outcomes[outcome.delivery_id] = outcome
    return [outcomes[i] for i in ids]


def _by_sequence(row: t.Any) -> tuple[bool, int]:
    return (row.sequence is None, row.sequence or 0)
