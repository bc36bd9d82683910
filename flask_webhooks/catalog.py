"""The event catalog: declared app event types and the shape of their data.

:func:`json_schema` describes what a marshmallow schema's *dump* looks like
in the JSON payload, as a JSON Schema (draft 2020-12), so a receiver's
developer can read what ``data`` holds. It follows what the payload encoder
sends, not what the schema would load: ``Decimal`` is a string (no precision
is lost), ``Enum`` its name or value, binary fields base64 text;
``load_only`` fields are left out and ``data_key`` names the property.

Common fields map to their JSON type (strings with a ``format`` for dates,
times, UUIDs, e-mail addresses, URLs and IP addresses); ``List``, ``Tuple``,
``Dict``, ``Nested`` and ``Pluck`` to arrays and objects (nested schemas
inline, to a depth of :data:`MAX_DEPTH`; a schema nested in itself refers
back with ``$ref``); ``allow_none`` adds ``"null"``.
Fields whose output cannot be known ahead (``Method``, ``Function``,
``Raw``, custom fields) are ``{}`` (any value), with the field's
``metadata["description"]`` when it has one, as every property does.
"""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

import marshmallow as ma
from marshmallow import fields as f

if t.TYPE_CHECKING:
    from .registry import EventType
    from .registry import Registry

__all__ = ["MAX_DEPTH", "CatalogEntry", "catalog", "json_schema"]

#: Nested schemas deeper than this are described as ``{}`` (any value), so a
#: self-referencing schema ends.
MAX_DEPTH = 6
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_FORMATS: tuple[tuple[type[f.Field[t.Any]], str], ...] = (
    (f.Email, "email"),
    (f.Url, "uri"),
    (f.UUID, "uuid"),
    (f.IPv4, "ipv4"),
    (f.IPv6, "ipv6"),
)


@dataclass(frozen=True)
class CatalogEntry:
    """One declared event type, as the catalog shows it."""

    name: str
    description: str
    #: The JSON Schema of ``data``, or None without a marshmallow schema.
    schema: dict[str, t.Any] | None

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "name": self.name,
            "description": self.description,
            "schema": self.schema,
        }


def catalog(registry: Registry) -> list[CatalogEntry]:
    """Every declared event type, sorted by name, with its data's JSON Schema."""
    return [_entry(e) for e in registry.event_types()]


def _entry(event_type: EventType) -> CatalogEntry:
    schema = event_type.schema
    return CatalogEntry(
        event_type.name,
        event_type.description,
        json_schema(schema) if schema is not None else None,
    )


def json_schema(schema: ma.Schema) -> dict[str, t.Any]:
    """A JSON Schema of what ``schema.dump(obj)`` puts in the JSON payload.

    :param schema: a marshmallow schema instance.
    """
    return {"$schema": _DIALECT, **_object(schema, ())}


#: The schema classes from the root down to the field being described.
_Path = tuple[type[ma.Schema], ...]


def _object(schema: ma.Schema, path: _Path) -> dict[str, t.Any]:
    path = (*path, type(schema))
    result: dict[str, t.Any] = {"type": "object"}
    title = type(schema).__name__
    if title not in ("Schema", "SQLAlchemyAutoSchema"):
        result["title"] = title.removesuffix("AutoSchema")
    properties: dict[str, t.Any] = {}
    for name, field in schema.dump_fields.items():
        properties[field.data_key or name] = _field(field, path)
    result["properties"] = properties
    return result


def _field(field: f.Field[t.Any], path: _Path) -> dict[str, t.Any]:
    found = _shape(field, path)
    if field.allow_none:
        kind = found.get("type")
        if isinstance(kind, str):
            found["type"] = [kind, "null"]
        elif found and kind is None:
            found = {"anyOf": [found, {"type": "null"}]}
    description = (field.metadata or {}).get("description")
    if description:
        found["description"] = str(description)
    return found


def _shape(field: f.Field[t.Any], path: _Path) -> dict[str, t.Any]:
    # Subclasses before their bases: Email and Url are Strings, Pluck a Nested.
    for cls, fmt in _FORMATS:
        if isinstance(field, cls):
            return {"type": "string", "format": fmt}
    if isinstance(field, f.Pluck):
        plucked = _field(field.schema.fields[field.field_name], path)
        return {"type": "array", "items": plucked} if field.many else plucked
    if isinstance(field, f.Nested):
        return _nested(field, path)
    if isinstance(field, f.List):
        return {"type": "array", "items": _field(field.inner, path)}
    if isinstance(field, f.Tuple):
        items = [_field(inner, path) for inner in field.tuple_fields]
        return {"type": "array", "prefixItems": items, "items": False}
    if isinstance(field, f.Mapping):
        values = field.value_field
        extra = _field(values, path) if values is not None else {}
        return {"type": "object", "additionalProperties": extra}
    if isinstance(field, f.Enum):
        return _enum(field)
    if isinstance(field, f.Decimal):
        # The payload encoder writes Decimal as a string (exact); a Decimal
        # field with as_string does too.
        return {"type": "string", "format": "decimal"}
    if isinstance(field, f.Boolean):
        return {"type": "boolean"}
    if isinstance(field, f.Integer):
        return {"type": "integer"}
    if isinstance(field, f.Number | f.TimeDelta):
        return {"type": "number"}
    if isinstance(field, f.DateTime | f.Date | f.Time):
        return _temporal(field)
    if isinstance(field, f.String | f.IP | f.IPInterface):
        return {"type": "string"}
    if isinstance(field, f.Constant):
        return {"const": field.constant}
    return _other(field)


def _nested(field: f.Nested, path: _Path) -> dict[str, t.Any]:
    schema = field.schema
    inner: dict[str, t.Any]
    if type(schema) is path[0]:
        inner = {"$ref": "#"}  # the root schema, nested in itself
    elif type(schema) in path or len(path) > MAX_DEPTH:
        inner = {"description": f"a {type(schema).__name__} object"}
    else:
        inner = _object(schema, path)
    return {"type": "array", "items": inner} if field.many else inner


def _enum(field: f.Enum[t.Any]) -> dict[str, t.Any]:
    members: list[t.Any] = list(t.cast("t.Iterable[t.Any]", field.enum))
    if field.by_value:
        values = [m.value for m in members]
        kinds = {type(v) for v in values}
        if kinds <= {str}:
            return {"type": "string", "enum": values}
        if kinds <= {int}:
            return {"type": "integer", "enum": values}
        return {"enum": values}
    return {"type": "string", "enum": [m.name for m in members]}


def _temporal(field: f.DateTime | f.Date | f.Time) -> dict[str, t.Any]:
    fmt = getattr(field, "format", None)
    if fmt in ("timestamp", "timestamp_ms"):
        return {"type": "number"}
    if fmt not in (None, "iso", "iso8601"):
        return {"type": "string"}  # a strftime format
    if isinstance(field, f.DateTime):
        return {"type": "string", "format": "date-time"}
    if isinstance(field, f.Date):
        return {"type": "string", "format": "date"}
    return {"type": "string", "format": "time"}


def _other(field: f.Field[t.Any]) -> dict[str, t.Any]:
    """Fields the converter cannot see through: by name, else any value."""
    kind = type(field).__name__
    if kind == "Base64Bytes":
        return {"type": "string", "contentEncoding": "base64"}
    if kind == "RelatedList":  # marshmallow-sqlalchemy: primary keys
        return {"type": "array", "description": "primary keys of related objects"}
    if kind == "Related":
        return {"description": "primary key of the related object"}
    return {}
