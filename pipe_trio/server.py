"""The relay's single port: HTTP and WebSocket under Trio.

This module moves bytes; the core decides. Each accepted TCP connection gets
a task: it reads HTTP requests (the usual upgrade request directly,
:mod:`._upgrade`; everything else with h11) and asks the core where they go
(:func:`pipe_proto.routes.route`). REST, status and the browser helper are
answered in place. A WebSocket upgrade goes to :func:`pipe_proto.upgrade.upgrade`,
whose one answer is carried out as it is: a refusal (status, body, headers)
is written through h11; an accepted connection (a socket, a pipe, or a
socket refused at the Pusher level, with its message limit) gets the 101
with its first frame and is handed to the server's
:class:`~._websocket.Transport`, which reads it, reports every message to the
:class:`~pipe_proto.Relay` through the connection's side (:class:`_SocketsSide`,
:class:`_PipesSide`) and calls :meth:`RelayServer._finish` when it ends. Which
transport serves is chosen at start and invisible here: the fast one (Linux,
plain TCP: one task reads every connection, so the connection's task ends at
the handover) or the portable one (TLS, other systems, or
``PIPE_RELAY_TRANSPORT=portable``: the connection's task stays its reader).

Outputs are carried out synchronously (:meth:`RelayServer.execute`): a
:class:`~pipe_proto.Send` to many sockets builds its frame once and appends
the same bytes to each socket's bounded queue; a socket whose queue the
kernel will not take (over the bound for longer than a grace period, or far
over it) is closed as a slow consumer (4101) instead of stalling anyone else.

Time: the core wants seconds since the epoch. The server reads Trio's clock
plus a fixed offset taken at start, so a ``MockClock`` drives the core too.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import math
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from importlib import resources
from typing import Any

import h11
import trio

from pipe_proto import Close, Failure, Probe, Relay, Send, WebhookEvent, __version__
from pipe_proto.forwarded import TrustedProxies
from pipe_proto.relay.directory import Pending
from pipe_proto.relay.outputs import ClusterCall, Output
from pipe_proto.rest import MAX_BODY_BYTES
from pipe_proto.rest import handle as handle_rest
from pipe_proto.routes import Route, RouteKind, route
from pipe_proto.upgrade import ConnectionKind, Refused, Upgraded, upgrade, wants_websocket

from ._accept import ACCEPT_BATCH, ACCEPT_PENDING, AcceptedStream, BatchAcceptor, set_tcp_options
from ._io import RandomBytes, escaped, raw_fd, read_now, read_ready
from ._upgrade import parse_request, parse_upgrade_request
from ._websocket import (
    FLUSH_TURN,
    FastTransport,
    Poller,
    PortableTransport,
    Side,
    Transport,
    WebSocket,
    Writer,
    open_transport,
)
from .cluster import ClusterLink, ClusterUnavailable
from .console import Console
from .logs import fields
from .metrics import Metrics, probe_answer
from .webhooks import WebhookSender

__all__ = ["RelayServer", "open_listeners", "serve"]

log = logging.getLogger("pipe_trio")

#: Seconds an HTTP connection may sit idle, or take to send its request head.
HTTP_IDLE_TIMEOUT = 60.0
#: Deliveries a REST request's outputs are carried out in before other tasks get a turn.
EXECUTE_TURN = 8192
#: Largest HTTP request head accepted.
MAX_HEAD_BYTES = 16 * 1024
#: Longest the timer loop sleeps: timers fire at most this late.
TIMER_GRANULARITY = 1.0
#: Seconds to wait before accepting again when out of file descriptors or
#: memory; the wait doubles with each failure in a row, up to ACCEPT_RETRY_MAX.
ACCEPT_RETRY = 0.1
ACCEPT_RETRY_MAX = 1.0
#: Longest a connection over --max-connections-per-ip is waited for (for
#: its request, then to take the 429) before it is closed.
REFUSE_WAIT = 1.0
_ACCEPT_CAPACITY_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS") if hasattr(errno, name)
)


_TOO_MANY_BODY = b'{"error": "Too many connections from your address"}'
# Written before the request is read, to a connection over --max-connections-per-ip.
_TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\naccess-control-allow-origin: *\r\nconnection: close\r\n\r\n%s"
) % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)


def _peer_address(stream: trio.abc.Stream) -> str | None:
    """The client's IP address (also under TLS), or None when it cannot be known."""
    if type(stream) is AcceptedStream:
        return stream.address
    inner: Any = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])
    except (AttributeError, OSError, IndexError, TypeError):
        return None


def _log_upgrade(relay: Relay, decision: Upgraded | Refused, address: str | None) -> None:
    """Log an upgrade's outcome (socket or pipe connected, pipe refused)."""
    if isinstance(decision, Refused):
        found = decision.route
        if found is not None and found.kind is RouteKind.PIPE:
            log.info(
                "pipe refused for app %s: %d %s", escaped(found.name), decision.status, escaped(decision.message),
                extra=fields("pipe_refused", status=decision.status, reason=escaped(decision.message)),
            )
    elif decision.kind is ConnectionKind.SOCKET:
        app = relay.apps.by_key(decision.route.name)
        log.info(
            "socket %s connected (app key %s, from %s)", decision.conn_id, escaped(decision.route.name), address,
            extra=fields("socket_connected", app=app.id if app else None, socket=decision.conn_id,
                         remote_addr=address),
        )
    elif decision.kind is ConnectionKind.PIPE and decision.pipe is not None:
        accepted = decision.pipe
        log.info(
            "pipe %s connected (app %s, protocol %s, group %s)",
            decision.conn_id, accepted.app.id, escaped(accepted.version), escaped(accepted.group),
            extra=fields("pipe_connected", app=accepted.app.id, pipe=decision.conn_id, protocol=accepted.version,
                         group=escaped(accepted.group), remote_addr=address),
        )


