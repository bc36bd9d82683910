"""Formatting helpers of the admin screens (``wh.*`` in their templates)."""

from __future__ import annotations

import datetime as dt
import json
import typing as t

from markupsafe import escape
from markupsafe import Markup

from .. import models as m
from ..sanitize import DEFAULT_REDACTOR
from ..sanitize import Redactor
from ..state import lookup_state

_BADGES = {
    m.PENDING: "secondary",
    m.DELIVERING: "primary",
    m.RETRYING: "warning",
    m.SUCCEEDED: "success",
    m.FAILED: "danger",
    m.CANCELLED: "dark",
    m.SUPERSEDED: "info",
}


def status_badge(status: str | None, large: bool = False) -> Markup:
    """A Bootstrap badge for a delivery status."""
    if not status:
        return Markup('<span class="text-muted">&mdash;</span>')
    kind = _BADGES.get(status, "light")
    size = " wh-status-lg" if large else ""
    return Markup(
        '<span class="badge badge-{} wh-status{} wh-status-{}">{}</span>'
    ).format(kind, size, status, status)


def badges(values: t.Iterable[str], kind: str = "info") -> Markup:
    """Small badges, one per value (models, events)."""
    return Markup(" ").join(
        Markup('<span class="badge badge-{} wh-tag">{}</span>').format(kind, v)
        for v in values
    )


def format_time(value: dt.datetime | None) -> Markup:
    """``YYYY-MM-DD HH:MM:SS`` in UTC, with the relative age as a tooltip."""
    if value is None:
        return Markup('<span class="text-muted">&mdash;</span>')
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    value = value.astimezone(dt.UTC)
    delta = (m.utcnow() - value).total_seconds()
    relative = f"{format_age(delta)} ago" if delta >= 0 else f"in {format_age(-delta)}"
    return Markup('<time datetime="{}" title="{}" class="wh-time">{}</time>').format(
        value.isoformat(), relative, value.strftime("%Y-%m-%d %H:%M:%S")
    )


def format_age(seconds: float | None) -> str:
    """A short human duration: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    s = int(max(seconds, 0))
    if s < 90:
        return f"{s} s"
    minutes = s // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def format_duration(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


def _redactor() -> Redactor:
    state = lookup_state()
    return state.config.redactor if state is not None else DEFAULT_REDACTOR


def display_url(url: str | None) -> str:
    """A URL for lists and logs: any password in it replaced by ``***``, and
    secret-looking query parameters (``WEBHOOKS_REDACT_HEADERS``) masked."""
    if not url:
        return ""
    return _redactor().url(url)


def display_headers(headers: t.Mapping[str, str] | None) -> dict[str, str]:
    """Stored headers for display, secret ones masked (rows written before a
    name was added to ``WEBHOOKS_REDACT_HEADERS`` included)."""
    return _redactor().headers(headers)


def pretty_body(body: bytes | None, content_type: str | None) -> tuple[str, bool]:
    """The body as text for display; JSON pretty-printed. Returns ``(text, is_json)``."""
    text = (body or b"").decode("utf-8", "replace")
    looks_json = "json" in (content_type or "").lower() or text[:1] in ("{", "[")
    if looks_json and text:
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False), True
        except ValueError:
            pass
    return text, False


def pretty_json(value: t.Any) -> str:
    if value in (None, "", {}):
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def truncate(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Helpers:
    """The helper functions, as attributes, for templates (``wh.status_badge``)."""

    status_badge = staticmethod(status_badge)
    badges = staticmethod(badges)
    format_time = staticmethod(format_time)
    format_age = staticmethod(format_age)
    format_duration = staticmethod(format_duration)
    display_url = staticmethod(display_url)
    display_headers = staticmethod(display_headers)
    pretty_body = staticmethod(pretty_body)
    pretty_json = staticmethod(pretty_json)
    truncate = staticmethod(truncate)
    escape = staticmethod(escape)
    statuses = m.STATUSES


HELPERS = _Helpers()
