"""Tests for the requests side of the transport: the app's ``session_factory``,
the policy adapter on the sessions it returns, proxies (``WEBHOOKS_PROXIES``)
and ``WEBHOOKS_TRUST_ENV``.

Every byte goes to 127.0.0.1. The autouse ``connects`` guard (the one of
test_transport.py) records (and refuses anything but loopback for) every
connect the URL policy makes; connects to a proxy are urllib3's own (the
proxy is trusted) and go to the loopback proxy below, which forwards only to
loopback addresses and refuses everything else.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import select
import socket
import ssl
import threading
import typing as t
from collections.abc import Callable
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_webhooks import Webhooks
from flask_webhooks.state import Config
from flask_webhooks.state import DEFAULTS
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.transport.adapter import PolicyAdapter
from flask_webhooks.transport.client import Transport
from flask_webhooks.transport.message import HTTPRequest
from flask_webhooks.transport.message import HTTPResult
from flask_webhooks.transport.policy import URLPolicy
from requests.adapters import HTTPAdapter

from tests.conftest import Models
from tests.conftest import SiteSchema
from tests.test_transport import fake_resolver
from tests.test_transport import guard_connects
from tests.test_transport import one_exchange
from tests.test_transport import post

LOOPBACK_DENIED = ["127.0.0.0/8"]


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every connect the URL policy makes; refuse anything not loopback."""
    return guard_connects(monkeypatch)


@pytest.fixture
def transports() -> Iterator[Callable[..., Transport]]:
    """Build transports; their sessions are closed after the test."""
    made: list[Transport] = []

    def make(policy: URLPolicy | None = None, **kwargs: t.Any) -> Transport:
        transport = Transport(policy or URLPolicy(), **kwargs)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        transport.close()


