"""Rotating a webhook's secret with an overlap.

:func:`rotate_secret` stores the new secret and keeps the old one in
``previous_secret`` until ``secret_rotated_until``. Meanwhile the sender
(:func:`signing_secrets`, used when a request is built):

* ``standard`` scheme: every request carries two ``v1,`` signatures in
  ``webhook-signature``, one per secret, so a receiver verifies with either;
* ``netbox`` scheme (one hex digest): requests are still signed with the old
  secret; when the overlap ends they are signed with the new one, with no
  further action;
* ``both``: each part as above.

After the overlap the old secret is ignored at once, and erased from the
database by the next periodic sweep (:func:`forget_expired_secrets`) or the
next rotation. Both secrets are write-only: nothing here logs or returns a
stored secret.
"""

from __future__ import annotations

import datetime as dt
import typing as t

import sqlalchemy as sa

from . import models as m
from .signing import generate_secret

if t.TYPE_CHECKING:
    from .state import WebhooksState

__all__ = [
    "DEFAULT_OVERLAP",
    "forget_expired_secrets",
    "rotate_secret",
    "rotating_until",
    "signing_secrets",
]

#: How long both secrets stay valid by default.
DEFAULT_OVERLAP = dt.timedelta(hours=24)


def rotating_until(hook: t.Any, now: dt.datetime | None = None) -> dt.datetime | None:
    """When ``hook``'s rotation overlap ends, or None when none is in progress.

    :param hook: a webhook (ORM object or a row copy with its columns).
    :param now: the time to compare with (default: now).
    """
    until = getattr(hook, "secret_rotated_until", None)
    if until is None or not getattr(hook, "previous_secret", None):
        return None
    return until if until > (now or m.utcnow()) else None


def signing_secrets(hook: t.Any, now: dt.datetime | None = None) -> tuple[str, str]:
    """``(secret, previous_secret)`` to sign a request with at ``now``.

    ``previous_secret`` is empty unless a rotation overlap is in progress;
    pass both to :func:`flask_webhooks.signing.signature_headers`.
    """
    secret = str(getattr(hook, "secret", "") or "")
    if rotating_until(hook, now) is None:
        return secret, ""
    return secret, str(hook.previous_secret)


def rotate_secret(
    state: WebhooksState,
    webhook_or_id: t.Any,
    new_secret: str | None = None,
    overlap: dt.timedelta = DEFAULT_OVERLAP,
    *,
    now: dt.datetime | None = None,
) -> str | None:
    """Give a webhook a new secret, keeping the old one valid for ``overlap``.

    Commits ``db.session``. Rotating again during an overlap replaces the
    new secret and restarts the overlap; the secret that was in force before
    the first rotation stays the old one (receivers may not have switched
    yet). An ``overlap`` of zero, or a webhook that had no secret, switches
    at once.

    :param webhook_or_id: a :attr:`~flask_webhooks.Webhooks.Webhook` or its id.
    :param new_secret: the new secret; None generates a Standard Webhooks
        secret (:func:`~flask_webhooks.signing.generate_secret`).
    :param overlap: how long requests stay verifiable with the old secret.
    :param now: the time of the rotation (tests pin it).
    :returns: the generated secret (give it to the receiver now, it is never
        shown again), or None when ``new_secret`` was given.
    :raises LookupError: no such webhook.
    :raises ValueError: an empty new secret, the current secret again, or a
        negative overlap.
    :raises flask_webhooks.WebhookValidationError: the new secret does not
        suit the webhook's signature scheme (``standard`` and ``both`` need a
        ``whsec_`` secret); nothing is changed then.
    """
    if overlap < dt.timedelta(0):
        raise ValueError("overlap: must not be negative")
    generated = generate_secret() if new_secret is None else None
    secret = (generated or new_secret or "").strip()
    if not secret:
        raise ValueError(
            "new_secret: must not be empty (to stop signing, clear the secret "
            "instead of rotating it)"
        )
    session = state.db.session
    W = state.models.Webhook
    hook = (
        webhook_or_id if isinstance(webhook_or_id, W) else session.get(W, webhook_or_id)
    )
    if hook is None:
        raise LookupError(f"no webhook with id {webhook_or_id!r}")
    if secret == hook.secret:
        raise ValueError("new_secret: is the current secret; choose a new one")
    now = now or m.utcnow()
    in_force = hook.previous_secret if rotating_until(hook, now) else hook.secret
    hook.secret = secret
    if in_force and overlap > dt.timedelta(0) and in_force != secret:
        hook.previous_secret = in_force
        hook.secret_rotated_until = now + overlap
    else:
        hook.previous_secret = None
        hook.secret_rotated_until = None
    try:
        session.commit()
    except Exception:
        session.rollback()
        raise
    return generated


def forget_expired_secrets(state: WebhooksState, now: dt.datetime | None = None) -> int:
    """Erase old secrets whose overlap has ended; return how many.

    The periodic sweep calls this; requests stop using an old secret the
    moment its overlap ends, whether or not it was erased yet.
    """
    W = state.models.Webhook.__table__
    with state.engine().begin() as conn:
        result = conn.execute(
            sa.update(W)
            .where(
                W.c.secret_rotated_until.is_not(None),
                W.c.secret_rotated_until <= (now or m.utcnow()),
            )
            .values(previous_secret=None, secret_rotated_until=None)
        )
    return int(result.rowcount or 0)
