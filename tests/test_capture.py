"""Capture semantics (DESIGN.md section 3): one event per object per committed
transaction, with its final state; delivered for real to a local receiver."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import uuid

import pytest
import sqlalchemy as sa
from flask_webhooks import BulkStatementWarning

from tests.conftest import D
from tests.conftest import Status


def events(receiver, count=None):
    """(event, model, data) of every request the receiver got, in order."""
    if count is not None:
        receiver.wait_for(count)
    return [
        (r.json()["event"], r.json()["model"], r.json()["data"])
        for r in receiver.requests
    ]


def deliveries(webhooks, db):
    D_ = webhooks.Delivery
    return db.session.scalars(sa.select(D_).order_by(D_.created_at)).all()


def test_create_sends_netbox_payload_signed(webhooks, db, models, receiver, make_hook):
    make_hook()
    site = models.Site(name="ams1", budget=D("12.50"), opened=dt.date(2026, 1, 2))
    db.session.add(site)
    db.session.commit()

    (req,) = receiver.wait_for(1)
    body = req.json()
    assert list(body) == [
        "event",
        "timestamp",
        "model",
        "username",
        "request_id",
        "data",
        "snapshots",
    ]
    assert body["event"] == "created"
    assert body["model"] == "site"
    assert body["username"] is None
    uuid.UUID(body["request_id"])
    stamp = dt.datetime.fromisoformat(body["timestamp"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert body["data"] == {
        "id": site.id,
        "name": "ams1",
        "status": "active",
        "tenant": None,
        "budget": "12.50",
        "opened": "2026-01-02",
        "tags": [],
    }
    assert body["snapshots"]["prechange"] is None
    assert body["snapshots"]["postchange"]["name"] == "ams1"
    assert body["snapshots"]["postchange"]["status"] == "active"
    expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == expected
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("flask-webhooks/")
    assert req.headers["X-Webhook-Attempt"] == "1"
    (delivery,) = deliveries(webhooks, db)
    assert req.headers["X-Webhook-ID"] == delivery.id
    assert delivery.status == "succeeded"
    assert delivery.attempts == 1
    assert delivery.object_id == str(site.id)
    assert delivery.body == req.body
    assert delivery.last_status_code == 200
    assert [a.number for a in delivery.attempt_history] == [1]


def test_no_secret_no_signature_header(webhooks, db, models, receiver, make_hook):
    make_hook(secret="")
    db.session.add(models.Site(name="a"))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert "X-Hook-Signature" not in req.headers


def test_update_has_snapshots(webhooks, db, models, receiver, make_hook):
    site = models.Site(name="old", status=Status.planned)
    db.session.add(site)
    db.session.commit()
    make_hook()
    site.name = "new"
    site.status = Status.active
    db.session.commit()
    (req,) = receiver.wait_for(1)
    body = req.json()
    assert body["event"] == "updated"
    assert body["data"]["name"] == "new"
    assert body["snapshots"]["prechange"]["name"] == "old"
    assert body["snapshots"]["prechange"]["status"] == "planned"
    assert body["snapshots"]["postchange"]["name"] == "new"


def test_delete_sends_state_before_deletion(webhooks, db, models, receiver, make_hook):
    tag = models.Tag(slug="prod")
    site = models.Site(name="gone", tags=[tag])
    db.session.add(site)
    db.session.commit()
    site_id = site.id
    make_hook()
    db.session.delete(site)
    db.session.commit()
    (req,) = receiver.wait_for(1)
    body = req.json()
    assert body["event"] == "deleted"
    assert body["data"]["id"] == site_id
    assert body["data"]["tags"] == [{"id": tag.id, "slug": "prod"}]
    assert body["snapshots"]["postchange"] is None
    assert body["snapshots"]["prechange"]["name"] == "gone"


def test_create_then_update_is_one_created(webhooks, db, models, receiver, make_hook):
    make_hook()
    site = models.Site(name="first")
    db.session.add(site)
    db.session.flush()
    site.name = "final"
    db.session.flush()
    db.session.commit()
    assert events(receiver, 1) == [("created", "site", events(receiver)[0][2])]
    assert events(receiver)[0][2]["name"] == "final"
    assert len(deliveries(webhooks, db)) == 1


def test_several_updates_one_updated_with_first_prechange(
    webhooks, db, models, receiver, make_hook
):
    site = models.Site(name="v1")
    db.session.add(site)
    db.session.commit()
    make_hook()
    site.name = "v2"
    db.session.flush()
    site.name = "v3"
    db.session.flush()
    db.session.commit()
    receiver.wait_for(1)
    (req,) = receiver.requests
    body = req.json()
    assert body["event"] == "updated"
    assert body["snapshots"]["prechange"]["name"] == "v1"
    assert body["data"]["name"] == "v3"
    assert len(deliveries(webhooks, db)) == 1


def test_update_then_delete_is_one_deleted(webhooks, db, models, receiver, make_hook):
    site = models.Site(name="v1")
    db.session.add(site)
    db.session.commit()
    make_hook()
    site.name = "v2"
    db.session.flush()
    db.session.delete(site)
    db.session.commit()
    receiver.wait_for(1)
    assert [e[0] for e in events(receiver)] == ["deleted"]
    body = receiver.requests[0].json()
    assert body["snapshots"]["prechange"]["name"] == "v1"
    assert body["data"]["name"] == "v2"


def test_create_then_delete_is_nothing(webhooks, db, models, receiver, make_hook):
    make_hook()
    site = models.Site(name="brief")
    db.session.add(site)
    db.session.flush()
    db.session.delete(site)
    db.session.commit()
    assert deliveries(webhooks, db) == []
    assert receiver.requests == []


def test_rollback_drops_events(webhooks, db, models, receiver, make_hook):
    make_hook()
    db.session.add(models.Site(name="never"))
    db.session.flush()
    db.session.rollback()
    db.session.add(models.Site(name="kept"))
    db.session.commit()
    receiver.wait_for(1)
    assert [e[2]["name"] for e in events(receiver)] == ["kept"]


def test_savepoint_rollback_drops_only_nested_work(
    webhooks, db, models, receiver, make_hook
):
    make_hook()
    db.session.add(models.Site(name="outer"))
    with db.session.begin_nested() as sp:
        db.session.add(models.Site(name="inner"))
        db.session.flush()
        sp.rollback()
    with db.session.begin_nested():
        db.session.add(models.Site(name="released"))
    db.session.commit()
    receiver.wait_for(2)
    assert sorted(e[2]["name"] for e in events(receiver)) == ["outer", "released"]
    assert len(deliveries(webhooks, db)) == 2


def test_nested_savepoints(webhooks, db, models, receiver, make_hook):
    make_hook()
    site = models.Site(name="a")
    db.session.add(site)
    db.session.commit()
    receiver.wait_for(1)
    receiver.clear()
    outer = db.session.begin_nested()
    site.name = "b"
    inner = db.session.begin_nested()
    db.session.delete(site)
    db.session.flush()
    inner.rollback()
    outer.commit()
    db.session.commit()
    receiver.wait_for(1)
    assert [(e[0], e[2]["name"]) for e in events(receiver)] == [("updated", "b")]


def test_session_closed_without_commit_drops_events(
    webhooks, db, models, receiver, make_hook
):
    make_hook()
    db.session.add(models.Site(name="abandoned"))
    db.session.flush()
    db.session.remove()
    db.session.add(models.Site(name="next"))
    db.session.commit()
    receiver.wait_for(1)
    assert [e[2]["name"] for e in events(receiver)] == ["next"]


def test_noop_update_sends_nothing(webhooks, db, models, receiver, make_hook):
    site = models.Site(name="same")
    db.session.add(site)
    db.session.commit()
    make_hook()
    site.name = "same"  # instance expired by the commit: old value is loaded
    db.session.commit()
    site.name = "other"
    site.name = "same"
    db.session.commit()
    assert deliveries(webhooks, db) == []


def test_changed_and_changed_back_sends_nothing(
    webhooks, db, models, receiver, make_hook
):
    site = models.Site(name="a")
    db.session.add(site)
    db.session.commit()
    make_hook()
    site.name = "b"
    db.session.flush()
    site.name = "a"
    db.session.commit()
    assert deliveries(webhooks, db) == []


def test_m2m_change_is_one_update_of_owner(webhooks, db, models, receiver, make_hook):
    tag = models.Tag(slug="prod")
    site = models.Site(name="s")
    db.session.add_all([tag, site])
    db.session.commit()
    make_hook(models=["site", "tag"])
    site.tags.append(tag)
    db.session.commit()
    receiver.wait_for(1)
    got = events(receiver)
    assert [(e[0], e[1]) for e in got] == [("updated", "site")]
    assert got[0][2]["tags"] == [{"id": tag.id, "slug": "prod"}]
    assert len(deliveries(webhooks, db)) == 1


def test_m2m_and_column_change_still_one_event(
    webhooks, db, models, receiver, make_hook
):
    tag = models.Tag(slug="x")
    site = models.Site(name="s")
    db.session.add_all([tag, site])
    db.session.commit()
    make_hook()
    site.name = "renamed"
    site.tags = [tag]
    db.session.commit()
    receiver.wait_for(1)
    assert [(e[0], e[2]["name"]) for e in events(receiver)] == [("updated", "renamed")]


def test_cascade_delete_emits_each_object(webhooks, db, models, receiver, make_hook):
    site = models.Site(name="s")
    site.devices = [models.Device(name="d1"), models.Device(name="d2")]
    db.session.add(site)
    db.session.commit()
    make_hook(models=["site", "device"], on_create=False, on_update=False)
    db.session.delete(site)
    db.session.commit()
    receiver.wait_for(3)
    got = sorted((e[0], e[1], e[2]["name"]) for e in events(receiver))
    assert got == [
        ("deleted", "device", "d1"),
        ("deleted", "device", "d2"),
        ("deleted", "site", "s"),
    ]


def test_delete_orphan_emits_deleted(webhooks, db, models, receiver, make_hook):
    site = models.Site(name="s", devices=[models.Device(name="d1")])
    db.session.add(site)
    db.session.commit()
    make_hook(models=["device"])
    site.devices.clear()
    db.session.commit()
    receiver.wait_for(1)
    assert [(e[0], e[1], e[2]["name"]) for e in events(receiver)] == [
        ("deleted", "device", "d1")
    ]


def test_auto_schema_dumps_fk_and_uuid(webhooks, db, models, receiver, make_hook):
    make_hook(models=["device"])
    site = models.Site(name="s")
    uid = uuid.uuid4()
    device = models.Device(name="d", site=site, uid=uid)
    db.session.add(device)
    db.session.commit()
    receiver.wait_for(1)
    data = receiver.requests[0].json()["data"]
    assert data["name"] == "d"
    assert data["site"] == site.id
    assert data["uid"] == str(uid)


def test_model_and_event_filters(webhooks, db, models, receiver, make_hook):
    make_hook(models=["device"])  # not sites
    make_hook(on_create=False, on_update=True, on_delete=False)
    site = models.Site(name="s")
    db.session.add(site)
    db.session.commit()
    assert deliveries(webhooks, db) == []
    site.name = "t"
    db.session.commit()
    receiver.wait_for(1)
    assert [e[0] for e in events(receiver)] == ["updated"]


def test_disabled_webhook_gets_nothing(webhooks, db, models, receiver, make_hook):
    make_hook(enabled=False)
    db.session.add(models.Site(name="s"))
    db.session.commit()
    assert deliveries(webhooks, db) == []


def test_fan_out_reuses_the_same_body(webhooks, db, models, receiver, make_hook):
    for _ in range(3):
        make_hook()
    db.session.add(models.Site(name="s"))
    db.session.commit()
    reqs = receiver.wait_for(3)
    assert len({r.body for r in reqs}) == 1
    assert len({r.headers["X-Webhook-ID"] for r in reqs}) == 3


def test_schema_error_keeps_user_data(webhooks, db, models, receiver, make_hook):
    class Boom(Exception):
        pass

    reg = webhooks.registration("site")

    def explode(obj):
        raise Boom("no dumping today")

    reg.dump = explode  # type: ignore[method-assign]
    make_hook()
    db.session.add(models.Site(name="precious"))
    db.session.commit()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(models.Site)) == 1
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "failed"
    assert "no dumping today" in delivery.last_error
    assert receiver.requests == []


def test_extension_tables_are_never_captured(webhooks, db, models, receiver, make_hook):
    hook = make_hook(models=["site", "tag", "device", "tenant"])
    hook.name = "renamed"
    db.session.commit()
    db.session.add(models.Tenant(name="t"))
    db.session.commit()
    receiver.wait_for(1)
    assert {d.model for d in deliveries(webhooks, db)} == {"tenant"}


def test_disabled_extension_captures_nothing(app, webhooks, db, models, make_hook):
    make_hook()
    state = app.extensions["webhooks"]
    state.config = dataclasses.replace(state.config, enabled=False)
    db.session.add(models.Site(name="s"))
    db.session.commit()
    assert deliveries(webhooks, db) == []


def test_unsubscribed_model_no_rows(webhooks, db, models, receiver, make_hook):
    make_hook(models=["tenant"])
    db.session.add(models.Site(name="s"))
    db.session.commit()
    assert deliveries(webhooks, db) == []


def test_request_id_from_header_and_username_getter(
    app, webhooks, db, models, receiver, make_hook
):
    make_hook()
    state = app.extensions["webhooks"]
    state.config = dataclasses.replace(state.config, username_getter=lambda: "alice")
    rid = "43d8e212-94c7-4f67-b544-0dcde4fc0f43"
    with app.test_request_context(headers={"X-Request-ID": rid}):
        db.session.add(models.Site(name="a"))
        db.session.add(models.Site(name="b"))
        db.session.commit()
    reqs = receiver.wait_for(2)
    assert {r.json()["request_id"] for r in reqs} == {rid}
    assert {r.json()["username"] for r in reqs} == {"alice"}


def test_invalid_request_id_header_is_replaced(
    app, webhooks, db, models, receiver, make_hook
):
    make_hook()
    with app.test_request_context(headers={"X-Request-ID": "not-a-uuid <script>"}):
        db.session.add(models.Site(name="a"))
        db.session.commit()
    (req,) = receiver.wait_for(1)
    rid = req.json()["request_id"]
    assert rid != "not-a-uuid"
    uuid.UUID(rid)


def test_each_transaction_outside_requests_gets_its_own_request_id(
    webhooks, db, models, receiver, make_hook
):
    make_hook()
    db.session.add(models.Site(name="a"))
    db.session.commit()
    db.session.add(models.Site(name="b"))
    db.session.commit()
    reqs = receiver.wait_for(2)
    assert len({r.json()["request_id"] for r in reqs}) == 2


def test_bulk_insert_warns(webhooks, db, models, make_hook):
    make_hook()
    with pytest.warns(BulkStatementWarning, match="site"):
        db.session.execute(sa.insert(models.Site), [{"name": "a"}, {"name": "b"}])
    db.session.commit()


def test_bulk_update_is_captured(webhooks, db, models, receiver, make_hook):
    db.session.add_all(
        [models.Site(name="a"), models.Site(name="b"), models.Site(name="c")]
    )
    db.session.commit()
    make_hook()
    db.session.execute(
        sa.update(models.Site).where(models.Site.name != "c").values(name="renamed")
    )
    db.session.commit()
    reqs = receiver.wait_for(2)
    bodies = sorted((r.json() for r in reqs), key=lambda b: b["data"]["id"])
    assert [b["event"] for b in bodies] == ["updated", "updated"]
    assert [b["snapshots"]["prechange"]["name"] for b in bodies] == ["a", "b"]
    assert [b["data"]["name"] for b in bodies] == ["renamed", "renamed"]
    assert len(deliveries(webhooks, db)) == 2


def test_bulk_update_by_primary_key_is_captured(
    webhooks, db, models, receiver, make_hook
):
    sites = [models.Site(name="a"), models.Site(name="b")]
    db.session.add_all(sites)
    db.session.commit()
    ids = [s.id for s in sites]
    make_hook()
    db.session.execute(
        sa.update(models.Site),
        [{"id": ids[0], "name": "x"}, {"id": ids[1], "name": "b"}],
    )
    db.session.commit()
    # The second row was set to its own value: no change, no event.
    (req,) = receiver.wait_for(1)
    assert req.json()["data"] == {**req.json()["data"], "id": ids[0], "name": "x"}


def test_bulk_delete_is_captured_with_data(webhooks, db, models, receiver, make_hook):
    db.session.add_all([models.Site(name="a"), models.Site(name="b")])
    db.session.commit()
    make_hook()
    db.session.execute(sa.delete(models.Site).where(models.Site.name == "a"))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    body = req.json()
    assert body["event"] == "deleted"
    assert body["data"]["name"] == "a"
    assert body["snapshots"]["prechange"]["name"] == "a"
    assert db.session.scalar(sa.select(sa.func.count()).select_from(models.Site)) == 1


def test_bulk_update_rolled_back_sends_nothing(
    webhooks, db, models, receiver, make_hook
):
    db.session.add(models.Site(name="a"))
    db.session.commit()
    make_hook()
    db.session.execute(sa.update(models.Site).values(name="b"))
    db.session.rollback()
    assert deliveries(webhooks, db) == []


def test_decimal_uuid_date_enum_bytes_are_json_safe():
    from flask_webhooks.payload import dumps

    value = {
        "d": D("1.10"),
        "u": uuid.UUID(int=1),
        "t": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 1),
        "e": Status.active,
        "b": b"\x00\xff",
        "s": {2, 1},
    }
    assert json.loads(dumps(value)) == {
        "d": "1.10",
        "u": "00000000-0000-0000-0000-000000000001",
        "t": "2026-01-01T00:00:00+00:00",
        "day": "2026-01-01",
        "e": "active",
        "b": "AP8=",
        "s": [1, 2],
    }
