"""Webhook configuration end to end (issue 4): conditions at capture time,
HTTP methods, content types (form encoding), TLS options and timeouts, each
through a real commit, the delivery engine and the local receiver."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from urllib.parse import parse_qs

import pytest
import sqlalchemy as sa
from flask_webhooks.signing import generate_secret
from flask_webhooks.testing import Answer
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import D
from tests.conftest import Status


def deliveries(webhooks, db):
    D_ = webhooks.Delivery
    return db.session.scalars(sa.select(D_).order_by(D_.created_at, D_.object_id)).all()


def site_values(**fields):
    values = dict(name="ams1", status=Status.active, budget=D("10.00"))
    values.update(fields)
    return values


# -- conditions, evaluated at capture time -------------------------------------

#: op -> (conditions, fields of the site that matches, of the one that does not)
CREATE_CASES = {
    "eq": (
        {"attr": "status", "value": "active"},
        {"status": Status.active},
        {"status": Status.planned},
    ),
    "gt": (
        {"attr": "budget", "op": "gt", "value": 100},
        {"budget": D("100.01")},
        {"budget": D("100.00")},
    ),
    "gte": (
        {"attr": "budget", "op": "gte", "value": 100},
        {"budget": D("100.00")},
        {"budget": D("99.99")},
    ),
    "lt": (
        {"attr": "budget", "op": "lt", "value": 100},
        {"budget": D("99.99")},
        {"budget": D("100.00")},
    ),
    "lte": (
        {"attr": "budget", "op": "lte", "value": 100.5},
        {"budget": D("100.50")},
        {"budget": D("100.51")},
    ),
    "in": (
        {"attr": "name", "op": "in", "value": ["ams1", "ams2"]},
        {"name": "ams2"},
        {"name": "ams3"},
    ),
    "contains": (
        {"attr": "tags.slug", "op": "contains", "value": "prod"},
        {"tags": ["dev", "prod"]},
        {"tags": ["dev"]},
    ),
    "regex": (
        {"attr": "name", "op": "regex", "value": r"ams\d$"},
        {"name": "ams7"},
        {"name": "xams7"},  # anchored at the start, like re.match
    ),
    "negate": (
        {"attr": "status", "value": "active", "negate": True},
        {"status": Status.retired},
        {"status": Status.active},
    ),
    "null": (
        {"attr": "tenant", "value": None},
        {},
        {"tenant": "acme"},
    ),
    "nested-and-or": (
        {
            "or": [
                {
                    "and": [
                        {"attr": "status", "value": "active"},
                        {"attr": "budget", "op": "gte", "value": 50},
                    ]
                },
                {"attr": "name", "value": "vip"},
            ]
        },
        {"budget": D("50")},
        {"budget": D("49")},
    ),
    "snapshot-path": (
        {"attr": "snapshots.postchange.budget", "op": "gt", "value": 20},
        {"budget": D("20.01")},
        {"budget": D("20.00")},
    ),
    "missing-attribute": (
        {"or": [{"attr": "nonexistent", "value": 1}, {"attr": "name", "value": "a"}]},
        {"name": "a"},
        {"name": "b"},
    ),
}


def build_site(models, db, fields):
    fields = dict(fields)
    tags = fields.pop("tags", [])
    tenant = fields.pop("tenant", None)
    site = models.Site(**site_values(**fields))
    site.tags = [models.Tag(slug=slug) for slug in tags]
    if tenant is not None:
        site.tenant = models.Tenant(name=tenant)
    return site


@pytest.mark.parametrize("case", CREATE_CASES.values(), ids=CREATE_CASES.keys())
def test_conditions_on_create(webhooks, db, models, receiver, make_hook, case):
    conditions, match_fields, other_fields = case
    make_hook(on_update=False, on_delete=False, conditions=conditions)
    match = build_site(models, db, {"name": "ams1", **match_fields})
    other = build_site(models, db, {"name": "ams1", **other_fields})
    db.session.add_all([match, other])
    db.session.commit()

    (delivery,) = deliveries(webhooks, db)  # no row for the other site
    assert delivery.object_id == str(match.id)
    (req,) = receiver.wait_for(1)
    assert req.json()["data"]["id"] == match.id
    assert delivery.status == "succeeded"
    assert db.session.scalar(sa.select(sa.func.count(models.Site.id))) == 2


def test_conditions_snapshot_path_compares_json_values(
    webhooks, db, models, receiver, make_hook
):
    make_hook(conditions={"attr": "snapshots.postchange.status", "value": "active"})
    site = models.Site(**site_values())
    db.session.add(site)
    db.session.commit()
    assert len(deliveries(webhooks, db)) == 1
    (req,) = receiver.wait_for(1)
    assert req.json()["snapshots"]["postchange"]["status"] == "active"


#: op -> (conditions, change that matches, change that does not)
UPDATE_CASES = {
    "changed": (
        {"attr": "name", "op": "changed"},
        {"name": "renamed"},
        {"budget": D("99")},
    ),
    "unchanged": (
        {"attr": "name", "op": "unchanged"},
        {"budget": D("99")},
        {"name": "renamed"},
    ),
    "changed-negated": (
        {"attr": "budget", "op": "changed", "negate": True},
        {"status": Status.retired},
        {"budget": D("11")},
    ),
    "prechange-value": (
        {
            "and": [
                {"attr": "snapshots.prechange.budget", "op": "lt", "value": 50},
                {"attr": "budget", "op": "gte", "value": 50},
            ]
        },
        {"budget": D("75")},
        {"budget": D("25")},
    ),
}


@pytest.mark.parametrize("case", UPDATE_CASES.values(), ids=UPDATE_CASES.keys())
def test_conditions_on_real_updates(webhooks, db, models, receiver, make_hook, case):
    conditions, match_change, other_change = case
    match = models.Site(**site_values(name="a"))
    other = models.Site(**site_values(name="b"))
    db.session.add_all([match, other])
    db.session.commit()
    make_hook(on_create=False, on_delete=False, conditions=conditions)
    for site, change in ((match, match_change), (other, other_change)):
        for key, value in change.items():
            setattr(site, key, value)
    db.session.commit()

    (delivery,) = deliveries(webhooks, db)
    assert delivery.event == "updated"
    assert delivery.object_id == str(match.id)
    (req,) = receiver.wait_for(1)
    body = req.json()
    assert body["data"]["id"] == match.id


def test_changed_ignores_a_write_of_the_same_value(
    webhooks, db, models, receiver, make_hook
):
    site = models.Site(**site_values())
    db.session.add(site)
    db.session.commit()
    make_hook(on_create=False, conditions={"attr": "name", "op": "changed"})
    site.name = "ams1"  # same value: no change, no event
    site.budget = D("10.00")
    db.session.commit()
    site.tags.append(models.Tag(slug="prod"))  # an update, but name unchanged
    db.session.commit()
    assert deliveries(webhooks, db) == []
    site.name = "ams2"
    db.session.commit()
    (delivery,) = deliveries(webhooks, db)
    assert delivery.event == "updated"


def test_conditions_on_delete_see_the_last_state(
    webhooks, db, models, receiver, make_hook
):
    keep = models.Site(**site_values(name="keep", status=Status.planned))
    gone = models.Site(**site_values(name="gone", status=Status.retired))
    db.session.add_all([keep, gone])
    db.session.commit()
    gone_id = gone.id
    make_hook(
        on_create=False,
        on_update=False,
        conditions={"attr": "status", "value": "retired"},
    )
    db.session.delete(keep)
    db.session.delete(gone)
    db.session.commit()
    (delivery,) = deliveries(webhooks, db)
    assert (delivery.event, delivery.object_id) == ("deleted", str(gone_id))


def test_conditions_changed_on_a_saved_webhook_apply_to_the_next_commit(
    webhooks, db, models, receiver, make_hook
):
    hook = make_hook(conditions={"attr": "name", "value": "first"})
    db.session.add(models.Site(**site_values(name="second")))
    db.session.commit()
    assert deliveries(webhooks, db) == []
    hook.conditions = {"attr": "name", "value": "second"}
    db.session.commit()
    db.session.add(models.Site(**site_values(name="second")))
    db.session.commit()
    assert len(deliveries(webhooks, db)) == 1
    hook.conditions = None
    db.session.commit()
    db.session.add(models.Site(**site_values(name="third")))
    db.session.commit()
    assert len(deliveries(webhooks, db)) == 2


# -- HTTP methods ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_http_methods_arrive_as_such(webhooks, db, models, receiver, make_hook, method):
    make_hook(http_method=method)
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.method == method
    assert req.json()["event"] == "created"
    (delivery,) = deliveries(webhooks, db)
    assert delivery.request_method == method
    assert delivery.body == req.body
    assert delivery.status == "succeeded"


# -- content types ---------------------------------------------------------------


def test_form_encoded_payload_is_parsed_by_the_receiver(
    webhooks, db, models, receiver, make_hook
):
    make_hook(http_content_type="application/x-www-form-urlencoded")
    site = models.Site(**site_values(name="a&b=c d+é%"))
    db.session.add(site)
    db.session.commit()

    (req,) = receiver.wait_for(1)
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    fields = parse_qs(
        req.body.decode("ascii"), keep_blank_values=True, strict_parsing=True
    )
    assert list(fields) == [
        "event",
        "timestamp",
        "model",
        "username",
        "request_id",
        "data",
        "snapshots",
    ]
    assert all(len(values) == 1 for values in fields.values())
    assert fields["event"] == ["created"]
    assert fields["model"] == ["site"]
    assert fields["username"] == [""]  # null
    dt.datetime.fromisoformat(fields["timestamp"][0])
    data = json.loads(fields["data"][0])
    assert data["name"] == "a&b=c d+é%"
    assert data["id"] == site.id
    assert data["budget"] == "10.00"
    snapshots = json.loads(fields["snapshots"][0])
    assert snapshots["prechange"] is None
    assert snapshots["postchange"]["name"] == "a&b=c d+é%"
    # Signed like any body: over the exact form bytes.
    expected = hmac.new(b"s3cret", req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == expected
    (delivery,) = deliveries(webhooks, db)
    assert delivery.body == req.body
    assert delivery.status == "succeeded"


def test_form_encoded_update_with_charset_and_header_templates(
    webhooks, db, models, receiver, make_hook
):
    site = models.Site(**site_values())
    db.session.add(site)
    db.session.commit()
    make_hook(
        http_content_type="application/x-www-form-urlencoded; charset=utf-8",
        additional_headers="X-Name: {{ data.name }}",
    )
    site.name = "ams2"
    db.session.commit()
    (req,) = receiver.wait_for(1)
    fields = parse_qs(req.body.decode("ascii"), keep_blank_values=True)
    assert fields["event"] == ["updated"]
    snapshots = json.loads(fields["snapshots"][0])
    assert snapshots["prechange"]["name"] == "ams1"
    assert snapshots["postchange"]["name"] == "ams2"
    assert req.headers["X-Name"] == "ams2"
    assert req.headers["Content-Type"] == (
        "application/x-www-form-urlencoded; charset=utf-8"
    )


def test_json_is_the_default_content_type(webhooks, db, models, receiver, make_hook):
    hook = make_hook()
    assert hook.http_content_type == "application/json"
    assert hook.http_method == "POST"
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.headers["Content-Type"] == "application/json"
    assert req.json()["model"] == "site"


def test_other_content_type_sends_the_default_body_as_is(
    webhooks, db, models, receiver, make_hook
):
    make_hook(name="plain", http_content_type="text/plain")
    make_hook(name="json")
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    first, second = receiver.wait_for(2)
    by_type = {r.headers["Content-Type"]: r.body for r in (first, second)}
    assert set(by_type) == {"text/plain", "application/json"}
    assert by_type["text/plain"] == by_type["application/json"]


@pytest.mark.parametrize(
    "content_type",
    ["application/xml", "application/x-www-form-urlencoded", "application/json"],
)
def test_template_body_is_sent_as_rendered_for_any_type(
    webhooks, db, models, receiver, make_hook, content_type
):
    make_hook(
        http_content_type=content_type,
        body_template="<site id='{{ data.id }}'>{{ data.name }}</site>",
    )
    site = models.Site(**site_values())
    db.session.add(site)
    db.session.commit()
    (req,) = receiver.wait_for(1)
    assert req.headers["Content-Type"] == content_type
    assert req.body == f"<site id='{site.id}'>ams1</site>".encode()


# -- signatures ------------------------------------------------------------------


def test_both_signature_schemes(webhooks, db, models, receiver, make_hook):
    secret = generate_secret()
    make_hook(secret=secret, signature_scheme="both")
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (req,) = receiver.wait_for(1)
    netbox = hmac.new(secret.encode(), req.body, hashlib.sha512).hexdigest()
    assert req.headers["X-Hook-Signature"] == netbox
    headers = {k.lower(): v for k, v in req.headers.items()}
    StandardWebhook(secret).verify(req.body, headers)  # raises if invalid
    assert headers["webhook-id"] == deliveries(webhooks, db)[0].id


# -- TLS -------------------------------------------------------------------------


def test_tls_with_ca_file(webhooks, db, models, make_hook, tls_receiver):
    r, ca_path = tls_receiver
    make_hook(payload_url=r.url, ca_file_path=ca_path)
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (req,) = r.wait_for(1)
    assert req.json()["event"] == "created"
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "succeeded"


def test_tls_unknown_ca_is_refused(webhooks, db, models, make_hook, tls_receiver):
    r, _ = tls_receiver
    make_hook(payload_url=r.url)
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "retrying"  # a certificate may be fixed: retried
    assert delivery.last_error.startswith("TLS error: ")
    assert "certificate" in delivery.last_error
    assert r.requests == []


def test_tls_verification_off(webhooks, db, models, make_hook, tls_receiver):
    r, _ = tls_receiver
    make_hook(payload_url=r.url, ssl_verification=False)
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    assert len(r.wait_for(1)) == 1
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "succeeded"


def test_tls_ca_file_removed_after_saving(
    webhooks, db, models, make_hook, tls_receiver
):
    r, ca_path = tls_receiver
    make_hook(payload_url=r.url, ca_file_path=ca_path)
    os.remove(ca_path)
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    (delivery,) = deliveries(webhooks, db)
    assert delivery.status == "retrying"
    assert delivery.last_error == f"TLS error: CA bundle not found: {ca_path}"
    assert r.requests == []


# -- timeouts ----------------------------------------------------------------------


def test_per_webhook_timeout_overrides_the_default(
    webhooks, db, models, receiver, make_hook
):
    # WEBHOOKS_TIMEOUT is 5 s in these tests; the receiver answers after 2 s.
    make_hook(name="impatient", timeout=0.5)
    make_hook(name="default")
    receiver.respond(Answer(delay=2), Answer(delay=2))
    db.session.add(models.Site(**site_values()))
    db.session.commit()
    by_name = {d.webhook_name: d for d in deliveries(webhooks, db)}
    assert by_name["impatient"].status == "retrying"
    assert by_name["impatient"].last_error == "read timed out after 0.5 s"
    assert by_name["default"].status == "succeeded"


# -- what assigning other types does --------------------------------------------------


def test_json_string_conditions_and_comma_string_models_are_refused(
    webhooks, db, make_hook
):
    from flask_webhooks import WebhookValidationError

    rule = {"attr": "status", "value": "active"}
    with pytest.raises(WebhookValidationError) as info:
        make_hook(conditions=json.dumps(rule), models="site,device")
    db.session.rollback()
    assert set(info.value.errors) == {"conditions", "models"}
    assert db.session.scalar(sa.select(sa.func.count(webhooks.Webhook.id))) == 0
    # The parsed values are what to assign.
    hook = make_hook(conditions=json.loads(json.dumps(rule)), models=["site", "device"])
    db.session.expire_all()
    assert hook.conditions == rule
    raw = db.session.execute(
        sa.text("SELECT conditions FROM webhooks_webhook")
    ).scalar_one()
    stored = json.loads(raw) if isinstance(raw, str) else raw  # SQLite: text
    assert stored == rule  # a JSON object, not a JSON string
