"""The enabled-webhook index consulted at capture time.

Built from the ``webhooks_webhook`` rows and cached per process. Each
committing transaction that touches a registered model checks it with one
small query (ids and ``updated_at`` of enabled webhooks) and reloads the
rows only when that changed, so capture never runs a query per object.

With ``WEBHOOKS_INDEX_TTL`` the check runs at most once per TTL: webhook
changes committed by this process still apply from the next transaction
(they expire the cache), changes made by other processes within the TTL.
"""

from __future__ import annotations

import logging
import threading
import time
import typing as t
import weakref
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa

from .. import models as m
from ..conditions import ConditionSet
from ..conditions import ConditionTimeout
from ..conditions import DEFAULT_CONDITION_TIMEOUT
from ..templating import DEFAULT_LIMITS
from ..templating import TemplateLimits

if t.TYPE_CHECKING:
    from ..conditions import ConditionSet

logger = logging.getLogger(__name__)

#: Plain webhooks that fan-out delivery ids can number (see :mod:`.outbox`).
MAX_FANOUT_HOOKS = 0x1000

#: The "model" under which :class:`Index` files webhooks by app event type:
#: ``(APP_EVENTS, "invoice.paid")``. No registered model has this name.
APP_EVENTS = ""

_EVENT_FLAGS = (
    (m.CREATED, "on_create"),
    (m.UPDATED, "on_update"),
    (m.DELETED, "on_delete"),
)


@dataclass(eq=False)
class Hook:
    """An enabled webhook as capture sees it (a plain row, no ORM object).

    The values capture needs for every event are read once, when the index
    is built, not per delivery row.
    """

    row: t.Any
    conditions: ConditionSet | None
    broken: str | None = None
    #: The sandbox limits of this webhook's body template.
    limits: TemplateLimits = DEFAULT_LIMITS
    id: int = field(init=False)
    name: str = field(init=False)
    content_type: str = field(init=False)
    #: No body template and a JSON content type: the body is the shared
    #: default JSON payload of the event.
    default_body: bool = field(init=False)
    #: No conditions and the default body: see :meth:`Index.split`.
    plain: bool = field(init=False)

    def __post_init__(self) -> None:
        row = self.row
        self.id = int(row.id)
        self.name = str(row.name)
        self.content_type = str(row.http_content_type or "application/json")
        media_type = self.content_type.split(";", 1)[0].strip().lower()
        self.default_body = not (row.body_template or "").strip() and (
            media_type != "application/x-www-form-urlencoded"
        )
        self.plain = self.default_body and self.conditions is None

    def matches(self, data: t.Any, snapshots: t.Mapping[str, t.Any] | None) -> bool:
        """Whether the condition set (if any) accepts this event (app events
        have no ``snapshots``: conditions on them do not match).

        :raises ConditionTimeout: a ``regex`` condition ran out of time; the
            outbox records a failed delivery with the message.
        """
        if self.conditions is None:
            return True
        try:
            return bool(self.conditions.eval(data, snapshots=snapshots))
        except ConditionTimeout:
            raise
        except Exception:
            logger.exception("flask-webhooks: conditions of %r failed", self.name)
            return False


