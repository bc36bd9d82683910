"""Workers: embedded consumer threads, batched enqueue, and the dedicated
``flask webhooks worker`` process (graceful stop, process mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import typing as t

import click
import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks.delivery.tasks import BATCH_THRESHOLD
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.worker.consumers import EmbeddedWorkers
from flask_webhooks.worker.consumers import start_embedded_workers
from flask_webhooks.worker.consumers import stop_embedded_workers
from flask_webhooks.worker.queue import make_huey
from flask_webhooks.worker.sweeper import heartbeats

from tests.conftest import REDIS_URL
from tests.worker_app import create_app
from tests.worker_helpers import open_stack
from tests.worker_helpers import wait_until

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {"WEBHOOKS_QUEUE_URL": "memory://", "WEBHOOKS_EMBEDDED_WORKERS": 2}


@pytest.fixture
def state(webhooks: t.Any) -> t.Iterator[t.Any]:
    state = webhooks.state
    yield state
    stop_embedded_workers(state)
    state.transport().close()


def status_of(state: t.Any, delivery_id: str | None = None) -> list[str]:
    D = state.models.Delivery.__table__
    stmt = sa.select(D.c.status)
    if delivery_id is not None:
        stmt = stmt.where(D.c.id == delivery_id)
    with state.engine().connect() as conn:
        return list(conn.execute(stmt).scalars())


def consumer_threads(workers: EmbeddedWorkers) -> list[threading.Thread]:
    consumer = workers.consumer
    return [th for _, th in consumer.worker_threads] + [consumer.scheduler]


# -- embedded workers ----------------------------------------------------------------


@sqlite_only
def test_embedded_workers_start_on_first_use_off_the_main_thread(
    webhooks, db, models, receiver, make_hook, state
):
    make_hook()
    # Never started by init_app: only the first enqueue (or request) starts them.
    assert state.workers is None
    # Huey's consumer installs signal handlers, which only the main thread may
    # do; the embedded consumer must start from any thread.
    errors: list[BaseException] = []

    def commit_in_thread() -> None:
        try:
            with state.app.app_context():
                db.session.add(models.Site(name="ams2"))
                db.session.commit()
                db.session.remove()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    committer = threading.Thread(target=commit_in_thread)
    committer.start()
    committer.join()
    assert errors == []
    workers = state.workers
    assert isinstance(workers, EmbeddedWorkers) and workers.running
    (req,) = receiver.wait_for(1)
    wait_until(lambda: status_of(state) == [m.SUCCEEDED], 10, "the delivery to succeed")
    assert req.json()["data"]["name"] == "ams2"
    threads = consumer_threads(workers)
    assert len(threads) == 3 and all(th.is_alive() for th in threads)
    # Later commits reuse them (woken, not polled for).
    db.session.add(models.Site(name="ams3"))
    db.session.commit()
    receiver.wait_for(2)
    assert state.workers is workers
    (beat,) = heartbeats(state)
    assert (beat["kind"], beat["pid"], beat["workers"]) == ("embedded", os.getpid(), 2)
    assert beat["last_seen"] <= m.utcnow()

    stop_embedded_workers(state)
    assert not workers.running
    assert not any(th.is_alive() for th in threads)
    assert heartbeats(state) == []


@sqlite_only
@pytest.mark.parametrize(
    "config",
    [{"WEBHOOKS_QUEUE_URL": "memory://", "WEBHOOKS_EMBEDDED_WORKERS": 0}],
)
def test_embedded_workers_off_leaves_deliveries_queued(
    webhooks, db, models, make_hook, state
):
    make_hook()
    db.session.add(models.Site(name="ams1"))
    db.session.commit()
    assert state.workers is False
    assert state.huey.pending_count() == 1
    assert status_of(state) == [m.PENDING]


@sqlite_only
def test_no_embedded_workers_in_the_reloader_parent(webhooks, state, monkeypatch):
    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    run = click.Command("run", params=[click.Option(["--reload/--no-reload"])])
    with click.Context(run, info_name="run") as ctx:
        ctx.params["reload"] = True
        assert start_embedded_workers(state) is False
        assert state.workers is None
        ctx.params["reload"] = None  # follows --debug / FLASK_DEBUG
        monkeypatch.setenv("FLASK_DEBUG", "1")
        assert start_embedded_workers(state) is False
        monkeypatch.setenv("FLASK_DEBUG", "0")
        assert start_embedded_workers(state) is True
        stop_embedded_workers(state)
        state.workers = None
        # The reloader's child serves requests: it delivers.
        ctx.params["reload"] = True
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
        assert start_embedded_workers(state) is True


def test_sqlite_queue_workers_start_with_the_first_request(tmp_path):
    """Deliveries queued before a restart go out when the app serves its first
    request, without waiting for a new commit."""
    settings: dict[str, t.Any] = {
        "database_url": f"sqlite:///{tmp_path / 'app.sqlite'}",
        "queue_url": None,  # the default: a SQLite file in the instance folder
        "instance_path": str(tmp_path / "instance"),
    }
    with RecordingReceiver() as rx:
        before = create_app(settings)  # no embedded workers (worker_app default)
        with before.app_context():
            ext = before.extensions["worker_app"]
            ext["db"].create_all()
            hook = ext["webhooks"].Webhook(
                name="h", models=["item"], on_create=True, payload_url=rx.url
            )
            ext["db"].session.add(hook)
            ext["db"].session.commit()
            ext["db"].session.add_all(ext["Item"](name=f"i{i}") for i in range(3))
            ext["db"].session.commit()
            assert before.extensions["webhooks"].huey.pending_count() == 3
            ext["db"].session.remove()
            ext["db"].engine.dispose()
            before.extensions["webhooks"].huey.storage.close()
        settings["config"] = {"WEBHOOKS_EMBEDDED_WORKERS": 2}
        after = create_app(settings)
        state = after.extensions["webhooks"]
        try:
            assert state.workers is None
            assert after.test_client().get("/").status_code == 404
            assert isinstance(state.workers, EmbeddedWorkers)
            rx.wait_for(3, timeout=30)
            with after.app_context():
                wait_until(
                    lambda: status_of(state) == [m.SUCCEEDED] * 3, 10, "3 deliveries"
                )
        finally:
            stop_embedded_workers(state)
            with after.app_context():
                after.extensions["worker_app"]["db"].engine.dispose()
            state.huey.storage.close()


# -- batched enqueue ---------------------------------------------------------------


@pytest.fixture
def redis_url() -> t.Iterator[str]:
    if not REDIS_URL:
        pytest.skip("WEBHOOKS_TEST_REDIS_URL not set")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@sqlite_only
def test_many_ids_are_one_redis_round_trip_in_fifo_order(app, db, redis_url):
    from flask_webhooks import Webhooks

    huey = make_huey(redis_url, app.instance_path)
    webhooks = Webhooks(app, db=db, huey=huey)
    state = webhooks.state
    assert state.workers is None
    calls: list[str] = []
    conn = huey.storage.conn
    original = conn.execute_command

    def counting(*args: t.Any, **options: t.Any) -> t.Any:
        calls.append(str(args[0]))
        return original(*args, **options)

    conn.execute_command = counting
    ids = [f"id-{i:04d}" for i in range(1500)]
    try:
        state.enqueue(ids)
    finally:
        conn.execute_command = original
    # No embedded workers for Redis; 1500 messages in two LPUSH calls (batches
    # of 1000), not 1500 round trips.
    assert state.workers is False
    assert calls == ["LPUSH", "LPUSH"]
    assert huey.pending_count() == 1500
    order = []
    while (task := huey.dequeue()) is not None:
        order.append(task.args[0])
    assert order == ids
    assert huey.results is False
    huey.storage.pool.disconnect()


@sqlite_only
@pytest.mark.parametrize(
    "config",
    [{"WEBHOOKS_QUEUE_URL": "sqlite:///queue.sqlite", "WEBHOOKS_EMBEDDED_WORKERS": 0}],
)
def test_many_ids_go_to_a_sqlite_queue_in_one_transaction_in_order(
    webhooks, state, app
):
    huey = state.huey
    assert huey.storage.filename == os.path.join(app.instance_path, "queue.sqlite")
    ids = [f"id-{i:04d}" for i in range(300)]
    state.enqueue(ids)
    assert huey.pending_count() == 300
    order = []
    while (task := huey.dequeue()) is not None:
        order.append(task.args[0])
    assert order == ids
    huey.storage.close()


# -- the dedicated worker process -------------------------------------------------


@sqlite_only
@pytest.mark.parametrize(
    "config", [{"WEBHOOKS_QUEUE_URL": "memory://", "WEBHOOKS_EMBEDDED_WORKERS": 0}]
)
def test_queued_tasks_are_named_for_their_module(webhooks, state):
    # Queued messages name their task; a worker runs a message only if it
    # registered that name. The names follow the module that defines them.
    state.enqueue(["one"])
    state.enqueue(
        [f"b{i}" for i in range(BATCH_THRESHOLD)], keys=["w"] * BATCH_THRESHOLD
    )
    state.sweep_task()
    huey = state.huey
    names = []
    while (raw := huey.storage.dequeue()) is not None:
        names.append(huey.serializer.deserialize(raw).name)
    assert names == [
        "flask_webhooks.delivery.tasks.deliver",
        "flask_webhooks.delivery.tasks.deliver_batch",
        "flask_webhooks.delivery.tasks.sweep",
    ]


@sqlite_only
@pytest.mark.parametrize("config", [{"WEBHOOKS_QUEUE_URL": "immediate://"}])
def test_worker_command_refuses_the_immediate_queue(webhooks, app):
    result = app.test_cli_runner().invoke(args=["webhooks", "worker"])
    assert result.exit_code == 1
    assert "immediate://" in result.output
    assert "nothing for a worker to do" in result.output


@pytest.fixture
def stack(tmp_path: t.Any) -> t.Iterator[t.Any]:
    """PostgreSQL (else SQLite) and a SQLite queue file, for worker processes."""
    with open_stack(tmp_path, "sqlite:///queue.sqlite") as stack:
        yield stack


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"]
)
def test_worker_stops_gracefully_finishing_the_running_delivery(stack, signum):
    with RecordingReceiver(answer=lambda _: Answer(200, delay=1.0)) as rx:
        stack.add_hook(rx.url)
        proc = stack.start_worker(threads=2)
        (delivery_id,) = stack.commit_items(1)
        rx.wait_for(1, timeout=30)  # the request is in flight now
        proc.send_signal(signum)
        assert proc.wait(20) == 0, stack.log(0)
    row = stack.rows()[delivery_id]
    # The running delivery finished and was recorded before the exit.
    assert (row.status, row.attempts, row.last_status_code) == (m.SUCCEEDED, 1, 200)
    log = stack.log(0)
    assert "Shutting down gracefully" in log
    assert "Traceback" not in log
    with stack.app.app_context():
        assert heartbeats(stack.state) == []  # removed on the way out


@pytest.mark.slow
def test_worker_with_processes_delivers_and_stops(stack):
    with RecordingReceiver() as rx:
        stack.add_hook(rx.url)
        proc = stack.start_worker("--processes", threads=2)
        ids = stack.commit_items(10)
        stack.wait_all(m.SUCCEEDED, 10, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, stack.log(0)
    assert sorted(h.delivery_id for h in rx.requests) == sorted(ids)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, check=False
    )
    assert children.stdout == b""


@pytest.mark.slow
def test_worker_restarts_in_place_on_sighup(stack):
    with RecordingReceiver() as rx:
        stack.add_hook(rx.url)
        proc = stack.start_worker(threads=2)
        with stack.app.app_context():
            (beat,) = heartbeats(stack.state)

        def restarted() -> bool:
            with stack.app.app_context():
                beats = heartbeats(stack.state)
            return any(b["started_at"] > beat["started_at"] for b in beats)

        proc.send_signal(signal.SIGHUP)
        wait_until(restarted, 30, "the worker to restart")
        assert proc.poll() is None  # the same process, re-executed
        stack.commit_items(3)
        stack.wait_all(m.SUCCEEDED, 3, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, stack.log(0)
    assert "worker restarting (SIGHUP)" in stack.log(0)
    assert len(rx.requests) == 3
