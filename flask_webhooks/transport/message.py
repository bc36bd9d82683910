"""HTTP message logic for webhook deliveries: what is sent, and what went wrong.

The pure, connection-free half of :mod:`flask_webhooks.transport`: parsing a
webhook URL into the request target, building and checking the header block,
reading a ``Retry-After`` answer and describing a failed exchange (an
exception from requests, urllib3 or the socket layer) as an ``error_kind``
and a message. Nothing here opens a socket, holds state beyond small caches,
or knows about Flask or the database; :mod:`flask_webhooks.transport.client`
owns the sessions, TLS and timeouts and calls into this module.

:func:`parse_retry_after` is also importable from
:mod:`flask_webhooks.transport`.
"""

from __future__ import annotations

import base64
import calendar
import email.utils
import functools
import http.client
import re
import socket
import ssl
import time
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import unquote
from urllib.parse import urlsplit

import requests.exceptions
import urllib3.exceptions
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NewConnectionError

from .policy import BlockedAddress

__all__ = ["ERROR_KINDS", "HTTPRequest", "HTTPResult", "parse_retry_after"]

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")

#: The ``error_kind`` values of an :class:`HTTPResult`.
ERROR_KINDS: tuple[str, ...] = (
    "blocked",
    "timeout",
    "connect",
    "tls",
    "invalid_url",
    "http",
    "redirect",
)

_NOT_RETRYABLE = frozenset({"blocked", "invalid_url"})


@dataclass(frozen=True)
class HTTPRequest:
    """One HTTP request to send, as plain values.

    :param method: HTTP method, e.g. ``"POST"``.
    :param url: absolute ``http://`` or ``https://`` URL.
    :param headers: request headers, sent as given, over the session's
        headers (the default session's are requests' ``User-Agent``,
        ``Accept: */*``, ``Accept-Encoding`` and ``Connection: keep-alive``;
        compressed answers are decoded). The transport adds ``Host`` and
        ``Content-Length`` (a ``Content-Length`` or ``Transfer-Encoding``
        given here is dropped: the body is always sent with its exact
        length), and ``Authorization: Basic ...`` when the URL carries
        ``user:password@``. An ``Authorization`` from the URL or from these
        headers wins over the session's ``auth``. A name or value with CR/LF
        or leading whitespace is refused (``error_kind`` ``"invalid_url"``).
    :param body: exact body bytes (the signed bytes). An empty body sends
        ``Content-Length: 0``, except for GET and HEAD, which send none.
    :param connect_timeout: seconds to wait for the TCP (and TLS) connection.
    :param read_timeout: seconds to wait for each read from the server.
    :param verify: True to verify TLS certificates as the session does (its
        ``verify``: by default requests' CA bundle, certifi's), False to skip
        verification, or the path of a CA bundle file or directory.
    :param total_timeout: seconds the whole exchange may take, body included;
        a receiver that trickles its answer (each read within
        ``read_timeout``) is cut off there. None: no overall limit.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    verify: bool | str = True
    total_timeout: float | None = None


@dataclass
class HTTPResult:
    """The outcome of one request.

    Either the server answered (``status_code`` set) or ``error`` /
    ``error_kind`` say why not. A non-2xx answer also sets ``error`` and
    ``error_kind`` (``"http"``, or ``"redirect"`` for 3xx). If the body
    breaks off or stalls while it is read (up to the cap), ``status_code``
    is kept and ``error_kind`` is ``"timeout"`` or ``"connect"``; such a
    result is not :attr:`ok`.

    :param status_code: HTTP status, or None when no response arrived.
    :param headers: response headers (repeated headers joined by ``", "``).
    :param body_excerpt: the response body up to the transport's cap,
        decoded as UTF-8 with invalid bytes replaced.
    :param truncated: the body was longer than the cap.
    :param duration: seconds from sending to the end of the body read.
    :param error: a human-readable message, None on success.
    :param error_kind: one of ``"blocked"``, ``"timeout"``, ``"connect"``,
        ``"tls"``, ``"invalid_url"``, ``"http"``, ``"redirect"``; None on
        success.
    """

    status_code: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body_excerpt: str = ""
    truncated: bool = False
    duration: float = 0.0
    error: str | None = None
    error_kind: str | None = None

    def _header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer whose body was read without error.

        Unlike requests' ``Response.ok``, 3xx answers are not successes.
        """
        return (
            self.error_kind is None
            and self.status_code is not None
            and 200 <= self.status_code < 300
        )

    @property
    def location(self) -> str | None:
        """The ``Location`` response header, if any."""
        return self._header("Location")

    @property
    def retry_after(self) -> float | None:
        """Seconds from now the server asked to wait (``Retry-After``)."""
        return parse_retry_after(self._header("Retry-After"))

    @property
    def retryable(self) -> bool:
        """False when repeating the request cannot help (blocked, bad URL)."""
        return self.error_kind not in _NOT_RETRYABLE


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header into seconds from ``now``.

    Accepts delta-seconds (``"120"``) and an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). A date in the past gives ``0.0``;
    the result is never negative. Missing or unparsable values give None.

    :param value: the header value.
    :param now: the reference time as a Unix timestamp (default: now).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    # parsedate_tz gives None for the offset when the date names none; HTTP
    # dates are always GMT, so treat that as UTC.
    when = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
    reference = time.time() if now is None else now
    return max(0.0, when - reference)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, reasons, args)."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked: list[object] = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *current.args,
        ]
        stack.extend(e for e in reversed(linked) if isinstance(e, BaseException))


