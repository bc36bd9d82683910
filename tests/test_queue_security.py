"""The queue is a trust boundary: messages are JSON, a foreign (pickled)
message is logged and dropped by a real worker process and never executed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import pickle
import typing as t

import pytest
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.worker import ForeignMessageError
from flask_webhooks.worker import JSONSerializer
from flask_webhooks.worker.queue import make_huey
from huey.registry import Message

from tests.conftest import REDIS_URL
from tests.worker_helpers import open_stack
from tests.worker_helpers import wait_until

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class CreatesMarker:
    """Unpickling this creates a directory: what ``os.system`` via
    ``__reduce__`` would be in a real attack, visible without harm."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (os.mkdir, (self.path,))


def pickled_attack(marker: str) -> bytes:
    """A pickled Huey message for our ``deliver`` task whose argument runs code
    when unpickled."""
    message = Message(
        "attack-1",
        "flask_webhooks.delivery.tasks.deliver",
        None,
        0,
        0,
        None,
        (CreatesMarker(marker),),
        {},
    )
    return pickle.dumps(message, pickle.HIGHEST_PROTOCOL)


def test_the_attack_really_runs_code_when_unpickled(tmp_path):
    # The test's premise: unpickling the planted message creates the marker.
    marker = str(tmp_path / "marker")
    pickle.loads(pickled_attack(marker))
    assert os.path.exists(marker)


def test_json_serializer_round_trips_huey_messages():
    s = JSONSerializer()
    eta = dt.datetime(2026, 1, 2, 3, 4, 5, 600000)
    message = Message(
        "id-1",
        "flask_webhooks.delivery.tasks.deliver_batch",
        eta,
        2,
        1.5,
        None,
        (["a", "b"],),
        {"x": {"y": [1, 2.5, None, True]}},
        Message("id-2", "n", None, 0, 0, None, ("z",), {}),
        None,
        dt.timedelta(seconds=30),
        eta,
    )
    data = s.serialize(message)
    assert data.startswith(b"{")
    assert s.deserialize(data) == message
    beat = {"name": "h:1:dedicated", "last_seen": dt.datetime.now(dt.UTC)}
    assert s.deserialize(s.serialize(beat)) == beat


def test_json_serializer_refuses_objects_at_enqueue():
    with pytest.raises(TypeError, match=r"plain values only.*object"):
        JSONSerializer().serialize(Message("i", "n", args=(object(),)))


@pytest.mark.parametrize(
    "data",
    [b"\x80\x05garbage", b"not json", b'{"format": "other", "data": 1}', b"\xff\xfe"],
)
def test_foreign_data_is_refused_with_a_warning(data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING), pytest.raises(ForeignMessageError):
        JSONSerializer().deserialize(data)
    assert "dropped a queue message" in caplog.text


def test_a_pickled_message_is_never_unpickled(tmp_path, caplog):
    marker = str(tmp_path / "marker")
    with caplog.at_level(logging.WARNING), pytest.raises(ForeignMessageError):
        JSONSerializer().deserialize(pickled_attack(marker))
    assert not os.path.exists(marker)


@sqlite_only
def test_queues_we_build_use_json(app, tmp_path):
    for url in ("immediate://", "memory://", "sqlite:///q.sqlite"):
        h = make_huey(url, str(tmp_path))
        assert isinstance(h.serializer, JSONSerializer), url


@sqlite_only
def test_a_pickling_huey_given_to_init_app_is_warned_about(app, db, caplog):
    import huey

    with caplog.at_level(logging.WARNING):
        Webhooks(app, db=db, huey=huey.MemoryHuey("mine", results=False))
    assert "pickles its messages" in caplog.text


@sqlite_only
def test_a_json_huey_given_to_init_app_is_not_warned_about(app, db, caplog):
    import huey

    with caplog.at_level(logging.WARNING):
        Webhooks(
            app,
            db=db,
            huey=huey.MemoryHuey("mine", results=False, serializer=JSONSerializer()),
        )
    assert "pickles" not in caplog.text


def queue_urls() -> list[t.Any]:
    return [
        "sqlite:///queue.sqlite",
        pytest.param(
            REDIS_URL,
            id="redis",
            marks=pytest.mark.skipif(
                not REDIS_URL, reason="WEBHOOKS_TEST_REDIS_URL not set"
            ),
        ),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("queue_url", queue_urls(), ids=["sqlite-queue", "redis"])
def test_worker_drops_a_planted_pickle_and_keeps_delivering(tmp_path, queue_url):
    """A pickled message whose unpickling would create a file is put on the
    real queue among normal deliveries; a real worker process logs and drops
    it, the file never appears, and the deliveries all succeed."""
    if queue_url.startswith("redis"):
        import redis

        redis.Redis.from_url(queue_url).flushdb()
    marker = str(tmp_path / "pwned")
    with open_stack(tmp_path, queue_url) as stack, RecordingReceiver() as rx:
        stack.add_hook(rx.url)
        with stack.app.app_context():
            storage = stack.state.huey.storage
            storage.enqueue(pickled_attack(marker), 0)
        first = stack.commit_items(3)
        with stack.app.app_context():
            storage.enqueue(pickled_attack(marker), 0)
        stack.start_worker(threads=2)
        second = stack.commit_items(3)
        stack.wait_all(m.SUCCEEDED, 6, timeout=60)
        wait_until(
            lambda: stack.log(0).count("dropped a queue message") >= 2,
            30,
            "the worker to log both dropped messages",
        )
        stack.stop_workers()
        assert sorted(r.delivery_id for r in rx.requests) == sorted(first + second)
    assert not os.path.exists(marker)
    log = stack.log(0)
    assert "not flask-webhooks JSON" in log
    assert "b'\\x80" in log  # the pickle's first bytes, shown not run
