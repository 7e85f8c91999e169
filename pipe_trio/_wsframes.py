"""WebSocket framing for the server side (RFC 6455 section 5), specialised for speed.

The relay reads one small masked text frame per message from every socket
and writes one small unmasked text frame per delivery, so framing is on the
hottest path there is. wsproto's general frame machinery (extensions,
partial payload chunks, generators, a named tuple per frame) measured about
a quarter of the relay's CPU in the Pipe round-trip benchmark; this module
does the same job for the one case the relay needs (server side, no
extensions) with a loop over whole frames.

wsproto stays the reference: the ``wsframes`` fuzz target feeds random
valid and invalid frame streams, cut into random chunks, to this reader and
to :class:`~._wsreference.ReferenceReader` (wsproto's, which the portable
transport reads with) and requires the same messages and the same close
codes; ``tests/test_wsframes.py`` holds the writers to wsproto's, and the
adapter suite runs on both transports.

:class:`FrameReader` is sans-I/O: bytes in, a list of ``(kind, value)``
out, :class:`FrameError` (with the close code to send) for a peer that breaks
the framing rules. It buffers at most one frame beyond what it has returned,
and never a data frame larger than ``max_message``: an oversized message is
reported once (``OVERSIZED``) and its bytes are skipped as they arrive.
"""

from __future__ import annotations

import codecs
from typing import Any

__all__ = [
    "BROKEN",
    "CLOSE",
    "OVERSIZED",
    "PING",
    "PONG",
    "TEXT",
    "FrameError",
    "FrameReader",
    "close_frame",
    "close_payload",
    "control_frame",
    "masked_frame",
    "text_frame",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0, 1, 2, 8, 9, 10
#: Reported instead of a message longer than ``max_message`` (value: its size so far).
OVERSIZED = -1
#: The framing is broken (value: the :class:`FrameError`); nothing follows.
BROKEN = -2

_VALID_OPCODES = frozenset((CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG))
#: Close codes a peer may not send (RFC 6455 7.4.1: they only describe local events).
_LOCAL_ONLY = frozenset((1005, 1006, 1015))
#: Codes below 3000 a peer may send (RFC 6455 7.4.1 plus 1012 and 1013, as wsproto).
_REGISTERED = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013))

_SHORT_TEXT_HEADERS = [bytes((0x81, n)) for n in range(126)]


class FrameError(Exception):
    """The peer broke the WebSocket framing rules; close with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _protocol_error(message: str) -> FrameError:
    return FrameError(1002, message)


def _unmask(mask: bytes, payload: bytes) -> bytes:
    # XOR as one big integer: a single C-level pass instead of a Python loop.
    n = len(payload)
    if not n:
        return payload
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _head(first: int, n: int, mask_bit: int = 0) -> bytes:
    # The first byte, then the payload length in the shortest form (RFC 6455 5.2).
    if n < 126:
        return bytes((first, mask_bit | n))
    if n < 65536:
        return bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")


def _frame(first: int, payload: bytes) -> bytes:
    return _head(first, len(payload)) + payload


def text_frame(text: str) -> bytes:
    """A final, unmasked text frame carrying ``text`` (what a server sends)."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return _SHORT_TEXT_HEADERS[n] + payload
    return _frame(0x81, payload)


def masked_frame(first: int, payload: bytes, mask: bytes) -> bytes:
    """A client's frame: first byte ``first`` (FIN and opcode), ``payload`` masked with ``mask`` (4 bytes)."""
    return _head(first, len(payload), 0x80) + mask + _unmask(mask, payload)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A ping or pong frame (payload at most 125 bytes, truncated beyond)."""
    return _frame(0x80 | opcode, payload[:125])


def close_payload(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame; ``code`` None sends none (the peer sees 1005)."""
    if code is None:
        return b""
    # A lone surrogate (which the codecs refuse in a reason) becomes "?", not a traceback.
    encoded = reason.encode("utf-8", "replace")[:123]
    # Cutting inside a multi-byte character would send invalid UTF-8.
    encoded = encoded.decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + encoded


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A server's close frame (see :func:`close_payload`)."""
    return _frame(0x88, close_payload(code, reason))