# -- a forwarding proxy on loopback ---------------------------------------------


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that records every request line it gets.

    Forwards absolute-URI requests (and CONNECT tunnels) only to loopback
    addresses; ``names`` is its own DNS (name -> address). Anything else is
    answered 502 and never connected to.
    """

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.names = names or {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: t.Any) -> None:
                pass

            def _target(self, host: str) -> str | None:
                address = proxy.names.get(host, host)
                try:
                    loopback = ipaddress.ip_address(address).is_loopback
                except ValueError:
                    return None
                return address if loopback else None

            def _refuse(self) -> None:
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _forward(self) -> None:
                proxy.lines.append(self.requestline)
                proxy.headers.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                parts = urlsplit(self.path)
                address = self._target(parts.hostname or "")
                if parts.scheme != "http" or address is None:
                    self._refuse()
                    return
                hop = {"proxy-authorization", "proxy-connection", "connection"}
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in hop
                }
                upstream = http.client.HTTPConnection(
                    address, parts.port or 80, timeout=5
                )
                try:
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                    upstream.request(self.command, path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    content = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def do_CONNECT(self) -> None:
                proxy.lines.append(self.requestline)
                proxy.headers.append(dict(self.headers))
                host, _, port = self.path.rpartition(":")
                address = self._target(host.strip("[]"))
                if address is None:
                    self._refuse()
                    return
                upstream = socket.create_connection((address, int(port)), timeout=5)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                sockets = [self.connection, upstream]
                try:
                    while True:
                        readable, _, _ = select.select(sockets, [], [], 5)
                        if not readable:
                            break
                        for sock in readable:
                            data = sock.recv(65536)
                            if not data:
                                return
                            (
                                upstream if sock is self.connection else self.connection
                            ).sendall(data)
                finally:
                    upstream.close()
                    self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    p = RecordingProxy(names={"hooks.internal": "127.0.0.1"})
    yield p
    p.stop()


# -- session_factory -------------------------------------------------------------


def test_session_factory_headers_auth_and_hooks_reach_the_receiver(
    app: Flask, db: SQLAlchemy, models: Models, receiver: RecordingReceiver
) -> None:
    seen: list[tuple[int, bytes]] = []

    def make_session() -> requests.Session:
        session = requests.Session()
        session.headers["X-Tenant"] = "acme"
        session.auth = ("hook-user", "hook-pass")
        session.hooks["response"].append(
            lambda r, *args, **kwargs: seen.append((r.status_code, r.content))
        )
        return session

    webhooks = Webhooks(app, db=db, session_factory=make_session)
    webhooks.register(models.Site, schema=SiteSchema)
    db.create_all()
    db.session.add(
        webhooks.Webhook(
            name="h", models=["site"], on_create=True, payload_url=receiver.url
        )
    )
    db.session.commit()
    receiver.respond(Answer(status=201, body=b"created"))
    db.session.add(models.Site(name="s"))
    db.session.commit()
    (got,) = receiver.wait_for(1)
    assert got.header("X-Tenant") == "acme"
    assert got.header("Authorization") == "Basic aG9vay11c2VyOmhvb2stcGFzcw=="
    assert (got.header("User-Agent") or "").startswith("flask-webhooks/")
    assert got.json()["model"] == "site"
    assert seen == [(201, b"created")]
    delivery = db.session.scalars(db.select(webhooks.Delivery)).one()
    assert delivery.status == "succeeded"


def test_init_app_takes_session_factory(app: Flask, db: SQLAlchemy) -> None:
    def make_session() -> requests.Session:
        return requests.Session()

    webhooks = Webhooks(db=db)
    webhooks.init_app(app, session_factory=make_session)
    assert webhooks.state.transport().session_factory is make_session
    with pytest.raises(TypeError, match="session_factory must be a callable"):
        Webhooks(db=db, session_factory="make_session")  # type: ignore[arg-type]


def test_session_factory_is_called_once_per_thread(
    receiver: RecordingReceiver, transports: Callable[..., Transport]
) -> None:
    made: list[str] = []
    lock = threading.Lock()

    def make_session() -> requests.Session:
        with lock:
            made.append(threading.current_thread().name)
        return requests.Session()

    transport = transports(session_factory=make_session)
    barrier = threading.Barrier(3)
    results: list[bool] = []

    def work() -> None:
        barrier.wait(5)
        try:
            for _ in range(3):
                results.append(transport.send(post(receiver.url)).ok)
        finally:
            transport.close()

    threads = [threading.Thread(target=work, name=f"w{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [True] * 9
    assert sorted(made) == ["w0", "w1", "w2"]
    # Each thread kept its session: one connection per thread.
    assert len({r.client_port for r in receiver.requests}) == 3


def test_session_factory_must_return_a_session(
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = transports(session_factory=lambda: "not a session")
    with caplog.at_level(logging.ERROR, "flask_webhooks.transport.client"):
        result = transport.send(post("http://127.0.0.1:9/hook"))
    assert result.error_kind == "connect"
    assert result.error == (
        "could not make the HTTP session: session_factory must return a "
        "requests.Session, got str"
    )
    assert connects == []


@pytest.mark.parametrize("mounted", ["defaults", "plain adapter", "policy adapter"])
def test_policy_applies_to_the_factory_session(
    receiver: RecordingReceiver,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
    mounted: str,
) -> None:
    sent: list[str] = []

    class CountingAdapter(PolicyAdapter):
        def send(
            self, request: requests.PreparedRequest, *args: t.Any, **kwargs: t.Any
        ) -> requests.Response:
            sent.append(t.cast(str, request.url))
            return super().send(request, *args, **kwargs)

    adapters = {
        "defaults": None,
        "plain adapter": HTTPAdapter(pool_maxsize=3),
        "policy adapter": CountingAdapter(),
    }

    def make_session() -> requests.Session:
        session = requests.Session()
        adapter = adapters[mounted]
        if adapter is not None:
            session.mount("http://", adapter)
        return session

    transport = transports(
        URLPolicy(denied=LOOPBACK_DENIED), session_factory=make_session
    )
    result = transport.send(post(receiver.url))
    assert result.error_kind == "blocked"
    assert result.error == "blocked: 127.0.0.1 is in denied network 127.0.0.0/8"
    assert connects == []
    assert receiver.requests == []
    adapter = transport.session().get_adapter(receiver.url)
    assert isinstance(adapter, PolicyAdapter)
    assert adapter.url_policy is transport.policy
    if mounted == "plain adapter":
        assert adapter._pool_maxsize == 3  # type: ignore[attr-defined]
    if mounted == "policy adapter":
        assert adapter is adapters["policy adapter"]
        assert sent == [receiver.url]


def test_own_adapter_is_kept_and_bypasses_the_policy_with_a_warning(
    receiver: RecordingReceiver,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Documented: an adapter that is not a PolicyAdapter is the app's choice."""

    class OwnAdapter(HTTPAdapter):
        pass

    def make_session() -> requests.Session:
        session = requests.Session()
        session.mount("http://", OwnAdapter())
        return session

    transport = transports(
        URLPolicy(denied=LOOPBACK_DENIED), session_factory=make_session
    )
    with caplog.at_level(logging.WARNING, "flask_webhooks.transport.client"):
        assert transport.send(post(receiver.url)).ok
    assert len(receiver.wait_for(1)) == 1
    assert connects == []  # urllib3's own connect, not the policy's
    (record,) = caplog.records
    assert "http:// (OwnAdapter)" in record.getMessage()
    assert "URL policy is not enforced" in record.getMessage()
    # https:// still has the policy.
    assert isinstance(transport.session().adapters["https://"], PolicyAdapter)


