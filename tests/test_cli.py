"""``flask webhooks ...`` through ``app.test_cli_runner()``, on a real database
and a real receiver. (The ``worker`` command is tested as a subprocess with the
delivery engine.)"""

from __future__ import annotations

import datetime as dt
import json
import socket
import typing as t

import click.testing
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
    assert "queued 1 delivery for retry" in result.output
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
    assert f"{done.id}: already succeeded, not retried" in result.output
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
    assert result.output.startswith("enqueued 1 due delivery\n")
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
    assert failed.output.startswith("deleted 1 delivery (failed)")
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


@pytest.fixture
def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


RETRIES = pytest.mark.parametrize(
    "config", [{"WEBHOOKS_RETRY_SCHEDULE": [60, 300, 1800]}]
)


@RETRIES
def test_ping_a_dead_receiver_is_one_attempt(
    app: Flask,
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    deliveries: Deliveries,
    dead_url: str,
) -> None:
    make_hook(name="crm", payload_url=dead_url)
    result = cli("ping", "crm")
    assert result.exit_code == 1
    assert "FAILED" in result.stderr
    assert "not retried: a ping is one attempt (`--retry` schedules retries)" in (
        result.stderr
    )
    assert "another attempt is scheduled" not in result.output
    (delivery,) = deliveries.all()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert app.extensions["webhooks"].huey.scheduled_count() == 0
    assert app.extensions["webhooks"].config.retry_schedule == (60, 300, 1800), (
        "the app keeps its schedule"
    )


@RETRIES
def test_ping_retry_schedules_retries(
    app: Flask,
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    deliveries: Deliveries,
    dead_url: str,
) -> None:
    make_hook(name="crm", payload_url=dead_url)
    result = cli("ping", "crm", "--retry")
    assert result.exit_code == 1
    assert "another attempt is scheduled" in result.stderr
    (delivery,) = deliveries.all()
    assert (delivery.status, delivery.attempts) == ("retrying", 1)
    assert app.extensions["webhooks"].huey.scheduled_count() == 1


def test_webhooks_by_name_or_id(
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    receiver: RecordingReceiver,
    deliveries: Deliveries,
) -> None:
    crm = make_hook(name="crm")
    crm_id = crm.id
    numbered = make_hook(name=str(crm_id), models=["device"])
    numbered_id = numbered.id

    by_id = cli("ping", str(numbered_id))
    assert by_id.exit_code == 0, by_id.output
    # A name wins over an id: "<crm's id>" is the webhook of that name.
    by_name = cli("ping", str(crm_id))
    assert by_name.exit_code == 0, by_name.output
    assert [d.webhook_id for d in deliveries.all()] == [numbered_id, numbered_id]
    only = cli("deliveries", "--webhook", str(numbered_id), "--json")
    assert len(json.loads(only.output)) == 2
    assert json.loads(cli("deliveries", "--webhook", "crm", "--json").output) == []

    missing = cli("ping", "99")
    assert missing.exit_code == 1
    assert "no webhook named or numbered '99'" in missing.output
    assert cli("retry", "--failed", "--webhook", "99").exit_code == 1


@RETRIES
def test_list_shows_a_webhook_failing_while_its_deliveries_retry(
    cli: CLI,
    make_hook: t.Callable[..., t.Any],
    db: t.Any,
    models: t.Any,
    deliveries: Deliveries,
    dead_url: str,
) -> None:
    make_hook(name="down", payload_url=dead_url)
    for name in ("a", "b"):
        db.session.add(models.Site(name=name))
        db.session.commit()
    assert [d.status for d in deliveries.all()] == ["retrying", "retrying"]

    result = cli("list")
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()[1:]
    assert "no deliveries yet" not in line
    assert "failing (2 attempts in a row: " in line
    assert line.endswith("), 2 queued")
    assert "refused" in line.lower()
    (data,) = json.loads(cli("list", "--json").output)
    assert data["health"].startswith("failing (2 attempts in a row")
    assert data["consecutive_failures"] == 0


def test_plurals_in_messages(cli: CLI, deliver_sites: DeliverSites) -> None:
    (one,) = deliver_sites("a", answers=[500])
    assert cli("retry", one.id).output.startswith("queued 1 delivery for retry\n")
    assert cli("sweep").output == "enqueued 0 due deliveries\n"


def _force_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the test runner's output streams claim to be a terminal."""
    monkeypatch.setattr(click.testing._NamedTextIOWrapper, "isatty", lambda self: True)


