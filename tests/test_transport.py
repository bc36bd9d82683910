"""Tests for flask_webhooks.transport: the client (the HTTP layer),
message (what is sent, how failures are described) and policy (where
requests may go).

Every byte these tests send goes to 127.0.0.1. An autouse fixture wraps the
socket factory in flask_webhooks.transport.policy so that any attempt to connect
elsewhere fails the test before a packet leaves, and replaces the default
resolver so no real DNS query is made either.
"""

from __future__ import annotations

import base64
import email.utils
import gc
import gzip
import ipaddress
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
from flask_webhooks.testing import Answer
from flask_webhooks.testing import RecordingReceiver
from flask_webhooks.transport import policy as urlpolicy
from flask_webhooks.transport.client import Transport
from flask_webhooks.transport.message import HTTPRequest
from flask_webhooks.transport.message import HTTPResult
from flask_webhooks.transport.message import parse_retry_after
from flask_webhooks.transport.policy import BlockedAddress
from flask_webhooks.transport.policy import DEFAULT_DENIED_NETWORKS
from flask_webhooks.transport.policy import embedded_ipv4
from flask_webhooks.transport.policy import URLPolicy


def fake_resolver(
    mapping: dict[str, list[str]], calls: list[str] | None = None
) -> Callable[[str, int], list[str]]:
    """A resolver answering from ``mapping``; unknown names fail like DNS."""

    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} not in fake DNS")
        return list(mapping[host])

    return resolve


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every connect; refuse (and fail on) anything not loopback."""
    return guard_connects(monkeypatch)


def guard_connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Wrap the policy's socket factory and resolver (see the module docstring);
    return the list every connect is recorded in."""
    real_open = urlpolicy._open_socket

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        calls.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address}")
        return real_open(address, *args, **kwargs)

    calls: list[tuple[str, int]] = []
    resolver = fake_resolver({"localhost": ["127.0.0.1"]})
    # Patch where the names are looked up (flask_webhooks.transport.policy), then
    # check that the code which connects and the default policy really see
    # the fakes: a patch that missed them would let tests reach the network.
    monkeypatch.setattr(urlpolicy, "_open_socket", guarded)
    monkeypatch.setattr(urlpolicy, "_default_resolver", resolver)
    assert urlpolicy._connect_checked.__globals__["_open_socket"] is guarded
    assert URLPolicy().resolver is resolver
    return calls


@pytest.fixture
def make_transport(receiver: RecordingReceiver) -> Iterator[Callable[..., Transport]]:
    """Build transports; closed before the receiver stops (keep-alive sockets)."""
    made: list[Transport] = []

    def make(policy: URLPolicy | None = None, **kwargs: Any) -> Transport:
        t = Transport(policy or URLPolicy(), **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


def post(url: str, body: bytes = b"{}", **kwargs: Any) -> HTTPRequest:
    return HTTPRequest(
        "POST",
        url,
        {"Content-Type": "application/json"},
        body,
        connect_timeout=kwargs.pop("connect_timeout", 5.0),
        read_timeout=kwargs.pop("read_timeout", 5.0),
        **kwargs,
    )


# -- plain HTTP -------------------------------------------------------------


def test_2xx_is_ok(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(status=202, body=b"accepted"))
    result = make_transport().send(post(receiver.url))
    assert result.ok
    assert result.status_code == 202
    assert result.error is None and result.error_kind is None
    assert result.body_excerpt == "accepted"
    assert not result.truncated
    assert result.duration > 0
    assert result.retryable


def test_exact_body_and_headers_arrive(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    body = '{"name": "Zürich"}'.encode() + b"\x00\xff\r\n"
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Webhook-ID": "6f1c1c4e-0000-4000-8000-000000000001",
        "X-Hook-Signature": "ab" * 64,
        "User-Agent": "flask-webhooks/test",
    }
    request = HTTPRequest("PUT", receiver.url, headers, body)
    assert make_transport().send(request).ok
    (got,) = receiver.wait_for(1)
    assert got.method == "PUT"
    assert got.path == "/hook"
    assert got.body == body
    for name, value in headers.items():
        assert got.headers[name] == value
    assert got.headers["Content-Length"] == str(len(body))


def test_500_is_http_error(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(status=500, body=b"boom"))
    result = make_transport().send(post(receiver.url))
    assert not result.ok
    assert result.status_code == 500
    assert result.error_kind == "http"
    assert result.error is not None and "500" in result.error
    assert result.body_excerpt == "boom"
    assert result.retryable


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_not_followed(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport], status: int
) -> None:
    # The target is the receiver itself: a followed redirect would show up as
    # a second request.
    target = receiver.url + "?followed=1"
    receiver.respond(Answer(status=status, headers={"Location": target}))
    result = make_transport().send(post(receiver.url))
    assert not result.ok
    assert result.status_code == status
    assert result.error_kind == "redirect"
    assert result.location == target
    assert result.error == f"redirect not followed: {status} to {target}"
    time.sleep(0.1)
    assert len(receiver.requests) == 1


