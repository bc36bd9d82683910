from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import pytest
from flask import current_app
from flask import Flask
from flask import request
from flask.testing import FlaskClient
from flask_webhooks.receiver import verify_webhook
from flask_webhooks.signing import generate_secret
from flask_webhooks.signing import sign
from flask_webhooks.signing import standard_headers
from flask_webhooks.signing import verify
from flask_webhooks.signing import verify_standard

NETBOX_SECRET = "receiver-secret"
STANDARD_SECRET = generate_secret()
PAYLOAD = {"event": "updated", "model": "site", "data": {"id": 7, "name": "Zürich"}}
BODY = json.dumps(PAYLOAD).encode()
DELIVERY_ID = "0c7e7b1e-0a57-4b5e-a1c4-9d2c1f5e8e01"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def receiver_app() -> Flask:
    app = Flask(__name__)
    app.config["HOOK_SECRET"] = NETBOX_SECRET

    @app.post("/netbox")
    @verify_webhook(NETBOX_SECRET)
    def netbox() -> dict[str, object]:
        return {"got": request.get_json(), "raw": request.get_data(as_text=True)}

    @app.post("/standard")
    @verify_webhook(STANDARD_SECRET, scheme="standard")
    def standard() -> dict[str, object]:
        return {"got": request.get_json()}

    @app.post("/any")
    @verify_webhook(STANDARD_SECRET, scheme="any")
    def any_scheme() -> dict[str, object]:
        return {"got": request.get_json()}

    @app.post("/lazy/<int:site_id>")
    @verify_webhook(lambda: current_app.config["HOOK_SECRET"])
    def lazy(site_id: int) -> dict[str, object]:
        return {"site_id": site_id, "got": request.get_json()}

    return app


@pytest.fixture
def client(receiver_app: Flask) -> FlaskClient:
    return receiver_app.test_client()


def netbox_headers(secret: str = NETBOX_SECRET, body: bytes = BODY) -> dict[str, str]:
    return {**JSON, "X-Hook-Signature": sign(secret, body)}


def std_headers(
    secret: str = STANDARD_SECRET, body: bytes = BODY, timestamp: int | None = None
) -> dict[str, str]:
    return {**JSON, **standard_headers(secret, DELIVERY_ID, body, timestamp=timestamp)}


def test_good_netbox_signature_reaches_view_with_body(client: FlaskClient) -> None:
    response = client.post("/netbox", data=BODY, headers=netbox_headers())
    assert response.status_code == 200
    assert response.json == {"got": PAYLOAD, "raw": BODY.decode()}


def test_netbox_signature_case_and_whitespace_tolerated(client: FlaskClient) -> None:
    headers = {
        **JSON,
        "X-Hook-Signature": " " + sign(NETBOX_SECRET, BODY).upper() + " ",
    }
    assert client.post("/netbox", data=BODY, headers=headers).status_code == 200


def test_missing_netbox_signature_is_401(client: FlaskClient) -> None:
    response = client.post("/netbox", data=BODY, headers=JSON)
    assert response.status_code == 401
    assert "missing X-Hook-Signature header" in response.get_data(as_text=True)


def test_bad_netbox_signature_is_401_without_leaking(client: FlaskClient) -> None:
    response = client.post("/netbox", data=BODY, headers=netbox_headers(secret="wrong"))
    text = response.get_data(as_text=True)
    assert response.status_code == 401
    assert "invalid X-Hook-Signature" in text
    assert NETBOX_SECRET not in text
    assert sign(NETBOX_SECRET, BODY) not in text


def test_tampered_body_is_401(client: FlaskClient) -> None:
    response = client.post("/netbox", data=BODY + b" ", headers=netbox_headers())
    assert response.status_code == 401


def test_standard_scheme_good_signature(client: FlaskClient) -> None:
    response = client.post("/standard", data=BODY, headers=std_headers())
    assert response.status_code == 200
    assert response.json == {"got": PAYLOAD}


def test_standard_scheme_rejects_netbox_only_request(client: FlaskClient) -> None:
    headers = netbox_headers(secret=STANDARD_SECRET)
    response = client.post("/standard", data=BODY, headers=headers)
    assert response.status_code == 401
    assert "missing Standard Webhooks headers" in response.get_data(as_text=True)


def test_standard_scheme_rejects_stale_and_future(client: FlaskClient) -> None:
    now = int(time.time())
    for timestamp in (now - 3600, now + 3600):
        response = client.post(
            "/standard", data=BODY, headers=std_headers(timestamp=timestamp)
        )
        assert response.status_code == 401
        assert "outside the allowed tolerance" in response.get_data(as_text=True)


def test_standard_scheme_rejects_wrong_secret(client: FlaskClient) -> None:
    response = client.post(
        "/standard", data=BODY, headers=std_headers(secret=generate_secret())
    )
    assert response.status_code == 401
    assert "no matching webhook-signature" in response.get_data(as_text=True)


def test_tolerance_is_configurable() -> None:
    app = Flask(__name__)

    @app.post("/")
    @verify_webhook(STANDARD_SECRET, scheme="standard", tolerance=3600)
    def view() -> str:
        return "ok"

    headers = std_headers(timestamp=int(time.time()) - 1800)
    assert app.test_client().post("/", data=BODY, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(lambda: netbox_headers(secret=STANDARD_SECRET), id="netbox"),
        pytest.param(lambda: std_headers(), id="standard"),
        pytest.param(
            lambda: {**netbox_headers(secret=STANDARD_SECRET), **std_headers()},
            id="both",
        ),
        pytest.param(
            lambda: {**netbox_headers(secret="wrong"), **std_headers()},
            id="bad-netbox-good-std",
        ),
    ],
)
def test_any_scheme_accepts_whichever_valid_signature(
    client: FlaskClient, headers: Callable[[], dict[str, str]]
) -> None:
    response = client.post("/any", data=BODY, headers=headers())
    assert response.status_code == 200
    assert response.json == {"got": PAYLOAD}


