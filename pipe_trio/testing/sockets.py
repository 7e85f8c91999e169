"""Fake end-user sockets: raw Pusher connections a test drives frame by frame.

Unlike :func:`pipe_trio.connect` (a client for applications), a
:class:`FakeSocket` never hides what the server did: a refused handshake is
an outcome to inspect (the ``pusher:error``, the close code, or the HTTP
status), any text or binary frame may be sent, and every frame received is
kept in order, decoded by ``pipe_proto``'s client-side codec (the oracle), or
as :class:`Unreadable` when the codec refuses it. Pings from the server are
answered with ``pusher:pong`` (and still reported) unless ``auto_pong`` is
off.

::

    async with open_fake_socket("ws://127.0.0.1:6001", "app-key", secret="app-secret") as sock:
        await sock.subscribe("private-chat")
        event = await sock.expect(SubscriptionSucceeded)
"""

from __future__ import annotations

import json
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlencode, urlsplit

import attrs
import trio
import trio_websocket

from pipe_proto.errors import RemoteProtocolError
from pipe_proto.names import channel_type
from pipe_proto.pusher import (
    ConnectionEstablished,
    Error,
    Ping,
    Pong,
    PusherEvent,
    Role,
    decode,
    encode,
)
from pipe_proto.signatures import channel_auth, signin_auth

__all__ = ["FakeSocket", "SocketClosed", "Unreadable", "open_fake_socket"]

#: Frames kept unread before the reader stops reading the socket.
MAX_QUEUED = 1000


@attrs.frozen
class Unreadable:
    """A frame the client-side codec refused (``why``), with its text (not a protocol event)."""

    text: str
    why: str


