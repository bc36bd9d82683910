"""Deliveries that never get a result: poison, and results that cannot be written.

Two guards make sure that no delivery is sent again and again without end:

* **Poison**: the claim counts (``claims``) how often a delivery was taken
  since its last recorded result; recording a result resets the count. A
  delivery claimed ``WEBHOOKS_MAX_CLAIMS`` times without a result (its
  worker hung past the lease or died, each time) is no longer claimed, and
  :func:`fail_poisoned` (run by every sweep) ends it as ``failed``.
* **Unwritable results**: :func:`record_safely` records attempts like
  :func:`~.results.record`; if that fails, it retries one attempt at a time,
  and an attempt whose result still cannot be written ends its delivery as
  ``failed`` with the error (:func:`fail_unrecorded`). If even that cannot be
  written (the database is gone), the error propagates and the claim count
  bounds what follows.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import types
import typing as t

import sqlalchemy as sa

from .. import models as m
from ..capture.index import expire_all
from ..sanitize import scrub
from .order import release_quietly
from .results import after_attempt
from .results import Attempt
from .results import clip
from .results import Outcome
from .results import record
from .results import record_health

if t.TYPE_CHECKING:
    from ..state import WebhooksState

logger = logging.getLogger(__name__)

#: Default of ``WEBHOOKS_MAX_CLAIMS``.
DEFAULT_MAX_CLAIMS = 3


def count_claims(stmt: sa.Update, table: sa.Table) -> sa.Update:
    """The claim ``stmt`` that also counts the claim and skips poison rows
    (bind parameter ``b_max_claims``)."""
    c = table.c
    return stmt.where(c.claims < sa.bindparam("b_max_claims")).values(
        claims=c.claims + 1
    )


def poison_message(limit: int) -> str:
    """The ``last_error`` of a delivery ended as poison."""
    return (
        f"poison: claimed {limit} times without a recorded result "
        f"(WEBHOOKS_MAX_CLAIMS = {limit}): each attempt outlived its lease "
        "(sending hung or the worker died). Not sent again; retry it once the "
        "cause is fixed"
    )


def fail_poisoned(state: WebhooksState, *, now: dt.datetime | None = None) -> list[str]:
    """End every poison delivery as ``failed``; return their ids.

    Poison: claimed ``WEBHOOKS_MAX_CLAIMS`` times without a recorded result,
    and not held by a live lease. Counts as a failed delivery for its
    webhook's health, and sends ``delivery_failed``.
    """
    D = state.models.Delivery.__table__
    c = D.c
    now = now or m.utcnow()
    limit = state.config.max_claims
    where = sa.and_(
        c.claims >= limit,
        sa.or_(
            c.status.in_((m.PENDING, m.RETRYING)),
            sa.and_(
                c.status == m.DELIVERING,
                sa.or_(c.leased_until.is_(None), c.leased_until < now),
            ),
        ),
    )
    error = poison_message(limit)
    stmt = (
        sa.update(D)
        .where(where)
        .values(
            status=m.FAILED,
            leased_until=None,
            next_attempt_at=None,
            last_error=error,
            completed_at=now,
            updated_at=now,
        )
    )
    found: list[tuple[t.Any, ...]]
    hooks: dict[t.Any, types.SimpleNamespace] = {}
    reasons: dict[str, str | None] = {}
    with state.engine().begin() as conn:
        # SQLite locks the whole database for any UPDATE, even a no-op one:
        # look first (the UPDATE below still decides).
        if conn.dialect.name == "sqlite" and (
            conn.execute(sa.select(c.id).where(where).limit(1)).first() is None
        ):
            return []
        if conn.dialect.update_returning:
            found = [
                tuple(r)
                for r in conn.execute(stmt.returning(c.id, c.webhook_id, c.attempts))
            ]
        else:
            found = [
                tuple(r)
                for r in conn.execute(
                    sa.select(c.id, c.webhook_id, c.attempts).where(where)
                )
            ]
            conn.execute(stmt.where(c.id.in_([r[0] for r in found])))
        for delivery_id, webhook_id, _ in found:
            if webhook_id is None:
                continue
            hook = hooks.setdefault(
                webhook_id, _hook_copy(conn, state.models.Webhook.__table__, webhook_id)
            )
            if hook.id is not None:
                reasons[delivery_id] = record_health(
                    state, conn, hook, m.FAILED, now, None
                )
    if any(reasons.values()):
        expire_all()
    for delivery_id, webhook_id, attempts in found:
        logger.error("flask-webhooks: delivery %s is poison: %s", delivery_id, error)
        after_attempt(
            state,
            delivery_id,
            m.FAILED,
            None,
            hooks.get(webhook_id),
            reasons.get(delivery_id),
            error=error,
            status_code=None,
            attempts=attempts,
        )
    release_quietly(state, [r[0] for r in found])
    return [r[0] for r in found]


def _hook_copy(
    conn: sa.Connection, W: sa.Table, webhook_id: t.Any
) -> types.SimpleNamespace:
    row = conn.execute(sa.select(W).where(W.c.id == webhook_id)).first()
    if row is None:
        return types.SimpleNamespace(id=None, name=None)
    return types.SimpleNamespace(**row._mapping)


def record_safely(state: WebhooksState, attempts: t.Sequence[Attempt]) -> list[Outcome]:
    """:func:`~.results.record` that never leaves a delivery to be resent
    because its result could not be written.

    If writing the batch fails, each attempt is recorded on its own; an
    attempt that still fails ends its delivery as ``failed`` with the error
    (:func:`fail_unrecorded`).
    """
    try:
        return record(state, attempts)
    except Exception as e:
        logger.exception(
            "flask-webhooks: could not record the result of %d attempt(s)",
            len(attempts),
        )
        first_error = e
    outcomes: list[Outcome] = []
    for a in attempts:
        error = first_error
        if len(attempts) > 1:
            try:
                outcomes.extend(record(state, [a]))
                continue
            except Exception as e:
                logger.exception(
                    "flask-webhooks: could not record attempt %d of delivery %s",
                    a.number,
                    a.delivery_id,
                )
                error = e
        outcomes.append(fail_unrecorded(state, a, error))
    return outcomes


@functools.lru_cache(maxsize=32)
def _unrecorded_statement(table: sa.Table) -> t.Any:
    c = table.c
    return (
        sa.update(table)
        .where(
            c.id == sa.bindparam("b_id"),
            c.status == m.DELIVERING,
            c.attempts == sa.bindparam("b_attempt"),
        )
        .values(
            status=m.FAILED,
            leased_until=None,
            next_attempt_at=None,
            last_status_code=sa.bindparam("v_code"),
            last_error=sa.bindparam("v_error"),
            completed_at=sa.bindparam("v_now"),
            updated_at=sa.bindparam("v_now"),
            claims=0,
        )
    )


def fail_unrecorded(state: WebhooksState, a: Attempt, error: BaseException) -> Outcome:
    """End ``a``'s delivery as ``failed`` because its result could not be
    written (``error``); keep a minimal attempt row if that can be written.

    :raises Exception: when not even that can be written.
    """
    code = a.result.status_code if a.result is not None else None
    message = scrub(
        clip(
            f"the result of attempt {a.number} could not be recorded "
            f"({type(error).__name__}: {error}); the delivery is ended here so "
            "that it is not sent again and again"
        )
        or ""
    )
    D = state.models.Delivery.__table__
    engine = state.engine()
    with engine.begin() as conn:
        done = (
            conn.execute(
                _unrecorded_statement(D),
                {
                    "b_id": a.delivery_id,
                    "b_attempt": a.number,
                    "v_code": code,
                    "v_error": message,
                    "v_now": a.finished_at,
                },
            ).rowcount
            == 1
        )
    if a.sent:
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(state.models.DeliveryAttempt.__table__),
                    {
                        "delivery_id": a.delivery_id,
                        "number": a.number,
                        "started_at": a.started_at,
                        "status_code": code,
                        "error": message,
                    },
                )
        except Exception:
            logger.exception(
                "flask-webhooks: could not keep attempt %d of %s in the history",
                a.number,
                a.delivery_id,
            )
    if not done:
        return Outcome(a.delivery_id, True, None, None, a.result)
    after_attempt(
        state,
        a.delivery_id,
        m.FAILED,
        None,
        a.hook,
        None,
        error=message,
        status_code=code,
        attempts=a.number,
    )
    release_quietly(state, [a.delivery_id])
    return Outcome(a.delivery_id, True, m.FAILED, None, a.result)