def test_read_timeout(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(delay=1.0))
    result = make_transport().send(post(receiver.url, read_timeout=0.2))
    assert result.status_code is None
    assert result.error_kind == "timeout"
    assert result.error == "read timed out after 0.2 s"
    assert 0.2 <= result.duration < 1.0
    assert result.retryable


def test_trickling_answer_is_cut_off_at_total_timeout(
    make_transport: Callable[..., Transport],
) -> None:
    """Each piece arrives within read_timeout, the whole answer never would."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):  # 100 s at this pace, unless cut off
                if stop.wait(0.1):
                    return
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        result = make_transport().send(
            HTTPRequest(
                "POST",
                f"http://127.0.0.1:{port}/hook",
                body=b"{}",
                read_timeout=0.5,
                total_timeout=0.6,
            )
        )
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert result.status_code == 200
    assert not result.ok
    assert result.error_kind == "timeout"
    assert result.error == "the response took longer than 0.6 s in total"
    assert result.retryable


def test_connection_refused(make_transport: Callable[..., Transport]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = make_transport().send(post(f"http://127.0.0.1:{port}/hook"))
    assert result.status_code is None
    assert result.error_kind == "connect"
    assert result.error == "connection refused"
    assert result.retryable


def test_response_is_capped(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(body=b"x" * 200_000))
    result = make_transport(max_response_bytes=1024).send(post(receiver.url))
    assert result.ok
    assert result.truncated
    assert len(result.body_excerpt.encode()) <= 1024
    assert result.body_excerpt == "x" * 1024


def test_body_at_cap_is_not_truncated(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(body=b"y" * 1024))
    result = make_transport(max_response_bytes=1024).send(post(receiver.url))
    assert not result.truncated
    assert result.body_excerpt == "y" * 1024


def test_body_excerpt_replaces_invalid_utf8(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(status=400, body=b"bad \xff input"))
    result = make_transport().send(post(receiver.url))
    assert result.body_excerpt == "bad \ufffd input"


def test_retry_after_seconds(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    receiver.respond(Answer(status=503, headers={"Retry-After": "120"}))
    result = make_transport().send(post(receiver.url))
    assert result.error_kind == "http"
    assert result.retry_after == 120.0


def test_retry_after_http_date(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    receiver.respond(Answer(status=429, headers={"Retry-After": when}))
    result = make_transport().send(post(receiver.url))
    assert result.retry_after is not None
    assert 55 <= result.retry_after <= 61


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("0", now) == 0.0
    assert parse_retry_after(" 30 ", now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now + 90, usegmt=True), now) == 90.0
    # A date in the past means "now", never a negative delay.
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now) == 0.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:20 GMT", now) == 0.0
    for bad in (None, "", "-5", "soon", "nan", "inf", "1e3"):
        assert parse_retry_after(bad, now) is None
    assert HTTPResult(200).retry_after is None


def test_env_proxies_are_ignored(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert make_transport().send(post(receiver.url)).ok
    assert len(receiver.wait_for(1)) == 1


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/hook", "http:///no-host", "not a url", "http://127.0.0.1:99999/"],
)
def test_invalid_url(
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
    url: str,
) -> None:
    result = make_transport().send(post(url))
    assert result.status_code is None
    assert result.error_kind == "invalid_url"
    assert not result.retryable
    assert connects == []


@pytest.mark.parametrize("stall", [True, False])
def test_broken_body_after_2xx_is_not_ok(
    make_transport: Callable[..., Transport], stall: bool
) -> None:
    """Headers say 200, then the body stalls (or the server hangs up)."""
    release = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                # The whole request (headers, then the 2-byte body): closing
                # with unread bytes would reset the connection instead.
                data = b""
                while not data.endswith(b"\r\n\r\n{}"):
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                if stall:
                    release.wait(5)

        thread = threading.Thread(target=answer)
        thread.start()
        try:
            result = make_transport().send(
                post(f"http://127.0.0.1:{port}/hook", read_timeout=0.3)
            )
        finally:
            release.set()
            thread.join()
    assert result.status_code == 200
    assert not result.ok
    if stall:
        assert result.error_kind == "timeout"
        assert result.error == "read timed out after 0.3 s"
    else:
        assert result.error_kind == "connect"
        assert result.error == "connection closed before the response body was complete"
    assert result.retryable


def test_ipv6_loopback(
    make_transport: Callable[..., Transport], connects: list[tuple[str, int]]
) -> None:
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no IPv6")
    with server:
        try:
            server.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        server.listen(1)
        server.settimeout(5)
        port = server.getsockname()[1]
        seen: list[bytes] = []

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                seen.append(conn.recv(65536))
                conn.sendall(
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )

        thread = threading.Thread(target=answer)
        thread.start()
        result = make_transport().send(post(f"http://[::1]:{port}/hook"))
        thread.join()
    assert result.status_code == 204, result.error
    assert connects == [("::1", port)]
    assert seen[0].startswith(b"POST /hook HTTP/1.1")


# -- what goes on the wire ---------------------------------------------------


def one_exchange(
    answer: bytes, request: Callable[[str], HTTPResult]
) -> tuple[bytes, HTTPResult]:
    """Serve ``answer`` to one request on a raw socket; return the request bytes.

    The exact bytes show what a recording HTTP server would hide (header
    order, duplicates, framing).
    """
    seen: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head = data.split(b"\r\n\r\n", 1)[0].lower()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(data) < len(head) + 4 + length:
                    data += conn.recv(65536)
                seen.append(data)
                conn.sendall(answer)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            result = request(f"http://127.0.0.1:{port}/hook")
        finally:
            thread.join(5)
    return seen[0], result


def header_lines(raw: bytes) -> list[tuple[str, str]]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    pairs = [line.split(":", 1) for line in head.split("\r\n")[1:]]
    return [(name.lower(), value.strip()) for name, value in pairs]


def test_wire_headers_given_ones_plus_host_framing_and_accept(
    make_transport: Callable[..., Transport],
) -> None:
    body = b'{"a": 1}'
    headers = {
        "Content-Type": "application/json",
        "accept": "application/json",  # replaces the default, in any case
        "Content-Length": "999",  # framing is the transport's
        "Transfer-Encoding": "chunked",
        "X-Hook-Signature": "ab" * 64,
    }
    raw, result = one_exchange(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        lambda url: make_transport().send(HTTPRequest("POST", url, headers, body)),
    )
    assert result.ok, result.error
    assert raw.startswith(b"POST /hook HTTP/1.1\r\n")
    assert raw.endswith(b"\r\n\r\n" + body)
    lines = header_lines(raw)
    names = [name for name, _ in lines]
    assert len(names) == len(set(names)), lines
    assert dict(lines) == {
        "host": raw.split(b"Host: ", 1)[1].split(b"\r\n", 1)[0].decode(),
        "content-length": str(len(body)),
        "content-type": "application/json",
        "accept": "application/json",
        "accept-encoding": "gzip, deflate",
        "x-hook-signature": "ab" * 64,
        "user-agent": dict(lines)["user-agent"],
        "connection": "keep-alive",
    }
    assert dict(lines)["host"].startswith("127.0.0.1:")


def test_default_accept_headers_reach_the_receiver(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    assert make_transport().send(post(receiver.url)).ok
    (got,) = receiver.wait_for(1)
    assert got.headers["Accept"] == "*/*"
    assert got.headers["Accept-Encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("method", "body", "length"),
    [
        ("GET", b"", None),
        ("HEAD", b"", None),
        ("DELETE", b"", "0"),
        ("POST", b"", "0"),
        ("GET", b'{"q": 1}', "8"),
        ("DELETE", b'{"q": 1}', "8"),
    ],
)
def test_body_and_content_length_per_method(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    method: str,
    body: bytes,
    length: str | None,
) -> None:
    result = make_transport().send(HTTPRequest(method.lower(), receiver.url, body=body))
    assert result.ok, result.error
    (got,) = receiver.wait_for(1)
    assert got.method == method
    assert got.headers.get("Content-Length") == length
    assert got.body == body
    assert result.body_excerpt == ("" if method == "HEAD" else "ok")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_answer_is_decoded(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport], encoding: str
) -> None:
    text = b'{"status": "queued", "detail": "' + b"z" * 500 + b'"}'
    packed = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    receiver.respond(Answer(headers={"Content-Encoding": encoding}, body=packed))
    result = make_transport().send(post(receiver.url))
    assert result.ok, result.error
    assert result.body_excerpt == text.decode()
    assert not result.truncated


def test_compressed_answer_is_capped_after_decoding(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    bomb = gzip.compress(b"0" * 5_000_000)  # ~5 KB on the wire
    receiver.respond(Answer(headers={"Content-Encoding": "gzip"}, body=bomb))
    result = make_transport(max_response_bytes=1000).send(post(receiver.url))
    assert result.ok, result.error
    assert result.truncated
    assert result.body_excerpt == "0" * 1000


@pytest.mark.parametrize(
    ("headers", "method"),
    [
        ({"X-Evil": "a\r\nX-Injected: 1"}, "POST"),
        ({"X-Evil": "a\n b"}, "POST"),
        ({"X-Evil\r\nX-Injected": "1"}, "POST"),
        ({"X-Lead": " leading space"}, "POST"),
        ({"Bad:Name": "1"}, "POST"),
        ({}, "POST\r\nX-Injected: 1"),
    ],
)
def test_request_that_could_split_the_header_block_is_refused(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
    headers: dict[str, str],
    method: str,
) -> None:
    result = make_transport().send(HTTPRequest(method, receiver.url, headers, b"{}"))
    assert result.status_code is None
    assert result.error_kind == "invalid_url"
    assert result.error is not None and result.error.startswith("invalid request: ")
    assert not result.retryable
    time.sleep(0.05)
    assert receiver.requests == []


def test_url_credentials_become_basic_auth(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    url = f"http://hook%20user:p%40ss@127.0.0.1:{receiver.port}/hook?x=1"
    assert make_transport().send(post(url)).ok
    (got,) = receiver.wait_for(1)
    token = base64.b64encode(b"hook user:p@ss").decode()
    assert got.headers["Authorization"] == f"Basic {token}"
    assert got.path == "/hook?x=1"
    # Basic credentials are Latin-1; anything else cannot be sent.
    result = make_transport().send(
        post(f"http://user:pass€@127.0.0.1:{receiver.port}/")
    )
    assert result.error_kind == "invalid_url"
    assert result.error == "invalid URL: the user name or password is not Latin-1 text"


def test_path_and_query_are_percent_encoded(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    url = f"http://127.0.0.1:{receiver.port}/a hook/ü?q=a b&r=%2F#fragment"
    assert make_transport().send(post(url)).ok
    (got,) = receiver.wait_for(1)
    assert got.path == "/a%20hook/%C3%BC?q=a%20b&r=%2F"


def test_international_host_name_is_idna_encoded(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    calls: list[str] = []
    resolver = fake_resolver({"xn--bcher-kva.test": ["127.0.0.1"]}, calls)
    t = make_transport(URLPolicy(resolver=resolver))
    result = t.send(post(f"http://Bücher.test:{receiver.port}/hook"))
    assert result.ok, result.error
    assert calls == ["xn--bcher-kva.test"]
    (got,) = receiver.wait_for(1)
    assert got.headers["Host"] == f"xn--bcher-kva.test:{receiver.port}"


# -- URL policy ---------------------------------------------------------------


def test_policy_refuses_metadata_address() -> None:
    with pytest.raises(BlockedAddress):
        urlpolicy.URLPolicy().check("169.254.169.254")


def test_policy_blocks_loopback_receiver(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    t = make_transport(URLPolicy(denied=["127.0.0.0/8"]))
    result = t.send(post(receiver.url))
    assert result.status_code is None
    assert result.error_kind == "blocked"
    assert result.error == "blocked: 127.0.0.1 is in denied network 127.0.0.0/8"
    assert not result.retryable
    assert connects == []
    time.sleep(0.1)
    assert receiver.requests == []


def test_allowed_overrides_denied(
    receiver: RecordingReceiver, make_transport: Callable[..., Transport]
) -> None:
    policy = URLPolicy(denied=["127.0.0.0/8"], allowed=["127.0.0.1/32"])
    assert make_transport(policy).send(post(receiver.url)).ok
    assert len(receiver.wait_for(1)) == 1


def test_allowed_network_inside_denied_network() -> None:
    policy = URLPolicy(denied=["10.0.0.0/8"], allowed=["10.1.2.0/24"])
    assert policy.is_allowed("10.1.2.3")
    assert not policy.is_allowed("10.9.9.9")
    assert policy.is_allowed("192.0.2.1")
    with pytest.raises(
        BlockedAddress, match=r"10\.9\.9\.9 is in denied network 10\.0\.0\.0/8"
    ):
        policy.check("10.9.9.9")


def test_default_policy_denies_metadata_and_link_local() -> None:
    policy = URLPolicy()
    assert [str(n) for n in policy.denied] == list(DEFAULT_DENIED_NETWORKS)
    for address in (
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "0.0.0.0",
        "::",
    ):
        assert not policy.is_allowed(address), address
    for address in ("127.0.0.1", "10.0.0.1", "192.0.2.10", "2001:db8::1"):
        assert policy.is_allowed(address), address


def test_unspecified_addresses_are_always_refused() -> None:
    policy = URLPolicy(allowed=["0.0.0.0/0", "::/0"], denied=[])
    for address in ("0.0.0.0", "::", "::ffff:0.0.0.0"):
        with pytest.raises(BlockedAddress, match="unspecified"):
            policy.check(address)
    assert policy.is_allowed("169.254.169.254")


def test_ipv4_mapped_ipv6_is_checked_as_ipv4(
    make_transport: Callable[..., Transport], connects: list[tuple[str, int]]
) -> None:
    policy = URLPolicy()
    with pytest.raises(BlockedAddress, match=r"169\.254\.0\.0/16"):
        policy.check("::ffff:169.254.169.254")
    assert not URLPolicy(denied=["127.0.0.0/8"]).is_allowed("::ffff:127.0.0.1")
    assert URLPolicy(denied=["127.0.0.0/8"], allowed=["127.0.0.1/32"]).is_allowed(
        "::ffff:7f00:1"
    )
    result = make_transport(policy).send(post("http://[::ffff:169.254.169.254]/latest"))
    assert result.error_kind == "blocked"
    assert connects == []


@pytest.mark.parametrize("where", ["allowed", "denied"])
def test_bad_network_string_raises(where: str) -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        URLPolicy(**{where: ["10.0.0.0/8", "not-a-network"]})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"10\.0\.0\.1/8"):
        URLPolicy(**{where: ["10.0.0.1/8"]})  # type: ignore[arg-type]


def test_networks_accept_objects_and_a_single_string() -> None:
    policy = URLPolicy(
        denied="192.168.0.0/16", allowed=[ipaddress.ip_network("192.168.1.0/24")]
    )
    assert not policy.is_allowed("192.168.7.1")
    assert policy.is_allowed("192.168.1.1")


def test_resolved_metadata_name_is_blocked_without_connecting(
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    resolver = fake_resolver({"metadata.example": ["169.254.169.254"]})
    t = make_transport(URLPolicy(resolver=resolver))
    result = t.send(post("http://metadata.example/latest/meta-data/"))
    assert result.error_kind == "blocked"
    assert result.error == (
        "blocked: metadata.example resolved to 169.254.169.254, "
        "which is in denied network 169.254.0.0/16"
    )
    assert not result.retryable
    assert connects == []


def test_any_refused_address_blocks_the_name(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    resolver = fake_resolver({"mixed.test": ["127.0.0.1", "169.254.169.254"]})
    t = make_transport(URLPolicy(resolver=resolver))
    result = t.send(post(f"http://mixed.test:{receiver.port}/hook"))
    assert result.error_kind == "blocked"
    assert connects == []
    assert receiver.requests == []


def test_policy_resolve() -> None:
    calls: list[str] = []
    policy = URLPolicy(
        resolver=fake_resolver(
            {"a.test": ["192.0.2.1", "192.0.2.1", "2001:db8::1"]}, calls
        )
    )
    assert policy.resolve("a.test", 443) == ["192.0.2.1", "2001:db8::1"]
    # Literal addresses are checked without asking the resolver.
    assert policy.resolve("192.0.2.7", 80) == ["192.0.2.7"]
    assert policy.resolve("[2001:db8::7]", 80) == ["2001:db8::7"]
    assert calls == ["a.test"]
    with pytest.raises(BlockedAddress):
        policy.resolve("169.254.169.254", 80)
    with pytest.raises(socket.gaierror):
        policy.resolve("unknown.test", 80)


def test_name_resolution_failure_is_a_connect_error(
    make_transport: Callable[..., Transport],
) -> None:
    t = make_transport(URLPolicy(resolver=fake_resolver({})))
    result = t.send(post("http://nowhere.test/hook"))
    assert result.error_kind == "connect"
    assert result.error is not None and "could not resolve nowhere.test" in result.error
    assert result.retryable


def test_hostname_reaches_receiver_with_its_host_header(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    resolver = fake_resolver({"hooks.test": ["127.0.0.1"]})
    t = make_transport(URLPolicy(resolver=resolver))
    result = t.send(post(f"http://hooks.test:{receiver.port}/hook"))
    assert result.ok, result.error
    (got,) = receiver.wait_for(1)
    assert got.headers["Host"] == f"hooks.test:{receiver.port}"
    assert connects == [("127.0.0.1", receiver.port)]


def test_no_dns_rebinding(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    """The checked answer is the address connected to; no second lookup."""
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["169.254.169.254"]

    t = make_transport(URLPolicy(resolver=rebinding))
    url = f"http://rebind.test:{receiver.port}/hook"
    first = t.send(post(url))
    assert first.ok, first.error
    assert calls == ["rebind.test"]
    assert connects == [("127.0.0.1", receiver.port)]

    # The pooled connection is reused: no new resolution, no new connect.
    assert t.send(post(url)).ok
    assert calls == ["rebind.test"]
    assert len(connects) == 1

    # A new connection resolves again (once) and the new answer is refused.
    t.close()
    third = t.send(post(url))
    assert third.error_kind == "blocked"
    assert "169.254.169.254" in (third.error or "")
    assert calls == ["rebind.test", "rebind.test"]
    assert len(connects) == 1
    assert len(receiver.requests) == 2


# -- connection pooling -------------------------------------------------------


@pytest.fixture
def client_ports(receiver: RecordingReceiver) -> Callable[[], list[int]]:
    """Client ports the receiver saw so far, one entry per request."""
    return lambda: [r.client_port for r in receiver.requests]


def test_connection_reuse(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    client_ports: Callable[[], list[int]],
) -> None:
    t = make_transport()
    assert t.send(post(receiver.url)).ok
    assert t.send(post(receiver.url)).ok
    assert len(client_ports()) == 2
    assert client_ports()[0] == client_ports()[1]
    # After close() the next send opens a fresh connection.
    t.close()
    assert t.send(post(receiver.url)).ok
    assert client_ports()[2] != client_ports()[0]


def test_truncated_response_does_not_poison_the_pool(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
) -> None:
    t = make_transport(max_response_bytes=10)
    receiver.respond(Answer(body=b"z" * 100_000), Answer(body=b"second"))
    assert t.send(post(receiver.url)).truncated
    second = t.send(post(receiver.url))
    assert second.ok
    assert second.body_excerpt == "second"


def test_answer_with_connection_close_is_followed_by_a_new_connection(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    client_ports: Callable[[], list[int]],
) -> None:
    t = make_transport()
    receiver.respond(Answer(headers={"Connection": "close"}))
    assert t.send(post(receiver.url)).ok
    assert t.send(post(receiver.url)).ok
    assert t.send(post(receiver.url)).ok
    assert client_ports()[1] != client_ports()[0]
    assert client_ports()[2] == client_ports()[1]


def test_idle_connection_closed_by_the_server_is_replaced(
    make_transport: Callable[..., Transport],
    connects: list[tuple[str, int]],
) -> None:
    """A keep-alive connection the receiver dropped meanwhile is not an error."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    first_closed = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(5)
        port = server.getsockname()[1]

        def serve() -> None:
            for _ in range(2):
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    time.sleep(0.05)
                first_closed.set()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            t = make_transport()
            assert t.send(post(f"http://127.0.0.1:{port}/hook")).ok
            assert first_closed.wait(5)
            time.sleep(0.05)
            second = t.send(post(f"http://127.0.0.1:{port}/hook"))
        finally:
            thread.join(5)
    assert second.ok, second.error
    assert len(connects) == 2


