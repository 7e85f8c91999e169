"""``open_pipe``: a backend's connection to the relay, in Trio style.

::

    async with open_pipe("ws://127.0.0.1:6001", app_id="1", key=KEY, secret=SECRET) as pipe:
        @pipe.sockets.on("event:eventFromBrowser")
        async def answer(socket_id, data):
            await pipe.socket(socket_id).trigger("acknowledge", {"message": "Rodger"})

        await pipe.wait_closed()       # or: async for event in pipe: ...

The pipe speaks protocol 1.0. It reconnects with back-off when the relay
goes away and resumes its session, so events pending on the relay are
replayed, not lost. Every notification is handed to the registered handlers
(sync or async; called in order, one at a time) and to whoever iterates the
pipe, and is acked only after that returns: delivery is *at least once*.
Events replayed after a resume never reach the application twice (the pipe
drops those it has processed); an event moved from a member that died
before acking arrives with ``redelivered`` set (see :meth:`Pipe.events`) and
may already have been processed there. Make such handlers idempotent, or
deduplicate on something in the event itself.

Notifications wait until the application can take them: once a handler is
registered or an ``async for`` over the pipe has begun (events replayed on
connecting are often there before the body of ``async with`` runs). After
an ``async for`` has begun, one no handler takes waits for the next.

Backpressure: the relay sends a member at most ``window`` unacked events; a
slow handler therefore slows the stream instead of growing a buffer here.
An exception escaping a handler ends ``open_pipe`` with that exception.

Leaving: a normal exit of ``async with`` leaves the group for good (the
``leave`` method), so the relay moves this member's sockets to the others at
once; ``keep_session=True`` keeps the session for a restart that resumes it.
"""

from __future__ import annotations

import inspect
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import attrs
import trio

from pipe_proto import PipeCode, __version__
from pipe_proto.errors import LocalProtocolError, ProtocolError
from pipe_proto.jsontext import dumps
from pipe_proto.pipe import events as ev
from pipe_proto.pipe.client import ClientState, PipeClientConnection
from pipe_proto.pipe.handshake import pipe_url

from ._wsclient import ClientWebSocket, ConnectionClosed, HandshakeRefused, open_websocket

__all__ = ["AuthAnswer", "Pipe", "PipeDisconnectedError", "PipeError", "PipeRefusedError", "open_pipe"]

log = logging.getLogger("pipe_trio.pipe")

#: Seconds an auth handler may take; the relay has given up by then (5 s by default).
AUTH_TIMEOUT = 30.0
#: Notifications held before the reader stops reading (the relay's window
#: keeps the real number far lower; this only guards against a broken relay).
MAX_QUEUED = 20000
#: Largest frame read from the relay (its own frames are far smaller).
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Seconds to wait for the relay's answer to ``leave`` on the way out.
LEAVE_TIMEOUT = 5.0

Handler = Callable[..., Any]


class PipeError(ProtocolError):
    """The relay answered a request with an error (``code`` from :class:`~pipe_proto.PipeCode`)."""


class PipeRefusedError(PipeError):
    """The relay refused the pipe's handshake (``code`` is the HTTP status)."""


class PipeDisconnectedError(PipeError):
    """The request could not be sent: the pipe is not connected right now."""


@attrs.frozen(kw_only=True)
class AuthAnswer:
    """What an auth handler may return for full control over the answer."""

    allow: bool
    data: dict[str, Any] | None = None
    reason: str | None = None


