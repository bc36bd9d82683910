"""The outbox: building the delivery rows of a commit.

:func:`build_chunks` turns a transaction's journal (see :mod:`.capture`) into
deliveries, a chunk of events at a time: one row per event x matching
webhook, or one staged row per event for the webhooks that take its default
body without conditions (copied per webhook in SQL). Published app events
(:class:`.journal.AppEntry`) go the same way, in their place in the journal.
Writing them is :mod:`.writer`'s job.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import typing as t
import uuid
from dataclasses import dataclass

import sqlalchemy as sa

from .. import models as m
from ..conditions import ConditionTimeout
from ..payload import comparable
from ..payload import dumps
from ..payload import envelope
from ..payload import render_body
from ..sanitize import scrub
from ..sanitize import scrub_optional
from ..templating import DEFAULT_LIMITS
from ..templating import TemplateLimits
from .index import APP_EVENTS
from .journal import AppEntry

if t.TYPE_CHECKING:
    from sqlalchemy.orm.state import InstanceState

    from .index import Hook
    from .index import Index
    from .journal import Entry

logger = logging.getLogger(__name__)

#: Delivery ids made by the fan-out: the first 33 characters of a random
#: version 4 UUID per event, then 3 hex digits numbering the webhook.
_ID_PREFIX = 33


#: Event name of test deliveries (the admin's "send test delivery", ``flask
#: webhooks ping``).
TEST_EVENT = "test"


def test_delivery_row(
    hook: t.Any,
    *,
    message: str,
    username: str | None,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> dict[str, t.Any]:
    """The outbox row of a ``test`` delivery for ``hook``, with a sample payload.

    The body is rendered like any other delivery's (the webhook's body
    template, or the default JSON payload), so the test goes through the
    normal pipeline: queue, signing, transport, attempt log. A body template
    that fails gives a ``failed`` row with the error, as at capture. Write it
    with :meth:`~flask_webhooks.capture.writer.OutboxWriter.write_numbered`,
    which gives it a sequence number. It is part of no object's order
    (``object_id`` is empty).
    """
    now = m.utcnow()
    request_id = str(uuid.uuid4())
    username = scrub_optional(username)
    model = (hook.models or [""])[0]
    payload = envelope(
        event=TEST_EVENT,
        timestamp=now.isoformat(),
        model=model,
        username=username,
        request_id=request_id,
        data={
            "id": None,
            "message": message,
            "webhook": {"id": hook.id, "name": hook.name},
        },
        prechange=None,
        postchange=None,
    )
    row: dict[str, t.Any] = {
        "id": m.new_id(),
        "webhook_id": hook.id,
        "webhook_name": hook.name,
        "event": TEST_EVENT,
        "model": model,
        "object_id": "",
        "request_id": request_id,
        "username": username[:255] if username else None,
        "sequence": None,
        "status": m.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
        "content_type": hook.http_content_type or "application/json",
        "body": b"",
        "payload": None,
        "last_error": None,
        "completed_at": None,
    }
    try:
        body, is_default = render_body(hook, payload, None, limits=limits)
    except Exception as e:
        row.update(
            status=m.FAILED, last_error=f"body template error: {e}", completed_at=now
        )
    else:
        row.update(body=body, payload=None if is_default else dumps(payload))
    return row


# -- building rows -------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Final:
    op: str | None
    entry: Entry
    pre: dict[str, t.Any] | None
    collection_changed: bool


def _coalesce(journal: list[Entry | AppEntry]) -> list[_Final | AppEntry]:
    """One event per object: its net effect over the transaction, in the
    place of the object's first change. App events are never coalesced."""
    # Keyed by object state, or by the entry itself for app events.
    finals: dict[t.Any, t.Any] = {}
    for e in journal:
        if isinstance(e, AppEntry):
            finals[e] = e
            continue
        f = finals.get(e.insp)
        if f is None:
            finals[e.insp] = _Final(e.op, e, e.pre, e.collection_changed)
            continue
        if e.op == m.UPDATED:
            if f.op is None:  # deleted in a savepoint-free way, then re-added
                f.op = m.UPDATED
            f.collection_changed = f.collection_changed or e.collection_changed
            if f.op != m.DELETED:
                f.entry = e if f.op == m.UPDATED else f.entry
        elif e.op == m.DELETED:
            f.op = None if f.op == m.CREATED else m.DELETED
            f.entry = e
        else:  # created again after a delete in the same transaction
            f.op = m.UPDATED if f.op == m.DELETED else m.CREATED
            f.entry = e
    return [f for f in finals.values() if isinstance(f, AppEntry) or f.op is not None]


