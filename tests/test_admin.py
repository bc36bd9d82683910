"""The Flask-Admin screens, through the Flask test client.

Every test runs against a real database (SQLite, and PostgreSQL when
``WEBHOOKS_TEST_DATABASE_URL`` is set), the ``immediate://`` queue and the real
HTTP receiver, so actions really send requests.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import subprocess
import sys
import typing as t
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.signing import is_standard_secret
from flask_webhooks.signing import verify
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import Models

SECRET = "s3cret-Never-Shown-7f2a"


@pytest.fixture
def config() -> dict[str, t.Any]:
    # No automatic retries: a failed attempt ends as "failed" at once, so the
    # admin's manual retry is what sends the next attempt.
    return {"WEBHOOKS_RETRY_SCHEDULE": []}


@pytest.fixture
def access() -> dict[str, bool]:
    return {"allowed": True}


@pytest.fixture
def admin(app: Flask, webhooks: Webhooks, access: dict[str, bool]) -> Admin:
    admin = Admin(app, name="Test", theme=Bootstrap4Theme())
    webhooks.init_admin(admin, is_accessible=lambda: access["allowed"])
    return admin


class Browser:
    """The test client, with the session ended around every request.

    The ``app`` fixture keeps one app context for the whole test, and a test
    client request reuses it, so without this the views and the test would
    share one ``db.session`` (and, on SQLite, its read lock).
    """

    def __init__(self, app: Flask, db: SQLAlchemy) -> None:
        self.client = app.test_client()
        self.db = db

    def _call(self, method: str, url: str, **kwargs: t.Any) -> t.Any:
        self.db.session.remove()
        try:
            return self.client.open(url, method=method, **kwargs)
        finally:
            self.db.session.remove()

    def get(self, url: str, **kwargs: t.Any) -> t.Any:
        return self._call("GET", url, **kwargs)

    def post(self, url: str, **kwargs: t.Any) -> t.Any:
        return self._call("POST", url, **kwargs)

    def page(self, url: str) -> str:
        response = self.get(url)
        assert response.status_code == 200, (url, response.status_code)
        return str(response.get_data(as_text=True))

    def token(self, url: str = "/admin/webhooks/") -> str:
        """A CSRF token, read from a page like a browser would."""
        return csrf_token(self.page(url))


@pytest.fixture
def browser(app: Flask, db: SQLAlchemy, admin: Admin) -> Browser:
    return Browser(app, db)


class Hook(t.NamedTuple):
    id: int
    name: str
    payload_url: str


@pytest.fixture
def new_hook(make_hook: t.Any, db: SQLAlchemy) -> t.Callable[..., Hook]:
    """Like ``make_hook``, but returns plain values (usable after the session ends)."""

    def make(**fields: t.Any) -> Hook:
        row = make_hook(**fields)
        hook = Hook(row.id, row.name, row.payload_url)
        db.session.remove()  # end the read transaction (SQLite locks)
        return hook

    return make


#: ``commit_sites(*names, answers=())``: see the fixture.
CommitSites = t.Callable[..., list[t.Any]]


@pytest.fixture
def commit_sites(
    receiver: RecordingReceiver, db: SQLAlchemy, models: Models, rows: Rows
) -> CommitSites:
    """Commit one transaction that creates a site per name, the receiver
    answering ``answers`` first (then 200). Returns the delivery log."""

    def commit(*names: str, answers: t.Sequence[int] = ()) -> list[t.Any]:
        receiver.respond(*answers)
        db.session.add_all([models.Site(name=name) for name in names])
        db.session.commit()
        return rows.deliveries()

    return commit


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


class _Ids(HTMLParser):
    """Text content of every element with an id."""

    VOID = {"input", "br", "img", "meta", "link", "hr", "col", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []
        self.text: dict[str, list[str]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        ident = dict(attrs).get("id")
        self.stack.append(ident)
        if ident:
            self.text.setdefault(ident, [])

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for ident in self.stack:
            if ident:
                self.text[ident].append(data)


def by_id(page: str) -> dict[str, str]:
    parser = _Ids()
    parser.feed(page)
    parser.close()
    return {k: " ".join(" ".join(v).split()) for k, v in parser.text.items()}


def form_data(token: str, **fields: t.Any) -> dict[str, t.Any]:
    data: dict[str, t.Any] = {
        "csrf_token": token,
        "name": "sync",
        "enabled": "y",
        "models": ["site"],
        "on_create": "y",
        "on_update": "y",
        "payload_url": "http://127.0.0.1:9/hook",
        "http_method": "POST",
        "http_content_type": "application/json",
        "additional_headers": "",
        "body_template": "",
        "new_secret": "",
        "signature_scheme": "netbox",
        "ssl_verification": "y",
        "ca_file_path": "",
        "conditions": "",
        "timeout": "",
    }
    for key, value in fields.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


class Rows:
    """The extension's tables, read and written with the test's session ended
    first (so it holds no read transaction, and no lock on SQLite)."""

    def __init__(self, db: SQLAlchemy, webhooks: Webhooks) -> None:
        self.db = db
        self.webhooks = webhooks

    def deliveries(self) -> list[t.Any]:
        self.db.session.remove()
        D = self.webhooks.Delivery
        return list(self.db.session.scalars(sa.select(D).order_by(D.created_at, D.id)))

    def hook(self, name: str) -> t.Any:
        self.db.session.remove()
        W = self.webhooks.Webhook
        return self.db.session.scalars(sa.select(W).where(W.name == name)).one_or_none()

    def insert_delivery(self, hook: t.Any, **values: t.Any) -> str:
        """An outbox row written directly, as capture would, but not enqueued."""
        now = m.utcnow()
        row: dict[str, t.Any] = {
            "id": m.new_id(),
            "webhook_id": hook.id,
            "webhook_name": hook.name,
            "event": "created",
            "model": "site",
            "object_id": "1",
            "status": m.PENDING,
            "created_at": now,
            "updated_at": now,
            "next_attempt_at": now,
            "body": b'{"event":"created"}',
        }
        row.update(values)
        self.db.session.remove()
        with self.db.engine.begin() as conn:
            conn.execute(sa.insert(self.webhooks.Delivery.__table__), [row])  # type: ignore[attr-defined]
        return str(row["id"])


@pytest.fixture
def rows(db: SQLAlchemy, webhooks: Webhooks) -> Rows:
    return Rows(db, webhooks)


def action(
    browser: Browser, view: str, name: str, ids: t.Sequence[t.Any], token: str | None
) -> t.Any:
    data: dict[str, t.Any] = {"action": name, "rowid": [str(i) for i in ids]}
    if token is not None:
        data["csrf_token"] = token
    return browser.post(f"/admin/webhooks/{view}action/", data=data)


def assert_reenabled(hook: t.Any) -> None:
    """Enabled, and the disabled state (reason, time, failure streak) cleared."""
    assert hook.enabled is True
    assert (hook.disabled_reason, hook.disabled_at, hook.consecutive_failures) == (
        None,
        None,
        0,
    )


# -- pages -------------------------------------------------------------------


def test_every_page_renders(
    browser: Browser, new_hook: t.Callable[..., Hook], commit_sites: CommitSites
) -> None:
    hook = new_hook(name="netbox-sync", models=["site", "device"])
    (delivery,) = commit_sites("alpha")

    listing = browser.page("/admin/webhooks/")
    assert "netbox-sync" in listing
    assert "Send test delivery" in listing
    assert 'href="/admin/webhooks/deliveries/?flt0_webhook_equals=' in listing
    assert "alpha" not in listing
    assert "Payload URL" in browser.page("/admin/webhooks/new/")
    assert 'value="netbox-sync"' in browser.page(f"/admin/webhooks/edit/?id={hook.id}")
    log = browser.page("/admin/webhooks/deliveries/")
    assert f"/admin/webhooks/deliveries/details/?id={delivery.id}" in log
    assert "badge-success wh-status" in log
    detail = browser.page(f"/admin/webhooks/deliveries/details/?id={delivery.id}")
    assert delivery.id in detail
    status = by_id(browser.page("/admin/webhooks/status/"))
    assert status["wh-backend"] == "immediate"
    assert status["wh-count-succeeded"].split() == ["succeeded", "1", "1"]
    # The screens are grouped in one menu category.
    home = browser.page("/admin/")
    menu = re.search(
        r"Webhooks<i [^>]*></i></a>\s*<ul class=\"dropdown-menu\">(.*?)</ul>",
        home,
        re.S,
    )
    assert menu is not None
    assert re.findall(r'href="([^"]+)"', menu.group(1)) == [
        "/admin/webhooks/",
        "/admin/webhooks/deliveries/",
        "/admin/webhooks/status/",
        "/admin/webhooks/event-types/",
    ]


def test_list_shows_health_and_masks_secrets_and_url_passwords(
    browser: Browser, new_hook: t.Callable[..., Hook]
) -> None:
    new_hook(
        name="flaky",
        models=["site", "device"],
        on_delete=False,
        payload_url="http://alice:pa55word@127.0.0.1:9/hook",
        secret=SECRET,
        enabled=False,
        disabled_reason="the receiver answered 410 Gone",
        consecutive_failures=4,
        last_delivery_status=m.FAILED,
    )
    page = browser.page("/admin/webhooks/")
    row = page[page.index('class="wh-name">flaky') :]
    row = row[: row.index("</tr>")]
    assert ">site<" in row and ">device<" in row
    assert ">created<" in row and ">updated<" in row and ">deleted<" not in row
    assert "4 failed in a row" in row
    assert "disabled: the receiver answered 410 Gone" in row
    assert "badge-danger wh-status wh-status-failed" in row
    assert "••••••••" in row
    assert "http://alice:***@127.0.0.1:9/hook" in row
    assert "pa55word" not in page
    assert SECRET not in page


def test_create_form_offers_registered_models_and_event_checkboxes(
    browser: Browser,
) -> None:
    page = browser.page("/admin/webhooks/new/")
    options = re.findall(r'<option value="([^"]+)"', page[page.index('id="models"') :])
    assert options[:4] == ["device", "site", "tag", "tenant"]
    for field in ("on_create", "on_update", "on_delete"):
        assert re.search(
            rf'<input checked class="form-check-input" id="{field}" name="{field}"',
            page,
        )
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert (
            f'<option value="{method}"' in page
            or f'<option selected value="{method}"' in page
        )


# -- create and edit ---------------------------------------------------------


def test_create_through_the_form_then_a_commit_is_delivered(
    browser: Browser,
    receiver: RecordingReceiver,
    db: SQLAlchemy,
    models: Models,
    rows: Rows,
) -> None:
    token = browser.token("/admin/webhooks/new/")
    response = browser.post(
        "/admin/webhooks/new/",
        data=form_data(
            token,
            name="to-receiver",
            models=["site", "device"],
            payload_url=receiver.url,
            new_secret=SECRET,
            additional_headers="X-Tenant: {{ data.name }}",
            conditions='{"attr": "name", "value": "alpha"}',
            timeout="3.5",
            rate_limit="12.5",
        ),
    )
    assert response.status_code == 302
    hook = rows.hook("to-receiver")
    assert hook.rate_limit == 12.5
    assert hook.models == ["site", "device"]
    assert (hook.on_create, hook.on_update, hook.on_delete) == (True, True, False)
    assert hook.secret == SECRET
    assert hook.conditions == {"attr": "name", "value": "alpha"}
    assert hook.timeout == 3.5

    db.session.add_all([models.Site(name="alpha"), models.Site(name="beta")])
    db.session.commit()
    (received,) = receiver.wait_for(1)
    assert received.headers["X-Tenant"] == "alpha"
    assert verify(SECRET, received.body, received.headers["X-Hook-Signature"])


def test_validation_errors_are_shown_beside_their_fields(
    browser: Browser,
    db: SQLAlchemy,
    webhooks: Webhooks,
    new_hook: t.Callable[..., Hook],
) -> None:
    new_hook(name="taken")
    token = browser.token("/admin/webhooks/new/")
    response = browser.post(
        "/admin/webhooks/new/",
        data=form_data(
            token,
            name="taken",
            models=None,
            on_create=None,
            on_update=None,
            payload_url="ftp://127.0.0.1/x",
            additional_headers="no colon here",
            body_template="{{ unclosed",
            conditions='{"attr": "name", "op": "near", "value": 1}',
            signature_scheme="standard",
            new_secret="not-a-standard-secret",
            timeout="900",
            rate_limit="0",
        ),
    )
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    ids = by_id(page)
    assert "already exists" in ids["name-error"]
    assert "choose at least one model" in ids["models-error"]
    assert "choose at least one event" in ids["on_create-error"]
    assert "http:// or https://" in ids["payload_url-error"]
    assert "line 1" in ids["additional_headers-error"]
    assert "template error" in ids["body_template-error"]
    assert "near" in ids["conditions-error"]
    assert "whsec_" in ids["new_secret-error"]
    assert "at most 300" in ids["timeout-error"]
    assert "greater than 0" in ids["rate_limit-error"]
    # Each message sits inside its own field's group, next to the input.
    for field in ("payload_url", "conditions", "timeout", "name"):
        group = by_id(page)[f"group-{field}"]
        assert ids[f"{field}-error"] in group
    assert 'class="form-control is-invalid" id="payload_url"' in page
    # What was typed is kept (except the secret, which is never sent back).
    assert 'value="ftp://127.0.0.1/x"' in page
    assert "not-a-standard-secret" not in page
    assert [h.name for h in db.session.scalars(sa.select(webhooks.Webhook))] == [
        "taken"
    ]


def test_invalid_json_conditions_are_reported_on_the_field(browser: Browser) -> None:
    token = browser.token("/admin/webhooks/new/")
    response = browser.post(
        "/admin/webhooks/new/", data=form_data(token, conditions="{not json")
    )
    assert response.status_code == 200
    ids = by_id(response.get_data(as_text=True))
    assert ids["conditions-error"].startswith("not valid JSON")


def test_edit_keeps_replaces_or_removes_the_secret(
    browser: Browser, new_hook: t.Callable[..., Hook], rows: Rows
) -> None:
    hook = new_hook(name="signed", secret=SECRET)
    url = f"/admin/webhooks/edit/?id={hook.id}"
    page = browser.page(url)
    assert SECRET not in page
    assert by_id(page)["wh-secret-state"] == "set"

    def save(**fields: t.Any) -> None:
        data = form_data(
            browser.token(url), name="signed", payload_url=hook.payload_url
        )
        data.update(fields)
        assert browser.post(url, data=data).status_code == 302

    save(new_secret="")
    assert rows.hook("signed").secret == SECRET
    save(new_secret="another-secret")
    assert rows.hook("signed").secret == "another-secret"
    save(clear_secret="y")
    assert rows.hook("signed").secret == ""


def test_reenabling_through_the_form_clears_the_disabled_state(
    browser: Browser, new_hook: t.Callable[..., Hook], rows: Rows
) -> None:
    hook = new_hook(
        name="gone",
        enabled=False,
        disabled_reason="3 consecutive failed deliveries",
        disabled_at=m.utcnow(),
        consecutive_failures=3,
    )
    url = f"/admin/webhooks/edit/?id={hook.id}"
    assert (
        "3 consecutive failed deliveries"
        in by_id(browser.page(url))["wh-disabled-alert"]
    )
    data = form_data(browser.token(url), name="gone", payload_url=hook.payload_url)
    assert browser.post(url, data=data).status_code == 302
    assert_reenabled(rows.hook("gone"))


def test_generate_secret_helper_returns_a_fresh_standard_secret(
    browser: Browser,
) -> None:
    first = browser.get("/admin/webhooks/generate-secret/")
    second = browser.get("/admin/webhooks/generate-secret/")
    assert first.headers["Cache-Control"] == "no-store"
    assert is_standard_secret(first.json["secret"])
    assert first.json["secret"] != second.json["secret"]
    assert 'id="wh-generate-secret"' in browser.page("/admin/webhooks/new/")


# -- webhook actions ---------------------------------------------------------


def test_enable_and_disable_actions(
    browser: Browser, new_hook: t.Callable[..., Hook], rows: Rows
) -> None:
    live = new_hook(name="live")
    dead = new_hook(
        name="dead",
        enabled=False,
        disabled_reason="the receiver answered 410 Gone",
        disabled_at=m.utcnow(),
        consecutive_failures=2,
    )
    token = browser.token()
    assert action(browser, "", "disable", [live.id], token).status_code == 302
    assert rows.hook("live").enabled is False
    assert action(browser, "", "enable", [dead.id, live.id], token).status_code == 302
    for name in ("live", "dead"):
        assert_reenabled(rows.hook(name))
    assert "Enabled 2 webhooks." in browser.page("/admin/webhooks/")


def test_send_test_delivery_goes_through_the_pipeline(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    hook = new_hook(name="probe", models=["device"], secret=SECRET)
    response = action(browser, "", "send_test", [hook.id], browser.token())
    (delivery,) = rows.deliveries()
    assert response.status_code == 302
    assert response.headers["Location"].endswith(
        f"/admin/webhooks/deliveries/details/?id={delivery.id}"
    )
    assert (delivery.event, delivery.model, delivery.status) == (
        "test",
        "device",
        "succeeded",
    )
    (received,) = receiver.wait_for(1)
    body = received.json()
    assert isinstance(body, dict)
    assert body["event"] == "test"
    assert body["data"]["webhook"] == {"id": hook.id, "name": "probe"}
    assert received.headers["X-Webhook-ID"] == delivery.id
    assert verify(SECRET, received.body, received.headers["X-Hook-Signature"])
    page = browser.page(response.headers["Location"])
    assert "Test delivery to &#39;probe&#39; succeeded: HTTP 200" in page
    assert by_id(page)["wh-delivery-status"] == "succeeded"


def test_send_test_reports_a_failing_receiver_and_skips_disabled_hooks(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    hook = new_hook(name="probe")
    off = new_hook(name="off", enabled=False)
    receiver.respond(503)
    response = action(browser, "", "send_test", [hook.id, off.id], browser.token())
    (delivery,) = rows.deliveries()
    assert delivery.status == m.FAILED
    assert delivery.last_status_code == 503
    page = browser.page(response.headers["Location"])
    assert "Test delivery to &#39;probe&#39; failed: HTTP 503" in page
    assert "Webhook &#39;off&#39; is disabled" in page


# -- deliveries --------------------------------------------------------------


def test_delivery_detail_shows_request_body_and_attempt_timeline(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    receiver: RecordingReceiver,
) -> None:
    new_hook(name="detail", secret=SECRET, additional_headers="X-Env: test")
    (delivery,) = commit_sites("alpha", answers=[500])
    assert delivery.status == m.FAILED
    url = f"/admin/webhooks/deliveries/details/?id={delivery.id}"
    token = browser.token(url)
    action(browser, "deliveries/", "retry", [delivery.id], token)
    page = browser.page(url)
    ids = by_id(page)
    assert ids["wh-request-url"] == receiver.url
    request_card = ids["wh-request"]
    assert "POST" in request_card
    assert "X-Env test" in request_card
    assert "X-Hook-Signature <redacted>" in request_card
    # JSON bodies are pretty-printed.
    assert '\n  "event": "created",\n' in html.unescape(page)
    attempts = re.findall(r'<tr class="wh-attempt">(.*?)</tr>', page, re.S)
    assert len(attempts) == 2
    assert "HTTP 500" in attempts[0] and "HTTP 200" in attempts[1]
    assert ids["wh-delivery-status"] == "succeeded"
    assert SECRET not in page


def test_retry_action_sends_again(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    new_hook()
    sent = commit_sites("a", "b", "c", answers=[500, 500])
    failed = [d.id for d in sent if d.status == m.FAILED]
    assert len(failed) == 2
    response = action(browser, "deliveries/", "retry", failed, browser.token())
    assert response.status_code == 302
    after = {d.id: d for d in rows.deliveries()}
    assert [after[i].status for i in failed] == [m.SUCCEEDED, m.SUCCEEDED]
    assert [after[i].attempts for i in failed] == [2, 2]
    assert len(receiver.wait_for(5)) == 5
    page = browser.page("/admin/webhooks/deliveries/")
    assert "Retrying 2 deliveries; now: 2 succeeded." in page


def test_retry_all_failed_matching_the_filter(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    rows: Rows,
) -> None:
    one = new_hook(name="one")
    new_hook(name="two")
    assert {d.status for d in commit_sites("a", answers=[500, 500])} == {m.FAILED}
    listing = f"/admin/webhooks/deliveries/?flt0_webhook_equals={one.id}"
    page = browser.page(listing)
    form = re.search(
        r'<form method="POST"[^>]*id="wh-retry-failed"[^>]*action="([^"]+)"', page
    )
    assert form is not None
    target = html.unescape(form.group(1))
    assert (
        target
        == f"/admin/webhooks/deliveries/retry-failed/?flt0_webhook_equals={one.id}"
    )
    response = browser.post(
        target, data={"csrf_token": csrf_token(page), "url": listing}
    )
    assert response.status_code == 302
    status = {d.webhook_name: d.status for d in rows.deliveries()}
    assert status == {"one": m.SUCCEEDED, "two": m.FAILED}


def test_replay_matching_shows_the_count_then_resends_in_order(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    one = new_hook(name="one")
    new_hook(name="two")
    commit_sites("a", "b", answers=[500])
    before = [d for d in rows.deliveries() if d.webhook_name == "one"]
    assert sorted(d.status for d in before) == [m.FAILED, m.SUCCEEDED]
    listing = f"/admin/webhooks/deliveries/?flt0_webhook_equals={one.id}"
    link = re.search(r'id="wh-replay"[^>]*href="([^"]+)"', browser.page(listing))
    assert link is not None
    target = html.unescape(link.group(1))
    assert target == f"/admin/webhooks/deliveries/replay/?flt0_webhook_equals={one.id}"
    # The count, before anything is sent.
    sent = len(receiver.requests)
    confirm = browser.page(target)
    count = re.search(r'id="wh-replay-count">(.*?)</p>', confirm, re.S)
    assert count is not None
    text = " ".join(re.sub(r"<[^>]+>", "", count.group(1)).split())
    assert text.startswith("2 deliveries (1 succeeded, 1 failed) will be sent again")
    assert len(receiver.requests) == sent
    # Without the token nothing happens.
    assert browser.post(target, data={}).status_code == 302
    assert len(receiver.requests) == sent

    response = browser.post(target, data={"csrf_token": csrf_token(confirm)})
    assert response.status_code == 302
    got = receiver.wait_for(sent + 2)[sent:]
    expected = sorted(before, key=lambda d: d.sequence)
    assert [r.delivery_id for r in got] == [d.id for d in expected]
    assert [r.body for r in got] == [bytes(d.body) for d in expected]
    after = {d.id: d for d in rows.deliveries()}
    assert all(after[d.id].status == m.SUCCEEDED for d in before)
    assert all(d.attempts == 1 for d in after.values() if d.webhook_name == "two")
    assert "Replaying 2 deliveries in sequence order." in browser.page(listing)


def test_cancel_pending_deliveries(
    browser: Browser, new_hook: t.Callable[..., Hook], webhooks: Webhooks, rows: Rows
) -> None:
    hook = new_hook()
    pending = rows.insert_delivery(hook)
    retrying = rows.insert_delivery(hook, status=m.RETRYING, attempts=1)
    done = rows.insert_delivery(hook, status=m.SUCCEEDED, attempts=1)
    token = browser.token("/admin/webhooks/deliveries/")
    action(browser, "deliveries/", "cancel", [pending, retrying, done], token)
    status = {d.id: d.status for d in rows.deliveries()}
    assert status == {pending: m.CANCELLED, retrying: m.CANCELLED, done: m.SUCCEEDED}
    assert webhooks.sweep() == 0
    page = browser.page("/admin/webhooks/deliveries/")
    assert "Cancelled 2 deliveries. 1 could not be cancelled" in page


def test_delivery_filters(
    browser: Browser, new_hook: t.Callable[..., Hook], rows: Rows
) -> None:
    one = new_hook(name="one")
    two = new_hook(name="two")
    old = m.utcnow() - dt.timedelta(days=3)
    ids = {
        "failed": rows.insert_delivery(one, status=m.FAILED),
        "device": rows.insert_delivery(two, model="device", event="deleted"),
        "old": rows.insert_delivery(one, status=m.SUCCEEDED, created_at=old),
        "test": rows.insert_delivery(two, event="test", status=m.SUCCEEDED),
    }

    def shown(query: str) -> set[str]:
        page = browser.page(f"/admin/webhooks/deliveries/?{query}")
        found = set(re.findall(r"details/\?id=([0-9a-f-]{36})", page))
        return {k for k, v in ids.items() if v in found}

    assert shown("") == set(ids)
    assert shown("flt0_status_equals=failed") == {"failed"}
    assert shown(f"flt0_webhook_equals={two.id}") == {"device", "test"}
    assert shown("flt0_model_equals=device") == {"device"}
    assert shown("flt0_event_equals=test") == {"test"}
    assert shown("flt0_event_equals=created&flt1_status_equals=succeeded") == {"old"}
    assert shown("flt0_created_within=24h") == {"failed", "device", "test"}
    before = (m.utcnow() - dt.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
    assert shown(f"flt0_created_before={before}") == {"old"}
    assert shown(f"flt0_created_after={before}") == {"failed", "device", "test"}
    assert shown(f"search={ids['device']}") == {"device"}
    # Newest first.
    page = browser.page("/admin/webhooks/deliveries/")
    order = list(dict.fromkeys(re.findall(r"details/\?id=([0-9a-f-]{36})", page)))
    assert order[-1] == ids["old"]


def test_webhook_filters_and_search(
    browser: Browser, new_hook: t.Callable[..., Hook]
) -> None:
    new_hook(name="sites-only", models=["site"])
    new_hook(name="devices", models=["device", "tag"], enabled=False)

    def shown(query: str) -> list[str]:
        page = browser.page(f"/admin/webhooks/?{query}")
        return re.findall(r'class="wh-name">([^<]+)<', page)

    assert shown("") == ["devices", "sites-only"]
    assert shown("flt0_model_includes=device") == ["devices"]
    assert shown("flt0_model_includes=site") == ["sites-only"]
    assert shown("flt0_enabled_equals=1") == ["sites-only"]
    assert shown("search=sites") == ["sites-only"]


# -- status ------------------------------------------------------------------


def test_status_page_counts_backlog_and_disabled_webhooks(
    browser: Browser, new_hook: t.Callable[..., Hook], rows: Rows
) -> None:
    hook = new_hook(name="live")
    new_hook(
        name="gone", enabled=False, disabled_reason="the receiver answered 410 Gone"
    )
    now = m.utcnow()
    ten_minutes_ago = now - dt.timedelta(minutes=10)
    rows.insert_delivery(
        hook, created_at=ten_minutes_ago, next_attempt_at=ten_minutes_ago
    )
    rows.insert_delivery(hook, status=m.FAILED)
    rows.insert_delivery(hook, status=m.FAILED, created_at=now - dt.timedelta(hours=5))
    rows.insert_delivery(hook, status=m.FAILED, created_at=now - dt.timedelta(days=2))
    page = browser.page("/admin/webhooks/status/")
    ids = by_id(page)
    assert ids["wh-count-failed"].split() == ["failed", "1", "2"]
    assert ids["wh-count-pending"].split() == ["pending", "1", "1"]
    assert ids["wh-oldest"] == "10 min"
    assert ids["wh-overdue"] == "1"
    assert ids["wh-queued"] == "0"
    assert ids["wh-backend"] == "immediate"
    assert ids["wh-queue-url"] == "immediate://"
    assert "gone" in ids["wh-disabled"]
    assert "the receiver answered 410 Gone" in ids["wh-disabled"]
    assert "live" not in ids["wh-disabled"]
    assert ids["wh-heartbeats"]
    # Counts link to the matching delivery list.
    assert (
        "/admin/webhooks/deliveries/?flt0_status_equals=failed&amp;flt1_created_within=24h"
        in page
    )


@pytest.mark.parametrize(
    "config", [{"WEBHOOKS_QUEUE_URL": "redis://:hunter2@127.0.0.1:1/0"}]
)
def test_status_page_redacts_the_queue_password_and_survives_a_dead_queue(
    browser: Browser, webhooks: Webhooks
) -> None:
    try:
        page = browser.page("/admin/webhooks/status/")
    finally:
        webhooks.huey.storage.conn.connection_pool.disconnect()
    ids = by_id(page)
    assert ids["wh-queue-url"] == "redis://:***@127.0.0.1:1/0"
    assert ids["wh-backend"] == "redis"
    assert ids["wh-queued"] == "?"
    assert "Connection refused" in ids["wh-queue"] or "Error" in ids["wh-queue"]
    assert "hunter2" not in page


# -- security ----------------------------------------------------------------


def test_no_secret_in_any_response(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    hook = new_hook(name="signed", secret=SECRET, signature_scheme="netbox")
    (delivery,) = commit_sites("alpha")
    receiver.wait_for(1)
    token = browser.token()
    urls = [
        "/admin/",
        "/admin/webhooks/",
        "/admin/webhooks/new/",
        f"/admin/webhooks/edit/?id={hook.id}",
        "/admin/webhooks/deliveries/",
        f"/admin/webhooks/deliveries/details/?id={delivery.id}",
        "/admin/webhooks/status/",
    ]
    bodies = [browser.get(u).get_data(as_text=True) for u in urls]
    bad_edit = form_data(token, name="signed", payload_url="nope")
    bodies.append(
        browser.post(f"/admin/webhooks/edit/?id={hook.id}", data=bad_edit).get_data(
            as_text=True
        )
    )
    for url, body in zip([*urls, "edit POST"], bodies, strict=True):
        assert SECRET not in body, url
    assert rows.hook("signed").secret == SECRET


def test_posts_without_a_csrf_token_are_refused(
    browser: Browser,
    new_hook: t.Callable[..., Hook],
    commit_sites: CommitSites,
    receiver: RecordingReceiver,
    rows: Rows,
) -> None:
    hook = new_hook(name="target")
    (delivery,) = commit_sites("alpha", answers=[500])
    assert delivery.status == m.FAILED

    response = browser.post("/admin/webhooks/new/", data=form_data("", name="forged"))
    assert response.status_code == 200
    assert (
        "CSRF token is missing"
        in by_id(response.get_data(as_text=True))["csrf_token-error"]
    )
    assert rows.hook("forged") is None

    edit = f"/admin/webhooks/edit/?id={hook.id}"
    browser.post(edit, data=form_data("wrong", name="renamed"))
    assert rows.hook("renamed") is None

    for view, name, ids in (
        ("", "disable", [hook.id]),
        ("", "send_test", [hook.id]),
        ("", "delete", [hook.id]),
        ("deliveries/", "retry", [delivery.id]),
    ):
        for token in (None, "forged-token"):
            response = action(browser, view, name, ids, token)
            assert response.status_code == 302
    browser.post("/admin/webhooks/delete/", data={"id": str(hook.id)})
    response = browser.post("/admin/webhooks/deliveries/retry-failed/", data={})
    assert response.status_code == 302
    assert "Retry refused" in browser.page("/admin/webhooks/deliveries/")

    assert rows.hook("target").enabled is True
    (delivery,) = rows.deliveries()
    assert (delivery.status, delivery.attempts) == (m.FAILED, 1)
    assert len(receiver.requests) == 1
    # Mutations are never reachable with GET.
    assert browser.get("/admin/webhooks/action/").status_code == 405
    assert browser.get("/admin/webhooks/deliveries/retry-failed/").status_code == 405
    assert browser.get(f"/admin/webhooks/delete/?id={hook.id}").status_code == 405


def test_inaccessible_views_answer_403(
    browser: Browser,
    access: dict[str, bool],
    new_hook: t.Callable[..., Hook],
    rows: Rows,
) -> None:
    hook = new_hook(name="guarded")
    delivery = rows.insert_delivery(hook, status=m.FAILED)
    token = browser.token()
    access["allowed"] = False
    for url in (
        "/admin/webhooks/",
        "/admin/webhooks/new/",
        f"/admin/webhooks/edit/?id={hook.id}",
        "/admin/webhooks/generate-secret/",
        "/admin/webhooks/deliveries/",
        f"/admin/webhooks/deliveries/details/?id={delivery}",
        "/admin/webhooks/status/",
    ):
        assert browser.get(url).status_code == 403, url
    assert action(browser, "", "disable", [hook.id], token).status_code == 403
    assert action(browser, "deliveries/", "retry", [delivery], token).status_code == 403
    response = browser.post(
        "/admin/webhooks/deliveries/retry-failed/", data={"csrf_token": token}
    )
    assert response.status_code == 403
    assert rows.hook("guarded").enabled is True
    # Hidden from the menu too.
    assert "/admin/webhooks/status/" not in browser.page("/admin/")


def test_flask_login_redirects_to_the_login_page(
    app: Flask, db: SQLAlchemy, webhooks: Webhooks
) -> None:
    from flask_login import login_user
    from flask_login import LoginManager
    from flask_login import UserMixin

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    manager = LoginManager(app)
    manager.login_view = "login"
    manager.user_loader(User)

    @app.route("/login")
    def login() -> str:
        login_user(User("ada"))
        return "logged in"

    admin = Admin(app, theme=Bootstrap4Theme())
    webhooks.init_admin(admin)
    browser = Browser(app, db)
    response = browser.get("/admin/webhooks/status/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")
    assert browser.get("/login").status_code == 200
    assert browser.get("/admin/webhooks/status/").status_code == 200


def test_flask_admin_is_imported_only_by_init_admin(tmp_path: t.Any) -> None:
    script = f"""
import sys
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
app = Flask("x", instance_path={str(tmp_path)!r})
app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", WEBHOOKS_QUEUE_URL="immediate://")
db = SQLAlchemy(app)
Webhooks(app, db=db)
import flask_webhooks.admin
assert not [m for m in sys.modules if m.startswith(("flask_admin", "wtforms"))], "imported"
"""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_a_missing_secret_key_is_a_startup_error(
    app: Flask, webhooks: Webhooks
) -> None:
    app.config["SECRET_KEY"] = None
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        webhooks.init_admin(Admin(app, theme=Bootstrap4Theme()))
    # An Admin bound to the app later is checked when its views are registered.
    late = Admin(theme=Bootstrap4Theme(), endpoint="late", url="/late")
    app.config["SECRET_KEY"] = "set-for-now"
    webhooks.init_admin(late, endpoint="late")
    app.config["SECRET_KEY"] = ""
    with pytest.raises(RuntimeError, match="SECRET_KEY"):
        late.init_app(app)
