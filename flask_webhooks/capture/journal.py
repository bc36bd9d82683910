"""The capture journal's entries: one change of one registered object
(:class:`Entry`), or one published app event (:class:`AppEntry`)."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass

if t.TYPE_CHECKING:
    from sqlalchemy.orm.state import InstanceState

    from ..registry import EventType
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


@dataclass(slots=True, eq=False)
class AppEntry:
    """One :meth:`~flask_webhooks.Webhooks.publish` call: an app event.

    ``data`` is what was published (a dict, or an object the event type's
    schema or the registered model's schema dumps); it is dumped when the
    journal is written, like model events. ``reg`` is the registration of
    ``data``'s class when it is a registered model's instance.
    """

    event_type: EventType
    data: t.Any
    object_id: str | None
    reg: Registration | None = None
    #: Never set: app events are dumped when the journal is written.
    dump_later: bool = False

    @property
    def name(self) -> str:
        return self.event_type.name