def test_least_recently_used_pool_is_closed_beyond_ten(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    client_ports: Callable[[], list[int]],
) -> None:
    hosts = [f"h{i}.test" for i in range(11)]
    resolver = fake_resolver({host: ["127.0.0.1"] for host in hosts})
    t = make_transport(URLPolicy(resolver=resolver))

    def send(host: str) -> int:
        assert t.send(post(f"http://{host}:{receiver.port}/hook")).ok
        return client_ports()[-1]

    first = {host: send(host) for host in hosts[:10]}
    assert send(hosts[0]) == first[hosts[0]]  # h0 is now the most recent
    send(hosts[10])  # an eleventh pool: h1, the least recent, is closed
    assert send(hosts[0]) == first[hosts[0]]
    assert send(hosts[2]) == first[hosts[2]]
    assert send(hosts[1]) != first[hosts[1]]


def test_each_thread_has_its_own_session(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
    client_ports: Callable[[], list[int]],
) -> None:
    t = make_transport()
    assert t.send(post(receiver.url)).ok
    results: list[HTTPResult] = []

    def other_thread() -> None:
        try:
            results.append(t.send(post(receiver.url)))
        finally:
            t.close()

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert results[0].ok
    assert len(client_ports()) == 2
    assert client_ports()[0] != client_ports()[1]
    # The main thread's session survived the other thread's close().
    assert t.send(post(receiver.url)).ok
    assert client_ports()[2] == client_ports()[0]