def test_webhook_credentials_win_over_the_session_auth(
    receiver: RecordingReceiver, transports: Callable[..., Transport]
) -> None:
    def make_session() -> requests.Session:
        session = requests.Session()
        session.auth = ("session", "auth")
        return session

    transport = transports(session_factory=make_session)
    url = f"http://hook:secret@127.0.0.1:{receiver.port}/hook"
    assert transport.send(post(url)).ok
    header = HTTPRequest(
        "POST", receiver.url, {"Authorization": "Bearer per-webhook"}, b"{}"
    )
    assert transport.send(header).ok
    assert transport.send(post(receiver.url)).ok
    first, second, third = receiver.wait_for(3)
    assert first.header("Authorization") == "Basic aG9vazpzZWNyZXQ="
    assert second.header("Authorization") == "Bearer per-webhook"
    assert third.header("Authorization") == "Basic c2Vzc2lvbjphdXRo"


def test_fast_preparation_sends_what_prepare_request_would(
    transports: Callable[..., Transport],
) -> None:
    """A plain session gets the request prepared without prepare_request;
    the bytes on the wire are the same as through Session.request."""

    class Overriding(requests.Session):
        def request(self, *args: t.Any, **kwargs: t.Any) -> requests.Response:
            return super().request(*args, **kwargs)

    def configure(session: requests.Session) -> requests.Session:
        session.headers["X-Session"] = "1"
        session.headers["Accept-Encoding"] = None  # type: ignore[assignment]
        session.params = {"tenant": "a b"}
        session.auth = ("u", "p")
        session.cookies.set("sid", "42", domain="127.0.0.1", path="/")
        return session

    fast = transports(session_factory=lambda: configure(requests.Session()))
    full = transports(session_factory=lambda: configure(Overriding()))
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    headers = {"Content-Type": "application/json", "X-Hook-Signature": "ab"}
    raws = []
    for transport in (fast, full):

        def send(url: str, transport: Transport = transport) -> HTTPResult:
            return transport.send(
                HTTPRequest("PUT", url + "?x=1", headers, b'{"a": 1}')
            )

        raw, result = one_exchange(answer, send)
        assert result.ok, result.error
        raws.append(raw.replace(raw.split(b"Host: ")[1].split(b"\r\n")[0], b"HOST"))
    assert raws[0] == raws[1]
    lines = raws[0].split(b"\r\n")
    assert lines[0] == b"PUT /hook?x=1&tenant=a+b HTTP/1.1"
    assert b"Cookie: sid=42" in lines
    assert b"X-Session: 1" in lines
    # The session removed requests' default; http.client's own is left.
    assert b"Accept-Encoding: identity" in lines


def test_session_verify_is_the_default_for_verified_webhooks(
    tls_receiver: tuple[RecordingReceiver, str],
    transports: Callable[..., Transport],
    tmp_path: Path,
) -> None:
    """A corporate CA bundle on the session; a webhook's own setting wins."""
    r, ca_path = tls_receiver
    resolver = fake_resolver({"localhost": ["127.0.0.1"]})

    def make_session() -> requests.Session:
        session = requests.Session()
        session.verify = ca_path
        return session

    transport = transports(URLPolicy(resolver=resolver), session_factory=make_session)
    url = f"https://localhost:{r.port}/hook"
    assert transport.send(post(url)).ok
    assert transport.send(post(url, verify=False)).ok
    other_ca = tmp_path / "other-ca.pem"
    trustme = pytest.importorskip("trustme")
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    result = transport.send(post(url, verify=str(other_ca)))
    assert result.error_kind == "tls"

    def missing_bundle() -> requests.Session:
        session = requests.Session()
        session.verify = "/nonexistent.pem"
        return session

    result = transports(session_factory=missing_bundle).send(post(url))
    assert result.error == "TLS error: CA bundle not found: /nonexistent.pem"


@pytest.fixture
def tls_host() -> str:
    return "localhost"


