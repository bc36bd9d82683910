"""Condition sets: NetBox's condition language for deciding whether a webhook fires.

A webhook's ``conditions`` are a JSON document in NetBox's condition-set
language (see ``docs/conditions.rst``)::

    {"and": [
        {"attr": "status", "value": "active"},
        {"attr": "tags.slug", "value": "prod", "op": "contains"},
        {"attr": "status", "op": "changed"}
    ]}

:class:`ConditionSet` validates such a document once, compiles it into nested
closures (paths pre-split, regular expressions pre-compiled) and is then
evaluated for every captured event, so evaluation allocates nothing but the
lists produced by mapping a path over a list.

Evaluation rules, where NetBox is followed and where we go further:

- ``attr`` is a dotted path into the event data; a list met on the way is
  mapped over (``tags.slug`` gives ``["a", "b"]``).
- A comparison that raises :exc:`TypeError` (``gt`` against a string,
  ``regex`` against null, ...) is a plain non-match: False, then ``negate``
  inverts it.
- An attribute that cannot be resolved (a key is absent, the path runs into
  null or into a scalar) fails closed, as in NetBox: the condition is False
  *whatever its* ``negate`` and a warning is logged once per condition set and
  attribute. Unlike NetBox, where the error aborts the whole set (so the result
  of an ``or`` depends on the order of its members), only that condition is
  affected and its siblings are evaluated normally.
- ``snapshots.prechange.<path>`` / ``snapshots.postchange.<path>`` read the
  snapshots passed to :meth:`ConditionSet.eval`. A snapshot that is null (the
  prechange of a create, the postchange of a delete) reads as null.
- ``changed`` / ``unchanged`` compare a column between the two snapshots; on a
  create or a delete ``changed`` is True and ``unchanged`` False.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import operator
import re
import threading
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Final
from typing import TypeAlias

__all__ = ["OPERATORS", "ConditionSet", "InvalidConditions"]

logger = logging.getLogger(__name__)

#: Every operator a condition may use, in the order error messages list them.
OPERATORS: Final[tuple[str, ...]] = (
    "eq",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "contains",
    "regex",
    "changed",
    "unchanged",
)

_SNAPSHOT_OPERATORS: Final = frozenset({"changed", "unchanged"})

# Which operators each type of ``value`` allows (NetBox's Condition.TYPES). The
# type is matched exactly, so a bool is not an int here.
_TYPES: Final[dict[type, frozenset[str]]] = {
    str: frozenset({"eq", "contains", "regex"}),
    bool: frozenset({"eq", "contains"}),
    int: frozenset({"eq", "gt", "gte", "lt", "lte", "contains"}),
    float: frozenset({"eq", "gt", "gte", "lt", "lte", "contains"}),
    list: frozenset({"eq", "in", "contains"}),
    type(None): frozenset({"eq"}),
}
_WANTED: Final = {
    "gt": "a number",
    "gte": "a number",
    "lt": "a number",
    "lte": "a number",
    "in": "a list",
    "contains": "a string, boolean, number or list",
    "regex": "a string",
}

_CONDITION_KEYS: Final = ("attr", "value", "op", "negate")
_LOGIC: Final = ("and", "or")
_SNAPSHOTS: Final = {"prechange": "postchange", "postchange": "prechange"}

_SEQUENCES: Final = (list, tuple)

_Evaluator: TypeAlias = Callable[[Any, "Mapping[str, Any] | None"], bool]
_Test: TypeAlias = Callable[[Any], Any]


class InvalidConditions(ValueError):
    """A condition-set definition is malformed.

    The message starts with where the problem is, as a path into the
    definition (``"and[1].op: unknown operator 'eqq' ..."``); a problem with the
    top level has no location prefix.

    :param reason: What is wrong.
    :param location: Where, e.g. ``"and[1].op"``; empty for the top level.
    """

    def __init__(self, reason: str, location: str = "") -> None:
        super().__init__(f"{location}: {reason}" if location else reason)
        #: Path into the definition, e.g. ``"or[0].value"``; empty for the top level.
        self.location = location
        #: The problem, without the location.
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidConditions], tuple[str, str]]:
        # Keep reason and location apart when pickled (e.g. into a task queue).
        return type(self), (self.reason, self.location)


class _Unresolved:
    """Sentinel type for a path that did not resolve to a value."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


