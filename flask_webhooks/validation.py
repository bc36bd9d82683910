"""Validation of webhook configuration, in one place.

The same rules run when a :class:`Webhook` row is flushed (code, CLI) and in
the admin forms, so every entry point gets the same messages::

    errors = validate_webhook(hook, registry, session=db.session)
    if errors:
        raise WebhookValidationError(errors)   # .errors == {field: message}

See ``docs/webhooks.rst`` for every rule.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import ssl
import typing as t
from collections.abc import Mapping
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import InstanceState
from sqlalchemy.orm import Mapper
from sqlalchemy.orm import object_session

from .headers import check_header_name
from .headers import CONTROL
from .headers import parse_header_lines
from .signing import is_standard_secret
from .signing import SCHEMES
from .templating import template_syntax_error

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .registry import Registry

__all__ = [
    "HTTP_METHODS",
    "MAX_TIMEOUT",
    "WebhookValidationError",
    "url_problem",
    "validate_webhook",
]

#: The HTTP methods a webhook may use.
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Largest per-webhook ``timeout``, in seconds.
MAX_TIMEOUT = 300.0
#: Largest per-webhook ``rate_limit``, in requests per second.
MAX_RATE_LIMIT = 10000.0
_MEDIA_TYPE = re.compile(
    r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*(;.*)?$"
)
_TEMPLATE_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_BOOL_FIELDS = ("enabled", "on_create", "on_update", "on_delete", "ssl_verification")
#: Newer boolean fields: False when a plain object does not have them.
_OPTIONAL_BOOL_FIELDS = ("collapse_updates",)
#: Errors that depend on more than their own field (for updates, see
#: :func:`_changed_fields`).
_DEPENDS = {
    "secret": ("secret", "signature_scheme"),
    "on_create": ("on_create", "on_update", "on_delete", "models"),
    "models": ("models", "event_types"),
}
#: Column lengths of the webhook table (used when the object is not mapped).
_LENGTHS = {
    "name": 100,
    "payload_url": 500,
    "http_content_type": 100,
    "secret": 255,
    "ca_file_path": 4096,
}


class WebhookValidationError(ValueError):
    """A webhook has invalid fields; nothing was saved.

    :attr:`errors` maps each bad field name to a message; ``str()`` lists them
    all (``"invalid webhook: name: must not be empty; timeout: ..."``).

    :param errors: ``{field: message}``, as :func:`validate_webhook` returns.
    """

    def __init__(self, errors: t.Mapping[str, str]) -> None:
        #: ``{field: message}`` for every invalid field.
        self.errors = dict(errors)
        text = "; ".join(f"{field}: {msg}" for field, msg in self.errors.items())
        super().__init__(f"invalid webhook: {text}")

    def __reduce__(self) -> tuple[type[WebhookValidationError], tuple[dict[str, str]]]:
        return type(self), (self.errors,)


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a payload URL, or None.

    It must be an ``http://`` or ``https://`` URL with a host, a valid port
    if any, and no whitespace or control characters.
    """
    if not url:
        return "must not be empty"
    if any(c.isspace() for c in url) or CONTROL.search(url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must include a host name"
    return None


def _templated_url_problem(url: str) -> str | None:
    """Checks for a ``payload_url`` containing Jinja2: syntax, and the literal
    parts (scheme, and the host when it is not templated)."""
    problem = template_syntax_error(url)
    if problem:
        return f"template error: {problem}"
    literal = _TEMPLATE_TAG.sub("", url)
    if any(c.isspace() for c in literal) or CONTROL.search(literal):
        return "must not contain spaces or control characters outside template tags"
    match = re.match(r"^https?://", url, re.I)
    if not match:
        return (
            "must start with http:// or https:// (the scheme cannot come from "
            "a template)"
        )
    rest = url[match.end() :]
    host_end = re.search(r"[/?#{]", rest)
    if host_end is None or rest[host_end.start()] != "{":
        # The host is literal: check it as a URL of its own.
        end = match.end() + (host_end.start() if host_end else len(rest))
        problem = url_problem(url[:end])
        if problem:
            return problem
    return None


def _length(webhook: t.Any, field: str) -> int:
    table = getattr(type(webhook), "__table__", None)
    if table is not None and field in table.c:
        length = getattr(table.c[field].type, "length", None)
        if length:
            return int(length)
    return _LENGTHS[field]


def _check_text(
    errors: dict[str, str],
    webhook: t.Any,
    field: str,
    value: t.Any,
    *,
    required: bool = False,
) -> str:
    """Type and length checks of a string field; returns the value or ``""``."""
    if value is None:
        if required:
            errors[field] = "must not be empty"
        return ""
    if not isinstance(value, str):
        errors[field] = f"must be a string, got {type(value).__name__}"
        return ""
    if required and not value.strip():
        errors[field] = "must not be empty"
        return ""
    if field in _LENGTHS:
        limit = _length(webhook, field)
        if len(value) > limit:
            errors[field] = f"must be at most {limit} characters (got {len(value)})"
            return ""
    return value


def _name_taken(webhook: t.Any, name: str, session: Session | None) -> bool:
    """Whether another webhook (saved, or pending in the session) has ``name``.

    The query runs on the session's connection, so inside a flush it sees the
    user's transaction. Without a mapped object or a session, nothing is
    checked (the unique constraint remains the last guard).
    """
    mapper = sa.inspect(type(webhook), raiseerr=False)
    if not isinstance(mapper, Mapper):
        return False
    if session is None:
        session = object_session(webhook)
    if session is None:
        return False
    for other in session.new:
        if (
            other is not webhook
            and isinstance(other, mapper.class_)
            and other.name == name
        ):
            return True
    table = mapper.local_table
    stmt = sa.select(table.c.id).where(table.c.name == name).limit(1)
    own_id = getattr(webhook, "id", None)
    if own_id is not None:
        stmt = stmt.where(table.c.id != own_id)
    conn = session.connection(bind_arguments={"mapper": mapper})
    return conn.execute(stmt).first() is not None


def _check_models(
    errors: dict[str, str],
    models: t.Any,
    registry: Registry | None,
    *,
    optional: bool = False,
) -> None:
    """``optional``: the webhook has event types, so no model is needed."""
    if optional and (
        models is None or (isinstance(models, list | tuple) and not models)
    ):
        return
    if isinstance(models, str | bytes):
        errors["models"] = (
            f"must be a list of model names such as ['site', 'device'], "
            f"not the string {models!r}"
        )
        return
    if not isinstance(models, list | tuple):
        if models is None:
            errors["models"] = _NOTHING_CHOSEN
        else:
            errors["models"] = (
                f"must be a list of model names, got {type(models).__name__}"
            )
        return
    if not models:
        errors["models"] = _NOTHING_CHOSEN
        return
    bad = [m for m in models if not isinstance(m, str)]
    if bad:
        errors["models"] = f"model names must be strings, got {bad[0]!r}"
        return
    repeated = sorted({m for m in models if models.count(m) > 1})
    if repeated:
        errors["models"] = f"lists {', '.join(map(repr, repeated))} more than once"
        return
    if registry is not None:
        unknown = [m for m in models if registry.by_name(m) is None]
        if unknown:
            known = ", ".join(registry.names()) or "none registered"
            errors["models"] = (
                f"not registered: {', '.join(unknown)} (registered: {known})"
            )


_NOTHING_CHOSEN = "choose at least one model (or an app event type in event_types)"


def _check_event_types(
    errors: dict[str, str], names: t.Any, registry: Registry | None
) -> bool:
    """Check ``event_types``; return whether it names at least one type."""
    if names is None:
        return False
    if isinstance(names, str | bytes):
        errors["event_types"] = (
            f"must be a list of event type names such as ['invoice.paid'], "
            f"not the string {names!r}"
        )
        return False
    if not isinstance(names, list | tuple):
        errors["event_types"] = (
            f"must be a list of event type names, got {type(names).__name__}"
        )
        return False
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        errors["event_types"] = f"event type names must be strings, got {bad[0]!r}"
        return bool(names)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        errors["event_types"] = f"lists {', '.join(map(repr, repeated))} more than once"
    elif registry is not None:
        unknown = [n for n in names if registry.event_type(n) is None]
        if unknown:
            known = ", ".join(registry.event_type_names()) or "none declared"
            errors["event_types"] = (
                f"not declared: {', '.join(unknown)} (declared with "
                f"webhooks.event_type(): {known})"
            )
    return bool(names)


def _check_headers(errors: dict[str, str], text: str) -> None:
    try:
        for name, value in parse_header_lines(text):
            check_header_name(name)
            problem = template_syntax_error(value)
            if problem:
                raise ValueError(f"{name!r}: template error: {problem}")
    except ValueError as e:
        errors["additional_headers"] = str(e)


def _check_ca_file(errors: dict[str, str], path: str) -> None:
    if not os.path.isabs(path):
        errors["ca_file_path"] = (
            f"{path!r} must be an absolute path (workers may run in another directory)"
        )
    elif not os.path.exists(path):
        errors["ca_file_path"] = f"{path!r} does not exist"
    elif os.path.isdir(path):
        errors["ca_file_path"] = (
            f"{path!r} is a directory; give the CA bundle file (PEM)"
        )
    elif not os.path.isfile(path):
        errors["ca_file_path"] = f"{path!r} is not a regular file"
    else:
        try:
            with open(path, "rb"):
                pass
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError as e:
            errors["ca_file_path"] = (
                f"{path!r} is not a CA bundle: no PEM certificate could be loaded "
                f"({e.reason or e})"
            )
        except OSError as e:
            errors["ca_file_path"] = f"{path!r} is not readable: {e.strerror or e}"


def _check_conditions(errors: dict[str, str], conditions: t.Any) -> None:
    if conditions is None or conditions == "":
        return
    if isinstance(conditions, str | bytes):
        errors["conditions"] = (
            "got a JSON string; assign the parsed object instead "
            "(json.loads(text)), so the stored value is a JSON object"
        )
        return
    if not isinstance(conditions, Mapping):
        errors["conditions"] = (
            "must be a condition or a condition set (a JSON object) or None, "
            f"got {type(conditions).__name__}"
        )
        return
    if not conditions:
        return  # {} means "no conditions", as None does
    from .conditions import ConditionSet

    try:
        ConditionSet(conditions)
    except ValueError as e:
        errors["conditions"] = str(e)


def _check_timeout(errors: dict[str, str], timeout: t.Any) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        errors["timeout"] = (
            f"must be a number of seconds or None, got {type(timeout).__name__}"
        )
        return
    seconds = float(timeout)
    if math.isnan(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        errors["timeout"] = (
            f"must be greater than 0 and at most {MAX_TIMEOUT:g} seconds "
            f"(got {timeout!r})"
        )


def _check_rate_limit(errors: dict[str, str], rate: t.Any) -> None:
    if rate is None:
        return
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        errors["rate_limit"] = (
            "must be a number of requests per second or None, "
            f"got {type(rate).__name__}"
        )
        return
    value = float(rate)
    if math.isnan(value) or not 0 < value <= MAX_RATE_LIMIT:
        errors["rate_limit"] = (
            f"must be greater than 0 and at most {MAX_RATE_LIMIT:g} requests "
            f"per second, or empty for no limit (got {rate!r})"
        )


def _changed_fields(webhook: t.Any) -> set[str] | None:
    """The columns changed since ``webhook`` was loaded, or None when it is not
    a saved, mapped object (then every field counts)."""
    state = sa.inspect(webhook, raiseerr=False)
    if not isinstance(state, InstanceState) or state.key is None:
        return None
    return {
        attr.key
        for attr in state.mapper.column_attrs
        if state.attrs[attr.key].history.has_changes()
    }


def validate_webhook(
    webhook: t.Any, registry: Registry | None, *, session: Session | None = None
) -> dict[str, str]:
    """Return ``{field: message}`` for every invalid field of ``webhook``.

    Works on saved and unsaved objects alike (anything with the
    :class:`Webhook` attributes); nothing is changed or written. For a saved
    webhook only the fields changed since it was loaded are reported (and
    rules that involve them, such as the secret when the signature scheme
    changes): disabling or renaming a webhook never fails because its CA
    file or a model registration went away since it was saved.

    :param webhook: the webhook to check.
    :param registry: the registered models ``models`` must name; None skips
        that check.
    :param session: where to look for another webhook with the same ``name``;
        default: the session ``webhook`` belongs to. Without either (or for an
        object that is not mapped), uniqueness is left to the database.
    """
    own_session = object_session(webhook) if _is_mapped(webhook) else None
    if own_session is None:
        return _validate(webhook, registry, session)
    # Reading an expired attribute loads it; that must not flush the very
    # changes being validated.
    with own_session.no_autoflush:
        return _validate(webhook, registry, session)


def _is_mapped(webhook: t.Any) -> bool:
    return isinstance(sa.inspect(webhook, raiseerr=False), InstanceState)


def _validate(
    webhook: t.Any, registry: Registry | None, session: Session | None
) -> dict[str, str]:
    errors: dict[str, str] = {}
    changed = _changed_fields(webhook)

    name = _check_text(errors, webhook, "name", webhook.name, required=True)
    if (
        name
        and (changed is None or "name" in changed)
        and _name_taken(webhook, name, session)
    ):
        errors["name"] = f"a webhook named {name!r} already exists"

    for field in (*_BOOL_FIELDS, *_OPTIONAL_BOOL_FIELDS):
        value = (
            getattr(webhook, field, False)
            if field in _OPTIONAL_BOOL_FIELDS
            else getattr(webhook, field)
        )
        if not isinstance(value, bool):
            errors[field] = f"must be True or False, got {value!r}"

    has_event_types = _check_event_types(
        errors, getattr(webhook, "event_types", None), registry
    )
    _check_models(errors, webhook.models, registry, optional=has_event_types)

    models = webhook.models
    if (
        "on_create" not in errors
        and not (has_event_types and not models)
        and not (webhook.on_create or webhook.on_update or webhook.on_delete)
    ):
        errors["on_create"] = (
            "choose at least one event (on_create, on_update, on_delete)"
        )

    url = _check_text(
        errors, webhook, "payload_url", webhook.payload_url, required=True
    ).strip()
    if url:
        problem = _templated_url_problem(url) if "{" in url else url_problem(url)
        if problem:
            errors["payload_url"] = problem

    method = webhook.http_method
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        errors["http_method"] = (
            f"must be one of {', '.join(HTTP_METHODS)}, got {method!r}"
        )

    content_type = _check_text(
        errors,
        webhook,
        "http_content_type",
        webhook.http_content_type,
        required=True,
    )
    if content_type:
        if CONTROL.search(content_type):
            errors["http_content_type"] = "must be a single line"
        elif not _MEDIA_TYPE.match(content_type.strip()):
            errors["http_content_type"] = (
                f"{content_type!r} is not a media type such as application/json"
            )

    headers = _check_text(
        errors, webhook, "additional_headers", webhook.additional_headers
    )
    if headers:
        _check_headers(errors, headers)

    body = _check_text(errors, webhook, "body_template", webhook.body_template)
    problem = template_syntax_error(body)
    if problem:
        errors["body_template"] = f"template error: {problem}"

    secret = _check_text(errors, webhook, "secret", webhook.secret)
    scheme = webhook.signature_scheme
    if scheme is None or scheme == "":
        scheme = "netbox"
    if scheme not in SCHEMES:
        errors["signature_scheme"] = (
            f"must be one of {', '.join(SCHEMES)}, got {scheme!r}"
        )
    elif scheme in ("standard", "both") and secret and not is_standard_secret(secret):
        errors["secret"] = (
            f"the {scheme!r} signature scheme needs a Standard Webhooks secret: "
            "'whsec_' followed by base64 (generate one with "
            "flask_webhooks.signing.generate_secret() or `flask webhooks secret`)"
        )

    ca_file = _check_text(errors, webhook, "ca_file_path", webhook.ca_file_path)
    if ca_file:
        _check_ca_file(errors, ca_file)
    _check_conditions(errors, webhook.conditions)
    _check_timeout(errors, webhook.timeout)
    _check_rate_limit(errors, getattr(webhook, "rate_limit", None))

    if changed is not None:
        errors = {
            field: message
            for field, message in errors.items()
            if changed.intersection(_DEPENDS.get(field, (field,)))
        }
    return errors