def _object_id(state: InstanceState[t.Any]) -> str:
    key = state.key
    if key is None:
        key = state.mapper.identity_key_from_instance(state.obj())
    values = key[1]
    return scrub(",".join(str(v) for v in values))[:255]


#: Events built and written together: the rows, bodies and parameter lists of
#: one chunk are released before the next is built, so a large commit's memory
#: stays flat.
CHUNK_EVENTS = 2000
#: Fan out in SQL when at least this many plain webhooks take an event.
FANOUT_MIN_HOOKS = 2


@dataclass(slots=True, eq=False)
class Chunk:
    """What one chunk of a commit's events gives the outbox.

    ``rows``: complete delivery rows (conditions, templates, failures, and
    events of a single plain webhook). ``staged``: one row per event for the
    ``webhooks_outbox_event`` table, ``(seq, grp, id_prefix, event, model,
    object_id, request_id, username, sequence, body)``, to be copied into
    one delivery row per webhook of its group; ``groups``: the group number
    of each tuple of plain webhooks.

    ``sequence`` in rows and staged rows is the event's number within the
    chunk (0 to ``events - 1``): the writer replaces it with the event's
    sequence number, drawn when the chunk is written (commit order).
    """

    rows: list[dict[str, t.Any]]
    staged: list[tuple[t.Any, ...]]
    groups: dict[tuple[Hook, ...], int]
    now: dt.datetime
    events: int = 0


def build_chunks(
    journal: list[Entry | AppEntry],
    index: Index,
    *,
    request_id: str,
    username: str | None,
    fanout: bool,
    chunk_events: int | None = None,
) -> t.Iterator[Chunk]:
    """The deliveries of a committing transaction, :data:`CHUNK_EVENTS`
    events at a time.

    Coalesces the journal into one event per object (app events stay one
    event per publish), serializes each object once (deletes were serialized
    while their row existed), matches the
    enabled webhooks (events, then conditions) and renders each body; the
    default JSON body is encoded once per event and shared. A schema or
    template error gives a ``failed`` row carrying the message.

    With ``fanout``, an event that several plain webhooks (no conditions,
    default body) take is staged once instead of as one row per webhook.
    """
    now = m.utcnow()
    timestamp = now.isoformat()
    # PostgreSQL text cannot hold NUL: the payload says what the row says.
    username = scrub_optional(username)
    db_username = username[:255] if username else None
    finals = _coalesce(journal)
    size = chunk_events or CHUNK_EVENTS
    for start in range(0, len(finals), size):
        chunk = Chunk([], [], {}, now)
        context = (index, timestamp, request_id, username, db_username, fanout)
        for final in finals[start : start + size]:
            if isinstance(final, AppEntry):
                _build_app_event(chunk, final, *context)
            else:
                _build_event(chunk, final, *context)
        yield chunk