def _close_payload(payload: bytes) -> tuple[int, str]:
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise _protocol_error("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code < 1000 or code > 4999:
        raise _protocol_error(f"close code {code} out of range")
    if code in _LOCAL_ONLY:
        raise _protocol_error(f"close code {code} may not be sent")
    if code < 3000 and code not in _REGISTERED:
        raise _protocol_error(f"reserved close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(1007, f"close reason is not UTF-8: {exc}") from None
    return code, reason


class FrameReader:
    """Turns a client's bytes into messages: the server side of RFC 6455 framing.

    :meth:`feed` returns ``(TEXT, str)`` for each complete text message,
    ``(PING, bytes)``, ``(PONG, bytes)``, ``(CLOSE, (code, reason))``,
    ``(OVERSIZED, size)`` for a text message over ``max_message`` bytes,
    which is then dropped, and ``(BROKEN, FrameError)`` when the peer breaks
    the framing: what came before it is still returned. Nothing is read
    after a close or a broken frame. Binary messages are
    skipped (the protocols spoken here have none). Frames must be masked and
    use no reserved bits.

    Args:
        max_message: the largest text message, in bytes of UTF-8.
    """

    __slots__ = (
        "_decoder",
        "_discard",
        "_message",
        "_need",
        "_opcode",
        "_pending",
        "_pending_size",
        "_size",
        "_skip",
        "closed",
        "masked",
        "max_message",
    )

    def __init__(self, max_message: int = 1 << 62, *, masked: bool = True) -> None:
        self.max_message = max_message
        # Frames from clients are masked, frames from servers are not
        # (RFC 6455 5.1): False reads what a server sends.
        self.masked = masked
        self.closed = False
        # Bytes of an incomplete frame, kept as received (joined once
        # complete); like the fragments below, made only when needed: an
        # idle connection's reader holds no lists.
        self._pending: list[bytes] | None = None
        self._pending_size = 0
        self._need = 0  # bytes the pending frame needs in all, when known
        self._skip = 0  # payload bytes still to pass over (a dropped message)
        self._opcode = 0  # first opcode of the fragmented message in progress
        self._discard = False  # that message is being dropped
        self._size = 0  # its bytes so far
        # The fragmented text's bytes so far, in one buffer: decoded pieces
        # kept in a list would cost an object per frame (empty ones
        # included), which the size limit (payload bytes) does not see.
        self._message: bytearray | None = None
        self._decoder: codecs.IncrementalDecoder | None = None

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """The messages completed by ``data``, in order."""
        out: list[tuple[int, Any]] = []
        if self.closed or not data:
            return out
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return out
            data = data[self._skip :]
            self._skip = 0
        pending = self._pending
        if pending:
            self._pending_size += len(data)
            pending.append(data)
            if self._pending_size < self._need:
                return out
            buf = b"".join(pending)
            self._pending = None
            self._pending_size = 0
        else:
            buf = data
        self._need = 0
        end = len(buf)
        try:
            pos = self._parse(buf, 0, end, out)
        except FrameError as exc:
            out.append((BROKEN, exc))
            self.closed = True
            return out
        if pos < end:
            rest = buf[pos:]
            self._pending = [rest]
            self._pending_size = len(rest)
        return out

    def _parse(self, buf: bytes, pos: int, end: int, out: list[tuple[int, Any]]) -> int:
        """Read whole frames from ``buf[pos:end]``; returns where the unread part starts."""
        max_message = self.max_message
        masked = self.masked
        key = 4 if masked else 0
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            short = b1 & 0x7F
            fin = b0 & 0x80
            if opcode not in _VALID_OPCODES:
                raise _protocol_error(f"invalid opcode {opcode:#x}")
            if opcode >= CLOSE:
                if not fin:
                    raise _protocol_error("fragmented control frame")
                if short > 125:
                    raise _protocol_error("control frame payload longer than 125 bytes")
            if b0 & 0x70:
                raise _protocol_error("reserved bits set")
            if bool(b1 & 0x80) is not masked:
                raise _protocol_error("unmasked frame from a client" if masked else "masked frame from a server")
            if short < 126:
                n = short
                head = pos + 2 + key
            elif short == 126:
                if end - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                if n < 126:
                    raise _protocol_error("payload length not minimally encoded")
                head = pos + 4 + key
            else:
                if end - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                if n >> 63:
                    raise _protocol_error("payload length with the high bit set")
                if n < 65536:
                    raise _protocol_error("payload length not minimally encoded")
                head = pos + 10 + key
            if head > end:
                break
            if opcode >= CLOSE:
                if head + n > end:
                    self._need = head + n - pos
                    break
                payload = (_unmask(buf[head - 4 : head], buf[head : head + n]) if masked else buf[head : head + n])
                pos = head + n
                if opcode == CLOSE:
                    out.append((CLOSE, _close_payload(payload)))
                    self.closed = True
                    return end
                out.append((opcode, payload))
                continue
            # A data frame: it starts a message or continues the one in progress.
            if opcode == CONTINUATION:
                if not self._opcode:
                    raise _protocol_error("continuation frame outside a message")
                size = self._size + n
                discard = self._discard
            else:
                if self._opcode:
                    raise _protocol_error("new message before the previous one finished")
                size = n
                discard = opcode == BINARY
            if not discard and size > max_message:
                out.append((OVERSIZED, size))
                discard = True
                self._message = None
                self._decoder = None
            if discard:
                self._opcode = 0 if fin else (opcode or self._opcode)
                self._discard = not fin
                self._size = size
                if head + n > end:
                    self._skip = head + n - end
                    return end
                pos = head + n
                continue
            if head + n > end:
                self._need = head + n - pos
                break
            payload = (_unmask(buf[head - 4 : head], buf[head : head + n]) if masked else buf[head : head + n])
            pos = head + n
            if opcode == TEXT and fin:
                try:
                    out.append((TEXT, payload.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    raise FrameError(1007, f"text message is not UTF-8: {exc}") from None
                continue
            self._fragment(opcode, payload, fin, size, out)
        return pos

    def _fragment(self, opcode: int, payload: bytes, fin: int, size: int, out: list[tuple[int, Any]]) -> None:
        if opcode == TEXT:
            self._opcode = TEXT
            self._decoder = codecs.getincrementaldecoder("utf-8")()
            self._message = bytearray()
        decoder = self._decoder
        message = self._message
        assert decoder is not None and message is not None
        try:
            # Checked as it comes, so bad UTF-8 fails at once; decoded whole at the end.
            decoder.decode(payload, bool(fin))
        except UnicodeDecodeError as exc:
            raise FrameError(1007, f"text message is not UTF-8: {exc}") from None
        message += payload
        self._size = size
        if fin:
            out.append((TEXT, message.decode("utf-8")))
            self._message = None
            self._decoder = None
            self._opcode = 0
            self._size = 0
