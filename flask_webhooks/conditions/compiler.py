"""Validation and compilation of condition sets: :class:`ConditionSet`."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import regex

from .operators import _ABSENT
from .operators import _apply
from .operators import _CONDITION_KEYS
from .operators import _Evaluator
from .operators import _LOGIC
from .operators import _SNAPSHOT_OPERATORS
from .operators import _SNAPSHOTS
from .operators import _Test
from .operators import _test_for
from .operators import _type_name
from .operators import _TYPES
from .operators import _Unresolved
from .operators import _UNWALKABLE
from .operators import _walk
from .operators import _WANTED
from .operators import DEFAULT_CONDITION_TIMEOUT
from .operators import InvalidConditions
from .operators import OPERATORS

# The package's name: what users configure logging for.
logger = logging.getLogger("flask_webhooks.conditions")


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


class _Compiler:
    """Validates a definition and builds its evaluator in one pass."""

    def __init__(self, missing: _MissingLog, regex_timeout: float | None) -> None:
        self.missing = missing
        self.regex_timeout = regex_timeout

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
            test = _test_for(op, value, attr, self.regex_timeout)
        except regex.error as exc:
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
    :param regex_timeout: Seconds one ``regex`` match may take
        (``WEBHOOKS_CONDITION_TIMEOUT``); past it :meth:`eval` raises
        :exc:`ConditionTimeout`. None means no limit.
    :raises InvalidConditions: If the definition is malformed or the JSON does
        not parse.

    .. versionchanged:: Unreleased
        ``regex`` uses the :mod:`regex` package with a time limit.
    """

    __slots__ = ("_definition", "_evaluate")

    _definition: dict[str, Any]
    _evaluate: _Evaluator

    def __init__(
        self,
        definition: Mapping[str, Any] | str | bytes,
        *,
        regex_timeout: float | None = DEFAULT_CONDITION_TIMEOUT,
    ) -> None:
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
            normalized, evaluate = _Compiler(_MissingLog(), regex_timeout).node(
                definition, ""
            )
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
        :raises ConditionTimeout: A ``regex`` match ran past the time limit
            (a :exc:`ValueError`; capture fails that webhook's delivery with
            its message).
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