def _find(
    exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    for item in _causes(exc):
        if isinstance(item, kind):
            return item
    return None


_INVALID = (
    urllib3.exceptions.LocationValueError,
    http.client.InvalidURL,
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)


def _classify(exc: BaseException, request: HTTPRequest) -> tuple[str, str]:
    """Map an exception from requests, urllib3 or the socket layer to
    ``(error_kind, message)``.

    requests wraps what urllib3 met (``ConnectionError(MaxRetryError(
    reason=NewConnectionError(...)))``, ``ReadTimeout(ReadTimeoutError)``);
    the original is found through the wrappers' ``args``, ``reason`` and
    ``__cause__``. A failure to reach a proxy keeps its kind and says so.
    """
    blocked = _find(exc, BlockedAddress)
    if blocked is not None:
        return "blocked", str(blocked)
    invalid = _find(exc, _INVALID)
    if invalid is not None:
        return "invalid_url", f"invalid request: {invalid}"
    kind, message = _classify_network(exc, request)
    if _find(exc, urllib3.exceptions.ProxyError):
        return kind, f"proxy error: {message}"
    return kind, message


def _classify_network(exc: BaseException, request: HTTPRequest) -> tuple[str, str]:
    # NewConnectionError subclasses ConnectTimeoutError; it is no timeout.
    connect_timeout = _find(exc, ConnectTimeoutError)
    if connect_timeout is not None and not isinstance(
        connect_timeout, NewConnectionError
    ):
        return "timeout", f"connect timed out after {request.connect_timeout} s"
    if _find(
        exc,
        (
            urllib3.exceptions.ReadTimeoutError,
            requests.exceptions.ReadTimeout,
            TimeoutError,
        ),
    ):
        return "timeout", f"read timed out after {request.read_timeout} s"
    tls = _find(exc, (ssl.SSLError, ssl.CertificateError))
    if tls is None:
        tls = _find(exc, (urllib3.exceptions.SSLError, requests.exceptions.SSLError))
    if tls is not None:
        detail = getattr(tls, "verify_message", None) or tls
        return "tls", f"TLS error: {detail}"
    if _find(exc, ConnectionRefusedError):
        return "connect", "connection refused"
    resolution = _find(exc, socket.gaierror)
    if resolution is not None:
        host = urlsplit(request.url).hostname
        return "connect", f"could not resolve {host}: {resolution}"
    if _find(exc, ConnectionResetError):
        return "connect", "connection reset by the server"
    if _find(exc, (http.client.IncompleteRead, urllib3.exceptions.IncompleteRead)):
        return "connect", "connection closed before the response body was complete"
    if _find(exc, http.client.RemoteDisconnected):
        return "connect", "connection closed by the server without a response"
    innermost = list(_causes(exc))[-1]
    return "connect", f"connection failed: {innermost}"


@dataclass(frozen=True)
class _Target:
    """What the transport needs to know of a URL; parsed once per distinct URL.

    requests prepares the URL itself (IDNA host, percent-encoded path);
    this only refuses what must not be sent and reads the credentials.
    """

    #: ``Basic ...`` credentials from ``user:password@`` in the URL, or None.
    authorization: str | None


@functools.lru_cache(maxsize=256)
def _parse_target(url: str) -> _Target | str:
    """Parse ``url`` into a :class:`_Target`, or return why it cannot be sent.

    Cached: a webhook sends to the same URL again and again.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"invalid URL {url!r}: scheme must be http or https"
    if not parts.hostname:
        return f"invalid URL {url!r}: no host"
    authorization = None
    if parts.username is not None and parts.password is not None:
        # Credentials in the URL become Basic auth (requests' rule, checked
        # here so a name that is not Latin-1 gets a clear message).
        username, password = unquote(parts.username), unquote(parts.password)
        if username or password:
            try:
                token = f"{username}:{password}".encode("latin-1")
            except UnicodeEncodeError:
                return "invalid URL: the user name or password is not Latin-1 text"
            authorization = "Basic " + base64.b64encode(token).decode("ascii")
    return _Target(authorization)


#: Framing is the transport's: the body is bytes, its length is known.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def _request_headers(
    given: Mapping[str, str], authorization: str | None
) -> tuple[dict[str, str], bool]:
    """The request's own headers, and whether they carry an ``Authorization``.

    Framing headers are dropped; ``authorization`` (from the URL) replaces
    any ``Authorization`` given. Names and values are checked by requests
    when the request is prepared (``InvalidHeader``).
    """
    headers: dict[str, str] = {}
    own_auth = authorization is not None
    for name, value in given.items():
        lower = name.lower() if isinstance(name, str) else ""
        if lower in _FRAMING_HEADERS:
            continue
        if lower == "authorization":
            if authorization is not None:
                continue
            own_auth = True
        headers[name] = value
    if authorization is not None:
        headers["Authorization"] = authorization
    return headers, own_auth
