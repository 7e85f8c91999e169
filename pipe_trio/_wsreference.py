"""WebSocket framing by wsproto: the portable transport's, and the reference for :mod:`._wsframes`.

:class:`ReferenceReader` keeps :class:`~._wsframes.FrameReader`'s contract
(:meth:`~ReferenceReader.feed` takes bytes and returns ``(kind, value)``
pairs of the same kinds) on top of wsproto's server-side ``FrameProtocol``:
text messages are joined across fragments, binary ones skipped, pings,
pongs and the close reported, reading stops at a close or at the first
broken frame (``BROKEN`` with a :class:`~._wsframes.FrameError` carrying
wsproto's close code, 1002 or 1007). wsproto hands a frame's payload on as
it arrives, so a message over ``max_message`` is reported once
(``OVERSIZED``) and dropped as it streams in: nothing buffers more than one
read. The frame writers below are wsproto's too.

The portable transport reads and writes with these, the fast one with
:mod:`._wsframes`; the adapter suite runs on both, and the ``wsframes`` fuzz
target compares the two readers on random streams. Where they may differ,
only for input no client sends: the fast reader judges a message's size
from its frame headers, wsproto from its payload as it arrives, so the
size in an ``OVERSIZED`` report (a lower bound in the relay's error
message) differs, the report may come before or after a control frame
sent in the middle of the message, and a message both oversized and not
UTF-8 is skipped by one and refused (1007) by the other.
"""

from __future__ import annotations

from typing import Any

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from ._wsframes import BROKEN, CLOSE, OVERSIZED, PING, PONG, TEXT, FrameError

__all__ = ["ReferenceReader", "close_frame", "ping_frame", "pong_frame", "text_frame"]

# Frames a server writes are unmasked and need no state (nothing is sent in
# fragments), so one writer serves every connection.
_WRITER = FrameProtocol(client=False, extensions=[])


def text_frame(text: str) -> bytes:
    """A final, unmasked text frame carrying ``text``."""
    return bytes(_WRITER.send_data(text, fin=True))


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; ``code`` None sends none (the peer sees 1005)."""
    return bytes(_WRITER.close(code, reason or None))


def ping_frame() -> bytes:
    """An empty ping."""
    return bytes(_WRITER.ping())


def pong_frame(payload: bytes) -> bytes:
    """The pong answering a ping with ``payload``."""
    return bytes(_WRITER.pong(payload))


class ReferenceReader:
    """Turns a peer's bytes into messages through wsproto (see the module's docstring).

    Args:
        max_message: the largest text message, in bytes of UTF-8.
        masked: whether frames are masked (read from a client); False reads
            a server's frames.
    """

    __slots__ = ("_discard", "_frames", "_message", "_size", "closed", "max_message")

    def __init__(self, max_message: int = 1 << 62, *, masked: bool = True) -> None:
        self.max_message = max_message
        self._frames = FrameProtocol(client=not masked, extensions=[])
        self.closed = False
        # The fragmented text message's bytes so far, in one buffer (as FrameReader keeps them).
        self._message: bytearray | None = None
        self._size = 0  # its bytes so far
        self._discard = False  # it is being dropped

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """The messages completed by ``data``, in order."""
        out: list[tuple[int, Any]] = []
        if self.closed or not data:
            return out
        self._frames.receive_bytes(data)
        try:
            for frame in self._frames.received_frames():
                opcode = frame.opcode
                # The payload is text for text frames, (code, reason) for a close, bytes otherwise.
                payload: Any = frame.payload
                if opcode is Opcode.TEXT:
                    self._text(payload, frame.message_finished, out)
                elif opcode is Opcode.PING:
                    out.append((PING, bytes(payload)))
                elif opcode is Opcode.PONG:
                    out.append((PONG, bytes(payload)))
                elif opcode is Opcode.CLOSE:
                    code, reason = payload
                    out.append((CLOSE, (int(code), reason)))
                    self.closed = True
                    return out
                # Binary messages are skipped: the protocols spoken here have none.
        except ParseFailed as exc:
            out.append((BROKEN, FrameError(int(exc.code), str(exc))))
            self.closed = True
        return out

    def _text(self, text: str, finished: bool, out: list[tuple[int, Any]]) -> None:
        if self._discard:
            self._discard = not finished
            return
        size = self._size + (len(text) if text.isascii() else len(text.encode("utf-8")))
        if size > self.max_message:
            out.append((OVERSIZED, size))
            self._message = None
            self._size = 0
            self._discard = not finished
        elif finished:
            if self._message is not None:
                self._message += text.encode("utf-8")
                text = self._message.decode("utf-8")
                self._message = None
            out.append((TEXT, text))
            self._size = 0
        else:
            if self._message is None:
                self._message = bytearray()
            self._message += text.encode("utf-8")
            self._size = size
