"""Per-object order (DESIGN.md sections 4 and 6): sequence numbers, the
claim that holds later deliveries back, their release, collapsed updates,
sweeps and manual retries, against a real receiver and real databases.

The queue is ``memory://`` without workers: tests run the queued tasks
themselves (:func:`drain`), so what a finished delivery enqueues is visible;
retries are made with ``deliver(state, id, now=...)``.
"""

from __future__ import annotations

import threading
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks.capture import outbox
from flask_webhooks.delivery.engine import deliver
from flask_webhooks.delivery.engine import deliver_batch
from flask_webhooks.delivery.order import collapsible
from flask_webhooks.delivery.order import newer_delivered
from flask_webhooks.delivery.recovery import due_rows
from flask_webhooks.delivery.recovery import sweep
from flask_webhooks.testing import Answer
from flask_webhooks.testing import ReceivedRequest
from flask_webhooks.testing import RecordingReceiver

from tests.test_delivery import later
from tests.test_delivery import recorded


@pytest.fixture
def config(request: pytest.FixtureRequest) -> dict[str, t.Any]:
    values: dict[str, t.Any] = {
        "WEBHOOKS_QUEUE_URL": "memory://",
        "WEBHOOKS_EMBEDDED_WORKERS": 0,
        "WEBHOOKS_RETRY_SCHEDULE": [5, 300],
    }
    values.update(getattr(request, "param", {}))
    return values


