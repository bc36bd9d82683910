"""The default JSON body, byte for byte: the envelope's key order, compact
separators, UTF-8 without escapes, and how non-JSON values are written."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

import pytest
from flask_webhooks.payload import dumps
from flask_webhooks.payload import envelope


class Plain(enum.Enum):
    one = "first"
    two = 2


def test_default_payload_bytes():
    payload = envelope(
        event="updated",
        timestamp="2026-11-28T15:11:51.123456+00:00",
        model="site",
        username="admin",
        request_id=str(uuid.UUID(int=7)),
        data={"id": 1, "budget": decimal.Decimal("12.50"), "tags": [{"slug": "x"}]},
        prechange={"status": Plain.one, "budget": None, "opened": dt.date(2026, 1, 2)},
        postchange={"status": Plain.two, "budget": decimal.Decimal("3"), "w": 0.5},
    )
    expected = (
        b'{"event":"updated","timestamp":"2026-11-28T15:11:51.123456+00:00",'
        b'"model":"site","username":"admin",'
        b'"request_id":"00000000-0000-0000-0000-000000000007",'
        b'"data":{"id":1,"budget":"12.50","tags":[{"slug":"x"}]},'
        b'"snapshots":{"prechange":{"status":"one","budget":null,'
        b'"opened":"2026-01-02"},"postchange":{"status":"two","budget":"3","w":0.5}}}'
    )
    assert dumps(payload).encode("utf-8") == expected


def test_text_is_utf8_without_escapes():
    text = 'quote " backslash \\ \x00 é 😀'
    assert dumps({"t": text}).encode("utf-8") == (
        '{"t":"quote \\" backslash \\\\ \\u0000 é 😀"}'.encode()
    )


def test_unsupported_values_raise():
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        dumps({"x": object()})
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="Circular reference"):
        dumps(loop)
