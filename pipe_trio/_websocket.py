"""One accepted WebSocket: its reader loop and its bounded outbound buffer.

The reader feeds bytes to wsproto and hands complete text messages to a
callback; it enforces the message size limit by discarding an oversized
message as it streams in (so it never buffers more than the limit). The
writer side is a list of ready-made frames: a broadcast frame is built once
by the server and the same bytes object is appended to every subscriber's
list. A flush task is started only while there is something to write, and
it writes everything queued in one ``send_all`` (writes coalesce under load,
and an idle connection has no writer task and no buffer).

When the queued bytes would pass ``max_buffer`` the connection is over its
limit: :meth:`WebSocket.push` returns False and the server closes it as a
slow consumer. Closing never waits on a peer that does not read for longer
than ``CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.frame_protocol import FrameProtocol

__all__ = ["CLOSE_TIMEOUT", "WebSocket", "broadcast_frame"]

log = logging.getLogger("pipe_trio")

#: Seconds a closing connection may take to take its last frames.
CLOSE_TIMEOUT = 5.0
_RECEIVE_SIZE = 65536

# Server frames are unmasked and, without extensions, identical for every
# peer: one shared framer builds them for all connections.
_FRAMER = FrameProtocol(client=False, extensions=[])


def broadcast_frame(text: str) -> bytes:
    """The bytes of a text frame carrying ``text``, ready to write to any socket."""
    return bytes(_FRAMER.send_data(text, fin=True))


class WebSocket:
    """A server-side WebSocket after the handshake.

    Args:
        stream: the transport (TCP or TLS stream).
        trailing_data: bytes received after the HTTP upgrade request.
        max_buffer: most bytes queued for writing before the peer counts as
            a slow consumer.
        spawn: starts a task in the server's nursery.
    """

    __slots__ = (
        "_drained",
        "_flushing",
        "_out",
        "_read_scope",
        "_size",
        "_write_scope",
        "closing",
        "id",
        "max_buffer",
        "spawn",
        "stream",
        "ws",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        trailing_data: bytes,
        max_buffer: int,
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        self.id = ""
        self.stream = stream
        self.ws = Connection(ConnectionType.SERVER, trailing_data=trailing_data)
        self.max_buffer = max_buffer
        self.spawn = spawn
        self._out: list[bytes] = []
        self._size = 0
        self._flushing = False
        self._drained: trio.Event | None = None
        self._write_scope: trio.CancelScope | None = None
        self._read_scope: trio.CancelScope | None = None
        self.closing = False

    # ------------------------------------------------------------- writing

    def push(self, frame: bytes) -> bool:
        """Queue a frame; False when the buffer would pass ``max_buffer``."""
        if self.closing:
            return True
        size = self._size + len(frame)
        if size > self.max_buffer:
            return False
        self._out.append(frame)
        self._size = size
        if not self._flushing:
            self._flushing = True
            self.spawn(self._flush)
        return True

    def push_text(self, text: str) -> bool:
        """Queue a text message of this connection only."""
        return self.push(broadcast_frame(text))

    def ping(self) -> None:
        """Queue a WebSocket ping (pipe heartbeats)."""
        if self.ws.state is ConnectionState.OPEN:
            self.push(self.ws.send(Ping()))

    def discard_queue(self) -> None:
        """Forget what is queued and not yet being written (a slow consumer)."""
        self._out.clear()
        self._size = 0

    def close(self, code: int, reason: str) -> None:
        """Send a close frame after what is queued, then end the connection.

        The peer has ``CLOSE_TIMEOUT`` seconds to take the remaining frames
        and answer the close; after that the connection is cut.
        """
        if self.closing:
            return
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._out.append(self.ws.send(CloseConnection(code=code, reason=reason[:120])))
        self._begin_closing()
        if not self._flushing:
            self._flushing = True
            self.spawn(self._flush)

    def _begin_closing(self) -> None:
        self.closing = True
        deadline = trio.current_time() + CLOSE_TIMEOUT
        for scope in (self._write_scope, self._read_scope):
            if scope is not None:
                scope.deadline = min(scope.deadline, deadline)

    async def _flush(self) -> None:
        with trio.CancelScope() as scope:
            self._write_scope = scope
            if self.closing:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT
            try:
                while self._out:
                    chunk = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                    self._out.clear()
                    self._size = 0
                    await self.stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._out.clear()
                self._begin_closing()
            except Exception:  # pragma: no cover - a bug; never let it take the server down
                log.exception("writer of %s failed", self.id)
                self._begin_closing()
        self._write_scope = None
        self._flushing = False
        if scope.cancelled_caught:
            self._out.clear()
        if self._drained is not None:
            self._drained.set()

    async def aclose(self) -> None:
        """Wait (boundedly) for queued frames to be written, then close the stream."""
        self._begin_closing()
        if self._flushing:
            self._drained = trio.Event()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._drained.wait()
        await trio.aclose_forcefully(self.stream)

    # ------------------------------------------------------------- reading

    async def run(
        self,
        on_text: Callable[[str], None],
        on_heard: Callable[[], None],
        on_oversized: Callable[[int], None],
        max_message: int,
    ) -> tuple[int, str]:
        """Read until the connection ends; returns the close code and reason.

        ``on_text`` gets each complete text message; binary messages are
        ignored (the Pusher protocol has none); pings are answered and,
        like pongs, reported through ``on_heard``. A message longer than
        ``max_message`` characters is dropped as it arrives and reported
        through ``on_oversized``. Once the connection is closing, reading
        goes on only until the peer's close frame, at most ``CLOSE_TIMEOUT``.
        """
        with trio.CancelScope() as scope:
            self._read_scope = scope
            try:
                return await self._read(on_text, on_heard, on_oversized, max_message)
            finally:
                self._read_scope = None
        return 1006, "closing timed out"

    async def _read(
        self,
        on_text: Callable[[str], None],
        on_heard: Callable[[], None],
        on_oversized: Callable[[int], None],
        max_message: int,
    ) -> tuple[int, str]:
        parts: list[str] = []
        size = 0
        discarding = False
        ws = self.ws
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage):
                    if self.closing:
                        continue
                    if discarding:
                        discarding = not event.message_finished
                        continue
                    # The limit is in bytes of UTF-8, as on the wire; for
                    # ASCII text (the usual case) len() already is that.
                    data = event.data
                    size += len(data) if data.isascii() else len(data.encode())
                    if size > max_message:
                        on_oversized(size)
                        parts.clear()
                        size = 0
                        discarding = not event.message_finished
                    elif not event.message_finished:
                        parts.append(event.data)
                    else:
                        if parts:
                            parts.append(event.data)
                            text = "".join(parts)
                            parts.clear()
                        else:
                            text = event.data
                        size = 0
                        on_text(text)
                elif isinstance(event, Ping):
                    if ws.state is ConnectionState.OPEN:
                        self.push(ws.send(event.response()))
                    on_heard()
                elif isinstance(event, Pong):
                    on_heard()
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self.push(ws.send(event.response()))
                    return event.code, event.reason or ""
                elif isinstance(event, BytesMessage):
                    pass
            if ws.state is ConnectionState.CLOSED:
                break
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            ws.receive_data(data or None)
        return 1006, ""
