"""The Pusher socket client: a Pusher Channels connection for Python applications and tests.

::

    async with connect("ws://127.0.0.1:6001", "app-key", secret="app-secret") as client:
        await client.subscribe("private-chat")
        await client.trigger("private-chat", "client-typing", {"who": "me"})
        event = await client.next_event("new-message", channel="private-chat")

Private and presence subscriptions are signed with ``secret`` when given
(handy in tests and trusted scripts), or by ``authorizer(socket_id, channel)``
returning the auth endpoint's JSON; with neither, they go out unsigned and the
relay asks its pipe (pipe-protocol.md 5). Every event the relay sends (but
pings, answered here) is queued for :meth:`PusherClient.next_event` and
``async for``; the queue is bounded, so a client that stops reading stops
reading the socket too. No automatic reconnection.

Its WebSocket is the package's client stack (:mod:`._wsclient`), the one
``open_pipe`` runs on; the protocol (handshake, heartbeat, which error
answers a sign-in) is :class:`~pipe_proto.pusher.PusherConnection`'s.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlencode

import attrs
import trio

from pipe_proto import __version__
from pipe_proto.errors import ProtocolError, RemoteProtocolError
from pipe_proto.jsontext import dumps
from pipe_proto.names import ChannelKind, channel_type
from pipe_proto.pusher import (
    ConnectionState,
    Error,
    Message,
    Ping,
    Pong,
    PusherConnection,
    PusherEvent,
    Role,
    SignIn,
    SignInError,
    SignInSuccess,
    Subscribe,
    SubscriptionError,
    SubscriptionSucceeded,
    Unsubscribe,
)
from pipe_proto.signatures import channel_auth, signin_auth

from ._wsclient import ClientWebSocket, ConnectionClosed, HandshakeRefused, open_websocket

__all__ = ["PusherClient", "SignInFailed", "SubscriptionFailed", "connect"]

Authorizer = Callable[[str, str], Any]


@attrs.define
class SubscriptionFailed(Exception):
    """The relay refused a subscription (the fields of ``pusher:subscription_error``)."""

    channel: str
    type: str
    error: str
    status: int


class SignInFailed(ProtocolError):
    """The relay refused a sign-in."""


class PusherClient:
    """One connection to a relay (made by :func:`connect`)."""

    def __init__(
        self,
        ws: ClientWebSocket,
        conn: PusherConnection,
        key: str,
        secret: str | None,
        authorizer: Authorizer | None,
        buffer: int,
    ) -> None:
        self.ws = ws
        self.conn = conn
        self.key = key
        self._secret = secret
        self._authorizer = authorizer
        self._send_events, self._events = trio.open_memory_channel[PusherEvent](buffer)
        self._waiters: dict[str, tuple[trio.Event, list[PusherEvent]]] = {}
        self._signin: tuple[trio.Event, list[PusherEvent]] | None = None
        self.channels: set[str] = set()
        self._bindings: dict[tuple[str, str | None], list[Callable[[Message], Any]]] = {}
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def socket_id(self) -> str:
        """The id the relay gave this connection."""
        assert self.conn.socket_id is not None
        return self.conn.socket_id

    # ------------------------------------------------------------- sending

    async def send(self, event: PusherEvent) -> None:
        """Send any client event of the protocol."""
        await self.ws.send_message(self.conn.send(event))

    async def send_event(self, event: str, data: Any = None, channel: str | None = None) -> None:
        """Send a raw event (``pusher.send_event`` in pusher-js): the back channel."""
        await self.send(Message(event=event, data=data, channel=channel))

    async def trigger(self, channel: str, event: str, data: Any = None) -> None:
        """Send a client event (``client-`` prefix) on a channel."""
        await self.send_event(event, data, channel)

    async def _auth(self, channel: str, channel_data: Any) -> tuple[str, str | None]:
        kind = channel_type(channel).kind
        if kind not in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE):
            return "", None
        if channel_data is None or isinstance(channel_data, str):
            data = channel_data
        else:
            data = dumps(channel_data)
        if self._authorizer is not None:
            answer = self._authorizer(self.socket_id, channel)
            if inspect.isawaitable(answer):
                answer = await answer
            return str(answer.get("auth", "")), answer.get("channel_data")
        if self._secret is not None:
            return channel_auth(self.key, self._secret, self.socket_id, channel, data), data
        return "", data

    async def subscribe(self, channel: str, *, channel_data: Any = None) -> PusherEvent:
        """Subscribe and wait for the outcome.

        Args:
            channel: the channel name.
            channel_data: for presence channels signed with ``secret``: the
                member, ``{"user_id": ..., "user_info": ...}``.

        Returns:
            The ``subscription_succeeded`` event (with the members on presence).

        Raises:
            SubscriptionFailed: the relay refused.
        """
        auth, data = await self._auth(channel, channel_data)
        done = trio.Event()
        box: list[PusherEvent] = []
        self._waiters[channel] = (done, box)
        await self.send(Subscribe(channel=channel, auth=auth, channel_data=data))
        await done.wait()
        result = box[0]
        if isinstance(result, SubscriptionError):
            raise SubscriptionFailed(result.channel, result.type, result.error, result.status)
        self.channels.add(channel)
        return result

    async def unsubscribe(self, channel: str) -> None:
        """Leave a channel (the relay does not answer)."""
        self.channels.discard(channel)
        await self.send(Unsubscribe(channel=channel))

    async def signin(self, user_data: Mapping[str, Any] | str, *, auth: str | None = None) -> str:
        """Sign in; returns the ``user_data`` string the relay confirmed.

        Signed with ``secret`` unless ``auth`` is given (``""``: ask the pipe).

        Raises:
            SignInFailed: the relay answered with an error.
        """
        text = user_data if isinstance(user_data, str) else dumps(dict(user_data))
        if auth is None:
            auth = signin_auth(self.key, self._secret, self.socket_id, text) if self._secret else ""
        done = trio.Event()
        box: list[PusherEvent] = []
        self._signin = (done, box)
        await self.send(SignIn(auth=auth, user_data=text))
        await done.wait()
        result = box[0]
        if isinstance(result, Error):
            raise SignInFailed(result.message, code=result.code)
        assert isinstance(result, SignInSuccess)
        return result.user_data

    def bind(self, event: str, handler: Callable[[Message], Any], *, channel: str | None = None) -> None:
        """Call ``handler(message)`` (sync or async) for every ``event`` (on ``channel``, if given).

        Handlers run in the reader, before the event is queued for
        :meth:`next_event`; a slow one slows reading.
        """
        self._bindings.setdefault((event, channel), []).append(handler)

    def unbind(self, event: str, handler: Callable[[Message], Any], *, channel: str | None = None) -> None:
        """Remove a handler added with :meth:`bind`."""
        handlers = self._bindings.get((event, channel), [])
        if handler in handlers:
            handlers.remove(handler)

    async def ping(self) -> None:
        """Send ``pusher:ping`` (the relay answers ``pusher:pong``)."""
        await self.send(Ping())

    # ----------------------------------------------------------- receiving

    async def next_event(
        self, event: str | type[PusherEvent] | None = None, *, channel: str | None = None
    ) -> Any:
        """The next received event matching ``event`` (a name or a class) and ``channel``.

        Events that do not match are skipped (and lost).

        Raises:
            trio.EndOfChannel: the connection closed first.
        """
        while True:
            item = await self._events.receive()
            if channel is not None and getattr(item, "channel", None) != channel:
                continue
            if event is None:
                return item
            if isinstance(event, str):
                if isinstance(item, Message) and item.event == event:
                    return item
            elif isinstance(item, event):
                return item

    def __aiter__(self) -> AsyncIterator[PusherEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[PusherEvent]:
        async for item in self._events:
            yield item

    async def _read(self) -> None:
        try:
            while True:
                try:
                    text = await self.ws.get_message()
                except ConnectionClosed as exc:
                    self.close_code, self.close_reason = exc.code, exc.reason
                    return
                if not isinstance(text, str):
                    continue
                try:
                    event = self.conn.receive(text, trio.current_time())
                except RemoteProtocolError:
                    continue
                if isinstance(event, Ping):
                    with suppress(ConnectionClosed):  # get_message() reports it next
                        await self.send(Pong())
                    continue
                if isinstance(event, (SubscriptionSucceeded, SubscriptionError)):
                    waiter = self._waiters.pop(event.channel, None)
                    if waiter is not None:
                        waiter[1].append(event)
                        waiter[0].set()
                elif self._signin is not None and isinstance(event, (SignInSuccess, SignInError)):
                    self._signin[1].append(event)
                    self._signin[0].set()
                    self._signin = None
                if isinstance(event, Message) and self._bindings:
                    handlers = list(self._bindings.get((event.event, None), ()))
                    if event.channel is not None:
                        handlers += self._bindings.get((event.event, event.channel), ())
                    for handler in handlers:
                        result = handler(event)
                        if inspect.isawaitable(result):
                            await result
                await self._send_events.send(event)
        finally:
            self._send_events.close()
            for done, box in self._waiters.values():
                box.append(SubscriptionError(channel="", type="Closed", error="connection closed", status=0))
                done.set()
            if self._signin is not None:
                self._signin[1].append(Error(code=None, message="connection closed"))
                self._signin[0].set()

    async def _heartbeat(self) -> None:
        while self.conn.state is ConnectionState.OPEN:
            await trio.sleep_until(self.conn.deadline())
            action = self.conn.tick(trio.current_time())
            try:
                if action is not None and action.send is not None:
                    await self.ws.send_message(action.send)
                if action is not None and action.close_code is not None:
                    await self.ws.aclose(code=4000, reason="no pong")
                    return
            except ConnectionClosed:
                return  # the relay closed first: _read has recorded why

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection."""
        await self.ws.aclose(code=code, reason=reason)


