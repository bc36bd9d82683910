"""Sign webhook requests and verify their signatures.

Two schemes are supported:

``netbox``
    NetBox's ``X-Hook-Signature`` header: the lowercase hex HMAC-SHA512 of the
    exact body bytes, keyed with the UTF-8 bytes of the secret.

``standard``
    `Standard Webhooks <https://www.standardwebhooks.com/>`_: the headers
    ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``, the last
    one being ``v1,`` followed by the base64 HMAC-SHA256 of
    ``"<id>.<timestamp>.<body>"``, keyed with the base64-decoded part of a
    ``whsec_...`` secret. Compatible with the ``standardwebhooks`` reference
    library.

This module imports nothing from Flask so that receivers can use it alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

__all__ = [
    "DEFAULT_TOLERANCE",
    "SCHEMES",
    "SIGNATURE_HEADER",
    "STANDARD_ID_HEADER",
    "STANDARD_SIGNATURE_HEADER",
    "STANDARD_TIMESTAMP_HEADER",
    "decode_standard_secret",
    "generate_secret",
    "is_standard_secret",
    "sign",
    "sign_standard",
    "signature_headers",
    "standard_headers",
    "verify",
    "verify_standard",
]

SIGNATURE_HEADER = "X-Hook-Signature"
"""The header carrying the NetBox signature (hex HMAC-SHA512 of the body)."""

STANDARD_ID_HEADER = "webhook-id"
"""Standard Webhooks message id header; flask-webhooks sends the delivery id."""

STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
"""Standard Webhooks header with the unix time (seconds) of the attempt."""

STANDARD_SIGNATURE_HEADER = "webhook-signature"
"""Standard Webhooks header with one or more space-separated ``v1,<base64>``."""

SCHEMES = ("netbox", "standard", "both")
"""Signature schemes a webhook can use when sending."""

DEFAULT_TOLERANCE = 300
"""Seconds a Standard Webhooks timestamp may differ from the receiver's clock."""

_STANDARD_PREFIX = "whsec_"
_SECRET_BYTES = 24


#: Digits a ``webhook-timestamp`` may have (unix seconds need 10 until 2286).
_MAX_TIMESTAMP_DIGITS = 18


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes) -> str:
    """Return the NetBox ``X-Hook-Signature`` value for a request body.

    This is the lowercase hex HMAC-SHA512 of ``body``, exactly as NetBox
    computes it.

    :param secret: The webhook secret. A string is encoded as UTF-8; bytes
        are used as is.
    :param body: The exact request body bytes, as sent on the wire.
    """
    return hmac.new(_key(secret), body, hashlib.sha512).hexdigest()


def verify(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """Check a NetBox ``X-Hook-Signature`` value in constant time.

    Surrounding whitespace and upper-case hex digits in ``signature`` are
    accepted. A missing or empty signature, or an empty secret, never
    verifies (a sender with an empty secret sends no signature at all).

    :param secret: The shared webhook secret (``str`` is encoded as UTF-8).
    :param body: The exact request body bytes as received. Do not re-encode
        parsed JSON: any change of whitespace or key order breaks the
        signature.
    :param signature: The ``X-Hook-Signature`` header value, or ``None`` if
        the header is missing.
    """
    if not signature or not secret:
        return False
    expected = sign(secret, body).encode("ascii")
    given = signature.strip().lower().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)


def generate_secret() -> str:
    """Return a new random Standard Webhooks secret (``whsec_`` + base64).

    The secret holds 24 random bytes from :mod:`secrets`. It works for every
    scheme: with ``netbox`` the whole string is the HMAC key, with
    ``standard`` the decoded bytes are.
    """
    raw = secrets.token_bytes(_SECRET_BYTES)
    return _STANDARD_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_standard_secret(secret: str) -> bytes:
    """Return the HMAC key bytes of a Standard Webhooks secret.

    Missing base64 padding is tolerated, like the reference library does.

    :param secret: A secret of the form ``whsec_<base64>``.
    :raises ValueError: If the secret has no ``whsec_`` prefix, the rest is
        not valid base64, or it decodes to nothing. The message never
        includes the secret.
    """
    problem = (
        "a Standard Webhooks secret must be 'whsec_' followed by base64 "
        "(for example one made by flask_webhooks.signing.generate_secret())"
    )
    if not isinstance(secret, str) or not secret.startswith(_STANDARD_PREFIX):
        raise ValueError(f"{problem}; this one does not start with 'whsec_'")
    encoded = secret[len(_STANDARD_PREFIX) :]
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"{problem}; the part after 'whsec_' is not valid base64"
        ) from None
    if not key:
        raise ValueError(f"{problem}; the part after 'whsec_' is empty")
    return key


def is_standard_secret(secret: str) -> bool:
    """Return whether ``secret`` is a valid ``whsec_<base64>`` secret.

    :param secret: The secret to check.
    """
    try:
        decode_standard_secret(secret)
    except ValueError:
        return False
    return True


