"""The default JSON body, byte for byte: the envelope's key order, compact
separators, UTF-8 without escapes, and how non-JSON values are written."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import math
import uuid

import pytest
import sqlalchemy as sa
from flask_webhooks.payload import dumps
from flask_webhooks.payload import envelope
from flask_webhooks.payload import render
from flask_webhooks.registry import Registry
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column


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


# -- strict JSON (issue 13, item 5) -------------------------------------------


def _refuse(token: str) -> None:
    raise ValueError(f"not RFC 8259 JSON: {token}")


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"]
)
def test_non_finite_numbers_are_null(value):
    payload = envelope(
        event="created",
        timestamp="2026-11-28T15:11:51+00:00",
        model="site",
        username=None,
        request_id=None,
        data={"score": value, "scores": [1.5, value], "nested": {"x": value}},
        prechange=None,
        postchange={"score": value, "kept": {value}},
    )
    body = dumps(payload)
    parsed = json.loads(body, parse_constant=_refuse)
    assert parsed["data"] == {
        "score": None,
        "scores": [1.5, None],
        "nested": {"x": None},
    }
    assert parsed["snapshots"]["postchange"] == {"score": None, "kept": [None]}


def test_json_filter_is_strict_too():
    text = render("{{ data|json }}", {"data": {"a": math.nan, "b": 1.0}})
    assert json.loads(text, parse_constant=_refuse) == {"a": None, "b": 1.0}


# -- binary columns through the auto schema (issue 13, item 6) ------------------


def test_binary_columns_dump_as_base64_in_data_and_snapshots():
    class Base(DeclarativeBase):
        pass

    class Blob(Base):
        __tablename__ = "blob"
        id: Mapped[int] = mapped_column(primary_key=True)
        raw: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
        fixed: Mapped[bytes | None] = mapped_column(sa.BINARY(4))
        name: Mapped[str] = mapped_column(sa.String(10))

    registration = Registry().add(Blob)
    blob = Blob(id=1, raw=b"\xff\x00\xfe binary", fixed=b"\x80\x81\x82\x83", name="b")
    data = registration.dump(blob)
    assert data == {
        "id": 1,
        "raw": base64.b64encode(b"\xff\x00\xfe binary").decode(),
        "fixed": "gIGCgw==",
        "name": "b",
    }
    snapshot = json.loads(dumps(registration.snapshot(blob)))
    assert snapshot["raw"] == data["raw"] and snapshot["fixed"] == data["fixed"]
    assert registration.dump(Blob(id=2, raw=None, fixed=None, name="n"))["raw"] is None