@dataclass(eq=False)
class Index:
    """Enabled webhooks by (model name, event), and by app event type under
    ``(APP_EVENTS, name)``."""

    signature: tuple[t.Any, ...] = ()
    hooks: dict[tuple[str, str], list[Hook]] = field(default_factory=dict)
    #: model names at least one enabled webhook listens to, for any event.
    models: frozenset[str] = frozenset()
    #: app event types at least one enabled webhook subscribes to.
    event_types: frozenset[str] = frozenset()

    #: Few enough plain webhooks to number them in fan-out delivery ids.
    fanout_ok: bool = True
    #: (model, event) -> (hooks whose rows can be copied in SQL, the others).
    _split: dict[tuple[str, str], tuple[tuple[Hook, ...], list[Hook]]] = field(
        default_factory=dict, repr=False
    )

    def matching(self, model: str, event: str) -> list[Hook]:
        return self.hooks.get((model, event), [])

    def split(self, model: str, event: str) -> tuple[tuple[Hook, ...], list[Hook]]:
        """The matching webhooks as ``(plain, others)``.

        *Plain* webhooks have no conditions and take the default JSON body:
        every event gives each of them the same row but for the webhook's own
        values, so the outbox can copy those rows in SQL (fan-out).
        """
        key = (model, event)
        found = self._split.get(key)
        if found is None:
            hooks = self.matching(model, event)
            plain = tuple(h for h in hooks if h.plain)
            found = (plain, [h for h in hooks if not h.plain])
            self._split[key] = found
        return found

    @classmethod
    def build(
        cls,
        signature: tuple[t.Any, ...],
        rows: t.Iterable[t.Any],
        *,
        regex_timeout: float | None = DEFAULT_CONDITION_TIMEOUT,
        limits: TemplateLimits = DEFAULT_LIMITS,
    ) -> Index:
        hooks: dict[tuple[str, str], list[Hook]] = {}
        for row in rows:
            conditions = None
            if row.conditions not in (None, "", {}):
                try:
                    conditions = ConditionSet(
                        row.conditions, regex_timeout=regex_timeout
                    )
                except ValueError as e:
                    # Saved before validation existed, or edited in SQL.
                    logger.error(
                        "flask-webhooks: webhook %r has invalid conditions (%s); "
                        "it matches nothing until fixed",
                        row.name,
                        e,
                    )
                    continue
            hook = Hook(row, conditions, limits=limits)
            for model in dict.fromkeys(row.models or ()):  # each model once
                for event_name, flag in _EVENT_FLAGS:
                    if getattr(row, flag):
                        hooks.setdefault((model, event_name), []).append(hook)
            for name in dict.fromkeys(row.event_types or ()):
                hooks.setdefault((APP_EVENTS, name), []).append(hook)
        models = frozenset(model for model, _ in hooks if model != APP_EVENTS)
        event_types = frozenset(name for model, name in hooks if model == APP_EVENTS)
        index = cls(signature, hooks, models, event_types)
        plain = {id(h) for found in hooks.values() for h in found if h.plain}
        index.fanout_ok = len(plain) <= MAX_FANOUT_HOOKS
        return index


#: Every cache of this process, to expire them after a local webhook change.
_CACHES: weakref.WeakSet[IndexCache] = weakref.WeakSet()


def expire_all() -> None:
    """Make every index cache of this process check the database again at
    its next use (called after a commit that changed webhooks)."""
    for cache in list(_CACHES):
        cache.expire()


class IndexCache:
    """Per-process cache of the :class:`Index`, checked once per transaction,
    or at most once per ``ttl`` seconds.

    :param ttl: seconds a checked index is trusted without asking the
        database again; 0 checks in every committing transaction.
    :param regex_timeout: the time limit of one ``regex`` condition match.
    :param limits: the sandbox limits of body templates.
    """

    def __init__(
        self,
        table: sa.Table,
        ttl: float = 0.0,
        *,
        regex_timeout: float | None = DEFAULT_CONDITION_TIMEOUT,
        limits: TemplateLimits = DEFAULT_LIMITS,
    ) -> None:
        self.table = table
        self.ttl = ttl
        self.regex_timeout = regex_timeout
        self.limits = limits
        self._checked_at = float("-inf")
        _CACHES.add(self)
        self._lock = threading.Lock()
        self._index = Index()
        self._verified: set[t.Any] = set()
        self._signature_query = (
            sa.select(table.c.id, table.c.updated_at)
            .where(table.c.enabled == sa.true())
            .order_by(table.c.id)
        )
        self._rows_query = (
            sa.select(table).where(table.c.enabled == sa.true()).order_by(table.c.id)
        )

    def get(self, connection: sa.Connection) -> Index:
        """The current index, read through ``connection`` (the user's transaction)."""
        if self.ttl > 0 and time.monotonic() - self._checked_at < self.ttl:
            return self._index
        checked_at = time.monotonic()
        engine = connection.engine
        if engine in self._verified or connection.dialect.name == "sqlite":
            signature = tuple(
                tuple(r) for r in connection.execute(self._signature_query)
            )
        else:
            # Until the table is known to exist, guard the query with a savepoint
            # so a missing table cannot abort the user's transaction.
            with connection.begin_nested():
                signature = tuple(
                    tuple(r) for r in connection.execute(self._signature_query)
                )
            self._verified.add(engine)
        index = self._index
        if signature == index.signature and (signature or not index.hooks):
            self._checked_at = checked_at
            return index
        rows = connection.execute(self._rows_query).all()
        index = Index.build(
            signature, rows, regex_timeout=self.regex_timeout, limits=self.limits
        )
        with self._lock:
            self._index = index
            self._checked_at = checked_at
        return index

    def expire(self) -> None:
        """Check the database again at the next use (the cached index stays)."""
        self._checked_at = float("-inf")
