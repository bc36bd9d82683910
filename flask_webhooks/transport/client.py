"""The HTTP client of deliveries: pooled connections, timeouts, caps.

Knows nothing about Flask or the database. The delivery worker builds an
:class:`~flask_webhooks.transport.message.HTTPRequest` from plain values,
hands it to :meth:`Transport.send` and gets an
:class:`~flask_webhooks.transport.message.HTTPResult` back; network and HTTP
problems are reported in the result, never raised.

- Where a request may go is decided by
  :class:`~flask_webhooks.transport.policy.URLPolicy`: every new connection
  resolves its host through the policy and connects to exactly the address
  that was checked, so DNS rebinding cannot redirect it.
- Redirects are never followed, proxies are never used and responses are
  read up to a fixed number of bytes.

What goes into a request and how a failure is described is
:mod:`flask_webhooks.transport.message`'s job; this module owns the
connection pools, TLS contexts and timeouts.
"""

from __future__ import annotations

import functools
import http.client
import os
import ssl
import threading
import time
from collections import OrderedDict
from typing import Any
from typing import TypeAlias

import urllib3.exceptions
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.response import BaseHTTPResponse
from urllib3.util.retry import Retry
from urllib3.util.ssl_ import create_urllib3_context
from urllib3.util.timeout import Timeout

from .message import _BODYLESS_METHODS
from .message import _build_headers
from .message import _classify
from .message import _parse_target
from .message import _Target
from .message import HTTPRequest
from .message import HTTPResult
from .policy import _pool_classes
from .policy import BlockedAddress
from .policy import URLPolicy

__all__ = ["Transport"]

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
    """Sends :class:`HTTPRequest` objects, enforcing a URL policy.

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

    :param policy: the :class:`~flask_webhooks.urlpolicy.URLPolicy` checked on
        every new connection.
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
