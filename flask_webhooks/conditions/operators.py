"""The operators of the condition language: value types, path walking and
the comparisons, including the ``regex`` operator's time limit.

Used by :mod:`flask_webhooks.conditions.compiler`; see the package
docstring for the rules.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any
from typing import Final
from typing import TypeAlias

import regex

#: Default of ``WEBHOOKS_CONDITION_TIMEOUT``: seconds one ``regex`` match may
#: take before the condition fails with :exc:`ConditionTimeout`.
DEFAULT_CONDITION_TIMEOUT: Final = 0.1

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


class ConditionTimeout(ValueError):
    """A ``regex`` condition took longer than its time limit to evaluate.

    Raised by :meth:`ConditionSet.eval` (not a non-match: a catastrophic
    pattern such as ``(a|aa)+$`` must be noticed, not silently skipped).
    Capture records the delivery of that webhook as ``failed`` with this
    message; the user's commit goes on.

    :param pattern: the regular expression.
    :param attr: the condition's ``attr``.
    :param timeout: the limit, in seconds.
    """

    def __init__(self, pattern: str, attr: str, timeout: float) -> None:
        super().__init__(
            f"condition on {attr!r}: regex {pattern!r} took longer than "
            f"{timeout:g} s (WEBHOOKS_CONDITION_TIMEOUT); simplify the pattern"
        )
        self.pattern = pattern
        self.attr = attr
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[ConditionTimeout], tuple[str, str, float]]:
        return type(self), (self.pattern, self.attr, self.timeout)


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


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _regex_test(pattern: str, attr: str, timeout: float | None) -> _Test:
    """``regex``: anchored at the start like :func:`re.match`, with a time
    limit (the :mod:`regex` package's ``timeout``)."""
    match = regex.compile(pattern).match

    def test(value: Any) -> Any:
        try:
            return match(value, timeout=timeout)  # a Match object is truthy
        except TimeoutError:
            raise ConditionTimeout(pattern, attr, timeout or 0.0) from None

    return test


def _test_for(
    op: str,
    expected: Any,
    attr: str = "",
    timeout: float | None = DEFAULT_CONDITION_TIMEOUT,
) -> _Test:
    """Return the comparison for ``op``: called with the data value, it returns
    something truthy on a match and may raise TypeError.

    Built from C-level callables where possible (about twice as fast as a
    lambda). Ordered comparisons are mirrored (``v > x`` is ``x < v``), which
    Python's reflected-operator protocol makes equivalent. ``attr`` and
    ``timeout`` are for ``regex`` (see :func:`_regex_test`).
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
        return _regex_test(expected, attr, timeout)
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