def _standard_digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return a Standard Webhooks ``webhook-signature`` value.

    :param secret: A ``whsec_<base64>`` secret.
    :param msg_id: The message id (the ``webhook-id`` header).
    :param timestamp: Unix time in seconds (the ``webhook-timestamp`` header).
    :param body: The exact request body bytes.
    :returns: ``"v1,<base64 HMAC-SHA256 of '<msg_id>.<timestamp>.<body>'>"``.
    :raises ValueError: If ``secret`` is not a valid Standard Webhooks secret.
    """
    digest = _standard_digest(decode_standard_secret(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def standard_headers(
    secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None
) -> dict[str, str]:
    """Return the three Standard Webhooks headers for a request.

    :param secret: A ``whsec_<base64>`` secret.
    :param msg_id: The message id; flask-webhooks uses the delivery id, which
        stays the same across retries.
    :param body: The exact request body bytes.
    :param timestamp: Unix time in seconds; defaults to now.
    :raises ValueError: If ``secret`` is not a valid Standard Webhooks secret.
    """
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        STANDARD_ID_HEADER: msg_id,
        STANDARD_TIMESTAMP_HEADER: str(ts),
        STANDARD_SIGNATURE_HEADER: sign_standard(secret, msg_id, ts, body),
    }


def _standard_problem(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> str | None:
    """Return why a Standard Webhooks request does not verify, or ``None``.

    The reasons name headers and conditions only, never the secret or the
    expected signature, so they are safe to send back to the caller.
    """
    key = decode_standard_secret(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(STANDARD_ID_HEADER, "").strip()
    raw_ts = lowered.get(STANDARD_TIMESTAMP_HEADER, "").strip()
    raw_sigs = lowered.get(STANDARD_SIGNATURE_HEADER, "").strip()
    if not (msg_id and raw_ts and raw_sigs):
        return "missing Standard Webhooks headers (webhook-id, webhook-timestamp, webhook-signature)"
    # int() alone would also accept "+1", "1_000" or non-ASCII digits; an
    # overlong one would raise (OverflowError comparing with the clock,
    # ValueError past Python's 4300-digit limit) instead of not verifying.
    if not (
        raw_ts.isascii() and raw_ts.isdigit() and len(raw_ts) <= _MAX_TIMESTAMP_DIGITS
    ):
        return "invalid webhook-timestamp header"
    timestamp = int(raw_ts)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return "webhook-timestamp is outside the allowed tolerance"
    expected = _standard_digest(key, msg_id, timestamp, body)
    matched = False
    for versioned in raw_sigs.split():
        version, _, encoded = versioned.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Compare every candidate so timing does not reveal which one matched.
        matched |= hmac.compare_digest(expected, given)
    return None if matched else "no matching webhook-signature"


def verify_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Check a Standard Webhooks request.

    Header names are matched case-insensitively. ``webhook-signature`` may
    hold several space-separated signatures (for example during a secret
    rotation): any matching ``v1,`` signature is enough, and other versions
    are ignored. Signatures are compared in constant time.

    :param secret: A ``whsec_<base64>`` secret.
    :param headers: The request headers (any mapping of name to value).
    :param body: The exact request body bytes as received.
    :param tolerance: Maximum difference in seconds between
        ``webhook-timestamp`` and ``now``, in both directions; protects
        against replayed requests.
    :param now: Current unix time; defaults to :func:`time.time`. Useful to
        pin time in tests.
    :raises ValueError: If ``secret`` is not a valid Standard Webhooks
        secret (a configuration error, not a bad request).
    """
    return (
        _standard_problem(secret, headers, body, tolerance=tolerance, now=now) is None
    )


def signature_headers(
    scheme: str,
    secret: str,
    delivery_id: str,
    body: bytes,
    *,
    timestamp: int | None = None,
    previous_secret: str = "",
) -> dict[str, str]:
    """Return the signature headers a sender adds to a request.

    :param scheme: ``"netbox"`` (``X-Hook-Signature``), ``"standard"``
        (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) or
        ``"both"``.
    :param secret: The webhook secret. An empty secret means "do not sign"
        and returns ``{}``. The ``standard`` and ``both`` schemes need a
        ``whsec_<base64>`` secret.
    :param delivery_id: The delivery id, used as the Standard Webhooks
        message id.
    :param body: The exact request body bytes.
    :param timestamp: Unix time of the attempt; defaults to now.
    :param previous_secret: The secret being rotated out, while the rotation
        overlap lasts (empty otherwise). ``X-Hook-Signature`` (one digest, no
        room for two) is still computed with it, so receivers switch when the
        overlap ends; ``webhook-signature`` carries a ``v1,`` signature with
        each secret, the new one first (an old secret that is not a
        ``whsec_`` secret adds none).
    :raises ValueError: For an unknown scheme, or a secret that is not a
        Standard Webhooks secret when one is needed.
    """
    if scheme not in SCHEMES:
        raise ValueError(
            f"unknown signature scheme {scheme!r}; expected one of {', '.join(SCHEMES)}"
        )
    if not secret:
        return {}
    headers: dict[str, str] = {}
    if scheme in ("netbox", "both"):
        headers[SIGNATURE_HEADER] = sign(previous_secret or secret, body)
    if scheme in ("standard", "both"):
        ts = int(time.time()) if timestamp is None else timestamp
        headers.update(standard_headers(secret, delivery_id, body, timestamp=ts))
        if previous_secret and is_standard_secret(previous_secret):
            old = sign_standard(previous_secret, delivery_id, ts, body)
            headers[STANDARD_SIGNATURE_HEADER] += " " + old
    return headers
