"""The event catalog's JSON Schema of a marshmallow schema's dump
(:func:`flask_webhooks.catalog.json_schema`), checked against real dumps."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import typing as t
import uuid

import marshmallow as ma
import pytest
from flask_webhooks.catalog import json_schema
from flask_webhooks.payload import dumps
from flask_webhooks.registry import Registry

jsonschema = pytest.importorskip("jsonschema")


class Color(enum.Enum):
    red = "r"
    green = "g"


class Line(ma.Schema):
    sku = ma.fields.String()
    qty = ma.fields.Integer()


class Order(ma.Schema):
    id = ma.fields.UUID()
    total = ma.fields.Decimal(allow_none=True)
    placed = ma.fields.AwareDateTime(data_key="placedAt")
    day = ma.fields.Date()
    paid = ma.fields.Boolean()
    weight = ma.fields.Float()
    email = ma.fields.Email()
    color = ma.fields.Enum(Color, by_value=True)
    shade = ma.fields.Enum(Color)
    lines = ma.fields.List(ma.fields.Nested(Line))
    first = ma.fields.Nested(Line, allow_none=True)
    skus = ma.fields.Pluck(Line, "sku", many=True)
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer())
    pair = ma.fields.Tuple((ma.fields.Integer(), ma.fields.String()))
    parent = ma.fields.Nested(lambda: Order(), allow_none=True)
    computed = ma.fields.Method("compute")
    password = ma.fields.String(load_only=True)

    def compute(self, obj: t.Any) -> t.Any:
        return [1, "two"]


ORDER = {
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "total": decimal.Decimal("12.50"),
    "placed": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "day": dt.date(2026, 1, 2),
    "paid": True,
    "weight": 1.5,
    "email": "a@example.com",
    "color": Color.red,
    "shade": Color.green,
    "lines": [{"sku": "A", "qty": 2}],
    "first": None,
    "skus": [{"sku": "A"}],
    "labels": {"x": 1},
    "pair": (1, "a"),
    "parent": {"id": uuid.UUID(int=1), "lines": []},
    "password": "never dumped",
}


def test_the_schema_describes_the_json_the_payload_carries() -> None:
    schema = json_schema(Order())
    sent = json.loads(dumps(Order().dump(ORDER)))
    jsonschema.validate(sent, schema)
    props = schema["properties"]
    assert "password" not in props
    assert props["placedAt"] == {"type": "string", "format": "date-time"}
    assert props["total"] == {"type": ["string", "null"], "format": "decimal"}
    assert props["color"] == {"type": "string", "enum": ["r", "g"]}
    assert props["shade"] == {"type": "string", "enum": ["red", "green"]}
    assert props["skus"] == {"type": "array", "items": {"type": "string"}}
    assert props["parent"] == {"anyOf": [{"$ref": "#"}, {"type": "null"}]}
    assert props["computed"] == {}


@pytest.mark.parametrize(
    ("field", "bad"),
    [("total", 12.5), ("color", "blue"), ("lines", [{"qty": "2"}]), ("day", 3)],
)
def test_the_schema_rejects_what_the_payload_never_carries(
    field: str, bad: t.Any
) -> None:
    sent = json.loads(dumps(Order().dump(ORDER)))
    sent[field] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sent, json_schema(Order()))


def test_event_types_keep_their_schema_instance() -> None:
    registry = Registry()
    declared = registry.add_event_type("order.placed", schema=Order)
    assert isinstance(declared.schema, Order)
    with pytest.raises(TypeError, match="'schema' must be a marshmallow Schema"):
        registry.add_event_type("order.lost", schema=dict)  # type: ignore[arg-type]
