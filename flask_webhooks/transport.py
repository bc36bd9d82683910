"""HTTP transport for webhook deliveries: URL policy, pooled connections, caps.

This module knows nothing about Flask or the database. The delivery worker
builds an :class:`HTTPRequest` from plain values, hands it to
:meth:`Transport.send` and gets an :class:`HTTPResult` back; network and HTTP
problems are reported in the result, never raised.

Requests go straight to urllib3 connection pools (the layer ``requests`` is
built on). A webhook request is one fixed method, URL, header set and byte
body, with no cookies, auth handlers, hooks, redirects or proxies to
negotiate, and ``requests``' per-request preparation and response wrapping
cost more CPU than the HTTP exchange itself on a keep-alive connection
(about 0.45 ms of 0.75 ms per POST measured against a local receiver).
Delivery workers are threads bound by one GIL, so that CPU is throughput.

Security properties:

- Every address a hostname resolves to is checked against a
  :class:`URLPolicy` *at connect time*, and the socket is opened to exactly the
  address that was checked. A DNS answer that changes between check and
  connect (DNS rebinding) cannot redirect the request, because there is no
  second lookup. The hostname is kept on the connection, so the ``Host``
  header, TLS SNI and certificate hostname verification still use the name.
- Redirects are never followed, proxies (from the environment or anywhere
  else) are never used and responses are read up to a fixed number of bytes.
"""

from __future__ import annotations

import base64
import calendar
import email.utils
import functools
import http.client
import ipaddress
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import ClassVar
from typing import TypeAlias
from urllib.parse import unquote
from urllib.parse import urlsplit

import urllib3.exceptions
from urllib3.connection import HTTPConnection
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NameResolutionError
from urllib3.exceptions import NewConnectionError
from urllib3.response import BaseHTTPResponse
from urllib3.util import parse_url
from urllib3.util.retry import Retry
from urllib3.util.ssl_ import create_urllib3_context
from urllib3.util.timeout import Timeout

__all__ = [
    "DEFAULT_DENIED_NETWORKS",
    "ERROR_KINDS",
    "BlockedAddress",
    "HTTPRequest",
    "HTTPResult",
    "Transport",
    "URLPolicy",
    "parse_retry_after",
]

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], list[str]]

#: Networks refused unless explicitly allowed: IPv4 and IPv6 link-local (which
#: includes the cloud metadata address 169.254.169.254), "this network"
#: 0.0.0.0/8, the IPv6 unspecified address, the AWS IPv6 metadata endpoint and
#: Alibaba Cloud's metadata address. Loopback and private ranges are *not*
#: denied by default; add them through ``WEBHOOKS_DENIED_NETWORKS``.
DEFAULT_DENIED_NETWORKS: tuple[str, ...] = (
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "::/128",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
)

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
_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


