"""Per-webhook rate limits (``Webhook.rate_limit``): validation, the slot
arithmetic on a real database, and two real worker processes sending to a
counting receiver.

PostgreSQL when ``WEBHOOKS_TEST_DATABASE_URL`` is set, else a SQLite file.
Run with ``-s`` to see the measured rate.
"""

from __future__ import annotations

import functools
import typing as t

import pytest
from flask_webhooks import models as m
from flask_webhooks.delivery.rate import take_slot
from flask_webhooks.state import get_state
from flask_webhooks.testing import RecordingReceiver

from tests.conftest import PG_URL
from tests.worker_helpers import open_stack
from tests.worker_helpers import Stack


def test_rate_limit_is_validated(webhooks: t.Any, receiver: RecordingReceiver) -> None:
    W = webhooks.Webhook
    ok = W(name="a", models=["site"], on_create=True, payload_url=receiver.url)
    assert "rate_limit" not in ok.validate()
    ok.rate_limit = 2.5
    assert "rate_limit" not in ok.validate()
    for bad in (0, -1, 20000, float("nan"), "5", True):
        ok.rate_limit = bad
        assert "rate_limit" in ok.validate(), bad
    ok.rate_limit = 0
    assert "greater than 0" in ok.validate()["rate_limit"]


def test_take_slot_spaces_requests_one_interval_apart(
    webhooks: t.Any, make_hook: t.Callable[..., t.Any], db: t.Any
) -> None:
    hook = make_hook(name="slow", rate_limit=4)
    state = get_state()
    updated = hook.updated_at
    db.session.remove()
    take = functools.partial(take_slot, state, hook.id, 4, ahead=0.3)
    assert take(now=100.0) == (True, 0.0)
    # Reserved 0.25 s apart, up to 0.3 s ahead.
    assert take(now=100.1) == (True, pytest.approx(0.15))  # type: ignore[comparison-overlap]
    assert take(now=100.1) == (False, pytest.approx(0.1))  # type: ignore[comparison-overlap]
    assert take(now=100.2) == (True, pytest.approx(0.3))  # type: ignore[comparison-overlap]
    # After a pause the next slot is now (no saved-up burst).
    assert take(now=200.0) == (True, 0.0)
    assert take(now=200.0) == (True, pytest.approx(0.25))  # type: ignore[comparison-overlap]
    # The webhook's version does not move: cached copies stay valid.
    assert db.session.get(webhooks.Webhook, hook.id).updated_at == updated


@pytest.fixture
def stack(tmp_path: t.Any) -> t.Iterator[Stack]:
    with open_stack(
        tmp_path, "sqlite:///queue.sqlite", {"WEBHOOKS_SWEEP_INTERVAL": 600}
    ) as stack:
        yield stack


@pytest.mark.slow
def test_two_worker_processes_keep_to_the_rate_limit(stack: Stack) -> None:
    """Limit 5/s, 30 deliveries queued at once, two processes of 4 threads:
    over the first 4 s at most 22 requests (limit + 10 %), every delivery
    sent once, with one attempt (waiting used up none)."""
    limit, count, window = 5, 30, 4.0
    with RecordingReceiver() as rx:
        stack.add_hook(rx.url, rate_limit=limit)
        workers = [stack.start_worker(threads=4) for _ in range(2)]
        stack.commit_items(count)
        stack.wait_all(m.SUCCEEDED, count, timeout=60)
        hits = sorted(rx.requests, key=lambda r: r.received_at)
    assert all(w.poll() is None for w in workers)
    first = hits[0].received_at
    in_window = [h for h in hits if h.received_at - first < window]
    rate = len(in_window) / window
    overall = (len(hits) - 1) / (hits[-1].received_at - first)
    database = "postgresql" if PG_URL else "sqlite"
    print(
        f"\n[rate] limit={limit}/s ({database}): {len(in_window)} requests in the "
        f"first {window:g} s = {rate:.2f}/s; overall {overall:.2f}/s"
    )
    assert len(in_window) <= limit * window * 1.1
    assert len(in_window) >= limit * window * 0.5  # it does send meanwhile
    assert len(hits) == count
    assert {r.attempts for r in stack.rows().values()} == {1}
