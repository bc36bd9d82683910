"""Additional header lines: how they are parsed and which names and values
may be sent (shared by :mod:`.validation` at save time and :mod:`.payload`
when a request is built)."""

from __future__ import annotations

import re

#: Headers ``additional_headers`` may not set (lower case): ``Host`` names the
#: checked destination, ``Content-Length`` and ``Transfer-Encoding`` frame the
#: exact body bytes sent, and the hop-by-hop headers (RFC 9110 section 7.6.1)
#: belong to the connection the HTTP client manages. Setting any of them could
#: smuggle a second request or reach another virtual host.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)

#: RFC 9110 token characters, for header names and media types.
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
#: C0 controls except horizontal tab, and DEL: never valid in a header.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def parse_header_lines(text: str | None) -> list[tuple[str, str]]:
    """Parse ``Name: Value`` lines; blank lines are ignored.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped). Names must be HTTP
    tokens; values are stripped and may be Jinja2 templates.

    :raises ValueError: naming the line number and the problem.
    """
    headers: list[tuple[str, str]] = []
    for number, raw in enumerate((text or "").split("\n"), 1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        if CONTROL.search(line):
            raise ValueError(
                f"line {number}: contains a control character (a lone CR, NUL, ...)"
            )
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep:
            raise ValueError(f"line {number}: expected 'Name: Value', got {line!r}")
        if not TOKEN.match(name):
            raise ValueError(f"line {number}: {name!r} is not a valid header name")
        headers.append((name, value.strip()))
    return headers


def check_header_name(name: str) -> None:
    """Refuse a header the HTTP client must set itself (:data:`RESERVED_HEADERS`).

    :raises ValueError: naming the header and why.
    """
    if name.strip().lower() in RESERVED_HEADERS:
        if name.strip().lower() == "host":
            why = "the Host header always names the payload URL's host"
        elif name.strip().lower() in ("content-length", "transfer-encoding"):
            why = "it is computed from the body sent"
        else:
            why = "it is a hop-by-hop header managed by the HTTP client"
        raise ValueError(f"{name!r} cannot be set: {why}")


def check_header_value(name: str, value: str) -> None:
    """Refuse line breaks and other control characters in a rendered header.

    A templated value that renders to ``"x\\r\\nX-Injected: 1"`` would otherwise
    add a header (header injection); such a request is never sent.

    :raises ValueError: naming the header.
    """
    if CONTROL.search(value) or CONTROL.search(name) or ":" in name:
        raise ValueError(
            f"header {name!r}: rendered value contains a line break or another "
            "control character; not sent"
        )
