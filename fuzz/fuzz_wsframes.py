"""Fuzz target ``wsframes``: the relay's WebSocket frame reader, differential against wsproto.

Checked for every input (``check_stream``): the bytes a client sends, cut into
the chunks the relay reads (or, in client mode, the bytes a server sends, as
``open_pipe`` reads them), give the same result through
:class:`pipe_trio._wsframes.FrameReader` (the fast transport's) as through
:class:`pipe_trio._wsreference.ReferenceReader`, wsproto's server-side
``FrameProtocol`` as the portable transport drives it (text messages
joined across fragments, binary skipped, pings and pongs reported, reading
stopped at a close or at the first broken frame): the same text messages,
ping and pong payloads, close code and reason, oversized-message reports,
and the same close code for broken framing (1002 or 1007). (Data and
control events are compared as two ordered lists: an oversized report may
come a ping earlier than wsproto's, and a bad header is refused from its
first two bytes where wsproto waits for the extended length: wsproto gets
those bytes then.) The reader never
raises, and never holds more than one frame's worth of bytes.

Inputs: frame sequences built field by field (every opcode including the
reserved ones, FIN and RSV bits, masked or not, minimal and non-minimal
length encodings, 7-bit, 16-bit and 64-bit lengths, text payloads valid or
cut inside a character, close codes valid, reserved and local-only, close
reasons valid or not), fragmented messages with control frames between
fragments, random bytes; each stream cut at random points, with and without
a message size limit.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import strategies as st

from fuzz._support import corpus_params, fuzz_property, record
from pipe_trio._wsframes import BROKEN, CLOSE, OVERSIZED, PING, PONG, TEXT, FrameReader
from pipe_trio._wsreference import ReferenceReader

TARGET = "wsframes"

# ------------------------------------------------------------------ models


def reference(chunks: list[bytes], max_message: int | None, client: bool = False) -> list[tuple[Any, ...]]:
    """What wsproto makes of ``chunks``: the portable transport's :class:`ReferenceReader`."""
    limit = 1 << 62 if max_message is None else max_message
    reader = ReferenceReader(limit, masked=not client)
    return [_event(kind, value) for chunk in chunks for kind, value in reader.feed(chunk)]


def ours(chunks: list[bytes], max_message: int | None, client: bool = False) -> list[tuple[Any, ...]]:
    """What :class:`FrameReader` makes of ``chunks`` (``client``: reading a server's frames)."""
    reader = FrameReader(masked=not client) if max_message is None else FrameReader(max_message, masked=not client)
    events: list[tuple[Any, ...]] = []
    largest = 0
    for chunk in chunks:
        events += [_event(kind, value) for kind, value in reader.feed(chunk)]
        largest = max(largest, reader._pending_size)  # the bound is the point
    assert reader.closed or not events or events[-1][0] not in ("close", "broken")
    if max_message is not None:
        # At most one frame's header and payload within the limit is buffered.
        assert largest <= max(max_message, 125) + 14 + max((len(c) for c in chunks), default=0)
    return events


def _event(kind: int, value: Any) -> tuple[Any, ...]:
    # Comparable across the readers: an oversized report's size is each one's own estimate.
    if kind == TEXT:
        return ("text", value)
    if kind == PING:
        return ("ping", value)
    if kind == PONG:
        return ("pong", value)
    if kind == CLOSE:
        return ("close", value[0], value[1])
    if kind == OVERSIZED:
        return ("oversized",)
    if kind == BROKEN:
        return ("broken", value.code)
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover - a bug


def check_stream(chunks: list[bytes], max_message: int | None, client: bool = False) -> None:
    """The whole check for one input (recorded first, so a crash is kept)."""
    record(TARGET, {
        "chunks_b64": [base64.b64encode(c).decode() for c in chunks], "max_message": max_message, "client": client,
    })
    expected = reference(chunks, max_message, client)
    got = ours(chunks, max_message, client)
    if got[-1:] == [("broken", 1002)] and (not expected or expected[-1][0] not in ("broken", "close")):
        # The reader judges a header from its first two bytes; wsproto waits
        # for the extended length first. Given those bytes, it must agree.
        expected = reference([*chunks, bytes(14)], max_message, client)
    if max_message is not None and any(e[0] == "broken" and e[1] == 1007 for e in expected):
        # wsproto checks UTF-8 before the size (it sees the text first); the
        # reader sees the size first and skips an oversized message unread.
        return
    # An oversized report may come a control frame earlier than wsproto's,
    # which counts a character cut between fragments only once it is whole:
    # data and control events are each compared in order.
    for kinds in (("ping", "pong"), None):
        mine = [e for e in got if (e[0] in kinds if kinds else e[0] not in ("ping", "pong"))]
        theirs = [e for e in expected if (e[0] in kinds if kinds else e[0] not in ("ping", "pong"))]
        assert mine == theirs, f"reader {got!r} != wsproto {expected!r}"


