"""The HTTP client of deliveries: one :class:`requests.Session` per thread.

Knows nothing about Flask or the database. The delivery worker builds an
:class:`~flask_webhooks.transport.message.HTTPRequest` from plain values,
hands it to :meth:`Transport.send` and gets an
:class:`~flask_webhooks.transport.message.HTTPResult` back; network and HTTP
problems are reported in the result, never raised.

- Every request goes through the calling thread's session (the app's
  ``session_factory`` makes it, or a plain one), so what the app put on it
  applies: mounted adapters, ``cert``, ``verify``, ``auth``, ``headers``,
  ``proxies``, hooks, and instrumentation of ``Session.send``.
- Where a request may go is decided by
  :class:`~flask_webhooks.transport.policy.URLPolicy`, through the
  :class:`~flask_webhooks.transport.adapter.PolicyAdapter` mounted on the
  session: every new connection resolves its host through the policy and
  connects to exactly the address that was checked.
- Redirects are never followed, environment proxy settings are ignored
  unless asked for, and responses are read up to a fixed number of bytes.

What goes into a request and how a failure is described is
:mod:`flask_webhooks.transport.message`'s job.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import threading
import time
import typing as t
from http import cookiejar

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from requests.models import PreparedRequest

from .adapter import PolicyAdapter
from .message import _classify
from .message import _parse_target
from .message import _request_headers
from .message import HTTPRequest
from .message import HTTPResult
from .policy import BlockedAddress
from .policy import URLPolicy

if t.TYPE_CHECKING:
    from urllib3.response import BaseHTTPResponse

__all__ = ["SessionFactory", "Transport"]

logger = logging.getLogger(__name__)

#: ``make_session() -> requests.Session``, called once per sending thread.
SessionFactory: t.TypeAlias = t.Callable[[], requests.Session]

_SESSION_REQUEST = requests.Session.request
_SESSION_PREPARE = requests.Session.prepare_request

#: Errors of the exchange itself, described by ``_classify``.
_NETWORK_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
    BlockedAddress,
)


class _TotalTimeout(Exception):
    """The answer was still arriving when ``total_timeout`` ran out."""


class _NoCookies(cookiejar.DefaultCookiePolicy):
    """The default session's cookie policy: keep none, send none.

    Each delivery is a self-contained signed request; a jar per thread that
    collects every receiver's cookies would only grow.
    """

    def set_ok(self, cookie: cookiejar.Cookie, request: t.Any) -> bool:
        return False

    def return_ok(self, cookie: cookiejar.Cookie, request: t.Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: t.Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: t.Any) -> bool:
        return False


class _OwnAuthorization(AuthBase):
    """The request's own ``Authorization`` header (from the webhook's URL or
    headers): as the request's ``auth``, it keeps the session's from
    replacing that header."""

    def __call__(self, r: PreparedRequest) -> PreparedRequest:
        return r


_OWN_AUTHORIZATION = _OwnAuthorization()


@functools.lru_cache(maxsize=256)
def _prepared_url(url: str) -> str:
    """``url`` as requests sends it (IDNA host, percent-encoded path)."""
    prepared = PreparedRequest()
    prepared.prepare_url(url, None)
    return t.cast(str, prepared.url)


def _prepare(
    session: requests.Session,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    auth: t.Any,
) -> PreparedRequest:
    """What ``session.prepare_request`` builds for this request, cheaper.

    The same steps, in the same order (method, URL with the session's
    ``params``, session headers under the request's, the session's cookies,
    body, auth, the session's hooks), without copying the cookie jar twice
    or re-parsing an URL already seen. Used for plain sessions only.
    """
    prepared = PreparedRequest()
    prepared.prepare_method(method)
    if session.params:
        prepared.prepare_url(url, session.params)
    else:
        prepared.url = _prepared_url(url)
    merged = {**session.headers, **headers}
    prepared.prepare_headers({k: v for k, v in merged.items() if v is not None})
    prepared.prepare_cookies(session.cookies)
    prepared.prepare_body(body, None, None)
    if auth is not None:
        prepared.prepare_auth(auth, url)
    prepared.prepare_hooks(session.hooks)
    return prepared


def _read_capped(
    response: BaseHTTPResponse, limit: int, deadline: float | None
) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes (+1 to detect truncation), decoded,
    giving up at ``deadline`` (a ``time.monotonic()`` value)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        if deadline is not None and time.monotonic() > deadline:
            raise _TotalTimeout
        # read1: return after one receive, so the deadline is checked
        # between the pieces of a trickling answer.
        chunk = response.read1(min(limit + 1 - size, 65536), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:limit], len(body) > limit


class _Reader:
    """The first response hook of a delivery: reads the body, capped.

    Runs inside ``Session.send``, before the app's hooks and before requests'
    redirect handling, which would otherwise read the whole body of a 3xx.
    """

    __slots__ = ("called", "content", "deadline", "error", "limit", "truncated")

    def __init__(self, limit: int, deadline: float | None) -> None:
        self.limit = limit
        self.deadline = deadline
        self.called = False
        self.content = b""
        self.truncated = False
        self.error: BaseException | None = None

    def __call__(
        self, response: requests.Response, *args: t.Any, **kwargs: t.Any
    ) -> requests.Response:
        if self.called:
            return response
        self.called = True
        raw = response.raw
        try:
            self.content, self.truncated = _read_capped(raw, self.limit, self.deadline)
        except (_TotalTimeout, *_NETWORK_ERRORS) as exc:
            self.error = exc
        finally:
            # A body read to its end has already handed the connection back
            # to the pool (then both calls do nothing). Otherwise (truncated,
            # broken, too slow) unread bytes would garble the next answer on
            # it: close it, and give the pool its slot back.
            raw.close()
            raw.release_conn()
        # What reading through requests would have set: later hooks and
        # requests itself see the capped body and never touch the socket.
        response._content = self.content
        response._content_consumed = True  # type: ignore[attr-defined]
        return response


class _Local(threading.local):
    session: requests.Session | None = None


class Transport:
    """Sends :class:`HTTPRequest` objects through requests, enforcing a URL policy.

    Each thread gets its own :class:`requests.Session` on first use: from
    ``session_factory`` if given, else a plain one; either way the
    :class:`~flask_webhooks.transport.adapter.PolicyAdapter` is mounted for
    ``http://`` and ``https://`` (see :meth:`session`). Connections are
    reused across sends on that thread. Redirects are not followed and at
    most ``max_response_bytes`` of each response body are read.

    A plain session (``requests.Session`` or a subclass that leaves
    ``request`` and ``prepare_request`` alone) with ``trust_env`` off gets
    the request prepared the way ``Session.prepare_request`` would, then
    ``Session.send``; otherwise the transport calls ``Session.request``, so
    the subclass's overrides and the environment apply.

    :param policy: the :class:`~flask_webhooks.transport.policy.URLPolicy`
        checked on every new connection.
    :param max_response_bytes: cap on the response body kept in the result.
    :param pool_maxsize: connections kept per host and thread (default
        session).
    :param session_factory: ``make_session() -> requests.Session``, called
        once per thread; None: a plain session.
    :param proxies: a requests ``proxies`` dict, added to each session's.
    :param trust_env: let requests read proxy settings, ``.netrc`` and CA
        bundle variables from the environment; sets each session's
        ``trust_env``.
    """

    def __init__(
        self,
        policy: URLPolicy,
        *,
        max_response_bytes: int = 65536,
        pool_maxsize: int = 10,
        session_factory: SessionFactory | None = None,
        proxies: t.Mapping[str, str] | None = None,
        trust_env: bool = False,
    ) -> None:
        if max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        self.policy = policy
        self.max_response_bytes = max_response_bytes
        self.pool_maxsize = pool_maxsize
        self.session_factory = session_factory
        self.proxies = dict(proxies or {})
        self.trust_env = trust_env
        self._local = _Local()
        self._warned = False

    # -- sessions ---------------------------------------------------------------

    def session(self) -> requests.Session:
        """The calling thread's session, made on first use.

        A session from ``session_factory`` is taken as it is, except that
        each plain :class:`~requests.adapters.HTTPAdapter` on it (requests'
        defaults, or one the factory mounted) is replaced by a
        :class:`~flask_webhooks.transport.adapter.PolicyAdapter` with the
        same pool settings, a ``PolicyAdapter`` without a policy gets this
        transport's, and ``trust_env`` and ``proxies`` are set from the
        transport. Any other adapter is kept: the URL policy does not apply
        to the URLs it serves (a warning is logged once).

        :raises TypeError: ``session_factory`` returned something else than a
            :class:`requests.Session`.
        """
        session = self._local.session
        if session is None:
            session = self._new_session()
            self._local.session = session
        return session

    def _new_session(self) -> requests.Session:
        if self.session_factory is None:
            session = requests.Session()
            session.cookies.set_policy(_NoCookies())
            for prefix in ("https://", "http://"):
                session.mount(
                    prefix, PolicyAdapter(self.policy, pool_maxsize=self.pool_maxsize)
                )
        else:
            session = self.session_factory()
            if not isinstance(session, requests.Session):
                raise TypeError(
                    "session_factory must return a requests.Session, "
                    f"got {type(session).__name__}"
                )
            self._guard(session)
        session.trust_env = self.trust_env
        session.proxies.update(self.proxies)
        return session

    def _guard(self, session: requests.Session) -> None:
        """Put the policy on every adapter of ``session`` that can take it."""
        unguarded: list[str] = []
        for prefix, adapter in list(session.adapters.items()):
            if isinstance(adapter, PolicyAdapter):
                if adapter.url_policy is None:
                    adapter.use_policy(self.policy)
            elif type(adapter) is HTTPAdapter:
                session.adapters[prefix] = PolicyAdapter(
                    self.policy,
                    pool_connections=getattr(adapter, "_pool_connections", 10),
                    pool_maxsize=getattr(adapter, "_pool_maxsize", self.pool_maxsize),
                    pool_block=getattr(adapter, "_pool_block", False),
                    max_retries=adapter.max_retries,
                )
                adapter.close()
            else:
                unguarded.append(f"{prefix} ({type(adapter).__name__})")
        for prefix in ("https://", "http://"):
            if prefix not in session.adapters:
                session.mount(
                    prefix, PolicyAdapter(self.policy, pool_maxsize=self.pool_maxsize)
                )
        if unguarded and not self._warned:
            self._warned = True
            logger.warning(
                "flask-webhooks: the session from session_factory has its own "
                "adapters for %s; the URL policy is not enforced for URLs they "
                "serve (subclass flask_webhooks.transport.adapter.PolicyAdapter "
                "to keep it)",
                ", ".join(unguarded),
            )

    def close(self) -> None:
        """Close this thread's session and its connections.

        Other threads' sessions are closed when those threads end. The
        transport stays usable: the next send makes a new session.
        """
        session, self._local.session = self._local.session, None
        if session is not None:
            session.close()

    # -- sending ----------------------------------------------------------------

    def send(self, request: HTTPRequest) -> HTTPResult:
        """Send ``request`` once and describe what happened.

        Never raises for network or HTTP problems: the result's ``error`` and
        ``error_kind`` say what went wrong.
        """
        start = time.monotonic()
        target = _parse_target(request.url)
        if isinstance(target, str):
            return HTTPResult(None, error=target, error_kind="invalid_url")
        try:
            session = self.session()
        except Exception as exc:
            logger.exception("flask-webhooks: could not make the HTTP session")
            return HTTPResult(
                None,
                error=f"could not make the HTTP session: {exc}",
                error_kind="connect",
            )
        verify = request.verify
        effective = session.verify if verify is True else verify
        if isinstance(effective, str) and not os.path.exists(effective):
            return HTTPResult(
                None,
                error=f"TLS error: CA bundle not found: {effective}",
                error_kind="tls",
            )
        headers, own_auth = _request_headers(request.headers, target.authorization)
        total = request.total_timeout
        reader = _Reader(
            self.max_response_bytes, start + total if total is not None else None
        )
        try:
            response = self._exchange(session, request, headers, own_auth, reader)
        except _NETWORK_ERRORS as exc:
            kind, message = _classify(exc, request)
            return self._failed(start, message, kind)
        except ValueError as exc:
            # A method http.client cannot send, an impossible timeout.
            return self._failed(start, f"invalid request: {exc}", "invalid_url")
        except Exception as exc:
            # The app's adapter or hook failed: a failed attempt, not a crash.
            logger.exception("flask-webhooks: the HTTP session raised")
            return self._failed(start, f"the HTTP session failed: {exc!r}", "connect")
        if not reader.called:
            # A session whose request() does not pass hooks on.
            reader(response)
        status = response.status_code
        result = HTTPResult(status, headers=dict(response.headers))
        if isinstance(reader.error, _TotalTimeout):
            result.error_kind = "timeout"
            result.error = f"the response took longer than {total:g} s in total"
        elif reader.error is not None:
            result.error_kind, result.error = _classify(reader.error, request)
        result.duration = time.monotonic() - start
        result.truncated = reader.truncated
        result.body_excerpt = reader.content.decode("utf-8", errors="replace")
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

    @staticmethod
    def _failed(start: float, message: str, kind: str) -> HTTPResult:
        return HTTPResult(
            None, duration=time.monotonic() - start, error=message, error_kind=kind
        )

    def _exchange(
        self,
        session: requests.Session,
        request: HTTPRequest,
        headers: dict[str, str],
        own_auth: bool,
        reader: _Reader,
    ) -> requests.Response:
        """One request through ``session``; ``reader`` reads the answer."""
        body = request.body or None
        timeout = (request.connect_timeout, request.read_timeout)
        # True: the session's own verify (a corporate CA bundle, say).
        verify = None if request.verify is True else request.verify
        cls = type(session)
        if (
            not session.trust_env
            and cls.request is _SESSION_REQUEST
            and cls.prepare_request is _SESSION_PREPARE
        ):
            prepared = _prepare(
                session,
                request.method,
                request.url,
                headers,
                body,
                None if own_auth else session.auth,
            )
            prepared.hooks["response"].insert(0, reader)
            if verify is None:
                return session.send(
                    prepared, stream=True, allow_redirects=False, timeout=timeout
                )
            return session.send(
                prepared,
                stream=True,
                allow_redirects=False,
                timeout=timeout,
                verify=verify,
            )
        return session.request(
            request.method,
            request.url,
            data=body,
            headers=headers,
            auth=_OWN_AUTHORIZATION if own_auth else None,
            hooks={"response": [reader, *session.hooks.get("response", [])]},
            stream=True,
            allow_redirects=False,
            timeout=timeout,
            verify=verify,
        )
