"""The admin's operator tools through the test client: charts on the status,
list and edit pages, the form's preview and the secret rotation."""

from __future__ import annotations

import datetime as dt
import json
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import verify
from flask_webhooks.testing import RecordingReceiver

from tests.test_admin import Browser
from tests.test_admin import by_id
from tests.test_admin import csrf_token
from tests.test_admin import form_data


@pytest.fixture
def browser(app: Flask, db: SQLAlchemy, webhooks: Webhooks) -> Browser:
    webhooks.init_admin(Admin(app, name="Test", theme=Bootstrap4Theme()))
    return Browser(app, db)


def stored(webhooks: Webhooks, db: SQLAlchemy, hook_id: int) -> t.Any:
    row = db.session.get(webhooks.Webhook, hook_id)
    assert row is not None
    return row


def seed(
    webhooks: Webhooks,
    db: SQLAlchemy,
    hook: t.Any,
    plan: t.Sequence[tuple[int, str, float]],
) -> None:
    """Deliveries of ``hook``, each ``(hours ago, status, attempt ms)``."""
    now = m.utcnow()
    D = webhooks.Delivery.__table__  # type: ignore[attr-defined]
    A = webhooks.DeliveryAttempt.__table__  # type: ignore[attr-defined]
    hook_id, hook_name = hook.id, hook.name
    db.session.remove()  # no read transaction while another connection writes
    with db.engine.begin() as conn:
        for n, (ago, status, ms) in enumerate(plan):
            at = now - dt.timedelta(hours=ago, minutes=1)
            delivery_id = m.new_id()
            conn.execute(
                sa.insert(D).values(
                    id=delivery_id,
                    webhook_id=hook_id,
                    webhook_name=hook_name,
                    event="created",
                    model="site",
                    object_id=str(n),
                    status=status,
                    attempts=1,
                    created_at=at,
                    updated_at=at,
                    body=b'{"event":"created","model":"site","data":{"name":"x"}}',
                )
            )
            conn.execute(
                sa.insert(A).values(
                    delivery_id=delivery_id,
                    number=1,
                    started_at=at,
                    duration_ms=ms,
                    status_code=200 if status == m.SUCCEEDED else 500,
                )
            )


PLAN = [
    (0, m.SUCCEEDED, 10.0),
    (0, m.SUCCEEDED, 30.0),
    (0, m.FAILED, 500.0),
    (5, m.SUCCEEDED, 20.0),
    (30, m.FAILED, 900.0),
]


def test_status_page_charts_for_24_hours_and_7_days(
    browser: Browser, webhooks: Webhooks, db: SQLAlchemy, make_hook: t.Any
) -> None:
    hook = make_hook(name="crm")
    seed(webhooks, db, hook, PLAN)
    db.session.remove()
    page = browser.page("/admin/webhooks/status/")
    assert (
        '<svg xmlns="http://www.w3.org/2000/svg" class="wh-chart wh-bars" id="wh-chart-deliveries"'
        in page
    )
    assert page.count('class="wh-bar"') == 24
    # The delivery 30 hours ago is outside the 24 h window.
    assert "3 succeeded, 1 failed" in page
    assert "succeeded 3</text>" in page and "failed 1</text>" in page
    summary = by_id(page)["wh-latency-summary"]
    assert "p50 25 ms · p95 4" in " ".join(summary.split())
    assert "4 attempts" in summary
    assert 'id="wh-chart-latency"' in page
    row = page[page.index('data-webhook="crm"') :]
    assert "75.0%" in row[: row.index("</tr>")]

    week = browser.page("/admin/webhooks/status/?window=7d")
    assert week.count('class="wh-bar"') == 168
    assert "3 succeeded, 2 failed" in week
    assert 'aria-current="page"\n             id="wh-window-7d"' in week
    assert "60.0%" in week
    # Unknown windows fall back to 24 hours.
    assert (
        browser.page("/admin/webhooks/status/?window=1y").count('class="wh-bar"') == 24
    )


def test_list_sparklines_and_edit_page_activity(
    browser: Browser, webhooks: Webhooks, db: SQLAlchemy, make_hook: t.Any
) -> None:
    make_hook(name="quiet")
    busy = make_hook(name="busy")
    busy_id = busy.id
    seed(webhooks, db, busy, PLAN)
    db.session.remove()
    page = browser.page("/admin/webhooks/")
    assert f'id="wh-spark-{busy_id}"' in page
    assert "last 24 hours: 3 succeeded, 1 failed" in page
    assert "last 24 hours: 0 succeeded, 0 failed" in page

    edit = browser.page(f"/admin/webhooks/edit/?id={busy_id}")
    assert 'id="wh-chart-webhook"' in edit
    assert edit.count('class="wh-recent-attempt"') == 5
    assert "HTTP 500" in edit
    assert by_id(edit)["wh-rotate"].strip().startswith("Rotate the secret")


