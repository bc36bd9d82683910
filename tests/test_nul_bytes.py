"""NUL bytes and unwritable rows never lose or loop a delivery.

Receivers that answer with NUL bytes (a raw socket server), usernames and
object ids with NUL, a delivery table that refuses rows (a trigger standing
in for a migration's constraint): on SQLite and PostgreSQL, every event ends
up recorded, once, and the user's commit goes on.
"""

from __future__ import annotations

import json
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m

from tests.raw_server import fixed_answer
from tests.raw_server import RawServer

REPLACED = "\ufffd"


def answer(status_line: bytes, body: bytes, *headers: bytes) -> bytes:
    head = [
        status_line,
        *headers,
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def rows(webhooks: t.Any, db: t.Any) -> list[t.Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(sa.select(webhooks.Delivery.__table__)))


def attempt_rows(webhooks: t.Any, db: t.Any) -> list[t.Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(sa.select(webhooks.DeliveryAttempt.__table__)))


# -- NUL bytes from a receiver (item 1) ---------------------------------------


def test_nul_bytes_in_a_2xx_answer_are_stored_replaced_once(
    webhooks, db, models, make_hook
):
    raw = answer(b"HTTP/1.1 200 O\x00K", b"ok\x00body", b"X-Nul: a\x00b")
    with RawServer(fixed_answer(raw)) as server:
        make_hook(payload_url=server.url)
        db.session.add(models.Site(name="a"))
        db.session.commit()
        # Nothing is due any more: a sweep sends nothing again.
        assert webhooks.sweep() == 0
        assert len(server.requests) == 1
    (row,) = rows(webhooks, db)
    assert (row.status, row.attempts, row.last_status_code) == (m.SUCCEEDED, 1, 200)
    assert row.response_body == f"ok{REPLACED}body"
    assert row.response_headers["X-Nul"] == f"a{REPLACED}b"
    (attempt,) = attempt_rows(webhooks, db)
    assert (attempt.number, attempt.status_code) == (1, 200)
    assert attempt.response_body == f"ok{REPLACED}body"


@pytest.mark.parametrize("config", [{"WEBHOOKS_RETRY_SCHEDULE": [60]}])
def test_nul_bytes_in_an_error_answer_schedule_a_retry(webhooks, db, models, make_hook):
    raw = answer(b"HTTP/1.1 503 Bu\x00sy", b"\x00\x00", b"X\x00Bad: v")
    with RawServer(fixed_answer(raw)) as server:
        make_hook(payload_url=server.url)
        db.session.add(models.Site(name="a"))
        db.session.commit()
        assert len(server.requests) == 1
    (row,) = rows(webhooks, db)
    assert (row.status, row.attempts, row.last_status_code) == (m.RETRYING, 1, 503)
    assert "\x00" not in row.last_error and "503" in row.last_error
    assert row.response_body == REPLACED * 2
    assert len(attempt_rows(webhooks, db)) == 1


# -- NUL in captured text (item 7) ----------------------------------------------


@pytest.mark.parametrize("config", [{"WEBHOOKS_USERNAME_GETTER": lambda: "ali\x00ce"}])
def test_username_with_nul_is_delivered_with_the_character_replaced(
    webhooks, db, models, make_hook, receiver
):
    make_hook()
    db.session.add(models.Site(name="a"))
    db.session.commit()
    (request,) = receiver.wait_for(1)
    assert request.json()["username"] == f"ali{REPLACED}ce"
    (row,) = rows(webhooks, db)
    assert (row.status, row.username) == (m.SUCCEEDED, f"ali{REPLACED}ce")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_object_id_with_nul_is_stored_replaced(webhooks, db, make_hook, receiver):
    # Only SQLite lets the application store such a key in the first place.
    class Code(db.Model):  # type: ignore[name-defined]
        __tablename__ = "code"
        id = sa.Column(sa.String(20), primary_key=True)

    webhooks.register(Code)
    db.create_all()
    make_hook(models=["code"])
    db.session.add(Code(id="a\x00b"))
    db.session.commit()
    receiver.wait_for(1)
    (row,) = rows(webhooks, db)
    assert (row.status, row.object_id) == (m.SUCCEEDED, f"a{REPLACED}b")


def test_nul_in_serialized_data_is_escaped_in_the_stored_payload(
    webhooks, db, make_hook, receiver
):
    """A schema may produce NUL (a computed field): the JSON payload escapes
    it (``\\u0000``), which a text column holds, on PostgreSQL too."""
    import marshmallow as ma

    class Note(db.Model):  # type: ignore[name-defined]
        __tablename__ = "note"
        id = sa.Column(sa.Integer, primary_key=True)

    class NoteSchema(ma.Schema):
        id = ma.fields.Integer()
        text = ma.fields.Function(lambda obj: "x\x00y")

    webhooks.register(Note, schema=NoteSchema)
    db.create_all()
    make_hook(models=["note"], body_template="{{ data.text }}")
    make_hook(models=["note"])
    db.session.add(Note())
    db.session.commit()
    bodies = sorted(r.body for r in receiver.wait_for(2))
    assert bodies[0] == b"x\x00y"
    assert json.loads(bodies[1])["data"]["text"] == "x\x00y"
    found = rows(webhooks, db)
    assert [r.status for r in found] == [m.SUCCEEDED, m.SUCCEEDED]
    stored = [r.payload for r in found if r.payload is not None]
    assert len(stored) == 1 and "x\\u0000y" in stored[0]


# -- the outbox write fails (item 7) --------------------------------------------


def refuse(db: t.Any, table: str, when: str, message: str) -> None:
    """A trigger that makes ``table`` refuse rows matching ``when`` (SQL on
    ``NEW``), standing in for any database error (a constraint a migration
    added, a full disk)."""
    with db.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            for op in ("INSERT", "UPDATE"):
                conn.exec_driver_sql(
                    f"CREATE TRIGGER refuse_{table}_{op.lower()} BEFORE {op} ON {table} "
                    f"WHEN {when} BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
        else:
            conn.exec_driver_sql(
                f"CREATE OR REPLACE FUNCTION refuse_{table}() RETURNS trigger AS $$ "
                f"BEGIN IF {when} THEN RAISE EXCEPTION '{message}'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
            )


@pytest.mark.parametrize("hooks", [1, 2], ids=["one-webhook", "fan-out"])
def test_failed_outbox_write_records_failed_deliveries_and_commits(
    webhooks, db, models, make_hook, receiver, hooks, caplog
):
    for _ in range(hooks):
        make_hook()
    refuse(db, "webhooks_delivery", "NEW.status = 'pending'", "outbox is refused")
    db.session.add(models.Site(name="kept"))
    db.session.commit()
    db.session.remove()
    # The user's data is committed (PostgreSQL would roll it back at COMMIT
    # had the failed INSERT aborted the transaction).
    assert db.session.scalars(sa.select(models.Site.name)).all() == ["kept"]
    found = rows(webhooks, db)
    assert len(found) == hooks
    for row in found:
        assert (row.status, row.event, row.model) == (m.FAILED, "created", "site")
        assert "could not record this delivery at commit time" in row.last_error
        assert "outbox is refused" in row.last_error
    assert receiver.requests == []
    assert "failed to record deliveries; the commit goes on" in caplog.text


# -- a result that cannot be written (item 1, the general rule) ---------------


def test_unwritable_result_ends_the_delivery_failed_and_is_not_resent(
    webhooks, db, models, make_hook, receiver
):
    make_hook()
    refuse(db, "webhooks_delivery", "NEW.status = 'succeeded'", "result refused")
    db.session.add(models.Site(name="a"))
    db.session.commit()
    assert len(receiver.wait_for(1)) == 1
    (row,) = rows(webhooks, db)
    assert (row.status, row.last_status_code) == (m.FAILED, 200)
    assert "could not be recorded" in row.last_error
    assert "result refused" in row.last_error
    assert row.leased_until is None
    (attempt,) = attempt_rows(webhooks, db)
    assert (attempt.number, attempt.status_code) == (1, 200)
    assert webhooks.sweep() == 0
    assert len(receiver.requests) == 1
