"""The example app: its JSON API, admin and demo receiver, end to end over real
HTTP, and the server ``make demo`` starts, as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from example_app import create_app
from example_app import DEMO_WEBHOOK_SECRET
from example_app.extensions import db
from example_app.extensions import webhooks
from example_app.models import ReceivedWebhook
from example_app.models import Site
from example_app.receiver import check_signatures
from example_app.seed import DEMO_WEBHOOK
from example_app.seed import init_db
from flask import Flask
from flask_webhooks.signing import sign
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent


class LiveApp:
    """The example app served on 127.0.0.1 by a threaded server."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        app.config["DEMO_RECEIVER_URL"] = f"{self.url}/receiver/"
        self.http = requests.Session()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> LiveApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.http.close()
        self.server.shutdown()
        self.server.server_close()

    def api(self, method: str, path: str, **kwargs: t.Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/api{path}", **kwargs)

    def received(self) -> list[dict[str, t.Any]]:
        response = self.http.get(f"{self.url}/receiver/", params={"format": "json"})
        assert response.status_code == 200
        return t.cast(list[dict[str, t.Any]], response.json())

    def wait_received(
        self, count: int, timeout: float = 20.0
    ) -> list[dict[str, t.Any]]:
        """Poll the receiver until ``count`` entries are there (embedded workers)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.received()
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            time.sleep(0.05)


def _make_app(database_url: str, tmp_path: Path, **config: t.Any) -> Flask:
    settings: dict[str, t.Any] = {
        "TESTING": True,
        "SECRET_KEY": "test",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SQLALCHEMY_DATABASE_URI": database_url,
        "WEBHOOKS_QUEUE_URL": "immediate://",
        "WEBHOOKS_TIMEOUT": 10,
    }
    settings.update(config)
    return create_app(settings)


def _teardown(app: Flask) -> None:
    with app.app_context():
        state = app.extensions["webhooks"]
        if state.workers:
            state.workers.stop()
        state.transport().close()
        db.session.remove()
        if db.engine.dialect.name != "sqlite":
            db.drop_all()
        db.engine.dispose()


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> t.Iterator[LiveApp]:
    app = _make_app(database_url, tmp_path)
    server = LiveApp(app)
    with app.app_context():
        init_db()
    server.start()
    yield server
    server.stop()
    _teardown(app)


def test_api_create_update_delete_arrive_verified(live: LiveApp) -> None:
    created = live.api("POST", "/sites", json={"name": "Berlin 1", "tags": ["prod"]})
    assert created.status_code == 201, created.text
    site = created.json()
    assert site["slug"] == "berlin-1"
    assert site["status"] == {"value": "active", "label": "Active"}
    assert [tag["slug"] for tag in site["tags"]] == ["prod"]
    assert created.headers["Location"].endswith(f"/api/sites/{site['id']}")

    updated = live.api("PATCH", f"/sites/{site['id']}", json={"status": "planned"})
    assert updated.status_code == 200, updated.text
    assert updated.json()["status"]["value"] == "planned"
    deleted = live.api("DELETE", f"/sites/{site['id']}")
    assert deleted.status_code == 204

    entries = live.received()
    assert [
        (e["event"], e["model"], e["object_id"], e["verified"]) for e in entries
    ] == [
        ("deleted", "site", str(site["id"]), True),
        ("updated", "site", str(site["id"]), True),
        ("created", "site", str(site["id"]), True),
    ]
    assert set(entries[0]) == {
        "id",
        "received_at",
        "method",
        "event",
        "model",
        "object_id",
        "delivery_id",
        "attempt",
        "sequence",
        "verified",
        "verification",
        "headers",
        "body",
    }
    assert entries[0]["received_at"] >= entries[1]["received_at"]


def test_device_api_and_site_cascade(live: LiveApp) -> None:
    site = live.api("POST", "/sites", json={"name": "Oslo", "slug": "osl1"}).json()
    device = live.api(
        "POST",
        "/devices",
        json={"name": "osl1-sw1", "site_id": site["id"], "serial": "X1"},
    )
    assert device.status_code == 201, device.text
    assert device.json()["site"] == {"id": site["id"], "name": "Oslo", "slug": "osl1"}
    device_id = device.json()["id"]
    patched = live.api("PATCH", f"/devices/{device_id}", json={"serial": "X2"})
    assert patched.json()["serial"] == "X2"
    # Deleting the site deletes its device too: one event each.
    assert live.api("DELETE", f"/sites/{site['id']}").status_code == 204

    events = [
        (e["event"], e["model"], e["verified"]) for e in reversed(live.received())
    ]
    assert events[:3] == [
        ("created", "site", True),
        ("created", "device", True),
        ("updated", "device", True),
    ]
    assert sorted(events[3:]) == [
        ("deleted", "device", True),
        ("deleted", "site", True),
    ]


def test_received_payload_is_the_netbox_payload(live: LiveApp) -> None:
    site = live.api("POST", "/sites", json={"name": "Lyon", "tenant_id": 1}).json()
    with live.app.app_context():
        entry = db.session.scalars(sa.select(ReceivedWebhook)).one()
        payload = json.loads(entry.body)
        assert list(payload) == [
            "event",
            "timestamp",
            "model",
            "username",
            "request_id",
            "data",
            "snapshots",
        ]
        assert payload["data"]["tenant"] == {
            "id": 1,
            "name": "Acme Corp",
            "slug": "acme",
        }
        assert payload["data"]["id"] == site["id"]
        assert payload["snapshots"]["postchange"]["name"] == "Lyon"
        # The demo webhook signs with both schemes; the receiver checked both.
        assert "X-Hook-Signature" in entry.headers
        assert "webhook-signature" in entry.headers
        assert entry.verification.splitlines() == [
            "X-Hook-Signature: valid",
            "Standard Webhooks: valid",
        ]


def _admin_form(live: LiveApp, url: str, **fields: t.Any) -> requests.Response:
    """Submit a Flask-Admin form like a browser: GET it for the CSRF token, POST."""
    form = live.http.get(url)
    assert form.status_code == 200
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', form.text)
    assert token is not None, "the admin form has a CSRF token"
    return live.http.post(
        url, data={"csrf_token": token.group(1), **fields}, allow_redirects=False
    )


def test_admin_changes_arrive_verified(live: LiveApp) -> None:
    saved = _admin_form(
        live,
        f"{live.url}/admin/inventory_site/new/",
        name="Vienna 1",
        slug="vie1",
        status="planned",  # a select: the form sends the enum's name
        tenant="2",
        tags=["1", "3"],
        description="",
    )
    assert saved.status_code == 302, saved.text
    (entry,) = live.received()
    assert (entry["event"], entry["model"], entry["verified"]) == (
        "created",
        "site",
        True,
    )
    with live.app.app_context():
        received = db.session.scalars(sa.select(ReceivedWebhook)).one()
        data = json.loads(received.body)["data"]
    assert data["status"] == {"value": "planned", "label": "Planned"}
    assert data["tenant"]["slug"] == "globex"
    assert [tag["slug"] for tag in data["tags"]] == ["lab", "prod"]

    site_id = entry["object_id"]
    edit_page = live.http.get(f"{live.url}/admin/inventory_site/edit/?id={site_id}")
    assert '<option selected value="planned">Planned</option>' in edit_page.text, (
        "the edit form shows the current status, so saving does not change it"
    )
    edited = _admin_form(
        live,
        f"{live.url}/admin/inventory_site/edit/?id={site_id}",
        name="Vienna 1",
        slug="vie1",
        status="active",
        tenant="2",
        tags=["1"],
        description="",
    )
    assert edited.status_code == 302, edited.text
    entries = live.received()
    assert [(e["event"], e["verified"]) for e in entries] == [
        ("updated", True),
        ("created", True),
    ], "one event for the status and tags change"

    # Without the CSRF token nothing is saved, and nothing is sent.
    refused = live.http.post(
        f"{live.url}/admin/inventory_tag/new/", data={"name": "Evil", "slug": "evil"}
    )
    assert refused.status_code == 200
    assert "Evil" not in live.http.get(f"{live.url}/admin/inventory_tag/").text
    assert len(live.received()) == 2


def test_admin_has_the_webhook_screens(live: LiveApp) -> None:
    index = live.http.get(f"{live.url}/admin/")
    assert index.status_code == 200
    assert "/admin/inventory_site/" in index.text
    assert "/admin/webhooks/" in index.text
    hooks = live.http.get(f"{live.url}/admin/webhooks/")
    assert hooks.status_code == 200
    assert DEMO_WEBHOOK in hooks.text
    live.api("POST", "/sites", json={"name": "Nice"})
    log = live.http.get(f"{live.url}/admin/webhooks/deliveries/")
    assert log.status_code == 200
    assert "succeeded" in log.text


def test_receiver_page_shows_entries(live: LiveApp) -> None:
    live.api("POST", "/sites", json={"name": "Paris"})
    page = live.http.get(f"{live.url}/receiver/")
    assert page.status_code == 200
    assert "verified" in page.text
    assert "created" in page.text
    cleared = live.http.post(f"{live.url}/receiver/clear")
    assert cleared.status_code == 200
    assert live.received() == []


def test_receiver_json_has_what_the_page_shows(live: LiveApp) -> None:
    site = live.api("POST", "/sites", json={"name": "Oslo"}).json()
    [entry] = live.received()
    with live.app.app_context():
        delivery_id, sequence = db.session.execute(
            sa.select(webhooks.Delivery.id, webhooks.Delivery.sequence)
        ).one()
    assert entry["delivery_id"] == str(delivery_id)
    assert (entry["method"], entry["attempt"], entry["sequence"]) == (
        "POST",
        "1",
        str(sequence),
    )
    assert entry["verification"] == [
        "X-Hook-Signature: valid",
        "Standard Webhooks: valid",
    ]
    headers = entry["headers"]
    assert headers["X-Webhook-ID"] == entry["delivery_id"]
    assert headers["Content-Type"] == "application/json"
    assert {"X-Hook-Signature", "webhook-id", "webhook-signature"} <= set(headers)
    payload = json.loads(entry["body"])
    assert (payload["event"], payload["data"]["id"]) == ("created", site["id"])
    page = live.http.get(f"{live.url}/receiver/")
    assert entry["delivery_id"] in page.text


def test_receiver_shows_the_sequence_header(live: LiveApp) -> None:
    body = b'{"event": "updated", "model": "site", "data": {"id": 5}}'
    client = live.app.test_client()
    answer = client.post(
        "/receiver/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hook-Signature": sign(DEMO_WEBHOOK_SECRET, body),
            "X-Webhook-ID": "d-1",
            "X-Webhook-Attempt": "2",
            "X-Webhook-Sequence": "42",
        },
    )
    assert answer.status_code == 200, answer.text
    [entry] = client.get("/receiver/?format=json").get_json()
    assert (entry["delivery_id"], entry["attempt"], entry["sequence"]) == (
        "d-1",
        "2",
        "42",
    )
    assert entry["headers"]["X-Webhook-Sequence"] == "42"
    assert entry["body"] == body.decode()
    assert "sequence 42" in client.get("/receiver/").text


def test_favicon_is_served(live: LiveApp) -> None:
    icon = live.http.get(f"{live.url}/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["Content-Type"].startswith("image/")
    assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO file


def test_api_errors_say_what_is_wrong(live: LiveApp) -> None:
    missing = live.api("POST", "/sites", json={"status": "active"})
    assert missing.status_code == 400
    assert missing.json()["errors"] == {"name": ["Missing data for required field."]}
    tag = live.api("POST", "/sites", json={"name": "X", "tags": ["nope"]})
    assert tag.json()["errors"] == {"tags": ["unknown tag slug(s): nope"]}
    status = live.api("POST", "/sites", json={"name": "X", "status": "broken"})
    assert "status" in status.json()["errors"]
    not_json = live.api("POST", "/sites", data="name=X")
    assert not_json.status_code == 400
    assert live.api("PATCH", "/sites/999", json={"name": "Y"}).status_code == 404
    dup = live.api("POST", "/sites", json={"name": "Amsterdam 1"})
    assert dup.status_code == 409
    device = live.api("POST", "/devices", json={"name": "d", "site_id": 999})
    assert device.json()["errors"] == {"site_id": ["no site with id 999"]}
    assert live.received() == [], "failed requests commit nothing, send nothing"


def test_receiver_rejects_bad_signatures(live: LiveApp) -> None:
    body = b'{"event": "created", "model": "site", "data": {"id": 7}}'
    bad = live.http.post(
        f"{live.url}/receiver/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hook-Signature": sign("wrong", body),
        },
    )
    assert bad.status_code == 401
    good = live.http.post(
        f"{live.url}/receiver/",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hook-Signature": sign(DEMO_WEBHOOK_SECRET, body),
        },
    )
    assert good.status_code == 200
    unsigned = live.http.post(f"{live.url}/receiver", data=body)
    assert unsigned.status_code == 401
    assert [(e["object_id"], e["verified"]) for e in live.received()] == [
        ("7", False),
        ("7", True),
        ("7", False),
    ]


def test_check_signatures_requires_every_present_scheme() -> None:
    from flask_webhooks.signing import standard_headers

    body = b"{}"
    both = {"X-Hook-Signature": sign(DEMO_WEBHOOK_SECRET, body)}
    both.update(standard_headers(DEMO_WEBHOOK_SECRET, "msg-1", body))
    assert check_signatures(DEMO_WEBHOOK_SECRET, both, body)[0] is True
    tampered = dict(both, **{"X-Hook-Signature": sign("other", body)})
    ok, notes = check_signatures(DEMO_WEBHOOK_SECRET, tampered, body)
    assert ok is False
    assert notes == ["X-Hook-Signature: INVALID", "Standard Webhooks: valid"]
    assert check_signatures(DEMO_WEBHOOK_SECRET, {}, body) == (
        False,
        ["no signature headers"],
    )


def test_init_db_follows_the_port(database_url: str, tmp_path: Path) -> None:
    app = _make_app(database_url, tmp_path)
    try:
        with app.app_context():
            app.config["DEMO_RECEIVER_URL"] = "http://127.0.0.1:5000/receiver/"
            first = init_db()
            assert first[0] == "seeded tenants, tags, sites and devices"
            assert webhooks.Delivery.query.count() == 0, "seeding sends nothing"  # type: ignore[attr-defined]
            app.config["DEMO_RECEIVER_URL"] = "http://127.0.0.1:5001/receiver/"
            assert init_db() == [
                f"webhook {DEMO_WEBHOOK!r} now sends to http://127.0.0.1:5001/receiver/ "
                "(was http://127.0.0.1:5000/receiver/)"
            ]
            assert init_db() == []
            hook = db.session.scalars(sa.select(webhooks.Webhook)).one()
            hook.payload_url = "https://hooks.example.com/x"
            db.session.commit()
            app.config["DEMO_RECEIVER_URL"] = "http://127.0.0.1:5002/receiver/"
            assert init_db() == [], "a URL someone changed is left alone"
    finally:
        _teardown(app)


def test_embedded_workers_start_on_first_change(tmp_path: Path) -> None:
    """The ``make demo`` setup: SQLite queue, embedded workers started lazily."""
    app = _make_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}",
        tmp_path,
        WEBHOOKS_QUEUE_URL=None,
        WEBHOOKS_EMBEDDED_WORKERS=2,
    )
    live = LiveApp(app)
    try:
        with app.app_context():
            init_db()
        live.start()
        state = app.extensions["webhooks"]
        assert Path(app.instance_path, "webhooks-queue.sqlite").exists()
        assert state.workers is None, "no worker threads before anything is enqueued"
        site = live.api("POST", "/sites", json={"name": "Rome"}).json()
        entries = live.wait_received(1)
        assert [(e["event"], e["object_id"], e["verified"]) for e in entries] == [
            ("created", str(site["id"]), True)
        ]
        assert state.workers, "the first enqueue started the embedded workers"
        live.api("DELETE", f"/sites/{site['id']}")
        assert [e["event"] for e in live.wait_received(2)] == ["deleted", "created"]
    finally:
        live.stop()
        _teardown(app)


def test_demo_starts_the_embedded_workers_before_serving(tmp_path: Path) -> None:
    """``make demo``: workers run before the first request, the banner says so."""
    from example_app.__main__ import start_workers

    app = _make_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}",
        tmp_path,
        WEBHOOKS_QUEUE_URL=None,
        WEBHOOKS_EMBEDDED_WORKERS=2,
    )
    live = LiveApp(app)
    try:
        live.start()
        state = app.extensions["webhooks"]
        with app.app_context():
            init_db()
            assert start_workers(app) == "sqlite, 2 embedded worker threads running"
            assert state.workers.running, "running before any request"
            # A change outside any request: the running threads send it.
            db.session.add(Site(name="Lisbon", slug="lisbon"))
            db.session.commit()
        entries = live.wait_received(1)
        assert [(e["event"], e["verified"]) for e in entries] == [("created", True)]
    finally:
        live.stop()
        _teardown(app)


def test_demo_banner_without_embedded_workers(tmp_path: Path) -> None:
    from example_app.__main__ import start_workers

    app = _make_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}",
        tmp_path,
        WEBHOOKS_QUEUE_URL=None,
        WEBHOOKS_EMBEDDED_WORKERS=0,
    )
    try:
        assert start_workers(app) == (
            "sqlite, embedded workers off (WEBHOOKS_EMBEDDED_WORKERS = 0): "
            "run `flask --app example_app webhooks worker` to send"
        )
        assert not app.extensions["webhooks"].workers
    finally:
        _teardown(app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_demo_server_subprocess(tmp_path: Path) -> None:
    """What ``make demo`` runs: a change through the API arrives verified."""
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("WEBHOOKS_", "DATABASE_"))
    }
    env.update(PORT=str(port), INSTANCE_PATH=str(tmp_path / "instance"), SECRET_KEY="t")
    proc = subprocess.Popen(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with requests.Session() as http:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.communicate()[0]
                try:
                    if http.get(f"{base}/api/sites", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "the demo server did not come up"
                time.sleep(0.1)
            created = http.post(
                f"{base}/api/sites", json={"name": "Madrid"}, timeout=10
            )
            assert created.status_code == 201, created.text
            site_id = str(created.json()["id"])
            deadline = time.monotonic() + 60
            while True:
                entries = http.get(f"{base}/receiver/?format=json", timeout=10).json()
                if any(
                    e["event"] == "created"
                    and e["object_id"] == site_id
                    and e["verified"]
                    for e in entries
                ):
                    break
                assert time.monotonic() < deadline, (
                    f"nothing verified arrived: {entries}"
                )
                time.sleep(0.1)
        assert (tmp_path / "instance" / "example.sqlite").exists()
        assert (tmp_path / "instance" / "webhooks-queue.sqlite").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"the demo did not stop on Ctrl-C:\n{output}")
    assert proc.returncode == 0, output
    assert "queue:     sqlite, 2 embedded worker threads running" in output
    assert f"{base}/admin/" in output
    assert f"{base}/receiver/" in output
    assert "curl" in output
    assert output.rstrip().endswith("stopped")
