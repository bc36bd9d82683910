"""The requests adapter that applies the URL policy to every delivery.

:class:`PolicyAdapter` is a :class:`requests.adapters.HTTPAdapter` whose
connection pools come from :mod:`flask_webhooks.transport.policy`: every new
connection resolves its host through the :class:`URLPolicy` and connects to
exactly the address that was checked (no second DNS lookup, so no DNS
rebinding). The transport mounts it for ``http://`` and ``https://`` on every
session it sends through.

Through a proxy the adapter cannot see the connected address (the proxy
resolves and connects on its own), so it checks the destination before
anything is sent: an IP literal in a denied network, or a name that resolves
*here* into one, is refused; a name that does not resolve here is left to the
proxy.
"""

from __future__ import annotations

import functools
import typing as t
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from requests.utils import select_proxy
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.poolmanager import ProxyManager

from .policy import _pool_classes
from .policy import _QuietHTTPSConnectionPool
from .policy import BlockedAddress
from .policy import URLPolicy

if t.TYPE_CHECKING:
    from requests import PreparedRequest
    from requests import Response
    from urllib3.poolmanager import PoolManager

__all__ = ["PolicyAdapter"]

#: Pools for connections to a proxy: urllib3's, minus the warning about
#: unverified TLS (a per-webhook choice, see ``_QuietHTTPSConnectionPool``).
_PROXY_POOL_CLASSES: dict[str, type[HTTPConnectionPool]] = {
    "http": HTTPConnectionPool,
    "https": _QuietHTTPSConnectionPool,
}

_DEFAULT_PORTS = {"http": 80, "https": 443}


@functools.lru_cache(maxsize=32)
def _cached_pool_classes(policy: URLPolicy) -> dict[str, type[HTTPConnectionPool]]:
    # One set of classes per policy, shared by every thread's adapter.
    return _pool_classes(policy)


class PolicyAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that enforces a URL policy.

    Takes every argument of ``HTTPAdapter`` (``pool_connections``,
    ``pool_maxsize``, ``max_retries``, ``pool_block``). Subclass it for a
    custom adapter that keeps the policy::

        class TracingAdapter(PolicyAdapter):
            def send(self, request, **kwargs):
                ...
                return super().send(request, **kwargs)

        def make_session():
            session = requests.Session()
            session.mount("https://", TracingAdapter())
            return session

    :param policy: the policy to enforce. None (the default): the app's
        policy (``WEBHOOKS_ALLOWED_NETWORKS`` / ``WEBHOOKS_DENIED_NETWORKS``),
        set by the transport when it takes the session from
        ``session_factory``; until then :class:`URLPolicy`'s defaults apply.
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "url_policy"]

    def __init__(self, policy: URLPolicy | None = None, **kwargs: t.Any) -> None:
        #: The policy given, or set by :meth:`use_policy`; None until then.
        self.url_policy = policy
        super().__init__(**kwargs)

    @property
    def effective_policy(self) -> URLPolicy:
        """The policy applied: :attr:`url_policy`, or the defaults while unset."""
        if self.url_policy is None:
            # Not cached: the defaults read the resolver in effect now.
            return URLPolicy()
        return self.url_policy

    def init_poolmanager(
        self,
        connections: int,
        maxsize: int,
        block: bool = False,
        **pool_kwargs: t.Any,
    ) -> None:
        """Build the pool manager with the policy's connection pools."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self._install_policy()

    def _install_policy(self) -> None:
        manager: PoolManager = self.poolmanager
        manager.pool_classes_by_scheme = _cached_pool_classes(self.effective_policy)

    def use_policy(self, policy: URLPolicy) -> None:
        """Enforce ``policy`` from now on; open connections are closed."""
        self.url_policy = policy
        self.poolmanager.clear()
        self._install_policy()

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: t.Any) -> PoolManager:
        """The manager for connections through ``proxy``.

        Its pools are urllib3's own: the proxy's address is the operator's
        choice and is not checked against the policy.
        """
        new = proxy not in self.proxy_manager
        manager: PoolManager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if new and isinstance(manager, ProxyManager):
            manager.pool_classes_by_scheme = _PROXY_POOL_CLASSES
        return manager

    def request_url(self, request: PreparedRequest, proxies: t.Any) -> str:
        """The request target: the path, or the whole URL for a proxy."""
        if proxies:
            return super().request_url(request, proxies)
        # What requests returns without a proxy, without parsing the URL twice.
        url = request.path_url
        if url.startswith("//"):
            url = f"/{url.lstrip('/')}"
        return url

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: t.Any = None,
        verify: bool | str = True,
        cert: t.Any = None,
        proxies: t.Mapping[str, str] | None = None,
    ) -> Response:
        """Send ``request``; through a proxy, check its destination first.

        :raises BlockedAddress: the destination is refused by the policy.
        """
        if proxies and request.url and select_proxy(request.url, dict(proxies)):
            self.check_destination(request.url)
        return super().send(
            request,
            stream=stream,
            timeout=timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )

    def check_destination(self, url: str) -> None:
        """Refuse ``url`` if its host is, or resolves here to, a denied address.

        Used for requests sent through a proxy. A name that does not resolve
        here is let through: the proxy resolves it on its own.

        :raises BlockedAddress: the host is refused.
        """
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            return
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            return
        try:
            self.effective_policy.resolve(host, port)
        except BlockedAddress:
            raise
        except (OSError, UnicodeError):
            # Not resolvable here (or not a name the resolver takes): the
            # proxy decides.
            return