# A key is absent, or the path runs into null: nothing is there.
_ABSENT: Final = _Unresolved("<absent>")
# The path runs into a scalar (or a list of scalars): it cannot fit this data.
_UNWALKABLE: Final = _Unresolved("<unwalkable>")


def _walk(obj: Any, keys: tuple[str, ...]) -> Any:
    """Follow ``keys`` through nested mappings, mapping over lists (NetBox's walk_path)."""
    for key in keys:
        if isinstance(obj, dict):
            obj = obj.get(key, _ABSENT)
            if obj is _ABSENT:
                return _ABSENT
        elif obj is None:
            return _ABSENT
        elif isinstance(obj, _SEQUENCES):
            values = []
            for item in obj:
                # type() first: an ABC isinstance() check costs ~5x more.
                if type(item) is dict or isinstance(item, Mapping):
                    value = item.get(key, _ABSENT)
                    if value is _ABSENT:
                        return _ABSENT
                    values.append(value)
                elif item is None:
                    return _ABSENT
                else:
                    return _UNWALKABLE
            obj = values
        elif isinstance(obj, Mapping):
            obj = obj.get(key, _ABSENT)
            if obj is _ABSENT:
                return _ABSENT
        else:
            return _UNWALKABLE
    return obj


class _MissingLog:
    """Remembers which attributes were already reported as missing."""

    __slots__ = ("_lock", "_seen")

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def report(self, attr: str, reason: str) -> None:
        # Checked without the lock first: after the first report this is the
        # path taken on every event, and set membership is thread-safe.
        if attr in self._seen:
            return
        with self._lock:
            if attr in self._seen:
                return
            self._seen.add(attr)
        logger.warning(
            "Condition attribute %r %s; the condition does not match"
            " (logged once per condition set and attribute).",
            attr,
            reason,
        )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _test_for(op: str, expected: Any) -> _Test:
    """Return the comparison for ``op``: called with the data value, it returns
    something truthy on a match and may raise TypeError.

    Built from C-level callables where possible (about twice as fast as a
    lambda). Ordered comparisons are mirrored (``v > x`` is ``x < v``), which
    Python's reflected-operator protocol makes equivalent.
    """
    if op == "eq":
        return functools.partial(operator.eq, expected)
    if op == "gt":
        return functools.partial(operator.lt, expected)
    if op == "gte":
        return functools.partial(operator.le, expected)
    if op == "lt":
        return functools.partial(operator.gt, expected)
    if op == "lte":
        return functools.partial(operator.ge, expected)
    if op == "contains":
        return lambda v: expected in v
    if op == "regex":
        return re.compile(expected).match  # a Match object is always truthy
    # op == "in". A set when the members are hashable: an unhashable data value
    # (list, object) then raises TypeError, i.e. no match, which is also what
    # comparing it with == to hashable JSON values would give.
    try:
        return frozenset(expected).__contains__
    except TypeError:
        return expected.__contains__


def _apply(test: _Test, negate: bool, value: Any) -> bool:
    try:
        result = test(value)
    except TypeError:
        result = False
    return (not result) is negate


