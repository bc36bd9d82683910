"""App events in the admin screens (test client) and in the CLI."""

from __future__ import annotations

import json
import re
import typing as t

import marshmallow as ma
import pytest
from click.testing import Result
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.testing import RecordingReceiver

from tests.test_admin import Browser
from tests.test_admin import by_id
from tests.test_admin import form_data
from tests.test_admin import Rows


class InvoicePaid(ma.Schema):
    id = ma.fields.Integer(metadata={"description": "the invoice number"})
    total = ma.fields.Decimal()
    paid_at = ma.fields.AwareDateTime(data_key="paidAt")


@pytest.fixture
def events(webhooks: Webhooks) -> Webhooks:
    webhooks.event_type(
        "invoice.paid", description="An invoice was paid", schema=InvoicePaid
    )
    webhooks.event_type("user.signed_up", description="Someone signed up")
    return webhooks


@pytest.fixture
def browser(app: Flask, db: SQLAlchemy, events: Webhooks) -> Browser:
    admin = Admin(app, name="Test", theme=Bootstrap4Theme())
    events.init_admin(admin)
    return Browser(app, db)


@pytest.fixture
def rows(db: SQLAlchemy, events: Webhooks) -> Rows:
    return Rows(db, events)


def hook(
    events: Webhooks, db: SQLAlchemy, receiver: RecordingReceiver, **f: t.Any
) -> int:
    values: dict[str, t.Any] = {"payload_url": receiver.url, **f}
    row = events.Webhook(**values)
    db.session.add(row)
    db.session.commit()
    ident = int(row.id)
    db.session.remove()
    return ident


# -- admin -------------------------------------------------------------------------


def test_the_form_offers_declared_event_types_with_descriptions(
    browser: Browser,
) -> None:
    page = browser.page("/admin/webhooks/new/")
    select = page[page.index('id="event_types"') :]
    select = select[: select.index("</select>")]
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', select)
    assert options == [
        ("invoice.paid", "invoice.paid \u2014 An invoice was paid"),
        ("user.signed_up", "user.signed_up \u2014 Someone signed up"),
    ]