def test_bulk_retry_progress_bar_only_on_a_terminal(
    cli: CLI, deliver_sites: DeliverSites, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver_sites("a", "b", "c", answers=[500, 500, 500])
    quiet = cli("retry", "--failed")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == ""
    assert quiet.stdout == "queued 3 deliveries for retry\n"

    deliver_sites("d", "e", answers=[500, 500], hook="other")
    _force_tty(monkeypatch)
    shown = cli("retry", "--failed")
    assert shown.exit_code == 0, shown.output
    assert "Retrying" in shown.stderr
    assert "2/2" in shown.stderr
    assert shown.stdout == "queued 2 deliveries for retry\n"


def test_prune_progress_bar_only_on_a_terminal(
    cli: CLI,
    deliver_sites: DeliverSites,
    deliveries: Deliveries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for d in deliver_sites("a", "b", "c"):
        deliveries.age(d.id, 40)
    quiet = cli("prune", "--older-than", "60d")
    assert quiet.stderr == ""
    assert quiet.stdout.startswith("deleted 0 deliveries")

    _force_tty(monkeypatch)
    shown = cli("prune", "--older-than", "30d", "--batch-size", "2")
    assert shown.exit_code == 0, shown.output
    assert "Pruning" in shown.stderr
    assert "3/3" in shown.stderr
    assert shown.stdout.startswith("deleted 3 deliveries (succeeded)")
    assert deliveries.all() == []


def test_retry_since_replays_a_time_range_in_order_with_the_stored_bytes(
    app: Flask,
    deliver_sites: DeliverSites,
    deliveries: Deliveries,
    receiver: RecordingReceiver,
    models: t.Any,
    db: t.Any,
) -> None:
    old, _, b = deliver_sites("old", "a", "b", answers=[200, 200, 500])
    site = db.session.scalar(sa.select(models.Site).where(models.Site.name == "a"))
    for n in range(2):
        site.name = f"a{n}"
        db.session.commit()
    deliveries.age(old.id, 1)
    log = {d.id: d for d in deliveries.all()}
    assert [d.status for d in log.values()].count(m.FAILED) == 1
    recent = sorted(
        (d for d in log.values() if d.id != old.id), key=lambda d: d.sequence
    )
    assert len(recent) == 4
    receiver.clear()
    runner = app.test_cli_runner()

    def replay(*args: str, answer: str = "") -> Result:
        return runner.invoke(args=["webhooks", "retry", *args], input=answer)

    # The count comes first; "no" sends nothing.
    refused = replay(
        "--webhook", "crm", "--since", "2h", "--status", "all", answer="n\n"
    )
    assert refused.exit_code == 1
    assert "4 deliveries to webhook 'crm' created " in refused.output
    assert ": 3 succeeded, 1 failed" in refused.output
    assert receiver.requests == []

    failed_only = replay("--since", "2h", "--yes")
    assert failed_only.exit_code == 0, failed_only.output
    assert "1 delivery created" in failed_only.output
    assert "queued 1 delivery for replay" in failed_only.output
    assert [r.delivery_id for r in receiver.requests] == [b.id]
    receiver.clear()

    done = replay("--webhook", "crm", "--since", "2h", "--status", "all", answer="y\n")
    assert done.exit_code == 0, done.output
    assert "queued 4 deliveries for replay" in done.output
    got = receiver.wait_for(4)
    # Same id, same sequence, same bytes, in commit order.
    assert [r.delivery_id for r in got] == [d.id for d in recent]
    assert [r.sequence for r in got] == [d.sequence for d in recent]
    assert [r.body for r in got] == [bytes(d.body) for d in recent]
    after = {d.id: d for d in deliveries.all()}
    assert all(after[d.id].status == m.SUCCEEDED for d in recent)
    assert after[old.id].attempts == 1  # outside the range

    nothing = replay("--since", "2h", "--until", "1h", "--yes")
    assert nothing.exit_code == 0
    assert nothing.output.startswith("No failed deliveries created ")


def test_retry_since_usage_errors(cli: CLI) -> None:
    assert cli("retry", "--until", "1h").exit_code == 2
    assert "--until needs --since" in cli("retry", "--until", "1h").output
    bad = cli("retry", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "neither a duration" in bad.output
    assert cli("retry", "--since", "2h", "some-id").exit_code == 2
    assert cli("retry", "--failed", "--status", "all").exit_code == 2