def test_thread_exit_closes_its_connections(
    receiver: RecordingReceiver,
    make_transport: Callable[..., Transport],
) -> None:
    t = make_transport()
    results: list[HTTPResult] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = threading.Thread(
            target=lambda: results.append(t.send(post(receiver.url)))
        )
        worker.start()
        worker.join()
        del worker
        gc.collect()
    assert results[0].ok
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- TLS ----------------------------------------------------------------------


@pytest.fixture
def tls_host() -> str:
    """``tls_receiver`` (conftest) gets a certificate for "localhost"."""
    return "localhost"


@pytest.fixture
def tls_transport(tls_receiver: tuple[RecordingReceiver, str]) -> Iterator[Transport]:
    resolver = fake_resolver({"localhost": ["127.0.0.1"]})
    t = Transport(URLPolicy(resolver=resolver))
    yield t
    t.close()


def test_https_with_ca_bundle_verifies_hostname(
    tls_receiver: tuple[RecordingReceiver, str],
    tls_transport: Transport,
    connects: list[tuple[str, int]],
) -> None:
    r, ca_path = tls_receiver
    url = f"https://localhost:{r.port}/hook"
    result = tls_transport.send(post(url, body=b'{"tls": true}', verify=ca_path))
    assert result.ok, result.error
    (got,) = r.wait_for(1)
    assert got.body == b'{"tls": true}'
    assert got.headers["Host"] == f"localhost:{r.port}"
    assert connects == [("127.0.0.1", r.port)]


