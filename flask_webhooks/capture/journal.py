"""The capture journal's entry: one change of one registered object."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from sqlalchemy.orm.state import InstanceState

    from ..registry import Registration


@dataclass(slots=True, eq=False)
class Entry:
    """One created, updated or deleted object, as the listeners saw it.

    ``pre`` holds the column values before the transaction (updates and
    deletes), ``data`` the schema dump (deletes are dumped at once, others
    when the journal is written), ``error`` why the dump failed.
    """

    op: str
    reg: Registration
    obj: t.Any
    insp: InstanceState[t.Any]
    pre: dict[str, t.Any] | None = None
    data: t.Any = None
    error: str | None = None
    collection_changed: bool = False
    dump_later: bool = False
