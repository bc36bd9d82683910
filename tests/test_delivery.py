"""The delivery engine (DESIGN.md section 6): retry schedule, Retry-After,
410 and auto-disable, leases, batches, sweep, requeue, request building, Standard
Webhooks signatures and signals, against a real receiver and real databases.

The queue is ``memory://`` without workers: a commit only enqueues, and each
test makes the attempts itself with ``deliver(state, id, now=..., rng=...)``,
so schedules are asserted with pinned time and jitter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import random
import threading
import typing as t
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks import signals
from flask_webhooks.delivery.attempt import build_request
from flask_webhooks.delivery.attempt import MAX_RETRY_AFTER
from flask_webhooks.delivery.attempt import retry_delay
from flask_webhooks.delivery.claim import claim
from flask_webhooks.delivery.claim import claim_many
from flask_webhooks.delivery.claim import lease_seconds
from flask_webhooks.delivery.claim import renew
from flask_webhooks.delivery.engine import deliver
from flask_webhooks.delivery.engine import deliver_batch
from flask_webhooks.delivery.recovery import requeue
from flask_webhooks.delivery.recovery import sweep
from flask_webhooks.delivery.tasks import BATCH_THRESHOLD
from flask_webhooks.delivery.tasks import batches
from flask_webhooks.signing import generate_secret
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

SCHEDULE = [5, 300, 1800]


class FixedJitter(random.Random):
    """A random source whose ``uniform(a, b)`` is ``a + (b - a) * fraction``."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


#: For tests whose subject does not depend on the database: SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MAX_JITTER = FixedJitter(1.0)  # factor 1.2
NO_JITTER = FixedJitter(0.5)  # factor 1.0


@pytest.fixture
def config(request: pytest.FixtureRequest) -> dict[str, t.Any]:
    values: dict[str, t.Any] = {
        "WEBHOOKS_QUEUE_URL": "memory://",
        "WEBHOOKS_EMBEDDED_WORKERS": 0,
        "WEBHOOKS_RETRY_SCHEDULE": SCHEDULE,
    }
    values.update(getattr(request, "param", {}))
    return values


@pytest.fixture
def state(webhooks: t.Any) -> t.Iterator[t.Any]:
    state = webhooks.state
    yield state
    state.transport().close()


@pytest.fixture
def caught() -> t.Iterator[list[tuple[str, dict[str, t.Any]]]]:
    """Every signal sent during the test: (signal name, kwargs)."""
    seen: list[tuple[str, dict[str, t.Any]]] = []
    receivers = []
    for sig in (
        signals.delivery_succeeded,
        signals.delivery_failed,
        signals.webhook_disabled,
    ):

        def handler(sender: t.Any, _name: str = sig.name, **kwargs: t.Any) -> None:
            seen.append((_name, kwargs))

        sig.connect(handler)
        receivers.append((sig, handler))
    yield seen
    for sig, handler in receivers:
        sig.disconnect(handler)


def new_deliveries(db: t.Any, models: t.Any, count: int = 1) -> list[str]:
    """Commit ``count`` sites; return the ids of their pending deliveries."""
    before = set(db.session.scalars(sa.select(Delivery(db).id)))
    sites = [models.Site(name=f"site-{i}") for i in range(count)]
    db.session.add_all(sites)
    db.session.commit()
    D = Delivery(db)
    ids = list(
        db.session.scalars(
            sa.select(D.id).where(D.status == m.PENDING).order_by(D.sequence)
        )
    )
    db.session.rollback()
    new = [i for i in ids if i not in before]
    assert len(new) == count
    return new


def Delivery(db: t.Any) -> t.Any:
    """The Delivery class mapped on this ``db``."""
    for mapper in db.Model.registry.mappers:
        if mapper.local_table.name == "webhooks_delivery":
            return mapper.class_
    raise LookupError("webhooks_delivery is not mapped")


def _read(db: t.Any, stmt: t.Any) -> list[t.Any]:
    """Read through a connection of its own: the test's session keeps no read
    transaction open (on SQLite that would block the delivery engine's writes)."""
    db.session.rollback()
    with db.engine.connect() as conn:
        return list(conn.execute(stmt))


def row(webhooks: t.Any, db: t.Any, delivery_id: str) -> t.Any:
    D = webhooks.Delivery.__table__
    (found,) = _read(db, sa.select(D).where(D.c.id == delivery_id))
    return found


def hook_row(webhooks: t.Any, db: t.Any, hook_id: int) -> t.Any:
    W = webhooks.Webhook.__table__
    (found,) = _read(db, sa.select(W).where(W.c.id == hook_id))
    return found


def attempts_of(webhooks: t.Any, db: t.Any, delivery_id: str) -> list[t.Any]:
    A = webhooks.DeliveryAttempt.__table__
    return _read(
        db, sa.select(A).where(A.c.delivery_id == delivery_id).order_by(A.c.number)
    )


def plain(db: t.Any, hook: t.Any) -> t.Any:
    """The webhook's id and name, with the session's read transaction ended."""
    values = SimpleNamespace(id=hook.id, name=hook.name)
    db.session.rollback()
    return values


def later(seconds: float) -> dt.datetime:
    return m.utcnow() + dt.timedelta(seconds=seconds)


class Recorded(t.NamedTuple):
    statements: list[tuple[str, t.Any]]  # (SQL, parameters)
    commits: list[object]

    def heads(self, words: int = 3) -> list[str]:
        """The first words of each statement, ``BEGIN`` left out."""
        return [
            " ".join(sql.split()[:words])
            for sql, _ in self.statements
            if sql != "BEGIN"
        ]