def test_https_hostname_mismatch_fails(
    tls_receiver: tuple[RecordingReceiver, str], tls_transport: Transport
) -> None:
    # Same server, same trusted CA, but the URL names 127.0.0.1, which the
    # certificate (issued for "localhost") does not cover.
    r, ca_path = tls_receiver
    result = tls_transport.send(
        post(f"https://127.0.0.1:{r.port}/hook", verify=ca_path)
    )
    assert result.error_kind == "tls"
    assert r.requests == []


def test_https_default_verification_rejects_unknown_ca(
    tls_receiver: tuple[RecordingReceiver, str], tls_transport: Transport
) -> None:
    r, _ = tls_receiver
    result = tls_transport.send(post(f"https://localhost:{r.port}/hook"))
    assert result.status_code is None
    assert result.error_kind == "tls"
    assert result.error is not None and "certificate" in result.error
    assert r.requests == []


def test_https_verify_false_skips_verification(
    tls_receiver: tuple[RecordingReceiver, str], tls_transport: Transport
) -> None:
    r, _ = tls_receiver
    url = f"https://localhost:{r.port}/hook"
    # Unverified TLS is a per-webhook choice: no InsecureRequestWarning per
    # delivery, neither on a new connection nor on a reused one.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tls_transport.send(post(url, verify=False))
        again = tls_transport.send(post(url, verify=False))
    assert result.ok, result.error
    assert again.ok, again.error
    assert len(r.wait_for(2)) == 2
    assert caught == []