def _response(status: int, body: Any, *, head: bool = False) -> bytes:
    """A JSON response, byte for byte what ``RelayServer._respond`` has h11 write on a kept connection."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (
        b"HTTP/1.1 %d \r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"access-control-allow-origin: *\r\n\r\n%s" % (status, len(data), b"" if head else data)
    )


async def _send_response(stream: trio.abc.Stream, data: bytes) -> None:
    """Write a whole HTTP response, giving a client that does not take it ``HTTP_IDLE_TIMEOUT`` seconds.

    Raises:
        trio.BrokenResourceError: it did not (the connection is then closed,
            as for a client that went away: pipelining requests without
            reading the answers must not hold a connection forever).
    """
    with trio.move_on_after(HTTP_IDLE_TIMEOUT):
        await stream.send_all(data)
        return
    raise trio.BrokenResourceError("the client did not take its response")


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class _Greeting:
    """A plain-TCP connection accepted before its first bytes came: the poller waits for them.

    No task waits for it: when its bytes come, the server serves it from
    them (``RelayServer._greeted``); one that sends nothing is closed after
    ``HTTP_IDLE_TIMEOUT`` by the timer loop, or when the server stops.
    """

    __slots__ = ("_fd", "deadline", "poller", "server", "stream")

    def __init__(self, server: RelayServer, stream: AcceptedStream, deadline: float) -> None:
        self.server = server
        self.stream = stream
        self._fd = stream.fd
        self.deadline = deadline
        self.poller: Poller | None = None

    def _readable(self) -> None:
        data = read_ready(self._fd)
        if data is not None:
            self.server._greeted(self, data)

    def _broken(self) -> None:
        log.exception("reading a new connection failed")
        self.server._greeted(self, b"")

    def _abandon(self) -> None:
        self.poller = None
        self.stream.close()


class _AcceptFailures:
    """What accepting does when the system is out of descriptors or memory.

    Every accept then fails until some connection closes: one log line per
    episode, and a wait that doubles with each failure in a row (from
    ``ACCEPT_RETRY`` to ``ACCEPT_RETRY_MAX``). Any other error is raised.
    """

    def __init__(self) -> None:
        self.retry = 0.0  # the wait before the next accept; 0: accepting normally
        self.since = 0.0

    async def wait(self, exc: OSError) -> None:
        """After a failed accept: raise ``exc`` unless it is about capacity, else wait before the next."""
        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
            raise exc
        if not self.retry:
            self.since = trio.current_time()
            log.error("accept failed (%s); retrying every %.1f to %.1f s until it succeeds",
                      exc, ACCEPT_RETRY, ACCEPT_RETRY_MAX)
        self.retry = min(ACCEPT_RETRY_MAX, self.retry * 2) if self.retry else ACCEPT_RETRY
        await trio.sleep(self.retry)

    def over(self) -> None:
        """An accept succeeded."""
        if self.retry:
            log.warning("accepting connections again after %.1f s", trio.current_time() - self.since)
            self.retry = 0.0


class RelayServer:
    """Serves a :class:`~pipe_proto.Relay` on listeners.

    Args:
        relay: the core.
        max_socket_buffer: bytes the kernel may leave unwritten for one
            socket for longer than ``SLOW_GRACE`` (or, for any time, up to
            ``BURST_ALLOWANCE`` times this) before it is closed as a slow
            consumer (4101); see :mod:`._websocket`.
        max_pipe_buffer: the same for pipes.
        max_body: largest REST request body (413 beyond, refused unread).
        secure: whether the listeners are TLS (apps with ``tls_only`` refuse
            plain sockets with 4000).
        max_connections_per_ip: most connections (HTTP and WebSocket) open
            at once from one IP address; beyond, a new one is answered 429
            and closed (TLS: closed at once). None: no limit.
        redis: the Redis URL of the cluster, when ``relay`` is a cluster
            node (made with a :class:`pipe_proto.cluster.ClusterDirectory`).
        transport: how WebSockets are read and framed: ``"auto"`` (the fast
            transport on Linux for plain TCP, the portable one elsewhere) or
            ``"portable"``; None: ``$PIPE_RELAY_TRANSPORT``, else ``"auto"``
            (see :mod:`._websocket`).
        trusted_proxies: addresses or networks of proxies whose
            ``X-Forwarded-For`` gives the client's address (logs, the
            per-address limit, pipes' ``remote_addr``); see
            :class:`pipe_proto.forwarded.TrustedProxies`.
        metrics: count frames written and serve Prometheus metrics
            (:mod:`.metrics`); False: neither.
        metrics_here: serve ``/metrics`` on these listeners too (False when
            ``--metrics-port`` serves it elsewhere). ``/health`` and
            ``/ready`` are always served.
        console: serve the debug console (:mod:`.console`).
    """

    def __init__(
        self,
        relay: Relay,
        *,
        max_socket_buffer: int = 256 * 1024,
        max_pipe_buffer: int = 16 * 1024 * 1024,
        max_body: int = MAX_BODY_BYTES,
        secure: bool = False,
        max_connections_per_ip: int | None = None,
        redis: str | None = None,
        transport: str | None = None,
        trusted_proxies: Sequence[str] = (),
        metrics: bool = True,
        metrics_here: bool = True,
        console: bool = False,
    ) -> None:
        self.relay = relay
        self.max_socket_buffer = max_socket_buffer
        self.max_pipe_buffer = max_pipe_buffer
        self.max_body = max_body
        self.webhooks = WebhookSender(relay.apps, self.now)
        self.secure = secure
        self.max_connections_per_ip = max_connections_per_ip
        self.proxies = TrustedProxies(trusted_proxies)
        # With a per-address limit: open connections per address, the address
        # of each counted connection (by id of its stream), and the addresses
        # refused since they last went under the limit (logged once each).
        self._per_ip: dict[str, int] = {}
        self._ip_of: dict[int, str] = {}
        self._limited: set[str] = set()
        self.conns: dict[str, WebSocket] = {}
        self.writer = Writer(self._spawn)
        self._transport_name = transport
        # How WebSockets are read and framed: serve() picks one for its listeners.
        self.transport: Transport = PortableTransport(self.writer)
        self._random = RandomBytes()
        # Whose entry points each kind of connection's traffic goes to (the
        # relay forgot a refused one: nothing of it reaches the relay).
        self._sides = {
            ConnectionKind.SOCKET: _SocketsSide(self),
            ConnectionKind.PIPE: _PipesSide(self),
            ConnectionKind.REFUSED: _Side(self),
        }
        self._idle_http: set[trio.CancelScope] = set()
        # Connections waiting (in the poller) for their first bytes, oldest first.
        self._greetings: dict[_Greeting, None] = {}
        self.listeners: list[trio.abc.Listener[Any]] = []
        self._pipes: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._listen_scope = trio.CancelScope()
        self._offset = 0.0
        self._started = 0.0
        self._connections = 0  # accepted and not yet closed
        self._all_closed: trio.Event | None = None
        self._stopping = False
        self._wake_timers = trio.Event()
        # When the timer loop wakes next on its own (the core's clock; -inf: it is awake).
        self._timers_due = -math.inf
        self.cluster = None if redis is None else ClusterLink(redis, relay, self.execute_soon, self.now)
        self.metrics = Metrics(self) if metrics else None
        self._metrics_here = metrics_here
        # Per Send output, not per delivery: the core counts what was written.
        self._count_sent = relay.sent if metrics else None
        self.console = Console(self) if console else None

    # --------------------------------------------------------------- running

    @property
    def port(self) -> int:
        """The TCP port of the first listener (useful after listening on port 0)."""
        listener: Any = self.listeners[0]
        inner = getattr(listener, "transport_listener", listener)
        return int(inner.socket.getsockname()[1])

    def now(self) -> float:
        """The core's clock: seconds since the epoch, advancing with Trio's clock."""
        return trio.current_time() + self._offset

    async def serve(
        self,
        listeners: Sequence[trio.abc.Listener[Any]],
        *,
        task_status: trio.TaskStatus[RelayServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled or :meth:`shutdown`; ``nursery.start`` returns once listening."""
        self._offset = time.time() - trio.current_time()
        self._started = self.now()
        self.listeners = list(listeners)
        self.transport = open_transport(self.writer, self.listeners, self._transport_name)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self.transport.run)
            nursery.start_soon(self.webhooks.run)
            if self.metrics is not None:
                nursery.start_soon(self.metrics.watch_lag)
            if self.console is not None:
                nursery.start_soon(self.console.run)
            if self.cluster is not None:
                await nursery.start(self.cluster.run)
            nursery.start_soon(self._accept, listeners)
            task_status.started(self)

    async def _accept(self, listeners: Sequence[trio.abc.Listener[Any]]) -> None:
        with self._listen_scope:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept_from, listener)

    async def _accept_from(self, listener: trio.abc.Listener[Any]) -> None:
        # trio.serve_listeners, but the handler owns the stream: a WebSocket
        # handed to the fast transport outlives its handler task.
        failing = _AcceptFailures()
        if type(listener) is trio.SocketListener and isinstance(self.transport, FastTransport):
            await self._accept_batches(listener, failing)
            return
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    await failing.wait(exc)
                    continue
                failing.over()
                self._accepted(stream)

    async def _accept_batches(self, listener: trio.SocketListener, failing: _AcceptFailures) -> None:
        """Plain TCP under the fast transport: every connection the kernel has is taken at once, and
        the usual upgrade requests answered here, with no task per connection.

        Taking them all first empties the kernel's accept queue (``somaxconn``
        long) as fast as the connections come: in a reconnect storm a full
        queue drops new connections, whose clients try again only after a
        second. At most ``ACCEPT_PENDING`` wait here to be handled,
        ``ACCEPT_BATCH`` at a time, with a turn for every other task between.
        """
        acceptor = BatchAcceptor(listener)
        pending: collections.deque[AcceptedStream] = collections.deque()
        try:
            async with listener:
                while True:
                    try:
                        pending.extend(acceptor.accept_now(ACCEPT_PENDING - len(pending)))
                    except OSError as exc:
                        if not pending:
                            await failing.wait(exc)
                            continue
                        # Those accepted before go first; the failure will come again.
                    else:
                        failing.over()
                    if not pending:
                        await acceptor.wait()
                        continue
                    for _ in range(min(ACCEPT_BATCH, len(pending))):
                        self._accepted(pending.popleft())
                    self.writer.flush()
                    await trio.lowlevel.checkpoint()
        finally:
            acceptor.close()
            for stream in pending:  # cancelled (shutting down): never handled, so never counted
                stream.close()

    def _accepted(self, stream: trio.SocketStream | AcceptedStream) -> None:
        """A new connection: counted, checked against the per-address limit, then served
        (one accepted in a batch upgraded now when its usual request is here, else by a task)."""
        assert self._nursery is not None
        self._connections += 1
        if self.max_connections_per_ip is not None and not self._admit(stream):
            self._nursery.start_soon(self._refuse, stream)
        elif type(stream) is AcceptedStream:
            self._take(stream)
        else:
            self._nursery.start_soon(self._handle_tcp, stream)

    def _take(self, stream: AcceptedStream) -> None:
        """A new plain-TCP connection under the fast transport: served from its first bytes,
        or, before they come, waited on by the poller (:class:`_Greeting`)."""
        data = read_now(stream)
        if data:
            self._serve_first(stream, data)
            return
        greeting = _Greeting(self, stream, trio.current_time() + HTTP_IDLE_TIMEOUT)
        self._greetings[greeting] = None
        assert isinstance(self.transport, FastTransport)  # the only one accepting in batches
        self.transport.poller.add(greeting)

    def _greeted(self, greeting: _Greeting, data: bytes) -> None:
        """A waiting connection sent its first bytes (``b""``: it went away)."""
        if data:
            # Upgraded, its WebSocket takes over the poller's registration:
            # two epoll system calls fewer for it.
            self._serve_first(greeting.stream, data, greeting)
        else:
            self._spawn(partial(self._close_unserved, greeting.stream))
        # Whatever took no registration over leaves the poller now, before
        # any task started for the connection reads it.
        self._forget_greeting(greeting)

    def _forget_greeting(self, greeting: _Greeting) -> None:
        if greeting.poller is not None:
            greeting.poller.remove(greeting)
        self._greetings.pop(greeting, None)

    def _close_greetings(self, now: float | None = None) -> None:
        """Close the connections that have waited past their deadline for their request (all: ``now`` None)."""
        while self._greetings:
            greeting = next(iter(self._greetings))
            if now is not None and greeting.deadline > now:
                break  # deadlines come in the order the connections did
            self._forget_greeting(greeting)
            self._spawn(partial(self._close_unserved, greeting.stream))

    def _serve_first(self, stream: AcceptedStream, data: bytes, greeting: _Greeting | None = None) -> None:
        """Upgrade a connection now if ``data`` (its first bytes) is the usual upgrade request.

        Anything else (a partial head, a REST request, an unusual head, a
        refusal to answer) goes to a handler task with the bytes read.
        ``greeting``: the poller reads the connection for it (the WebSocket
        takes its place).
        """
        assert self._nursery is not None
        try:
            decided = self._decide_fast(stream, data)
            if decided is None or isinstance(decided, Refused):
                self._nursery.start_soon(self._handle_tcp, stream, data, decided)
                return
            ws, side, limit = self._open_websocket(stream, *decided)
        except Exception:  # pragma: no cover - a bug; keep serving everyone else
            log.exception("connection handler failed")
            self._nursery.start_soon(self._close_unserved, stream)
            return
        assert isinstance(self.transport, FastTransport)  # the only one accepting in batches
        self.transport.adopt(ws, side, limit, self._finish, greeting)

    async def _close_unserved(self, stream: trio.abc.Stream) -> None:
        await trio.aclose_forcefully(stream)
        self._closed_one(stream)

    def _admit(self, stream: trio.abc.Stream, address: str | None = None) -> bool:
        """Count a connection against its address's limit (the peer's by default); False if over it.

        A trusted proxy's connections are counted later, against the address
        it forwards for, once their upgrade request is read.
        """
        limit = self.max_connections_per_ip
        if address is None:
            address = _peer_address(stream)
            if self.proxies.trusts(address):
                return True
        if limit is None or address is None:
            return True
        count = self._per_ip.get(address, 0)
        if count >= limit:
            if address not in self._limited:
                self._limited.add(address)
                log.warning(
                    "%s has %d connections open (--max-connections-per-ip): refusing more", address, count,
                    extra=fields("connections_per_ip_limited", remote_addr=address, open=count),
                )
            return False
        self._per_ip[address] = count + 1
        self._ip_of[id(stream)] = address
        return True

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Answer a connection over the per-address limit with 429 (plain TCP) and close it."""
        try:
            if raw_fd(stream) >= 0:
                with trio.move_on_after(REFUSE_WAIT):
                    # The request is read first (unparsed): closing a socket
                    # with unread data resets it, and the client would likely
                    # lose the answer.
                    await stream.receive_some(65536)
                with trio.move_on_after(REFUSE_WAIT):
                    await stream.send_all(_TOO_MANY_CONNECTIONS)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self._closed_one(stream)

    def _nonce(self) -> int:
        # Unguessable, for connection ids (pipe_proto.relay.Relay names them).
        return int.from_bytes(self._random.take(8), "big") % 10**10

    def _spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    async def shutdown(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the grace period is the API
        """Stop gracefully: stop accepting, send every client 4200, wait at most ``timeout``."""
        if self._stopping:
            return
        self._stopping = True
        self._listen_scope.cancel()
        for waiting in list(self._idle_http):
            waiting.cancel()
        self._close_greetings()
        self.execute(self.relay.shutdown(self.now()))
        if self.console is not None:
            self.console.close_all()
            self.writer.flush()
        if self._connections:
            self._all_closed = trio.Event()
            with trio.move_on_after(timeout):
                await self._all_closed.wait()
        with trio.move_on_after(max(0.0, timeout / 2)):
            await self.webhooks.drain()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.relay.next_deadline()
            now = self.now()
            wait = min(TIMER_GRANULARITY, max(0.0, deadline - now))
            if wait > 0:
                self._timers_due = now + wait
                with trio.move_on_after(wait):
                    await self._wake_timers.wait()
                self._timers_due = -math.inf
                if self._wake_timers.is_set():
                    self._wake_timers = trio.Event()
            if self.relay.next_deadline() <= self.now():
                self.execute(self.relay.tick(self.now()))
            if self._greetings:
                self._close_greetings(trio.current_time())

    # ------------------------------------------------------------- outputs

    def execute(self, outputs: list[Output], *, flush: bool = True) -> None:
        """Carry out the core's outputs, in order, without blocking.

        With ``flush`` false the bytes stay queued until the next
        ``self.writer.flush()``: a connection's reader flushes once per chunk
        it read, so the frames of many messages read together go out in one
        write per subscriber.
        """
        overflowing: list[WebSocket] = []
        conns = self.conns
        text_frame = self.transport.framing.text
        count_sent = self._count_sent
        called = False
        end = len(outputs)
        index = 0
        while index < end:
            output = outputs[index]
            index += 1
            if type(output) is Send:
                targets = output.targets
                frame = text_frame(output.text)
                if count_sent is not None:
                    count_sent(output)
                # Events in a row for the same sockets (a REST batch to one
                # channel) are queued as one run of frames: the loop over the
                # subscribers runs once for them all, not once per event.
                frames: list[bytes] | None = None
                while index < end:
                    following = outputs[index]
                    if type(following) is not Send or following.targets != targets:
                        break
                    index += 1
                    if frames is None:
                        frames = [frame]
                    frames.append(text_frame(following.text))
                    if count_sent is not None:
                        count_sent(following)
                if frames is not None:
                    frame = b"".join(frames)
                self.writer.broadcast(frame, targets, conns, overflowing)
            elif type(output) is Close:
                conn = conns.pop(output.target, None)
                if conn is not None:
                    conn.close(output.code, output.reason)
            elif type(output) is Probe:
                conn = conns.get(output.target)
                if conn is not None and not conn.ping():
                    overflowing.append(conn)
            elif type(output) is WebhookEvent:
                self.webhooks.add(output.app_id, output.urls, output.event)
            elif type(output) is ClusterCall:
                assert self.cluster is not None
                self.cluster.submit(output)
                called = True
            elif type(output) is Failure:
                log.error("handling %s failed; closed with 1011", output.target, exc_info=output.error)
        for conn in overflowing:
            self._slow_consumer(conn)
        # A call may start one of the cluster's timers (a request to another
        # node waits for its answer): the timer loop wakes if it would
        # otherwise sleep past it, and only then (waking it for every call
        # costs a task switch each). Other timers may fire up to
        # TIMER_GRANULARITY late, with or without a cluster.
        if called and self.relay.directory.next_deadline() < self._timers_due:
            self._wake_timers.set()
        if flush:
            # Everything queued by this batch goes out now, one write per connection.
            self.writer.flush()

    async def execute_in_turns(self, outputs: list[Output]) -> int:
        """:meth:`execute` without flushing, giving other tasks a turn after every ``EXECUTE_TURN`` deliveries.

        A batch of events to a large channel (a REST ``batch_events``) is
        long work: an event for another channel that arrives meanwhile is
        handled between two slices instead of waiting for all of it.
        Returns the number of deliveries.
        """
        start = 0
        total = deliveries = 0
        for end, output in enumerate(outputs, 1):
            if type(output) is Send:
                deliveries += len(output.targets)
                if deliveries >= EXECUTE_TURN and end < len(outputs):
                    self.execute(outputs[start:end], flush=False)
                    start, total, deliveries = end, total + deliveries, 0
                    # Not cancellable: the rest of the outputs must still be carried out.
                    await trio.lowlevel.cancel_shielded_checkpoint()
        self.execute(outputs[start:] if start else outputs, flush=False)
        return total + deliveries

    def execute_soon(self, outputs: list[Output]) -> None:
        """Carry out outputs, written with whatever else this round of Trio's tasks produces.

        Many messages arriving together (a node's inbox under load) then
        cost one write per connection, not one per message.
        """
        self.execute(outputs, flush=False)
        self.writer.flush_soon()

    def _slow_consumer(self, conn: WebSocket) -> None:
        if conn.id not in self.conns:
            return
        log.info(
            "closing %s: slow consumer (%d bytes the kernel would not take; bound %d)",
            conn.id, conn.unwritten, conn.max_buffer,
            extra=fields("slow_consumer", socket=conn.id, unwritten=conn.unwritten, bound=conn.max_buffer),
        )
        conn.discard_queue()
        self.execute(self.relay.slow_consumer(conn.id, self.now()))

    # ---------------------------------------------------------------- HTTP

    async def _handle_tcp(
        self, stream: trio.abc.Stream, first: bytes = b"", decided: Refused | None = None
    ) -> None:
        """Serve a connection from its first bytes (``first``, if already read) to its end.

        ``decided``: the refusal its upgrade request already got (to answer); see :meth:`_http`.
        """
        handed_over = False
        try:
            upgraded = await self._http(stream, first, decided)
            if upgraded is not None:
                ws, side, limit = self._open_websocket(stream, *upgraded)
                del upgraded
                # From here the transport owns the connection: it calls
                # _finish when it ends, maybe after this task is gone.
                handed_over = True
                await self.transport.serve(ws, side, limit, self._finish)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, h11.RemoteProtocolError):
            pass  # the peer went away or broke HTTP mid-request (its head errors are answered in _http)
        except Exception:  # pragma: no cover - a bug; keep serving everyone else
            log.exception("connection handler failed")
        finally:
            if not handed_over:
                await self._close_unserved(stream)

    async def _finish(self, ws: WebSocket) -> None:
        """A WebSocket ended and the relay was told: close it once its last frames are out."""
        try:
            await ws.aclose()
        except Exception:  # pragma: no cover - a bug; keep serving everyone else
            log.exception("closing %s failed", ws.id)
        finally:
            self._closed_one(ws.stream)

    def _closed_one(self, stream: trio.abc.Stream) -> None:
        self._connections -= 1
        if self._ip_of:
            address = self._ip_of.pop(id(stream), None)
            if address is not None:
                count = self._per_ip.pop(address) - 1
                if count:
                    self._per_ip[address] = count
                self._limited.discard(address)
        if self._connections == 0 and self._all_closed is not None:
            self._all_closed.set()

    async def _http(
        self, stream: trio.abc.Stream, first: bytes = b"", decided: Refused | None = None
    ) -> tuple[Upgraded, bytes] | None:
        """Answer HTTP requests until one upgrades to a WebSocket or the connection ends.

        ``first``: the connection's first bytes if already read, and then
        already offered to :meth:`_decide_fast`, whose refusal is ``decided``
        (None: not the usual upgrade request). Returns the accepted upgrade
        and the bytes that came after its request.
        """
        data = first or await self._first_bytes(stream)
        if data is None:
            return None
        fast = decided if first else self._decide_fast(stream, data)
        if isinstance(fast, Refused):
            # Answered through h11, which reads the same request (the parser's promise).
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            conn.receive_data(data)
            conn.next_event()
            await self._refuse_upgrade(stream, conn, fast)
            return None
        if fast is not None:
            return fast
        # REST calls on a keep-alive connection, each read and answered
        # without h11 while they come one whole request per read; h11 takes
        # the connection over at the first that does not.
        while (plain := parse_request(data, MAX_HEAD_BYTES, self.max_body)) is not None and not self._stopping:
            method = plain.method.decode("ascii")
            found = route(method, plain.target.decode("latin-1"), upgrade=False)
            if found.kind is not RouteKind.REST or wants_websocket(plain.headers):
                break
            status, answer = await self._rest_answer(method, found, plain.body)
            await _send_response(stream, _response(status, answer, head=method == "HEAD"))
            data = await self._first_bytes(stream)
            if not data:
                return None
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        conn.receive_data(data)
        while True:
            request = None  # stays None when the idle timeout fires
            with trio.move_on_after(HTTP_IDLE_TIMEOUT) as waiting:
                # An idle keep-alive connection must not hold up a shutdown.
                self._idle_http.add(waiting)
                try:
                    request = await self._next(stream, conn)
                except h11.RemoteProtocolError as exc:
                    await self._bad_request(stream, conn, exc)
                    return None
                finally:
                    self._idle_http.discard(waiting)
            if self._stopping and not isinstance(request, h11.Request):
                return None
            if not isinstance(request, h11.Request):
                return None
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("latin-1")
            headers = request.headers
            if wants_websocket(headers):
                try:
                    end = conn.next_event()  # a GET upgrade has no body: its end is here at once...
                    if not (isinstance(end, h11.EndOfMessage) or end is h11.PAUSED):
                        with trio.move_on_after(HTTP_IDLE_TIMEOUT):  # ...unless it is not
                            end = await self._end_of_request(stream, conn)
                except h11.RemoteProtocolError as exc:  # a malformed body
                    await self._bad_request(stream, conn, exc)
                    return None
                if not (isinstance(end, h11.EndOfMessage) or end is h11.PAUSED):
                    return None
                decision = self._upgrade(stream, request.method, request.target, headers, request.http_version)
                if isinstance(decision, Upgraded):
                    return decision, conn.trailing_data[0]
                await self._refuse_upgrade(stream, conn, decision)
                return None
            found = route(method, target, upgrade=False)
            head = method == "HEAD"
            if found.kind is RouteKind.REST or (found.kind is RouteKind.CONSOLE_TOKEN and self.console is not None):
                with trio.move_on_after(HTTP_IDLE_TIMEOUT) as reading:  # nor may a body
                    try:
                        await self._rest(stream, conn, method, found, headers)
                    except h11.RemoteProtocolError as exc:  # a malformed body
                        await self._bad_request(stream, conn, exc)
                        return None
                if reading.cancelled_caught:
                    return None  # the answer may be cut short: nothing more on this connection
            else:
                # These routes take no body: a request without one ends here,
                # and the connection is kept (unless the relay is stopping);
                # one with a body is answered, unread, and the connection closed.
                try:
                    ended = isinstance(conn.next_event(), h11.EndOfMessage)
                except h11.RemoteProtocolError as exc:  # a malformed body
                    await self._bad_request(stream, conn, exc)
                    return None
                close = self._stopping or not ended
                if found.kind is RouteKind.STATUS:
                    await self._respond(stream, conn, 200, self.status(), head=head, close=close)
                elif found.kind is RouteKind.PIPE_CLIENT_JS:
                    script = resources.files("pipe_trio").joinpath("static/pipe-client.js").read_bytes()
                    await self._respond(
                        stream, conn, 200, script, "application/javascript; charset=utf-8", head=head, close=close
                    )
                elif found.kind is RouteKind.CONSOLE and self.console is not None:
                    page = self.console.page()
                    await self._respond(stream, conn, 200, page, "text/html; charset=utf-8", head=head, close=close)
                elif (probed := self.probe(found.path, _header(headers, b"accept") or "",
                                           metrics=self._metrics_here)) is not None:
                    await self._respond(stream, conn, probed[0], probed[1], probed[2], head=head, close=close)
                else:
                    missing = {"error": f"Not found: {escaped(found.path)}"}
                    await self._respond(stream, conn, 404, missing, head=head, close=close)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return None
            conn.start_next_cycle()

    async def _bad_request(self, stream: trio.abc.Stream, conn: h11.Connection, exc: h11.RemoteProtocolError) -> None:
        """Answer a request h11 could not read (its status, 400 mostly), and close the connection."""
        await self._respond(stream, conn, exc.error_status_hint, {"error": escaped(exc)}, close=True)

    @staticmethod
    async def _next(stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            return event

    @staticmethod
    async def _respond(
        stream: trio.abc.Stream,
        conn: h11.Connection,
        status: int,
        body: Any,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
        *,
        head: bool = False,
        close: bool = False,
    ) -> None:
        """Send one whole response; ``close``: the connection ends after it, and the response says so.

        Every response either leaves the connection ready for the next
        request or carries ``Connection: close`` (h11 adds it itself when the
        client asked for it or speaks HTTP/1.0).
        """
        # A response to HEAD declares the body's length but carries no body
        # (RFC 9110 9.3.2); h11 refuses to send one.
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = h11.Response(
            status_code=status,
            headers=[
                ("content-type", content_type),
                ("content-length", str(len(data))),
                ("access-control-allow-origin", "*"),
                *headers,
                *([("connection", "close")] if close else []),
            ],
        )
        start = conn.send(response) or b""
        payload = b"" if head else conn.send(h11.Data(data=data)) or b""
        await _send_response(stream, start + payload + (conn.send(h11.EndOfMessage()) or b""))

    async def _rest(
        self,
        stream: trio.abc.Stream,
        conn: h11.Connection,
        method: str,
        found: Route,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> None:
        too_large = {"error": f"Body larger than {self.max_body} bytes"}
        length = _header(headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._count_rest(found, 413)
            await self._respond(stream, conn, 413, too_large, close=True)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next(stream, conn)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    self._count_rest(found, 413)
                    await self._respond(stream, conn, 413, too_large, close=True)
                    return
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        status, answer = await self._rest_answer(method, found, b"".join(chunks))
        await self._respond(stream, conn, status, answer, head=method == "HEAD", close=self._stopping)

    async def _rest_answer(self, method: str, found: Route, body: bytes) -> tuple[int, Any]:
        """The status and body answering a REST call (or a console token request) whose body is read."""
        if found.kind is RouteKind.CONSOLE_TOKEN and self.console is not None:
            return self.console.token(body)
        path, _, _ = found.path.partition("?")
        answer = handle_rest(self.relay, method, path, found.query, body, self.now())
        try:
            while isinstance(answer, Pending):
                answer = answer.resume(await self.cluster_call(answer.call))
        except ClusterUnavailable:
            self._count_rest(found, 503)
            return 503, {"error": "The cluster's Redis is unreachable; try again"}
        deliveries = await self.execute_in_turns(answer.outputs)
        if deliveries <= FLUSH_TURN:
            # A few connections: written now, ahead of a large fan-out's
            # writes that may be waiting for their turn.
            for output in answer.outputs:
                if type(output) is Send:
                    self.writer.write_these(output.targets, self.conns)
        # The rest with what other connections produce at the same moment
        # (concurrent publishers' events share one write per subscriber).
        self.writer.flush_soon()
        self._count_rest(found, answer.status)
        return answer.status, answer.body

    def _count_rest(self, found: Route, status: int) -> None:
        if self.metrics is not None:
            self.metrics.rest(found.path, found.query, status)

    # ------------------------------------------------------------- operators

    @property
    def open_connections(self) -> int:
        """TCP connections accepted and not closed yet."""
        return self._connections

    def readiness(self) -> tuple[bool, str]:
        """Whether the relay takes traffic (``GET /ready``), and why not."""
        if self._stopping:
            return False, "shutting down"
        if self.cluster is not None and not self.cluster.connected:
            return False, "Redis is unreachable"
        return True, ""

    def probe(self, path: str, accept: str, *, metrics: bool = True) -> tuple[int, bytes, str] | None:
        """The answer to ``GET /health``, ``/ready`` or (with ``metrics``) ``/metrics``; None for other paths."""
        if path == "/metrics" and not metrics:
            return None
        return probe_answer(self, path, accept)

    async def cluster_call(self, call: Output) -> Any:
        """Run one cluster call and return its result (only a cluster node makes them).

        Raises:
            ClusterUnavailable: Redis could not answer.
        """
        assert self.cluster is not None and type(call) is ClusterCall
        return await self.cluster.call(call)

    def status(self) -> dict[str, Any]:
        """The small health document ``GET /`` answers."""
        stats = self.relay.stats()
        status = {
            "name": "pipe-relay",
            "version": __version__,
            "status": "stopping" if self._stopping else "ok",
            "uptime": round(self.now() - self._started, 3),
            "sockets": stats["sockets"],
            "pipes": stats["pipes"],
        }
        cluster = stats.get("cluster")
        if cluster is not None and self.cluster is not None:
            status["cluster"] = {**cluster, **self.cluster.statistics()}
        return status

    # ----------------------------------------------------------- WebSocket

    async def _first_bytes(self, stream: trio.abc.Stream) -> bytes | None:
        """The client's first bytes (``b""``: it hung up; None: nothing within the idle timeout).

        Clients send their request as soon as they are connected, so it is
        usually here when the connection is accepted, and is then read
        without setting up the idle timeout's cancel scope.
        """
        data = read_now(stream)
        if data:
            return data
        with trio.move_on_after(HTTP_IDLE_TIMEOUT) as waiting:
            self._idle_http.add(waiting)  # an idle connection must not hold up a shutdown
            try:
                return bytes(await stream.receive_some(65536))
            finally:
                self._idle_http.discard(waiting)
        return None

    def _decide_fast(self, stream: trio.abc.Stream, data: bytes) -> tuple[Upgraded, bytes] | Refused | None:
        """The core's answer to the usual upgrade request, read without h11 (None: h11 must read ``data``).

        The usual request comes whole in the first read; accepted, the
        connection is open in the relay (with the bytes after the request).
        """
        fast = parse_upgrade_request(data, MAX_HEAD_BYTES)
        if fast is None or not wants_websocket(fast.headers):
            return None
        decision = self._upgrade(stream, b"GET", fast.target, fast.headers, b"1.1")
        if isinstance(decision, Upgraded):
            return decision, fast.trailing
        return decision

    def _upgrade(
        self,
        stream: trio.abc.Stream,
        method: bytes,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        http_version: bytes,
    ) -> Upgraded | Refused:
        """The core's answer to an upgrade request (the connection is open in the relay if accepted)."""
        address = _peer_address(stream)
        if self.proxies.trusts(address):
            # Behind a trusted proxy: the client is who it forwards for, and
            # the per-address limit counts that address (not the proxy's).
            address = self.proxies.client(address, [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"])
            if self.max_connections_per_ip is not None and not self._admit(stream, address):
                return Refused(429, "Too many connections from your address")
        if self.console is not None and not self.console.has_room() and target.startswith(b"/console/socket"):
            return Refused(503, "Too many console connections")
        decision = upgrade(
            self.relay,
            method,
            target,
            headers,
            self.now(),
            nonce=self._nonce(),
            remote_addr=address,
            secure=self.secure,
            stopping=self._stopping,
            http_version=http_version,
            console=self.console is not None,
        )
        if log.isEnabledFor(logging.INFO):  # its fields cost something per connection: not built for nothing
            _log_upgrade(self.relay, decision, address)
        return decision

    async def _refuse_upgrade(self, stream: trio.abc.Stream, conn: h11.Connection, refused: Refused) -> None:
        await self._respond(stream, conn, refused.status, refused.body, headers=refused.headers, close=True)

    async def _end_of_request(self, stream: trio.abc.Stream, conn: h11.Connection) -> Any:
        while True:
            event = await self._next(stream, conn)
            if not isinstance(event, h11.Data):
                return event

    def _open_websocket(
        self, stream: trio.abc.Stream, upgraded: Upgraded, trailing: bytes
    ) -> tuple[WebSocket, Side, int]:
        """Register an accepted connection; returns it, its side and its message limit."""
        if upgraded.kind is ConnectionKind.CONSOLE and self.console is not None:
            return self.console.open(stream, upgraded, trailing)
        max_buffer = self.max_socket_buffer if upgraded.pipe is None else self.max_pipe_buffer
        ws = self.transport.connection(stream, trailing, max_buffer)
        ws.push(upgraded.response)
        ws.id = upgraded.conn_id
        self.conns[ws.id] = ws
        if upgraded.kind is ConnectionKind.PIPE:
            self._pipes.add(ws.id)
            # Its backend is the next process in line: its events go out
            # every few reads, not only once every ready socket was read.
            self.writer.eager[ws.id] = ws
        self.execute(upgraded.outputs)
        return ws, self._sides[upgraded.kind], upgraded.max_message


class _Side:
    """Where one kind of connection's traffic goes; one instance per kind, shared."""

    __slots__ = ("server",)

    def __init__(self, server: RelayServer) -> None:
        self.server = server

    def text(self, conn_id: str, text: str) -> None:
        """A text message arrived."""

    def heard(self, conn_id: str) -> None:
        """A ping or pong arrived."""

    def oversized(self, conn_id: str, size: int) -> None:
        """A message over the limit was discarded."""

    def slow(self, conn_id: str) -> None:
        """A slow consumer: closed as any other (4101)."""
        conn = self.server.conns.get(conn_id)
        if conn is not None:
            self.server._slow_consumer(conn)

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        """The connection ended."""
        self.server.conns.pop(conn_id, None)


class _SocketsSide(_Side):
    """Every socket's traffic: the relay's socket entry points."""

    __slots__ = ()

    def text(self, conn_id: str, text: str) -> None:
        server = self.server
        server.execute(server.relay.socket_message(conn_id, text, server.now()), flush=False)

    def heard(self, conn_id: str) -> None:
        self.server.relay.socket_heard(conn_id, self.server.now())

    def oversized(self, conn_id: str, size: int) -> None:
        self.server.execute(self.server.relay.socket_oversized(conn_id, size))

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        server = self.server
        server.conns.pop(conn_id, None)
        server.execute(server.relay.socket_closed(conn_id, server.now(), code, reason))
        log.info(
            "socket %s disconnected (%s %s)", conn_id, code, escaped(reason),
            extra=fields("socket_disconnected", socket=conn_id, code=code, reason=escaped(reason)),
        )


class _PipesSide(_Side):
    """Every pipe's traffic: the relay's pipe entry points."""

    __slots__ = ()

    def text(self, conn_id: str, text: str) -> None:
        server = self.server
        server.execute(server.relay.pipe_message(conn_id, text, server.now()), flush=False)

    def heard(self, conn_id: str) -> None:
        self.server.relay.pipe_heard(conn_id, self.server.now())

    def oversized(self, conn_id: str, size: int) -> None:
        self.server.execute(self.server.relay.pipe_oversized(conn_id, self.server.now()))

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        server = self.server
        server.conns.pop(conn_id, None)
        server._pipes.discard(conn_id)
        server.writer.eager.pop(conn_id, None)
        server.execute(server.relay.pipe_closed(conn_id, server.now(), code))
        log.info(
            "pipe %s disconnected (%s %s)", conn_id, code, escaped(reason),
            extra=fields("pipe_disconnected", pipe=conn_id, code=code, reason=escaped(reason)),
        )


async def serve(
    relay: Relay,
    host: str = "127.0.0.1",
    port: int = 6001,
    *,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[RelayServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``relay`` on ``host:port`` (TLS when ``ssl_context`` is given) until cancelled.

    ``await nursery.start(serve, relay, host, port)`` returns the running
    :class:`RelayServer` once it listens (its listeners' ports are bound, so
    ``port=0`` works). ``reuse_port``: several processes may listen on the
    same port (``SO_REUSEPORT``, Linux and BSDs), the kernel spreading new
    connections across them (``pipe-relay serve --workers``).
    """
    listeners = await open_listeners(host, port, ssl_context, reuse_port=reuse_port)
    server = RelayServer(relay, secure=ssl_context is not None, **options)
    await server.serve(listeners, task_status=task_status)


async def open_listeners(
    host: str, port: int, ssl_context: ssl.SSLContext | None = None, *, reuse_port: bool = False
) -> list[trio.abc.Listener[Any]]:
    """The listeners :func:`serve` serves on: TCP on ``host:port``, under TLS when ``ssl_context`` is given.

    Raises:
        OSError: the port is in use, the address is not this machine's, ...
    """
    listeners: list[trio.abc.Listener[Any]] = list(await _tcp_listeners(host, port, reuse_port))
    if ssl_context is not None:
        listeners = [trio.SSLListener(listener, ssl_context, https_compatible=True) for listener in listeners]
    return listeners


async def _tcp_listeners(host: str, port: int, reuse_port: bool) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners``, with the connections' TCP options set on each listener before
    it listens (:func:`._accept.set_tcp_options`), and ``SO_REUSEPORT`` if asked."""
    listeners: list[trio.SocketListener] = []
    unsupported: list[OSError] = []
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE)
    try:
        for family, kind, proto, _, address in infos:
            try:
                sock = trio.socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported.append(exc)  # no IPv6 here, say: the other families serve
                continue
            try:
                if sys.platform != "win32":  # there it would let another process take the port
                    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                set_tcp_options(sock)  # before listen: every connection accepted gets them
                await sock.bind(address)
                sock.listen(0xFFFF)  # the kernel caps it at net.core.somaxconn
                listeners.append(trio.SocketListener(sock))
            except BaseException:
                sock.close()
                raise
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    if unsupported and not listeners:
        raise unsupported[0]
    return listeners