def test_preview_button_renders_the_unsaved_form(
    browser: Browser,
    webhooks: Webhooks,
    db: SQLAlchemy,
    models: t.Any,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    hook = make_hook(name="crm", secret="stored-secret")
    db.session.add(models.Site(name="Lyon"))
    db.session.commit()
    hook_id = hook.id
    site_id = db.session.scalar(sa.select(models.Site.id))
    sent = len(receiver.wait_for(1))
    db.session.remove()
    token = csrf_token(browser.page(f"/admin/webhooks/edit/?id={hook_id}"))
    data = form_data(
        token,
        name="crm",
        payload_url=receiver.url,
        body_template="site={{ data.name }}",
        additional_headers="X-Site: {{ data.name }}",
        preview_model="site",
        preview_id=str(site_id),
    )
    response = browser.post(f"/admin/webhooks/preview/?id={hook_id}", data=data)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["errors"] == {}
    assert "would fire" in answer["html"] and "site=Lyon" in answer["html"]
    assert "stored-secret" not in answer["html"]
    signature = answer["html"].split(
        'data-header="X-Hook-Signature"><td>X-Hook-Signature</td><td>'
    )[1]
    assert verify("stored-secret", b"site=Lyon", signature.split("<")[0])

    broken = form_data(
        token,
        name="crm",
        payload_url=receiver.url,
        body_template="{{ data.name.nope() }}",
        conditions='{"attr": "name", "op": "bogus"}',
        preview_model="site",
        preview_id=str(site_id),
    )
    answer = browser.post(
        f"/admin/webhooks/preview/?id={hook_id}", data=broken
    ).get_json()
    assert set(answer["errors"]) == {"body_template", "conditions"}

    missing = form_data(token, name="crm", preview_model="site", preview_id="999")
    answer = browser.post(
        f"/admin/webhooks/preview/?id={hook_id}", data=missing
    ).get_json()
    assert answer["errors"] == {"preview_id": "no site with id 999"}

    delivery_id = db.session.scalar(sa.select(webhooks.Delivery.id))
    db.session.remove()
    from_delivery = form_data(
        token, name="crm", payload_url=receiver.url, preview_delivery=delivery_id
    )
    answer = browser.post(
        f"/admin/webhooks/preview/?id={hook_id}", data=from_delivery
    ).get_json()
    assert f"delivery {delivery_id}" in answer["html"]
    assert delivery_id in answer["html"]  # the X-Webhook-ID header

    no_csrf = browser.post(
        f"/admin/webhooks/preview/?id={hook_id}", data={**data, "csrf_token": "x"}
    )
    assert no_csrf.status_code == 400
    # Nothing was saved or sent.
    assert len(receiver.requests) == sent
    assert stored(webhooks, db, hook_id).body_template == ""


def test_rotate_secret_from_the_edit_page(
    browser: Browser,
    webhooks: Webhooks,
    db: SQLAlchemy,
    make_hook: t.Any,
) -> None:
    old = generate_secret()
    hook = make_hook(name="crm", secret=old, signature_scheme="netbox")
    hook_id = hook.id
    db.session.remove()
    url = f"/admin/webhooks/edit/?id={hook_id}"
    token = csrf_token(browser.page(url))
    new = generate_secret()
    response = browser.post(
        f"/admin/webhooks/rotate-secret/?id={hook_id}",
        data={"csrf_token": token, "rotate_secret": new, "overlap_hours": "12"},
        follow_redirects=True,
    )
    page = response.get_data(as_text=True)
    assert "requests stay signed with the old secret" in page
    assert "rotating: switches at" in by_id(page)["wh-rotation-state"]
    assert old not in page and new not in page
    row = stored(webhooks, db, hook_id)
    assert (row.secret, row.previous_secret) == (new, old)
    assert (
        dt.timedelta(hours=11.9)
        < row.secret_rotated_until - m.utcnow()
        <= dt.timedelta(hours=12)
    )
    db.session.remove()
    listing = browser.page("/admin/webhooks/")
    assert "rotating: switches at" in listing and new not in listing

    refused = browser.post(
        f"/admin/webhooks/rotate-secret/?id={hook_id}",
        data={"csrf_token": token, "rotate_secret": "", "overlap_hours": "1"},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "type a new secret or press Generate" in refused
    forged = browser.post(
        f"/admin/webhooks/rotate-secret/?id={hook_id}",
        data={"csrf_token": "forged", "rotate_secret": "x", "overlap_hours": "1"},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "The secret was not rotated" in forged
    assert stored(webhooks, db, hook_id).secret == new


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_preview_on_the_create_form(
    browser: Browser, webhooks: Webhooks, db: SQLAlchemy, models: t.Any
) -> None:
    db.session.add(models.Site(name="Nice"))
    db.session.commit()
    db.session.remove()
    page = browser.page("/admin/webhooks/new/")
    assert 'id="wh-preview-button"' in page and 'id="wh-rotate"' not in page
    data = form_data(
        csrf_token(page), preview_model="site", preview_id="1", new_secret="typed"
    )
    answer = browser.post("/admin/webhooks/preview/", data=data).get_json()
    assert "would fire" in answer["html"]
    body = json.dumps({"event": "updated"})[1:-1]
    assert body.replace(" ", "") in answer["html"].replace("&#34;", '"').replace(
        " ", ""
    )
    assert "typed" not in answer["html"]
    assert (
        db.session.scalar(sa.select(sa.func.count()).select_from(webhooks.Webhook)) == 0
    )
