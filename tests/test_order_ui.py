"""Per-object order in the admin and the CLI: the sequence shown, stale
manual retries called out, cancelled deliveries releasing the next one,
``collapse_updates`` in the webhook form, ``superseded`` in filters and
counts. The ``immediate://`` queue: a commit's deliveries run at once.
"""

from __future__ import annotations

import html
import json
import re
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import Models
from tests.test_admin import action
from tests.test_admin import Browser
from tests.test_admin import form_data
from tests.test_admin import Hook
from tests.test_admin import Rows


@pytest.fixture
def browser(app: Flask, db: SQLAlchemy, webhooks: Webhooks) -> Browser:
    admin = Admin(app, name="Test", theme=Bootstrap4Theme())
    webhooks.init_admin(admin)
    return Browser(app, db)


@pytest.fixture
def new_hook(make_hook: t.Any, db: SQLAlchemy) -> t.Callable[..., Hook]:
    def make(**fields: t.Any) -> Hook:
        row = make_hook(**fields)
        hook = Hook(row.id, row.name, row.payload_url)
        db.session.remove()  # end the read transaction (SQLite locks)
        return hook

    return make


@pytest.fixture
def rows(db: SQLAlchemy, webhooks: Webhooks) -> Rows:
    return Rows(db, webhooks)


@pytest.fixture
def config(request: pytest.FixtureRequest) -> dict[str, t.Any]:
    # One attempt only: a failure is final, so there is something to retry.
    return {"WEBHOOKS_RETRY_SCHEDULE": getattr(request, "param", [])}


def sites_lifecycle(
    db: SQLAlchemy, models: Models, receiver: RecordingReceiver, answers: list[int]
) -> int:
    """Create a site, then rename it; the receiver answers ``answers`` first."""
    receiver.respond(*answers)
    site = models.Site(name="v0")
    db.session.add(site)
    db.session.commit()
    site.name = "v1"
    db.session.commit()
    site_id = int(site.id)
    db.session.remove()
    return site_id


def test_admin_retry_of_a_stale_delivery_says_so_and_keeps_the_sequence(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    db: SQLAlchemy,
    models: Models,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    new_hook()
    sites_lifecycle(db, models, receiver, [500])
    created, updated = sorted(rows.deliveries(), key=lambda d: d.sequence)
    assert (created.status, updated.status) == (m.FAILED, m.SUCCEEDED)
    created_id, sequences = created.id, (created.sequence, updated.sequence)
    response = action(browser, "deliveries/", "retry", [created_id], browser.token())
    assert response.status_code == 302
    page = html.unescape(browser.page("/admin/webhooks/deliveries/"))
    assert "1 delivery is older than what the receiver already has" in page
    again = next(d for d in rows.deliveries() if d.id == created_id)
    assert (again.status, again.sequence) == (m.SUCCEEDED, sequences[0])
    assert receiver.requests[-1].sequence == sequences[0] < sequences[1]


def test_admin_shows_the_sequence_and_superseded(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    db: SQLAlchemy,
    models: Models,
    receiver: RecordingReceiver,
    rows: Rows,
    webhooks: Webhooks,
) -> None:
    new_hook()
    sites_lifecycle(db, models, receiver, [])
    created, updated = (
        (d.id, d.sequence) for d in sorted(rows.deliveries(), key=lambda d: d.sequence)
    )
    D = webhooks.Delivery
    db.session.execute(
        sa.update(D).where(D.id == updated[0]).values(status=m.SUPERSEDED)
    )
    db.session.commit()
    listing = browser.page("/admin/webhooks/deliveries/")
    assert ">Seq.</a>" in listing
    assert f">{created[1]}</td>" in listing.replace(" ", "").replace("\n", "")
    assert 'wh-status-superseded">superseded</span>' in listing
    assert '["superseded", "superseded"]' in listing  # a status filter option
    detail = browser.page(f"/admin/webhooks/deliveries/details/?id={updated[0]}")
    assert f'<td id="wh-sequence"><code>{updated[1]}</code>' in detail
    status = browser.page("/admin/webhooks/status/")
    assert "superseded" in status


@pytest.mark.parametrize("config", [[5]], indirect=True)
def test_cancelling_the_earlier_delivery_releases_the_next(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    db: SQLAlchemy,
    models: Models,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    new_hook()
    sites_lifecycle(db, models, receiver, [500])
    created, updated = sorted(rows.deliveries(), key=lambda d: d.sequence)
    # The create waits for its retry; the update waits for the create.
    assert (created.status, updated.status) == (m.RETRYING, m.PENDING)
    response = action(browser, "deliveries/", "cancel", [created.id], browser.token())
    assert response.status_code == 302
    after = {d.id: d.status for d in rows.deliveries()}
    assert after == {created.id: m.CANCELLED, updated.id: m.SUCCEEDED}
    assert [r.json()["event"] for r in receiver.requests] == [m.CREATED, m.UPDATED]


def test_webhook_form_sets_collapse_updates(
    browser: Browser, receiver: RecordingReceiver, rows: Rows
) -> None:
    page = browser.page("/admin/webhooks/new/")
    assert 'name="collapse_updates"' in page
    token = browser.token("/admin/webhooks/new/")
    data = form_data(token, name="mirror", payload_url=receiver.url)
    data["collapse_updates"] = "y"
    assert browser.post("/admin/webhooks/new/", data=data).status_code == 302
    hook = rows.hook("mirror")
    assert hook.collapse_updates is True
    edit = browser.page(f"/admin/webhooks/edit/?id={hook.id}")
    box = re.search(r'<input[^>]*id="collapse_updates"[^>]*>', edit)
    assert box is not None and "checked" in box.group(0)


def test_cli_shows_sequences_and_flags_a_stale_retry(
    app: Flask,
    make_hook: t.Any,
    db: SQLAlchemy,
    models: Models,
    receiver: RecordingReceiver,
    webhooks: Webhooks,
) -> None:
    make_hook()
    sites_lifecycle(db, models, receiver, [500])
    runner = app.test_cli_runner()
    listed = json.loads(runner.invoke(args=["webhooks", "deliveries", "--json"]).output)
    by_event = {d["event"]: d for d in listed}
    created, updated = by_event[m.CREATED], by_event[m.UPDATED]
    assert 0 < created["sequence"] < updated["sequence"]
    table = runner.invoke(args=["webhooks", "deliveries"]).output
    assert table.splitlines()[0].split()[5] == "SEQ"
    assert f" {created['sequence']} " in table
    result = runner.invoke(args=["webhooks", "retry", created["id"]])
    assert result.exit_code == 0, result.output
    assert (
        f"note: {created['id']} is older than what the receiver already has"
        in result.output
    )
    assert receiver.requests[-1].sequence == created["sequence"]