@asynccontextmanager
async def connect(
    url: str,
    key: str,
    *,
    secret: str | None = None,
    authorizer: Authorizer | None = None,
    protocol: int = 7,
    query: Mapping[str, str] | None = None,
    buffer: int = 1000,
    ssl_context: ssl.SSLContext | None = None,
    activity_timeout: float = 120.0,
    max_message: int = 1024 * 1024,
) -> AsyncIterator[PusherClient]:
    """Connect to a relay at ``url`` (``ws[s]://host:port``) as app ``key``.

    Returns once ``pusher:connection_established`` arrived. A message
    longer than ``max_message`` bytes closes the connection (1009).

    Raises:
        RemoteProtocolError: the relay refused the connection: ``code`` is
            the Pusher error code (e.g. 4001 for an unknown key), or the
            HTTP status when it refused the WebSocket upgrade itself.
        OSError: no connection.
        trio.TooSlowError: no handshake within 10 seconds.
    """
    params = {"protocol": str(protocol), "client": "pipe_trio", "version": __version__, **(query or {})}
    full = f"{url.rstrip('/')}/app/{key}?{urlencode(params)}"
    refused = None
    try:
        async with open_websocket(full, ssl_context=ssl_context, max_message=max_message) as ws:
            conn = PusherConnection(Role.CLIENT, now=trio.current_time(), activity_timeout=activity_timeout)
            try:
                first = await ws.get_message()
            except ConnectionClosed as exc:
                raise RemoteProtocolError("connection closed during the handshake", code=exc.code) from None
            conn.receive(first, trio.current_time())
            client = PusherClient(ws, conn, key, secret, authorizer, buffer)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._read)
                nursery.start_soon(client._heartbeat)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    except HandshakeRefused as exc:
        refused = exc
    if refused is not None:
        body = refused.body.decode("utf-8", "replace")
        raise RemoteProtocolError(f"upgrade refused: {refused.status_code} {body}".rstrip(), code=refused.status_code)
