"""The clients' WebSocket: a client connection over a Trio stream, framed by :mod:`._wsframes`.

Both clients this package ships run on it: ``open_pipe`` (the Pipe) and
``connect`` (the Pusher socket client). One stack, because the reason for
having it is the pipe's: ``open_pipe`` writes an answer per event (in
batches when made together) and reads a notification per event, so its
WebSocket's per-message cost is the backend's, and trio-websocket (a reader
task, a message channel, a send lock and wsproto's generic framing per
message) measured about half the backend's CPU in the Pipe round-trip
benchmark. This connection does the
same with one task fewer: the client's own reader reads the socket, writes
go straight to it when the kernel takes them at once (the common case), and
only a write that would block goes through a lock and ``send_all``.
trio-websocket remains in :mod:`pipe_trio.testing` only, whose fake peers
check servers and clients with a WebSocket implementation independent of
this one.

The handshake is h11's (request out, response in); a refusal is reported
with the status and body (:class:`HandshakeRefused`). Pings are answered;
a close from the server is answered and reported as :class:`ConnectionClosed`,
as is the end of the stream (code 1006). Buffers: at most one frame of
``max_message`` bytes being read, and what one read returned.
"""

from __future__ import annotations

import base64
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import h11
import trio
from wsproto.utilities import generate_accept_token

from ._io import RECEIVE_SIZE, RandomBytes, raw_fd, receive
from ._wsframes import BROKEN, CLOSE, OVERSIZED, PING, PONG, TEXT, FrameReader, close_payload, masked_frame

__all__ = ["ClientWebSocket", "ConnectionClosed", "HandshakeRefused", "connect_websocket", "open_websocket"]

#: Seconds to connect (TCP, TLS) and complete the WebSocket handshake.
CONNECT_TIMEOUT = 10.0
#: Largest response head, and body of a refusal, read during the handshake.
_MAX_RESPONSE = 64 * 1024
#: Seconds a closing connection waits for its close frame to be written.
_CLOSE_TIMEOUT = 1.0


class ConnectionClosed(Exception):
    """The WebSocket is closed (``code`` and ``reason`` as the close said, 1006 if none came)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"upgrade refused with status {status_code}")
        self.status_code = status_code
        self.body = body


# Client frames need a fresh mask each (RFC 6455 5.3).
_MASKS = RandomBytes()


@asynccontextmanager
async def open_websocket(
    url: str, *, ssl_context: ssl.SSLContext | None, max_message: int, connect_timeout: float = CONNECT_TIMEOUT
) -> AsyncIterator[ClientWebSocket]:
    """Connect to ``url`` (``ws[s]://host[:port]/path?query``) and complete the handshake.

    ``wss`` uses ``ssl_context`` (the system's defaults when ``None``).
    ``connect_timeout`` bounds the TCP connection, TLS and the handshake. On
    exit the connection is closed (1000, unless a close already happened) and
    its stream with it.

    Raises:
        HandshakeRefused: the server answered with another status than 101.
        ConnectionClosed: the stream ended or the answer was not a WebSocket upgrade.
        OSError: no connection.
        trio.TooSlowError: ``connect_timeout`` passed first.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "127.0.0.1"
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, parts.port or (443 if secure else 80))
            if secure:
                context = ssl_context or ssl.create_default_context()
                stream = trio.SSLStream(stream, context, server_hostname=host, https_compatible=True)
            ws = await connect_websocket(stream, parts.netloc, resource, max_message=max_message)
        try:
            yield ws
        finally:
            await ws.aclose()  # its closing handshake is shielded, and bounded
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)