class Switch:
    """A receiver's answers: ``status`` for everything, or per request."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.rule: t.Callable[[ReceivedRequest], int | None] = lambda r: None

    def __call__(self, request: ReceivedRequest) -> Answer:
        status = self.rule(request)
        return Answer(self.status if status is None else status, delay=self.delay)


@pytest.fixture
def switch() -> Switch:
    return Switch()


@pytest.fixture
def receiver(switch: Switch) -> t.Iterator[RecordingReceiver]:
    with RecordingReceiver(answer=switch) as r:
        yield r


@pytest.fixture
def state(webhooks: t.Any) -> t.Iterator[t.Any]:
    state = webhooks.state
    state.huey.flush()
    yield state
    state.transport().close()


def drain(state: t.Any) -> int:
    """Run the queued tasks (and those they enqueue) until the queue is empty."""
    huey = state.huey
    count = 0
    while (task := huey.dequeue()) is not None:
        huey.execute(task)
        count += 1
    return count


def rows(state: t.Any, **where: t.Any) -> list[t.Any]:
    D = state.models.Delivery.__table__
    stmt = sa.select(D).order_by(D.c.sequence, D.c.webhook_id)
    for key, value in where.items():
        stmt = stmt.where(D.c[key] == value)
    with state.engine().connect() as conn:
        return list(conn.execute(stmt))


def sent(receiver: RecordingReceiver) -> list[tuple[str, str, int]]:
    """(event, site name, sequence) of every request, in arrival order."""
    out = []
    for r in receiver.requests:
        body = r.json()
        data = body["data"] or body["snapshots"]["prechange"]
        assert r.sequence is not None
        out.append((body["event"], data["name"], r.sequence))
    return out


class Sites:
    def __init__(self, db: t.Any, models: t.Any, state: t.Any) -> None:
        self.db, self.Site, self.state = db, models.Site, state

    # Each ends the session's transaction: an open read would block the
    # delivery engine's writes on SQLite.
    def create(self, name: str) -> int:
        site = self.Site(name=name)
        self.db.session.add(site)
        self.db.session.commit()
        site_id = int(site.id)
        self.db.session.close()
        return site_id

    def rename(self, site_id: int, name: str) -> None:
        self.db.session.get(self.Site, site_id).name = name
        self.db.session.commit()
        self.db.session.close()

    def delete(self, site_id: int) -> None:
        self.db.session.delete(self.db.session.get(self.Site, site_id))
        self.db.session.commit()
        self.db.session.close()


@pytest.fixture
def sites(db: t.Any, models: t.Any, state: t.Any) -> Sites:
    return Sites(db, models, state)


# -- sequence numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "hooks",
    [["plain"], ["plain", "plain"], ["plain", "plain", "conditions"]],
    ids=["one-webhook", "fan-out", "fan-out-and-rows"],
)
def test_sequence_grows_with_commit_order_and_is_shared_by_webhooks(
    webhooks, db, models, make_hook, state, sites, receiver, hooks
):
    # One webhook (a row per event), two plain webhooks (fanned out in SQL),
    # and those with one with a condition (rows built in Python too): every
    # webhook's delivery of an event has one number. (On PostgreSQL the
    # first two number the events in the INSERT itself after the first
    # commit; the third draws them first.)
    for kind in hooks:
        if kind == "plain":
            make_hook()
        else:
            make_hook(conditions={"attr": "name", "value": "x", "op": "contains"})
    sites.create("x0")
    with recorded(db.engine) as rec:
        site_id = sites.create("x1")
    draws = [sql for sql, _ in rec.statements if "nextval" in sql]
    if db.engine.dialect.name == "postgresql":
        inline = "conditions" not in hooks
        assert [sql.startswith("INSERT") for sql in draws] == [inline]
    sites.rename(site_id, "x2")
    sites.delete(site_id)
    found = rows(state, object_id=str(site_id))
    by_event: dict[str, set[int]] = {}
    for r in found:
        by_event.setdefault(r.event, set()).add(r.sequence)
    assert len(found) == 3 * len(hooks)
    assert all(len(numbers) == 1 for numbers in by_event.values())
    created, updated, deleted = (
        by_event[e].pop() for e in (m.CREATED, m.UPDATED, m.DELETED)
    )
    assert 0 < created < updated < deleted


def test_sequence_header_is_the_same_on_every_attempt(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    sites.create("ams1")
    (d,) = rows(state)
    deliver(state, d.id)
    switch.status = 200
    deliver(state, d.id, now=later(10))
    first, second = receiver.requests
    assert first.header("X-Webhook-Attempt") == "1"
    assert second.header("X-Webhook-Attempt") == "2"
    assert first.header("X-Webhook-Sequence") == str(d.sequence)
    assert second.header("X-Webhook-Sequence") == str(d.sequence)


def test_test_deliveries_get_a_sequence_and_are_in_no_order(
    webhooks, db, make_hook, state, receiver, switch
):
    hook = make_hook()
    written = [
        outbox.test_delivery_row(hook, message="hello", username=None) for _ in range(2)
    ]
    db.session.close()
    for row in written:
        with state.engine().begin() as conn:
            state.outbox.write_numbered(conn, [row])
    first, second = written
    assert 0 < first["sequence"] < second["sequence"]
    # The first one is held by a failing receiver: the second still goes.
    switch.status = 500
    deliver(state, first["id"])
    switch.status = 200
    assert deliver(state, second["id"]).status == m.SUCCEEDED
    assert [r.header("X-Webhook-Sequence") for r in receiver.requests] == [
        str(first["sequence"]),
        str(second["sequence"]),
    ]


# -- the claim holds later deliveries back ------------------------------------------


def test_a_later_delivery_waits_and_goes_when_the_earlier_succeeds(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    site_id = sites.create("v0")
    drain(state)
    (created,) = rows(state)
    assert created.status == m.RETRYING
    switch.status = 200
    sites.rename(site_id, "v1")
    sites.rename(site_id, "v2")
    assert drain(state) == 2  # both tasks ran; both are held back
    assert [r.status for r in rows(state)] == [m.RETRYING, m.PENDING, m.PENDING]
    assert len(receiver.requests) == 1
    # The retry succeeds: the next one is enqueued at once (no sweep), and
    # its success enqueues the one after it.
    assert deliver(state, created.id, now=later(10)).status == m.SUCCEEDED
    assert state.huey.pending_count() == 1
    drain(state)
    assert [r.status for r in rows(state)] == [m.SUCCEEDED] * 3
    assert [(e, n) for e, n, _ in sent(receiver)] == [
        (m.CREATED, "v0"),
        (m.CREATED, "v0"),
        (m.UPDATED, "v1"),
        (m.UPDATED, "v2"),
    ]
    numbers = [s for _, _, s in sent(receiver)]
    assert numbers[1] < numbers[2] < numbers[3]


@pytest.mark.parametrize("config", [{"WEBHOOKS_RETRY_SCHEDULE": []}], indirect=True)
def test_an_earlier_delivery_that_fails_releases_the_next(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    site_id = sites.create("v0")
    sites.rename(site_id, "v1")
    assert state.huey.pending_count() == 2
    first = state.huey.dequeue()
    # The update's task runs first: it is held back, and flags the create.
    state.huey.execute(state.huey.dequeue())
    assert [(r.status, r.has_waiters) for r in rows(state)] == [
        (m.PENDING, True),
        (m.PENDING, False),
    ]
    switch.status = 200
    switch.rule = lambda r: 500 if r.json()["event"] == m.CREATED else None
    state.huey.execute(first)  # attempts exhausted: failed
    assert [r.status for r in rows(state)] == [m.FAILED, m.PENDING]
    assert state.huey.pending_count() == 1  # released at once
    drain(state)
    assert [r.status for r in rows(state)] == [m.FAILED, m.SUCCEEDED]
    assert [e for e, _, _ in sent(receiver)] == [m.CREATED, m.UPDATED]


@pytest.mark.parametrize("config", [{"WEBHOOKS_ORDERING": "none"}], indirect=True)
def test_ordering_none_sends_as_soon_as_possible(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    site_id = sites.create("v0")
    drain(state)
    switch.status = 200
    sites.rename(site_id, "v1")
    drain(state)
    assert [r.status for r in rows(state)] == [m.RETRYING, m.SUCCEEDED]
    assert [e for e, _, _ in sent(receiver)] == [m.CREATED, m.UPDATED]
    # Nothing is flagged or released in this mode.
    assert not any(r.has_waiters for r in rows(state))


def test_other_objects_never_wait_for_a_failing_one(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.rule = lambda r: 500 if r.json()["data"]["name"].startswith("bad") else None
    bad = sites.create("bad")
    sites.rename(bad, "bad-2")
    good = [sites.create(f"good-{i}") for i in range(3)]
    for site_id in good:
        sites.rename(site_id, f"good-{site_id}-2")
    drain(state)
    statuses = {(r.object_id, r.event): r.status for r in rows(state)}
    assert statuses.pop((str(bad), m.CREATED)) == m.RETRYING
    assert statuses.pop((str(bad), m.UPDATED)) == m.PENDING
    assert set(statuses.values()) == {m.SUCCEEDED}


def test_a_successor_committed_while_the_earlier_is_in_flight_goes_at_once(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    """The update commits while the create's request is on the wire; its task
    runs then and is held back. The create's end still releases it: nothing
    waits for a sweep."""
    make_hook()
    switch.delay = 0.5
    site_id = sites.create("v0")
    (created,) = rows(state)
    state.huey.flush()
    app = state.app

    def send_create() -> None:
        with app.app_context():
            deliver(state, created.id)

    sender = threading.Thread(target=send_create)
    sender.start()
    receiver.wait_for(1)  # the create is being answered (slowly)
    switch.delay = 0.0
    sites.rename(site_id, "v1")
    assert drain(state) == 1
    (_, update) = rows(state)
    assert update.status == m.PENDING
    sender.join()
    assert state.huey.pending_count() == 1
    drain(state)
    assert [e for e, _, _ in sent(receiver)] == [m.CREATED, m.UPDATED]
    assert [r.status for r in rows(state)] == [m.SUCCEEDED, m.SUCCEEDED]


def test_a_batch_holding_two_deliveries_of_one_object_sends_them_in_order(
    webhooks, db, models, make_hook, state, sites, receiver
):
    make_hook()
    site_id = sites.create("v0")
    sites.rename(site_id, "v1")
    other = sites.create("w0")
    state.huey.flush()
    ids = [r.id for r in rows(state)]
    outcomes = deliver_batch(state, list(reversed(ids)))
    claimed = {o.delivery_id for o in outcomes if o.claimed}
    # The update is held back by the create in the same batch; once the
    # batch's results are written, it is released.
    assert claimed == {ids[0], ids[2]}
    assert state.huey.pending_count() == 1
    drain(state)
    assert [(e, n) for e, n, _ in sent(receiver)][-1] == (m.UPDATED, "v1")
    assert [e for e, n, _ in sent(receiver) if n.startswith("v")] == [
        m.CREATED,
        m.UPDATED,
    ]
    assert other


# -- sweep and manual retry ---------------------------------------------------------


def test_the_sweep_enqueues_only_the_first_open_delivery_of_an_object(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    site_id = sites.create("v0")
    drain(state)
    sites.rename(site_id, "v1")
    sites.rename(site_id, "v2")
    other = sites.create("w0")
    state.huey.flush()
    (created, *_), (w,) = (
        rows(state, object_id=str(site_id)),
        rows(state, object_id=str(other)),
    )
    due = {i for i, _ in due_rows(state, now=later(10))}
    assert due == {created.id, w.id}
    assert sweep(state, now=later(10)) == 2
    state.huey.flush()
    # The periodic sweep (which marks what it enqueues) too.
    assert sweep(state, now=later(20), older_than=1, hold=30) == 2


@pytest.mark.parametrize("config", [{"WEBHOOKS_RETRY_SCHEDULE": []}], indirect=True)
def test_retrying_a_stale_delivery_is_allowed_and_keeps_its_sequence(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 500
    site_id = sites.create("v0")
    drain(state)
    switch.status = 200
    sites.rename(site_id, "v1")
    drain(state)
    created, updated = rows(state)
    assert (created.status, updated.status) == (m.FAILED, m.SUCCEEDED)
    assert newer_delivered(state, [created.id, updated.id]) == {created.id}
    assert webhooks.retry(created.id) is True
    drain(state)
    again = rows(state, id=created.id)[0]
    assert again.status == m.SUCCEEDED
    assert again.sequence == created.sequence
    assert receiver.requests[-1].header("X-Webhook-Sequence") == str(created.sequence)


# -- collapsed updates --------------------------------------------------------------


def test_collapse_updates_sends_created_and_only_the_newest_update(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook(collapse_updates=True)
    switch.status = 503
    site_id = sites.create("v0")
    for i in range(1, 6):
        sites.rename(site_id, f"v{i}")
    drain(state)
    (created, *updates) = rows(state)
    assert created.status == m.RETRYING
    assert [u.status for u in updates] == [m.PENDING] * 5
    switch.status = 200
    deliver(state, created.id, now=later(10))
    drain(state)
    statuses = [r.status for r in rows(state)]
    assert statuses == [m.SUCCEEDED] + [m.SUPERSEDED] * 4 + [m.SUCCEEDED]
    assert [(e, n) for e, n, _ in sent(receiver)] == [
        (m.CREATED, "v0"),
        (m.CREATED, "v0"),
        (m.UPDATED, "v5"),
    ]
    # Superseded deliveries are final: a sweep or a retry never sends them.
    assert sweep(state, now=later(100)) == 0
    assert webhooks.retry(updates[0].id) is False


def test_collapse_never_skips_created_or_deleted(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook(collapse_updates=True)
    switch.status = 503
    site_id = sites.create("v0")
    sites.rename(site_id, "v1")
    sites.rename(site_id, "v2")
    sites.delete(site_id)
    drain(state)
    switch.status = 200
    deliver(state, rows(state)[0].id, now=later(10))
    drain(state)
    assert [(r.event, r.status) for r in rows(state)] == [
        (m.CREATED, m.SUCCEEDED),
        (m.UPDATED, m.SUPERSEDED),
        (m.UPDATED, m.SUCCEEDED),
        (m.DELETED, m.SUCCEEDED),
    ]
    assert [e for e, _, _ in sent(receiver)][1:] == [m.CREATED, m.UPDATED, m.DELETED]


def test_without_collapse_updates_every_update_is_sent(
    webhooks, db, models, make_hook, state, sites, receiver, switch
):
    make_hook()
    switch.status = 503
    site_id = sites.create("v0")
    for i in range(1, 4):
        sites.rename(site_id, f"v{i}")
    drain(state)
    switch.status = 200
    deliver(state, rows(state)[0].id, now=later(10))
    drain(state)
    assert [n for _, n, _ in sent(receiver)][1:] == ["v0", "v1", "v2", "v3"]


class R(t.NamedTuple):
    id: str
    sequence: int
    event: str
    status: str = m.PENDING


def test_collapsible_runs_of_updates():
    u, c, d = m.UPDATED, m.CREATED, m.DELETED
    chain = [
        R("a", 5, u, m.DELIVERING),  # not waiting: never skipped
        R("b", 6, u),
        R("c", 7, u, m.RETRYING),
        R("d", 8, d),
        R("e", 9, c),
        R("f", 10, u),
        R("g", 11, u),
        R("h", 12, u),
    ]
    assert collapsible(chain, 4) == ["b", "f", "g"]
    # Only what waited behind the finished delivery (sequence 6) counts.
    assert collapsible(chain, 6) == ["f", "g"]
    assert collapsible(chain, None) == []


def test_collapse_updates_is_validated(webhooks, db):
    from flask_webhooks import WebhookValidationError

    hook = webhooks.Webhook(
        name="h",
        models=["site"],
        on_update=True,
        payload_url="http://127.0.0.1:9/",
        collapse_updates="yes",
    )
    db.session.add(hook)
    with pytest.raises(WebhookValidationError) as info:
        db.session.commit()
    assert info.value.errors == {"collapse_updates": "must be True or False, got 'yes'"}
    db.session.rollback()
    assert webhooks.Webhook(name="h2").collapse_updates is False


def test_capture_deliveries_keeps_the_order_until_the_retry_runs(
    webhooks, db, models, make_hook, state, sites
):
    from flask_webhooks.testing import capture_deliveries

    make_hook()
    with capture_deliveries(state.app) as sent:
        sent.respond(500)
        site_id = sites.create("v0")
        sites.rename(site_id, "v1")
        # The update waits for the create's retry.
        assert [(r.event, r.attempt) for r in sent.requests] == [(m.CREATED, 1)]
        assert sent.run_scheduled() == 1
    assert [(r.event, r.attempt) for r in sent.requests] == [
        (m.CREATED, 1),
        (m.CREATED, 2),
        (m.UPDATED, 1),
    ]
    first, second, third = sent.requests
    assert first.sequence == second.sequence < (third.sequence or 0)


def test_without_the_sequence_source_commits_still_work_unnumbered(
    webhooks, db, models, make_hook, state, sites, receiver, caplog
):
    """An app that upgraded without creating the sequence (PostgreSQL) or the
    counter table (elsewhere): commits and deliveries go on, unnumbered."""
    make_hook()
    db.session.remove()
    with state.engine().begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SEQUENCE webhooks_delivery_sequence")
        else:
            conn.exec_driver_sql("DROP TABLE webhooks_counter")
    site_id = sites.create("v0")
    sites.rename(site_id, "v1")
    assert [r.sequence for r in rows(state)] == [None, None]
    assert "cannot draw event sequence numbers" in caplog.text
    drain(state)
    assert [r.status for r in rows(state)] == [m.SUCCEEDED, m.SUCCEEDED]
    assert [r.header("X-Webhook-Sequence") for r in receiver.requests] == [None, None]
    if db.engine.dialect.name == "postgresql":
        with state.engine().begin() as conn:
            conn.exec_driver_sql("CREATE SEQUENCE webhooks_delivery_sequence")