def test_https_verify_setting_gets_its_own_connection(
    tls_receiver: tuple[RecordingReceiver, str],
    tls_transport: Transport,
    connects: list[tuple[str, int]],
) -> None:
    """A verified send never rides on a connection opened without checks."""
    r, ca_path = tls_receiver
    url = f"https://localhost:{r.port}/hook"
    assert tls_transport.send(post(url, verify=False)).ok
    assert len(connects) == 1
    assert tls_transport.send(post(url, verify=ca_path)).ok
    assert len(connects) == 2
    # Each setting then keeps its own keep-alive connection.
    assert tls_transport.send(post(url, verify=False)).ok
    assert tls_transport.send(post(url, verify=ca_path)).ok
    assert len(connects) == 2
    unverified = tls_transport.send(post(url))  # default CAs: unknown issuer
    assert unverified.error_kind == "tls"


def test_https_missing_ca_bundle_is_a_tls_error(
    tls_receiver: tuple[RecordingReceiver, str],
    tls_transport: Transport,
    tmp_path: Any,
) -> None:
    r, _ = tls_receiver
    missing = str(tmp_path / "missing.pem")
    result = tls_transport.send(
        post(f"https://localhost:{r.port}/hook", verify=missing)
    )
    assert result.error_kind == "tls"
    assert result.error is not None and missing in result.error