@contextlib.contextmanager
def recorded(engine: t.Any) -> t.Iterator[Recorded]:
    """Every statement and commit on ``engine`` inside the block."""
    out = Recorded([], [])

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        out.statements.append((statement, parameters))

    def on_commit(conn: t.Any) -> None:
        out.commits.append(conn)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    sa.event.listen(engine, "commit", on_commit)
    try:
        yield out
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
        sa.event.remove(engine, "commit", on_commit)


# -- the schedule -------------------------------------------------------------


def test_retry_delay_follows_the_schedule_with_20_percent_jitter() -> None:
    schedule = [5, 300, 1800, 7200, 18000, 36000, 36000]
    for attempt, step in enumerate(schedule, start=1):
        assert retry_delay(schedule, attempt, rng=FixedJitter(0.0)) == step * 0.8
        assert retry_delay(schedule, attempt, rng=MAX_JITTER) == step * 1.2
    rng = random.Random(1234)
    delays = [retry_delay(schedule, 2, rng=rng) for _ in range(500)]
    assert all(240 <= d <= 360 for d in t.cast(list[float], delays))
    assert len(set(delays)) > 400  # jitter spreads retries out
    # 8 attempts in all: after the 8th failure the schedule is exhausted.
    assert retry_delay(schedule, 8) is None
    assert retry_delay(schedule, 0) is None
    assert retry_delay([], 1) is None


def test_retry_after_replaces_the_step_within_bounds() -> None:
    # A receiver's Retry-After is honoured, shorter or longer than the step.
    assert retry_delay(SCHEDULE, 2, retry_after=30, rng=NO_JITTER) == 30
    assert retry_delay(SCHEDULE, 1, retry_after=120, rng=NO_JITTER) == 120
    # ... clamped to [1 s, 24 h].
    assert retry_delay(SCHEDULE, 1, retry_after=0, rng=NO_JITTER) == 1.0
    assert retry_delay(SCHEDULE, 1, retry_after=10**9, rng=NO_JITTER) == MAX_RETRY_AFTER
    # A 429 or a timeout never waits less than the step.
    assert (
        retry_delay(SCHEDULE, 2, retry_after=30, at_least_step=True, rng=NO_JITTER)
        == 300
    )
    assert (
        retry_delay(SCHEDULE, 1, retry_after=120, at_least_step=True, rng=NO_JITTER)
        == 120
    )
    # Exhausted stays exhausted whatever the receiver says.
    assert retry_delay(SCHEDULE, 4, retry_after=5) is None


# -- attempts against a real receiver ---------------------------------------------


