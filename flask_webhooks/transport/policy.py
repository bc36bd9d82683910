"""URL policy for webhook deliveries: which addresses requests may go to.

This module decides *where* a webhook request may connect; sending it is
:mod:`flask_webhooks.transport`'s job. It knows nothing about Flask, the
database or HTTP beyond opening the connection.

Every address a hostname resolves to is checked against a :class:`URLPolicy`
*at connect time*, and the socket is opened to exactly the address that was
checked. A DNS answer that changes between check and connect (DNS rebinding)
cannot redirect the request, because there is no second lookup. The hostname
is kept on the connection, so the ``Host`` header, TLS SNI and certificate
hostname verification still use the name.

:class:`URLPolicy`, :class:`BlockedAddress` and :data:`DEFAULT_DENIED_NETWORKS`
are also importable from :mod:`flask_webhooks.transport`.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any
from typing import ClassVar
from typing import TypeAlias

from urllib3.connection import HTTPConnection
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError
from urllib3.exceptions import NameResolutionError
from urllib3.exceptions import NewConnectionError

__all__ = [
    "DEFAULT_DENIED_NETWORKS",
    "BlockedAddress",
    "URLPolicy",
]
# embedded_ipv4 is public but left out of __all__: everything in __all__ is
# re-exported by flask_webhooks.transport, which this change does not touch.

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


#: NAT64 well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: IPv4-compatible addresses (deprecated, RFC 4291): ``::a.b.c.d``.
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 transition address leads to.

    ``::ffff:a.b.c.d`` (IPv4-mapped), ``::a.b.c.d`` (IPv4-compatible),
    ``64:ff9b::a.b.c.d`` (NAT64), ``2002:AABB:CCDD::/48`` (6to4) and Teredo
    ``2001::/32`` (its server and its client address). Such an address may
    reach the IPv4 host through a translator or tunnel, so the policy checks
    these IPv4 addresses as well. Empty for anything else.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return ()
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        found.append(low32)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return tuple(found)


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class URLPolicy:
    """Decides which IP addresses webhooks may connect to.

    An address is refused when it is in a denied network and not in an
    allowed network (allowed wins, so denying ``10.0.0.0/8`` while allowing
    ``10.1.2.0/24`` works). The unspecified addresses ``0.0.0.0`` and ``::``
    are always refused. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``) are
    checked as their IPv4 form; other IPv6 transition forms (IPv4-compatible,
    NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``) are
    checked as themselves *and* as the IPv4 addresses they embed.

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

        For an IPv6 transition address (:func:`embedded_ipv4`), the IPv4
        addresses it embeds are checked too, each against both lists. Does
        not cover the always-refused unspecified addresses; use :meth:`check`
        for the full rule.
        """
        ip = _parse_address(str(address))
        for candidate in (ip, *embedded_ipv4(ip)):
            if any(candidate in net for net in self.allowed):
                continue
            for net in self.denied:
                if candidate in net:
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
            via = [str(v4) for v4 in embedded_ipv4(ip) if v4 in network]
            embeds = f" (it embeds the IPv4 address {via[0]})" if via else ""
            raise BlockedAddress(
                f"blocked: {where} is in denied network {network}{embeds}",
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
    observe (or forbid) connects. Patch it on this module;
    :mod:`flask_webhooks.transport` deliberately does not re-export it, so a
    patch aimed at the old location fails loudly instead of missing connects.
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


class _QuietHTTPSConnectionPool(HTTPSConnectionPool):
    def _validate_conn(self, conn: Any) -> None:
        # Skips urllib3's InsecureRequestWarning: unverified TLS is an explicit
        # per-webhook choice (ssl_verification=False), and a warning on every
        # delivery would only flood worker logs.
        HTTPConnectionPool._validate_conn(self, conn)
        if conn.is_closed:
            conn.connect()


class _PolicyHTTPSConnectionPool(_QuietHTTPSConnectionPool):
    pass


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
