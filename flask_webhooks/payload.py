"""The event envelope, JSON encoding and sandboxed templates.

The default body is NetBox's payload, keys in this order::

    {"event", "timestamp", "model", "username", "request_id", "data", "snapshots"}

Templates (``body_template``, ``additional_headers`` values and
``payload_url``) render in the sandbox of :mod:`flask_webhooks.templating`
(see ``docs/templates.rst``), whose names are re-exported here. Their context is the payload exactly as the
default JSON body carries it, plus ``webhook`` (``id`` and ``name``), so a
template sees the same values at capture time (the body) and at send time
(URL and headers).
"""

from __future__ import annotations

import decimal
import json
import threading
import typing as t
from urllib.parse import urlencode

from .headers import check_header_name
from .headers import check_header_value
from .headers import parse_header_lines
from .templating import DEFAULT_LIMITS
from .templating import environment
from .templating import finite
from .templating import json_default
from .templating import MAX_RENDERED_CHARS
from .templating import render
from .templating import RenderError
from .templating import template_syntax_error
from .templating import TemplateLimits
from .validation import url_problem

__all__ = [
    "FORM_CONTENT_TYPE",
    "JSON_CONTENT_TYPE",
    "MAX_RENDERED_CHARS",
    "RenderError",
    "TemplateLimits",
    "comparable",
    "dumps",
    "envelope",
    "environment",
    "form_body",
    "json_default",
    "render",
    "render_body",
    "render_headers",
    "render_url",
    "template_context",
    "template_syntax_error",
]

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def comparable(value: t.Any) -> t.Any:
    """``value`` as conditions compare it: what the JSON body shows, except
    that numbers stay numbers (a ``Decimal`` is not turned into a string, so
    ``gt``/``lt`` keep working on it).
    """
    if value is None or isinstance(value, str | bool | int | float | decimal.Decimal):
        return value
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    return comparable(json_default(value))


_encoder = json.JSONEncoder(
    default=json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False
)


def dumps(value: t.Any) -> str:
    """Compact, strict JSON text (RFC 8259); non-JSON types handled by
    :func:`json_default`.

    NaN and ±Infinity have no JSON form: they are encoded as ``null`` (as
    NetBox does), never as the ``NaN`` / ``Infinity`` tokens strict parsers
    refuse.
    """
    try:
        return _encoder.encode(value)
    except ValueError as e:
        # Rare: only values holding non-finite floats pay for the second pass.
        if "float" not in str(e):
            raise
    return _encoder.encode(finite(value))


def envelope(
    *,
    event: str,
    timestamp: str,
    model: str | None,
    username: str | None,
    request_id: str | None,
    data: t.Any,
    prechange: dict[str, t.Any] | None,
    postchange: dict[str, t.Any] | None,
) -> dict[str, t.Any]:
    """The default payload, as a dict in NetBox's key order."""
    return {
        "event": event,
        "timestamp": timestamp,
        "model": model,
        "username": username,
        "request_id": request_id,
        "data": data,
        "snapshots": {"prechange": prechange, "postchange": postchange},
    }


# -- templates ---------------------------------------------------------------


def template_context(
    payload: t.Mapping[str, t.Any], webhook: t.Any
) -> dict[str, t.Any]:
    """Template context: the payload keys plus ``webhook`` (name and id).

    ``payload`` should hold JSON values (as decoded from the stored payload);
    :func:`render_body` converts the live payload first.
    """
    context = dict(payload)
    context["webhook"] = {"id": webhook.id, "name": webhook.name}
    return context


class _LastPayload(threading.local):
    source: t.Any = None
    value: dict[str, t.Any] | None = None


_last_payload = _LastPayload()


def _json_payload(payload: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """``payload`` as its default JSON body decodes, computed once per event.

    Capture renders one event for several webhooks in a row with the same
    payload object, so the last conversion (per thread) is reused.
    """
    cache = _last_payload
    if cache.source is payload and cache.value is not None:
        return cache.value
    value: dict[str, t.Any] = json.loads(dumps(payload))
    cache.source, cache.value = payload, value
    return value


def render_body(
    webhook: t.Any,
    payload: t.Mapping[str, t.Any],
    default_json: bytes | None,
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> tuple[bytes, bool]:
    """The request body for ``webhook``; returns ``(body, is_default_json)``.

    * a ``body_template``: rendered, sent as is whatever the content type;
    * else ``application/x-www-form-urlencoded``: the payload as form fields
      (:func:`form_body`);
    * else the default JSON payload. ``default_json`` is the payload already
      encoded once for the event, so webhooks without a template share it.

    :param limits: time budget and size limit of the render
        (``WEBHOOKS_TEMPLATE_TIMEOUT``, ``WEBHOOKS_TEMPLATE_MAX_CHARS``).
    :raises RenderError: the body template failed to render, or exceeded
        ``limits`` (:exc:`~flask_webhooks.templating.TemplateTimeout`,
        :exc:`~flask_webhooks.templating.TemplateTooLarge`).
    """
    template = webhook.body_template or ""
    content_type = (webhook.http_content_type or JSON_CONTENT_TYPE).lower()
    if template.strip():
        context = template_context(_json_payload(payload), webhook)
        text = render(template, context, limits=limits)
        return text.encode("utf-8"), False
    if content_type.split(";", 1)[0].strip() == FORM_CONTENT_TYPE:
        return form_body(payload).encode("ascii"), False
    if default_json is None:
        default_json = dumps(payload).encode("utf-8")
    return default_json, True


def form_body(payload: t.Mapping[str, t.Any]) -> str:
    """NetBox's form option: top-level keys as fields, nested values as JSON.

    Strings are sent as they are, ``null`` as an empty field, everything else
    (``data``, ``snapshots``, numbers, booleans) as its JSON text.
    """
    fields = []
    for key, value in payload.items():
        if isinstance(value, str):
            fields.append((key, value))
        elif value is None:
            fields.append((key, ""))
        else:
            fields.append((key, dumps(value)))
    return urlencode(fields)


def render_url(
    webhook: t.Any,
    context: t.Mapping[str, t.Any],
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> str:
    """The webhook's ``payload_url``, rendered and checked again.

    :raises RenderError: the template failed, or it rendered to something that
        is not an ``http(s)://`` URL with a host (use ``|urlencode`` for values
        that may contain spaces or slashes), or it exceeded ``limits``.
    """
    source = (webhook.payload_url or "").strip()
    url = render(source, context, limits=limits)
    if url is not source:
        problem = url_problem(url)
        if problem:
            raise RenderError(f"payload_url rendered to {url!r}: {problem}")
    return url


def render_headers(
    webhook: t.Any,
    context: t.Mapping[str, t.Any],
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> dict[str, str]:
    """The webhook's additional headers, rendered and checked for injection.

    :raises RenderError: a value failed to render or exceeded ``limits``, a
        value rendered to text with a line break or another control
        character, or a header name is one the client must set itself
        (``Host``, ``Content-Length``, hop-by-hop headers, see
        :data:`~flask_webhooks.validation.RESERVED_HEADERS`); nothing is sent
        then.
    """
    headers: dict[str, str] = {}
    try:
        lines = parse_header_lines(webhook.additional_headers)
    except ValueError as e:
        raise RenderError(f"additional_headers: {e}") from e
    for name, value in lines:
        try:
            check_header_name(name)
            rendered = render(value, context, limits=limits)
            check_header_value(name, rendered)
        except ValueError as e:
            raise RenderError(f"additional_headers {name!r}: {e}") from e
        headers[name] = rendered.strip()
    return headers