def test_an_event_type_only_webhook_made_in_the_form_gets_published_events(
    browser: Browser,
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    token = browser.token("/admin/webhooks/new/")
    response = browser.post(
        "/admin/webhooks/new/",
        data=form_data(
            token,
            name="billing",
            models=None,
            on_create=None,
            on_update=None,
            event_types=["invoice.paid"],
            payload_url=receiver.url,
        ),
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    saved = rows.hook("billing")
    assert (saved.models, saved.event_types) == ([], ["invoice.paid"])

    events.publish("invoice.paid", {"id": 4, "total": "10"}, object_id=4)
    db.session.commit()
    (request,) = receiver.wait_for(1)
    assert request.json()["event"] == "invoice.paid"

    listing = browser.page("/admin/webhooks/")
    row = listing[listing.index('class="wh-name">billing') :]
    assert ">invoice.paid<" in row[: row.index("</tr>")]
    log = browser.page("/admin/webhooks/deliveries/?flt0_event_equals=invoice.paid")
    assert len(set(re.findall(r"details/\?id=([0-9a-f-]{36})", log))) == 1
    assert 'value="invoice.paid"' in log  # offered by the Event filter


def test_a_webhook_with_no_model_and_no_event_type_is_refused_beside_the_field(
    browser: Browser, rows: Rows
) -> None:
    token = browser.token("/admin/webhooks/new/")
    response = browser.post(
        "/admin/webhooks/new/",
        data=form_data(token, name="empty", models=None, event_types=None),
    )
    assert response.status_code == 200
    ids = by_id(response.get_data(as_text=True))
    assert "or an app event type" in ids["models-error"]
    assert rows.hook("empty") is None


def test_webhooks_filter_by_event_type(
    browser: Browser,
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
) -> None:
    hook(events, db, receiver, name="billing", event_types=["invoice.paid"])
    hook(events, db, receiver, name="growth", event_types=["user.signed_up"])
    page = browser.page("/admin/webhooks/?flt0_app_event_type_includes=invoice.paid")
    assert re.findall(r'class="wh-name">([^<]+)<', page) == ["billing"]


def test_the_event_types_page_is_the_catalog(
    browser: Browser,
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
) -> None:
    hook(events, db, receiver, name="billing", event_types=["invoice.paid"])
    page = browser.page("/admin/webhooks/event-types/")
    card = page[page.index('id="event-invoice.paid"') :]
    card = card[: card.index('id="event-user.signed_up"')]
    assert "An invoice was paid" in card
    assert ">billing<" in card
    schema_text = re.search(
        r'<pre class="wh-code wh-event-schema">(.*?)</pre>', card, re.S
    )
    assert schema_text is not None
    schema = json.loads(schema_text.group(1).replace("&#34;", '"'))
    assert schema["properties"]["paidAt"] == {"type": "string", "format": "date-time"}
    assert schema["properties"]["id"]["description"] == "the invoice number"
    assert "flt0_event_equals=invoice.paid" in card
    other = page[page.index('id="event-user.signed_up"') :]
    assert "No schema declared" in other


# -- CLI ---------------------------------------------------------------------------


@pytest.fixture
def cli(app: Flask, events: Webhooks) -> t.Callable[..., Result]:
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["webhooks", *args])


def test_events_command_lists_declared_types(
    cli: t.Callable[..., Result],
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
) -> None:
    hook(events, db, receiver, name="billing", event_types=["invoice.paid"])
    result = cli("events")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "WEBHOOKS", "SCHEMA", "DESCRIPTION"]
    assert lines[1].split() == [
        "invoice.paid",
        "1",
        "yes",
        "An",
        "invoice",
        "was",
        "paid",
    ]
    assert lines[2].split() == ["user.signed_up", "0", "-", "Someone", "signed", "up"]

    detail = cli("events", "invoice.paid")
    assert detail.exit_code == 0, detail.output
    assert "enabled webhooks: billing" in detail.output
    assert '"paidAt"' in detail.output

    as_json = json.loads(cli("events", "--json").output)
    assert [e["name"] for e in as_json] == ["invoice.paid", "user.signed_up"]
    assert as_json[0]["webhooks"] == ["billing"]
    assert as_json[1]["schema"] is None

    unknown = cli("events", "invoice.payed")
    assert unknown.exit_code == 1
    assert "declared: invoice.paid, user.signed_up" in unknown.output


def test_list_command_shows_event_types(
    cli: t.Callable[..., Result],
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
) -> None:
    hook(
        events,
        db,
        receiver,
        name="billing",
        event_types=["invoice.paid", "user.signed_up"],
    )
    result = cli("list")
    assert result.exit_code == 0, result.output
    header, row = result.output.splitlines()[:2]
    assert "EVENT TYPES" in header
    assert "invoice.paid,user.signed_up" in row
    (listed,) = json.loads(cli("list", "--json").output)
    assert listed["event_types"] == ["invoice.paid", "user.signed_up"]
    assert listed["models"] == []


def test_deliveries_command_shows_app_events(
    cli: t.Callable[..., Result],
    events: Webhooks,
    db: SQLAlchemy,
    receiver: RecordingReceiver,
) -> None:
    hook(events, db, receiver, name="growth", event_types=["user.signed_up"])
    events.publish("user.signed_up", {"email": "a@example.com"}, object_id="u-1")
    events.publish("user.signed_up", {"email": "b@example.com"})
    db.session.commit()
    receiver.wait_for(2)
    db.session.remove()
    result = cli("deliveries")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    objects = sorted(r[5] for r in rows)  # ID, date, time, WEBHOOK, EVENT, OBJECT
    assert objects == ["-", "u-1"]
    assert {r[4] for r in rows} == {"user.signed_up"}


def test_events_command_without_declared_types(app: Flask, webhooks: Webhooks) -> None:
    result = app.test_cli_runner().invoke(args=["webhooks", "events"])
    assert result.exit_code == 0
    assert "No app event types declared" in result.output
