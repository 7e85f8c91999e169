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
    first = lines[0]
    if not (first.startswith(b"GET ") and first.endswith(b" HTTP/1.1")):
        return None
    target = first[4:-9]
    if _TARGET.fullmatch(target) is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # Usual names are letters, digits and dashes; others are checked in full.
        if not colon or not (name.replace(b"-", b"").isalnum() or (name and not name.translate(None, _TOKEN))):
            return None
        name = name.lower()
        if name in _SPECIAL:
            return None
        if name == b"host":
            hosts += 1
        headers.append((name, value.strip(b" \t")))
    if hosts != 1:
        return None
    return UpgradeRequest(target, headers, data[end + 4 :])
