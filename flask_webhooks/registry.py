"""Registered models: which mapped classes produce events, under which name,
dumped by which marshmallow schema; and the app's declared event types
(:class:`EventType`, see :meth:`flask_webhooks.Webhooks.event_type`).
"""

from __future__ import annotations

import base64
import re
import typing as t
from dataclasses import dataclass
from dataclasses import field

import marshmallow as ma
import sqlalchemy as sa
from sqlalchemy.orm import Mapper
from sqlalchemy.orm import RelationshipProperty

if t.TYPE_CHECKING:
    from sqlalchemy.orm import ColumnProperty


@dataclass(eq=False)
class Registration:
    """One registered model.

    :param model: the mapped class.
    :param name: the model name used in payloads and in ``Webhook.models``.
    :param schema: the marshmallow schema instance that dumps ``data``.
    """

    model: type[t.Any]
    name: str
    schema: ma.Schema
    mapper: Mapper[t.Any] = field(repr=False)
    #: (attribute key, column key) of every mapped column, for snapshots.
    columns: tuple[tuple[str, str], ...] = field(repr=False, default=())
    #: attribute keys of collection relationships (one-to-many, many-to-many).
    collections: frozenset[str] = field(repr=False, default=frozenset())
    #: Set once a bulk insert() warning was given for this model.
    bulk_insert_warned: bool = field(repr=False, default=False)

    def snapshot(self, obj: t.Any) -> dict[str, t.Any]:
        """Raw mapped column values of ``obj``, keyed by attribute name."""
        return {key: getattr(obj, key) for key, _ in self.columns}

    def dump(self, obj: t.Any) -> t.Any:
        """Serialize ``obj`` with the registered schema."""
        return self.schema.dump(obj)


#: Event names of model changes and test deliveries: no app event type may
#: take them.
RESERVED_EVENT_NAMES = frozenset({"created", "updated", "deleted", "test"})
#: Longest app event type name (the width of ``Delivery.event``).
MAX_EVENT_NAME = 100
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_]+(?:[.:/-][A-Za-z0-9_]+)*$")


@dataclass(eq=False)
class EventType:
    """An app event type declared with :meth:`flask_webhooks.Webhooks.event_type`.

    :param name: the event name, sent as the payload's ``event``.
    :param description: what happened, for the admin, the CLI and the catalog.
    :param schema: the marshmallow schema instance that dumps the published
        data, or None (a dict, or an instance of a registered model).
    """

    name: str
    description: str = ""
    schema: ma.Schema | None = None


def event_name_problem(name: t.Any) -> str | None:
    """What is wrong with ``name`` as an app event type name, or None."""
    if not isinstance(name, str) or not name:
        return f"must be a non-empty string, got {name!r}"
    if len(name) > MAX_EVENT_NAME:
        return f"must be at most {MAX_EVENT_NAME} characters (got {len(name)})"
    if name in RESERVED_EVENT_NAMES:
        return (
            f"{name!r} is reserved for model changes and test deliveries; "
            "use a dotted name such as 'invoice.paid'"
        )
    if not _EVENT_NAME.match(name):
        return (
            f"{name!r} is not a valid event name: use letters, digits and _, "
            "separated by '.', ':', '/' or '-' (e.g. 'invoice.paid')"
        )
    return None


