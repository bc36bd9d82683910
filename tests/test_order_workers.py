"""Per-object order with real worker processes and a real receiver
(DESIGN.md section 6): several threads, several processes, retries, a
failing object, a killed worker and collapsed updates.

PostgreSQL when ``WEBHOOKS_TEST_DATABASE_URL`` is set, else a SQLite file;
a SQLite queue file, or Redis where a test says so. Each test prints its
figures; run with ``-s`` to see them.
"""

from __future__ import annotations

import collections
import random
import signal
import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks.testing import Answer
from flask_webhooks.testing import ReceivedRequest
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import PG_URL
from tests.conftest import REDIS_URL
from tests.test_faults import flush_redis
from tests.worker_helpers import open_stack
from tests.worker_helpers import Stack
from tests.worker_helpers import wait_until

pytestmark = pytest.mark.slow

#: Commits per object: create, three updates, delete.
STEPS = ("v0", "v1", "v2", "v3", "delete")


class Judge:
    """A receiver's answers, recorded: ``status(request)`` decides, a random
    0-30 ms pause before answering."""

    def __init__(self, status: t.Callable[[ReceivedRequest], int]) -> None:
        self.status = status
        self.lock = threading.Lock()
        self.answered: dict[tuple[str | None, int | None], int] = {}
        self.rng = random.Random(12)

    def __call__(self, request: ReceivedRequest) -> Answer:
        status = self.status(request)
        with self.lock:
            self.answered[(request.delivery_id, request.attempt)] = status
            delay = self.rng.uniform(0, 0.03)
        return Answer(status, delay=delay)

    def accepted(self, hits: list[ReceivedRequest]) -> list[ReceivedRequest]:
        return [
            h
            for h in hits
            if 200 <= self.answered.get((h.delivery_id, h.attempt), 0) < 300
        ]


def object_of(request: ReceivedRequest) -> int:
    body = request.json()
    data = body["data"] or body["snapshots"]["prechange"]
    return int(data["id"])


def state_of(request: ReceivedRequest) -> str:
    body = request.json()
    if body["event"] == m.DELETED:
        return "delete"
    return str(body["data"]["name"]).rsplit("-", 1)[-1]


def check_commit_order(
    hits: list[ReceivedRequest], expected: t.Sequence[str] = STEPS
) -> int:
    """Per object, the requests (in arrival order) carry the states in commit
    order with increasing sequence numbers; a state may repeat only right
    after itself (an attempt the receiver got twice). Returns the objects."""
    by_object: dict[int, list[ReceivedRequest]] = collections.defaultdict(list)
    for hit in hits:
        by_object[object_of(hit)].append(hit)
    for hits_of_one in by_object.values():
        states = [state_of(h) for h in hits_of_one]
        numbers = [h.sequence for h in hits_of_one]
        assert None not in numbers
        assert list(dict.fromkeys(states)) == list(expected), states
        assert numbers == sorted(numbers), numbers  # type: ignore[type-var]
        assert len(set(numbers)) == len(expected)
    return len(by_object)


class Items:
    """Commits on the stack's ``Item`` model, one object per transaction."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ext = stack.ext

    def create(self, name: str) -> int:
        with self.stack.app.app_context():
            db = self.ext["db"]
            item = self.ext["Item"](name=name)
            db.session.add(item)
            db.session.commit()
            item_id = int(item.id)
            db.session.remove()
            return item_id

    def rename(self, item_id: int, name: str) -> None:
        with self.stack.app.app_context():
            db = self.ext["db"]
            db.session.get(self.ext["Item"], item_id).name = name
            db.session.commit()
            db.session.remove()

    def delete(self, item_id: int) -> None:
        with self.stack.app.app_context():
            db = self.ext["db"]
            db.session.delete(db.session.get(self.ext["Item"], item_id))
            db.session.commit()
            db.session.remove()

    def lifecycle(self, count: int) -> list[int]:
        """``count`` objects through :data:`STEPS`, each step a commit per
        object, objects interleaved."""
        ids = [self.create(f"obj{i}-v0") for i in range(count)]
        for step in STEPS[1:]:
            for i, item_id in enumerate(ids):
                if step == "delete":
                    self.delete(item_id)
                else:
                    self.rename(item_id, f"obj{i}-{step}")
        return ids


def report(test: str, **figures: t.Any) -> None:
    database = "postgresql" if PG_URL else "sqlite"
    shown = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[order] {test} ({database}): {shown}")


def first_update_fails(request: ReceivedRequest) -> int:
    return 500 if state_of(request) == "v1" and request.attempt == 1 else 200


@pytest.fixture
def stack(tmp_path: t.Any, request: pytest.FixtureRequest) -> t.Iterator[Stack]:
    config = getattr(request, "param", None)
    with open_stack(tmp_path, "sqlite:///queue.sqlite", config) as stack:
        yield stack


def test_four_threads_keep_each_objects_commit_order(stack):
    """40 objects x 5 commits, 4 worker threads, answers after 0-30 ms, the
    first attempt of every object's first update answered 500 and retried."""
    objects = 40
    judge = Judge(first_update_fails)
    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url)
        stack.start_worker(threads=4)
        started = time.monotonic()
        stack_items = Items(stack)
        stack_items.lifecycle(objects)
        stack.wait_all(m.SUCCEEDED, objects * len(STEPS), timeout=120)
        took = time.monotonic() - started
        hits = list(rx.requests)
    accepted = judge.accepted(hits)
    assert len(accepted) == objects * len(STEPS)
    assert check_commit_order(accepted) == objects
    retried = [h for h in hits if h.attempt == 2]
    assert len(retried) == objects
    report(
        "four-threads",
        objects=objects,
        deliveries=objects * len(STEPS),
        requests=len(hits),
        retried=len(retried),
        seconds=round(took, 2),
        out_of_order=0,
    )


