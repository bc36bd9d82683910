"""The outbox writer: delivery rows built in Python, and the fan-out in SQL
(one staged row per event in ``webhooks_outbox_event``, copied into one
delivery row per plain webhook). Both must give the same, complete rows."""

from __future__ import annotations

import logging
import re
import typing as t
import uuid

import pytest
import sqlalchemy as sa
from flask_webhooks.capture import outbox

from tests.conftest import D

#: Every column of a delivery row that does not depend on the webhook.
SHARED = (
    "event",
    "model",
    "object_id",
    "request_id",
    "username",
    "status",
    "attempts",
    "next_attempt_at",
    "leased_until",
    "last_status_code",
    "last_error",
    "created_at",
    "updated_at",
    "completed_at",
    "body",
    "payload",
    "request_method",
    "request_url",
    "request_headers",
    "response_headers",
    "response_body",
    "duration_ms",
)
UUID4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
#: Matches every site: such a webhook takes the per-row path (conditions).
ALWAYS = {"attr": "id", "value": 0, "op": "gt"}


@pytest.fixture
def config() -> dict[str, t.Any]:
    # Nothing is sent: the rows stay as capture wrote them.
    return {"WEBHOOKS_QUEUE_URL": "memory://", "WEBHOOKS_EMBEDDED_WORKERS": 0}


@pytest.fixture
def enqueued(webhooks, monkeypatch):
    """(id, key) of every delivery handed to the queue, in order."""
    calls: list[tuple[str, t.Any]] = []
    state = webhooks.state

    def record(ids, delay=None, *, keys=None, timeout=None):
        ids = list(ids)
        assert keys is not None and len(keys) == len(ids)
        calls.extend(zip(ids, keys, strict=True))

    monkeypatch.setattr(state, "enqueue", record)
    return calls


def rows(webhooks, db):
    table = webhooks.Delivery.__table__
    with db.engine.connect() as conn:
        return [r._asdict() for r in conn.execute(sa.select(table))]


def staged_count(webhooks, db):
    table = webhooks.state.models.OutboxEvent.__table__
    with db.engine.connect() as conn:
        return conn.scalar(sa.select(sa.func.count()).select_from(table))


def keep_staged_rows(webhooks, monkeypatch):
    """Make the fan-out leave its staged rows (to look at them)."""
    writer = webhooks.state.outbox
    build = writer._fanout_statements

    def without_delete(dialect):
        insert, _ = build(dialect)
        return insert, sa.select(sa.literal(1))

    monkeypatch.setattr(writer, "_fanout_statements", without_delete)


def test_fan_out_rows_are_complete_and_match_the_per_row_path(
    webhooks, db, models, make_hook, enqueued
):
    plain = [make_hook(), make_hook(http_content_type="application/json; v=2")]
    per_row = make_hook(conditions=ALWAYS)
    site = models.Site(name="ams1", budget=D("12.50"))
    db.session.add(site)
    db.session.commit()

    found = {r["webhook_id"]: r for r in rows(webhooks, db)}
    assert set(found) == {h.id for h in [*plain, per_row]}
    reference = found[per_row.id]
    assert reference["status"] == "pending"
    assert reference["body"].startswith(b'{"event":"created"')
    for hook in plain:
        row = found[hook.id]
        assert {k: row[k] for k in SHARED} == {k: reference[k] for k in SHARED}
        assert row["webhook_name"] == hook.name
        assert row["content_type"] == hook.http_content_type
        assert UUID4.match(row["id"]), row["id"]
    assert len({r["id"] for r in found.values()}) == 3
    # Every pending delivery is enqueued once, keyed by its webhook.
    assert sorted(enqueued) == sorted(
        (r["id"], r["webhook_id"]) for r in found.values()
    )
    assert staged_count(webhooks, db) == 0


def test_staged_rows_are_complete(webhooks, db, models, make_hook, monkeypatch):
    make_hook()
    make_hook()
    keep_staged_rows(webhooks, monkeypatch)
    db.session.add(models.Site(name="s"))
    db.session.commit()

    table = webhooks.state.models.OutboxEvent.__table__
    with db.engine.connect() as conn:
        (staged,) = [r._asdict() for r in conn.execute(sa.select(table))]
    deliveries = rows(webhooks, db)
    assert len(deliveries) == 2
    first = deliveries[0]
    assert staged["seq"] == 0
    assert staged["grp"] == 0
    assert len(staged["batch"]) == 36
    for key in ("event", "model", "object_id", "request_id", "username", "body"):
        assert staged[key] == first[key], key
    assert {d["id"][:33] for d in deliveries} == {staged["id_prefix"]}