def test_failure_schedules_a_retry_that_resends_identical_bytes(
    webhooks, db, models, receiver, make_hook, state, caught
):
    make_hook()
    (delivery_id,) = new_deliveries(db, models)
    receiver.respond(500)
    t0 = later(1)

    outcome = deliver(state, delivery_id, now=t0, rng=MAX_JITTER)

    assert outcome.status == m.RETRYING
    assert outcome.retry_in == pytest.approx(5 * 1.2)
    d = row(webhooks, db, delivery_id)
    assert d.status == m.RETRYING
    assert d.attempts == 1
    assert d.last_status_code == 500
    assert d.last_error == "HTTP 500 Internal Server Error"
    assert d.leased_until is None
    duration = dt.timedelta(milliseconds=d.duration_ms)
    expected_at = t0 + duration + dt.timedelta(seconds=6)
    assert abs(d.next_attempt_at - expected_at) < dt.timedelta(milliseconds=1)
    # The retry is queued with its time (the consumer holds it until then).
    retries = [task for task in state.huey.pending() if task.eta is not None]
    assert [task.args for task in retries] == [(delivery_id,)]
    # Not due yet: a stray task does nothing.
    assert (
        deliver(state, delivery_id, now=t0 + dt.timedelta(seconds=3)).claimed is False
    )
    assert len(receiver.requests) == 1

    outcome = deliver(state, delivery_id, now=t0 + dt.timedelta(seconds=7))
    assert outcome.status == m.SUCCEEDED
    d = row(webhooks, db, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == (m.SUCCEEDED, 2, 200)
    assert d.next_attempt_at is None
    assert d.completed_at is not None
    first, second = receiver.requests
    assert first.body == second.body == d.body
    assert (
        first.headers["X-Webhook-ID"] == second.headers["X-Webhook-ID"] == delivery_id
    )
    assert [
        first.headers["X-Webhook-Attempt"],
        second.headers["X-Webhook-Attempt"],
    ] == [
        "1",
        "2",
    ]
    expected = hmac.new(b"s3cret", d.body, hashlib.sha512).hexdigest()
    assert (
        first.headers["X-Hook-Signature"]
        == second.headers["X-Hook-Signature"]
        == expected
    )
    history = attempts_of(webhooks, db, delivery_id)
    assert [(a.number, a.status_code) for a in history] == [(1, 500), (2, 200)]
    assert history[0].error == "HTTP 500 Internal Server Error"
    assert history[0].request_headers["X-Hook-Signature"] == "<redacted>"
    assert caught == [
        (
            "delivery-succeeded",
            {
                "delivery_id": delivery_id,
                "webhook_id": d.webhook_id,
                "status_code": 200,
                "attempts": 2,
            },
        )
    ]


@sqlite_only
@pytest.mark.parametrize("config", [{"WEBHOOKS_RETRY_SCHEDULE": [1, 1]}], indirect=True)
def test_exhausted_schedule_ends_failed_and_signals(
    webhooks, db, models, receiver, make_hook, state, caught
):
    hook = plain(db, make_hook())
    (delivery_id,) = new_deliveries(db, models)
    receiver.respond(503, 502, 500)
    t0 = later(1)
    statuses = [
        deliver(state, delivery_id, now=t0 + dt.timedelta(seconds=10 * i)).status
        for i in range(3)
    ]
    assert statuses == [m.RETRYING, m.RETRYING, m.FAILED]
    d = row(webhooks, db, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == (m.FAILED, 3, 500)
    assert d.next_attempt_at is None
    # Nothing more happens for a failed delivery.
    assert deliver(state, delivery_id, now=t0 + dt.timedelta(days=1)).claimed is False
    assert [name for name, _ in caught] == ["delivery-failed"]
    assert caught[0][1] == {
        "delivery_id": delivery_id,
        "webhook_id": hook.id,
        "status_code": 500,
        "attempts": 3,
        "error": "HTTP 500 Internal Server Error",
    }
    h = hook_row(webhooks, db, hook.id)
    assert (h.consecutive_failures, h.last_delivery_status) == (1, m.FAILED)
    assert h.enabled  # no auto-disable configured


@sqlite_only
def test_retry_after_seconds_and_http_date(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    ids = new_deliveries(db, models, 4)
    in_an_hour = email.utils.formatdate(
        (m.utcnow() + dt.timedelta(hours=1)).timestamp(), usegmt=True
    )
    receiver.respond(
        Answer(503, headers={"Retry-After": "120"}),
        Answer(503, headers={"Retry-After": in_an_hour}),
        Answer(503, headers={"Retry-After": str(30 * 86400)}),
        Answer(429, headers={"Retry-After": "1"}),
    )
    delays = [
        deliver(state, delivery_id, now=later(1), rng=NO_JITTER).retry_in
        for delivery_id in ids
    ]
    assert delays[0] == 120
    # An HTTP date is relative to the moment the answer is read (1 s resolution).
    assert 3590 <= t.cast(float, delays[1]) <= 3600
    assert delays[2] == MAX_RETRY_AFTER
    # 429: the receiver is overloaded, the wait is at least the schedule's step.
    assert delays[3] == 5
    d = row(webhooks, db, ids[0])
    assert d.status == m.RETRYING
    assert d.response_headers["Retry-After"] == "120"


@sqlite_only
def test_timeout_waits_at_least_the_step(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook(timeout=0.3)
    (delivery_id,) = new_deliveries(db, models)
    receiver.respond(Answer(200, delay=1.0))
    outcome = deliver(state, delivery_id, now=later(1), rng=FixedJitter(0.0))
    assert outcome.status == m.RETRYING
    assert outcome.result is not None
    assert outcome.result.error_kind == "timeout"
    assert outcome.retry_in == 5 * 0.8
    d = row(webhooks, db, delivery_id)
    assert d.last_error == "read timed out after 0.3 s"
    assert d.last_status_code is None


# -- disabling --------------------------------------------------------------------


def test_410_disables_the_webhook_and_fails_its_other_deliveries(
    webhooks, db, models, receiver, make_hook, state, caught
):
    hook = plain(db, make_hook())
    first, second = new_deliveries(db, models, 2)
    receiver.respond(410)

    outcome = deliver(state, first, now=later(1))

    assert outcome.status == m.FAILED
    assert outcome.disabled_reason == "the receiver answered 410 Gone"
    h = hook_row(webhooks, db, hook.id)
    assert h.enabled is False
    assert h.disabled_reason == "the receiver answered 410 Gone"
    assert h.disabled_at is not None
    # The other delivery is not sent, and not dropped: failed, with the reason.
    outcome = deliver(state, second, now=later(1))
    assert outcome.status == m.FAILED
    assert len(receiver.requests) == 1
    d = row(webhooks, db, second)
    assert d.status == m.FAILED
    assert d.last_error == "webhook is disabled: the receiver answered 410 Gone"
    assert d.attempts == 0  # nothing was sent
    assert [(n, k.get("reason")) for n, k in caught] == [
        ("delivery-failed", None),
        ("webhook-disabled", "the receiver answered 410 Gone"),
        ("delivery-failed", None),
    ]
    assert caught[1][1] == {
        "webhook_id": hook.id,
        "webhook_name": hook.name,
        "reason": "the receiver answered 410 Gone",
    }
    assert caught[2][1]["error"] == d.last_error
    assert caught[2][1]["webhook_id"] == hook.id
    # A disabled webhook gets no new deliveries.
    db.session.add(models.Site(name="later"))
    db.session.commit()
    count = db.session.scalar(sa.select(sa.func.count()).select_from(webhooks.Delivery))
    db.session.rollback()
    assert count == 2

    # Re-enabled, the failed delivery can be retried by hand and goes out.
    hook = db.session.get(webhooks.Webhook, hook.id)
    hook.enabled = True
    hook.disabled_reason = None
    hook.disabled_at = None
    db.session.commit()
    assert webhooks.retry(second) is True
    assert row(webhooks, db, second).status == m.PENDING
    assert deliver(state, second, now=later(1)).status == m.SUCCEEDED
    assert receiver.requests[-1].headers["X-Webhook-ID"] == second
    assert receiver.requests[-1].headers["X-Webhook-Attempt"] == "1"


@pytest.mark.parametrize(
    "config",
    [{"WEBHOOKS_RETRY_SCHEDULE": [], "WEBHOOKS_DISABLE_AFTER_FAILURES": 2}],
    indirect=True,
)
def test_consecutive_failed_deliveries_disable_the_webhook(
    webhooks, db, models, receiver, make_hook, state, caught
):
    hook = plain(db, make_hook())
    ids = new_deliveries(db, models, 5)
    updated_at = hook_row(webhooks, db, hook.id).updated_at
    receiver.respond(500, 200, 500)
    for delivery_id in ids[:3]:
        deliver(state, delivery_id, now=later(1))
    h = hook_row(webhooks, db, hook.id)
    # fail, succeed, fail: the streak was reset by the success.
    assert (h.enabled, h.consecutive_failures) == (True, 1)
    # Health bookkeeping does not touch updated_at (the capture index would
    # reload webhooks after every delivery).
    assert h.updated_at == updated_at
    receiver.respond(500)
    outcome = deliver(state, ids[3], now=later(1))
    assert outcome.status == m.FAILED
    h = hook_row(webhooks, db, hook.id)
    assert h.enabled is False
    assert h.consecutive_failures == 2
    reason = "2 consecutive failed deliveries (WEBHOOKS_DISABLE_AFTER_FAILURES = 2)"
    assert h.disabled_reason == reason
    assert h.updated_at > updated_at  # the index must drop the webhook
    assert outcome.disabled_reason == reason
    assert [k for n, k in caught if n == "webhook-disabled"] == [
        {"webhook_id": hook.id, "webhook_name": hook.name, "reason": reason}
    ]
    outcome = deliver(state, ids[4], now=later(1))
    assert outcome.status == m.FAILED
    assert row(webhooks, db, ids[4]).last_error == f"webhook is disabled: {reason}"
    # Disabled once, signalled once.
    assert len([n for n, _ in caught if n == "webhook-disabled"]) == 1


def test_delivery_of_a_deleted_webhook_fails_with_the_reason(
    webhooks, db, models, receiver, make_hook, state, caught
):
    hook = make_hook()
    (delivery_id,) = new_deliveries(db, models)
    db.session.delete(hook)
    db.session.commit()
    outcome = deliver(state, delivery_id, now=later(1))
    assert outcome.status == m.FAILED
    d = row(webhooks, db, delivery_id)
    assert (d.status, d.last_error, d.attempts) == (m.FAILED, "webhook was deleted", 0)
    assert receiver.requests == []
    assert caught == [
        (
            "delivery-failed",
            {
                "delivery_id": delivery_id,
                "webhook_id": None,
                "status_code": None,
                "attempts": 0,
                "error": "webhook was deleted",
            },
        )
    ]


# -- leases ----------------------------------------------------------------------


def test_only_one_of_many_concurrent_claims_wins(
    webhooks, db, models, make_hook, state
):
    make_hook()
    (delivery_id,) = new_deliveries(db, models)
    D = webhooks.Delivery.__table__
    engine = state.engine()
    now = later(1)
    contenders = 8
    barrier = threading.Barrier(contenders)
    wins: list[bool] = []
    errors: list[BaseException] = []

    def contend() -> None:
        try:
            with engine.connect() as conn:
                barrier.wait()
                with conn.begin():
                    wins.append(claim(conn, D, delivery_id, now, 60) is not None)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert sorted(wins) == [False] * (contenders - 1) + [True]
    d = row(webhooks, db, delivery_id)
    assert (d.status, d.attempts) == (m.DELIVERING, 1)
    assert d.leased_until == now + dt.timedelta(seconds=60)


def test_expired_lease_is_reclaimed_and_the_late_result_is_not_written(
    webhooks, db, models, make_hook, state, caught
):
    """Worker A's attempt outlives its lease; worker B takes the delivery over.
    B's result stands; A's attempt is only kept in the history."""
    answers = {1: Answer(500, delay=0.4), 2: Answer(200, delay=0.6)}
    with RecordingReceiver(answer=lambda r: answers[r.attempt]) as rx:
        make_hook(payload_url=rx.url)
        (delivery_id,) = new_deliveries(db, models)
        t0 = later(1)
        lease = dt.timedelta(seconds=lease_seconds(state.config))
        outcome_a: list[t.Any] = []
        worker_a = threading.Thread(
            target=lambda: outcome_a.append(deliver(state, delivery_id, now=t0))
        )
        worker_a.start()
        rx.wait_for(1, timeout=30)
        # While A's lease holds, nobody else may take the delivery.
        assert deliver(state, delivery_id, now=t0 + lease / 2).claimed is False
        outcome_b = deliver(
            state, delivery_id, now=t0 + lease + dt.timedelta(seconds=1)
        )
        worker_a.join()
    assert outcome_b.status == m.SUCCEEDED
    assert outcome_a[0].claimed is True
    assert outcome_a[0].status is None  # lost the row: no result written, no signal
    d = row(webhooks, db, delivery_id)
    assert (d.status, d.attempts, d.last_status_code) == (m.SUCCEEDED, 2, 200)
    history = attempts_of(webhooks, db, delivery_id)
    assert sorted((a.number, a.status_code) for a in history) == [(1, 500), (2, 200)]
    assert [h.attempt for h in rx.requests] == [1, 2]
    assert [n for n, _ in caught] == ["delivery-succeeded"]


def test_one_attempt_is_one_claim_update_and_one_result_write(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    (delivery_id,) = new_deliveries(db, models)
    engine = state.engine()
    t0 = later(1)
    with recorded(engine) as rec:
        assert deliver(state, delivery_id, now=t0).status == m.SUCCEEDED
    # Claim (with RETURNING), read the webhook | update the delivery, the
    # attempt row, the webhook's health (first success).
    assert rec.heads() == [
        "UPDATE webhooks_delivery SET",
        "SELECT webhooks_webhook.id, webhooks_webhook.name,",
        "UPDATE webhooks_delivery SET",
        "INSERT INTO webhooks_delivery_attempt",
        "UPDATE webhooks_webhook SET",
    ]
    # On PostgreSQL the claim is autocommitted; the result is a transaction.
    assert len(rec.commits) == (2 if engine.dialect.name == "sqlite" else 1)
    hook_id = state.models.Webhook.query.one().id
    db.session.rollback()
    first_success = hook_row(webhooks, db, hook_id).last_delivery_at
    assert first_success is not None
    # The next success within a second: the webhook is not read again (the
    # claim returned its unchanged version) and its health row is left alone
    # (the conditional UPDATE matches nothing).
    (delivery_id,) = new_deliveries(db, models)
    with recorded(engine) as rec:
        outcome = deliver(state, delivery_id, now=t0 + dt.timedelta(seconds=0.1))
    assert outcome.status == m.SUCCEEDED
    assert rec.heads() == [
        "UPDATE webhooks_delivery SET",
        "UPDATE webhooks_delivery SET",
        "INSERT INTO webhooks_delivery_attempt",
        "UPDATE webhooks_webhook SET",
    ]
    assert hook_row(webhooks, db, hook_id).last_delivery_at == first_success


def test_the_claim_does_not_wait_for_the_wal_flush_on_postgresql(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    (delivery_id,) = new_deliveries(db, models)
    engine = state.engine()
    with recorded(engine) as rec:
        assert deliver(state, delivery_id, now=later(1)).status == m.SUCCEEDED
    claims = [(sql, p) for sql, p in rec.statements if "set_config(" in sql]
    if engine.dialect.name == "postgresql":
        # Only the claim, in its own autocommitted transaction; the result is
        # committed durably.
        ((sql, params),) = claims
        assert sql.startswith("UPDATE webhooks_delivery SET")
        assert "synchronous_commit" in params.values()
        assert len(rec.commits) == 1
    else:
        assert claims == []


def test_a_changed_webhook_is_read_again_before_its_next_delivery(
    webhooks, db, models, receiver, make_hook, state
):
    hook = make_hook()
    first, second = new_deliveries(db, models, 2)
    assert deliver(state, first, now=later(1)).status == m.SUCCEEDED
    hook.additional_headers = "X-Changed: yes"
    db.session.commit()
    assert deliver(state, second, now=later(1)).status == m.SUCCEEDED
    assert "X-Changed" not in receiver.requests[0].headers
    assert receiver.requests[1].headers["X-Changed"] == "yes"


# -- sweep -------------------------------------------------------------------------


def set_rows(state: t.Any, ids: t.Sequence[str], **values: t.Any) -> None:
    D = state.models.Delivery.__table__
    with state.engine().begin() as conn:
        conn.execute(sa.update(D).where(D.c.id.in_(ids)).values(**values))


def drain(state: t.Any) -> int:
    """Run every queued task in this thread, as a worker would; return the count."""
    huey = state.huey
    count = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        count += 1
    return count


def test_sweep_enqueues_what_is_due_and_not_leased(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    lost, due_retry, later_retry, dead_lease, live_lease, done = new_deliveries(
        db, models, 6
    )
    huey = state.huey
    huey.flush()  # every enqueue after the commit is lost
    now = m.utcnow()
    set_rows(state, [due_retry], status=m.RETRYING, attempts=1, next_attempt_at=now)
    set_rows(
        state,
        [later_retry],
        status=m.RETRYING,
        attempts=1,
        next_attempt_at=now + dt.timedelta(hours=1),
    )
    set_rows(
        state,
        [dead_lease],
        status=m.DELIVERING,
        attempts=1,
        leased_until=now - dt.timedelta(seconds=1),
    )
    set_rows(
        state,
        [live_lease],
        status=m.DELIVERING,
        attempts=1,
        leased_until=now + dt.timedelta(minutes=5),
    )
    set_rows(state, [done], status=m.SUCCEEDED, attempts=1)

    assert webhooks.sweep() == 3
    assert huey.pending_count() == 3
    assert drain(state) == 3
    sent = {
        r.headers["X-Webhook-ID"]: r.headers["X-Webhook-Attempt"]
        for r in receiver.requests
    }
    assert sent == {lost: "1", due_retry: "2", dead_lease: "2"}
    for delivery_id in (lost, due_retry, dead_lease):
        assert row(webhooks, db, delivery_id).status == m.SUCCEEDED
    assert row(webhooks, db, later_retry).status == m.RETRYING
    assert row(webhooks, db, live_lease).status == m.DELIVERING
    assert webhooks.sweep() == 0


def test_periodic_sweep_marks_rows_so_they_are_enqueued_once_per_hold(
    webhooks, db, models, make_hook, state
):
    make_hook()
    ids = new_deliveries(db, models, 3)
    huey = state.huey
    huey.flush()
    now = later(10)
    # Rows due for less than `older_than` are left to the enqueue after commit.
    assert sweep(state, now=m.utcnow(), older_than=60, hold=30) == 0
    assert sweep(state, now=now, older_than=5, hold=30) == 3
    assert huey.pending_count() == 3
    # Another sweeper (or the next interval) finds them marked.
    assert sweep(state, now=now + dt.timedelta(seconds=1), older_than=5, hold=30) == 0
    # Still in the queue when the mark expires: a backlog, not a loss.
    assert sweep(state, now=now + dt.timedelta(seconds=31), older_than=5, hold=30) == 0
    assert huey.pending_count() == 3
    # The queue lost them again: enqueued again once the mark expires.
    huey.flush()
    assert sweep(state, now=now + dt.timedelta(seconds=31), older_than=5, hold=30) == 3
    # A worker claims a marked row regardless of the mark.
    assert deliver(state, ids[0], now=now).claimed is True
    # The public sweep ignores marks: everything due goes.
    assert webhooks.sweep() == 2


def test_a_backlog_of_batch_tasks_is_not_enqueued_again(
    webhooks, db, models, make_hook, state
):
    make_hook()
    ids = new_deliveries(db, models, 60)
    huey = state.huey
    assert huey.pending_count() == 2  # two batch tasks of 30
    now = later(10)
    # 60 due rows, 2 waiting tasks of up to 50 deliveries each: a backlog.
    assert sweep(state, now=now, older_than=5, hold=30) == 0
    huey.flush()
    # Lost: the sweep enqueues them again, as batches.
    assert sweep(state, now=now, older_than=5, hold=30) == 60
    tasks = huey.pending()
    assert sorted(len(task.args[0]) for task in tasks) == [30, 30]
    assert sorted(i for task in tasks for i in task.args[0]) == sorted(ids)


@pytest.mark.parametrize(
    "config", [{"WEBHOOKS_QUEUE_URL": "redis://127.0.0.1:1/0"}], indirect=True
)
def test_sweep_removes_its_marks_when_the_queue_is_down(
    webhooks, db, models, make_hook, state
):
    make_hook()
    # The commit cannot enqueue (nothing listens on port 1): logged, not raised.
    ids = new_deliveries(db, models, 2)
    assert len(ids) == 2
    import redis

    with pytest.raises(redis.exceptions.ConnectionError):
        sweep(state, now=later(10), older_than=0, hold=30)
    for delivery_id in ids:
        d = row(webhooks, db, delivery_id)
        assert (d.status, d.leased_until) == (m.PENDING, None)
    state.huey.storage.pool.disconnect()


def test_requeue_is_one_conditional_update(webhooks, db, models, make_hook, state):
    make_hook()
    ids = new_deliveries(db, models, 6)
    statuses = [m.FAILED, m.RETRYING, m.CANCELLED, m.PENDING, m.SUCCEEDED, m.DELIVERING]
    for delivery_id, status in zip(ids, statuses, strict=True):
        set_rows(
            state,
            [delivery_id],
            status=status,
            attempts=3,
            next_attempt_at=later(3600),
            leased_until=later(60) if status == m.DELIVERING else None,
            completed_at=m.utcnow() if status in (m.FAILED, m.SUCCEEDED) else None,
        )
    engine = state.engine()
    with recorded(engine) as rec:
        now = m.utcnow()
        changed = requeue(state, [*ids, "no-such-id"], now=now)
    statements = [sql.split()[0].upper() for sql, _ in rec.statements]
    assert sorted(changed) == sorted(ids[:4])
    writes = [s for s in statements if s in ("UPDATE", "INSERT", "DELETE")]
    assert writes == ["UPDATE"]
    if engine.dialect.name == "postgresql":
        assert "SELECT" not in statements  # RETURNING: no read-then-write
    for delivery_id in ids[:4]:
        d = row(webhooks, db, delivery_id)
        assert (d.status, d.attempts, d.completed_at) == (m.PENDING, 3, None)
        assert d.next_attempt_at == now
    assert row(webhooks, db, ids[4]).status == m.SUCCEEDED
    assert row(webhooks, db, ids[5]).status == m.DELIVERING
    assert requeue(state, [ids[4], ids[5]]) == []


# -- the request ----------------------------------------------------------------


@sqlite_only
def test_build_request_uses_the_webhook_timeout_and_tls_settings(
    webhooks, db, models, make_hook, state, tmp_path
):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    hook = make_hook(timeout=2.5, ca_file_path=None)
    (delivery_id,) = new_deliveries(db, models)
    d = row(webhooks, db, delivery_id)
    state_cfg = state.config
    request = build_request(state, d, hook, 3, timestamp=1_700_000_000)
    assert request.read_timeout == 2.5
    assert request.connect_timeout == min(state_cfg.connect_timeout, 2.5)
    assert request.verify is True
    assert request.headers["X-Webhook-Attempt"] == "3"
    assert request.body == d.body

    hook.timeout = None
    hook.ca_file_path = str(ca)
    request = build_request(state, d, hook, 1)
    assert request.read_timeout == state_cfg.timeout
    assert request.verify == str(ca)

    hook.ssl_verification = False  # an explicit choice wins over the CA path
    assert build_request(state, d, hook, 1).verify is False
    hook.timeout = 0.2
    assert build_request(state, d, hook, 1).connect_timeout == 0.2
    db.session.rollback()


@sqlite_only
def test_attempts_reuse_the_thread_s_pooled_connection(
    webhooks, db, models, make_hook, state
):
    with RecordingReceiver() as rx:
        make_hook(payload_url=rx.url)
        ids = new_deliveries(db, models, 3)
        for delivery_id in ids:
            assert deliver(state, delivery_id, now=later(1)).status == m.SUCCEEDED
        other: list[t.Any] = []
        (extra,) = new_deliveries(db, models)
        th = threading.Thread(
            target=lambda: (
                other.append(deliver(state, extra, now=later(1))),
                state.transport().close(),
            )
        )
        th.start()
        th.join()
    assert other[0].status == m.SUCCEEDED
    ports = [hit.client_port for hit in rx.requests]
    # One keep-alive connection for this thread; another thread has its own.
    assert len(set(ports[:3])) == 1
    assert ports[3] != ports[0]


@sqlite_only
@pytest.mark.parametrize("scheme", ["standard", "both"])
def test_standard_webhooks_signature_verifies_with_the_reference_library(
    webhooks, db, models, receiver, make_hook, state, scheme
):
    secret = generate_secret()
    make_hook(secret=secret, signature_scheme=scheme)
    receiver.respond(500, 200)
    (delivery_id,) = new_deliveries(db, models)
    deliver(state, delivery_id, now=later(1))
    deliver(state, delivery_id, now=later(3600))
    assert row(webhooks, db, delivery_id).status == m.SUCCEEDED
    verifier = StandardWebhook(secret)
    for req in receiver.requests:
        payload = verifier.verify(req.body, req.headers)
        assert payload["event"] == "created"
        assert req.headers["webhook-id"] == delivery_id
        tampered = {
            k: ("someone-else" if k.lower() == "webhook-id" else v)
            for k, v in req.headers.items()
        }
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            verifier.verify(req.body, tampered)
        if scheme == "both":
            expected = hmac.new(secret.encode(), req.body, hashlib.sha512).hexdigest()
            assert req.headers["X-Hook-Signature"] == expected
        else:
            assert "X-Hook-Signature" not in req.headers


# -- cutting a burst into tasks ----------------------------------------------------


def test_small_groups_get_one_task_per_delivery() -> None:
    ids = [f"d{i}" for i in range(12)]
    keys = ["a", "b", "c"] * 4  # 4 per webhook: below the threshold
    assert batches(ids, keys, 20) == [[i] for i in ids]
    # No keys (a retry, the admin, the sweep): one task each.
    assert batches(ids, None, 20) == [[i] for i in ids]


def test_a_burst_of_one_webhook_is_cut_into_near_equal_batches_in_order() -> None:
    ids = [f"d{i}" for i in range(45)]
    keys = ["a"] * 45
    out = batches(ids, keys, 20)
    assert [len(b) for b in out] == [15, 15, 15]
    assert [i for b in out for i in b] == ids
    # Two webhooks interleaved: each keeps its own order; a small third one
    # (below the threshold) goes one delivery per task.
    ids = [f"d{i}" for i in range(50)]
    keys = ["a" if i % 2 else "b" for i in range(48)] + ["c", "c"]
    out = batches(ids, keys, 20)
    by_key = {k: [i for i, kk in zip(ids, keys, strict=True) if kk == k] for k in "abc"}
    assert out == [
        by_key["b"][:12],
        by_key["b"][12:],
        by_key["a"][:12],
        by_key["a"][12:],
        ["d48"],
        ["d49"],
    ]
    assert batches(ids, keys, 1) == [[i] for i in ids]


def test_keys_must_match_ids() -> None:
    ids = [f"d{i}" for i in range(BATCH_THRESHOLD)]
    with pytest.raises(ValueError, match="keys must match ids"):
        batches(ids, ["a"], 20)


def test_a_commit_enqueues_batches_per_webhook_and_small_ones_singly(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    make_hook()
    state.huey.flush()

    def commit_sites(count: int) -> None:
        db.session.add_all([models.Site(name=f"site-{i}") for i in range(count)])
        db.session.commit()

    commit_sites(3)  # 3 deliveries per webhook: 6 tasks
    assert state.huey.pending_count() == 6
    state.huey.flush()
    commit_sites(60)  # 60 per webhook: 2 batches of 30 each
    tasks = [state.huey.dequeue() for _ in range(state.huey.pending_count())]
    assert sorted(len(task.args[0]) for task in tasks) == [30, 30, 30, 30]
    assert {task.name for task in tasks} == {"deliver_batch"}


# -- deliver_batch -----------------------------------------------------------------


def test_a_batch_is_one_claim_one_webhook_read_and_one_result_write(
    webhooks, db, models, receiver, make_hook, state, caught
):
    make_hook()
    ids = new_deliveries(db, models, 25)
    engine = state.engine()
    with recorded(engine) as rec:
        outcomes = deliver_batch(state, ids, now=later(1))
    statements = rec.heads()
    assert [o.delivery_id for o in outcomes] == ids
    assert {o.status for o in outcomes} == {m.SUCCEEDED}
    assert [r.headers["X-Webhook-ID"] for r in receiver.requests] == ids
    for delivery_id in ids:
        d = row(webhooks, db, delivery_id)
        assert (d.status, d.attempts, d.last_status_code) == (m.SUCCEEDED, 1, 200)
        assert d.leased_until is None
    # One claim and one read of the webhook for the batch; the results in one
    # transaction: one executemany UPDATE of the deliveries (each fenced to
    # our claim), one INSERT for the attempt history, one health write.
    assert statements[:2] == [
        "UPDATE webhooks_delivery SET",
        "SELECT webhooks_webhook.id, webhooks_webhook.name,",
    ]
    assert statements.count("UPDATE webhooks_delivery SET") == 2
    assert statements.count("INSERT INTO webhooks_delivery_attempt") == 1
    assert statements.count("UPDATE webhooks_webhook SET") == 1
    assert len(rec.commits) == (2 if engine.dialect.name == "sqlite" else 1)
    assert len([n for n, _ in caught if n == "delivery-succeeded"]) == 25


def test_ids_not_due_or_held_elsewhere_are_left_alone(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    ids = new_deliveries(db, models, 3)
    t0 = later(1)
    D = state.models.Delivery.__table__
    with state.engine().begin() as conn:
        assert len(claim_many(conn, D, ids[1:2], t0, 60)) == 1  # another worker
    outcomes = deliver_batch(state, [*ids, "no-such-id", ids[0]], now=t0)
    assert [(o.delivery_id, o.claimed, o.status) for o in outcomes] == [
        (ids[0], True, m.SUCCEEDED),
        (ids[1], False, None),
        (ids[2], True, m.SUCCEEDED),
        ("no-such-id", False, None),
    ]
    assert row(webhooks, db, ids[1]).status == m.DELIVERING


@pytest.mark.parametrize(
    "config",
    [{"WEBHOOKS_RETRY_SCHEDULE": [5], "WEBHOOKS_DISABLE_AFTER_FAILURES": 2}],
    indirect=True,
)
def test_failures_in_a_batch_keep_per_delivery_semantics(
    webhooks, db, models, receiver, make_hook, state, caught
):
    """A retry is scheduled, a failure streak disables the webhook mid-batch and
    the rest of the batch then fails unsent, as separate tasks would."""
    hook = plain(db, make_hook())
    ids = new_deliveries(db, models, 4)
    second = new_deliveries(db, models, 3)
    D = state.models.Delivery.__table__
    with state.engine().begin() as conn:  # their last attempt (schedule used up)
        conn.execute(sa.update(D).where(D.c.id.in_(second)).values(attempts=1))
    state.huey.flush()
    receiver.respond(200, 500, 200, 200, 500, 500)
    outcomes = deliver_batch(state, ids + second, now=later(1))
    assert [o.status for o in outcomes] == [
        m.SUCCEEDED,
        m.RETRYING,  # first attempt: one retry left, does not count as a failure
        m.SUCCEEDED,
        m.SUCCEEDED,
        m.FAILED,  # last attempt failed: streak 1
        m.FAILED,  # streak 2: disables the webhook
        m.FAILED,  # not sent: the webhook is disabled
    ]
    assert len(receiver.requests) == 6
    reason = "2 consecutive failed deliveries (WEBHOOKS_DISABLE_AFTER_FAILURES = 2)"
    assert outcomes[5].disabled_reason == reason
    last = row(webhooks, db, second[2])
    assert (last.attempts, last.last_error) == (1, f"webhook is disabled: {reason}")
    retrying = row(webhooks, db, ids[1])
    assert retrying.status == m.RETRYING and retrying.next_attempt_at is not None
    # The retry went to the queue's schedule, one task for that delivery.
    retries = [task for task in state.huey.pending() if task.eta is not None]
    assert [task.args for task in retries] == [(ids[1],)]
    assert [k for n, k in caught if n == "webhook-disabled"] == [
        {"webhook_id": hook.id, "webhook_name": hook.name, "reason": reason}
    ]


@pytest.mark.parametrize(
    "config",
    [
        {
            "WEBHOOKS_TIMEOUT": 1,
            "WEBHOOKS_CONNECT_TIMEOUT": 1,
            "WEBHOOKS_LEASE_MARGIN": 0,
        }
    ],
    indirect=True,
)
def test_the_lease_is_renewed_before_a_request_it_would_not_cover(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook(timeout=5)  # longer than the batch's lease of 2 x (1 + 1) s
    ids = new_deliveries(db, models, 3)
    with recorded(state.engine()) as rec:
        outcomes = deliver_batch(state, ids, now=later(1))
    renewals = [
        params
        for sql, params in rec.statements
        if sql.startswith("UPDATE webhooks_delivery SET leased_until")
    ]
    assert {o.status for o in outcomes} == {m.SUCCEEDED}
    assert len(renewals) == 1  # once, for the three: 2 x (1 + 5) s covers them


def test_renewal_drops_rows_another_worker_took(webhooks, db, models, make_hook, state):
    make_hook()
    ids = new_deliveries(db, models, 3)
    D = state.models.Delivery.__table__
    t0 = later(1)
    with state.engine().begin() as conn:
        assert len(claim_many(conn, D, ids, t0, 10)) == 3
        # Our lease ran out and another worker claimed the second row.
        conn.execute(
            sa.update(D)
            .where(D.c.id == ids[1])
            .values(leased_until=t0 + dt.timedelta(seconds=99))
        )
    lost = renew(
        state, D, ids, t0 + dt.timedelta(seconds=10), t0 + dt.timedelta(seconds=30)
    )
    assert lost == {ids[1]}
    assert row(webhooks, db, ids[0]).leased_until == t0 + dt.timedelta(seconds=30)