class _Emitter:
    """Handlers by event name, as the 2011 client's EventEmitters had them.

    ``consumers`` is set once any handler is registered (see :meth:`Pipe._deliver`,
    which also reads ``_handlers`` to skip emitters with none for a name).
    """

    def __init__(self, consumers: trio.Event) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._consumers = consumers

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register ``handler`` for ``name``; usable as a decorator."""
        if handler is None:
            return lambda fn: self.on(name, fn)
        self._handlers.setdefault(name, []).append(handler)
        self._consumers.set()
        return handler

    def off(self, name: str, handler: Handler) -> None:
        """Remove a handler."""
        if handler in self._handlers.get(name, []):
            self._handlers[name].remove(handler)

    async def emit(self, name: str, *args: Any) -> bool:
        """Call the handlers of ``name`` in order; whether there were any."""
        handlers = self._handlers.get(name)
        if not handlers:  # the usual case for most names: nothing to copy
            return False
        for handler in list(handlers):
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        return True


class SocketRef(_Emitter):
    """``pipe.socket(id)``: send to one socket, and its own handlers."""

    def __init__(self, pipe: Pipe, socket_id: str) -> None:
        super().__init__(pipe._consumers)
        self.pipe = pipe
        self.id = socket_id

    async def trigger(
        self, event: str, data: Any = None, *, channel: str | None = None, wait: bool = True
    ) -> int | None:
        """Send ``event`` to this socket; returns how many sockets got it (0 or 1).

        With ``wait=False`` the request goes out without waiting for the
        relay's reply (``None`` is returned; a failure is logged when the
        relay reports it): much faster in a loop.
        """
        call = ev.SendToSocket(socket_ids=[self.id], event=event, data=_text(data), channel=channel)
        if not wait:
            await self.pipe.send(call)
            return None
        result = await self.pipe.request(call)
        return int(result.get("delivered", 0)) if isinstance(result, dict) else 0

    async def disconnect(self, code: int = 4009, reason: str = "") -> bool:
        """Close this socket."""
        return await self.pipe.disconnect_socket(self.id, code, reason)


class ChannelRef(_Emitter):
    """``pipe.channel(name)``: publish to a channel, and its handlers."""

    def __init__(self, pipe: Pipe, name: str) -> None:
        super().__init__(pipe._consumers)
        self.pipe = pipe
        self.name = name

    async def trigger(
        self, event: str, data: Any = None, *, exclude: str | None = None, wait: bool = True
    ) -> int | None:
        """Publish ``event`` to every subscriber but ``exclude``; returns deliveries.

        ``wait=False``: as for :meth:`SocketRef.trigger`.
        """
        call = ev.SendToChannel(channels=[self.name], event=event, data=_text(data), exclude=exclude)
        if not wait:
            await self.pipe.send(call)
            return None
        result = await self.pipe.request(call)
        return int(result.get("delivered", 0)) if isinstance(result, dict) else 0


#: Notices a pipe receives whatever its ``events=`` (see :meth:`Pipe._deliver`).
_UNASKED = (ev.Gap, ev.AuthRequest)


def _text(data: Any) -> str:
    return data if isinstance(data, str) else dumps(data)


class Pipe:
    """A connected pipe (made by :func:`open_pipe`)."""

    def __init__(
        self,
        url: str,
        *,
        app_id: str,
        key: str,
        secret: str,
        events: Iterable[str],
        group: str | None,
        auth: Callable[[ev.AuthRequest], Any] | None,
        ssl_context: ssl.SSLContext | None,
        reconnect: bool,
        max_backoff: float,
        client_name: str,
        keep_session: bool = False,
    ) -> None:
        self._base = url.rstrip("/")
        self.app_id = app_id
        self._key = key
        self._secret = secret
        self.group = group
        self._auth = auth
        self._ssl = ssl_context
        self._reconnect = reconnect
        self._max_backoff = max_backoff
        self._client_name = client_name
        self.core = PipeClientConnection(events=[*events, *(["auth"] if auth is not None else [])])
        #: On a normal exit of ``open_pipe``, keep the session on the relay
        #: (for a restart that resumes it) instead of leaving the group.
        self.keep_session = keep_session
        self._leaving = False
        # Set once the application can take notifications: a handler is
        # registered, someone iterates, or an auth handler was given.
        self._consumers = trio.Event()
        if auth is not None:
            self._consumers.set()
        self.sockets = _Emitter(self._consumers)
        self.channels = _Emitter(self._consumers)
        self._emitter = _Emitter(self._consumers)
        self._sockets: dict[str, SocketRef] = {}
        self._channels: dict[str, ChannelRef] = {}
        self._ws: ClientWebSocket | None = None
        # Set when calls are queued (Pipe.send): the session's flusher writes them.
        self._outgoing = trio.Event()
        self._replies: dict[int, tuple[trio.Event, list[Any]]] = {}
        # Notifications received and not processed yet, with the epoch (session) of each.
        self._queue: deque[tuple[int, ev.Notification]] = deque()
        self._queued = trio.Event()
        self._room = trio.Event()
        self._iterators = 0
        self._iterated = False  # an ``async for`` has begun (see _deliver)
        self._waiting_logged = False  # an event waited with no loop running: said once
        self._handoff_send, self._handoff_receive = trio.open_memory_channel[tuple[ev.Notification, trio.Event]](0)
        self._connected = trio.Event()
        self._reconnected = trio.Event()
        self._established = 0
        self._closed = trio.Event()
        self._tasks: trio.Nursery | None = None
        self.connections = 0

    # ----------------------------------------------------------------- API

    def on(self, name: str, handler: Handler | None = None) -> Any:
        """Register a handler for a notification (``socket_opened``, ``member_added``, ...).

        The handler gets the typed notice (e.g. :class:`~pipe_proto.pipe.MemberAdded`).
        """
        return self._emitter.on(name, handler)

    def socket(self, socket_id: str) -> SocketRef:
        """The socket ``socket_id`` (its handlers are kept until it closes)."""
        ref = self._sockets.get(socket_id)
        if ref is None:
            ref = self._sockets[socket_id] = SocketRef(self, socket_id)
        return ref

    def channel(self, name: str) -> ChannelRef:
        """The channel ``name``."""
        ref = self._channels.get(name)
        if ref is None:
            ref = self._channels[name] = ChannelRef(self, name)
        return ref

    @property
    def session(self) -> str | None:
        """The relay's session id for this pipe (kept across reconnects)."""
        return self.core.session

    @property
    def acked_seq(self) -> int:
        """The highest seq acked to the relay (everything up to it is done)."""
        return self.core.acked

    @property
    def last_seq(self) -> int:
        """The highest seq the application has finished (acked soon after)."""
        return self.core.last_processed

    @property
    def socket_id(self) -> str | None:
        """This pipe's own connection id."""
        return self.core.socket_id

    async def request(self, call: ev.PipeCall) -> Any:
        """Send a request and wait for its reply.

        Raises:
            PipeError: the relay answered with an error.
            PipeDisconnectedError: the pipe is not connected.
        """
        ws = self._ws
        if ws is None or self.core.state is not ClientState.OPEN:
            raise PipeDisconnectedError("the pipe is not connected", code=None)
        request_id, text = self.core.request(call)
        assert request_id is not None
        done = trio.Event()
        box: list[Any] = []
        self._replies[request_id] = (done, box)
        try:
            try:
                await self._write(ws, text)
            except ConnectionClosed:
                raise PipeDisconnectedError("the pipe disconnected", code=None) from None
            await done.wait()
        finally:
            self._replies.pop(request_id, None)
        reply = box[0]
        if isinstance(reply, ev.ErrorReply):
            raise PipeError(reply.message, code=reply.code)
        if reply is None:
            raise PipeDisconnectedError("the pipe disconnected before the reply", code=None)
        return reply.result

    async def send(self, call: ev.PipeCall) -> None:
        """Send a request without waiting for (or getting) a reply.

        The relay answers only if the request fails, with an error
        notification, which is logged. The call is queued and written once
        every task running now had its turn: the calls made meanwhile (a
        burst of answers) go out with it in one frame, a ``batch``, and
        before any later request or ack. A full queue (100 calls or about
        16 KiB) is written before another call is queued (that call waits
        for the write; cancelled meanwhile, it is not made). Calls still queued when the connection
        ends go out first on the next one (or, when the pipe ends, are
        logged as not sent); as with any write, calls already handed to the
        kernel when a connection breaks may be lost.

        Raises:
            PipeDisconnectedError: the pipe is not connected.
        """
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: the call is not made
        ws = self._ws
        if ws is None or self.core.state is not ClientState.OPEN:
            raise PipeDisconnectedError("the pipe is not connected", code=None)
        try:
            if isinstance(call, (ev.Batch, ev.Leave)):
                _, text = self.core.request(call, reply=False)
                await self._write(ws, text)
                return
            while self.core.full:
                # Filled by an earlier call (which left it to the flusher),
                # or by others while this one waited: it is written before
                # this call is queued, so no call is queued beyond the bound,
                # and a cancellation here leaves this one unmade.
                await self._write(ws)
            self.core.queue(call)
        except ConnectionClosed:
            raise PipeDisconnectedError("the pipe disconnected", code=None) from None
        except LocalProtocolError:  # the connection ended while a write waited
            raise PipeDisconnectedError("the pipe disconnected", code=None) from None
        # Written by the flusher once the running tasks had their turn: the
        # calls they make meanwhile (a burst of answers) go together. Once
        # queued, the call is made: nothing after this point can be cancelled.
        self._outgoing.set()

    async def _write(self, ws: ClientWebSocket, *texts: str) -> None:
        """Write ``texts`` after the calls queued before them, in one write.

        The queued calls are taken only once the write is sure to begin: a
        cancelled writer or a closed connection leaves them queued.
        """
        core = self.core

        def take() -> list[str]:
            return [*core.take_queued(), *texts]

        await ws.send_messages(take)

    async def _flush(self, ws: ClientWebSocket) -> None:
        """Write the queued calls once every task running now had its turn to add to them."""
        while True:
            await self._outgoing.wait()
            self._outgoing = trio.Event()
            if self.core.queued and self.core.state is ClientState.OPEN:
                try:
                    await self._write(ws)
                except ConnectionClosed:
                    return  # the session ends; the calls stay queued for the next one

    @property
    def types(self) -> list[str]:
        """The event types this pipe receives (subscribed again on a fresh session)."""
        return list(self.core.events)

    async def subscribe(self, *types: str) -> None:
        """Receive more event types (kept across reconnects).

        Raises:
            PipeError: the relay refused (e.g. 4240, an unknown type).
            PipeDisconnectedError: the pipe is not connected (nothing changes).
        """
        await self.request(ev.SubscribeEvents(events=types))

    async def unsubscribe(self, *types: str) -> None:
        """Stop receiving event types (as :meth:`subscribe`)."""
        await self.request(ev.UnsubscribeEvents(events=types))

    async def send_to_sockets(self, socket_ids: Iterable[str], event: str, data: Any = None) -> int:
        """Send one event to several sockets; returns how many got it."""
        call = ev.SendToSocket(socket_ids=list(socket_ids), event=event, data=_text(data))
        result = await self.request(call)
        return int(result.get("delivered", 0))

    async def disconnect_socket(self, socket_id: str, code: int = 4009, reason: str = "") -> bool:
        """Close a socket (pusher-js does not reconnect after 4000-4099)."""
        result = await self.request(ev.DisconnectSocket(socket_id=socket_id, code=code, reason=reason))
        return bool(result.get("disconnected"))

    async def terminate_user(self, user_id: str) -> int:
        """Close every socket signed in as ``user_id``; returns how many."""
        result = await self.request(ev.TerminateUser(user_id=user_id))
        return int(result.get("terminated", 0))

    async def ping(self) -> None:
        """Round trip to the relay."""
        await self.request(ev.PingCall())

    def __aiter__(self) -> AsyncIterator[ev.Notice]:
        return self._iterate(meta=False)

    def events(self, *, meta: bool = False) -> AsyncIterator[Any]:
        """Iterate notices; with ``meta``, the :class:`~pipe_proto.pipe.Notification` envelopes
        (``seq``, ``time_ms``, ``redelivered``)."""
        return self._iterate(meta=meta)

    async def _iterate(self, *, meta: bool) -> AsyncIterator[Any]:
        self._iterators += 1
        self._iterated = True
        self._consumers.set()
        try:
            while True:
                try:
                    notification, done = await self._handoff_receive.receive()
                except trio.EndOfChannel:
                    return
                try:
                    yield notification if meta else notification.notice
                finally:
                    # Runs when the consumer asks for the next event (or stops):
                    # only then is this one processed, and may be acked.
                    done.set()
        finally:
            self._iterators -= 1

    async def wait_connected(self, *, after: int = 0) -> None:
        """Wait until the pipe is connected; with ``after=n``, by its connection number n+1 or later.

        ``pipe.connections`` counts connections made so far, so
        ``await pipe.wait_connected(after=pipe.connections)`` waits for a reconnection.
        """
        while not (self._connected.is_set() and self._established > after):
            await self._connected.wait()
            if self._established <= after:
                await self._reconnected.wait()

    async def wait_closed(self) -> None:
        """Wait until the pipe ends (it does not on its own while ``reconnect`` is on)."""
        await self._closed.wait()

    # ------------------------------------------------------------- running

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with _unwrapped():
                await self._loop(task_status)
        finally:
            self._closed.set()
            self._handoff_send.close()

    async def _loop(self, task_status: Any) -> None:
        attempt = 0
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            nursery.start_soon(self._dispatch)
            while True:
                try:
                    await self._connection(None if self.connections else task_status)
                    attempt = 0
                except PipeRefusedError:
                    if not self.connections or not self._reconnect:
                        raise
                    log.warning("pipe refused by the relay; retrying")
                except (OSError, trio.TooSlowError, ConnectionClosed, trio.BrokenResourceError) as exc:
                    if not self.connections and not self._reconnect:
                        raise PipeDisconnectedError(f"cannot connect: {exc}", code=None) from exc
                    log.info("pipe connection failed: %s", exc)
                if not self._reconnect:
                    break
                attempt += 1
                delay = min(self._max_backoff, 0.1 * 2 ** min(attempt, 10)) * (0.5 + random.random() / 2)
                log.info("pipe reconnecting in %.1fs", delay)
                await trio.sleep(delay)
            nursery.cancel_scope.cancel()

    async def _connection(self, task_status: Any) -> None:
        params = self.core.connecting(trio.current_time())
        url = pipe_url(
            self._base,
            app_id=self.app_id,
            key=self._key,
            secret=self._secret,
            now=time.time(),
            group=self.group,
            session=params.get("session"),
            last_seq=int(params["last_seq"]) if "last_seq" in params else None,
            client=self._client_name,
        )
        refused: HandshakeRefused | None = None
        code: int | None = None
        try:
            async with open_websocket(url, ssl_context=self._ssl, max_message=MAX_FRAME_BYTES) as ws:
                try:
                    await self._session(ws, task_status)
                finally:
                    code = ws.closed.code if ws.closed is not None else None
        except HandshakeRefused as exc:
            refused = exc
        finally:
            if self.core.state is not ClientState.CLOSED:
                self.core.closed(code)
                if self.core.session is None and code == PipeCode.SESSION_TAKEN_OVER:
                    log.warning("another connection resumed this pipe's session; starting a fresh one")
        if refused is not None:
            body = refused.body.decode("utf-8", "replace")
            message = f"relay refused the pipe: {refused.status_code} {body}"
            raise PipeRefusedError(message, code=refused.status_code)

    async def _session(self, ws: ClientWebSocket, task_status: Any) -> None:
        self._ws = ws
        self.connections += 1
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(self._heartbeat, ws)
                inner.start_soon(self._flush, ws)
                await self._read(ws, task_status)
                inner.cancel_scope.cancel()
        finally:
            self._ws = None
            self._connected = trio.Event()
            for done, box in self._replies.values():
                box.append(None)
                done.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await ws.aclose()

    async def _read(self, ws: ClientWebSocket, task_status: Any) -> None:
        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed:
                return
            if not isinstance(text, str):
                continue
            try:
                items = list(self.core.receive(text, trio.current_time()))
            except ProtocolError as exc:
                log.warning("unreadable frame from the relay: %s", exc)
                continue
            for item in items:
                if item.send is not None:
                    await self._write(ws, item.send)
                if item.established is not None:
                    self._on_established(item.established)
                    if self.core.queued:
                        self._outgoing.set()  # calls queued while the last connection ended
                    # open_pipe returns once a fresh session's subscribe was answered.
                    if task_status is not None and self.core.subscribing is None:
                        task_status.started()
                        task_status = None
                elif item.reply is not None and task_status is not None and self.core.subscribing is None:
                    if isinstance(item.reply, ev.ErrorReply):
                        log.warning("subscribing failed: %s %s", item.reply.code, item.reply.message)
                    task_status.started()
                    task_status = None
                elif item.reply is not None:
                    waiter = self._replies.get(item.reply.id)  # type: ignore[arg-type]
                    if waiter is not None:
                        waiter[1].append(item.reply)
                        waiter[0].set()
                elif item.error is not None:
                    log.warning("relay error %s: %s", item.error.code, item.error.message)
                elif item.notification is not None:
                    while len(self._queue) >= MAX_QUEUED:
                        self._room = trio.Event()
                        await self._room.wait()
                    self._queue.append((self.core.epoch, item.notification))
                    self._queued.set()

    def _on_established(self, notice: ev.Established) -> None:
        log.info(
            "pipe connected as %s (session %s, resumed %s, gap %s)",
            notice.socket_id, notice.session, notice.resumed, notice.gap,
        )
        self._established += 1
        self._connected.set()
        self._reconnected.set()
        self._reconnected = trio.Event()

    async def _heartbeat(self, ws: ClientWebSocket) -> None:
        while True:
            await trio.sleep_until(max(self.core.deadline(), trio.current_time() + 0.01))
            action = self.core.tick(trio.current_time())
            if action is True:
                log.info("relay silent for two heartbeats; reconnecting")
                await ws.aclose(code=4201, reason="relay silent")
                return
            if isinstance(action, str):
                await self._write(ws, action)

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:
                self._queued = trio.Event()
                if self._ws is not None:
                    ack = self.core.take_ack(force=True)
                    if ack is not None:
                        await self._send_quietly(ack)
                await self._queued.wait()
            if self._leaving:
                await trio.sleep_forever()  # what is not processed goes to the other members
            epoch, notification = self._queue.popleft()
            self._room.set()
            await self._deliver(notification)
            self.core.processed(notification.seq, epoch)
            ack = self.core.take_ack()
            if ack is not None:
                await self._send_quietly(ack)

    async def _send_quietly(self, text: str | None) -> None:
        """Write ``text`` (and the calls queued before it; ``None``: those alone), if connected."""
        ws = self._ws
        if ws is not None:
            with suppress(ConnectionClosed):
                await self._write(ws, *(() if text is None else (text,)))

    async def _deliver(self, notification: ev.Notification) -> None:
        # Events replayed on connecting may be here before the application
        # has entered its ``async for``: they wait for it (or for handlers)
        # instead of counting as processed with nobody having seen them.
        if not self._consumers.is_set():
            await self._consumers.wait()
        notice = notification.notice
        handled = False
        if isinstance(notice, ev.SocketMessage):
            # An emitter is asked for handlers before its emit is awaited:
            # most have none, and an emit awaited for nothing still makes and
            # runs a coroutine, for every message.
            named = "event:" + notice.name
            if notice.channel is not None:
                handlers = self.channels._handlers
                if "event" in handlers:
                    handled |= await self.channels.emit(
                        "event", notice.name, notice.channel, notice.socket_id, notice.data
                    )
                if named in handlers:
                    handled |= await self.channels.emit(named, notice.channel, notice.socket_id, notice.data)
                channel = self._channels.get(notice.channel)
                if channel is not None:
                    handled |= await channel.emit("event", notice.name, notice.socket_id, notice.data)
                    handled |= await channel.emit(named, notice.socket_id, notice.data)
            else:
                handlers = self.sockets._handlers
                if "event" in handlers:
                    handled |= await self.sockets.emit("event", notice.name, notice.socket_id, notice.data)
                if named in handlers:
                    handled |= await self.sockets.emit(named, notice.socket_id, notice.data)
                socket = self._sockets.get(notice.socket_id)
                if socket is not None:
                    handled |= await socket.emit("event", notice.name, notice.data)
                    handled |= await socket.emit(named, notice.data)
        elif isinstance(notice, ev.SocketOpened):
            handled |= await self.sockets.emit("open", notice.socket_id)
        elif isinstance(notice, ev.SocketClosed):
            handled |= await self.sockets.emit("close", notice.socket_id)
            socket = self._sockets.pop(notice.socket_id, None)
            if socket is not None:
                handled |= await socket.emit("close")
        elif isinstance(notice, ev.AuthRequest) and self._auth is not None and self._tasks is not None:
            # Each authorization is answered on its own: one slow decision
            # must not hold up the others (the relay times each out anyway).
            self._tasks.start_soon(self._answer_auth, notice)
            handled = True
        if notice.event in self._emitter._handlers:
            handled |= await self._emitter.emit(notice.event, notice)
        # Once the application has iterated, an event no handler took waits
        # for its next ``async for`` (the hand-off takes a receiver), as items
        # of a channel do: one that breaks out of a loop and iterates again
        # later sees what came between, and nothing is acked unseen. Not the
        # notices no ``events=`` can leave out (a gap; an auth request with
        # no callback, which the relay answers itself in time): an
        # application that stopped iterating would wait for ever.
        if self._iterators or (self._iterated and not handled and not isinstance(notice, _UNASKED)):
            if not self._iterators and not self._waiting_logged:
                self._waiting_logged = True
                log.warning(
                    "a %s event waits for an `async for` over the pipe (none is running), and those after it too; "
                    "iterate again, or take such events with handlers", notice.event,
                )
            done = trio.Event()
            await self._handoff_send.send((notification, done))
            await done.wait()

    async def _leave(self) -> None:
        """End the session for good: ack what was processed, then ``leave`` (pipe-protocol.md 6)."""
        self._leaving = True
        self._reconnect = False
        ack = self.core.take_ack(force=True)
        if ack is not None:
            await self._send_quietly(ack)
        with trio.move_on_after(LEAVE_TIMEOUT):
            try:
                await self.request(ev.Leave())
            except PipeError as exc:  # not connected (the session then ends after its grace)
                log.info("could not leave the group: %s", exc)

    async def _answer_auth(self, request: ev.AuthRequest) -> None:
        assert self._auth is not None
        answer = self._auth(request)
        if inspect.isawaitable(answer):
            with trio.move_on_after(AUTH_TIMEOUT) as scope:
                answer = await answer
            if scope.cancelled_caught:
                log.info("auth handler for %s took over %ss; not answered", request.request_id, AUTH_TIMEOUT)
                return
        if not isinstance(answer, AuthAnswer):
            if isinstance(answer, dict):
                answer = AuthAnswer(allow=True, data=answer)
            else:
                answer = AuthAnswer(allow=bool(answer))
        call = request.answer(allow=answer.allow, data=answer.data, reason=answer.reason)
        try:
            await self.request(call)
        except PipeDisconnectedError:
            log.info("pipe disconnected before answering auth request %s", request.request_id)
        except PipeError as exc:
            if exc.code != PipeCode.UNKNOWN_REQUEST_ID:
                raise
            log.info("auth answer for %s came too late", request.request_id)