class _Compiler:
    """Validates a definition and builds its evaluator in one pass."""

    def __init__(self, missing: _MissingLog) -> None:
        self.missing = missing

    def node(self, node: Any, loc: str) -> tuple[dict[str, Any], _Evaluator]:
        if not isinstance(node, Mapping):
            raise InvalidConditions(
                "expected a condition or a condition set (a JSON object),"
                f" got {_type_name(node)}",
                loc,
            )
        if not node:
            raise InvalidConditions(
                "empty object; expected a condition {'attr': ...}"
                " or a condition set {'and': [...]} / {'or': [...]}",
                loc,
            )
        logic = [key for key in _LOGIC if key in node]
        if logic:
            return self.logic_set(node, logic, loc)
        if len(node) == 1:
            (key,) = node
            if isinstance(key, str) and key.lower() in _LOGIC:
                raise InvalidConditions(
                    f"unknown key {key!r}; write the logic operator in lower case"
                    f" ({key.lower()!r})",
                    loc,
                )
        return self.condition(node, loc)

    def logic_set(
        self, node: Mapping[str, Any], logic: list[str], loc: str
    ) -> tuple[dict[str, Any], _Evaluator]:
        if len(logic) == 2:
            raise InvalidConditions(
                "a condition set has exactly one key, 'and' or 'or'; got both", loc
            )
        if len(node) != 1:
            others = ", ".join(repr(key) for key in node if key != logic[0])
            raise InvalidConditions(
                f"a condition set has exactly one key, 'and' or 'or'; also got {others}",
                loc,
            )
        key = logic[0]
        members = node[key]
        where = f"{loc}.{key}" if loc else key
        if not isinstance(members, list):
            raise InvalidConditions(
                f"expected a list of conditions, got {_type_name(members)}", where
            )
        if not members:
            raise InvalidConditions("empty list; give at least one condition", where)
        compiled = [
            self.node(member, f"{where}[{i}]") for i, member in enumerate(members)
        ]
        definition = {key: [d for d, _ in compiled]}
        children = tuple(evaluate for _, evaluate in compiled)
        if len(children) == 1:
            return definition, children[0]
        # Plain loops rather than all()/any() over a generator: about 2.5x
        # faster, and this runs for every event x webhook.
        if key == "and":

            def all_of(data: Any, snapshots: Mapping[str, Any] | None) -> bool:
                for child in children:  # noqa: SIM110
                    if not child(data, snapshots):
                        return False
                return True

            return definition, all_of

        def any_of(data: Any, snapshots: Mapping[str, Any] | None) -> bool:
            for child in children:  # noqa: SIM110
                if child(data, snapshots):
                    return True
            return False

        return definition, any_of

    def condition(
        self, node: Mapping[str, Any], loc: str
    ) -> tuple[dict[str, Any], _Evaluator]:
        def at(field: str) -> str:
            return f"{loc}.{field}" if loc else field

        unknown = [key for key in node if key not in _CONDITION_KEYS]
        if unknown:
            names = ", ".join(repr(key) for key in unknown)
            raise InvalidConditions(
                f"unknown key{'s' if len(unknown) > 1 else ''} {names} in a condition"
                " (expected attr, value, op, negate)",
                loc,
            )
        if "attr" not in node:
            raise InvalidConditions("a condition needs 'attr'", loc)

        op = node.get("op", "eq")
        if not isinstance(op, str):
            raise InvalidConditions(
                f"expected an operator name, got {_type_name(op)}", at("op")
            )
        if op not in OPERATORS:
            raise InvalidConditions(
                f"unknown operator {op!r} (expected one of {', '.join(OPERATORS)})",
                at("op"),
            )

        negate = node.get("negate", False)
        if not isinstance(negate, bool):
            raise InvalidConditions(
                f"expected true or false, got {_type_name(negate)}", at("negate")
            )

        attr = node["attr"]
        if not isinstance(attr, str):
            raise InvalidConditions(
                f"expected a dotted attribute name, got {_type_name(attr)}", at("attr")
            )
        keys = tuple(attr.split("."))
        if not all(keys):
            raise InvalidConditions(
                f"{attr!r} is not a dotted attribute name (empty segment)", at("attr")
            )
        snapshot = None
        if keys[0] == "snapshots":
            if op in _SNAPSHOT_OPERATORS:
                raise InvalidConditions(
                    f"operator {op!r} compares both snapshots itself; name the column"
                    f" ({'.'.join(keys[2:]) or 'status'!r}), not a snapshot path",
                    at("attr"),
                )
            if len(keys) < 2 or keys[1] not in _SNAPSHOTS:
                raise InvalidConditions(
                    f"{attr!r} is not a snapshot path (expected"
                    " 'snapshots.prechange.<column>' or 'snapshots.postchange.<column>')",
                    at("attr"),
                )
            snapshot, keys = keys[1], keys[2:]

        if op in _SNAPSHOT_OPERATORS:
            if "value" in node:
                raise InvalidConditions(f"operator {op!r} takes no value", at("value"))
            definition = {"attr": attr, "op": op, "negate": negate}
            return definition, self.compare_snapshots(attr, keys, op, negate)

        if "value" not in node:
            raise InvalidConditions(f"a condition needs 'value' (operator {op!r})", loc)
        value = node["value"]
        allowed = _TYPES.get(type(value))
        if allowed is None:
            raise InvalidConditions(
                f"unsupported value type {_type_name(value)}"
                " (expected a string, boolean, number, list or null)",
                at("value"),
            )
        if op not in allowed:
            raise InvalidConditions(
                f"{op!r} needs {_WANTED[op]} value, got {_type_name(value)}",
                at("value"),
            )
        if isinstance(value, list):
            value = copy.deepcopy(value)
        try:
            test = _test_for(op, value)
        except re.error as exc:
            raise InvalidConditions(
                f"invalid regular expression {value!r}: {exc}", at("value")
            ) from None

        definition = {"attr": attr, "value": value, "op": op, "negate": negate}
        if snapshot is None:
            return definition, self.read_data(attr, keys, test, negate)
        return definition, self.read_snapshot(attr, snapshot, keys, test, negate)

    def read_data(
        self, attr: str, keys: tuple[str, ...], test: _Test, negate: bool
    ) -> _Evaluator:
        report = self.missing.report
        key = keys[0] if len(keys) == 1 else None

        # This is the hot path: the walk is inlined for the common top-level
        # attribute, and ``(not r) is negate`` is a branch-free "r XOR negate".
        def evaluate(data: Any, snapshots: Mapping[str, Any] | None) -> bool:
            if key is not None and type(data) is dict:
                value = data.get(key, _ABSENT)
            else:
                value = _walk(data, keys)
            if type(value) is _Unresolved:
                report(attr, "cannot be resolved in the event data")
                return False
            try:
                result = test(value)
            except TypeError:
                return negate
            return (not result) is negate

        return evaluate

    def read_snapshot(
        self, attr: str, which: str, keys: tuple[str, ...], test: _Test, negate: bool
    ) -> _Evaluator:
        report = self.missing.report
        opposite = _SNAPSHOTS[which]
        # What a null snapshot (create/delete) reads as: null, compared once here.
        if_absent = _apply(test, negate, None)

        def evaluate(data: Any, snapshots: Mapping[str, Any] | None) -> bool:
            if snapshots is None:
                report(attr, "needs snapshots, and none were passed to eval()")
                return False
            snap = snapshots.get(which)
            if snap is None:
                # Nothing to read, but a path that cannot fit the other
                # snapshot's shape (e.g. 'status.value' on a raw column) is a
                # mistake, not an absence: fail closed as on updates (NetBox).
                other = snapshots.get(opposite)
                if keys and other is not None and _walk(other, keys) is _UNWALKABLE:
                    report(attr, "does not fit the shape of the snapshot")
                    return False
                return if_absent
            value = _walk(snap, keys)
            if type(value) is _Unresolved:
                report(attr, f"cannot be resolved in the {which} snapshot")
                return False
            return _apply(test, negate, value)

        return evaluate

    def compare_snapshots(
        self, attr: str, keys: tuple[str, ...], op: str, negate: bool
    ) -> _Evaluator:
        report = self.missing.report
        changed = op == "changed"
        key = keys[0] if len(keys) == 1 else None

        def evaluate(data: Any, snapshots: Mapping[str, Any] | None) -> bool:
            if snapshots is None:
                report(attr, "needs snapshots, and none were passed to eval()")
                return False
            pre = snapshots.get("prechange")
            post = snapshots.get("postchange")
            if pre is None or post is None:
                # A create or a delete: every column "changed".
                return changed is not negate
            if key is not None and type(pre) is dict and type(post) is dict:
                before = pre.get(key, _ABSENT)
                after = post.get(key, _ABSENT)
            else:
                before = _walk(pre, keys)
                after = _walk(post, keys)
            if type(before) is _Unresolved:
                if type(after) is _Unresolved:
                    report(attr, "is not present in either snapshot")
                    return False
                return changed is not negate  # appeared: a change
            elif type(after) is _Unresolved:
                return changed is not negate  # disappeared: a change
            elif changed:
                result = before != after
            else:
                result = before == after
            return (not result) is negate

        return evaluate