# -------------------------------------------------------------- strategies


@st.composite
def payloads(draw: st.DrawFn, opcode: int) -> bytes:
    size = draw(st.sampled_from(["small", "small", "small", "medium", "large"]))
    if opcode in (0, 1):
        text = draw(st.text(max_size={"small": 40, "medium": 400, "large": 70000}[size]))
        data = text.encode("utf-8")
        if size == "large" and len(data) < 65536:
            data += b"a" * (65536 - len(data))
        if data and draw(st.integers(0, 9)) == 0:
            data = data[: draw(st.integers(0, len(data)))] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"]))
        return data
    if opcode == 8:
        kind = draw(st.integers(0, 9))
        if kind == 0:
            return b""
        if kind == 1:
            return b"\x03"
        code = draw(st.sampled_from([1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1014, 1015, 1016,
                                     2999, 3000, 4000, 4999, 5000, 999, 0, 65535]))
        reason = draw(st.text(max_size=20)).encode("utf-8")[:100]
        if draw(st.integers(0, 5)) == 0:
            reason += b"\xff"
        return code.to_bytes(2, "big") + reason
    limit = 125 if opcode >= 8 and draw(st.integers(0, 9)) else 300
    return draw(st.binary(max_size=limit))


@st.composite
def frames(draw: st.DrawFn, client: bool = False) -> bytes:
    opcode = draw(st.sampled_from([1, 1, 1, 0, 0, 2, 8, 9, 9, 10, 3, 7, 11, 15]))
    fin = draw(st.integers(0, 4)) > 0 if opcode >= 8 else draw(st.booleans())
    rsv = draw(st.sampled_from([0, 0, 0, 0, 0, 0, 1, 2, 4]))
    masked = (draw(st.integers(0, 19)) > 0) is not client
    payload = draw(payloads(opcode))
    n = len(payload)
    encoding = "minimal" if draw(st.integers(0, 14)) else draw(st.sampled_from(["16", "64", "64msb"]))
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    mask_bit = 0x80 if masked else 0
    if encoding == "minimal" and n < 126:
        head += bytes([mask_bit | n])
    elif (encoding == "minimal" and n < 65536) or encoding == "16":
        head += bytes([mask_bit | 126]) + (n & 0xFFFF).to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + (n | (1 << 63 if encoding == "64msb" else 0)).to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = draw(st.binary(min_size=4, max_size=4))
    return head + mask + _xor(mask, payload)


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[bytes], int | None, bool]:
    client = draw(st.integers(0, 3)) == 0
    if draw(st.integers(0, 14)) == 0:
        data = draw(st.binary(max_size=200))
    else:
        data = b"".join(draw(st.lists(frames(client), max_size=8)))
    chunks = _cut(data, draw(st.lists(st.integers(0, len(data)), max_size=6)))
    max_message = draw(st.one_of(st.none(), st.integers(0, 200), st.just(65536)))
    return chunks, max_message, client


@st.composite
def fragmented(draw: st.DrawFn) -> tuple[list[bytes], int | None]:
    """Valid text messages cut into fragments, pings between them."""
    out = b""
    for text in draw(st.lists(st.text(max_size=60), max_size=4)):
        data = text.encode("utf-8")
        pieces = _cut(data, draw(st.lists(st.integers(0, len(data)), max_size=3)))
        for i, piece in enumerate(pieces):
            first, last = i == 0, i == len(pieces) - 1
            out += _masked((0x80 if last else 0) | (1 if first else 0), piece)
            if not last and draw(st.booleans()):
                out += _masked(0x89, draw(st.binary(max_size=10)))
    chunks = _cut(out, draw(st.lists(st.integers(0, len(out)), max_size=5)))
    return chunks, draw(st.one_of(st.none(), st.integers(0, 100)))


def _masked(first: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([first, 0x80 | n]) if n < 126 else bytes([first, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + b"\x01\x02\x03\x04" + _xor(b"\x01\x02\x03\x04", payload)


def _xor(mask: bytes, payload: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(payload, mask * (len(payload) // 4 + 1), strict=False))


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# --------------------------------------------------------------- properties


@fuzz_property(TARGET, 400, stream=streams())
def test_reader_matches_wsproto(stream: tuple[list[bytes], int | None, bool]) -> None:
    check_stream(*stream)


@fuzz_property(TARGET, 200, stream=fragmented())
def test_fragmented_text_matches_wsproto(stream: tuple[list[bytes], int | None]) -> None:
    check_stream(*stream)


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Frames captured from real clients, and past failures."""
    check_stream([base64.b64decode(c) for c in entry["chunks_b64"]], entry["max_message"], entry.get("client", False))