def _build_event(
    chunk: Chunk,
    final: _Final,
    index: Index,
    timestamp: str,
    request_id: str,
    username: str | None,
    db_username: str | None,
    fanout: bool,
) -> None:
    entry = final.entry
    reg = entry.reg
    event = t.cast(str, final.op)
    plain, others = index.split(reg.name, event)
    if not (plain or others):
        return
    obj = entry.obj
    error = None
    if event == m.DELETED:
        data, error = entry.data, entry.error
        prechange, postchange = final.pre, None
    else:
        postchange = reg.snapshot(obj)
        prechange = final.pre if event == m.UPDATED else None
        if (
            event == m.UPDATED
            and not final.collection_changed
            and prechange == postchange
        ):
            return  # changed and changed back: no net change
        try:
            data = reg.dump(obj)
        except Exception as e:
            logger.exception(
                "flask-webhooks: schema for %r failed to serialize an object",
                reg.name,
            )
            data, error = None, f"serialization failed: {type(e).__name__}: {e}"
    # What every delivery row of this event shares; the last item numbers
    # the event in the chunk (see Chunk).
    shared = (
        event,
        reg.name,
        _object_id(entry.insp),
        request_id,
        db_username,
        chunk.events,
    )
    chunk.events += 1
    if error is not None:
        _fail(chunk, index.matching(reg.name, event), shared, error)
        return
    payload = envelope(
        event=event,
        timestamp=timestamp,
        model=reg.name,
        username=username,
        request_id=request_id,
        data=data,
        prechange=prechange,
        postchange=postchange,
    )
    _emit(chunk, plain, others, shared, payload, fanout and index.fanout_ok)


def _build_app_event(
    chunk: Chunk,
    entry: AppEntry,
    index: Index,
    timestamp: str,
    request_id: str,
    username: str | None,
    db_username: str | None,
    fanout: bool,
) -> None:
    """The deliveries of one published app event: the NetBox envelope with
    the event type's name, ``model`` null (or the registered name of the
    published instance) and ``snapshots`` null."""
    name = entry.name
    plain, others = index.split(APP_EVENTS, name)
    if not (plain or others):
        return
    reg = entry.reg
    model = reg.name if reg is not None else None
    object_id = entry.object_id
    if object_id is None:
        object_id = "" if reg is None else _instance_id(entry.data)
    shared = (
        name,
        model or "",
        scrub(object_id)[:255],
        request_id,
        db_username,
        chunk.events,
    )
    chunk.events += 1
    schema = entry.event_type.schema
    try:
        if schema is not None:
            data = schema.dump(entry.data)
        elif reg is not None:
            data = reg.dump(entry.data)
        else:
            data = entry.data
        dumps(data)  # fails here, not halfway through the rows, if not JSON-safe
    except Exception as e:
        logger.exception(
            "flask-webhooks: the data of app event %r failed to serialize", name
        )
        error = f"serialization failed: {type(e).__name__}: {e}"
        _fail(chunk, index.matching(APP_EVENTS, name), shared, error)
        return
    payload = envelope(
        event=name,
        timestamp=timestamp,
        model=model,
        username=username,
        request_id=request_id,
        data=data,
        prechange=None,
        postchange=None,
    )
    payload["snapshots"] = None
    _emit(chunk, plain, others, shared, payload, fanout and index.fanout_ok)


def _instance_id(obj: t.Any) -> str:
    """The primary key of a registered model's instance ("" if it has none)."""
    state = sa.inspect(obj)
    key = state.key
    if key is None:
        key = state.mapper.identity_key_from_instance(obj)
    values = key[1]
    if any(v is None for v in values):
        return ""
    return ",".join(str(v) for v in values)


#: What every row of one event shares: event, model, object id, request id,
#: username and the event's number in its chunk (None: not numbered).
_Shared = tuple[str, str, str, str | None, str | None, int | None]


def _fail(chunk: Chunk, hooks: t.Iterable[Hook], shared: _Shared, error: str) -> None:
    for hook in hooks:
        chunk.rows.append(_row(shared, hook, m.FAILED, chunk.now, error=error))


