"""``flask_webhooks.testing``: what an app's own test suite uses."""

from __future__ import annotations

import http.client
import threading
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import sign
from flask_webhooks.testing import Answer
from flask_webhooks.testing import capture_deliveries
from flask_webhooks.testing import ReceivedRequest
from flask_webhooks.testing import RecordingReceiver


def _statuses(webhooks: t.Any, db: t.Any) -> list[tuple[str, int]]:
    """(status, attempts) of every delivery, read outside ``db.session``."""
    D = webhooks.Delivery.__table__
    with db.engine.connect() as conn:
        return [
            (r.status, r.attempts)
            for r in conn.execute(sa.select(D).order_by(D.c.created_at))
        ]


def test_capture_records_the_exact_signed_requests_without_sending(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
) -> None:
    make_hook(name="crm", secret="s3cret", additional_headers="X-Team: infra")
    with capture_deliveries(app) as sent:
        site = models.Site(name="ams1")
        db.session.add(site)
        db.session.commit()
        # Synchronous: recorded by the time commit() returns.
        assert len(sent) == 1
        site.name = "ams2"
        db.session.commit()

    assert receiver.requests == [], "nothing went over the network"
    assert sent.events() == [
        ("created", "site", str(site.id)),
        ("updated", "site", str(site.id)),
    ]
    created = sent.requests[0]
    assert created.webhook == "crm"
    assert created.method == "POST"
    assert created.url == receiver.url
    assert created.attempt == 1
    assert created.headers["X-Team"] == "infra"
    assert created.headers["X-Hook-Signature"] == sign("s3cret", created.body)
    assert created.verify("s3cret")
    assert not created.verify("other")
    assert created.json()["data"]["name"] == "ams1"
    assert created.status_code == 200
    # The pipeline ran for real: the log says succeeded.
    deliveries = sent.deliveries()
    assert [(d.id, d.status, d.attempts) for d in deliveries] == [
        (created.delivery_id, "succeeded", 1),
        (sent.requests[1].delivery_id, "succeeded", 1),
    ]
    assert created.headers["X-Webhook-ID"] == created.delivery_id


def test_capture_scripts_failures_and_runs_retries(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
) -> None:
    make_hook(name="crm")
    with capture_deliveries(app) as sent:
        sent.respond(503, 500)
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
        assert _statuses(webhooks, db) == [("retrying", 1)]
        ((delivery_id, delay),) = sent.scheduled
        assert delivery_id == sent.requests[0].delivery_id
        assert 4 <= delay <= 6, "the first step of the default schedule, with jitter"

        assert sent.run_scheduled() == 1
        assert _statuses(webhooks, db) == [("retrying", 2)]
        assert sent.run_scheduled() == 1
        assert _statuses(webhooks, db) == [("succeeded", 3)]
        assert sent.scheduled == []
    assert [r.attempt for r in sent] == [1, 2, 3]
    assert [r.status_code for r in sent] == [503, 500, 200]
    assert len({r.delivery_id for r in sent}) == 1


def test_capture_default_status(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
) -> None:
    make_hook(name="crm")
    with capture_deliveries(app, status=404):
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
    assert _statuses(webhooks, db) == [("retrying", 1)]


def test_capture_standard_webhooks_signature(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
) -> None:
    secret = generate_secret()
    make_hook(name="std", secret=secret, signature_scheme="standard")
    with capture_deliveries(app) as sent:
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
    (request,) = sent.for_webhook("std")
    assert "X-Hook-Signature" not in request.headers
    assert request.headers["webhook-id"] == request.delivery_id
    assert request.verify(secret)
    assert not request.verify(generate_secret())
    assert sent.for_webhook("other") == []


def test_capture_ignores_the_configured_queue_and_restores_it(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
) -> None:
    state = app.extensions["webhooks"]
    make_hook(name="crm")
    with capture_deliveries() as sent:  # current_app
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
        sent.clear()
        assert len(sent) == 0
    assert "enqueue" not in vars(state)
    assert "transport" not in vars(state)
    # After the block the real pipeline (immediate queue, real HTTP) is back.
    db.session.add(models.Site(name="ams2"))
    db.session.commit()
    (request,) = receiver.wait_for(1)
    assert request.json()["data"]["name"] == "ams2"
    assert len(sent) == 0