def test_client_certificate_mtls(
    tmp_path: Path,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    ca_path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    client_pem = tmp_path / "client.pem"
    ca.issue_cert("client.example").private_key_and_cert_chain_pem.write_to_path(
        str(client_pem)
    )
    resolver = fake_resolver({"localhost": ["127.0.0.1"]})

    def make_session(cert: str | None) -> Callable[[], requests.Session]:
        def make() -> requests.Session:
            session = requests.Session()
            session.verify = str(ca_path)
            session.cert = cert
            return session

        return make

    with RecordingReceiver(ssl_context=server) as r:
        url = f"https://localhost:{r.port}/hook"
        with_cert = transports(
            URLPolicy(resolver=resolver), session_factory=make_session(str(client_pem))
        )
        result = with_cert.send(post(url, body=b'{"mtls": true}'))
        assert result.ok, result.error
        (got,) = r.wait_for(1)
        assert got.body == b'{"mtls": true}'
        without = transports(
            URLPolicy(resolver=resolver), session_factory=make_session(None)
        )
        refused = without.send(post(url))
        assert not refused.ok
        assert refused.error_kind in ("tls", "connect")
        with_cert.close()
        without.close()
        assert len(r.requests) == 1
    assert {address for address in connects} == {("127.0.0.1", r.port)}


def test_redirect_body_is_capped_before_requests_reads_it(
    receiver: RecordingReceiver, transports: Callable[..., Transport]
) -> None:
    receiver.respond(
        Answer(status=302, headers={"Location": "/elsewhere"}, body=b"x" * 300_000)
    )
    result = transports(max_response_bytes=1024).send(post(receiver.url))
    assert result.error_kind == "redirect"
    assert result.truncated
    assert result.body_excerpt == "x" * 1024


# -- proxies ---------------------------------------------------------------------


def test_proxy_forwards_the_request(
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    transport = transports(proxies={"http": proxy.url})
    result = transport.send(post(receiver.url, body=b'{"via": "proxy"}'))
    assert result.ok, result.error
    assert proxy.lines == [f"POST {receiver.url} HTTP/1.1"]
    (got,) = receiver.wait_for(1)
    assert got.body == b'{"via": "proxy"}'
    # The proxy's address is the operator's choice: not checked, not ours.
    assert connects == []


def test_proxy_credentials_go_to_the_proxy_only(
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
) -> None:
    authenticated = proxy.url.replace("http://", "http://squid:pw@")
    transport = transports(proxies={"http": authenticated})
    assert transport.send(post(receiver.url)).ok
    assert proxy.headers[0]["Proxy-Authorization"] == "Basic c3F1aWQ6cHc="
    (got,) = receiver.wait_for(1)
    assert got.header("Proxy-Authorization") is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_denied_ip_literal_never_reaches_the_proxy(
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
    url: str,
) -> None:
    transport = transports(proxies={"http": proxy.url, "https": proxy.url})
    result = transport.send(post(url))
    assert result.error_kind == "blocked"
    assert result.error is not None and "169.254.0.0/16" in result.error
    assert not result.retryable
    assert proxy.lines == []
    assert connects == []


def test_denied_loopback_destination_never_reaches_the_proxy(
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    # The proxy itself is on 127.0.0.1 too: the operator's, so allowed.
    transport = transports(
        URLPolicy(denied=LOOPBACK_DENIED), proxies={"all": proxy.url}
    )
    result = transport.send(post(receiver.url))
    assert result.error == "blocked: 127.0.0.1 is in denied network 127.0.0.0/8"
    assert proxy.lines == []
    assert receiver.requests == []
    assert connects == []


def test_name_resolving_here_into_a_denied_network_never_reaches_the_proxy(
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    resolver = fake_resolver({"metadata.example": ["169.254.169.254"]})
    transport = transports(URLPolicy(resolver=resolver), proxies={"http": proxy.url})
    result = transport.send(post("http://metadata.example/latest/"))
    assert result.error == (
        "blocked: metadata.example resolved to 169.254.169.254, "
        "which is in denied network 169.254.0.0/16"
    )
    assert proxy.lines == []
    assert connects == []


def test_name_unknown_here_is_left_to_the_proxy(
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
) -> None:
    """The proxy resolves on its own (here: hooks.internal is its loopback)."""
    calls: list[str] = []
    resolver = fake_resolver({}, calls)
    transport = transports(URLPolicy(resolver=resolver), proxies={"http": proxy.url})
    url = f"http://hooks.internal:{receiver.port}/hook"
    result = transport.send(post(url))
    assert result.ok, result.error
    assert calls == ["hooks.internal"]
    assert proxy.lines == [f"POST {url} HTTP/1.1"]
    assert receiver.wait_for(1)[0].header("Host") == f"hooks.internal:{receiver.port}"


def test_https_through_the_proxy_tunnel(
    tls_receiver: tuple[RecordingReceiver, str],
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    r, ca_path = tls_receiver
    proxy.names["localhost"] = "127.0.0.1"
    # The policy's resolver does not know localhost: the proxy resolves it.
    transport = transports(
        URLPolicy(resolver=fake_resolver({})), proxies={"https": proxy.url}
    )
    url = f"https://localhost:{r.port}/hook"
    result = transport.send(post(url, verify=ca_path))
    assert result.ok, result.error
    # http.client asks for its tunnel in HTTP/1.0.
    assert proxy.lines == [f"CONNECT localhost:{r.port} HTTP/1.0"]
    assert len(r.wait_for(1)) == 1
    assert connects == []


def test_unreachable_proxy_is_a_connect_error(
    transports: Callable[..., Transport], receiver: RecordingReceiver
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = transports(proxies={"http": dead}).send(post(receiver.url))
    assert result.error_kind == "connect"
    assert result.error == "proxy error: connection refused"
    assert result.retryable
    assert receiver.requests == []


def test_environment_proxy_used_only_with_trust_env(
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
    transports: Callable[..., Transport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert transports().send(post(receiver.url)).ok
    assert proxy.lines == []
    trusting = transports(trust_env=True)
    assert trusting.session().trust_env
    assert trusting.send(post(receiver.url)).ok
    assert proxy.lines == [f"POST {receiver.url} HTTP/1.1"]
    assert len(receiver.wait_for(2)) == 2


def test_webhooks_proxies_config_sends_deliveries_through_the_proxy(
    app: Flask,
    db: SQLAlchemy,
    models: Models,
    receiver: RecordingReceiver,
    proxy: RecordingProxy,
) -> None:
    app.config["WEBHOOKS_PROXIES"] = {"http": proxy.url}
    webhooks = Webhooks(app, db=db)
    webhooks.register(models.Site, schema=SiteSchema)
    db.create_all()
    for name, url in (("ok", receiver.url), ("metadata", "http://169.254.169.254/")):
        db.session.add(
            webhooks.Webhook(
                name=name, models=["site"], on_create=True, payload_url=url
            )
        )
    db.session.commit()
    db.session.add(models.Site(name="s"))
    db.session.commit()
    assert len(receiver.wait_for(1)) == 1
    assert proxy.lines == [f"POST {receiver.url} HTTP/1.1"]
    names = {h.id: h.name for h in db.session.scalars(db.select(webhooks.Webhook))}
    statuses = {
        names[d.webhook_id]: (d.status, d.last_error)
        for d in db.session.scalars(db.select(webhooks.Delivery))
    }
    assert statuses["ok"] == ("succeeded", None)
    assert statuses["metadata"][0] == "failed"
    assert "169.254.0.0/16" in statuses["metadata"][1]


def config_with(**values: t.Any) -> Config:
    app = Flask("config-test")
    app.config.update(DEFAULTS)
    app.config.update(values)
    return Config.from_app(app)


def test_proxies_and_trust_env_config() -> None:
    config = config_with(
        WEBHOOKS_PROXIES={
            "http": "http://proxy:3128",
            "https://hooks.example": "socks5h://s:1080",
        },
        WEBHOOKS_TRUST_ENV=1,
    )
    assert config.proxies == (
        ("http", "http://proxy:3128"),
        ("https://hooks.example", "socks5h://s:1080"),
    )
    assert config.trust_env is True
    assert config_with().proxies == ()
    assert config_with().trust_env is False


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://proxy:3128", "WEBHOOKS_PROXIES must be a dict"),
        ({"ftp": "http://proxy:3128"}, "key 'ftp' must be 'http', 'https', 'all'"),
        ({"http": 3128}, r"WEBHOOKS_PROXIES\['http'\] must be a proxy URL string"),
        ({"https": "proxy:3128"}, "is not a proxy URL"),
        ({"https": "http://proxy:99999"}, "invalid proxy URL"),
        (
            {"http": "ftp://u:hunter2@proxy"},
            r"'ftp://u:\*\*\*@proxy' is not a proxy URL",
        ),
    ],
)
def test_bad_proxies_config_is_refused(value: t.Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_with(WEBHOOKS_PROXIES=value)
