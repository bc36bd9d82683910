"""Secret rotation with an overlap: what receivers get during and after it,
checked with the ``standardwebhooks`` reference library and NetBox's digest."""

from __future__ import annotations

import datetime as dt
import logging
import typing as t

import pytest
import sqlalchemy as sa
from flask_webhooks import models as m
from flask_webhooks import WebhookValidationError
from flask_webhooks.rotation import forget_expired_secrets
from flask_webhooks.rotation import rotating_until
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import is_standard_secret
from flask_webhooks.signing import signature_headers
from flask_webhooks.signing import verify
from flask_webhooks.testing import RecordingReceiver
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

HOUR = dt.timedelta(hours=1)


def send_site(
    db: t.Any, models: t.Any, receiver: RecordingReceiver, name: str
) -> t.Any:
    """Commit a site (the immediate:// queue sends at once); return the request."""
    count = len(receiver.requests)
    db.session.add(models.Site(name=name))
    db.session.commit()
    return receiver.wait_for(count + 1)[count]


def stored(webhooks: t.Any, db: t.Any, hook_id: int) -> t.Any:
    with Session(db.engine) as session:
        return session.get(webhooks.Webhook, hook_id)


def rotate_in_the_past(
    webhooks: t.Any, hook: t.Any, new: str, ago: dt.timedelta
) -> None:
    """A rotation made ``ago`` with a one-hour overlap."""
    webhooks.rotate_secret(hook, new, overlap=HOUR)
    hook.secret_rotated_until = m.utcnow() - ago + HOUR
    webhooks.db.session.commit()