def test_rollback_drops_staged_and_delivery_rows(
    webhooks, db, models, make_hook, monkeypatch, enqueued
):
    make_hook()
    make_hook()
    keep_staged_rows(webhooks, monkeypatch)

    def refuse(session):
        raise RuntimeError("commit refused")

    sa.event.listen(db.session, "before_commit", refuse)
    try:
        db.session.add(models.Site(name="s"))
        with pytest.raises(RuntimeError, match="commit refused"):
            db.session.commit()
        db.session.rollback()
    finally:
        sa.event.remove(db.session, "before_commit", refuse)
    assert staged_count(webhooks, db) == 0
    assert rows(webhooks, db) == []
    assert enqueued == []


def test_groups_of_webhooks_per_event(webhooks, db, models, make_hook, enqueued):
    """A webhook in several groups (created: a+b, updated: a+c) gets each event once."""
    a = make_hook()
    b = make_hook(on_update=False, on_delete=False)
    c = make_hook(on_create=False, on_delete=False)
    old = models.Site(name="old")
    db.session.add(old)
    db.session.commit()
    db.session.execute(sa.delete(webhooks.Delivery))
    db.session.commit()
    enqueued.clear()

    old.name = "renamed"
    db.session.add(models.Site(name="new"))
    db.session.commit()

    got = sorted((r["webhook_id"], r["event"]) for r in rows(webhooks, db))
    assert got == sorted(
        [(a.id, "created"), (a.id, "updated"), (b.id, "created"), (c.id, "updated")]
    )
    assert len(enqueued) == 4


def test_chunks_write_everything(
    webhooks, db, models, make_hook, monkeypatch, enqueued
):
    monkeypatch.setattr(outbox, "CHUNK_EVENTS", 2)
    plain = [make_hook(), make_hook()]
    some = make_hook(conditions={"attr": "name", "value": "odd", "op": "contains"})
    db.session.add_all(
        [models.Site(name=f"{'odd' if i % 2 else 'even'}-{i}") for i in range(5)]
    )
    db.session.commit()

    found = rows(webhooks, db)
    per_hook = {h.id: 0 for h in [*plain, some]}
    for r in found:
        per_hook[r["webhook_id"]] += 1
    assert per_hook == {plain[0].id: 5, plain[1].id: 5, some.id: 2}
    assert len({r["id"] for r in found}) == 12
    assert sorted(i for i, _ in enqueued) == sorted(r["id"] for r in found)
    assert staged_count(webhooks, db) == 0


def test_failed_serialization_is_a_failed_row_per_webhook(
    webhooks, db, models, make_hook, enqueued
):
    make_hook()
    make_hook()
    reg = webhooks.registration("site")

    def explode(obj):
        raise ValueError("no dumping today")

    reg.dump = explode  # type: ignore[method-assign]
    db.session.add(models.Site(name="s"))
    db.session.commit()
    found = rows(webhooks, db)
    assert [r["status"] for r in found] == ["failed", "failed"]
    assert all("no dumping today" in r["last_error"] for r in found)
    assert enqueued == []


def test_missing_staging_table_falls_back_to_rows(
    webhooks, db, models, make_hook, caplog, enqueued
):
    make_hook()
    make_hook()
    webhooks.state.models.OutboxEvent.__table__.drop(db.engine)
    with caplog.at_level(logging.WARNING, logger="flask_webhooks.capture"):
        db.session.add(models.Site(name="s"))
        db.session.commit()
    assert "webhooks_outbox_event" in caplog.text
    found = rows(webhooks, db)
    assert len(found) == 2
    assert all(r["status"] == "pending" for r in found)
    assert len(enqueued) == 2
    # The user's transaction went on (on PostgreSQL too: the probe is guarded).
    assert db.session.scalar(sa.select(sa.func.count()).select_from(models.Site)) == 1
    db.session.rollback()


def test_fan_out_ids_are_random_per_event(webhooks, db, models, make_hook):
    for _ in range(3):
        make_hook()
    db.session.add_all([models.Site(name=f"s{i}") for i in range(4)])
    db.session.commit()
    ids = [r["id"] for r in rows(webhooks, db)]
    assert len(set(ids)) == 12
    for value in ids:
        assert str(uuid.UUID(value)) == value
        assert uuid.UUID(value).version == 4
    assert len({i[:33] for i in ids}) == 4  # one random prefix per event