@pytest.fixture
def redis_pg_stack(tmp_path: t.Any) -> t.Iterator[Stack]:
    if not (PG_URL and REDIS_URL):
        pytest.skip("WEBHOOKS_TEST_DATABASE_URL and WEBHOOKS_TEST_REDIS_URL not set")
    flush_redis(REDIS_URL)
    try:
        with open_stack(tmp_path, REDIS_URL) as stack:
            yield stack
    finally:
        flush_redis(REDIS_URL)


def test_two_worker_processes_on_redis_and_postgresql_keep_commit_order(
    redis_pg_stack,
):
    stack = redis_pg_stack
    objects = 40
    judge = Judge(first_update_fails)
    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url)
        workers = [stack.start_worker(threads=4) for _ in range(2)]
        Items(stack).lifecycle(objects)
        stack.wait_all(m.SUCCEEDED, objects * len(STEPS), timeout=120)
        hits = list(rx.requests)
    assert all(w.poll() is None for w in workers)
    accepted = judge.accepted(hits)
    assert len(accepted) == objects * len(STEPS)
    assert check_commit_order(accepted) == objects
    report("two-processes-redis", objects=objects, requests=len(hits))


@pytest.mark.parametrize(
    "stack",
    [{"WEBHOOKS_RETRY_SCHEDULE": [0.2], "WEBHOOKS_SWEEP_INTERVAL": 600}],
    indirect=True,
)
def test_an_earlier_delivery_that_fails_releases_the_next_at_once(stack):
    """Every create fails (two attempts, then ``failed``); the updates behind
    them go as soon as that happens, not at a sweep (the sweep runs every
    10 minutes here)."""
    objects = 10
    judge = Judge(lambda r: 500 if state_of(r) == "v0" else 200)
    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url)
        stack.start_worker(threads=4)
        items = Items(stack)
        ids = [items.create(f"obj{i}-v0") for i in range(objects)]
        for i, item_id in enumerate(ids):
            items.rename(item_id, f"obj{i}-v1")
        stack.wait_all(m.SUCCEEDED, objects, timeout=60)
        hits = list(rx.requests)
    assert stack.statuses() == {m.FAILED: objects, m.SUCCEEDED: objects}
    check_commit_order(hits, ("v0", "v1"))
    assert collections.Counter(state_of(h) for h in hits) == {
        "v0": 2 * objects,
        "v1": objects,
    }


