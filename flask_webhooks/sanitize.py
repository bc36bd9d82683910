"""Making values safe to store and to show.

Two jobs, for everything flask-webhooks writes to its tables or prints:

* **Redaction**: credentials are masked. URLs lose the password of their
  user-info (``https://user:***@host``; a user-info without a password, often
  a token, becomes ``***``) and the values of query parameters whose names
  look secret; headers whose names look secret (``WEBHOOKS_REDACT_HEADERS``)
  are stored as ``<redacted>``. See :class:`Redactor`.
* **NUL characters**: PostgreSQL text columns refuse ``\\x00``. Text that
  came from outside (a receiver's answer, a username, an object id) has its
  NULs replaced by U+FFFD (``�``) before it is stored (:func:`scrub`).

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import fnmatch
import typing as t
from urllib.parse import parse_qsl
from urllib.parse import quote
from urllib.parse import urlsplit

#: What a redacted header value or URL part is replaced with.
MASK = "<redacted>"
#: What a URL password (or token user-info) is replaced with.
URL_MASK = "***"

#: Default of ``WEBHOOKS_REDACT_HEADERS``: names compared case-insensitively;
#: ``*`` matches anything (``*token*``: every name containing "token").
DEFAULT_REDACT_HEADERS: tuple[str, ...] = (
    "Authorization",
    "Proxy-Authorization",
    "Cookie",
    "Set-Cookie",
    "X-API-Key",
    "*token*",
    "*secret*",
    "*key*",
    "*password*",
)

#: Signature headers are always masked in what is stored: with the body,
#: they would let anyone who reads the delivery log replay the request.
ALWAYS_REDACTED = frozenset({"x-hook-signature", "webhook-signature"})

#: flask-webhooks' own headers carry no secret and are never masked, whatever
#: the patterns say.
NEVER_REDACTED = frozenset(
    {
        "content-type",
        "user-agent",
        "x-webhook-id",
        "x-webhook-attempt",
        "x-webhook-sequence",
        "webhook-id",
        "webhook-timestamp",
    }
)

_NUL = "\x00"
_REPLACEMENT = "\ufffd"


class Redactor:
    """Masks secrets in headers and URLs by name.

    :param names: header (and query parameter) names to mask, compared
        case-insensitively; ``*`` and ``?`` are wildcards (``"*token*"``).
    """

    def __init__(self, names: t.Iterable[str] = DEFAULT_REDACT_HEADERS) -> None:
        self.names = tuple(names)
        for name in self.names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(
                    f"WEBHOOKS_REDACT_HEADERS: {name!r} is not a header name or pattern"
                )
        lowered = [n.strip().lower() for n in self.names]
        self._exact = frozenset(n for n in lowered if not _is_pattern(n))
        self._patterns = tuple(n for n in lowered if _is_pattern(n))
        self._known: dict[str, bool] = {}

    def is_secret(self, name: str) -> bool:
        """Whether the value of header (or query parameter) ``name`` is masked."""
        found = self._known.get(name)
        if found is not None:
            return found
        key = name.strip().lower()
        if key in ALWAYS_REDACTED:
            secret = True
        elif key in NEVER_REDACTED:
            secret = False
        else:
            secret = key in self._exact or any(
                fnmatch.fnmatchcase(key, p) for p in self._patterns
            )
        if len(self._known) > 1024:  # names come from receivers too
            self._known.clear()
        self._known[name] = secret
        return secret

    def headers(self, headers: t.Mapping[str, str] | None) -> dict[str, str]:
        """``headers`` with the values of secret ones replaced by :data:`MASK`,
        and NULs replaced (see :func:`scrub`)."""
        return {
            scrub(k): MASK if self.is_secret(k) else scrub(str(v))
            for k, v in (headers or {}).items()
        }

    def url(self, url: str) -> str:
        """``url`` with its credentials masked (see the module docstring)."""
        return mask_url(url, self)


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


#: The redactor with the default names, for values shown without an app.
DEFAULT_REDACTOR = Redactor()


def mask_url(url: str, redactor: Redactor | None = None) -> str:
    """``url`` with the password (or a password-less user-info) replaced by
    ``***`` and, with a ``redactor``, secret-looking query parameter values by
    ``<redacted>``. Text that is not a URL is returned unchanged."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        host_port = parts.netloc.rpartition("@")[2]
    except ValueError:
        return url
    changed = False
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, colon, _ = userinfo.partition(":")
        shown = f"{user}:{URL_MASK}" if colon else URL_MASK
        parts = parts._replace(netloc=f"{shown}@{host_port}")
        changed = True
    if redactor is not None and parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(redactor.is_secret(k) for k, _ in pairs):
            query = "&".join(
                f"{quote(k, safe='')}={MASK if redactor.is_secret(k) else quote(v, safe='')}"
                for k, v in pairs
            )
            parts = parts._replace(query=query)
            changed = True
    return parts.geturl() if changed else url


def scrub(text: str) -> str:
    """``text`` with NUL characters replaced by U+FFFD (PostgreSQL text
    columns cannot hold NUL)."""
    return text.replace(_NUL, _REPLACEMENT) if _NUL in text else text


def scrub_optional(text: str | None) -> str | None:
    """:func:`scrub` for a value that may be None."""
    return None if text is None else scrub(text)


def scrub_json(value: t.Any) -> t.Any:
    """``value`` (JSON-like: dicts, lists, strings...) with :func:`scrub`
    applied to every string in it, keys included."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub_json(k): scrub_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_json(v) for v in value]
    return value
