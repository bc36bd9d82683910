"""Nothing is lost under faults: real worker processes, a real receiver, the
real database and queue (PostgreSQL and Redis when ``WEBHOOKS_TEST_*`` are
set, else SQLite files), with receivers that fail, workers that are killed,
a queue that is flushed and a Redis server that restarts.

Each test prints its figures (events, lost, duplicated); run with ``-s`` to
see them.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import shutil
import signal
import socket
import subprocess
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks.testing import Answer
from flask_webhooks.testing import ReceivedRequest
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.worker.sweeper import heartbeats

from tests.conftest import PG_URL
from tests.conftest import REDIS_URL
from tests.worker_helpers import open_stack
from tests.worker_helpers import Stack
from tests.worker_helpers import wait_until

pytestmark = pytest.mark.slow

THREADS = 4


def flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def backends() -> str:
    return f"{'postgresql' if PG_URL else 'sqlite'} + {'redis' if REDIS_URL else 'sqlite queue'}"


@pytest.fixture
def stack(tmp_path: t.Any, request: pytest.FixtureRequest) -> t.Iterator[Stack]:
    """PostgreSQL (or SQLite) + Redis (or a SQLite queue file), no worker yet."""
    config = getattr(request, "param", None)
    if REDIS_URL:
        flush_redis(REDIS_URL)
        try:
            with open_stack(tmp_path, REDIS_URL, config) as stack:
                yield stack
        finally:
            flush_redis(REDIS_URL)
    else:
        with open_stack(tmp_path, "sqlite:///queue.sqlite", config) as stack:
            yield stack


def report(test: str, stack_name: str | None = None, **figures: t.Any) -> None:
    shown = " ".join(f"{k}={v}" for k, v in figures.items())
    print(f"\n[faults] {test} ({stack_name or backends()}): {shown}")


def check_once_at_a_time(hits: list[ReceivedRequest], *, overlap: bool = True) -> None:
    """Each attempt number of a delivery was sent once and (with ``overlap``)
    no two attempts of one delivery were being answered at the same time.

    The overlap check does not apply when the sender gave up on a slow answer
    (a timeout): the receiver is still busy with it while the retry arrives."""
    by_id: dict[str | None, list[ReceivedRequest]] = collections.defaultdict(list)
    for hit in hits:
        by_id[hit.delivery_id].append(hit)
    pairs = collections.Counter((h.delivery_id, h.attempt) for h in hits)
    assert [p for p, n in pairs.items() if n > 1] == []
    if not overlap:
        return
    for delivery_hits in by_id.values():
        # answered_at is None only if the answer was still being written.
        spans = sorted((h.received_at, h.answered_at or 0.0) for h in delivery_hits)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start


@pytest.mark.parametrize("stack", [{"WEBHOOKS_TIMEOUT": 0.5}], indirect=True)
def test_receiver_failing_then_recovering_every_delivery_succeeds(stack):
    """Attempt 1 gets a 500, attempt 2 times out, attempt 3 gets a 200."""
    answers = {1: Answer(500), 2: Answer(200, delay=1.2), 3: Answer(200)}
    events = 24
    with RecordingReceiver(answer=lambda r: answers[r.attempt]) as rx:
        stack.add_hook(rx.url)
        stack.start_worker(threads=8)
        ids = stack.commit_items(events)
        stack.wait_all(m.SUCCEEDED, events, timeout=60)
        hits = list(rx.requests)
    rows = stack.rows()
    by_id = collections.defaultdict(list)
    for hit in hits:
        by_id[hit.delivery_id].append(hit)
    assert sorted(by_id) == sorted(ids)
    for delivery_id in ids:
        row = rows[delivery_id]
        attempts = sorted(by_id[delivery_id], key=lambda h: h.attempt)
        assert [h.attempt for h in attempts] == [1, 2, 3]
        assert (row.status, row.attempts, row.last_status_code) == (m.SUCCEEDED, 3, 200)
        # Same id and the same bytes on every attempt, signed each time.
        assert {h.headers["X-Webhook-ID"] for h in attempts} == {delivery_id}
        assert {h.body for h in attempts} == {row.body}
        signature = hmac.new(b"s3cret", row.body, hashlib.sha512).hexdigest()
        assert {h.headers["X-Hook-Signature"] for h in attempts} == {signature}
    check_once_at_a_time(hits, overlap=False)
    A = stack.state.models.DeliveryAttempt.__table__
    with stack.app.app_context(), stack.state.engine().connect() as conn:
        history = collections.Counter(
            (r.number, r.status_code, (r.error or "").split(" after")[0])
            for r in conn.execute(sa.select(A))
        )
    assert history == {
        (1, 500, "HTTP 500 Internal Server Error"): events,
        (2, None, "read timed out"): events,
        (3, 200, ""): events,
    }
    report("retry", events=events, requests=len(hits), succeeded=events, lost=0)


@pytest.mark.parametrize(
    "stack",
    [{"WEBHOOKS_DELIVERY_BATCH_SIZE": 1}, {"WEBHOOKS_DELIVERY_BATCH_SIZE": 50}],
    indirect=True,
    ids=["one-per-task", "batches-of-50"],
)
def test_worker_killed_mid_way_nothing_is_lost(stack):
    """1,000 committed events; the worker is SIGKILLed after about 300
    deliveries and a new one is started: every delivery succeeds; only the
    attempts in flight at the kill may be sent twice."""
    batch_size = stack.settings["config"]["WEBHOOKS_DELIVERY_BATCH_SIZE"]
    events = 1000
    with RecordingReceiver(answer=lambda _: Answer(200, delay=0.01)) as rx:
        stack.add_hook(rx.url)
        first = stack.start_worker(threads=THREADS)
        ids = stack.commit_items(events)
        assert len(ids) == events
        wait_until(
            lambda: len(rx.requests) >= 300, 60, "300 deliveries before the kill"
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = stack.statuses()
        received_at_kill = len(rx.requests)
        stack.start_worker(threads=THREADS)
        stack.wait_all(m.SUCCEEDED, events, timeout=60)
        hits = list(rx.requests)
    assert first.returncode == -signal.SIGKILL
    rows = stack.rows()
    received = collections.Counter(h.delivery_id for h in hits)
    lost = [i for i in ids if rows[i].status != m.SUCCEEDED or i not in received]
    duplicated = {i: n for i, n in received.items() if n > 1}
    in_flight = at_kill.get(m.DELIVERING, 0)
    report(
        "kill",
        batch_size=batch_size,
        events=events,
        received_before_kill=received_at_kill,
        in_flight_at_kill=in_flight,
        requests=len(hits),
        lost=len(lost),
        duplicated=len(duplicated),
    )
    assert lost == []
    assert set(received) == set(ids)
    # A duplicate is an attempt that was in flight when the worker died: at
    # most one batch per worker thread (one delivery without batches), each
    # resent once under a new attempt number.
    assert in_flight <= THREADS * batch_size
    assert len(duplicated) <= in_flight
    assert all(n == 2 for n in duplicated.values())
    check_once_at_a_time(hits)
    for delivery_id in duplicated:
        assert rows[delivery_id].attempts == 2


def test_queue_flushed_after_commit_sweep_delivers_everything(stack):
    events = 200
    with RecordingReceiver() as rx:
        stack.add_hook(rx.url)
        ids = stack.commit_items(events)
        huey = stack.state.huey
        # 200 deliveries of one webhook: batch tasks of 50.
        assert huey.pending_count() == events // 50
        huey.flush()  # every enqueued task is gone; the outbox rows are not
        assert huey.pending_count() == 0
        with stack.app.app_context():
            assert stack.ext["webhooks"].sweep() == events
        assert huey.pending_count() == events // 50  # batches again
        stack.start_worker(threads=THREADS)
        stack.wait_all(m.SUCCEEDED, events, timeout=60)
        hits = list(rx.requests)
    received = collections.Counter(h.delivery_id for h in hits)
    assert sorted(received) == sorted(ids)
    assert set(received.values()) == {1}
    report("flush", events=events, requests=len(hits), lost=0, duplicated=0)


def test_two_workers_never_attempt_a_delivery_twice_at_once(stack):
    """Two worker processes on one queue; every id is enqueued three times
    and a third of the deliveries fail once, so both workers race for the
    same rows and retries: each attempt is sent once, never overlapping."""
    events = 300

    def decide(request: ReceivedRequest) -> Answer:
        fails_once = int((request.delivery_id or "")[:8], 16) % 3 == 0
        return Answer(500 if fails_once and request.attempt == 1 else 200, delay=0.02)

    with RecordingReceiver(answer=decide) as rx:
        stack.add_hook(rx.url)
        workers = [stack.start_worker(threads=THREADS) for _ in range(2)]
        with stack.app.app_context():
            pids = {b["pid"] for b in heartbeats(stack.state)}
        assert pids == {w.pid for w in workers}
        ids = stack.commit_items(events)
        with stack.app.app_context():
            stack.state.enqueue(ids)
            stack.state.enqueue(ids)
        stack.wait_all(m.SUCCEEDED, events, timeout=60)
        hits = list(rx.requests)
    expected = {i: 2 if int(i[:8], 16) % 3 == 0 else 1 for i in ids}
    received = collections.Counter(h.delivery_id for h in hits)
    assert dict(received) == expected
    check_once_at_a_time(hits)
    rows = stack.rows()
    assert {i: rows[i].attempts for i in ids} == expected
    assert all(w.poll() is None for w in workers)
    report(
        "two-workers",
        events=events,
        requests=len(hits),
        retried=sum(1 for n in expected.values() if n == 2),
        lost=0,
        duplicated=0,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on 127.0.0.1, no persistence."""

    def __init__(self, directory: t.Any) -> None:
        self.port = free_port()
        self.dir = str(directory)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        def up() -> bool:
            client = redis.Redis(host="127.0.0.1", port=self.port)
            try:
                return bool(client.ping())
            except redis.exceptions.ConnectionError:
                return False
            finally:
                client.close()

        wait_until(up, 10, "redis-server to accept connections")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path: t.Any) -> t.Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restart_workers_recover_on_their_own(tmp_path, redis_server):
    """Redis dies (losing its queue) and comes back while a worker runs: the
    worker reconnects by itself; events committed while Redis was down are
    delivered by its sweeper."""
    events = 0
    with open_stack(tmp_path, redis_server.url) as stack:
        with RecordingReceiver() as rx:
            stack.add_hook(rx.url)
            worker = stack.start_worker(threads=THREADS)
            before = stack.commit_items(20)
            stack.wait_all(m.SUCCEEDED, 20, timeout=30)
            redis_server.kill()
            # The commit succeeds; its enqueue fails and is logged.
            during = stack.commit_items(20)
            redis_server.start()
            after = stack.commit_items(20)
            stack.wait_all(m.SUCCEEDED, 60, timeout=60)
            hits = list(rx.requests)
            events = len(before) + len(during) + len(after)
        assert worker.poll() is None  # the same worker process throughout
        received = collections.Counter(h.delivery_id for h in hits)
        assert sorted(received) == sorted(before + during + after)
        assert set(received.values()) == {1}
        log = stack.log(0)
        assert "Error reading from queue" in log  # it did see Redis go away
    database = "postgresql" if PG_URL else "sqlite"
    report(
        "redis-restart",
        f"{database} + own redis-server",
        events=events,
        requests=len(hits),
        lost=0,
        duplicated=0,
    )
