"""``flask webhooks ...`` through ``app.test_cli_runner()``, on a real database
and a real receiver. (The ``worker`` command is tested as a subprocess with the
delivery engine.)"""

from __future__ import annotations

import datetime as dt
import json
import typing as t

import pytest
import sqlalchemy as sa
from click.testing import Result
from flask import Flask
from flask_webhooks import models as m
from flask_webhooks.signing import is_standard_secret
from flask_webhooks.signing import verify
from flask_webhooks.testing import RecordingReceiver
from sqlalchemy.orm import Session


@pytest.fixture
def config() -> dict[str, t.Any]:
    # One attempt only: a failure is final, so there is something to retry.
    return {"WEBHOOKS_RETRY_SCHEDULE": []}


CLI = t.Callable[..., Result]
#: ``deliver_sites(*names, answers=(), hook="crm")``: see the fixture.
DeliverSites = t.Callable[..., list[t.Any]]


@pytest.fixture
def cli(app: Flask, webhooks: t.Any) -> CLI:
    runner = app.test_cli_runner()

    def run(*args: str) -> Result:
        return runner.invoke(args=["webhooks", *args])

    return run


class Deliveries:
    """The delivery log, read in a session of its own (the test's ``db.session``
    must not sit in a read transaction on SQLite while a command writes) and
    changed through ``db.session``, committing at once."""

    def __init__(self, webhooks: t.Any, db: t.Any) -> None:
        self.D = webhooks.Delivery
        self.db = db

    def all(self) -> list[t.Any]:
        """Every delivery, oldest first."""
        with Session(self.db.engine) as session:
            return list(session.scalars(sa.select(self.D).order_by(self.D.created_at)))

    def set(self, delivery_id: str, **values: t.Any) -> None:
        D = self.D
        self.db.session.execute(
            sa.update(D).where(D.id == delivery_id).values(**values)
        )
        self.db.session.commit()

    def age(self, delivery_id: str, days: int) -> None:
        self.set(delivery_id, created_at=m.utcnow() - dt.timedelta(days=days))


@pytest.fixture
def deliveries(webhooks: t.Any, db: t.Any) -> Deliveries:
    return Deliveries(webhooks, db)


@pytest.fixture
def deliver_sites(
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    db: t.Any,
    models: t.Any,
    deliveries: Deliveries,
) -> DeliverSites:
    """Create the webhook ``hook`` (aimed at the receiver), queue the receiver's
    ``answers`` (later requests get 200), then commit one site per name, each
    in a transaction of its own. Returns the delivery log, oldest first."""

    def deliver(
        *names: str, answers: t.Sequence[int] = (), hook: str = "crm"
    ) -> list[t.Any]:
        make_hook(name=hook)
        receiver.respond(*answers)
        for name in names:
            db.session.add(models.Site(name=name))
            db.session.commit()
        return deliveries.all()

    return deliver


def test_list_without_webhooks_says_how_to_add_one(cli: CLI) -> None:
    result = cli("list")
    assert result.exit_code == 0
    assert "No webhooks yet" in result.output


