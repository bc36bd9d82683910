"""A real admin session in Chromium, against a live server on 127.0.0.1.

The app runs with the ``memory://`` queue and embedded worker threads, so
deliveries are sent in the background exactly as under ``flask run``. The
browser (Debian's ``/usr/bin/chromium``, driven by Playwright) creates a
webhook through the form, the test commits model changes, the browser watches
the deliveries appear, retries a failed one and sends a test delivery.

``WEBHOOKS_SCREENSHOTS=1`` also saves the screenshots shown in
``docs/admin.rst`` to ``docs/_static/admin-*.png``.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import typing as t
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import models as m
from flask_webhooks import Webhooks
from flask_webhooks.signing import verify
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import Models

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = os.environ.get("WEBHOOKS_SCREENSHOTS") == "1"
STATIC = Path(__file__).resolve().parent.parent / "docs" / "_static"
#: Upper bound for waiting on background work (never a timing assertion).
PATIENCE = 20.0

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed"
    ),
]


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    # One database is enough here: the browser flow is about the UI.
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {
        "WEBHOOKS_QUEUE_URL": "memory://",
        "WEBHOOKS_EMBEDDED_WORKERS": 2,
        # A failed attempt ends as "failed": the retry comes from the UI.
        "WEBHOOKS_RETRY_SCHEDULE": [],
    }


def _buffered(app: t.Any) -> t.Any:
    """Read each response fully before sending it.

    When the browser drops a connection mid-response (a page refreshing
    itself while its assets load), Werkzeug's development server can leave
    a static file unclosed; buffering closes every response here.
    """

    def wsgi(environ: t.Any, start_response: t.Any) -> list[bytes]:
        iterable = app(environ, start_response)
        try:
            return [b"".join(iterable)]
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    return wsgi


class LiveServer:
    """The app served by Werkzeug in a thread on 127.0.0.1."""

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server
        from werkzeug.serving import WSGIRequestHandler

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args: t.Any, **kwargs: t.Any) -> None:
                pass

        self.server = make_server(
            "127.0.0.1", 0, _buffered(app), threaded=True, request_handler=QuietHandler
        )
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def live_app(
    app: Flask, db: SQLAlchemy, webhooks: Webhooks, models: Models
) -> t.Iterator[Flask]:
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme
    from flask_webhooks.worker.consumers import stop_embedded_workers

    # Open on purpose (a test on 127.0.0.1): no banner in the screenshots.
    app.config["WEBHOOKS_ADMIN_OPEN"] = True
    admin = Admin(app, name="Inventory", theme=Bootstrap4Theme(fluid=True))
    webhooks.init_admin(admin)
    yield app
    stop_embedded_workers(app.extensions["webhooks"])


def wait_until(check: t.Callable[[], t.Any], what: str) -> t.Any:
    deadline = time.monotonic() + PATIENCE
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_admin_session_in_a_real_browser(
    live_app: Flask,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect
    from playwright.sync_api import sync_playwright

    # Context for the screenshots: a webhook the receiver switched off.
    db.session.add(
        webhooks.Webhook(
            name="audit-log",
            models=["device"],
            on_delete=True,
            payload_url="http://127.0.0.1:9/audit",
            enabled=False,
            disabled_reason="the receiver answered 410 Gone",
            disabled_at=m.utcnow(),
            consecutive_failures=1,
            last_delivery_status=m.FAILED,
            last_delivery_at=m.utcnow(),
        )
    )
    db.session.commit()
    db.session.remove()

    problems: list[str] = []
    outside: list[str] = []

    with LiveServer(live_app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 640})

            def local_only(route: t.Any) -> None:
                host = urlsplit(route.request.url).hostname
                if host in ("127.0.0.1", "::1"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console: {msg.text}")
                    if msg.type == "error"
                    else None
                ),
            )

            def shot(name: str) -> None:
                if SCREENSHOTS:
                    STATIC.mkdir(parents=True, exist_ok=True)
                    page.screenshot(
                        path=str(STATIC / f"admin-{name}.png"), full_page=True
                    )

            def open_deliveries() -> bool:
                """Reload the list; False, so it can lead a wait condition."""
                page.goto(f"{server.url}/admin/webhooks/deliveries/")
                return False

            def statuses() -> list[str]:
                cells = page.locator("table.model-list .wh-status")
                return [str(text).strip() for text in cells.all_text_contents()]

            detail_status = page.locator("#wh-delivery-status")

            # 1. Create a webhook through the form. The first try has no
            #    event: the model's error shows beside the event checkboxes.
            page.goto(f"{server.url}/admin/webhooks/")
            expect(page.locator("a.wh-name", has_text="audit-log")).to_be_visible()
            page.get_by_role("link", name="Create", exact=True).click()
            page.fill("#name", "inventory-sync")
            page.fill("#payload_url", receiver.url)
            for field in ("#on_create", "#on_update", "#on_delete"):
                page.uncheck(field)
            page.click("#group-models .select2-container")
            page.keyboard.type("site")
            page.keyboard.press("Enter")
            page.fill("#conditions", '{"attr": "status", "value": "active"}')
            page.click("#wh-save")
            expect(page.locator("#on_create-error")).to_contain_text(
                "choose at least one event"
            )
            expect(page.locator(".wh-field-error")).to_have_count(1)
            shot("webhook-errors")

            page.check("#on_create")
            page.check("#on_update")
            page.click("#wh-generate-secret")
            expect(page.locator("#wh-generated")).to_be_visible()
            secret = page.locator("#wh-generated-value").inner_text()
            assert secret.startswith("whsec_")
            assert page.input_value("#new_secret") == secret
            page.select_option("#signature_scheme", "both")
            page.fill("#additional_headers", "X-Inventory: {{ data.name }}")
            page.click("#wh-save")
            created = page.locator(".alert-success", has_text="successfully created")
            expect(created).to_be_visible()
            expect(page.locator("a.wh-name", has_text="inventory-sync")).to_be_visible()
            assert secret not in page.content()

            # 2. Committed changes become deliveries, sent in the background.
            db.session.add_all(
                [models.Site(name=n) for n in ("alpha", "beta", "gamma")]
            )
            db.session.commit()
            db.session.remove()
            received = receiver.wait_for(3)
            assert sorted(r.headers["X-Inventory"] for r in received) == [
                "alpha",
                "beta",
                "gamma",
            ]
            for request in received:
                assert verify(secret, request.body, request.headers["X-Hook-Signature"])
            wait_until(
                lambda: open_deliveries() or statuses() == ["succeeded"] * 3,
                "three succeeded deliveries in the list",
            )

            # 3. The receiver fails: both deliveries of the next commit fail.
            receiver.respond(
                Answer(status=500, body=b"database unavailable"),
                Answer(status=503, body=b"maintenance"),
            )
            for site in db.session.scalars(
                sa.select(models.Site).where(models.Site.name.in_(["alpha", "beta"]))
            ):
                site.name = f"{site.name}-renamed"
            db.session.commit()
            db.session.remove()
            receiver.wait_for(5)
            wait_until(
                lambda: open_deliveries() or statuses()[:2] == ["failed", "failed"],
                "the failed deliveries in the list",
            )
            failed_row = page.locator("table.model-list tbody tr").first
            expect(failed_row).to_contain_text("HTTP 50")
            shot("deliveries")

            # 4. Retry one from its row and watch it succeed on its detail page.
            failed_row.locator("a.wh-detail-link").click()
            retried_url = page.url
            page.locator("button.wh-btn-retry").click()
            expect(
                page.locator(".alert", has_text="Retrying 1 delivery")
            ).to_be_visible()
            # The detail page refreshes itself while the delivery is queued.
            expect(detail_status).to_have_text("succeeded", timeout=PATIENCE * 1000)
            assert page.url == retried_url
            attempts = page.locator("tr.wh-attempt")
            expect(attempts).to_have_count(2)
            expect(attempts.nth(0)).to_contain_text("HTTP 50")
            expect(attempts.nth(1)).to_contain_text("HTTP 200")
            for header in ("X-Hook-Signature", "webhook-signature"):
                signature = page.locator("#wh-request tr", has_text=header)
                expect(signature.locator("td").nth(1)).to_have_text("<redacted>")
            expect(page.locator("#wh-body")).to_contain_text("-renamed")
            shot("delivery")

            # 5. Filter the list to the failed ones (the filter UI) and retry
            #    everything matching the filter.
            open_deliveries()
            page.get_by_role("link", name="Add Filter").click()
            page.locator("a.filter", has_text="Status").click()
            page.locator("#filter_form .select2-container").last.click()
            page.keyboard.type("failed")
            page.keyboard.press("Enter")
            expect(page.locator("#filter_form select.filter-val")).to_have_value(
                "failed"
            )
            page.click("#filter_form button[type=submit]")
            expect(page.locator("table.model-list tbody tr")).to_have_count(1)
            assert statuses() == ["failed"]
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#wh-retry-failed button")
            expect(
                page.locator(".alert", has_text="Retrying 1 delivery")
            ).to_be_visible()
            assert re.search(r"flt\d+_status_equals=failed", page.url)
            filtered = page.url
            wait_until(
                lambda: page.goto(filtered) and statuses() == [],
                "no failed delivery left",
            )
            assert len(receiver.wait_for(7)) == 7

            # 6. Send a test delivery from the webhook list.
            page.goto(f"{server.url}/admin/webhooks/")
            row = page.locator(
                "tr", has=page.locator("a.wh-name", has_text="inventory-sync")
            )
            row.locator("button.wh-btn-send_test").click()
            expect(page.locator("h5")).to_contain_text("test")
            expect(detail_status).to_have_text("succeeded", timeout=PATIENCE * 1000)
            test_request = receiver.wait_for(8)[7]
            payload = test_request.json()
            assert isinstance(payload, dict) and payload["event"] == "test"
            assert verify(
                secret, test_request.body, test_request.headers["X-Hook-Signature"]
            )
            page.goto(f"{server.url}/admin/webhooks/")
            expect(row.locator(".wh-status")).to_have_text("succeeded")
            shot("webhooks")
            row.locator("a.wh-name").click()
            expect(page.locator("#wh-secret-state")).to_have_text("set")
            expect(page.locator("#conditions")).to_have_value(
                '{\n  "attr": "status",\n  "value": "active"\n}'
            )
            assert secret not in page.content()
            shot("webhook-form")

            # 7. The status page: queue, workers, counts, disabled webhooks.
            page.goto(f"{server.url}/admin/webhooks/status/")
            expect(page.locator("#wh-backend")).to_have_text("memory")
            expect(page.locator("#wh-count-succeeded td").nth(1)).to_have_text("6")
            expect(page.locator("#wh-count-failed td").nth(1)).to_have_text("0")
            expect(page.locator("#wh-disabled")).to_contain_text(
                "the receiver answered 410 Gone"
            )
            expect(page.locator("#wh-workers")).to_contain_text(
                "running: 2 threads alive"
            )
            shot("status")
        finally:
            browser.close()

    assert outside == []
    assert problems == []


#: Bootstrap's fixed container is 1140 px wide from 1200 px up: the lists
#: must fit it at common laptop and desktop widths.
WIDTHS = (1280, 1600)

FITS = """(sel) => {
  const table = document.querySelector(sel);
  const box = table.closest('.table-responsive') || table.parentElement;
  return {scroll: box.scrollWidth, client: box.clientWidth,
          page: document.documentElement.scrollWidth,
          viewport: document.documentElement.clientWidth};
}"""


@pytest.fixture
def fixed_live_app(
    app: Flask, db: SQLAlchemy, webhooks: Webhooks, models: Models
) -> t.Iterator[Flask]:
    """The admin as the example app sets it up: a fixed-width container and
    the webhook dashboard as its home page."""
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme
    from flask_webhooks.admin import WebhooksIndexView

    admin = Admin(
        app, name="Inventory", theme=Bootstrap4Theme(), index_view=WebhooksIndexView()
    )
    webhooks.init_admin(admin)
    yield app


@pytest.mark.parametrize("config", [{"WEBHOOKS_QUEUE_URL": "immediate://"}])
def test_lists_fit_the_page_and_the_home_page_is_a_dashboard(
    fixed_live_app: Flask,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    W = webhooks.Webhook
    db.session.add_all(
        [
            W(
                name="crm-inventory-synchronisation",
                models=["site", "device", "tenant", "tag"],
                on_create=True,
                on_update=True,
                on_delete=True,
                payload_url=f"{dead}/api/v2/hooks/inventory?source=netbox&format=full",
                secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                signature_scheme="both",
            ),
            W(
                name="inventory-sync",
                models=["site"],
                on_create=True,
                on_update=True,
                payload_url=receiver.url,
                secret="s3cret",
            ),
            W(
                name="audit-log",
                models=["device"],
                on_delete=True,
                payload_url=f"{dead}/audit",
                enabled=False,
                disabled_reason="3 consecutive failed deliveries "
                "(WEBHOOKS_DISABLE_AFTER_FAILURES = 3)",
                disabled_at=m.utcnow(),
                consecutive_failures=3,
                last_delivery_status=m.FAILED,
                last_delivery_at=m.utcnow(),
            ),
        ]
    )
    db.session.commit()
    receiver.respond(Answer(status=503, body=b"maintenance"))
    for name in ("Amsterdam 1", "Berlin 1", "Copenhagen 1"):
        db.session.add(models.Site(name=name))
        db.session.commit()
    db.session.remove()

    problems: list[str] = []
    with LiveServer(fixed_live_app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 800})
                page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
                for path in ("/admin/webhooks/", "/admin/webhooks/deliveries/"):
                    page.goto(f"{server.url}{path}")
                    expect(page.locator("table.model-list")).to_be_visible()
                    size = page.evaluate(FITS, "table.model-list")
                    assert size["scroll"] <= size["client"], (width, path, size)
                    assert size["page"] <= size["viewport"], (width, path, size)
                page.goto(f"{server.url}/admin/")
                expect(page.locator("#wh-dashboard")).to_be_visible()
                expect(page.locator("#wh-dash-webhooks .wh-stat")).to_have_text("2 / 3")
                attention = page.locator("#wh-dash-attention")
                expect(attention).to_contain_text("audit-log")
                expect(attention).to_contain_text("crm-inventory-synchronisation")
                expect(page.locator("tr.wh-dash-delivery")).to_have_count(6)
                for sel in ("#wh-dash-attention table", "#wh-dash-recent table"):
                    size = page.evaluate(FITS, sel)
                    assert size["page"] <= size["viewport"], (width, sel, size)
                if SCREENSHOTS and width == WIDTHS[0]:
                    page.screenshot(path=str(STATIC / "admin-home.png"), full_page=True)
                page.locator(
                    "#wh-dash-attention a.wh-name", has_text="audit-log"
                ).click()
                expect(page.locator("#name")).to_have_value("audit-log")
                page.close()
        finally:
            browser.close()
    assert problems == []
