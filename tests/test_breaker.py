"""The circuit breaker (``WEBHOOKS_BREAKER_THRESHOLD``): open after N failed
attempts in a row, deliveries wait without using attempts, one probe after
the cool-down, closed by a success or open again by a failure. Real
receiver, real database, the ``immediate://`` queue."""

from __future__ import annotations

import re
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme
from flask_webhooks import models as m
from flask_webhooks.delivery.breaker import breaker_state
from flask_webhooks.delivery.breaker import open_count
from flask_webhooks.state import get_state
from flask_webhooks.testing import RecordingReceiver
from sqlalchemy.orm import Session

COOLDOWN = 0.5


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {
        "WEBHOOKS_RETRY_SCHEDULE": [],
        "WEBHOOKS_BREAKER_THRESHOLD": 2,
        "WEBHOOKS_BREAKER_COOLDOWN": COOLDOWN,
    }


def test_breaker_opens_pauses_probes_and_closes(
    app: Flask,
    webhooks: t.Any,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    db: t.Any,
    models: t.Any,
) -> None:
    hook_id = make_hook(name="flaky").id
    admin = Admin(app, name="Test", theme=Bootstrap4Theme())
    webhooks.init_admin(admin, is_accessible=lambda: True)
    client = app.test_client()

    def status_page() -> str:
        db.session.remove()
        response = client.get("/admin/webhooks/status/")
        assert response.status_code == 200
        db.session.remove()
        return str(response.get_data(as_text=True))

    state = get_state()
    D = webhooks.Delivery
    W = webhooks.Webhook

    def commit(name: str) -> None:
        db.session.add(models.Site(name=name))
        db.session.commit()
        db.session.remove()

    # Read in a session of its own: the writers must not wait for a reader
    # on SQLite.
    def log() -> list[t.Any]:
        with Session(db.engine) as session:
            return list(session.scalars(sa.select(D).order_by(D.sequence)))

    def breaker() -> str:
        with Session(db.engine) as session:
            until = session.scalar(
                sa.select(W.breaker_open_until).where(W.id == hook_id)
            )
        return breaker_state(until, m.utcnow())

    receiver.respond(500, 500, 500)
    commit("a")
    assert breaker() == "closed"
    commit("b")
    assert breaker() == "open"
    assert [n for n, _, s in open_count(state)] == ["flaky"]
    page = status_page()
    assert re.search(r'<tr class="wh-breaker">\s*<td>flaky</td>\s*<td>open</td>', page)
    # While open, new deliveries wait: nothing sent, no attempt used.
    commit("c")
    commit("d")
    assert len(receiver.requests) == 2
    assert [(d.status, d.attempts) for d in log()] == [
        (m.FAILED, 1),
        (m.FAILED, 1),
        (m.PENDING, 0),
        (m.PENDING, 0),
    ]
    # After the cool-down one probe goes; it fails: open again.
    time.sleep(COOLDOWN + 0.1)
    assert breaker() == "half-open"
    webhooks.sweep()
    assert len(receiver.requests) == 3
    assert breaker() == "open"
    # (c or d: they were due at the same time.)
    assert sorted((d.status, d.attempts) for d in log()[2:]) == [
        (m.FAILED, 1),
        (m.PENDING, 0),
    ]
    # The next probe succeeds: closed, and the rest goes.
    time.sleep(COOLDOWN + 0.1)
    webhooks.sweep()
    assert breaker() == "closed"
    assert sorted(d.status for d in log()[2:]) == [m.FAILED, m.SUCCEEDED]
    commit("e")
    assert [d.status for d in log()][-1] == m.SUCCEEDED
    assert open_count(state) == []
    assert "Every breaker is closed" in status_page()