@asynccontextmanager
async def open_pipe(
    url: str,
    *,
    app_id: str,
    key: str,
    secret: str,
    events: Iterable[str] = ("socket_existence", "socket_message"),
    group: str | None = None,
    auth: Callable[[ev.AuthRequest], Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    reconnect: bool = True,
    max_backoff: float = 10.0,
    client_name: str = f"pipe_trio/{__version__}",
    resume: tuple[str, int] | None = None,
    keep_session: bool = False,
) -> AsyncIterator[Pipe]:
    """Connect a backend to the relay at ``url`` (``ws[s]://host:port``).

    Args:
        url: the relay's base URL.
        app_id, key, secret: the app's credentials.
        events: event types to receive (``socket_existence``,
            ``socket_message``, ``channel_existence``, ``presence``, ``auth``).
        group: the group to share work with (``default`` when ``None``).
        auth: answers ``auth_request`` notices: return ``True``/``False``, a
            dict (allow with that ``channel_data``/``user_data``), or an
            :class:`AuthAnswer`; may be async. Subscribes to ``auth``.
        ssl_context: for ``wss://``.
        reconnect: reconnect (and resume) when the connection is lost.
        max_backoff: longest pause between reconnection attempts.
        client_name: sent to the relay for its logs.
        resume: ``(session, last_seq)`` saved by an earlier process (from
            :attr:`Pipe.session` and :attr:`Pipe.last_seq`): continue that
            session if the relay still holds it (within its resume grace),
            so its pending events come here and not to other members.
        keep_session: what a normal exit of the ``async with`` does. By
            default the pipe leaves its group for good (``leave``): the
            relay ends its session at once and its sockets move to the other
            members. With ``True`` the session stays on the relay for its
            resume grace, for a restart that saved :attr:`Pipe.session` and
            :attr:`Pipe.last_seq` and passes them as ``resume``
            (:attr:`Pipe.keep_session` may be changed before exiting). An
            exit by an exception (a crash, a cancellation, Ctrl-C) never
            leaves: the session waits for its grace, as after a crash.

    Returns once the first connection is established.

    Raises:
        PipeRefusedError: the relay refused the handshake (bad credentials,
            unknown app, ...).
    """
    pipe = Pipe(
        url,
        app_id=str(app_id),
        key=key,
        secret=secret,
        events=events,
        group=group,
        auth=auth,
        ssl_context=ssl_context,
        reconnect=reconnect,
        max_backoff=max_backoff,
        client_name=client_name,
        keep_session=keep_session,
    )
    if resume is not None:
        pipe.core.resume(*resume)
    with _unwrapped():
        async with trio.open_nursery() as nursery:
            await nursery.start(pipe._run)
            normal_exit = False
            try:
                yield pipe
                normal_exit = True
            finally:
                if normal_exit and not pipe.keep_session:
                    await pipe._leave()
                else:
                    ack = pipe.core.take_ack(force=True)
                    if ack is not None or pipe.core.queued:
                        with trio.CancelScope(shield=True), trio.move_on_after(1):
                            await pipe._send_quietly(ack)
                if pipe.core.queued:
                    log.warning("the pipe ended with %d calls not sent (the connection was down)", pipe.core.queued)
                nursery.cancel_scope.cancel()


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Let a lone :class:`PipeError` out of nurseries as itself, not wrapped in groups."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves: list[BaseException] = []
        pending: list[BaseException] = [group]
        while pending:
            item = pending.pop()
            if isinstance(item, BaseExceptionGroup):
                pending.extend(item.exceptions)
            else:
                leaves.append(item)
        if len(leaves) == 1 and isinstance(leaves[0], PipeError):
            raise leaves[0] from None
        raise

