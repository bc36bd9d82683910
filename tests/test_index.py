"""The capture index's cache and ``WEBHOOKS_INDEX_TTL``: with a TTL, webhook
changes of this process still apply from the next transaction; changes made
elsewhere apply within the TTL; a rolled-back change never sticks."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks


@pytest.fixture
def config() -> dict[str, t.Any]:
    return {
        "WEBHOOKS_INDEX_TTL": 60,
        "WEBHOOKS_QUEUE_URL": "memory://",
        "WEBHOOKS_EMBEDDED_WORKERS": 0,
    }


def deliveries(webhooks: t.Any, db: t.Any) -> int:
    db.session.rollback()
    with db.engine.connect() as conn:
        return int(
            conn.scalar(
                sa.select(sa.func.count()).select_from(webhooks.Delivery.__table__)
            )
            or 0
        )


def commit_site(db: t.Any, models: t.Any, name: str) -> None:
    db.session.add(models.Site(name=name))
    db.session.commit()


def index_checks(engine: t.Any) -> tuple[list[str], t.Any]:
    seen: list[str] = []

    def on_execute(conn, cursor, statement, parameters, context, executemany):
        if "FROM webhooks_webhook" in statement and statement.startswith("SELECT"):
            seen.append(statement)

    return seen, on_execute


def test_within_the_ttl_a_commit_does_not_query_the_webhooks(
    webhooks, db, models, make_hook
):
    make_hook()
    commit_site(db, models, "first")  # loads and checks the index
    seen, on_execute = index_checks(db.engine)
    sa.event.listen(db.engine, "before_cursor_execute", on_execute)
    try:
        commit_site(db, models, "second")
        commit_site(db, models, "third")
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", on_execute)
    assert seen == []
    assert deliveries(webhooks, db) == 3


def test_webhook_changes_of_this_process_apply_at_once(webhooks, db, models, make_hook):
    hook = make_hook()
    commit_site(db, models, "a")
    assert deliveries(webhooks, db) == 1
    hook = db.session.get(webhooks.Webhook, hook.id)
    hook.enabled = False
    db.session.commit()
    commit_site(db, models, "b")
    assert deliveries(webhooks, db) == 1
    hook = db.session.get(webhooks.Webhook, hook.id)
    hook.enabled = True
    db.session.commit()
    make_hook(name="second")  # created: applies to the next transaction
    commit_site(db, models, "c")
    assert deliveries(webhooks, db) == 3


def test_changes_made_elsewhere_apply_within_the_ttl(webhooks, db, models, make_hook):
    make_hook()
    commit_site(db, models, "a")
    W = webhooks.Webhook.__table__
    # Another process disables it (a plain connection: no session events).
    with db.engine.begin() as conn:
        conn.execute(sa.update(W).values(enabled=False))
    commit_site(db, models, "b")
    assert deliveries(webhooks, db) == 2  # still within the TTL
    webhooks.state.index_cache._checked_at -= 61  # the TTL has passed
    commit_site(db, models, "c")
    assert deliveries(webhooks, db) == 2


def test_a_rolled_back_webhook_never_sticks_in_the_cache(
    webhooks, db, models, make_hook
):
    make_hook()
    commit_site(db, models, "a")
    hook = webhooks.Webhook(
        name="rolled-back",
        models=["site"],
        on_create=True,
        payload_url="http://127.0.0.1:9/hook",
    )
    db.session.add(hook)
    db.session.flush()
    webhooks.state.index_cache._checked_at -= 61  # the TTL has passed
    db.session.add(models.Site(name="b"))
    db.session.flush()  # the index is checked here and sees the new webhook
    db.session.rollback()
    commit_site(db, models, "c")
    W = webhooks.Delivery.__table__
    with db.engine.connect() as conn:
        names = conn.scalars(sa.select(W.c.webhook_name)).all()
    assert sorted(names) == ["hook-1", "hook-1"]


def test_a_worker_that_disables_a_webhook_expires_the_cache(
    webhooks, db, models, make_hook, receiver
):
    from flask_webhooks.delivery.engine import deliver

    hook = make_hook()
    commit_site(db, models, "a")
    (delivery_id,) = db.session.scalars(sa.select(webhooks.Delivery.id)).all()
    db.session.rollback()
    receiver.respond(410)
    assert deliver(webhooks.state, delivery_id).disabled_reason is not None
    commit_site(db, models, "b")
    assert deliveries(webhooks, db) == 1
    assert db.session.get(webhooks.Webhook, hook.id).enabled is False


def test_index_ttl_must_not_be_negative(tmp_path):
    app = Flask("bad", instance_path=str(tmp_path))
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", WEBHOOKS_INDEX_TTL=-1)
    with pytest.raises(ValueError, match="WEBHOOKS_INDEX_TTL"):
        Webhooks(app, db=SQLAlchemy(app))