def test_standard_carries_both_signatures_during_the_overlap(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    old = generate_secret()
    hook = make_hook(secret=old, signature_scheme="standard")
    new = generate_secret()
    assert webhooks.rotate_secret(hook.id, new) is None

    request = send_site(db, models, receiver, "during")
    signatures = request.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        payload = StandardWebhook(secret).verify(request.body, request.headers)
        assert payload["data"]["name"] == "during"
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(generate_secret()).verify(request.body, request.headers)

    # The overlap ends: only the new secret signs, at once (before any sweep).
    hook.secret_rotated_until = m.utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    request = send_site(db, models, receiver, "after")
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    StandardWebhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(old).verify(request.body, request.headers)


def test_netbox_keeps_the_old_secret_until_the_overlap_ends(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    hook = make_hook(secret="old-secret", signature_scheme="netbox")
    webhooks.rotate_secret(hook, "new-secret", overlap=dt.timedelta(hours=2))
    until = stored(webhooks, db, hook.id).secret_rotated_until
    assert dt.timedelta(hours=1.9) < until - m.utcnow() <= dt.timedelta(hours=2)

    request = send_site(db, models, receiver, "during")
    signature = request.headers["X-Hook-Signature"]
    assert verify("old-secret", request.body, signature)
    assert not verify("new-secret", request.body, signature)

    hook.secret_rotated_until = m.utcnow() - dt.timedelta(seconds=1)
    db.session.commit()
    request = send_site(db, models, receiver, "after")
    assert verify("new-secret", request.body, request.headers["X-Hook-Signature"])


def test_both_scheme_during_the_overlap(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    old = generate_secret()
    hook = make_hook(secret=old, signature_scheme="both")
    new = webhooks.rotate_secret(hook)
    assert new is not None and is_standard_secret(new) and new != old
    request = send_site(db, models, receiver, "both")
    assert verify(old, request.body, request.headers["X-Hook-Signature"])
    StandardWebhook(old).verify(request.body, request.headers)
    StandardWebhook(new).verify(request.body, request.headers)


def test_the_old_secret_is_forgotten_after_the_overlap(
    webhooks: t.Any, db: t.Any, make_hook: t.Any
) -> None:
    hook = make_hook(secret="one")
    other = make_hook(secret="a")
    rotate_in_the_past(webhooks, hook, "two", ago=2 * HOUR)
    webhooks.rotate_secret(other, "b", overlap=HOUR)
    assert stored(webhooks, db, hook.id).previous_secret == "one"
    assert rotating_until(stored(webhooks, db, hook.id)) is None

    db.session.rollback()
    assert forget_expired_secrets(webhooks.state) == 1
    row = stored(webhooks, db, hook.id)
    assert (row.secret, row.previous_secret, row.secret_rotated_until) == (
        "two",
        None,
        None,
    )
    # Still within its overlap: kept.
    assert stored(webhooks, db, other.id).previous_secret == "a"


def test_the_periodic_sweep_forgets_expired_secrets(
    webhooks: t.Any, db: t.Any, make_hook: t.Any
) -> None:
    from flask_webhooks.worker.sweeper import Sweeper

    hook = make_hook(secret="one")
    rotate_in_the_past(webhooks, hook, "two", ago=2 * HOUR)
    db.session.rollback()
    Sweeper(webhooks.state, kind="test").run_once()
    assert stored(webhooks, db, hook.id).previous_secret is None


def test_rotating_again_keeps_the_secret_in_force(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    hook = make_hook(secret="first")
    webhooks.rotate_secret(hook, "second")
    webhooks.rotate_secret(hook, "third", overlap=dt.timedelta(hours=3))
    row = stored(webhooks, db, hook.id)
    assert (row.secret, row.previous_secret) == ("third", "first")
    assert row.secret_rotated_until - m.utcnow() > dt.timedelta(hours=2.9)
    request = send_site(db, models, receiver, "x")
    assert verify("first", request.body, request.headers["X-Hook-Signature"])


def test_no_overlap_or_no_old_secret_switches_at_once(
    webhooks: t.Any, db: t.Any, make_hook: t.Any
) -> None:
    hook = make_hook(secret="old")
    webhooks.rotate_secret(hook, "new", overlap=dt.timedelta(0))
    unsigned = make_hook(secret="")
    webhooks.rotate_secret(unsigned, "first")
    for hook_id, secret in ((hook.id, "new"), (unsigned.id, "first")):
        row = stored(webhooks, db, hook_id)
        assert (row.secret, row.previous_secret, row.secret_rotated_until) == (
            secret,
            None,
            None,
        )


def test_rotation_refuses_bad_input_and_changes_nothing(
    webhooks: t.Any, db: t.Any, make_hook: t.Any
) -> None:
    hook = make_hook(secret="same")
    with pytest.raises(ValueError, match="new_secret: is the current secret"):
        webhooks.rotate_secret(hook, "same")
    with pytest.raises(ValueError, match="new_secret: must not be empty"):
        webhooks.rotate_secret(hook, "  ")
    with pytest.raises(ValueError, match="overlap: must not be negative"):
        webhooks.rotate_secret(hook, "x", overlap=-HOUR)
    with pytest.raises(LookupError):
        webhooks.rotate_secret(987654, "x")
    standard = make_hook(secret=generate_secret(), signature_scheme="standard")
    before = standard.secret
    with pytest.raises(WebhookValidationError) as caught:
        webhooks.rotate_secret(standard, "not-a-whsec-secret")
    assert "secret" in caught.value.errors
    for hook_id, secret in ((hook.id, "same"), (standard.id, before)):
        row = stored(webhooks, db, hook_id)
        assert (row.secret, row.previous_secret) == (secret, None)


def test_secrets_stay_out_of_logs_and_the_delivery_log(
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    old, new = generate_secret(), generate_secret()
    hook = make_hook(secret=old, signature_scheme="both")
    webhooks.rotate_secret(hook, new)
    send_site(db, models, receiver, "logged")
    D = webhooks.Delivery
    with Session(db.engine) as session:
        headers = session.scalars(sa.select(D.request_headers)).one()
    assert headers["webhook-signature"] == "<redacted>"
    assert headers["X-Hook-Signature"] == "<redacted>"
    for secret in (old, new):
        assert secret not in caplog.text
        assert secret not in repr(stored(webhooks, db, hook.id))


def test_signature_headers_with_a_previous_secret() -> None:
    old, new = generate_secret(), generate_secret()
    headers = signature_headers(
        "standard", new, "msg_1", b"{}", timestamp=1700000000, previous_secret=old
    )
    first, second = headers["webhook-signature"].split(" ")
    alone = signature_headers("standard", new, "msg_1", b"{}", timestamp=1700000000)
    assert first == alone["webhook-signature"]
    assert (
        second
        == signature_headers("standard", old, "msg_1", b"{}", timestamp=1700000000)[
            "webhook-signature"
        ]
    )
    # An old secret that is not a whsec_ secret cannot sign the standard way.
    plain = signature_headers("both", new, "m", b"{}", previous_secret="hex-only")
    assert " " not in plain["webhook-signature"]
    assert verify("hex-only", b"{}", plain["X-Hook-Signature"])


# -- flask webhooks secret --rotate ------------------------------------------------


def run_cli(app: t.Any, *args: str, input: str | None = None) -> t.Any:
    return app.test_cli_runner().invoke(args=["webhooks", *args], input=input)


def test_cli_rotates_from_stdin_and_prints_no_secret(
    app: t.Any,
    webhooks: t.Any,
    db: t.Any,
    models: t.Any,
    receiver: RecordingReceiver,
    make_hook: t.Any,
) -> None:
    old = generate_secret()
    hook = make_hook(name="crm", secret=old, signature_scheme="both")
    new = generate_secret()
    result = run_cli(
        app, "secret", "--rotate", "crm", "--overlap", "2h", input=new + "\n"
    )
    assert result.exit_code == 0, result.output
    assert old not in result.output and new not in result.output
    assert "overlap until" in result.output
    assert "carries a signature with the old and one with the new" in result.output
    assert "X-Hook-Signature stays signed with the old secret" in result.output
    row = stored(webhooks, db, hook.id)
    assert (row.secret, row.previous_secret) == (new, old)
    left = row.secret_rotated_until - m.utcnow()
    assert dt.timedelta(hours=1.9) < left <= dt.timedelta(hours=2)
    db.session.expire_all()
    request = send_site(db, models, receiver, "cli")
    StandardWebhook(old).verify(request.body, request.headers)
    StandardWebhook(new).verify(request.body, request.headers)


def test_cli_rotation_errors(app: t.Any, webhooks: t.Any, make_hook: t.Any) -> None:
    make_hook(name="std", secret=generate_secret(), signature_scheme="standard")
    empty = run_cli(app, "secret", "--rotate", "std", input="\n")
    assert empty.exit_code == 1 and "no new secret on standard input" in empty.output
    bad = run_cli(app, "secret", "--rotate", "std", input="plain-text\n")
    assert bad.exit_code == 1
    assert "secret: the 'standard' signature scheme needs" in bad.output
    assert "plain-text" not in bad.output
    unknown = run_cli(app, "secret", "--rotate", "nope", input="x\n")
    assert unknown.exit_code == 1 and "no webhook named 'nope'" in unknown.output
    lonely = run_cli(app, "secret", "--overlap", "1h")
    assert (
        lonely.exit_code == 2 and "--overlap only works with --rotate" in lonely.output
    )
    wrong = run_cli(app, "secret", "--rotate", "std", "--overlap", "soon", input="x\n")
    assert wrong.exit_code == 2 and "is not a duration" in wrong.output
    plain = run_cli(app, "secret")
    assert plain.exit_code == 0 and is_standard_secret(plain.output.strip())


def test_cli_rotation_without_overlap(
    app: t.Any, webhooks: t.Any, db: t.Any, make_hook: t.Any
) -> None:
    hook = make_hook(name="crm", secret="old")
    result = run_cli(app, "secret", "--rotate", "crm", "--overlap", "0s", input="new\n")
    assert result.exit_code == 0, result.output
    assert "secret replaced; requests are signed with it now" in result.output
    assert stored(webhooks, db, hook.id).previous_secret is None
