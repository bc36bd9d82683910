from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import time
from datetime import datetime
from datetime import UTC
from pathlib import Path

import pytest
from flask_webhooks import signing
from flask_webhooks.signing import decode_standard_secret
from flask_webhooks.signing import DEFAULT_TOLERANCE
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import is_standard_secret
from flask_webhooks.signing import SCHEMES
from flask_webhooks.signing import sign
from flask_webhooks.signing import sign_standard
from flask_webhooks.signing import SIGNATURE_HEADER
from flask_webhooks.signing import signature_headers
from flask_webhooks.signing import standard_headers
from flask_webhooks.signing import verify
from flask_webhooks.signing import verify_standard
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

BODY = b'{"event": "created", "model": "site", "data": {"name": "Caf\xc3\xa9 \xe2\x98\x95"}}'
NETBOX_SECRET = "s3cr\u00e9t"
STANDARD_KEY = bytes(range(24))
STANDARD_SECRET = "whsec_" + base64.b64encode(STANDARD_KEY).decode()
MSG_ID = "2f0b1c6e-5d1a-4f57-9d43-2b1f1f0c9a11"
NOW = 1_790_000_000


def expected_netbox(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha512).hexdigest()


def expected_standard(key: bytes, msg_id: str, ts: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def test_constants() -> None:
    assert SIGNATURE_HEADER == "X-Hook-Signature"
    assert SCHEMES == ("netbox", "standard", "both")
    assert DEFAULT_TOLERANCE == 300


def test_signing_does_not_import_flask() -> None:
    # Receivers use the module without Flask; check its own imports.
    tree = ast.parse(Path(signing.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    }
    assert imported
    assert not {
        name for name in imported if name.split(".")[0] in {"flask", "werkzeug"}
    }


# NetBox scheme ---------------------------------------------------------------


def test_sign_known_answer_str_secret_is_utf8() -> None:
    got = sign(NETBOX_SECRET, BODY)
    assert got == expected_netbox(NETBOX_SECRET.encode("utf-8"), BODY)
    assert got == got.lower()
    assert len(got) == 128


def test_sign_bytes_secret_used_as_is() -> None:
    key = b"\xff\x00raw"
    assert sign(key, BODY) == expected_netbox(key, BODY)


def test_sign_known_vector() -> None:
    # RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?"
    assert sign("Jefe", b"what do ya want for nothing?") == (
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    )


def test_verify_round_trip() -> None:
    assert verify(NETBOX_SECRET, BODY, sign(NETBOX_SECRET, BODY))


def test_verify_tolerates_case_and_whitespace() -> None:
    sig = sign(NETBOX_SECRET, BODY)
    assert verify(NETBOX_SECRET, BODY, f"  {sig.upper()}\n")


@pytest.mark.parametrize("signature", [None, "", "   "])
def test_verify_rejects_missing_signature(signature: str | None) -> None:
    assert not verify(NETBOX_SECRET, BODY, signature)


def test_verify_rejects_tampered_body() -> None:
    sig = sign(NETBOX_SECRET, BODY)
    assert not verify(NETBOX_SECRET, BODY + b" ", sig)
    assert not verify(NETBOX_SECRET, BODY.replace(b"site", b"Site"), sig)


def test_verify_rejects_wrong_secret() -> None:
    assert not verify("other", BODY, sign(NETBOX_SECRET, BODY))


def test_verify_rejects_truncated_and_garbage_signatures() -> None:
    sig = sign(NETBOX_SECRET, BODY)
    assert not verify(NETBOX_SECRET, BODY, sig[:-1])
    assert not verify(NETBOX_SECRET, BODY, "sha512=" + sig)
    assert not verify(NETBOX_SECRET, BODY, "\u00e9" * 128)


def test_verify_with_empty_secret_never_passes() -> None:
    # An empty secret means "unsigned" on the sender side; a receiver with a
    # forgotten secret must not accept the trivially computable empty-key HMAC.
    assert not verify("", BODY, expected_netbox(b"", BODY))


# Standard Webhooks: secrets ------------------------------------------------


def test_generate_secret_is_standard_and_random() -> None:
    first, second = generate_secret(), generate_secret()
    assert first != second
    assert first.startswith("whsec_")
    assert len(decode_standard_secret(first)) == 24
    assert is_standard_secret(first)
    # The reference library accepts it too.
    Webhook(first)


def test_decode_standard_secret() -> None:
    assert decode_standard_secret(STANDARD_SECRET) == STANDARD_KEY


def test_decode_standard_secret_tolerates_missing_padding() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789").decode().rstrip("=")
    assert decode_standard_secret(secret) == b"0123456789"


@pytest.mark.parametrize(
    ("secret", "detail"),
    [
        ("plain-secret", "does not start with 'whsec_'"),
        (base64.b64encode(STANDARD_KEY).decode(), "does not start with 'whsec_'"),
        ("whsec_", "empty"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_a", "not valid base64"),
    ],
)
def test_decode_standard_secret_rejects_invalid(secret: str, detail: str) -> None:
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64") as info:
        decode_standard_secret(secret)
    assert detail in str(info.value)
    assert not is_standard_secret(secret)


def test_invalid_secret_message_does_not_leak_secret() -> None:
    with pytest.raises(ValueError) as info:
        decode_standard_secret("whsec_TopSecret!!")
    assert "TopSecret" not in str(info.value)


# Standard Webhooks: signing and verifying ----------------------------------


def test_sign_standard_known_answer() -> None:
    assert sign_standard(STANDARD_SECRET, MSG_ID, NOW, BODY) == expected_standard(
        STANDARD_KEY, MSG_ID, NOW, BODY
    )


def test_standard_headers() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": expected_standard(STANDARD_KEY, MSG_ID, NOW, BODY),
    }


def test_standard_headers_default_to_current_time() -> None:
    before = int(time.time())
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY)
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())


