"""The usual WebSocket upgrade request, read without h11.

Almost every connection to the relay starts with the same thing: a small
``GET`` upgrade request arriving whole in the first read. Parsing it with
h11 (a connection object, its state machine, an event per part) measured
about a sixth of the relay's CPU per new connection, which is what a
reconnect storm is made of.

:func:`parse_upgrade_request` reads that common case and nothing else: it
accepts only heads that h11 itself would parse to the same request (h11's
own grammar for request line and header fields, a single ``Host``, no
``Content-Length`` or ``Transfer-Encoding``, no obsolete line folding) and
returns ``None`` for everything else, which then goes to h11 with the same
bytes. The ``upgrade`` fuzz target checks that claim against h11 on
random requests. Sans-I/O: bytes in, a request or ``None`` out.
"""

from __future__ import annotations

import re

__all__ = ["UpgradeRequest", "parse_upgrade_request"]

# h11's grammar (h11/_abnf.py), as byte patterns.
_REQUEST_LINE = re.compile(rb"GET ([\x21-\x7e]+) HTTP/1\.1")
_HEADER = re.compile(rb"([-!#$%&'*+.^_`|~0-9a-zA-Z]+):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*")
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
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > max_head:
        return None
    lines = data[:end].split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    match = _HEADER.fullmatch
    for line in lines[1:]:
        field = match(line)
        if field is None:
            return None
        name = field.group(1).lower()
        if name in _SPECIAL:
            return None
        if name == b"host":
            hosts += 1
        headers.append((name, field.group(2)))
    if hosts != 1:
        return None
    return UpgradeRequest(first.group(1), headers, data[end + 4 :])
