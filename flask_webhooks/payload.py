"""The event envelope, JSON encoding and sandboxed templates.

The default body is NetBox's payload, keys in this order::

    {"event", "timestamp", "model", "username", "request_id", "data", "snapshots"}
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import functools
import json
import typing as t
import uuid
from urllib.parse import urlencode

from jinja2 import TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from .validation import check_header_value
from .validation import parse_header_lines

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def json_default(value: t.Any) -> t.Any:
    """Make the values schemas and columns produce JSON-safe.

    Decimal becomes a string (no precision lost), UUID a string, date and time
    ISO 8601, Enum its name, bytes base64, sets sorted lists, timedelta seconds.
    """
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_encoder = json.JSONEncoder(
    default=json_default, ensure_ascii=False, separators=(",", ":")
)


def dumps(value: t.Any) -> str:
    """Compact JSON text; non-JSON types handled by :func:`json_default`."""
    return _encoder.encode(value)


def envelope(
    *,
    event: str,
    timestamp: str,
    model: str,
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


def _json_filter(value: t.Any, indent: int | None = None) -> str:
    return json.dumps(value, default=json_default, ensure_ascii=False, indent=indent)


@functools.cache
def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment every webhook template renders in."""
    env = SandboxedEnvironment(autoescape=False, keep_trailing_newline=True)
    env.filters["json"] = _json_filter
    return env


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> t.Any:
    return environment().from_string(source)


def template_syntax_error(source: str) -> str | None:
    """The syntax error message of a template, or None when it compiles."""
    if not source or ("{" not in source):
        return None
    try:
        _compile(source)
    except TemplateSyntaxError as e:
        return f"line {e.lineno}: {e.message}"
    return None


def render(source: str, context: t.Mapping[str, t.Any]) -> str:
    """Render ``source`` in the sandbox; plain strings are returned untouched."""
    if "{" not in source:
        return source
    return str(_compile(source).render(context))


def template_context(
    payload: t.Mapping[str, t.Any], webhook: t.Any
) -> dict[str, t.Any]:
    """Template context: the payload keys plus ``webhook`` (name and id)."""
    context = dict(payload)
    context["webhook"] = {"id": webhook.id, "name": webhook.name}
    return context


def render_body(
    webhook: t.Any, payload: t.Mapping[str, t.Any], default_json: bytes | None
) -> tuple[bytes, bool]:
    """The request body for ``webhook``; returns ``(body, is_default_json)``.

    ``default_json`` is the payload already encoded once for the event, so
    webhooks without a template share it (fan-out reuses it).
    """
    template = webhook.body_template or ""
    content_type = (webhook.http_content_type or JSON_CONTENT_TYPE).lower()
    if template.strip():
        text = render(template, template_context(payload, webhook))
        return text.encode("utf-8"), False
    if content_type.startswith(FORM_CONTENT_TYPE):
        return form_body(payload).encode("ascii"), False
    if default_json is None:
        default_json = dumps(payload).encode("utf-8")
    return default_json, True


def form_body(payload: t.Mapping[str, t.Any]) -> str:
    """NetBox's form option: top-level keys as fields, nested values as JSON."""
    fields = []
    for key, value in payload.items():
        if isinstance(value, str):
            fields.append((key, value))
        elif value is None:
            fields.append((key, ""))
        else:
            fields.append((key, dumps(value)))
    return urlencode(fields)


def render_url(webhook: t.Any, context: t.Mapping[str, t.Any]) -> str:
    return render(webhook.payload_url.strip(), context)


def render_headers(webhook: t.Any, context: t.Mapping[str, t.Any]) -> dict[str, str]:
    """The webhook's additional headers, rendered and checked for injection."""
    headers: dict[str, str] = {}
    for name, value in parse_header_lines(webhook.additional_headers):
        rendered = render(value, context)
        check_header_value(name, rendered)
        headers[name] = rendered
    return headers