class ConditionSet:
    """A validated, compiled condition set.

    Construction validates the whole definition and raises
    :exc:`InvalidConditions` (a :exc:`ValueError`) naming where the problem is.
    Instances are immutable and safe to share between threads: build one per
    webhook and evaluate it for every event.

    .. code-block:: python

        conditions = ConditionSet({"and": [
            {"attr": "status", "value": "active"},
            {"attr": "status", "op": "changed"},
        ]})
        conditions.eval(data, snapshots=snapshots)

    :param definition: A condition (``{"attr": ..., "value": ..., "op": ...,
        "negate": ...}``), a set (``{"and": [...]}`` or ``{"or": [...]}``,
        nestable), or either as a JSON string.
    :raises InvalidConditions: If the definition is malformed or the JSON does
        not parse.
    """

    __slots__ = ("_definition", "_evaluate")

    _definition: dict[str, Any]
    _evaluate: _Evaluator

    def __init__(self, definition: Mapping[str, Any] | str | bytes) -> None:
        if isinstance(definition, str | bytes | bytearray):
            try:
                definition = json.loads(definition)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                raise InvalidConditions(f"invalid JSON: {exc}") from None
            except RecursionError:
                raise InvalidConditions("invalid JSON: nested too deeply") from None
        if not isinstance(definition, Mapping):
            raise InvalidConditions(
                f"a condition set must be a JSON object, got {_type_name(definition)}"
            )
        try:
            normalized, evaluate = _Compiler(_MissingLog()).node(definition, "")
        except RecursionError:
            raise InvalidConditions("the condition set is nested too deeply") from None
        object.__setattr__(self, "_definition", normalized)
        object.__setattr__(self, "_evaluate", evaluate)

    @property
    def definition(self) -> dict[str, Any]:
        """The normalized definition, a fresh copy on every access.

        Every condition has ``attr``, ``op`` and ``negate``, and ``value``
        unless the operator is ``changed`` or ``unchanged``; this is what to
        store.
        """
        return copy.deepcopy(self._definition)

    def eval(
        self,
        data: Mapping[str, Any],
        *,
        snapshots: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> bool:
        """Return whether ``data`` (and ``snapshots``) satisfy the conditions.

        An attribute that cannot be resolved makes its condition false,
        whatever its ``negate``, and is logged once per instance and attribute
        (logger ``flask_webhooks.conditions``, level WARNING).

        :param data: The event's ``data``, the object as the schema dumps it.
        :param snapshots: ``{"prechange": {...} | None, "postchange": {...} |
            None}``, the raw column values before and after the change; needed
            by ``snapshots.*`` paths and the ``changed``/``unchanged``
            operators, which fail closed without it.
        """
        return self._evaluate(data, snapshots)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._definition!r})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __copy__(self) -> ConditionSet:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ConditionSet:
        return self

    def __reduce__(self) -> tuple[type[ConditionSet], tuple[dict[str, Any]]]:
        return type(self), (self._definition,)
