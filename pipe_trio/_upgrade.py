"""The usual HTTP requests, read without h11: the WebSocket upgrade, and a REST call.

Almost every connection to the relay starts with the same thing: a small
``GET`` upgrade request arriving whole in the first read. Parsing it with
h11 (a connection object, its state machine, an event per part) measured
about a sixth of the relay's CPU per new connection, which is what a
reconnect storm is made of. A REST call on a keep-alive connection is the
other common case: h11 took about 110 us of the 180 between a publish's
bytes and its first delivery at idle.

:func:`parse_upgrade_request` and :func:`parse_request` read those cases and
nothing else: they accept only what h11 itself would parse to the same
request (h11's own grammar for request line and header fields, a single
``Host``, at most one plain ``Content-Length`` and no ``Transfer-Encoding``
(none at all for an upgrade), no obsolete line folding; for a REST call, the
whole body and nothing after it, and no ``Connection: close``) and return
``None`` for everything else, which then goes to h11 with the same bytes.
The ``upgrade`` fuzz target checks that claim against h11 on random
requests. Sans-I/O: bytes in, a request or ``None`` out.
"""

from __future__ import annotations

import re

__all__ = ["PlainRequest", "UpgradeRequest", "parse_request", "parse_upgrade_request"]

# h11's grammar (h11/_abnf.py), checked with bytes methods on the whole head
# and on each field rather than with a regular expression per line: a
# browser's upgrade request has a dozen header lines, and a match and its
# groups per line cost more than the rest of the upgrade together.
_TARGET = re.compile(rb"[\x21-\x7e]+")
_TOKEN = b"-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Headers h11 normalises or validates further: left to h11.
_SPECIAL = frozenset((b"content-length", b"transfer-encoding"))


class UpgradeRequest:
    """A ``GET`` request head as h11 would report it.

    Attributes:
        target: the request target, as sent.
        headers: ``(name, value)`` pairs in order, names lower-cased.
        trailing: bytes after the head (the client's first frames).
    """

    __slots__ = ("headers", "target", "trailing")

    def __init__(self, target: bytes, headers: list[tuple[bytes, bytes]], trailing: bytes) -> None:
        self.target = target
        self.headers = headers
        self.trailing = trailing


def parse_upgrade_request(data: bytes, max_head: int) -> UpgradeRequest | None:
    """The request in ``data`` when it is a complete, plain ``GET`` head of at most ``max_head`` bytes.

    ``None`` means "ask h11": the head is incomplete, larger, unusual or
    malformed; it does not mean the request is bad.
    """
    parsed = _parse_head(data, max_head, bodies=False)
    if parsed is None:
        return None
    _, target, headers, _, end = parsed
    return UpgradeRequest(target, headers, data[end:])


class PlainRequest:
    """A whole ``GET``, ``HEAD`` or ``POST`` request as h11 would report it (see :func:`parse_request`).

    Attributes:
        method, target: as sent.
        headers: ``(name, value)`` pairs in order, names lower-cased.
        body: the body (``Content-Length`` bytes; empty without one).
    """

    __slots__ = ("body", "headers", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


def parse_request(data: bytes, max_head: int, max_body: int) -> PlainRequest | None:
    """The request ``data`` holds when it is exactly one complete, plain request (a REST call on a
    keep-alive connection): a head of at most ``max_head`` bytes, then a body of at most
    ``max_body`` bytes whose length ``Content-Length`` gives (``POST`` only), and nothing after it.

    ``None`` means "ask h11", as for :func:`parse_upgrade_request`; so do a
    client asking to close the connection and pipelined requests.
    """
    parsed = _parse_head(data, max_head, bodies=True)
    if parsed is None:
        return None
    method, target, headers, length, end = parsed
    if (length and method != b"POST") or length > max_body or end + length != len(data):
        return None
    return PlainRequest(method, target, headers, data[end:])


_METHODS = frozenset((b"GET", b"HEAD", b"POST"))
_UPGRADE_METHODS = frozenset((b"GET",))


def _parse_head(
    data: bytes, max_head: int, *, bodies: bool
) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], int, int] | None:
    # The method, target, header fields, Content-Length (0 without one) and
    # where the head ends, when h11 would read the same; None otherwise.
    # With ``bodies`` false (an upgrade), only GET, and a Content-Length
    # field is left to h11.
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > max_head:
        return None
    head = data[:end]
    # Every CR and LF is part of a CRLF (a lone one is h11's to judge), and
    # no byte that no field may hold appears anywhere (h11: [^\x00\s], so
    # whitespace in a value is only spaces and tabs).
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None
    if b"\x00" in head or b"\x0b" in head or b"\x0c" in head:
        return None
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    if method not in (_METHODS if bodies else _UPGRADE_METHODS) or not rest.endswith(b" HTTP/1.1"):
        return None
    target = rest[:-9]
    if _TARGET.fullmatch(target) is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    length = -1
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # Usual names are letters, digits and dashes; others are checked in full.
        if not colon or not (name.replace(b"-", b"").isalnum() or (name and not name.translate(None, _TOKEN))):
            return None
        name = name.lower()
        value = value.strip(b" \t")
        if name in _SPECIAL:
            # One plain Content-Length (h11 also merges equal repeats, and
            # refuses other forms), and never a transfer coding.
            if not bodies or name != b"content-length" or length >= 0:
                return None
            if not (value.isdigit() and len(value) <= 18):
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection" and bodies and b"close" in value.lower():
            return None  # h11 ends the connection after the answer: its path does that
        headers.append((name, value))
    if hosts != 1:
        return None
    return method, target, headers, max(length, 0), end + 4
