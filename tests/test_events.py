"""App events (``webhooks.event_type`` / ``webhooks.publish``): they join the
``db.session`` transaction like model changes and go through the same outbox,
delivered for real to a local receiver."""

from __future__ import annotations

import datetime as dt
import json
import typing as t

import marshmallow as ma
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks import WebhookValidationError
from flask_webhooks.signing import verify
from flask_webhooks.testing import capture_deliveries
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import D
from tests.conftest import Models
from tests.conftest import Status


class InvoicePaid(ma.Schema):
    id = ma.fields.Integer()
    total = ma.fields.Decimal()
    paid_at = ma.fields.DateTime(data_key="paidAt")


class Invoice:
    """A plain object (not a model) that the schema dumps."""

    def __init__(self, id: int, total: str) -> None:
        self.id = id
        self.total = D(total)
        self.paid_at = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def events(webhooks: Webhooks) -> Webhooks:
    webhooks.event_type(
        "invoice.paid", description="An invoice was paid", schema=InvoicePaid
    )
    webhooks.event_type("user.signed_up", description="Someone signed up")
    webhooks.event_type("site.decommissioned", description="A site was retired")
    return webhooks


@pytest.fixture
def subscribe(
    events: Webhooks, db: SQLAlchemy, receiver: RecordingReceiver
) -> t.Callable[..., t.Any]:
    counter = iter(range(1, 1000))

    def make(*names: str, **fields: t.Any) -> t.Any:
        values: dict[str, t.Any] = dict(
            name=f"app-hook-{next(counter)}",
            event_types=list(names),
            payload_url=receiver.url,
            secret="s3cret",
        )
        values.update(fields)
        hook = events.Webhook(**values)
        db.session.add(hook)
        db.session.commit()
        return hook

    return make


def payloads(receiver: RecordingReceiver, count: int) -> list[dict[str, t.Any]]:
    return [r.json() for r in receiver.wait_for(count)]


def deliveries(webhooks: Webhooks, db: SQLAlchemy) -> list[t.Any]:
    D_ = webhooks.Delivery
    db.session.rollback()
    return list(db.session.scalars(sa.select(D_).order_by(D_.created_at, D_.id)))


# -- delivered after the commit ------------------------------------------------