class BlockedAddress(ValueError):
    """The URL policy refused an address; no connection was attempted.

    :param host: the host as written in the URL.
    :param address: the refused IP address.
    :param network: the denied network it falls in, or None when it is
        refused for another reason (unspecified address, unparsable answer).
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        address: str,
        network: Network | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.address = address
        self.network = network


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


def _parse_network(value: str | Network) -> Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value).strip())
    except ValueError as exc:
        raise ValueError(f"invalid network {value!r}: {exc}") from None


def _parse_networks(values: Iterable[str | Network] | str) -> tuple[Network, ...]:
    if isinstance(values, str):
        # A lone string is one network, not an iterable of characters.
        values = (values,)
    return tuple(_parse_network(v) for v in values)


def _parse_address(value: str) -> Address:
    # Scope ids ("fe80::1%eth0") do not matter for the network check.
    address = ipaddress.ip_address(value.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        # ::ffff:169.254.169.254 reaches 169.254.169.254: check it as IPv4.
        return address.ipv4_mapped
    return address


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class URLPolicy:
    """Decides which IP addresses webhooks may connect to.

    An address is refused when it is in a denied network and not in an
    allowed network (allowed wins, so denying ``10.0.0.0/8`` while allowing
    ``10.1.2.0/24`` works). The unspecified addresses ``0.0.0.0`` and ``::``
    are always refused. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are
    checked as their IPv4 form.

    :param allowed: networks (CIDR strings or :mod:`ipaddress` networks) that
        are always permitted, even inside a denied network.
    :param denied: networks that are refused; defaults to
        :data:`DEFAULT_DENIED_NETWORKS`.
    :param resolver: ``callable(host, port) -> list[str]`` returning IP
        address strings; defaults to :func:`socket.getaddrinfo`.
    :raises ValueError: a network string is invalid (the message names it).
    """

    def __init__(
        self,
        allowed: Iterable[str | Network] | str = (),
        denied: Iterable[str | Network] | str = DEFAULT_DENIED_NETWORKS,
        resolver: Resolver | None = None,
    ) -> None:
        self.allowed: tuple[Network, ...] = _parse_networks(allowed)
        self.denied: tuple[Network, ...] = _parse_networks(denied)
        self.resolver: Resolver = resolver or _default_resolver

    def __repr__(self) -> str:
        allowed = [str(n) for n in self.allowed]
        denied = [str(n) for n in self.denied]
        return f"URLPolicy(allowed={allowed!r}, denied={denied!r})"

    def denied_network(self, address: str | Address) -> Network | None:
        """Return the denied network that refuses ``address``, or None.

        Does not cover the always-refused unspecified addresses; use
        :meth:`check` for the full rule.
        """
        ip = _parse_address(str(address))
        if any(ip in net for net in self.allowed):
            return None
        for net in self.denied:
            if ip in net:
                return net
        return None

    def is_allowed(self, address: str | Address) -> bool:
        """Whether the policy permits connecting to the IP ``address``."""
        try:
            self.check(str(address))
        except BlockedAddress:
            return False
        return True

    def check(self, address: str, host: str | None = None) -> None:
        """Raise :class:`BlockedAddress` if the IP ``address`` is refused.

        :param address: an IP address string.
        :param host: the name it was resolved from, used in the message.
        """
        where = (
            address
            if host is None or host == address
            else f"{host} resolved to {address}, which"
        )
        try:
            ip = _parse_address(address)
        except ValueError:
            raise BlockedAddress(
                f"blocked: {host or address} resolved to {address!r}, which is not an IP address",
                host=host or address,
                address=address,
            ) from None
        if ip.is_unspecified:
            raise BlockedAddress(
                f"blocked: {where} is an unspecified address",
                host=host or address,
                address=address,
            )
        network = self.denied_network(ip)
        if network is not None:
            raise BlockedAddress(
                f"blocked: {where} is in denied network {network}",
                host=host or address,
                address=address,
                network=network,
            )

    def resolve(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` and return its addresses if all are permitted.

        Literal IP hosts are checked without DNS. If *any* resolved address
        is refused, nothing is returned: a name that points partly at a
        denied network is treated as hostile.

        :raises BlockedAddress: an address is refused.
        :raises OSError: resolution failed (:class:`socket.gaierror`) or
            returned nothing.
        """
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            _parse_address(bare)
        except ValueError:
            answers = self.resolver(bare, port)
            named: str | None = bare
        else:
            answers = [bare]
            named = None
        addresses = list(dict.fromkeys(str(a) for a in answers))
        if not addresses:
            raise socket.gaierror(f"{bare} did not resolve to any address")
        for address in addresses:
            self.check(address, named)
        return addresses