@pytest.mark.parametrize("config", [{"WEBHOOKS_QUEUE_URL": "sqlite:///q.sqlite"}])
def test_capture_with_a_sqlite_queue_starts_no_workers(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
) -> None:
    state = app.extensions["webhooks"]
    state.workers = False  # make_hook's commit enqueues nothing, but be sure
    make_hook(name="crm")
    state.workers = None
    with capture_deliveries(app) as sent:
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
    assert len(sent) == 1
    assert state.workers is None
    assert state.huey.pending_count() == 0
    assert _statuses(webhooks, db) == [("succeeded", 1)]


def test_capture_needs_the_extension() -> None:
    with (
        pytest.raises(RuntimeError, match="not initialised"),
        capture_deliveries(Flask("bare")),
    ):
        pass


def test_recording_receiver_end_to_end(
    app: Flask,
    db: t.Any,
    models: t.Any,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
) -> None:
    with RecordingReceiver() as hooks:
        make_hook(name="real", payload_url=hooks.url, secret="s3cret")
        hooks.respond(500)
        db.session.add(models.Site(name="ams1"))
        db.session.commit()
        (request,) = hooks.wait_for(1)
        assert request.method == "POST"
        assert request.path == "/hook"
        assert request.header("x-webhook-attempt") == "1"
        assert request.verify("s3cret")
        assert request.json()["event"] == "created"
        assert _statuses(webhooks, db) == [("retrying", 1)]
        hooks.clear()
        assert hooks.requests == []
        with pytest.raises(AssertionError, match="expected 1 webhook requests, got 0"):
            hooks.wait_for(1, timeout=0.05)
    app.extensions["webhooks"].transport().close()


def _call(
    conn: http.client.HTTPConnection,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request over ``conn`` (kept alive): status, headers, body."""
    conn.request(method, "/hook", body=b"{}", headers=headers or {})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def test_recording_receiver_answers_queued_then_chosen_then_default() -> None:
    def by_attempt(request: ReceivedRequest) -> Answer | int:
        if request.attempt == 2:
            return Answer(202, headers={"Content-Type": "application/json"}, body=b"{}")
        return 204

    with RecordingReceiver(answer=by_attempt) as receiver:
        receiver.respond(Answer(503, headers={"Retry-After": "7"}, body=b"busy"), 500)
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        try:
            answers = [
                _call(conn, headers={"X-Webhook-Attempt": str(n)})
                for n in (1, 2, 2, 3, 3)
            ]
        finally:
            conn.close()
        requests = receiver.wait_for(5)
    assert [(status, body) for status, _, body in answers] == [
        (503, b"busy"),  # queued with respond(), in order
        (500, b"ok"),
        (202, b"{}"),  # then answer(request)
        (204, b""),
        (204, b""),  # nothing left on the connection by the first 204
    ]
    assert answers[0][1]["Retry-After"] == "7"
    assert answers[0][1]["Content-Type"] == "text/plain"
    assert answers[2][1]["Content-Type"] == "application/json"
    assert "Content-Length" not in answers[3][1]
    assert [r.attempt for r in requests] == [1, 2, 2, 3, 3]
    # One keep-alive connection: one client port.
    assert len({r.client_port for r in requests}) == 1

    with RecordingReceiver(status=201) as receiver:
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        try:
            assert _call(conn, "HEAD")[::2] == (201, b"")
            assert _call(conn, "PUT")[::2] == (201, b"ok")
        finally:
            conn.close()
        head, put = receiver.wait_for(2)
    assert (head.method, put.method) == ("HEAD", "PUT")
    assert (head.delivery_id, head.attempt) == (None, None)


def test_recording_receiver_records_before_a_delayed_answer() -> None:
    with RecordingReceiver() as receiver:
        receiver.respond(Answer(200, delay=1.0))
        conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
        headers = {"X-Webhook-ID": "d-1", "X-Webhook-Attempt": "1"}
        results: list[tuple[int, dict[str, str], bytes]] = []
        sender = threading.Thread(
            target=lambda: results.append(_call(conn, headers=headers))
        )
        sender.start()
        try:
            (request,) = receiver.wait_for(1)
            assert request.answered_at is None, "recorded while the answer waits"
        finally:
            sender.join()
            conn.close()
    assert results[0][0] == 200
    assert (request.delivery_id, request.attempt) == ("d-1", 1)
    assert request.header("x-webhook-id") == "d-1"
    assert request.answered_at is not None
    assert request.answered_at - request.received_at >= 1.0
