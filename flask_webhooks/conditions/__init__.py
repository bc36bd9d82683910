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

from .compiler import ConditionSet as ConditionSet
from .operators import ConditionTimeout as ConditionTimeout
from .operators import DEFAULT_CONDITION_TIMEOUT as DEFAULT_CONDITION_TIMEOUT
from .operators import InvalidConditions as InvalidConditions
from .operators import OPERATORS as OPERATORS

__all__ = [
    "DEFAULT_CONDITION_TIMEOUT",
    "OPERATORS",
    "ConditionSet",
    "ConditionTimeout",
    "InvalidConditions",
]
