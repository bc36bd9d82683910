"""A delivery whose sending hangs past its lease is taken again by the sweep
at most ``WEBHOOKS_MAX_CLAIMS`` times, then ends ``failed`` as poison; a
healthy webhook keeps delivering meanwhile. With a real worker process."""

from __future__ import annotations

import datetime as dt
import time
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks.delivery.poison import fail_poisoned
from flask_webhooks.testing import RecordingReceiver

from tests.raw_server import RawServer
from tests.raw_server import trickle_headers
from tests.worker_helpers import open_stack

POISON = {"attr": "name", "op": "eq", "value": "poison"}
HEALTHY = {"attr": "name", "op": "regex", "value": "item-"}


def commit_named(stack: t.Any, name: str) -> None:
    with stack.app.app_context():
        db = stack.ext["db"]
        db.session.add(stack.ext["Item"](name=name))
        db.session.commit()
        db.session.remove()


@pytest.mark.slow
def test_a_hanging_delivery_ends_as_poison_while_others_deliver(tmp_path):
    """The poison webhook's receiver sends a status line, then one byte of a
    header per second: each wait is shorter than the read timeout, so the
    worker thread waits past its lease (4 s here), the sweep hands the
    delivery to the next thread, and so on."""
    config = {"WEBHOOKS_MAX_CLAIMS": 3}
    with open_stack(tmp_path, "sqlite:///queue.sqlite", config) as stack:
        with RawServer(trickle_headers(1.0)) as hanging, RecordingReceiver() as rx:
            stack.add_hook(hanging.url, name="hangs", conditions=POISON)
            stack.add_hook(rx.url, name="healthy", conditions=HEALTHY)
            stack.start_worker(threads=4)
            commit_named(stack, "poison")
            (poison_id,) = stack.rows()
            delivered: list[str] = []
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                delivered += stack.commit_items(1)
                rx.wait_for(len(delivered), timeout=30)
                if stack.rows()[poison_id].status == m.FAILED:
                    break
                time.sleep(0.5)
            row = stack.rows()[poison_id]
            assert row.status == m.FAILED, dict(stack.statuses())
            assert row.last_error.startswith("poison: claimed 3 times")
            assert "WEBHOOKS_MAX_CLAIMS" in row.last_error
            # Sent three times, once per claim, never a fourth.
            assert len(hanging.requests) == 3
            # The healthy webhook kept delivering while the threads hung.
            stack.wait_all(m.SUCCEEDED, len(delivered), timeout=30)
            assert len(delivered) >= 3
            assert sorted(r.delivery_id for r in rx.requests) == sorted(delivered)
            with stack.app.app_context():
                # Not due, not claimable: nothing is sent again.
                assert stack.ext["webhooks"].sweep() == 0
                W = stack.state.models.Webhook.__table__
                with stack.state.engine().connect() as conn:
                    query = sa.select(W.c.name, W.c.consecutive_failures)
                    health = {
                        r.name: r.consecutive_failures for r in conn.execute(query)
                    }
            assert health == {"hangs": 1, "healthy": 0}
        # The hanging server closed: the stuck threads finish, their late
        # attempts change nothing.
        stack.stop_workers()
        assert len(hanging.requests) == 3
        assert stack.rows()[poison_id].status == m.FAILED
        assert "outlived its lease" in stack.log(0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_poison_check_leaves_live_leases_and_fresh_rows_alone(webhooks, db, models):
    state = webhooks.state
    D = webhooks.Delivery.__table__
    now = m.utcnow()
    later = now + dt.timedelta(seconds=60)
    rows = {
        "live": dict(status=m.DELIVERING, claims=3, leased_until=later),
        "expired": dict(status=m.DELIVERING, claims=3, leased_until=now),
        "requeued": dict(status=m.PENDING, claims=3, leased_until=None),
        "fresh": dict(status=m.DELIVERING, claims=2, leased_until=now),
    }
    with db.engine.begin() as conn:
        for name, values in rows.items():
            conn.execute(
                sa.insert(D).values(
                    id=name, event="created", model="site", body=b"{}", **values
                )
            )
    poisoned = fail_poisoned(state, now=now + dt.timedelta(seconds=1))
    assert sorted(poisoned) == ["expired", "requeued"]
    with db.engine.connect() as conn:
        status = dict(conn.execute(sa.select(D.c.id, D.c.status)).all())
    assert status == {
        "live": m.DELIVERING,
        "expired": m.FAILED,
        "requeued": m.FAILED,
        "fresh": m.DELIVERING,
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_manual_retry_of_a_poison_delivery_starts_counting_again(
    webhooks, db, models, make_hook, receiver
):
    make_hook()
    db.session.add(models.Site(name="a"))
    db.session.commit()
    receiver.wait_for(1)
    D = webhooks.Delivery.__table__
    with db.engine.begin() as conn:
        conn.execute(sa.update(D).values(status=m.FAILED, claims=3))
        delivery_id = conn.execute(sa.select(D.c.id)).scalar_one()
    assert webhooks.retry(delivery_id)
    assert len(receiver.wait_for(2)) == 2
    with db.engine.connect() as conn:
        row = conn.execute(sa.select(D)).one()
    assert (row.status, row.claims) == (m.SUCCEEDED, 0)