def test_a_committed_publish_is_one_signed_delivery(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe("invoice.paid")
    events.publish("invoice.paid", Invoice(7, "120.50"), object_id=7)
    assert receiver.requests == [], "nothing is sent before the commit"
    db.session.commit()

    (request,) = receiver.wait_for(1)
    assert verify("s3cret", request.body, request.headers["X-Hook-Signature"])
    payload = request.json()
    assert list(payload) == [
        "event",
        "timestamp",
        "model",
        "username",
        "request_id",
        "data",
        "snapshots",
    ]
    assert payload["event"] == "invoice.paid"
    assert payload["model"] is None
    assert payload["snapshots"] is None
    assert payload["data"] == {
        "id": 7,
        "total": "120.50",
        "paidAt": "2026-03-01T12:00:00+00:00",
    }
    dt.datetime.fromisoformat(payload["timestamp"])
    (delivery,) = deliveries(events, db)
    assert (delivery.event, delivery.model, delivery.object_id, delivery.status) == (
        "invoice.paid",
        "",
        "7",
        "succeeded",
    )
    assert request.headers["X-Webhook-ID"] == delivery.id


def test_a_dict_is_sent_as_data(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe("user.signed_up")
    data = {"email": "ada@example.com", "plan": "pro"}
    events.publish("user.signed_up", data)
    data["plan"] = "changed after publish"
    db.session.commit()
    (payload,) = payloads(receiver, 1)
    assert payload["data"] == {"email": "ada@example.com", "plan": "pro"}
    assert deliveries(events, db)[0].object_id == ""


def test_a_registered_instance_names_its_model_and_defaults_the_object_id(
    events: Webhooks,
    db: SQLAlchemy,
    models: Models,
    subscribe: t.Any,
    receiver: RecordingReceiver,
) -> None:
    """No schema on the event type: the model's registered schema dumps it,
    after the final flush (the new site has its primary key)."""
    subscribe("site.decommissioned")
    site = models.Site(name="ams1", status=Status.retired)
    db.session.add(site)
    events.publish("site.decommissioned", site)
    db.session.commit()
    (payload,) = payloads(receiver, 1)
    assert payload["model"] == "site"
    assert payload["data"]["id"] == site.id
    assert payload["data"]["status"] == "retired"
    (delivery,) = deliveries(events, db)
    assert (delivery.model, delivery.object_id) == ("site", str(site.id))


# -- never after a rollback ----------------------------------------------------


def test_a_rollback_drops_published_events(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe("user.signed_up")
    events.publish("user.signed_up", {"email": "a@example.com"})
    db.session.rollback()
    db.session.commit()
    events.publish("user.signed_up", {"email": "b@example.com"})
    db.session.remove()  # closed without commit
    events.publish("user.signed_up", {"email": "c@example.com"})
    db.session.commit()
    (payload,) = payloads(receiver, 1)
    assert payload["data"] == {"email": "c@example.com"}
    assert len(deliveries(events, db)) == 1


def test_a_rolled_back_savepoint_drops_the_events_published_in_it(
    events: Webhooks,
    db: SQLAlchemy,
    models: Models,
    subscribe: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    subscribe("user.signed_up")
    make_hook(models=["site"])
    events.publish("user.signed_up", {"n": 1})
    savepoint = db.session.begin_nested()
    events.publish("user.signed_up", {"n": 2})
    db.session.add(models.Site(name="dropped"))
    savepoint.rollback()
    with db.session.begin_nested():
        events.publish("user.signed_up", {"n": 3})
    db.session.commit()
    receiver.wait_for(2)
    got = [(r.json()["event"], r.json()["data"]) for r in receiver.requests]
    assert got == [("user.signed_up", {"n": 1}), ("user.signed_up", {"n": 3})]


def test_a_savepoint_begun_before_the_first_publish_is_tracked(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe("user.signed_up")
    db.session.execute(sa.select(1))
    savepoint = db.session.begin_nested()
    events.publish("user.signed_up", {"n": 1})
    savepoint.rollback()
    db.session.commit()
    events.publish("user.signed_up", {"n": 2})
    db.session.commit()
    (payload,) = payloads(receiver, 1)
    assert payload["data"] == {"n": 2}


# -- matching --------------------------------------------------------------------


def test_only_subscribed_enabled_webhooks_get_the_event(
    events: Webhooks,
    db: SQLAlchemy,
    subscribe: t.Any,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    subscribe("invoice.paid", name="invoices")
    subscribe("user.signed_up", name="disabled", enabled=False)
    make_hook(name="models-only")
    events.publish("user.signed_up", {"email": "a@example.com"})
    db.session.commit()
    assert deliveries(events, db) == []
    events.publish("invoice.paid", {"id": 1, "total": D("2")})
    db.session.commit()
    receiver.wait_for(1)
    assert [d.webhook_name for d in deliveries(events, db)] == ["invoices"]


def test_nothing_is_journaled_when_nobody_subscribes(
    events: Webhooks, db: SQLAlchemy, make_hook: t.Any
) -> None:
    from flask_webhooks.capture.listeners import _INFO_KEY

    make_hook()
    events.publish("user.signed_up", {"email": "a@example.com"})
    tx = db.session().info[_INFO_KEY]
    assert tx.journal == []
    db.session.commit()


def test_conditions_apply_to_data(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe(
        "invoice.paid",
        name="big",
        conditions={"attr": "total", "op": "gte", "value": 100},
    )
    subscribe(
        "invoice.paid",
        name="never",
        conditions={"attr": "snapshots.prechange.total", "op": "eq", "value": None},
    )
    events.publish("invoice.paid", Invoice(1, "99.99"))
    events.publish("invoice.paid", Invoice(2, "100.00"))
    db.session.commit()
    (payload,) = payloads(receiver, 1)
    assert payload["data"]["id"] == 2
    assert [d.webhook_name for d in deliveries(events, db)] == ["big"]


def test_body_and_header_templates_see_the_app_event(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe(
        "user.signed_up",
        body_template='{"text": "{{ event }}: {{ data.email }} ({{ model }})"}',
        additional_headers="X-Event: {{ event }}",
    )
    events.publish("user.signed_up", {"email": "ada@example.com"})
    db.session.commit()
    (request,) = receiver.wait_for(1)
    assert request.json() == {"text": "user.signed_up: ada@example.com (None)"}
    assert request.headers["X-Event"] == "user.signed_up"


def test_two_publishes_are_two_deliveries_in_order_among_model_events(
    events: Webhooks,
    db: SQLAlchemy,
    models: Models,
    subscribe: t.Any,
    receiver: RecordingReceiver,
) -> None:
    subscribe("user.signed_up", "invoice.paid", models=["site"], on_create=True)
    site = models.Site(name="ams1")
    db.session.add(site)
    db.session.flush()
    events.publish("user.signed_up", {"n": 1})
    events.publish("invoice.paid", {"id": 5, "total": D("1")})
    events.publish("user.signed_up", {"n": 1})
    db.session.add(models.Site(name="ams2"))
    db.session.commit()
    receiver.wait_for(5)
    got = [(r.json()["event"], r.json()["data"].get("name")) for r in receiver.requests]
    assert got == [
        ("created", "ams1"),
        ("user.signed_up", None),
        ("invoice.paid", None),
        ("user.signed_up", None),
        ("created", "ams2"),
    ]
    rows = deliveries(events, db)
    assert len({d.id for d in rows}) == 5


@pytest.mark.parametrize("hooks", [1, 3])
def test_publishes_of_one_object_are_numbered_in_publish_order(
    events: Webhooks,
    db: SQLAlchemy,
    subscribe: t.Any,
    receiver: RecordingReceiver,
    hooks: int,
) -> None:
    # One webhook: plain rows; three: the SQL fan-out's staged rows. Either
    # way the sequence (numbered inside the INSERT on PostgreSQL) must follow
    # the publish order, which per-object order then keeps.
    for _ in range(hooks):
        subscribe("user.signed_up")
    # A first numbered commit: PostgreSQL numbers inside the INSERT from then on.
    events.publish("user.signed_up", {"n": -1}, object_id="41")
    db.session.commit()
    for n in range(8):
        events.publish("user.signed_up", {"n": n}, object_id="42")
    db.session.commit()
    receiver.wait_for(9 * hooks)
    rows = [d for d in deliveries(events, db) if d.object_id == "42"]
    for hook_id in {d.webhook_id for d in rows}:
        mine = sorted(
            (d for d in rows if d.webhook_id == hook_id), key=lambda d: d.sequence
        )
        assert [json.loads(d.body)["data"]["n"] for d in mine] == list(range(8))


def test_several_plain_webhooks_share_the_event_through_the_fan_out(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    for _ in range(3):
        subscribe("user.signed_up")
    events.publish("user.signed_up", {"n": 1})
    events.publish("user.signed_up", {"n": 2})
    db.session.commit()
    receiver.wait_for(6)
    rows = deliveries(events, db)
    assert {(d.event, d.model, d.object_id) for d in rows} == {
        ("user.signed_up", "", "")
    }
    bodies = sorted(json.loads(d.body)["data"]["n"] for d in rows)
    assert bodies == [1, 1, 1, 2, 2, 2]


# -- errors ----------------------------------------------------------------------


def test_an_undeclared_name_is_refused_naming_the_declared_ones(
    events: Webhooks,
) -> None:
    with pytest.raises(ValueError, match=r"'invoice\.payed' is not declared") as e:
        events.publish("invoice.payed", {"id": 1})
    assert "'invoice.paid'" in str(e.value)
    assert "'user.signed_up'" in str(e.value)


def test_data_nothing_can_dump_is_refused_at_publish(events: Webhooks) -> None:
    with pytest.raises(TypeError, match=r"user\.signed_up.*got list"):
        events.publish("user.signed_up", ["not", "a", "dict"])


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "non-empty"),
        ("created", "reserved"),
        ("test", "reserved"),
        ("invoice paid", "not a valid event name"),
        ("x" * 101, "at most 100"),
        ("invoice.paid", "already declared"),
    ],
)
def test_event_type_names_are_checked(
    events: Webhooks, name: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        events.event_type(name)


def test_a_failing_schema_records_failed_deliveries_and_the_commit_goes_on(
    events: Webhooks,
    db: SQLAlchemy,
    models: Models,
    subscribe: t.Any,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    class Broken(ma.Schema):
        boom = ma.fields.Method("explode")

        def explode(self, obj: t.Any) -> t.Any:
            raise RuntimeError("no total")

    events.event_type("invoice.broken", schema=Broken)
    subscribe("invoice.broken", "user.signed_up")
    make_hook()
    events.publish("invoice.broken", {"id": 1})
    events.publish("user.signed_up", {"odd": object()})
    db.session.add(models.Site(name="still-saved"))
    db.session.commit()
    receiver.wait_for(1)
    assert db.session.scalar(sa.select(models.Site.name)) == "still-saved"
    failed = {d.event: d for d in deliveries(events, db) if d.status == "failed"}
    assert "RuntimeError: no total" in failed["invoice.broken"].last_error
    assert "serialization failed" in failed["user.signed_up"].last_error


# -- webhook validation ------------------------------------------------------------


def test_a_webhook_needs_a_model_event_or_an_event_type(
    events: Webhooks, db: SQLAlchemy
) -> None:
    hook = events.Webhook(name="nothing", payload_url="https://example.com/")
    errors = hook.validate()
    assert "event type" in errors["models"]
    hook.event_types = ["invoice.paid"]
    assert hook.validate() == {}
    hook.models = ["site"]
    assert "choose at least one event" in hook.validate()["on_create"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["invoice.payed"], "not declared: invoice.payed"),
        ("invoice.paid", "not the string"),
        (["invoice.paid", "invoice.paid"], "more than once"),
        ([3], "must be strings"),
        ({"a": 1}, "must be a list"),
    ],
)
def test_event_types_are_validated_on_save(
    events: Webhooks, db: SQLAlchemy, value: t.Any, message: str
) -> None:
    hook = events.Webhook(
        name="bad", event_types=value, payload_url="https://example.com/"
    )
    db.session.add(hook)
    with pytest.raises(WebhookValidationError) as e:
        db.session.commit()
    assert message in e.value.errors["event_types"]
    assert "event_types:" in str(e.value)
    db.session.rollback()


def test_removing_the_last_event_type_of_a_saved_webhook_is_refused(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any
) -> None:
    hook = subscribe("user.signed_up")
    hook.event_types = []
    with pytest.raises(WebhookValidationError) as e:
        db.session.commit()
    assert "models" in e.value.errors
    db.session.rollback()


# -- testing helper, queues, index -------------------------------------------------


def test_capture_deliveries_records_app_events(
    app: Flask, events: Webhooks, db: SQLAlchemy, subscribe: t.Any
) -> None:
    subscribe("invoice.paid", name="billing")
    with capture_deliveries(app) as sent:
        events.publish("invoice.paid", Invoice(3, "9.00"), object_id="inv-3")
        db.session.commit()
    (request,) = sent.requests
    assert (request.webhook, request.event, request.model, request.object_id) == (
        "billing",
        "invoice.paid",
        "",
        "inv-3",
    )
    assert request.json()["data"]["total"] == "9.00"
    assert request.verify("s3cret")
    assert sent.events() == [("invoice.paid", "", "inv-3")]


@pytest.mark.parametrize("config", [{"WEBHOOKS_QUEUE_URL": "sqlite:///queue.sqlite"}])
def test_delivered_through_the_sqlite_queue(
    app: Flask,
    events: Webhooks,
    db: SQLAlchemy,
    subscribe: t.Any,
    receiver: RecordingReceiver,
) -> None:
    from flask_webhooks.worker.consumers import stop_embedded_workers

    subscribe("user.signed_up")
    try:
        events.publish("user.signed_up", {"n": 1})
        events.publish("user.signed_up", {"n": 2})
        db.session.commit()
        got = sorted(p["data"]["n"] for p in payloads(receiver, 2))
    finally:
        stop_embedded_workers(app.extensions["webhooks"])
    assert got == [1, 2]


def test_the_index_files_webhooks_by_event_type(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, make_hook: t.Any
) -> None:
    subscribe("invoice.paid", "user.signed_up", name="both")
    subscribe("user.signed_up", name="one", enabled=False)
    make_hook(name="models")
    index = events.state.index(db.session())
    assert index.event_types == {"invoice.paid", "user.signed_up"}
    assert index.models == {"site"}
    assert [h.name for h in index.matching("", "user.signed_up")] == ["both"]
    db.session.rollback()


@pytest.mark.parametrize("config", [{"WEBHOOKS_ENABLED": False}])
def test_a_disabled_extension_publishes_nothing_but_still_checks_names(
    events: Webhooks, db: SQLAlchemy, subscribe: t.Any, receiver: RecordingReceiver
) -> None:
    subscribe("user.signed_up")
    events.publish("user.signed_up", {"n": 1})
    db.session.commit()
    assert deliveries(events, db) == []
    with pytest.raises(ValueError, match="not declared"):
        events.publish("user.signed_in", {"n": 1})