def _open_socket(
    address: tuple[str, int],
    timeout: float | None,
    source_address: tuple[str, int] | None = None,
    socket_options: Iterable[tuple[int, int, int | bytes]] | None = None,
) -> socket.socket:
    """Open a TCP connection to an already checked IP ``address``.

    The single place where webhook sockets are created: tests replace it to
    observe (or forbid) connects.
    """
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        sock.settimeout(timeout)
        if source_address:
            sock.bind(source_address)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_checked(conn: HTTPConnection, policy: URLPolicy) -> socket.socket:
    """Resolve through ``policy`` and connect to one of the checked addresses.

    Mirrors :meth:`urllib3.connection.HTTPConnection._new_conn`, with the
    lookup replaced by :meth:`URLPolicy.resolve` and no second lookup.
    """
    try:
        addresses = policy.resolve(conn._dns_host, conn.port)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    # urllib3 resolves its default-timeout sentinel before connecting.
    timeout = conn.timeout
    error: OSError | None = None
    for address in addresses:
        try:
            sock = _open_socket(
                (address, conn.port),
                timeout,
                conn.source_address,
                conn.socket_options,
            )
        except OSError as exc:
            error = exc
            continue
        sys.audit("http.client.connect", conn, conn.host, conn.port)
        return sock
    if isinstance(error, TimeoutError):
        raise ConnectTimeoutError(
            conn,
            f"Connection to {conn.host} timed out. (connect timeout={timeout})",
        ) from error
    raise NewConnectionError(
        conn, f"Failed to establish a new connection: {error}"
    ) from error


class _PolicyHTTPConnection(HTTPConnection):
    url_policy: ClassVar[URLPolicy]

    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, self.url_policy)


class _PolicyHTTPSConnection(HTTPSConnection):
    url_policy: ClassVar[URLPolicy]

    def _new_conn(self) -> socket.socket:
        return _connect_checked(self, self.url_policy)


class _PolicyHTTPSConnectionPool(HTTPSConnectionPool):
    def _validate_conn(self, conn: Any) -> None:
        # Skips urllib3's InsecureRequestWarning: unverified TLS is an explicit
        # per-webhook choice (ssl_verification=False), and a warning on every
        # delivery would only flood worker logs.
        HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:
            conn.connect()


