"""The event envelope, JSON encoding and sandboxed templates.

The default body is NetBox's payload, keys in this order::

    {"event", "timestamp", "model", "username", "request_id", "data", "snapshots"}

Templates (``body_template``, ``additional_headers`` values and
``payload_url``) render in a Jinja2 :class:`~jinja2.sandbox.SandboxedEnvironment`
(see ``docs/templates.rst``). Their context is the payload exactly as the
default JSON body carries it, plus ``webhook`` (``id`` and ``name``), so a
template sees the same values at capture time (the body) and at send time
(URL and headers).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import functools
import json
import operator
import threading
import typing as t
import uuid
from urllib.parse import urlencode

from jinja2 import pass_context
from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.sandbox import SandboxedEnvironment

from .validation import check_header_value
from .validation import parse_header_lines
from .validation import url_problem

JSON_CONTENT_TYPE = "application/json"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

#: Longest text a template may render, in characters; longer output is an error.
MAX_RENDERED_CHARS = 10 * 1024 * 1024
#: Largest exponent ``**`` accepts in a template.
MAX_POWER = 100
#: Longest string or list ``*`` may build in a template.
MAX_REPEAT = 1024 * 1024
#: Largest integer ``*`` and ``**`` may build in a template, in bits.
MAX_INT_BITS = 64 * 1024


class RenderError(ValueError):
    """A template could not be rendered (undefined filter, sandbox violation,
    output too long, a rendered header with a line break, ...).

    The delivery it was rendered for is recorded as ``failed`` with this message;
    the user's transaction is never affected.
    """


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
    """``{{ value|json }}``: the value as JSON text (``indent`` optional)."""
    return json.dumps(value, default=json_default, ensure_ascii=False, indent=indent)


def _sized(value: t.Any) -> bool:
    return isinstance(value, str | bytes | list | tuple)


def _is_int(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@pass_context
def _finalize(context: t.Any, value: t.Any) -> t.Any:
    # Needing the context keeps Jinja2 from evaluating constant expressions
    # while compiling: a syntax check on save never runs template code.
    return value


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox every webhook template renders in.

    Jinja2's sandbox blocks attribute access to internals (``__class__``,
    ``__globals__``, ``mro``, ...), unsafe ``str.format`` and ranges over
    100,000 items; the immutable variant also refuses methods that modify
    lists, dicts and sets (``data.update(...)``, ``tags.append(...)``), so one
    webhook's template cannot change what the next one sees.

    On top of that, ``**`` and ``*`` refuse results that would be huge
    (``10 ** 10 ** 10``, ``'x' * 10 ** 10``), and the compiler never
    evaluates expressions (no constant folding), so checking a template's
    syntax on save cannot run it.
    """

    intercepted_binops = frozenset({"**", "*"})

    def __init__(self) -> None:
        super().__init__(
            autoescape=False,
            keep_trailing_newline=True,
            optimized=False,
            finalize=_finalize,
        )

    def call_binop(
        self, context: t.Any, operator_: str, left: t.Any, right: t.Any
    ) -> t.Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > MAX_POWER:
                raise SecurityError(f"exponent {right!r} is larger than {MAX_POWER}")
            if (
                _is_int(left)
                and _is_int(right)
                and left.bit_length() * right > MAX_INT_BITS
            ):
                raise SecurityError("the result of ** would be too large")
            return operator.pow(left, right)
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError("the result of * would be too large")
        elif (_sized(left) and _is_int(right)) or (_sized(right) and _is_int(left)):
            size, times = (len(left), right) if _sized(left) else (len(right), left)
            if size * times > MAX_REPEAT:
                raise SecurityError(
                    f"repetition would build {size * times} items (limit {MAX_REPEAT})"
                )
        return operator.mul(left, right)


@functools.cache
def environment() -> SandboxedEnvironment:
    """The sandboxed Jinja2 environment every webhook template renders in.

    An :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`; autoescaping
    is off (bodies are JSON or text, not HTML); undefined values render as
    empty strings, as in NetBox; the ``json`` filter is added.
    """
    env = _Sandbox()
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
    """Render ``source`` in the sandbox; plain strings are returned untouched.

    :raises RenderError: for any problem while rendering, including output
        longer than :data:`MAX_RENDERED_CHARS`.
    """
    if "{" not in source:
        return source
    try:
        template = _compile(source)
        parts: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise RenderError(
                    f"rendered output is longer than {MAX_RENDERED_CHARS} characters"
                )
            parts.append(chunk)
    except RenderError:
        raise
    except Exception as e:
        raise RenderError(f"{type(e).__name__}: {e}") from e
    return "".join(parts)


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
    webhook: t.Any, payload: t.Mapping[str, t.Any], default_json: bytes | None
) -> tuple[bytes, bool]:
    """The request body for ``webhook``; returns ``(body, is_default_json)``.

    * a ``body_template``: rendered, sent as is whatever the content type;
    * else ``application/x-www-form-urlencoded``: the payload as form fields
      (:func:`form_body`);
    * else the default JSON payload. ``default_json`` is the payload already
      encoded once for the event, so webhooks without a template share it.

    :raises RenderError: the body template failed to render.
    """
    template = webhook.body_template or ""
    content_type = (webhook.http_content_type or JSON_CONTENT_TYPE).lower()
    if template.strip():
        context = template_context(_json_payload(payload), webhook)
        text = render(template, context)
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


def render_url(webhook: t.Any, context: t.Mapping[str, t.Any]) -> str:
    """The webhook's ``payload_url``, rendered and checked again.

    :raises RenderError: the template failed, or it rendered to something that
        is not an ``http(s)://`` URL with a host (use ``|urlencode`` for values
        that may contain spaces or slashes).
    """
    source = (webhook.payload_url or "").strip()
    url = render(source, context)
    if url is not source:
        problem = url_problem(url)
        if problem:
            raise RenderError(f"payload_url rendered to {url!r}: {problem}")
    return url


def render_headers(webhook: t.Any, context: t.Mapping[str, t.Any]) -> dict[str, str]:
    """The webhook's additional headers, rendered and checked for injection.

    :raises RenderError: a value failed to render, or rendered to text with a
        line break or another control character; nothing is sent then.
    """
    headers: dict[str, str] = {}
    for name, value in parse_header_lines(webhook.additional_headers):
        try:
            rendered = render(value, context)
            check_header_value(name, rendered)
        except ValueError as e:
            raise RenderError(f"additional_headers {name!r}: {e}") from e
        headers[name] = rendered.strip()
    return headers
