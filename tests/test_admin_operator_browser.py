"""The operator tools in Chromium: charts with data, the form's preview with
errors beside the fields, a secret rotation with its state, and the replay
confirmation.

Same set-up as ``test_admin_browser.py`` (live server on 127.0.0.1, memory
queue with embedded workers, Debian's chromium driven by Playwright).
``WEBHOOKS_SCREENSHOTS=1`` saves ``docs/_static/admin-status-charts.png``,
``admin-webhook-preview.png``, ``admin-webhook-rotation.png`` and
``admin-replay.png``.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from functools import partial
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import verify
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver
from standardwebhooks.webhooks import Webhook as StandardWebhook

from tests.conftest import Models
from tests.test_admin_browser import CHROMIUM
from tests.test_admin_browser import CHROMIUM_ARGS
from tests.test_admin_browser import LiveServer
from tests.test_admin_browser import PATIENCE
from tests.test_admin_browser import pytestmark as browser_marks
from tests.test_admin_browser import SCREENSHOTS
from tests.test_admin_browser import STATIC
from tests.test_admin_browser import wait_until

pytestmark = browser_marks


@pytest.fixture
def database_url(tmp_path: t.Any) -> str:
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {
        "WEBHOOKS_QUEUE_URL": "memory://",
        "WEBHOOKS_EMBEDDED_WORKERS": 2,
        "WEBHOOKS_RETRY_SCHEDULE": [],
    }


@pytest.fixture
def live(app: Flask, db: SQLAlchemy, webhooks: Webhooks) -> t.Iterator[LiveServer]:
    from flask_admin import Admin
    from flask_admin.theme import Bootstrap4Theme
    from flask_webhooks.worker.consumers import stop_embedded_workers

    webhooks.init_admin(Admin(app, name="Inventory", theme=Bootstrap4Theme(fluid=True)))
    with LiveServer(app) as server:
        yield server
    stop_embedded_workers(app.extensions["webhooks"])


@pytest.fixture
def page(live: LiveServer) -> t.Iterator[t.Any]:
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 800})

            def local_only(route: t.Any) -> None:
                if urlsplit(route.request.url).hostname in ("127.0.0.1", "::1"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", local_only)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: problems.append(m.text) if m.type == "error" else None,
            )
            yield page
        finally:
            browser.close()
    assert outside == []
    assert problems == []


def shot(page: t.Any, name: str, selector: str | None = None) -> None:
    if not SCREENSHOTS:
        return
    STATIC.mkdir(parents=True, exist_ok=True)
    path = str(STATIC / f"admin-{name}.png")
    if selector:
        page.locator(selector).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=True)


def make_traffic(
    db: SQLAlchemy, models: Models, receiver: RecordingReceiver, failures: int
) -> None:
    """Sites committed and delivered for real; the first ``failures`` fail."""
    receiver.respond(*[Answer(status=500, body=b"down")] * failures)
    sites = [models.Site(name=f"site-{i}") for i in range(8)]
    db.session.add_all(sites)
    db.session.commit()
    db.session.remove()


def seed_history(webhooks: Webhooks, db: SQLAlchemy, hook_ids: t.Sequence[int]) -> int:
    """Earlier traffic (1 to 23 hours ago, a failure burst 6 hours ago) written
    straight into the tables; returns how many deliveries."""
    from flask_webhooks import models as m

    D = webhooks.Delivery.__table__  # type: ignore[attr-defined]
    A = webhooks.DeliveryAttempt.__table__  # type: ignore[attr-defined]
    now = m.utcnow()
    deliveries, attempts = [], []
    # Each entry inside the hourly bucket ``ago`` hours before the current
    # one, so all 23 earlier buckets have data at any minute of the hour.
    hour = now.replace(minute=0, second=0, microsecond=0)
    for ago in range(1, 24):
        for hook_id in hook_ids:
            for n in range(3 + (ago * 7 + hook_id) % 9):
                failed = (ago in (6, 7) and n % 2 == 0) or n == 5
                at = hour - dt.timedelta(hours=ago) + dt.timedelta(minutes=1 + n)
                delivery_id = m.new_id()
                deliveries.append(
                    dict(
                        id=delivery_id,
                        webhook_id=hook_id,
                        webhook_name=f"hook-{hook_id}",
                        event="created",
                        model="site",
                        object_id=str(n),
                        status="failed" if failed else "succeeded",
                        attempts=1,
                        created_at=at,
                        updated_at=at,
                        body=b"{}",
                    )
                )
                attempts.append(
                    dict(
                        delivery_id=delivery_id,
                        number=1,
                        started_at=at,
                        duration_ms=20.0
                        + (ago * 37 + n * 11) % 90
                        + (400 if failed else 0),
                        status_code=503 if failed else 200,
                    )
                )
    with db.engine.begin() as conn:
        conn.execute(sa.insert(D), deliveries)
        conn.execute(sa.insert(A), attempts)
    return len(deliveries)


def test_charts_render_with_data(
    page: t.Any,
    live: LiveServer,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect

    ids = [make_hook(name="inventory-sync").id]
    ids.append(make_hook(name="audit-log", models=["site"], on_update=False).id)
    db.session.remove()
    earlier = seed_history(webhooks, db, ids)
    make_traffic(db, models, receiver, failures=3)
    D = webhooks.Delivery

    def finished() -> bool:
        count = db.session.scalar(
            sa.select(sa.func.count()).where(D.status.in_(["succeeded", "failed"]))
        )
        db.session.remove()  # a fresh snapshot next time (and no SQLite lock)
        return count == 16 + earlier

    wait_until(finished, "16 finished deliveries")
    db.session.remove()

    page.goto(f"{live.url}/admin/webhooks/status/")
    chart = page.locator("svg#wh-chart-deliveries")
    expect(chart).to_be_visible()
    bars = chart.locator("g.wh-bar")
    expect(bars).to_have_count(24)
    current = bars.nth(23)
    assert current.get_attribute("data-total") == "16"
    expect(current.locator("title")).to_contain_text("13 succeeded, 3 failed")
    # Segments differ by pattern, not only colour; the legend names them.
    fills = {seg.get_attribute("fill") for seg in current.locator("rect.wh-seg").all()}
    assert fills == {
        "url(#wh-chart-deliveries-succeeded)",
        "url(#wh-chart-deliveries-failed)",
    }
    succeeded = db.session.scalar(
        sa.select(sa.func.count()).where(D.status == "succeeded")
    )
    db.session.remove()
    expect(chart.locator("g.wh-legend-item text").first).to_have_text(
        f"succeeded {succeeded}"
    )
    box = current.locator("rect.wh-seg").first.bounding_box()
    assert box is not None and box["height"] > 10
    # Hovering shows the native tooltip source: the <title> of the bar.
    current.hover()
    expect(page.locator("#wh-latency-summary")).to_contain_text(
        f"{16 + earlier} attempts"
    )
    assert page.locator("svg#wh-chart-latency g.wh-point-p95").count() == 24
    rows = page.locator("tr.wh-rate-row")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("%")
    shot(page, "status-charts")

    page.click("#wh-window-7d")
    expect(page.locator("svg#wh-chart-deliveries g.wh-bar")).to_have_count(168)
    expect(page.locator("#wh-window-7d")).to_have_attribute("aria-current", "page")

    page.goto(f"{live.url}/admin/webhooks/")
    spark = page.locator("svg.wh-spark").first
    expect(spark).to_be_visible()
    expect(page.locator(".wh-spark-totals").first).to_contain_text("failed")
    row = page.locator("tr", has=page.locator("a.wh-name", has_text="inventory-sync"))
    row.locator("a.wh-name").click()
    expect(page.locator("svg#wh-chart-webhook")).to_be_visible()
    expect(page.locator("tr.wh-recent-attempt")).to_have_count(20)
    # The newest first: the live attempts of this hour, some of them failed.
    expect(page.locator("tr.wh-recent-attempt").first).to_contain_text("created site")
    expect(page.locator("#wh-recent-attempts")).to_contain_text("HTTP 500")
    shot(page, "webhook-activity", "#wh-activity")


def test_preview_shows_the_request_and_errors_beside_fields(
    page: t.Any,
    live: LiveServer,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect

    hook = make_hook(name="inventory-sync", secret="stored-secret")
    site = models.Site(name="Lisbon")
    db.session.add(site)
    db.session.commit()
    hook_id, site_id = hook.id, site.id
    db.session.remove()  # no read transaction while the worker writes (SQLite)
    receiver.wait_for(1)

    page.goto(f"{live.url}/admin/webhooks/edit/?id={hook_id}")
    page.fill("#additional_headers", "X-Site: {{ data.name }}")
    page.fill(
        "#body_template", '{"site": {{ data.name|tojson }}, "event": "{{ event }}"}'
    )
    page.select_option("#preview_model", "site")
    page.fill("#preview_id", str(site_id))
    page.click("#wh-preview-button")
    output = page.locator("#wh-preview-output")
    expect(output).to_be_visible()
    expect(page.locator("#wh-preview-verdict")).to_contain_text("would fire")
    expect(page.locator("#wh-preview-body")).to_contain_text('"site": "Lisbon"')
    expect(page.locator('tr[data-header="X-Site"] td').nth(1)).to_have_text("Lisbon")
    signature = (
        page.locator('tr[data-header="X-Hook-Signature"] td').nth(1).inner_text()
    )
    body = b'{"site": "Lisbon", "event": "updated"}'
    assert verify("stored-secret", body, signature)
    assert "stored-secret" not in page.content()
    page.locator("#wh-preview").scroll_into_view_if_needed()
    shot(page, "webhook-preview", "#wh-preview")

    # Errors appear beside their fields; nothing was saved or sent.
    page.fill("#body_template", "{{ data.name.nope() }}")
    page.fill("#conditions", '{"attr": "name", "op": "bogus", "value": 1}')
    page.click("#wh-preview-button")
    expect(page.locator("#body_template-preview-error")).to_be_visible()
    expect(page.locator("#conditions-preview-error")).to_contain_text("bogus")
    expect(page.locator("#wh-preview-verdict")).to_contain_text("would not fire")
    page.fill("#preview_id", "999")
    page.click("#wh-preview-button")
    expect(page.locator("#preview_id-preview-error")).to_contain_text(
        "no site with id 999"
    )
    assert len(receiver.requests) == 1
    db.session.remove()
    assert db.session.get(webhooks.Webhook, hook_id).body_template == ""  # type: ignore[union-attr]


def test_rotation_state_in_the_admin(
    page: t.Any,
    live: LiveServer,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect

    old = generate_secret()
    hook = make_hook(name="inventory-sync", secret=old, signature_scheme="standard")
    hook_id = hook.id
    db.session.remove()

    page.goto(f"{live.url}/admin/webhooks/edit/?id={hook_id}")
    expect(page.locator("#wh-rotation-state")).to_have_count(0)
    page.click("#wh-rotate-generate")
    expect(page.locator("#wh-rotate-generated")).to_be_visible()
    new = page.locator("#wh-rotate-generated-value").inner_text()
    assert new.startswith("whsec_") and page.input_value("#rotate_secret") == new
    page.fill("#overlap_hours", "6")
    page.click("#wh-rotate-button")
    expect(page.locator(".alert-success")).to_contain_text(
        "carry signatures with the old and the new secret until"
    )
    state = page.locator("#wh-rotation-state")
    expect(state).to_contain_text("rotating: switches at")
    expect(state).to_contain_text("a signature with each secret")
    content = page.content()
    assert old not in content and new not in content
    shot(page, "webhook-rotation", ".card:has(#wh-rotation-state)")

    page.goto(f"{live.url}/admin/webhooks/")
    expect(page.locator(".wh-rotating")).to_contain_text("rotating: switches at")

    db.session.add(models.Site(name="Porto"))
    db.session.commit()
    db.session.remove()
    (request,) = receiver.wait_for(1, timeout=PATIENCE)
    for secret in (old, new):
        StandardWebhook(secret).verify(request.body, dict(request.headers))


def test_replay_confirmation_shows_the_count_then_resends(
    page: t.Any,
    live: LiveServer,
    db: SQLAlchemy,
    models: Models,
    webhooks: Webhooks,
    make_hook: t.Any,
    receiver: RecordingReceiver,
) -> None:
    from playwright.sync_api import expect

    hook_id = make_hook(name="inventory-sync").id
    make_hook(name="audit-log", on_update=False)
    D = webhooks.Delivery

    def succeeded(count: int) -> list[t.Any]:
        rows = list(db.session.scalars(sa.select(D)))
        db.session.remove()  # a fresh snapshot next time (and no SQLite lock)
        done = len(rows) == count and all(d.status == "succeeded" for d in rows)
        return rows if done else []

    db.session.add_all([models.Site(name="Lisbon"), models.Site(name="Porto")])
    db.session.commit()
    lisbon_id = db.session.scalar(sa.select(models.Site.id).filter_by(name="Lisbon"))
    db.session.remove()
    wait_until(partial(succeeded, 4), "4 succeeded deliveries")
    for count, name in ((5, "Lisbon 2"), (6, "Lisbon 3")):  # later events, one object
        db.session.get(models.Site, lisbon_id).name = name  # type: ignore[union-attr]
        db.session.commit()
        db.session.remove()
        wait_until(partial(succeeded, count), f"{count} succeeded deliveries")
    rows = succeeded(6)
    mine = sorted(
        (d for d in rows if d.webhook_id == hook_id), key=lambda d: d.sequence
    )
    assert len(mine) == 4
    first = receiver.wait_for(6, timeout=PATIENCE)
    sent = len(first)

    page.goto(f"{live.url}/admin/webhooks/deliveries/?flt0_webhook_equals={hook_id}")
    page.click("#wh-replay")
    expect(page.locator("h2")).to_have_text("Replay deliveries")
    count = page.locator("#wh-replay-count")
    expect(count).to_contain_text("4 deliveries (4 succeeded) will be sent again")
    expect(page.locator("#wh-replay-confirm button[type=submit]")).to_have_text(
        "Replay 4 deliveries"
    )
    expect(page.locator("code.wh-replay-filter")).to_have_count(1)
    assert len(receiver.requests) == sent  # nothing sent before confirming
    page.set_viewport_size({"width": 1360, "height": 420})
    shot(page, "replay")
    page.set_viewport_size({"width": 1360, "height": 800})

    page.click("#wh-replay-confirm button[type=submit]")
    expect(page.locator(".alert-success")).to_contain_text(
        "Replaying 4 deliveries in sequence order."
    )
    again = receiver.wait_for(sent + 4, timeout=PATIENCE)[sent:]
    assert sorted(r.delivery_id or "" for r in again) == sorted(d.id for d in mine)
    # Per object, the same ids in the original order, sequences increasing.
    for object_id in {d.object_id for d in mine}:
        original = [d for d in mine if d.object_id == object_id]
        ids = {d.id for d in original}
        got = [r for r in again if r.delivery_id in ids]
        assert [r.delivery_id for r in got] == [d.id for d in original]
        assert [r.sequence for r in got] == [d.sequence for d in original]
        sequences = [r.sequence or 0 for r in got]
        assert sequences == sorted(set(sequences))
    by_id = {d.id: d for d in mine}
    assert all(r.body == bytes(by_id[r.delivery_id or ""].body) for r in again)
    assert len(receiver.requests) == sent + 4  # the other webhook stays quiet