def test_https_policy_applies(
    tls_receiver: tuple[RecordingReceiver, str],
    connects: list[tuple[str, int]],
) -> None:
    r, ca_path = tls_receiver
    policy = URLPolicy(
        denied=["127.0.0.0/8"], resolver=fake_resolver({"localhost": ["127.0.0.1"]})
    )
    t = Transport(policy)
    try:
        result = t.send(post(f"https://localhost:{r.port}/hook", verify=ca_path))
    finally:
        t.close()
    assert result.error_kind == "blocked"
    assert connects == []


# -- IPv6 transition forms (issue 13, item 14): policy checks only, no traffic --

TRANSITION_FORMS = {
    "ipv4-mapped": ("::ffff:169.254.169.254", "169.254.169.254"),
    "ipv4-mapped-hex": ("::ffff:a9fe:a9fe", "169.254.169.254"),
    "ipv4-compatible": ("::169.254.169.254", "169.254.169.254"),
    "nat64": ("64:ff9b::169.254.169.254", "169.254.169.254"),
    "nat64-hex": ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    "6to4": ("2002:a9fe:a9fe::1", "169.254.169.254"),
    # Teredo: server 169.254.169.254, client bits are the inverted IPv4.
    "teredo-server": ("2001:0:a9fe:a9fe::ffff:ffff", "169.254.169.254"),
    "teredo-client": ("2001:0:4136:e378:8000:63bf:5601:5601", "169.254.169.254"),
}