def test_any_scheme_rejects_unsigned_and_bad(client: FlaskClient) -> None:
    response = client.post("/any", data=BODY, headers=JSON)
    assert response.status_code == 401
    assert "missing signature header" in response.get_data(as_text=True)

    headers = {
        **netbox_headers(secret="wrong"),
        **std_headers(secret=generate_secret()),
    }
    response = client.post("/any", data=BODY, headers=headers)
    assert response.status_code == 401
    text = response.get_data(as_text=True)
    assert "invalid X-Hook-Signature" in text
    assert "no matching webhook-signature" in text


def test_any_scheme_with_plain_secret_still_checks_netbox() -> None:
    app = Flask(__name__)

    @app.post("/")
    @verify_webhook("plain", scheme="any")
    def view() -> str:
        return "ok"

    client = app.test_client()
    assert (
        client.post("/", data=BODY, headers=netbox_headers(secret="plain")).status_code
        == 200
    )
    response = client.post("/", data=BODY, headers=std_headers())
    assert response.status_code == 401
    assert "not accepted here" in response.get_data(as_text=True)


def test_callable_secret_reads_app_config(
    receiver_app: Flask, client: FlaskClient
) -> None:
    response = client.post("/lazy/7", data=BODY, headers=netbox_headers())
    assert response.status_code == 200
    assert response.json == {"site_id": 7, "got": PAYLOAD}

    # The secret is read per request, so a rotated value applies immediately.
    receiver_app.config["HOOK_SECRET"] = "rotated"
    assert (
        client.post("/lazy/7", data=BODY, headers=netbox_headers()).status_code == 401
    )
    response = client.post(
        "/lazy/7", data=BODY, headers=netbox_headers(secret="rotated")
    )
    assert response.status_code == 200


def test_empty_secret_is_a_server_error_not_an_open_door(
    receiver_app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    receiver_app.config["HOOK_SECRET"] = ""
    response = client.post("/lazy/1", data=BODY, headers=netbox_headers(secret=""))
    assert response.status_code == 500
    assert "the webhook secret is empty" in caplog.text


def test_view_can_read_form_body_after_verification() -> None:
    app = Flask(__name__)

    @app.post("/")
    @verify_webhook(NETBOX_SECRET)
    def view() -> dict[str, object]:
        return dict(request.form)

    body = b"event=created&model=site"
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Hook-Signature": sign(NETBOX_SECRET, body),
    }
    response = app.test_client().post("/", data=body, headers=headers)
    assert response.status_code == 200
    assert response.json == {"event": "created", "model": "site"}


def test_decorator_keeps_view_name() -> None:
    @verify_webhook(NETBOX_SECRET)
    def my_hook() -> str:
        """Handle a hook."""
        return "ok"

    assert my_hook.__name__ == "my_hook"
    assert my_hook.__doc__ == "Handle a hook."


def test_unknown_scheme_is_rejected_at_decoration() -> None:
    with pytest.raises(ValueError, match="'both'"):
        verify_webhook(NETBOX_SECRET, scheme="both")


def test_standard_scheme_needs_whsec_secret_at_decoration() -> None:
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64"):
        verify_webhook("plain", scheme="standard")


# -- garbage never raises (issue 13, item 4) ----------------------------------

GARBAGE_TIMESTAMPS = ["9" * 400, "9" * 5000, "1" * 19, "٣٤", "+1", "1_0", "-5", "1e9"]


@pytest.mark.parametrize("timestamp", GARBAGE_TIMESTAMPS, ids=range(8))
@pytest.mark.parametrize("path", ["/standard", "/any"])
def test_garbage_timestamp_is_401_not_500(
    client: FlaskClient, path: str, timestamp: str
) -> None:
    headers = std_headers()
    headers["webhook-timestamp"] = timestamp
    response = client.post(path, data=BODY, headers=headers)
    assert response.status_code == 401
    assert b"webhook-timestamp" in response.data or b"signature" in response.data


@pytest.mark.parametrize("timestamp", GARBAGE_TIMESTAMPS, ids=range(8))
def test_verify_standard_returns_false_for_garbage_timestamp(timestamp: str) -> None:
    headers = std_headers()
    headers["webhook-timestamp"] = timestamp
    assert verify_standard(STANDARD_SECRET, headers, BODY) is False


def test_fuzzed_headers_never_raise(client: FlaskClient) -> None:
    rng = random.Random(13)
    alphabet = "0123456789abcdef,v1 .=+/_-é€\t\x7f" + "ÿ"
    good = std_headers()
    for _ in range(300):
        headers = dict(good)
        for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
            if rng.random() < 0.6:
                length = rng.choice([0, 1, 5, 44, 400, 5000])
                headers[name] = "".join(rng.choice(alphabet) for _ in range(length))
        netbox = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 128, 999])))
        assert verify_standard(STANDARD_SECRET, headers, BODY) in (True, False)
        assert verify(NETBOX_SECRET, BODY, netbox) is False
        wire = {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}
        wire["X-Hook-Signature"] = netbox.encode("utf-8").decode("latin-1")
        for path in ("/standard", "/any", "/netbox"):
            response = client.post(path, data=BODY, headers=wire)
            assert response.status_code in (200, 401), (path, wire)