def _pool_classes(policy: URLPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes per scheme whose connections are bound to ``policy``."""
    http_conn = type(
        "PolicyHTTPConnection", (_PolicyHTTPConnection,), {"url_policy": policy}
    )
    https_conn = type(
        "PolicyHTTPSConnection", (_PolicyHTTPSConnection,), {"url_policy": policy}
    )
    http_pool = type(
        "PolicyHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}
    )
    https_pool = type(
        "PolicyHTTPSConnectionPool",
        (_PolicyHTTPSConnectionPool,),
        {"ConnectionCls": https_conn},
    )
    return {"http": http_pool, "https": https_pool}


@dataclass(frozen=True)
class HTTPRequest:
    """One HTTP request to send, as plain values.

    :param method: HTTP method, e.g. ``"POST"``.
    :param url: absolute ``http://`` or ``https://`` URL.
    :param headers: request headers, sent as given. The transport adds
        ``Host`` and ``Content-Length`` (a ``Content-Length`` or
        ``Transfer-Encoding`` given here is dropped: the body is always sent
        with its exact length), ``Accept: */*`` and ``Accept-Encoding: gzip,
        deflate`` unless given (compressed answers are decoded), and
        ``Authorization: Basic ...`` when the URL carries
        ``user:password@``. A name or value with CR/LF or leading whitespace
        is refused (``error_kind`` ``"invalid_url"``).
    :param body: exact body bytes (the signed bytes). An empty body sends
        ``Content-Length: 0``, except for GET and HEAD, which send none.
    :param connect_timeout: seconds to wait for the TCP (and TLS) connection.
    :param read_timeout: seconds to wait for each read from the server.
    :param verify: True to verify TLS certificates against the default CA
        bundle (certifi's, when installed), False to skip verification, or
        the path of a CA bundle file or directory.
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
)


def _classify(exc: BaseException, request: HTTPRequest) -> tuple[str, str]:
    """Map an exception from urllib3 or the socket layer to ``(error_kind, message)``.

    Pools run with ``retries=False``, so urllib3 raises the error it met
    (possibly wrapped in a :class:`~urllib3.exceptions.ProtocolError`), never
    a ``MaxRetryError``.
    """
    blocked = _find(exc, BlockedAddress)
    if blocked is not None:
        return "blocked", str(blocked)
    invalid = _find(exc, _INVALID)
    if invalid is not None:
        return "invalid_url", f"invalid request: {invalid}"
    # NewConnectionError subclasses ConnectTimeoutError; it is no timeout.
    connect_timeout = _find(exc, ConnectTimeoutError)
    if connect_timeout is not None and not isinstance(
        connect_timeout, NewConnectionError
    ):
        return "timeout", f"connect timed out after {request.connect_timeout} s"
    if _find(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "timeout", f"read timed out after {request.read_timeout} s"
    tls = _find(exc, (ssl.SSLError, ssl.CertificateError))
    if tls is None:
        tls = _find(exc, urllib3.exceptions.SSLError)
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
    """Where a URL sends its requests; parsed once per distinct URL."""

    scheme: str
    host: str
    port: int
    #: The request target: path and query, percent-encoded.
    path: str
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
    try:
        # Lower-cases the host, IDNA-encodes it and percent-encodes what a
        # path or query may not contain (what requests did, with this very
        # function).
        parsed = parse_url(url.lstrip())
    except urllib3.exceptions.LocationParseError as exc:
        return f"invalid request: {exc}"
    host = parsed.host
    if not host:
        return f"invalid URL {url!r}: no host"
    if host.startswith(("*", ".")):
        return f"invalid request: Invalid URL {url!r}: Invalid host label"
    scheme = parts.scheme
    authorization = None
    if parts.username is not None and parts.password is not None:
        # Credentials in the URL become Basic auth, as requests did.
        username, password = unquote(parts.username), unquote(parts.password)
        if username or password:
            try:
                token = f"{username}:{password}".encode("latin-1")
            except UnicodeEncodeError:
                return "invalid URL: the user name or password is not Latin-1 text"
            authorization = "Basic " + base64.b64encode(token).decode("ascii")
    return _Target(
        scheme,
        host,
        parsed.port or (443 if scheme == "https" else 80),
        parsed.request_uri,
        authorization,
    )


_HEADER_NAME = re.compile(r"[^:\s][^:\r\n]*")
_HEADER_VALUE = re.compile(r"\S[^\r\n]*|")
#: Framing is the transport's: the body is bytes, its length is known.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


def _build_headers(
    given: Mapping[str, str], authorization: str | None
) -> dict[str, str]:
    """The headers to send: ``given``, checked, plus the transport's defaults.

    :raises ValueError: a name or value could split the header block (the
        check and message are requests' ``InvalidHeader``).
    """
    headers: dict[str, str] = {}
    accept = accept_encoding = True
    for name, value in given.items():
        for kind, part, pattern in (
            ("name", name, _HEADER_NAME),
            ("value", value, _HEADER_VALUE),
        ):
            if not isinstance(part, str) or pattern.fullmatch(part) is None:
                raise ValueError(
                    "Invalid leading whitespace, reserved character(s), or return "
                    f"character(s) in header {kind}: {part!r}"
                )
        lower = name.lower()
        if lower in _FRAMING_HEADERS or (
            authorization is not None and lower == "authorization"
        ):
            continue
        if lower == "accept":
            accept = False
        elif lower == "accept-encoding":
            accept_encoding = False
        headers[name] = value
    if authorization is not None:
        headers["Authorization"] = authorization
    if accept or accept_encoding:
        # What requests sent by default. Compressed answers are decoded when
        # read, so asking for them costs nothing but CPU when a receiver
        # actually compresses.
        defaults: dict[str, str] = {}
        if accept_encoding:
            defaults["Accept-Encoding"] = "gzip, deflate"
        if accept:
            defaults["Accept"] = "*/*"
        defaults.update(headers)
        headers = defaults
    return headers


#: Methods sent without ``Content-Length`` when the body is empty (requests'
#: rule; every other method sends ``Content-Length: 0``).
_BODYLESS_METHODS = frozenset({"GET", "HEAD"})

#: No retries, no redirects: urllib3 raises the original error and returns a
#: 3xx as it is. Retry objects are immutable, so one serves every request.
_NO_RETRIES = Retry(total=False, redirect=False)

#: Pools kept per thread (one per scheme, host, port and TLS setting); the
#: least recently used is closed beyond that (requests' default, too).
_MAX_POOLS = 10

_PoolKey: TypeAlias = tuple[str, str, int, bool | str | None]


@functools.lru_cache(maxsize=64)
def _timeout(connect: float, read: float) -> Timeout:
    # Pools clone the Timeout they are given, so one object can be shared.
    return Timeout(connect=connect, read=read)


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """The shared TLS context for ``verify=True`` or ``verify=False``.

    Built once per process: loading a CA bundle costs milliseconds, which
    urllib3 would otherwise spend on every new connection (requests preloads
    its context for the same reason). Verified connections trust certifi's
    bundle when it is installed, as requests did, else the system's.
    """
    if not verify:
        return create_urllib3_context(cert_reqs=ssl.CERT_NONE)
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    try:
        import certifi
    except ImportError:  # pragma: no cover - requests depends on certifi
        context.load_default_certs()
    else:
        context.load_verify_locations(certifi.where())
    return context


class _TotalTimeout(Exception):
    """The answer was still arriving when ``total_timeout`` ran out."""


class _Local(threading.local):
    def __init__(self) -> None:
        # Least recently used first. Dropped when the thread ends; urllib3's
        # pools close their connections when they are garbage collected.
        self.pools: OrderedDict[_PoolKey, HTTPConnectionPool] = OrderedDict()


class Transport:
    """Sends :class:`HTTPRequest` objects, enforcing a :class:`URLPolicy`.

    Requests go straight to urllib3 connection pools rather than through
    :mod:`requests`: for these fixed, pre-built requests, ``requests``'
    preparation and response wrapping cost more CPU than the HTTP exchange
    (0.75 ms against 0.30 ms per POST on a keep-alive connection when this
    was measured), and delivery threads share one GIL, so that CPU is
    delivery throughput.

    Each thread keeps its own pools, one per scheme, host, port and TLS
    setting (connections are reused across sends on that thread), and at
    most ten of them. Redirects are not followed, proxies are never used
    (urllib3 reads no proxy variables from the environment) and at most
    ``max_response_bytes`` of each response body are read.

    :param policy: the URL policy checked on every new connection.
    :param max_response_bytes: cap on the response body kept in the result.
    :param pool_maxsize: connections kept per host and thread.
    """

    def __init__(
        self,
        policy: URLPolicy,
        *,
        max_response_bytes: int = 65536,
        pool_maxsize: int = 10,
    ) -> None:
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.pool_maxsize = pool_maxsize
        self._pool_classes = _pool_classes(policy)
        self._local = _Local()

    def _pool(self, target: _Target, verify: bool | str) -> HTTPConnectionPool:
        """This thread's pool for ``target`` and TLS setting ``verify``."""
        https = target.scheme == "https"
        key: _PoolKey = (
            target.scheme,
            target.host,
            target.port,
            verify if https else None,
        )
        pools = self._local.pools
        pool = pools.get(key)
        if pool is not None:
            pools.move_to_end(key)
            return pool
        tls: dict[str, Any] = {}
        if https:
            if isinstance(verify, str):
                where = "ca_cert_dir" if os.path.isdir(verify) else "ca_certs"
                tls = {"cert_reqs": "CERT_REQUIRED", where: verify}
            else:
                tls = {
                    "cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE",
                    "ssl_context": _tls_context(bool(verify)),
                }
        pool = self._pool_classes[target.scheme](
            target.host,
            target.port,
            maxsize=self.pool_maxsize,
            block=False,
            retries=_NO_RETRIES,
            **tls,
        )
        pools[key] = pool
        while len(pools) > _MAX_POOLS:
            pools.popitem(last=False)[1].close()
        return pool

    def close(self) -> None:
        """Close this thread's pools and their connections.

        Other threads' pools are closed when those threads end. The
        transport stays usable: the next send opens new connections.
        """
        pools, self._local.pools = self._local.pools, OrderedDict()
        for pool in pools.values():
            pool.close()

    def send(self, request: HTTPRequest) -> HTTPResult:
        """Send ``request`` once and describe what happened.

        Never raises for network or HTTP problems: the result's ``error`` and
        ``error_kind`` say what went wrong.
        """
        start = time.monotonic()
        target = _parse_target(request.url)
        if isinstance(target, str):
            return HTTPResult(None, error=target, error_kind="invalid_url")
        verify = request.verify
        if isinstance(verify, str) and not os.path.exists(verify):
            return HTTPResult(
                None,
                error=f"TLS error: CA bundle not found: {verify}",
                error_kind="tls",
            )
        method = request.method.upper()
        body: bytes | None = request.body
        if not body and method in _BODYLESS_METHODS:
            body = None
        try:
            headers = _build_headers(request.headers, target.authorization)
            response = self._pool(target, verify).urlopen(
                method,
                target.path,
                body=body,
                headers=headers,
                retries=_NO_RETRIES,
                redirect=False,
                assert_same_host=False,
                timeout=_timeout(request.connect_timeout, request.read_timeout),
                release_conn=False,
                preload_content=False,
                decode_content=True,
            )
        except (
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
            BlockedAddress,
        ) as exc:
            kind, message = _classify(exc, request)
            return HTTPResult(
                None,
                duration=time.monotonic() - start,
                error=message,
                error_kind=kind,
            )
        except ValueError as exc:
            # A header that could split the header block, a method or header
            # http.client cannot send, an impossible timeout.
            return HTTPResult(
                None,
                duration=time.monotonic() - start,
                error=f"invalid request: {exc}",
                error_kind="invalid_url",
            )
        status = response.status
        result = HTTPResult(status, headers=dict(response.headers))
        deadline = (
            start + request.total_timeout if request.total_timeout is not None else None
        )
        try:
            content, result.truncated = self._read_capped(response, deadline)
        except _TotalTimeout:
            result.error_kind = "timeout"
            result.error = (
                f"the response took longer than {request.total_timeout:g} s in total"
            )
            content = b""
        except (
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            result.error_kind, result.error = _classify(exc, request)
            content = b""
        finally:
            # A body read to its end has already handed the connection back to
            # the pool (then both calls do nothing). Otherwise (truncated,
            # broken, too slow) unread bytes would garble the next answer on
            # it: close it, and give the pool its slot back.
            response.close()
            response.release_conn()
        result.duration = time.monotonic() - start
        result.body_excerpt = content.decode("utf-8", errors="replace")
        if result.error is None and not result.ok:
            if 300 <= status < 400:
                result.error_kind = "redirect"
                location = result.location or "(no Location header)"
                result.error = f"redirect not followed: {status} to {location}"
            else:
                result.error_kind = "http"
                reason = f" {response.reason}" if response.reason else ""
                result.error = f"HTTP {status}{reason}"
        return result

    def _read_capped(
        self, response: BaseHTTPResponse, deadline: float | None = None
    ) -> tuple[bytes, bool]:
        """Read at most ``max_response_bytes`` (+1 to detect truncation),
        giving up at ``deadline`` (a ``time.monotonic()`` value)."""
        limit = self.max_response_bytes + 1
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            if deadline is not None and time.monotonic() > deadline:
                raise _TotalTimeout
            # read1: return after one receive, so the deadline is checked
            # between the pieces of a trickling answer.
            chunk = response.read1(min(limit - size, 65536), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        truncated = len(body) > self.max_response_bytes
        return body[: self.max_response_bytes], truncated