class SocketClosed(Exception):
    """The connection is closed: ``code`` and ``reason`` of the close (1006 when none came)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


Match = Callable[[Any], bool] | type


def _matches(match: Match, event: Any) -> bool:
    if isinstance(match, type):
        return isinstance(event, match)
    return bool(match(event))


class FakeSocket:
    """One raw Pusher connection (made by :func:`open_fake_socket`).

    Attributes:
        established: the ``connection_established`` event, or ``None`` when refused.
        refusal: the ``pusher:error`` that refused the handshake, if one came.
        http_status: the HTTP status when the upgrade itself was refused.
        close_code, close_reason: set once the server closed the connection.
        received: every event read so far, in order (``next``/``expect`` consume
            from a queue; this list keeps them all, for reports).
        raw: the text of every text frame read so far.
    """

    def __init__(self, key: str, secret: str | None, *, auto_pong: bool) -> None:
        self.key = key
        self.secret = secret
        self.auto_pong = auto_pong
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.established: ConnectionEstablished | None = None
        self.refusal: Error | None = None
        self.http_status: int | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.received: list[Any] = []
        self.raw: list[str] = []
        self._queue: deque[Any] = deque()
        self._changed = trio.Event()
        self._closed = trio.Event()

    # ------------------------------------------------------------- identity

    @property
    def socket_id(self) -> str:
        """The id the server gave this connection.

        Raises:
            SocketClosed: the handshake was refused.
        """
        if self.established is None:
            raise SocketClosed(self.close_code or 1006, "the handshake was refused")
        return self.established.socket_id

    @property
    def closed(self) -> bool:
        """Whether the connection has ended."""
        return self._closed.is_set()

    # -------------------------------------------------------------- sending

    async def send_text(self, text: str) -> None:
        """Send one text frame as is.

        Raises:
            SocketClosed: the connection is closed.
        """
        if self.ws is None:
            raise SocketClosed(self.close_code or 1006, "not connected")
        try:
            await self.ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            raise SocketClosed(*_close_of(exc)) from None

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame."""
        if self.ws is None:
            raise SocketClosed(self.close_code or 1006, "not connected")
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise SocketClosed(*_close_of(exc)) from None

    async def send_json(self, value: Any) -> None:
        """Send ``value`` as compact JSON."""
        await self.send_text(json.dumps(value, separators=(",", ":")))

    async def send(self, event: PusherEvent) -> None:
        """Send a client event of the protocol, encoded by ``pipe_proto``."""
        await self.send_text(encode(event, role=Role.CLIENT))

    def auth_for(self, channel: str, channel_data: str | None = None) -> str:
        """The ``auth`` an auth endpoint would return for this socket (needs ``secret``)."""
        if self.secret is None:
            raise ValueError("no secret to sign with")
        return channel_auth(self.key, self.secret, self.socket_id, channel, channel_data)

    async def subscribe(
        self, channel: str, *, auth: str | None = None, channel_data: Any = None, sign: bool = True
    ) -> None:
        """Send ``pusher:subscribe``.

        ``auth`` defaults to a valid signature (with ``secret``) for private,
        encrypted and presence channels, and ``""`` otherwise; ``sign=False``
        sends the frame without ``auth``. ``channel_data`` that is not a
        string is JSON-encoded (compact) and signed as sent.
        """
        data_text = None
        if channel_data is not None:
            data_text = channel_data if isinstance(channel_data, str) else json.dumps(
                channel_data, separators=(",", ":")
            )
        data: dict[str, Any] = {"channel": channel}
        if sign:
            if auth is None:
                auth = ""
                if channel_type(channel).kind.needs_signature and self.secret is not None:
                    auth = self.auth_for(channel, data_text)
            data["auth"] = auth
        if data_text is not None:
            data["channel_data"] = data_text
        await self.send_json({"event": "pusher:subscribe", "data": data})

    async def unsubscribe(self, channel: str) -> None:
        """Send ``pusher:unsubscribe``."""
        await self.send_json({"event": "pusher:unsubscribe", "data": {"channel": channel}})

    async def signin(self, user_data: Mapping[str, Any] | str, *, auth: str | None = None) -> str:
        """Send ``pusher:signin`` (signed with ``secret`` unless ``auth`` is given); returns the user_data sent."""
        text = user_data if isinstance(user_data, str) else json.dumps(dict(user_data), separators=(",", ":"))
        if auth is None:
            if self.secret is None:
                raise ValueError("no secret to sign with")
            auth = signin_auth(self.key, self.secret, self.socket_id, text)
        await self.send_json({"event": "pusher:signin", "data": {"auth": auth, "user_data": text}})
        return text

    async def trigger(self, channel: str, event: str, data: Any = None) -> None:
        """Send a client event (or any named event) on ``channel``."""
        await self.send_json({"event": event, "data": data, "channel": channel})

    async def ws_ping(self, payload: bytes = b"conformance", timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Send a WebSocket ping and wait for its pong.

        Raises:
            trio.TooSlowError: no pong within ``timeout``.
            SocketClosed: the connection closed.
        """
        if self.ws is None:
            raise SocketClosed(self.close_code or 1006, "not connected")
        with trio.fail_after(timeout):
            try:
                await self.ws.ping(payload)
            except trio_websocket.ConnectionClosed as exc:
                raise SocketClosed(*_close_of(exc)) from None

    # ------------------------------------------------------------ receiving

    async def next(self, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
        """The next event received (waiting at most ``timeout`` seconds).

        Raises:
            trio.TooSlowError: nothing came in time.
            SocketClosed: the connection closed and nothing is left to read.
        """
        with trio.fail_after(timeout):
            while not self._queue:
                if self._closed.is_set():
                    raise SocketClosed(self.close_code or 1006, self.close_reason or "")
                await self._changed.wait()
        return self._queue.popleft()

    async def expect(self, match: Match, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
        """The first event matching ``match`` (a class or a predicate); others are skipped.

        Raises:
            trio.TooSlowError: none came in time.
            SocketClosed: the connection closed first.
        """
        with trio.fail_after(timeout):
            while True:
                event = await self.next(timeout=timeout + 1)
                if _matches(match, event):
                    return event

    async def gather(self, seconds: float) -> list[Any]:
        """Every event that arrives within ``seconds`` (or until the connection closes)."""
        events: list[Any] = []
        with trio.move_on_after(seconds):
            while True:
                try:
                    events.append(await self.next(timeout=seconds + 1))
                except SocketClosed:
                    break
        return events

    async def wait_closed(self, timeout: float = 2.0) -> int:  # noqa: ASYNC109
        """Wait for the server to close the connection; returns the close code.

        Raises:
            trio.TooSlowError: still open after ``timeout``.
        """
        with trio.fail_after(timeout):
            await self._closed.wait()
        return self.close_code or 1006

    def _push(self, event: Any) -> None:
        self.received.append(event)
        self._queue.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def _ended(self, code: int, reason: str) -> None:
        if not self._closed.is_set():
            self.close_code, self.close_reason = code, reason
            self._closed.set()
        self._changed.set()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    self._ended(*_close_of(exc))
                    return
                if not isinstance(message, str):
                    self._push(Unreadable(text=repr(message), why="a binary frame"))
                    continue
                self.raw.append(message)
                event = _decode(message)
                self._push(event)
                if isinstance(event, Ping) and self.auto_pong:
                    with suppress(trio_websocket.ConnectionClosed):
                        await self.ws.send_message(encode(Pong(), role=Role.CLIENT))
                while len(self._queue) >= MAX_QUEUED:
                    await self._changed.wait()
        finally:
            self._ended(1006, "")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (a no-op when it is already closed)."""
        if self.ws is not None:
            with suppress(trio_websocket.ConnectionClosed), trio.move_on_after(2):
                await self.ws.aclose(code=code, reason=reason)


def _decode(text: str) -> Any:
    try:
        return decode(text, role=Role.CLIENT)
    except RemoteProtocolError as exc:
        return Unreadable(text=text, why=exc.message)


def _close_of(exc: trio_websocket.ConnectionClosed) -> tuple[int, str]:
    reason = exc.reason
    if reason is None:
        return 1006, ""
    return int(reason.code), reason.reason or ""


def socket_url(base: str, key: str, *, protocol: str | None = "7", query: Mapping[str, str] | None = None,
               path: str | None = None) -> str:
    """The URL pusher-js would open for ``key`` (``protocol=None`` leaves it out)."""
    params: dict[str, str] = {}
    if protocol is not None:
        params["protocol"] = protocol
    params.update({"client": "js", "version": "8.6.0", "flash": "false"})
    params.update(query or {})
    resource = path if path is not None else f"/app/{key}"
    return f"{base.rstrip('/')}{resource}?{urlencode(params)}"


@asynccontextmanager
async def open_fake_socket(
    base: str,
    key: str,
    *,
    secret: str | None = None,
    protocol: str | None = "7",
    query: Mapping[str, str] | None = None,
    path: str | None = None,
    auto_pong: bool = True,
    timeout: float = 3.0,  # noqa: ASYNC109
) -> AsyncIterator[FakeSocket]:
    """Open a socket to the server at ``base`` (``ws://host:port``) as app ``key``.

    Returns once the handshake is over, whatever its outcome: check
    :attr:`FakeSocket.established` (or :attr:`~FakeSocket.refusal`,
    :attr:`~FakeSocket.close_code`, :attr:`~FakeSocket.http_status`).
    ``path`` replaces ``/app/{key}`` (to test other paths).

    Raises:
        OSError: nothing listens at ``base``.
        trio.TooSlowError: the server did not finish the handshake within ``timeout``.
    """
    sock = FakeSocket(key, secret, auto_pong=auto_pong)
    url = socket_url(base, key, protocol=protocol, query=query, path=path)
    streams: list[trio.abc.Stream] = []
    entered = False
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout):
                ws = await connect_ws(nursery, url, streams)
            sock.ws = ws
            nursery.start_soon(sock._read)
            first: Any = None
            with suppress(SocketClosed):  # closed without a frame: the close code is the answer
                first = await sock.next(timeout=timeout)
            if isinstance(first, ConnectionEstablished):
                sock.established = first
            else:
                if isinstance(first, Error):
                    sock.refusal = first
                elif first is not None:
                    sock._queue.appendleft(first)
                with trio.move_on_after(1):
                    await sock._closed.wait()
            entered = True
            try:
                yield sock
            finally:
                with trio.CancelScope(shield=True):
                    await sock.close()
                nursery.cancel_scope.cancel()
    except (trio_websocket.ConnectionRejected, BaseExceptionGroup) as exc:
        # trio-websocket raises a refused upgrade from its reader task, into the nursery.
        rejected = _rejection(exc)
        if entered:
            raise
        if rejected is None:
            raise _alone(exc) from None
        sock.http_status = rejected.status_code
        sock._ended(1006, "upgrade refused")
        yield sock
    finally:
        for stream in streams:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)


