"""Template preview (dry run): the library function and ``flask webhooks preview``."""

from __future__ import annotations

import json
import typing as t

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from flask_webhooks import models as m
from flask_webhooks.preview import delivery_envelope
from flask_webhooks.preview import hook_values
from flask_webhooks.preview import object_envelope
from flask_webhooks.preview import preview
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import verify
from flask_webhooks.testing import RecordingReceiver
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import D

CLI = t.Callable[..., Result]


@pytest.fixture
def cli(app: Flask, webhooks: t.Any) -> CLI:
    runner = app.test_cli_runner()

    def run(*args: str, input: str | None = None) -> Result:
        return runner.invoke(args=["webhooks", *args], input=input)

    return run


@pytest.fixture
def site(db: t.Any, models: t.Any) -> t.Any:
    tag = models.Tag(slug="prod")
    site = models.Site(name="Berlin", budget=D("12.50"), tags=[tag])
    db.session.add(site)
    db.session.commit()
    return site


def test_preview_renders_templates_and_signs_without_sending(
    webhooks: t.Any,
    db: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
    site: t.Any,
) -> None:
    hook = make_hook(
        payload_url=receiver.url + "/sites/{{ data.id }}",
        additional_headers="X-Site: {{ data.name }}",
        body_template='{"name": {{ data.name|tojson }}, "tags": {{ data.tags|map(attribute="slug")|list|tojson }}}',
        conditions={"attr": "tags.slug", "op": "contains", "value": "prod"},
    )
    before = db.session.scalar(
        sa.select(sa.func.count()).select_from(webhooks.Delivery)
    )
    payload = object_envelope(webhooks.state, "site", str(site.id))
    result = preview(webhooks.state, hook, payload, source=f"site {site.id}")
    assert result.errors == {}
    assert result.fires and result.listens and result.conditions_match
    assert result.url == f"{receiver.url}/sites/{site.id}"
    assert result.headers["X-Site"] == "Berlin"
    assert json.loads(result.body) == {"name": "Berlin", "tags": ["prod"]}
    # The signature is the one the sender computes; the secret is not shown.
    assert verify("s3cret", result.body, result.headers["X-Hook-Signature"])
    assert "s3cret" not in json.dumps(result.as_dict())
    assert receiver.requests == []
    after = db.session.scalar(sa.select(sa.func.count()).select_from(webhooks.Delivery))
    assert after == before


def test_preview_shows_each_error_beside_its_field(
    webhooks: t.Any, make_hook: t.Any, site: t.Any
) -> None:
    hook = hook_values(make_hook())
    hook.body_template = "{{ data.name.nope() }}"
    hook.additional_headers = "X-Bad: {{ data.name ~ '\\n' }}"
    hook.payload_url = "{{ data.name }}"
    hook.conditions = {"attr": "name", "op": "bogus", "value": 1}
    result = preview(
        webhooks.state, hook, object_envelope(webhooks.state, "site", str(site.id))
    )
    assert set(result.errors) == {
        "body_template",
        "additional_headers",
        "payload_url",
        "conditions",
    }
    assert "Berlin" in result.errors["payload_url"]
    assert "bogus" in result.errors["conditions"]
    assert not result.fires
    # What could be built still is: method and the delivery headers.
    assert result.headers["User-Agent"].startswith("flask-webhooks/")


def test_conditions_verdict_and_events(
    webhooks: t.Any, make_hook: t.Any, site: t.Any
) -> None:
    state = webhooks.state
    hook = make_hook(
        conditions={"attr": "name", "value": "Paris"}, on_update=False, models=["site"]
    )
    payload = object_envelope(state, "site", str(site.id), event="created")
    result = preview(state, hook, payload)
    assert result.listens is True and result.conditions_match is False
    assert not result.fires
    updated = preview(state, hook, object_envelope(state, "site", str(site.id)))
    assert updated.listens is False
    missing = hook_values(hook)
    missing.conditions = {"attr": "nothing.here", "value": 1}
    noted = preview(state, missing, payload)
    assert any("nothing.here" in n for n in noted.notes)