async def connect_websocket(
    stream: trio.abc.Stream, host: str, resource: str, *, max_message: int
) -> ClientWebSocket:
    """Complete the WebSocket handshake on ``stream`` (already connected, TLS included).

    Raises:
        HandshakeRefused: the server answered with another status than 101.
        ConnectionClosed: the stream ended or the answer was not a WebSocket upgrade.
    """
    key = base64.b64encode(os.urandom(16))
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE)
    request = h11.Request(
        method="GET",
        target=resource,
        headers=[
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.decode("ascii")),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    await stream.send_all(conn.send(request) or b"")
    response = await _next_event(stream, conn)
    if isinstance(response, h11.InformationalResponse) and response.status_code == 101:
        headers = dict(response.headers)
        if headers.get(b"sec-websocket-accept") != generate_accept_token(key):
            raise ConnectionClosed(1002, "bad Sec-WebSocket-Accept in the upgrade response")
        return ClientWebSocket(stream, conn.trailing_data[0], max_message)
    if isinstance(response, h11.Response):
        body = b""
        while True:
            event = await _next_event(stream, conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_RESPONSE:
                    break
            else:
                break
        raise HandshakeRefused(response.status_code, body[:_MAX_RESPONSE])
    raise ConnectionClosed(1006, "the server did not answer the upgrade")


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ConnectionClosed(1002, f"malformed upgrade response: {exc}") from None
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some(RECEIVE_SIZE)
        conn.receive_data(bytes(data))


class ClientWebSocket:
    """An open client WebSocket (see the module's docstring).

    One task reads (:meth:`get_message`); any task may send.
    """

    def __init__(self, stream: trio.abc.Stream, trailing: bytes, max_message: int) -> None:
        self.stream = stream
        self._fd = raw_fd(stream)
        self._reader = FrameReader(max_message, masked=False)
        self._messages: deque[str] = deque()
        self._trailing = trailing
        self._lock = trio.StrictFIFOLock()
        self.closed: ConnectionClosed | None = None
        self._close_sent = False

    async def get_message(self) -> str:
        """The next text message.

        Raises:
            ConnectionClosed: the connection ended; nothing more comes.
        """
        messages = self._messages
        while not messages:
            if self.closed is not None:
                raise self.closed
            data, self._trailing = self._trailing, b""
            if not data:
                data = await self._receive()
                if not data:
                    await self._end(1006, "")
                    continue
            for kind, value in self._reader.feed(data):
                if kind == TEXT:
                    messages.append(value)
                elif kind == PING:
                    if not self._close_sent:
                        await self._send(masked_frame(0x8A, value, _MASKS.take(4)))
                elif kind == PONG:
                    pass  # our own pings are requests (pipe-protocol.md 7), not WebSocket pings
                else:
                    if kind == CLOSE:
                        code, reason = value
                        await self._end(code, reason, answer=code)
                    elif kind == OVERSIZED:
                        await self._end(1009, "message too big", answer=1009)
                    elif kind == BROKEN:
                        await self._end(value.code, str(value), answer=value.code)
                    break  # nothing after the end counts
        return messages.popleft()

    async def _receive(self) -> bytes:
        if self.closed is not None:
            return b""
        return await receive(self.stream, self._fd)

    async def send_message(self, text: str) -> None:
        """Send a text message.

        Raises:
            ConnectionClosed: the connection is closed (or closing).
        """
        if self.closed is not None or self._close_sent:
            raise self.closed or ConnectionClosed(1006, "closing")
        await self._send(masked_frame(0x81, text.encode("utf-8"), _MASKS.take(4)))

    async def send_messages(self, take: Callable[[], list[str]]) -> None:
        """Send the text messages ``take()`` returns, in order, in one write when the kernel takes it.

        ``take`` is called only once nothing can stop the write before its
        first byte (the connection is open, no cancellation is pending, no
        other write is under way): what it took is written, or lost with
        the connection if that breaks midway.

        Raises:
            ConnectionClosed: the connection is closed (or closing); then
                ``take`` was not called.
        """
        if self.closed is not None or self._close_sent:
            raise self.closed or ConnectionClosed(1006, "closing")
        masks = _MASKS

        def frames() -> bytes:
            return b"".join([masked_frame(0x81, text.encode("utf-8"), masks.take(4)) for text in take()])

        await self._send(frames)

    async def _send(self, frame: bytes | Callable[[], bytes]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._fd == -2:  # closed: the number may belong to another socket by now
            raise self.closed or ConnectionClosed(1006, "")
        fd = self._fd
        if fd >= 0 and not self._lock.locked():
            # The usual case: the kernel takes the whole frame at once.
            data = frame if isinstance(frame, bytes) else frame()
            if not data:
                return
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                await self._end(1006, "")
                raise self.closed or ConnectionClosed(1006, "") from None
            if written == len(data):
                return
            # Part of a frame is out: the rest must follow before anything else.
            self._lock.acquire_nowait()
            try:
                await self._send_all(data[written:])
            finally:
                self._lock.release()
            return
        async with self._lock:
            # Closed while waiting: what would have been taken stays with its
            # owner (the close frame itself is bytes, sent whatever the state).
            if self._fd == -2 or (not isinstance(frame, bytes) and (self.closed is not None or self._close_sent)):
                raise self.closed or ConnectionClosed(1006, "")
            data = frame if isinstance(frame, bytes) else frame()
            if data:
                await self._send_all(data)

    async def _send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._end(1006, "")
            raise self.closed or ConnectionClosed(1006, "") from None
        except trio.Cancelled:
            # Maybe part of a frame went out: nothing can follow it any more.
            self.closed = self.closed or ConnectionClosed(1006, "a send was cancelled mid-frame")
            self._close_sent = True
            self._fd = -2
            await trio.aclose_forcefully(self.stream)  # the reader sees the end; the pipe reconnects
            raise

    async def _end(self, code: int, reason: str, *, answer: int | None = None) -> None:
        if self.closed is None:
            self.closed = ConnectionClosed(code, reason)
        if answer is not None and not self._close_sent:
            await self._send_close(None if answer == 1005 else answer, "")

    async def _send_close(self, code: int | None, reason: str) -> None:
        self._close_sent = True
        with trio.move_on_after(_CLOSE_TIMEOUT) as scope, suppress(ConnectionClosed):
            scope.shield = True
            await self._send(masked_frame(0x88, close_payload(code, reason), _MASKS.take(4)))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (unless one was sent) and close the stream.

        The reader, if any, then gets :class:`ConnectionClosed`.
        """
        if not self._close_sent and self.closed is None:
            await self._send_close(code, reason)
        if self.closed is None:
            self.closed = ConnectionClosed(code, reason)
        self._fd = -2
        await trio.aclose_forcefully(self.stream)
