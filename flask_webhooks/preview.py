"""Template preview (dry run): what a webhook would send for an event.

:func:`preview` renders a webhook's URL, headers (signatures computed as the
sender computes them, with the stored secret, which is never shown), body and
the verdict of its conditions for one event, without sending or storing
anything. The admin form's *Preview* button and ``flask webhooks preview``
both call it.

The event is an envelope, the payload dict of the default JSON body
(``event``, ``model``, ``data``, ``snapshots`` ...): :func:`object_envelope`
builds one for a registered model's object as it is now,
:func:`delivery_envelope` reads a stored delivery's. Any envelope works, so
events that are not model changes preview the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import types
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa

from . import models as m
from .conditions import ConditionSet
from .delivery.attempt import build_request
from .payload import comparable
from .payload import dumps
from .payload import envelope as make_envelope
from .payload import render_body
from .payload import render_headers
from .payload import render_url
from .payload import RenderError
from .payload import template_context
from .rotation import rotating_until

if t.TYPE_CHECKING:
    from .state import WebhooksState

__all__ = [
    "Preview",
    "delivery_envelope",
    "first_event",
    "hook_values",
    "object_envelope",
    "preview",
]

#: The webhook columns a preview reads (the form's unsaved values may stand in).
HOOK_FIELDS = (
    "id",
    "name",
    "enabled",
    "models",
    "on_create",
    "on_update",
    "on_delete",
    "payload_url",
    "http_method",
    "http_content_type",
    "additional_headers",
    "body_template",
    "secret",
    "signature_scheme",
    "ssl_verification",
    "ca_file_path",
    "conditions",
    "timeout",
    "previous_secret",
    "secret_rotated_until",
)


@dataclass
class Preview:
    """What a webhook would send for one event. Nothing is sent.

    ``errors`` maps a webhook field (``payload_url``, ``additional_headers``,
    ``body_template``, ``conditions``, ``secret``) to what went wrong; the
    other parts are still rendered.
    """

    #: What the event came from: ``"site 3"``, ``"delivery <id>"``.
    source: str
    event: str | None
    model: str | None
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    #: Whether the webhook's models and events include this model event
    #: (None: not a model event, not checked).
    listens: bool | None
    #: The conditions' verdict (None: no conditions, or they failed).
    conditions_match: bool | None
    errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def fires(self) -> bool:
        """Whether this event would become a delivery of the webhook."""
        return (
            not self.errors.get("conditions")
            and self.listens is not False
            and self.conditions_match is not False
        )

    @property
    def body_text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def as_dict(self) -> dict[str, t.Any]:
        """JSON-ready form (the CLI's ``--json``)."""
        return {
            "source": self.source,
            "event": self.event,
            "model": self.model,
            "fires": self.fires,
            "listens": self.listens,
            "conditions_match": self.conditions_match,
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "body": self.body_text,
            "errors": self.errors,
            "notes": self.notes,
        }


def hook_values(hook: t.Any) -> types.SimpleNamespace:
    """A detached copy of a webhook's columns (what the preview may change)."""
    values = {name: getattr(hook, name, None) for name in HOOK_FIELDS}
    values["models"] = list(values["models"] or [])
    return types.SimpleNamespace(**values)


def object_envelope(
    state: WebhooksState,
    model: str,
    object_id: str,
    *,
    event: str = m.UPDATED,
    now: dt.datetime | None = None,
) -> dict[str, t.Any]:
    """The envelope of ``event`` for a registered model's object as it is now.

    ``data`` is the registered schema's dump. For ``updated`` both snapshots
    hold the current values (there is no change to show); ``created`` has no
    ``prechange``, ``deleted`` no ``postchange``.

    :param model: a registered model name (``site``).
    :param object_id: its primary key as text (``"3"``; ``"1,2"`` for a
        composite key, as in deliveries).
    :raises LookupError: an unknown model name or no such object.
    """
    reg = state.registry.by_name(model)
    if reg is None:
        known = ", ".join(state.registry.names()) or "none"
        raise LookupError(f"model: {model!r} is not registered (registered: {known})")
    if event not in m.EVENTS:
        raise LookupError(f"event: {event!r} is not one of {', '.join(m.EVENTS)}")
    columns = reg.mapper.primary_key
    parts = str(object_id).split(",")
    if len(parts) != len(columns):
        raise LookupError(f"id: {model} has a {len(columns)}-part primary key")
    key: list[t.Any] = []
    for column, part in zip(columns, parts, strict=True):
        try:
            key.append(column.type.python_type(part.strip()))
        except (NotImplementedError, TypeError, ValueError):
            key.append(part.strip())
    obj = state.db.session.get(reg.model, key[0] if len(key) == 1 else tuple(key))
    if obj is None:
        raise LookupError(f"id: no {model} with id {object_id}")
    snapshot = reg.snapshot(obj)
    return make_envelope(
        event=event,
        timestamp=(now or m.utcnow()).isoformat(),
        model=reg.name,
        username=state.username(),
        request_id=str(uuid.uuid4()),
        data=reg.dump(obj),
        prechange=None if event == m.CREATED else snapshot,
        postchange=None if event == m.DELETED else snapshot,
    )


def delivery_envelope(state: WebhooksState, delivery_id: str) -> dict[str, t.Any]:
    """The envelope a stored delivery was made from.

    :raises LookupError: no such delivery, or it stored no payload (its
        serialization failed at capture).
    """
    row = state.db.session.get(state.models.Delivery, delivery_id)
    if row is None:
        raise LookupError(f"delivery: no delivery with id {delivery_id!r}")
    text = row.payload if row.payload is not None else row.body
    try:
        payload = json.loads(text or b"")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise LookupError(
            f"delivery: {delivery_id} has no stored payload to preview"
            + (f" ({row.last_error})" if row.last_error else "")
        )
    return payload


def _events(hook: t.Any) -> list[str]:
    flags = ("on_create", "on_update", "on_delete")
    return [e for e, f in zip(m.EVENTS, flags, strict=True) if getattr(hook, f, False)]


def first_event(hook: t.Any) -> str:
    """The event a preview of an object shows by default: ``updated`` if the
    webhook listens to updates, else the first event it listens to."""
    events = _events(hook)
    return m.UPDATED if m.UPDATED in events or not events else events[0]


class _ThreadWarnings(logging.Handler):
    """Collects warnings logged by the calling thread (missing attributes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _conditions_verdict(
    state: WebhooksState, hook: t.Any, payload: t.Mapping[str, t.Any], result: Preview
) -> None:
    definition = hook.conditions
    if definition in (None, "", {}):
        return
    try:
        conditions = ConditionSet(
            definition, regex_timeout=state.config.condition_timeout
        )
    except ValueError as e:
        result.errors["conditions"] = str(e)
        return
    data, snapshots = comparable((payload.get("data"), payload.get("snapshots")))
    watcher = _ThreadWarnings()
    log = logging.getLogger("flask_webhooks.conditions")
    log.addHandler(watcher)
    try:
        result.conditions_match = bool(conditions.eval(data, snapshots=snapshots))
    except ValueError as e:  # ConditionTimeout
        result.errors["conditions"] = str(e)
    finally:
        log.removeHandler(watcher)
    result.notes.extend(watcher.messages)


def preview(
    state: WebhooksState,
    hook: t.Any,
    payload: t.Mapping[str, t.Any],
    *,
    source: str = "",
    delivery_id: str | None = None,
    sequence: int | None = None,
    now: dt.datetime | None = None,
) -> Preview:
    """Render what ``hook`` would send for the event ``payload``; send nothing.

    :param hook: a webhook, or :func:`hook_values` of one with unsaved changes.
    :param payload: the event envelope (see :func:`object_envelope`,
        :func:`delivery_envelope`).
    :param source: what the event came from, for display.
    :param delivery_id: the stored delivery previewed (its id is the
        ``X-Webhook-ID``); a new id otherwise.
    :param sequence: that delivery's ``X-Webhook-Sequence``; none for a new
        event (it gets its number only when committed).
    :param now: the time of the would-be attempt (signature timestamp, and
        whether a secret rotation is still in its overlap).
    """
    hook = hook_values(hook)
    now = now or m.utcnow()
    limits = state.config.template_limits
    if delivery_id is not None and sequence is None:
        D = state.models.Delivery.__table__
        with state.engine().connect() as conn:
            sequence = conn.execute(
                sa.select(D.c.sequence).where(D.c.id == delivery_id)
            ).scalar()
    event, model = payload.get("event"), payload.get("model")
    result = Preview(
        source=source,
        event=event,
        model=model,
        method=(hook.http_method or "POST").upper(),
        url="",
        headers={},
        body=b"",
        listens=None,
        conditions_match=None,
    )
    if event in m.EVENTS:
        result.listens = model in hook.models and event in _events(hook)
    else:
        result.notes.append(
            f"{event!r} is not a model event: models and events were not checked"
        )
    if not hook.enabled:
        result.notes.append("the webhook is disabled: it sends nothing now")
    _conditions_verdict(state, hook, payload, result)

    try:
        result.body, _ = render_body(hook, payload, None, limits=limits)
    except RenderError as e:
        result.errors["body_template"] = str(e)
    context = template_context(json.loads(dumps(payload)), hook)
    try:
        render_url(hook, context, limits=limits)
    except RenderError as e:
        result.errors["payload_url"] = str(e)
        hook.payload_url = ""
    try:
        render_headers(hook, context, limits=limits)
    except RenderError as e:
        result.errors["additional_headers"] = str(e)
        hook.additional_headers = ""
    row = types.SimpleNamespace(
        id=delivery_id or m.new_id(),
        body=result.body,
        payload=dumps(payload),
        content_type=hook.http_content_type or "application/json",
        sequence=sequence,
    )
    try:
        request = build_request(state, row, hook, 1, timestamp=int(now.timestamp()))
    except ValueError as e:  # the secret does not suit the signature scheme
        result.errors["secret"] = str(e)
        hook.secret = ""
        request = build_request(state, row, hook, 1, timestamp=int(now.timestamp()))
    result.url, result.headers = request.url, dict(request.headers)
    if delivery_id is None:
        result.notes.append("X-Webhook-ID: every delivery gets its own id")
    until = rotating_until(hook, now) if hook.secret else None
    if until is not None:
        result.notes.append(
            f"the secret is rotating until {until:%Y-%m-%d %H:%M} UTC: signed as"
            " during the overlap"
        )
    return result