class Registry:
    """Maps model classes and names to their :class:`Registration`, and
    app event names to their :class:`EventType`."""

    def __init__(self) -> None:
        self._by_class: dict[type[t.Any], Registration] = {}
        self._by_name: dict[str, Registration] = {}
        self._event_types: dict[str, EventType] = {}
        # Lookups for subclasses are cached; None caches "not registered".
        self._lookup: dict[type[t.Any], Registration | None] = {}

    def __iter__(self) -> t.Iterator[Registration]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self) -> list[str]:
        """Registered model names, sorted."""
        return sorted(self._by_name)

    def by_name(self, name: str) -> Registration | None:
        return self._by_name.get(name)

    def event_types(self) -> list[EventType]:
        """Declared app event types, sorted by name."""
        return [self._event_types[n] for n in sorted(self._event_types)]

    def event_type_names(self) -> list[str]:
        """Declared app event type names, sorted."""
        return sorted(self._event_types)

    def event_type(self, name: str) -> EventType | None:
        """The declared event type ``name``, or None."""
        return self._event_types.get(name)

    def add_event_type(
        self,
        name: str,
        *,
        description: str = "",
        schema: type[ma.Schema] | ma.Schema | None = None,
    ) -> EventType:
        """Declare an app event type; see :meth:`flask_webhooks.Webhooks.event_type`."""
        problem = event_name_problem(name)
        if problem:
            raise ValueError(f"event_type(): the name {problem}")
        if name in self._event_types:
            raise ValueError(f"the event type {name!r} is already declared")
        if not isinstance(description, str):
            raise TypeError(
                f"event_type(): 'description' must be a string, got {description!r}"
            )
        found = EventType(name, description.strip(), _schema_instance(schema))
        self._event_types[name] = found
        return found

    def for_class(self, cls: type[t.Any]) -> Registration | None:
        """The registration for ``cls`` or its nearest registered base class."""
        try:
            return self._lookup[cls]
        except KeyError:
            pass
        found = None
        for base in cls.__mro__:
            found = self._by_class.get(base)
            if found is not None:
                break
        self._lookup[cls] = found
        return found

    def add(
        self,
        model: type[t.Any],
        *,
        schema: type[ma.Schema] | ma.Schema | None = None,
        name: str | None = None,
    ) -> Registration:
        """Register ``model``; see :meth:`flask_webhooks.Webhooks.register`."""
        try:
            mapper = sa.inspect(model)
        except sa.exc.NoInspectionAvailable:
            raise TypeError(
                f"register() needs a mapped model class, got {model!r}"
            ) from None
        if not isinstance(mapper, Mapper):
            raise TypeError(f"register() needs a mapped model class, got {model!r}")
        if name is None:
            name = model.__name__.lower()
        if not name or not isinstance(name, str):
            raise ValueError("register(): 'name' must be a non-empty string")
        if model in self._by_class:
            raise ValueError(
                f"{model.__name__} is already registered as {self._by_class[model].name!r}"
            )
        if name in self._by_name:
            raise ValueError(
                f"the model name {name!r} is already used by "
                f"{self._by_name[name].model.__name__}; pass name= to register()"
            )
        schema_obj = _schema_instance(schema, "register()")
        if schema_obj is None:
            schema_obj = auto_schema(model)()
        columns = tuple(
            (prop.key, prop.columns[0].key)
            for prop in mapper.column_attrs
            if _is_plain_column(prop)
        )
        collections = frozenset(
            rel.key
            for rel in mapper.relationships
            if isinstance(rel, RelationshipProperty) and rel.uselist
        )
        reg = Registration(model, name, schema_obj, mapper, columns, collections)
        self._by_class[model] = reg
        self._by_name[name] = reg
        self._lookup.clear()
        return reg


def _schema_instance(
    schema: type[ma.Schema] | ma.Schema | None, caller: str = "event_type()"
) -> ma.Schema | None:
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, ma.Schema):
        return schema()
    if isinstance(schema, ma.Schema):
        return schema
    raise TypeError(
        f"{caller}: 'schema' must be a marshmallow Schema class or instance, "
        f"got {schema!r}"
    )


class Base64Bytes(ma.fields.Field):  # type: ignore[type-arg]
    """Dumps ``bytes`` as base64 text, the way ``snapshots`` encode them.

    The auto schema uses it for binary columns (``LargeBinary``, ``BLOB``,
    ``BYTEA``, ...): marshmallow-sqlalchemy would make them string fields,
    which decode as UTF-8 and fail on any other bytes.
    """

    def _serialize(
        self, value: t.Any, attr: str | None, obj: t.Any, **kwargs: t.Any
    ) -> t.Any:
        if value is None:
            return None
        return base64.b64encode(bytes(value)).decode("ascii")


def _is_plain_column(prop: ColumnProperty[t.Any]) -> bool:
    return all(isinstance(c, sa.Column) for c in prop.columns)


def auto_schema(model: type[t.Any]) -> type[ma.Schema]:
    """Build a marshmallow-sqlalchemy auto schema for ``model``.

    Foreign keys are included and relationships dump as primary keys. Binary
    columns dump as base64 text (:class:`Base64Bytes`), as in ``snapshots``. Column
    types marshmallow-sqlalchemy cannot convert fall back to a raw field that
    dumps the value as is (made JSON-safe later by the payload encoder).
    """
    from marshmallow_sqlalchemy import ModelConverter
    from marshmallow_sqlalchemy import SQLAlchemyAutoSchema
    from marshmallow_sqlalchemy.exceptions import ModelConversionError

    class _Converter(ModelConverter):
        def property2field(self, prop: t.Any, **kwargs: t.Any) -> t.Any:
            try:
                return super().property2field(prop, **kwargs)
            except ModelConversionError:
                return ma.fields.Raw(dump_only=True)

        def _get_field_class_for_data_type(self, data_type: t.Any) -> t.Any:
            if isinstance(data_type, sa.types._Binary):
                return Base64Bytes
            try:
                return super()._get_field_class_for_data_type(data_type)
            except ModelConversionError:
                return ma.fields.Raw

    meta = type(
        "Meta",
        (),
        {
            "model": model,
            "include_fk": True,
            "include_relationships": True,
            "load_instance": False,
            "register": False,
            "model_converter": _Converter,
        },
    )
    return type(
        f"{model.__name__}AutoSchema",
        (SQLAlchemyAutoSchema,),
        {"Meta": meta, "__module__": __name__},
    )