def test_list_shows_health(
    cli: CLI,
    deliver_sites: DeliverSites,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
) -> None:
    deliver_sites("ams1", hook="healthy")
    make_hook(name="broken", models=["device"], on_update=False, on_delete=False)
    make_hook(
        name="off", enabled=False, disabled_reason="the receiver answered 410 Gone"
    )

    result = cli("list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines()[1:]}
    assert set(lines) == {"broken", "healthy", "off"}
    assert "ok" in lines["healthy"]
    assert "no deliveries yet" in lines["broken"]
    assert " c " in lines["broken"]  # events column: create only
    assert "disabled: the receiver answered 410 Gone" in lines["off"]

    data = json.loads(cli("list", "--json").output)
    healthy = next(h for h in data if h["name"] == "healthy")
    assert healthy["last_delivery_status"] == "succeeded"
    assert healthy["events"] == ["created", "updated", "deleted"]
    assert healthy["payload_url"] == receiver.url


def test_list_counts_failed_deliveries(cli: CLI, deliver_sites: DeliverSites) -> None:
    deliver_sites("a", "b", answers=[500, 500], hook="flaky")
    result = cli("list")
    assert "failing (2 in a row), 2 failed" in result.output


def test_deliveries_newest_first_with_filters(
    cli: CLI, deliver_sites: DeliverSites
) -> None:
    first, second = deliver_sites("first", "second", answers=[200, 503])

    result = cli("deliveries")
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert rows[0].split()[:3] == ["ID", "CREATED", "WEBHOOK"]
    assert rows[1].startswith(second.id)
    assert "failed" in rows[1]
    assert "HTTP 503" in rows[1]
    assert rows[2].startswith(first.id)
    assert "succeeded" in rows[2]

    failed = cli("deliveries", "--status", "failed")
    assert [line.split()[0] for line in failed.output.splitlines()[1:]] == [second.id]
    limited = cli("deliveries", "--limit", "1", "--json")
    assert [d["id"] for d in json.loads(limited.output)] == [second.id]
    assert json.loads(limited.output)[0]["last_status_code"] == 503
    assert cli("deliveries", "--status", "cancelled").output == (
        "No deliveries with status 'cancelled'.\n"
    )
    assert cli("deliveries", "--webhook", "crm", "-n", "5").output.count("site:") == 2


def test_deliveries_rejects_bad_options(
    cli: CLI, make_hook: t.Callable[..., t.Any]
) -> None:
    make_hook(name="crm")
    bad_status = cli("deliveries", "--status", "lost")
    assert bad_status.exit_code == 2
    assert "'lost' is not one of" in bad_status.output
    assert cli("deliveries", "--limit", "0").exit_code == 2
    unknown = cli("deliveries", "--webhook", "nope")
    assert unknown.exit_code == 1
    assert "no webhook named 'nope' (known: crm)" in unknown.output


def test_ping_sends_a_signed_test_delivery(
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    deliveries: Deliveries,
) -> None:
    make_hook(name="crm", secret="s3cret")
    result = cli("ping", "crm")
    assert result.exit_code == 0, result.output
    assert "OK: HTTP 200" in result.output
    (request,) = receiver.wait_for(1)
    assert request.json()["event"] == "test"
    assert request.json()["data"]["webhook"]["name"] == "crm"
    assert verify("s3cret", request.body, request.headers["X-Hook-Signature"])
    (delivery,) = deliveries.all()
    assert (delivery.event, delivery.status, delivery.attempts) == (
        "test",
        "succeeded",
        1,
    )
    assert request.headers["X-Webhook-ID"] == delivery.id


def test_ping_failure_exits_non_zero(
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    deliveries: Deliveries,
) -> None:
    make_hook(name="crm")
    receiver.respond(404)
    result = cli("ping", "crm")
    assert result.exit_code == 1
    assert "FAILED" in result.output
    assert "HTTP 404" in result.output
    (delivery,) = deliveries.all()
    assert delivery.status == "failed"


def test_ping_unknown_or_disabled_webhook(
    cli: CLI, make_hook: t.Callable[..., t.Any], receiver: RecordingReceiver
) -> None:
    unknown = cli("ping", "nope")
    assert unknown.exit_code == 1
    assert "no webhook named 'nope' (known: none yet)" in unknown.output
    make_hook(name="off", enabled=False)
    disabled = cli("ping", "off")
    assert disabled.exit_code == 1
    assert "webhook 'off' is disabled; enable it first" in disabled.output
    assert receiver.requests == []


def test_retry_ids_and_failed(
    cli: CLI,
    deliver_sites: DeliverSites,
    deliveries: Deliveries,
    receiver: RecordingReceiver,
) -> None:
    a, b, c = deliver_sites("a", "b", "c", answers=[500, 500, 500])
    assert {d.status for d in (a, b, c)} == {"failed"}

    result = cli("retry", a.id)
    assert result.exit_code == 0, result.output
    assert "queued 1 deliveries for retry" in result.output
    assert [d.status for d in deliveries.all()] == [
        "succeeded",
        "failed",
        "failed",
    ]
    assert deliveries.all()[0].attempts == 2

    result = cli("retry", "--failed")
    assert result.exit_code == 0, result.output
    assert "queued 2 deliveries for retry" in result.output
    assert [d.status for d in deliveries.all()] == ["succeeded"] * 3
    assert len(receiver.requests) == 6
    assert cli("retry", "--failed").output == "No failed deliveries.\n"


def test_retry_reports_what_it_could_not_retry(
    cli: CLI, deliver_sites: DeliverSites
) -> None:
    (done,) = deliver_sites("ams1")
    result = cli("retry", done.id, "no-such-id")
    assert result.exit_code == 1
    assert f"{done.id}: is succeeded, not retried" in result.output
    assert "no-such-id: no such delivery" in result.output

    usage = cli("retry")
    assert usage.exit_code == 2
    assert "give delivery ids" in usage.output
    assert cli("retry", "--failed", done.id).exit_code == 2
    assert cli("retry", "--webhook", "crm", done.id).exit_code == 2


def test_sweep_sends_due_deliveries(
    cli: CLI, deliver_sites: DeliverSites, deliveries: Deliveries
) -> None:
    (delivery,) = deliver_sites("ams1", answers=[500])
    # As if the enqueue after commit had been lost.
    deliveries.set(
        delivery.id,
        status=m.PENDING,
        next_attempt_at=m.utcnow() - dt.timedelta(minutes=5),
    )
    result = cli("sweep")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("enqueued 1 due deliveries")
    assert deliveries.all()[0].status == "succeeded"
    assert cli("sweep").output == "enqueued 0 due deliveries\n"


def test_prune_deletes_old_succeeded_deliveries_in_batches(
    cli: CLI,
    deliver_sites: DeliverSites,
    deliveries: Deliveries,
    webhooks: t.Any,
    db: t.Any,
) -> None:
    old1, old2, new, old_failed = deliver_sites(
        "old1", "old2", "new", "old-failed", answers=[200, 200, 200, 500]
    )
    for d in (old1, old2, old_failed):
        deliveries.age(d.id, 40)
    A = webhooks.DeliveryAttempt

    def attempts() -> set[str]:
        with Session(db.engine) as session:
            return set(session.scalars(sa.select(A.delivery_id)))

    assert attempts() == {old1.id, old2.id, new.id, old_failed.id}

    dry = cli("prune", "--older-than", "30d", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would delete 2 deliveries (succeeded)")
    assert len(deliveries.all()) == 4

    result = cli("prune", "--older-than", "30d", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("deleted 2 deliveries (succeeded)")
    assert result.output.rstrip().endswith("and 2 attempts")
    assert {d.id for d in deliveries.all()} == {new.id, old_failed.id}
    assert attempts() == {new.id, old_failed.id}, "attempts go with their delivery"

    failed = cli("prune", "--older-than", "4w", "--status", "failed")
    assert failed.output.startswith("deleted 1 deliveries (failed)")
    assert [d.id for d in deliveries.all()] == [new.id]


def test_prune_needs_a_valid_age(cli: CLI) -> None:
    missing = cli("prune")
    assert missing.exit_code == 2
    assert "--older-than" in missing.output
    bad = cli("prune", "--older-than", "30 days")
    assert bad.exit_code == 2
    assert "use a number and a unit: 30d, 12h, 90m, 3600s or 2w" in bad.output
    assert cli("prune", "--older-than", "1d", "--status", "pending").exit_code == 2


def test_secret_prints_a_standard_webhooks_secret(cli: CLI) -> None:
    first = cli("secret").output.strip()
    second = cli("secret").output.strip()
    assert is_standard_secret(first)
    assert first != second


@pytest.mark.parametrize("config", [{"WEBHOOKS_QUEUE_URL": "sqlite:///queue.sqlite"}])
def test_commands_queue_without_starting_workers(
    app: Flask,
    cli: CLI,
    deliver_sites: DeliverSites,
    deliveries: Deliveries,
    receiver: RecordingReceiver,
) -> None:
    """A CLI process hands work to the shared queue; the app's workers send it."""
    state = app.extensions["webhooks"]
    state.workers = False  # this test process plays the CLI; nothing consumes
    (delivery,) = deliver_sites("ams1")
    assert delivery.status == "pending"
    state.workers = None
    deliveries.set(delivery.id, status=m.FAILED)

    result = cli("retry", delivery.id)
    assert result.exit_code == 0, result.output
    assert "a running worker sends them" in result.output
    assert state.workers is False, "no embedded workers started by a CLI command"
    assert state.huey.pending_count() == 2
    assert receiver.requests == []