def _emit(
    chunk: Chunk,
    plain: tuple[Hook, ...],
    others: list[Hook],
    shared: _Shared,
    payload: dict[str, t.Any],
    fanout: bool,
) -> None:
    """The rows of one event: staged or plain rows for the webhooks that take
    the default body unconditionally, then conditions and templates."""
    now = chunk.now
    add = chunk.rows.append
    data = payload["data"]
    default_json: bytes | None = None
    if plain:
        # Fan-out: one JSON encoding per event, shared by every webhook.
        default_json = dumps(payload).encode("utf-8")
        if fanout and len(plain) >= FANOUT_MIN_HOOKS:
            groups = chunk.groups
            grp = groups.get(plain)
            if grp is None:
                grp = groups[plain] = len(groups)
            staged = chunk.staged
            staged.append(
                (len(staged), grp, new_uuid()[:_ID_PREFIX], *shared, default_json)
            )
        else:
            for hook in plain:
                add(_row(shared, hook, m.PENDING, now, body=default_json))
    if not others:
        return
    payload_json: str | None = None
    seen: t.Any = None  # data and snapshots as the receiver will see them
    for hook in others:
        if hook.conditions is not None:
            if seen is None:
                seen = comparable((data, payload["snapshots"]))
            try:
                if not hook.matches(seen[0], seen[1]):
                    continue
            except ConditionTimeout as e:
                add(_row(shared, hook, m.FAILED, now, error=f"condition error: {e}"))
                continue
        if hook.default_body:
            if default_json is None:
                default_json = dumps(payload).encode("utf-8")
            add(_row(shared, hook, m.PENDING, now, body=default_json))
            continue
        try:
            body, _ = render_body(hook.row, payload, default_json, limits=hook.limits)
        except Exception as e:
            add(_row(shared, hook, m.FAILED, now, error=f"body template error: {e}"))
            continue
        if payload_json is None:
            payload_json = dumps(payload)
        add(_row(shared, hook, m.PENDING, now, body=body, payload=payload_json))


def _row(
    shared: _Shared,
    hook: Hook,
    status: str,
    now: dt.datetime,
    *,
    body: bytes = b"",
    payload: str | None = None,
    error: str | None = None,
) -> dict[str, t.Any]:
    event, model, object_id, request_id, username, sequence = shared
    return {
        "id": new_uuid(),
        "webhook_id": hook.id,
        "webhook_name": hook.name,
        "event": event,
        "model": model,
        "object_id": object_id,
        "request_id": request_id,
        "username": username,
        "sequence": sequence,
        "status": status,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
        "completed_at": now if status == m.FAILED else None,
        "body": body,
        "payload": payload,
        "content_type": hook.content_type,
        "last_error": error,
    }


def failed_rows(
    journal: list[Entry | AppEntry],
    index: Index,
    error: str,
    *,
    request_id: str,
    username: str | None,
) -> list[dict[str, t.Any]]:
    """A ``failed`` delivery row carrying ``error`` for each event of
    ``journal`` and each webhook that takes its model and event (conditions
    are not evaluated): what capture writes when writing the real rows
    failed, so the loss is on record. Only plain, cleaned values (no body)."""
    now = m.utcnow()
    name = scrub(username)[:255] if username else None
    rows = []
    for final in _coalesce(journal):
        if isinstance(final, AppEntry):
            event, model, key = final.name, APP_EVENTS, APP_EVENTS
            object_id = scrub(final.object_id or "")[:255]
        else:
            event, model = t.cast(str, final.op), final.entry.reg.name
            key = model
            try:
                object_id = _object_id(final.entry.insp)
            except Exception:
                object_id = ""
        shared = (event, model, object_id, request_id, name, None)
        for hook in index.matching(key, event):
            rows.append(_row(shared, hook, m.FAILED, now, error=error))
    return rows


def new_uuid() -> str:
    """A random (version 4) UUID string, about 4x cheaper than ``str(uuid4())``."""
    h = os.urandom(16).hex()
    # Version nibble 4; variant bits 10xx in the first nibble of the 4th group.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