@pytest.mark.parametrize(
    ("address", "ipv4"), TRANSITION_FORMS.values(), ids=TRANSITION_FORMS.keys()
)
def test_ipv6_transition_forms_are_checked_as_their_ipv4(address, ipv4):
    assert ipaddress.IPv4Address(ipv4) in embedded_ipv4(ipaddress.ip_address(address))
    policy = URLPolicy()  # default: link-local (cloud metadata) denied
    with pytest.raises(BlockedAddress, match=r"169\.254\.0\.0/16") as info:
        policy.check(address, host="evil.example")
    assert info.value.address == address
    assert not policy.is_allowed(address)
    # Resolving a name to it is refused the same way (fake resolver, no DNS).
    resolving = URLPolicy(resolver=lambda host, port: [address])
    with pytest.raises(BlockedAddress):
        resolving.resolve("evil.example", 443)


def test_embedded_ipv4_follows_deny_and_allow_lists():
    private = URLPolicy(denied=["10.0.0.0/8", "127.0.0.0/8"], allowed=["10.1.0.0/16"])
    assert not private.is_allowed("64:ff9b::10.2.3.4")
    assert not private.is_allowed("::127.0.0.1")
    assert not private.is_allowed("2002:7f00:1::")
    assert private.is_allowed("64:ff9b::10.1.2.3")  # allowed wins, as for IPv4
    assert private.is_allowed("64:ff9b::8.8.8.8")
    with pytest.raises(BlockedAddress, match=r"embeds the IPv4 address 10\.2\.3\.4"):
        private.check("64:ff9b::a02:304")


def test_plain_ipv6_is_not_mistaken_for_a_transition_form():
    assert embedded_ipv4(ipaddress.ip_address("::1")) == ()
    assert embedded_ipv4(ipaddress.ip_address("2001:db8::1")) == ()
    assert embedded_ipv4(ipaddress.ip_address("2606:4700::1111")) == ()
    assert URLPolicy(denied=["127.0.0.0/8"]).is_allowed("::1")
    assert URLPolicy().is_allowed("2606:4700::1111")