def test_verify_standard_round_trip() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


def test_verify_standard_header_names_are_case_insensitive() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    mixed = {
        "Webhook-Id": headers["webhook-id"],
        "WEBHOOK-TIMESTAMP": headers["webhook-timestamp"],
    }
    mixed["Webhook-Signature"] = headers["webhook-signature"]
    assert verify_standard(STANDARD_SECRET, mixed, BODY, now=NOW)


def test_verify_standard_accepts_any_of_several_signatures() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    other = expected_standard(b"old key during rotation", MSG_ID, NOW, BODY)
    headers["webhook-signature"] = (
        f"v1a,abc {other} v2,{headers['webhook-signature'][3:]} v1,@@@ "
        f"{headers['webhook-signature']}"
    )
    assert verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


def test_verify_standard_ignores_non_v1_versions() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    headers["webhook-signature"] = "v2," + headers["webhook-signature"][3:]
    assert not verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


def test_verify_standard_rejects_tampering() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert not verify_standard(STANDARD_SECRET, headers, BODY + b"x", now=NOW)
    assert not verify_standard(
        STANDARD_SECRET, {**headers, "webhook-id": "other-id"}, BODY, now=NOW
    )
    # Shifting the timestamp, even within tolerance, breaks the signature.
    assert not verify_standard(
        STANDARD_SECRET, {**headers, "webhook-timestamp": str(NOW + 1)}, BODY, now=NOW
    )


def test_verify_standard_rejects_wrong_secret() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert not verify_standard(generate_secret(), headers, BODY, now=NOW)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE, -DEFAULT_TOLERANCE, 0])
def test_verify_standard_accepts_timestamps_within_tolerance(offset: int) -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW + offset)
    assert verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "offset", [DEFAULT_TOLERANCE + 1, -(DEFAULT_TOLERANCE + 1), 86_400]
)
def test_verify_standard_rejects_stale_and_future_timestamps(offset: int) -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW + offset)
    assert not verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


def test_verify_standard_custom_tolerance() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW - 60)
    assert verify_standard(STANDARD_SECRET, headers, BODY, now=NOW, tolerance=60)
    assert not verify_standard(STANDARD_SECRET, headers, BODY, now=NOW, tolerance=59)


@pytest.mark.parametrize(
    "missing", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_verify_standard_rejects_missing_header(missing: str) -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    del headers[missing]
    assert not verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "timestamp", ["soon", "1.5e9", "+1790000000", "1_790_000_000", "-1"]
)
def test_verify_standard_rejects_malformed_timestamp(timestamp: str) -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    headers["webhook-timestamp"] = timestamp
    assert not verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


def test_verify_standard_with_invalid_secret_raises() -> None:
    headers = standard_headers(STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    with pytest.raises(ValueError, match="whsec_"):
        verify_standard("not-a-standard-secret", headers, BODY, now=NOW)


def test_sign_standard_with_invalid_secret_raises() -> None:
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64"):
        sign_standard("plain", MSG_ID, NOW, BODY)


# Interoperability with the standardwebhooks reference library --------------


def test_our_headers_verify_with_reference_library() -> None:
    secret = generate_secret()
    headers = standard_headers(secret, MSG_ID, BODY)  # the library uses the real clock
    payload = Webhook(secret).verify(BODY, headers)
    assert payload == json.loads(BODY)


def test_reference_library_rejects_our_headers_for_other_body() -> None:
    secret = generate_secret()
    headers = standard_headers(secret, MSG_ID, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)


def test_reference_library_signature_verifies_with_ours() -> None:
    secret = generate_secret()
    sent_at = datetime.fromtimestamp(NOW, tz=UTC)
    library_sig = Webhook(secret).sign(MSG_ID, sent_at, BODY.decode("utf-8"))
    assert library_sig == sign_standard(secret, MSG_ID, NOW, BODY)
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": library_sig,
    }
    assert verify_standard(secret, headers, BODY, now=NOW + 10)
    assert not verify_standard(secret, headers, BODY, now=NOW + DEFAULT_TOLERANCE + 1)


# What the sender adds --------------------------------------------------------


def test_signature_headers_netbox() -> None:
    headers = signature_headers("netbox", NETBOX_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert headers == {
        "X-Hook-Signature": expected_netbox(NETBOX_SECRET.encode(), BODY)
    }


def test_signature_headers_standard() -> None:
    headers = signature_headers(
        "standard", STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW
    )
    assert headers == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": expected_standard(STANDARD_KEY, MSG_ID, NOW, BODY),
    }


def test_signature_headers_both() -> None:
    headers = signature_headers("both", STANDARD_SECRET, MSG_ID, BODY, timestamp=NOW)
    assert headers == {
        # NetBox keys with the whole secret string, Standard with its decoded bytes.
        "X-Hook-Signature": expected_netbox(STANDARD_SECRET.encode(), BODY),
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(NOW),
        "webhook-signature": expected_standard(STANDARD_KEY, MSG_ID, NOW, BODY),
    }
    assert verify(STANDARD_SECRET, BODY, headers["X-Hook-Signature"])
    assert verify_standard(STANDARD_SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_signature_headers_empty_secret_means_unsigned(scheme: str) -> None:
    assert signature_headers(scheme, "", MSG_ID, BODY) == {}


def test_signature_headers_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="'github'"):
        signature_headers("github", NETBOX_SECRET, MSG_ID, BODY)


@pytest.mark.parametrize("scheme", ["standard", "both"])
def test_signature_headers_standard_needs_whsec_secret(scheme: str) -> None:
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64"):
        signature_headers(scheme, "plain-secret", MSG_ID, BODY, timestamp=NOW)
