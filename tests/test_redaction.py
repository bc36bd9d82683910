"""Credentials are masked everywhere they are stored or shown: URL passwords
and secret query parameters, secret request and response headers
(``WEBHOOKS_REDACT_HEADERS``), in delivery and attempt rows, the CLI and the
admin. What is sent is not masked."""

from __future__ import annotations

import json
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_webhooks.sanitize import MASK
from flask_webhooks.sanitize import mask_url
from flask_webhooks.sanitize import Redactor
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver

SECRETS = ("hunter2", "k-123", "tok-456", "b-789", "sess-0", "q-secret")

HEADERS = "\n".join(
    [
        "X-API-Key: k-123",
        "X-Custom-Token: tok-456",
        "Authorization: Bearer b-789",
        "X-Plain: visible",
    ]
)


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("Set-Cookie", True),
        ("X-API-Key", True),
        ("X-Auth-Token", True),
        ("Client-Secret", True),
        ("Api-Key", True),
        ("X-Hook-Signature", True),
        ("webhook-signature", True),
        ("Content-Type", False),
        ("User-Agent", False),
        ("X-Webhook-ID", False),
        ("X-Webhook-Attempt", False),
        ("X-Webhook-Sequence", False),
        ("webhook-id", False),
        ("webhook-timestamp", False),
        ("X-Request-ID", False),
        ("Keep-Alive", False),
    ],
)
def test_default_names(name, secret):
    assert Redactor().is_secret(name) is secret


def test_own_headers_stay_visible_even_when_a_pattern_matches():
    redactor = Redactor(["*webhook*"])
    assert not redactor.is_secret("X-Webhook-ID")
    assert redactor.is_secret("X-Webhook-Custom")
    # Signatures stay masked even when the list leaves them out.
    assert Redactor([]).is_secret("X-Hook-Signature")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:hunter2@h.example/x", "http://user:***@h.example/x"),
        ("https://ghp_token@h.example/x", "https://***@h.example/x"),
        ("https://h.example/x?token=abc&a=1", f"https://h.example/x?token={MASK}&a=1"),
        ("https://h.example/x?a=1&b=2", "https://h.example/x?a=1&b=2"),
        ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url, Redactor()) == shown


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "config",
    [{"WEBHOOKS_REDACT_HEADERS": "Authorization"}, {"WEBHOOKS_REDACT_HEADERS": [""]}],
)
def test_bad_setting_names_the_key(app, config):
    from flask_sqlalchemy import SQLAlchemy
    from flask_webhooks import Webhooks

    with pytest.raises(ValueError, match="WEBHOOKS_REDACT_HEADERS"):
        Webhooks(app, db=SQLAlchemy(app))


def every_text(engine: sa.Engine, *tables: sa.Table) -> str:
    """Everything stored in ``tables``, as one string."""
    with engine.connect() as conn:
        return "\n".join(
            repr(tuple(row))
            for table in tables
            for row in conn.execute(sa.select(table))
        )


@pytest.fixture
def secret_receiver() -> t.Iterator[RecordingReceiver]:
    answer = Answer(200, headers={"Set-Cookie": "session=sess-0", "X-Seen": "yes"})
    with RecordingReceiver(answer=lambda _: answer) as rx:
        yield rx


def secret_url(rx: RecordingReceiver) -> str:
    return rx.url.replace("http://", "http://user:hunter2@") + "?token=q-secret&page=1"


def test_stored_rows_mask_credentials_but_the_request_carries_them(
    webhooks, db, models, make_hook, secret_receiver
):
    make_hook(payload_url=secret_url(secret_receiver), additional_headers=HEADERS)
    db.session.add(models.Site(name="a"))
    db.session.commit()
    (request,) = secret_receiver.wait_for(1)
    # Sent as configured.
    assert request.headers["X-API-Key"] == "k-123"
    # The URL's user-info becomes Basic auth, which wins over the header.
    assert request.headers["Authorization"] == "Basic dXNlcjpodW50ZXIy"
    assert "token=q-secret" in request.path
    D, A = webhooks.Delivery.__table__, webhooks.DeliveryAttempt.__table__
    stored = every_text(db.engine, D, A)
    assert [s for s in SECRETS if s in stored] == []
    with db.engine.connect() as conn:
        delivery = conn.execute(sa.select(D)).one()
        attempt = conn.execute(sa.select(A)).one()
    for row in (delivery, attempt):
        assert row.request_url.startswith("http://user:***@127.0.0.1:")
        assert row.request_url.endswith(f"?token={MASK}&page=1")
        assert row.request_headers["X-API-Key"] == MASK
        assert row.request_headers["X-Custom-Token"] == MASK
        assert row.request_headers["Authorization"] == MASK
        assert row.request_headers["X-Plain"] == "visible"
        assert row.request_headers["X-Webhook-ID"] == delivery.id
        assert row.response_headers["Set-Cookie"] == MASK
        assert row.response_headers["X-Seen"] == "yes"


@pytest.mark.parametrize("config", [{"WEBHOOKS_REDACT_HEADERS": ["X-Plain"]}])
def test_the_list_of_names_is_configurable(webhooks, db, models, make_hook, receiver):
    make_hook(additional_headers=HEADERS)
    db.session.add(models.Site(name="a"))
    db.session.commit()
    receiver.wait_for(1)
    headers = db.session.scalars(sa.select(webhooks.Delivery.request_headers)).one()
    assert headers["X-Plain"] == MASK
    assert headers["X-API-Key"] == "k-123"  # no longer in the list


def test_cli_list_and_ping_mask_the_url(app, webhooks, make_hook, secret_receiver):
    make_hook(name="crm", payload_url=secret_url(secret_receiver))
    runner = app.test_cli_runner()
    outputs = []
    for args in (["list"], ["list", "--json"], ["ping", "crm"]):
        result = runner.invoke(args=["webhooks", *args])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    assert [s for s in SECRETS if any(s in out for out in outputs)] == []
    (hook,) = json.loads(outputs[1])
    assert hook["payload_url"].startswith("http://user:***@127.0.0.1:")
    assert "user:***@" in outputs[0]
    assert "sending test delivery" in outputs[2] and "user:***@" in outputs[2]
    secret_receiver.wait_for(1)


def test_admin_delivery_page_masks_credentials(
    app: Flask, webhooks, db, models, make_hook, secret_receiver
):
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme

    webhooks.init_admin(
        Admin(app, name="T", theme=Bootstrap4Theme()), is_accessible=lambda: True
    )
    make_hook(payload_url=secret_url(secret_receiver), additional_headers=HEADERS)
    db.session.add(models.Site(name="a"))
    db.session.commit()
    secret_receiver.wait_for(1)
    delivery_id = db.session.scalars(sa.select(webhooks.Delivery.id)).one()
    db.session.remove()
    client = app.test_client()
    pages = [
        client.get(url).get_data(as_text=True)
        for url in (
            "/admin/webhooks/",
            f"/admin/webhooks/deliveries/details/?id={delivery_id}",
        )
    ]
    assert [s for s in SECRETS if any(s in page for page in pages)] == []
    assert "X-Plain" in pages[1] and "visible" in pages[1]