async def connect_ws(
    nursery: trio.Nursery, url: str, streams: list[trio.abc.Stream]
) -> trio_websocket.WebSocketConnection:
    """A trio-websocket client connection over a stream this module owns (appended to
    ``streams``, for the caller to close: trio-websocket leaves the stream of a refused
    upgrade open).

    Raises:
        trio_websocket.ConnectionRejected: the upgrade was refused (maybe through ``nursery``).
        OSError: no connection, or not a WebSocket server.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "127.0.0.1"
    tcp = await trio.open_tcp_stream(host, parts.port or (443 if secure else 80))
    streams.append(tcp)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
    if secure:
        stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host, https_compatible=True)
        streams.append(stream)
    resource = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, parts.netloc, resource, message_queue_size=64, max_message_size=16 * 1024 * 1024
        )
    except trio_websocket.HandshakeError as exc:
        raise _handshake_failure(exc) from None
    ws._disconnect_timeout = 1.0  # type: ignore[attr-defined]  # a vanished server must not hold us 60 s
    return ws


def _rejection(exc: BaseException) -> trio_websocket.ConnectionRejected | None:
    """The refused upgrade in ``exc`` (alone or in a group of them), if that is all it is."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_rejection(e) for e in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return leaves[0]
    return None


def _alone(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (what failed while connecting)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _handshake_failure(exc: trio_websocket.HandshakeError) -> BaseException:
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return exc
    return OSError(f"WebSocket handshake failed: {exc}")