@pytest.mark.parametrize(
    "stack",
    [{"WEBHOOKS_TIMEOUT": 3, "WEBHOOKS_RETRY_SCHEDULE": [0.2, 0.2]}],
    indirect=True,
)
def test_a_killed_worker_holding_a_delivery_keeps_the_order(stack):
    """The worker is SIGKILLed while the receiver holds an object's create;
    its updates commit meanwhile. After the lease expires, the new worker
    sends the create again and only then the updates."""
    held = threading.Event()

    def decide(request: ReceivedRequest) -> int:
        if state_of(request) == "v0" and request.attempt == 1:
            held.set()
            time.sleep(2.5)  # the worker dies meanwhile
        return 200

    judge = Judge(decide)
    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url)
        first = stack.start_worker(threads=4)
        items = Items(stack)
        item_id = items.create("obj0-v0")
        assert held.wait(30)
        items.rename(item_id, "obj0-v1")
        items.rename(item_id, "obj0-v2")
        time.sleep(0.5)  # the updates' tasks run and find the create in the way
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        statuses_at_kill = dict(stack.statuses())
        stack.start_worker(threads=4)
        stack.wait_all(m.SUCCEEDED, 3, timeout=60)
        hits = list(rx.requests)
    assert statuses_at_kill == {m.DELIVERING: 1, m.PENDING: 2}
    states = [(state_of(h), h.attempt) for h in hits]
    assert states == [("v0", 1), ("v0", 2), ("v1", 1), ("v2", 1)]
    check_commit_order(hits, ("v0", "v1", "v2"))
    report("killed-worker", requests=len(hits), statuses_at_kill=statuses_at_kill)


@pytest.mark.parametrize(
    "stack", [{"WEBHOOKS_RETRY_SCHEDULE": [0.5] * 40}], indirect=True
)
def test_collapse_updates_after_the_receiver_comes_back(stack):
    """The receiver is down while one object is created and updated 50 times;
    when it is back, it gets the create and one update with the final state."""
    down = threading.Event()
    down.set()
    judge = Judge(lambda r: 503 if down.is_set() else 200)
    updates = 50
    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url, collapse_updates=True)
        stack.start_worker(threads=4)
        items = Items(stack)
        item_id = items.create("obj0-v0")
        rx.wait_for(1, timeout=30)
        for i in range(1, updates + 1):
            items.rename(item_id, f"obj0-v{i}")
        D = stack.state.models.Delivery.__table__

        def all_waiting() -> bool:
            # Every update's task ran and found the create in its way.
            with stack.app.app_context(), stack.state.engine().connect() as conn:
                flagged = conn.execute(
                    sa.select(D.c.has_waiters).where(D.c.event == m.CREATED)
                ).scalar_one()
            return bool(flagged) and stack.state.huey.pending_count() == 0

        wait_until(all_waiting, 30, "the updates' tasks to run")
        down.clear()
        wait_until(
            lambda: (
                stack.statuses().get(m.SUCCEEDED) == 2
                and stack.statuses().get(m.SUPERSEDED) == updates - 1
            ),
            60,
            "the create and the last update",
        )
        hits = list(rx.requests)
    accepted = judge.accepted(hits)
    assert [(h.json()["event"], state_of(h)) for h in accepted] == [
        (m.CREATED, "v0"),
        (m.UPDATED, f"v{updates}"),
    ]
    assert stack.statuses() == {m.SUCCEEDED: 2, m.SUPERSEDED: updates - 1}
    report(
        "collapse",
        updates=updates,
        requests=len(hits),
        accepted=len(accepted),
        superseded=updates - 1,
    )


@pytest.mark.parametrize(
    "stack", [{"WEBHOOKS_RETRY_SCHEDULE": [1.0] * 30}], indirect=True
)
def test_a_failing_object_does_not_slow_the_others(stack):
    """One object's receiver endpoint keeps failing; 30 other objects, each
    created and updated twice, are all delivered while it is still retrying."""
    others = 30
    judge = Judge(lambda r: 500 if state_of(r).startswith("bad") else 200)

    with RecordingReceiver(answer=judge) as rx:
        stack.add_hook(rx.url)
        stack.start_worker(threads=4)
        items = Items(stack)
        started = time.monotonic()
        bad = items.create("obj-bad0")
        items.rename(bad, "obj-bad1")
        ids = [items.create(f"obj{i}-v0") for i in range(others)]
        for step in ("v1", "v2"):
            for i, item_id in enumerate(ids):
                items.rename(item_id, f"obj{i}-{step}")
        stack.wait_all(m.SUCCEEDED, others * 3, timeout=60)
        others_done = time.monotonic() - started
        rows = stack.rows()
        hits = list(rx.requests)
    bad_rows = {r.event: r for r in rows.values() if r.object_id == str(bad)}
    # The failing object is still being retried, its update still waits.
    assert bad_rows[m.CREATED].status == m.RETRYING
    assert bad_rows[m.UPDATED].status == m.PENDING
    good = [h for h in hits if object_of(h) != bad]
    assert check_commit_order(good, ("v0", "v1", "v2")) == others
    bad_attempts = bad_rows[m.CREATED].attempts
    report(
        "failing-object",
        others=others,
        others_delivered_s=round(others_done, 2),
        failing_attempts_meanwhile=bad_attempts,
        failing_update="pending",
    )