def test_standard_signature_of_a_stored_delivery(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    secret = generate_secret()
    hook = make_hook(secret=secret, signature_scheme="standard")
    db.session.add(models.Site(name="Oslo"))
    db.session.commit()
    (sent,) = receiver.wait_for(1)
    delivery_id = db.session.scalar(sa.select(webhooks.Delivery.id))
    payload = delivery_envelope(webhooks.state, delivery_id)
    result = preview(webhooks.state, hook, payload, delivery_id=delivery_id)
    assert result.body == sent.body
    assert result.headers["X-Webhook-ID"] == delivery_id
    StandardWebhook(secret).verify(result.body, result.headers)
    wrong = hook_values(hook)
    wrong.secret = "not-whsec"
    broken = preview(webhooks.state, wrong, payload, delivery_id=delivery_id)
    assert "Standard Webhooks secret" in broken.errors["secret"]
    assert "webhook-signature" not in broken.headers


def test_app_event_envelopes_preview_too(webhooks: t.Any, make_hook: t.Any) -> None:
    hook = make_hook(body_template="paid {{ data.total }}")
    payload = {"event": "invoice.paid", "model": None, "data": {"total": 120}}
    result = preview(webhooks.state, hook, payload)
    assert result.body == b"paid 120"
    assert result.listens is None and result.fires
    assert any("not a model event" in n for n in result.notes)


def test_lookup_errors_name_the_problem(webhooks: t.Any, site: t.Any) -> None:
    state = webhooks.state
    with pytest.raises(LookupError, match="'planet' is not registered"):
        object_envelope(state, "planet", "1")
    with pytest.raises(LookupError, match="no site with id 999"):
        object_envelope(state, "site", "999")
    with pytest.raises(LookupError, match="no delivery with id"):
        delivery_envelope(state, "nope")


# -- flask webhooks preview ------------------------------------------------------


def test_cli_preview_of_an_object(
    cli: CLI, make_hook: t.Any, site: t.Any, receiver: RecordingReceiver
) -> None:
    make_hook(name="crm", additional_headers="X-Site: {{ data.name }}")
    result = cli("preview", "crm", "--model", "site", "--id", str(site.id))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"for site {site.id}; nothing is sent" in out
    assert "Fires for site/updated: yes" in out
    assert f"POST {receiver.url}" in out
    assert "X-Site: Berlin" in out
    assert "X-Hook-Signature: " in out
    assert "s3cret" not in out
    assert '"event":"updated"' in out
    assert receiver.requests == []

    as_json = cli("preview", "crm", "--model", "site", "--id", str(site.id), "--json")
    data = json.loads(as_json.output)
    assert data["fires"] is True and data["headers"]["X-Site"] == "Berlin"


def test_cli_preview_of_the_newest_delivery_and_errors(
    cli: CLI, webhooks: t.Any, db: t.Any, models: t.Any, make_hook: t.Any
) -> None:
    hook = make_hook(name="crm")
    none_yet = cli("preview", "crm")
    assert none_yet.exit_code == 2 and "has no delivery yet" in none_yet.output
    db.session.add(models.Site(name="Rome"))
    db.session.commit()
    newest = cli("preview", "crm")
    assert newest.exit_code == 0, newest.output
    assert "for delivery " in newest.output and '"name":"Rome"' in newest.output

    hook.body_template = "{{ data.name.nope() }}"
    db.session.commit()
    broken = cli("preview", "crm")
    assert broken.exit_code == 1
    assert "error in body_template:" in broken.output

    assert cli("preview", "nope").exit_code == 1
    assert cli("preview", "crm", "--model", "site").exit_code == 2
    assert (
        "no site with id 404"
        in cli("preview", "crm", "--model", "site", "--id", "404").output
    )
    both = cli("preview", "crm", "--model", "site", "--id", "1", "--delivery", "x")
    assert both.exit_code == 2


def test_cli_preview_of_a_deleted_event(
    cli: CLI, make_hook: t.Any, site: t.Any
) -> None:
    make_hook(name="crm", on_update=False, on_create=False)
    result = cli("preview", "crm", "--model", "site", "--id", str(site.id), "--json")
    data = json.loads(result.output)
    assert data["event"] == m.DELETED
    body = json.loads(data["body"])
    assert body["snapshots"]["postchange"] is None
    assert body["snapshots"]["prechange"]["name"] == "Berlin"
