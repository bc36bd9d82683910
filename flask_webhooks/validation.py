"""Validation of webhook configuration, in one place.

The same rules run when a :class:`Webhook` row is flushed (code, CLI) and in
the admin forms, so every entry point gets the same messages.
"""

from __future__ import annotations

import os
import re
import typing as t
from urllib.parse import urlsplit

if t.TYPE_CHECKING:
    from .registry import Registry

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: RFC 9110 token characters, for header names.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_TIMEOUT = 300.0


class WebhookValidationError(ValueError):
    """A webhook has invalid fields; nothing was saved.

    :attr:`errors` maps each bad field name to a message; ``str()`` lists them all.
    """

    def __init__(self, errors: t.Mapping[str, str]) -> None:
        self.errors = dict(errors)
        text = "; ".join(f"{field}: {msg}" for field, msg in self.errors.items())
        super().__init__(f"invalid webhook: {text}")


def parse_header_lines(text: str | None) -> list[tuple[str, str]]:
    """Parse ``Name: Value`` lines; blank lines are ignored.

    :raises ValueError: naming the line number and the problem.
    """
    headers: list[tuple[str, str]] = []
    for number, line in enumerate((text or "").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep:
            raise ValueError(f"line {number}: expected 'Name: Value', got {line!r}")
        if not _TOKEN.match(name):
            raise ValueError(f"line {number}: {name!r} is not a valid header name")
        headers.append((name, value.strip()))
    return headers


def check_header_value(name: str, value: str) -> None:
    """Refuse CR, LF and NUL in a rendered header (header injection)."""
    if any(c in value for c in "\r\n\0") or any(c in name for c in "\r\n\0:"):
        raise ValueError(
            f"header {name!r}: rendered value contains a line break or NUL; not sent"
        )


def validate_webhook(webhook: t.Any, registry: Registry | None) -> dict[str, str]:
    """Return ``{field: message}`` for every invalid field of ``webhook``."""
    from .payload import template_syntax_error

    errors: dict[str, str] = {}

    name = webhook.name
    if not name or not str(name).strip():
        errors["name"] = "must not be empty"
    elif len(name) > 100:
        errors["name"] = "must be at most 100 characters"

    models = webhook.models
    if not models or not isinstance(models, list | tuple):
        errors["models"] = "choose at least one model"
    elif registry is not None:
        unknown = [m for m in models if registry.by_name(m) is None]
        if unknown:
            known = ", ".join(registry.names()) or "none registered"
            errors["models"] = (
                f"not registered: {', '.join(map(str, unknown))} (registered: {known})"
            )

    if not (webhook.on_create or webhook.on_update or webhook.on_delete):
        errors["on_create"] = (
            "choose at least one event (on_create, on_update, on_delete)"
        )

    url = (webhook.payload_url or "").strip()
    if not url:
        errors["payload_url"] = "must not be empty"
    elif "{" in url:
        problem = template_syntax_error(url)
        if problem:
            errors["payload_url"] = f"template error: {problem}"
        elif not re.match(r"^https?://", url, re.I):
            errors["payload_url"] = "must start with http:// or https://"
    else:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            errors["payload_url"] = "must be an http:// or https:// URL"
        elif not parts.hostname:
            errors["payload_url"] = "must include a host name"
        else:
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                errors["payload_url"] = "has an invalid port"
        if any(c.isspace() for c in url):
            errors["payload_url"] = "must not contain spaces"

    method = (webhook.http_method or "").upper()
    if method not in HTTP_METHODS:
        errors["http_method"] = f"must be one of {', '.join(HTTP_METHODS)}"

    content_type = webhook.http_content_type or ""
    if not content_type.strip():
        errors["http_content_type"] = "must not be empty"
    elif any(c in content_type for c in "\r\n"):
        errors["http_content_type"] = "must be a single line"

    try:
        for _, value in parse_header_lines(webhook.additional_headers):
            problem = template_syntax_error(value)
            if problem:
                raise ValueError(f"template error: {problem}")
    except ValueError as e:
        errors["additional_headers"] = str(e)

    problem = template_syntax_error(webhook.body_template or "")
    if problem:
        errors["body_template"] = f"template error: {problem}"

    scheme = webhook.signature_scheme or "netbox"
    if scheme not in ("netbox", "standard", "both"):
        errors["signature_scheme"] = "must be one of netbox, standard, both"
    elif scheme in ("standard", "both") and webhook.secret:
        from .signing import is_standard_secret

        if not is_standard_secret(webhook.secret):
            errors["secret"] = (
                f"the {scheme!r} signature scheme needs a Standard Webhooks secret: "
                "'whsec_' followed by base64 (generate one with "
                "flask_webhooks.signing.generate_secret() or `flask webhooks secret`)"
            )

    path = webhook.ca_file_path
    if path:
        if not os.path.isfile(path):
            errors["ca_file_path"] = f"{path!r} does not exist or is not a file"
        elif not os.access(path, os.R_OK):
            errors["ca_file_path"] = f"{path!r} is not readable"

    if webhook.conditions not in (None, "", {}):
        from .conditions import ConditionSet

        try:
            ConditionSet(webhook.conditions)
        except ValueError as e:
            errors["conditions"] = str(e)

    timeout = webhook.timeout
    if timeout is not None:
        try:
            seconds = float(timeout)
        except (TypeError, ValueError):
            errors["timeout"] = "must be a number of seconds"
        else:
            if not 0 < seconds <= MAX_TIMEOUT:
                errors["timeout"] = (
                    f"must be greater than 0 and at most {MAX_TIMEOUT:g} seconds"
                )
    return errors
