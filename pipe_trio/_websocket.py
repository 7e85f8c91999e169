"""The server's WebSockets after the handshake: two transports behind one interface.

The server asks a :class:`Transport` for each accepted connection
(:meth:`Transport.connection`) and hands it over (:meth:`Transport.serve`);
it never knows which of the two it has:

* :class:`FastTransport`, for plain TCP on Linux: one :class:`Poller` task
  reads every connection through an epoll set of its own (an open
  connection has no task), framed by the relay's own :mod:`._wsframes`.
* :class:`PortableTransport`, for TLS, macOS, Windows and wherever the fast
  one cannot run: each connection is read by its own task, framed by
  wsproto (:mod:`._wsreference`), the reference the fast framing is held
  to. ``PIPE_RELAY_TRANSPORT=portable`` chooses it everywhere, and the
  adapter test suite runs on both.

Reading: bytes go to the connection's frame reader and complete text
messages to its :class:`Side` (the relay's socket or pipe entry points,
shared by every connection of that kind, so a connection carries no
closures of its own). An oversized message is discarded as it streams in,
so nothing buffers more than the limit. A peer that breaks the framing is
closed with 1002 (1007 for text that is not UTF-8); an exception while its
messages are handled (a bug) closes that connection with 1011, on either
transport, and no other.

Writing is the same on both: a list of ready-made frames. A broadcast frame
is built once by the server (:attr:`Framing.text` of its transport) and the
same bytes object is appended to every subscriber's list. Pushing only
marks the connection dirty in the shared :class:`Writer`; when the server
has carried out a batch of outputs it calls :meth:`Writer.flush` (or
:meth:`Writer.flush_soon`, which writes ``FLUSH_TURN`` connections per turn
of Trio's scheduler), and each
dirty connection writes everything it has in one system call, straight to
its (non-blocking) socket (through the stream under TLS or without a file
descriptor). Only what the kernel does not take at once is left to a flush
task, so under load a broadcast costs one ``send`` per subscriber per batch,
and an idle connection has no task and no buffer. The exceptions are the
writer's eager connections (:attr:`Writer.eager`, the pipes), which the
poller also writes every ``EAGER_READS`` reads of a round: their peer, a
backend, is the next stage of the work, not its end.

A connection is judged slow by what the kernel will not take, and for how
long, never by what one batch queued before anything was written: when a
frame would take the queue (the bytes the kernel has not taken yet) past
``max_buffer``, what is queued is first written (unless a write is already
waiting for the kernel); if it is still over, the frame is kept, and the
connection has ``SLOW_GRACE`` seconds to get back under the bound, while its
queue may hold up to ``BURST_ALLOWANCE`` times the bound. Past either,
:meth:`WebSocket.push` returns False (a broadcast lists it as full) and the
server closes it as a slow consumer. So a fast reader takes one request's
burst, however large it is next to the bound, and memory per connection
stays under ``BURST_ALLOWANCE * max_buffer``.

Closing sends a close frame after what is queued (nothing may follow it) and
starts a watchdog: a peer that does not take its last frames and answer
within ``CLOSE_TIMEOUT`` is cut off. Kept lean on purpose: an idle polled
connection is this object, its frame reader and the stream (about 2 KiB).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from typing import Any, ClassVar, NamedTuple, Protocol

import trio

from . import _wsreference
from ._accept import AcceptedStream
from ._io import raw_fd, read_ready, receive
from ._wsframes import CLOSE, OVERSIZED, PING, PONG, TEXT, FrameReader, close_frame, control_frame, text_frame

__all__ = [
    "BURST_ALLOWANCE",
    "CLOSE_TIMEOUT",
    "EAGER_READS",
    "FAST_FRAMING",
    "FLUSH_TURN",
    "POLL_BATCH",
    "REFERENCE_FRAMING",
    "SLOW_CLOSE_TIMEOUT",
    "SLOW_GRACE",
    "TRANSPORT_VARIABLE",
    "FastTransport",
    "Framing",
    "Polled",
    "PolledWebSocket",
    "Poller",
    "PortableTransport",
    "PortableWebSocket",
    "Side",
    "Transport",
    "WebSocket",
    "Writer",
    "open_transport",
    "transport_name",
]

log = logging.getLogger("pipe_trio")

#: Seconds a closing connection may take to take its last frames.
CLOSE_TIMEOUT = 5.0
#: The same for a slow consumer: its queue is dropped at once, but the bytes
#: already in the kernel sit before its close frame, and it may read again
#: (a mobile network back from a tunnel) and learn why it was closed.
SLOW_CLOSE_TIMEOUT = 60.0
#: Seconds the bytes the kernel would not take may stay over ``max_buffer``
#: before the connection is a slow consumer (judged at its next frame).
SLOW_GRACE = 5.0
#: While within ``SLOW_GRACE``, the queue may hold this many times
#: ``max_buffer`` (a burst being drained); past it the connection is slow at once.
BURST_ALLOWANCE = 4

#: Most connections the poller reads before the other tasks get a turn (the
#: rest are read next time round): thousands of new connections sending
#: their first messages at once must not keep new ones from being accepted.
POLL_BATCH = 256

#: Connections the poller reads between two writes of the eager connections
#: (:attr:`Writer.eager`): a pipe gets the first events of a large round while
#: the rest are read, so its backend works on them meanwhile instead of after.
EAGER_READS = 16

#: Most connections a deferred flush writes before the other tasks get a turn.
FLUSH_TURN = 128

# Bytes handed to the stream at a time by a flush task.
_FLUSH_SLICE = 65536

#: The environment variable choosing the transport when the server is not
#: told: ``portable``, or ``auto`` (the default: fast where it can run).
TRANSPORT_VARIABLE = "PIPE_RELAY_TRANSPORT"


class Reader(Protocol):
    """A frame reader: :class:`~._wsframes.FrameReader` or :class:`~._wsreference.ReferenceReader`."""

    max_message: int

    def feed(self, data: bytes) -> list[tuple[int, Any]]:
        """The messages ``data`` completes, as ``(kind, value)`` pairs."""
        ...


class Framing(NamedTuple):
    """One WebSocket framing, server side: how frames are read and written."""

    #: A new connection's frame reader.
    reader: Callable[[], Reader]
    #: The text frame carrying a text, ready to write to any socket (server
    #: frames are unmasked: the same bytes serve every subscriber).
    text: Callable[[str], bytes]
    #: A close frame (code None: none, the peer sees 1005) with a reason.
    close: Callable[[int | None, str], bytes]
    #: An empty ping.
    ping: bytes
    #: The pong answering a ping's payload.
    pong: Callable[[bytes], bytes]


#: The relay's own framing (:mod:`._wsframes`), for the fast transport.
FAST_FRAMING = Framing(FrameReader, text_frame, close_frame, control_frame(PING), partial(control_frame, PONG))
#: wsproto's (:mod:`._wsreference`), for the portable transport.
REFERENCE_FRAMING = Framing(
    _wsreference.ReferenceReader,
    _wsreference.text_frame,
    _wsreference.close_frame,
    _wsreference.ping_frame(),
    _wsreference.pong_frame,
)


class Side(Protocol):
    """Where a connection's traffic goes (the relay's socket or pipe entry points)."""

    def text(self, conn_id: str, text: str) -> None:
        """A complete text message arrived."""

    def heard(self, conn_id: str) -> None:
        """A WebSocket ping or pong arrived."""

    def oversized(self, conn_id: str, size: int) -> None:
        """A message over the limit was discarded."""

    def slow(self, conn_id: str) -> None:
        """The connection is a slow consumer: what it must be sent is over its bound (a pong, say)."""

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        """The connection ended."""


class Writer:
    """Writes what connections queued, in one pass, once per batch of outputs.

    Args:
        spawn: starts a task in the server's nursery (for writes the kernel
            could not take at once, and for close watchdogs).
    """

    __slots__ = ("_scheduled", "dirty", "eager", "spawn")

    def __init__(self, spawn: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
        self.spawn = spawn
        self.dirty: list[WebSocket] = []
        #: Connections written as soon as a few reads have produced something
        #: for them (:meth:`write_eager`), by id: the server's pipes.
        self.eager: dict[str, WebSocket] = {}
        self._scheduled = False

    def flush_soon(self) -> None:
        """Flush once every task Trio is running now has had its turn.

        Readers woken together (a hundred sockets each sending one message
        to the same pipe, say) then share one write per connection.
        """
        if self.dirty and not self._scheduled:
            self._scheduled = True
            self.spawn(self._flush_later)

    async def _flush_later(self) -> None:
        # A new task runs in Trio's next batch, after the current one.
        self._scheduled = False
        dirty, self.dirty = self.dirty, []
        for start in range(0, len(dirty), FLUSH_TURN):
            if start:
                # A large fan-out's writes take a while: other tasks get a
                # turn between slices, and what they queue for other
                # connections (a small channel's event) goes out then, not
                # after all of these. Not cancellable: these are queued.
                await trio.lowlevel.cancel_shielded_checkpoint()
            for conn in dirty[start : start + FLUSH_TURN]:
                conn._write_now()

    def broadcast(
        self, frame: bytes, targets: tuple[str, ...], conns: dict[str, WebSocket], full: list[WebSocket]
    ) -> None:
        """Queue the same frame for every target; connections over their limit go to ``full``.

        :meth:`WebSocket.push`, unrolled: this loop runs once per delivery.
        """
        size = len(frame)
        dirty = self.dirty
        get = conns.get
        for target in targets:
            conn = get(target)
            if conn is None or conn.closing:
                continue
            queued = conn._size + size
            if queued > conn.max_buffer:
                if not conn._over_bound(frame):
                    full.append(conn)
                continue
            out = conn._out
            if out is None:
                conn._out = [frame]
            else:
                out.append(frame)
            conn._size = queued
            if not conn._dirty and not conn._flushing:
                conn._dirty = True
                dirty.append(conn)

    def write_these(self, targets: Iterable[str], conns: dict[str, WebSocket]) -> None:
        """Write out what these connections queued now, ahead of the others'."""
        get = conns.get
        for target in targets:
            conn = get(target)
            if conn is not None and conn._dirty:
                conn._write_now()  # still listed as dirty: written again, it finds nothing to write

    def write_eager(self) -> None:
        """Write out what the eager connections queued, ahead of the others'."""
        self.write_these(self.eager, self.eager)

    def flush(self) -> None:
        """Write out every connection that queued something since the last flush."""
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn._write_now()


class WebSocket:
    """A server-side WebSocket after the handshake: its outbound queue, closing, and what its messages mean.

    How it is read is a subclass's business (:class:`PolledWebSocket`,
    :class:`PortableWebSocket`), and so is its framing (``framing``).

    Args:
        stream: the transport (TCP or TLS stream).
        trailing_data: bytes received after the HTTP upgrade request.
        max_buffer: most bytes the kernel may leave unwritten for longer
            than ``SLOW_GRACE`` before the peer counts as a slow consumer.
        writer: the server's :class:`Writer`.
    """

    __slots__ = (
        "_dirty",
        "_drained",
        "_fd",
        "_flushing",
        "_on_end",
        "_out",
        "_over_since",
        "_size",
        "_trailing",
        "_watchdog",
        "close_sent",
        "close_timeout",
        "closing",
        "ended",
        "id",
        "max_buffer",
        "poller",
        "reader",
        "side",
        "stream",
        "writer",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        trailing_data: bytes,
        max_buffer: int,
        writer: Writer,
    ) -> None:
        self.id = ""
        self.stream = stream
        self._fd = raw_fd(stream)
        self.reader = self.framing.reader()
        self._trailing = trailing_data
        self.max_buffer = max_buffer
        self.writer = writer
        self._dirty = False
        # Created on first use: an idle connection has no buffer at all.
        self._out: list[bytes] | None = None
        # Bytes the kernel has not taken: queued, and being written by _flush.
        self._size = 0
        # When the queue passed max_buffer (None: under it).
        self._over_since: float | None = None
        self._flushing = False
        self._drained: trio.Event | None = None
        self._watchdog: trio.CancelScope | None = None
        self.closing = False
        self.close_sent = False
        self.close_timeout = CLOSE_TIMEOUT
        self.side: Side | None = None
        self.poller: Poller | None = None
        #: The close code and reason once the connection has ended.
        self.ended: tuple[int, str] | None = None
        self._on_end: Callable[[WebSocket], Awaitable[None]] | None = None

    @property
    def unwritten(self) -> int:
        """Bytes queued for this connection that the kernel has not taken yet."""
        return self._size

    #: How frames are read and written.
    framing: ClassVar[Framing]

    # ------------------------------------------------------------- writing

    def push(self, frame: bytes) -> bool:
        """Queue a frame; False when the connection is a slow consumer (see the module's docstring)."""
        if self.closing:
            return True
        size = self._size + len(frame)
        if size > self.max_buffer:
            return self._over_bound(frame)
        if self._out is None:
            self._out = [frame]
        else:
            self._out.append(frame)
        self._size = size
        if not self._dirty and not self._flushing:
            self._dirty = True
            self.writer.dirty.append(self)
        return True

    def _over_bound(self, frame: bytes) -> bool:
        """Queue ``frame``, which takes the queue past ``max_buffer``, unless the connection is slow.

        Off the per-delivery path: it runs once per frame over the bound.
        """
        if not self._flushing:
            # Judge what the kernel would not take, not what this batch queued.
            dirty = self._dirty
            self._write_now()
            self._dirty = dirty  # still listed in the writer's dirty list, if it was
            if self.closing:
                return True  # the write failed: the peer is gone and the reader will see it
        size = self._size + len(frame)
        if size > self.max_buffer:
            now = trio.current_time()
            if self._over_since is None:
                self._over_since = now
            elif now - self._over_since > SLOW_GRACE:
                return False
            if size > self.max_buffer * BURST_ALLOWANCE:
                return False
        if self._out is None:
            self._out = [frame]
        else:
            self._out.append(frame)
        self._size = size
        if not self._dirty and not self._flushing:
            self._dirty = True
            self.writer.dirty.append(self)
        return True

    def _wrote(self, size: int) -> None:
        # The kernel took ``size`` bytes of the queue.
        self._size = max(0, self._size - size)  # discard_queue may have zeroed it meanwhile
        if self._size <= self.max_buffer:
            self._over_since = None

    def push_text(self, text: str) -> bool:
        """Queue a text message of this connection only."""
        return self.push(self.framing.text(text))

    def ping(self) -> bool:
        """Queue a WebSocket ping (pipe heartbeats); False when the connection is a slow consumer."""
        return self.close_sent or self.push(self.framing.ping)

    def discard_queue(self) -> None:
        """Forget what is queued and not yet being written (a slow consumer).

        The close that follows waits ``SLOW_CLOSE_TIMEOUT`` for the peer.
        """
        out = self._out
        if out and self._flushing:
            # The first piece may be the rest of a frame the kernel took only
            # part of (before the flush task picked it up): dropping it would
            # corrupt the stream. Any other first piece is one whole frame.
            self._out = out[:1]
            self._size = len(out[0])
        else:
            self._out = None
            self._size = 0
        self._over_since = None
        self.close_timeout = SLOW_CLOSE_TIMEOUT

    def close(self, code: int, reason: str) -> None:
        """Send a close frame after what is queued, then end the connection.

        The peer has ``CLOSE_TIMEOUT`` seconds to take the remaining frames
        and answer the close; after that the connection is cut.
        """
        if self.closing:
            return
        self._send_close(code, reason)
        self.closing = True
        self.writer.spawn(self._watch)

    def _send_close(self, code: int | None, reason: str) -> None:
        if self.close_sent:
            return
        self.close_sent = True
        # Nothing may follow a close frame (RFC 6455 5.5.1): later pushes
        # and broadcasts skip a closing connection.
        self.closing = True
        frame = self.framing.close(None if code == 1005 else code, reason)
        if self._out is None:
            self._out = []
        self._out.append(frame)
        if not self._dirty and not self._flushing:
            self._dirty = True
            self.writer.dirty.append(self)

    async def _watch(self) -> None:
        with trio.CancelScope() as scope:
            self._watchdog = scope
            await trio.sleep(self.close_timeout)
            # A peer that will not read or answer: stop waiting on it. Any
            # task blocked on the stream gets ClosedResourceError.
            self._forget_socket()
            await trio.aclose_forcefully(self.stream)
            self._end((1006, ""))

    def _write_now(self) -> None:
        """Write what is queued with one non-blocking system call; leave the rest to a task."""
        self._dirty = False
        out = self._out
        if self._flushing or not out:
            return
        if self._fd >= 0:
            chunk = out[0] if len(out) == 1 else b"".join(out)
            try:
                written = os.write(self._fd, chunk)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                # The peer is gone; the reader will see it end.
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF, errno.ENOTCONN):
                    log.info("write to %s failed: %s", self.id, exc)
                self._out = None
                self._size = 0
                self.closing = True
                return
            if written == len(chunk):
                self._out = None
                self._size = 0
                self._over_since = None
                return
            rest = chunk[written:]
            self._out = [rest]
            self._wrote(written)
        self._flushing = True
        self.writer.spawn(self._flush)

    async def _flush(self) -> None:
        try:
            while self._out:
                out, self._out = self._out, None
                chunk = memoryview(out[0] if len(out) == 1 else b"".join(out))
                # In slices, so the queue's size follows what the kernel takes.
                for start in range(0, len(chunk), _FLUSH_SLICE):
                    piece = chunk[start : start + _FLUSH_SLICE]
                    await self.stream.send_all(piece)
                    self._wrote(len(piece))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._out = None
            self._size = 0
            self.closing = True
        except Exception:  # pragma: no cover - a bug; never let it take the server down
            log.exception("writer of %s failed", self.id)
            self.closing = True
        finally:
            self._flushing = False
            if self._drained is not None:
                self._drained.set()

    async def aclose(self) -> None:
        """Wait (boundedly) for queued frames to be written, then close the stream."""
        self.writer.flush()
        self.closing = True
        try:
            if self._flushing:
                self._drained = trio.Event()
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._drained.wait()
        finally:
            # Also when cancelled (the server is going away): the socket is closed.
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._forget_socket()
            await trio.aclose_forcefully(self.stream)

    def _forget_socket(self) -> None:
        # Before the socket is closed: from then on its descriptor's number
        # may name another connection, so nothing here may use it again.
        self._detach()
        self._fd = -1
        self.closing = True
        self._out = None
        self._size = 0

    # ------------------------------------------------------------- reading

    def _start(self, side: Side, max_message: int) -> tuple[int, str] | None:
        self.side = side
        self.reader.max_message = max_message
        data, self._trailing = self._trailing, b""
        return self._consume(data) if data else None

    def _end(self, result: tuple[int, str]) -> None:
        if self.ended is None:
            self.ended = result
        self.closing = True
        self._detach()
        # The relay forgets it at once (nothing more is sent to it); closing
        # the socket waits for what is queued, in a task.
        self.report_closed()
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            self.writer.spawn(lambda: on_end(self))

    def report_closed(self) -> None:
        """Tell the side the connection ended (once), with ``ended``'s code and reason."""
        side, self.side = self.side, None
        if side is not None:
            code, reason = self.ended or (1006, "")
            side.closed(self.id, code, reason)

    def _detach(self) -> None:
        # Before the descriptor is closed: its number may soon name another
        # socket. Only a polled connection has anything to undo.
        pass

    def _consume(self, data: bytes) -> tuple[int, str] | None:
        """Handle the messages ``data`` completes; the close code and reason if the connection ended.

        Text messages go to ``side.text``, which may leave what it queued for
        the flush that follows each chunk read; binary messages are ignored
        (the Pusher protocol has none); pings are answered and, like pongs,
        reported to ``side.heard``. A message longer than the limit is
        reported to ``side.oversized``.
        """
        side = self.side
        assert side is not None
        conn_id = self.id
        try:
            for kind, value in self.reader.feed(data):
                if kind == TEXT:
                    if not self.closing:
                        side.text(conn_id, value)
                elif kind == PING:
                    if self.close_sent or self.push(self.framing.pong(value)):
                        side.heard(conn_id)
                    else:  # pings from a peer that reads none of the pongs
                        side.slow(conn_id)
                elif kind == PONG:
                    side.heard(conn_id)
                elif kind == OVERSIZED:
                    if not self.closing:
                        side.oversized(conn_id, value)
                elif kind == CLOSE:
                    code, reason = value
                    self._send_close(code, reason)
                    self.writer.flush()
                    return int(code), reason
                else:  # BROKEN
                    self._send_close(value.code, str(value))
                    self.writer.flush()
                    return int(value.code), str(value)
        except Exception:
            # A bug, here or in the server (the core turns its own into a
            # Failure and a 1011 Close): this connection goes, the others stay.
            log.exception("handling a message from %s failed; closing it with 1011", conn_id)
            self._send_close(1011, "Internal error")
            self.writer.flush()
            return 1011, "Internal error"
        return None


class PolledWebSocket(WebSocket):
    """A plain-TCP connection read by the :class:`Poller`, framed by :mod:`._wsframes`."""

    __slots__ = ()
    framing = FAST_FRAMING

    def hand_over(
        self,
        side: Side,
        max_message: int,
        poller: Poller,
        on_end: Callable[[WebSocket], Awaitable[None]],
        replacing: Polled | None = None,
    ) -> bool:
        """Have ``poller`` read this connection until it ends (in place of ``replacing``, :meth:`Poller.add`).

        No task waits for it: when it ends, ``ended`` is set, the side told,
        and ``on_end`` runs in a task of its own. False if it ended already
        (its first bytes closed it); the caller then reports and cleans up.
        """
        assert self._fd >= 0
        result = self._start(side, max_message)
        if result is not None:
            self.ended = result
            return False
        self.writer.flush_soon()
        self._on_end = on_end
        poller.add(self, replacing)
        return True

    def _readable(self) -> None:
        """The poller saw data (or the end) on this connection: take one read's worth."""
        data = read_ready(self._fd)
        if data is None:
            return
        result = self._consume(data) if data else (1006, "")
        if result is not None:
            self._end(result)

    def _detach(self) -> None:
        if self.poller is not None:
            self.poller.remove(self)

    def _broken(self) -> None:
        log.exception("reading %s failed", self.id)
        self._send_close(1011, "Internal error")
        self._end((1011, "Internal error"))

    def _abandon(self) -> None:
        stream = self.stream
        self._forget_socket()
        if type(stream) is AcceptedStream:
            stream.close()
        elif isinstance(stream, trio.SocketStream):
            stream.socket.close()


class PortableWebSocket(WebSocket):
    """A connection read by a task of its own (any stream: TLS, any system), framed by wsproto."""

    __slots__ = ()
    framing = REFERENCE_FRAMING

    async def run(self, side: Side, max_message: int) -> tuple[int, str]:
        """Read until the connection ends; returns the close code and reason (1006: no close frame)."""
        result = self._start(side, max_message)
        while result is None:
            self.writer.flush_soon()
            data = await receive(self.stream, self._fd)
            if not data:
                return 1006, ""
            result = self._consume(data)
        return result


class Transport(Protocol):
    """How the server's WebSockets are read and framed (see the module's docstring)."""

    #: ``"fast"`` or ``"portable"``.
    name: str
    #: Its framing: the server builds broadcast frames with ``framing.text``.
    framing: Framing

    def connection(self, stream: trio.abc.Stream, trailing_data: bytes, max_buffer: int) -> WebSocket:
        """A new connection on ``stream`` (upgraded; ``trailing_data`` came after its request)."""
        ...

    async def serve(
        self, ws: WebSocket, side: Side, max_message: int, finished: Callable[[WebSocket], Awaitable[None]]
    ) -> None:
        """Read ``ws`` until it ends, reporting its traffic to ``side``.

        When it ends, ``side.closed`` is told (once) and then ``finished(ws)``
        awaited, exactly once, to close it: in this task, or in one of its
        own (this may return while the connection is open).
        """
        ...

    async def run(self) -> None:
        """What the transport runs for the server's lifetime (returns at once if nothing)."""
        ...


class FastTransport:
    """Plain TCP on Linux: every connection read by one :class:`Poller` task, framed by :mod:`._wsframes`."""

    name = "fast"
    framing = FAST_FRAMING

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.poller = Poller(writer)

    def connection(self, stream: trio.abc.Stream, trailing_data: bytes, max_buffer: int) -> WebSocket:
        """A :class:`PolledWebSocket`."""
        return PolledWebSocket(stream, trailing_data, max_buffer, self.writer)

    async def serve(
        self, ws: WebSocket, side: Side, max_message: int, finished: Callable[[WebSocket], Awaitable[None]]
    ) -> None:
        """Hand ``ws`` to the poller and return: an open connection costs no task."""
        self.adopt(ws, side, max_message, finished)

    def adopt(
        self,
        ws: WebSocket,
        side: Side,
        max_message: int,
        finished: Callable[[WebSocket], Awaitable[None]],
        replacing: Polled | None = None,
    ) -> None:
        """:meth:`serve` without a task: ``finished`` runs in a task of its own.

        ``replacing``: what the poller reads ``ws``'s socket for now
        (:meth:`Poller.add`).
        """
        assert isinstance(ws, PolledWebSocket)
        handed_over = False
        try:
            handed_over = ws.hand_over(side, max_message, self.poller, finished, replacing)
        finally:
            if not handed_over:
                try:
                    ws.report_closed()
                finally:
                    self.writer.spawn(lambda: finished(ws))

    async def run(self) -> None:
        """Run the poller."""
        await self.poller.run()


class PortableTransport:
    """Any stream on any system: a task per connection, framed by wsproto."""

    name = "portable"
    framing = REFERENCE_FRAMING

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def connection(self, stream: trio.abc.Stream, trailing_data: bytes, max_buffer: int) -> WebSocket:
        """A :class:`PortableWebSocket`."""
        return PortableWebSocket(stream, trailing_data, max_buffer, self.writer)

    async def serve(
        self, ws: WebSocket, side: Side, max_message: int, finished: Callable[[WebSocket], Awaitable[None]]
    ) -> None:
        """Read ``ws`` in this task until it ends."""
        assert isinstance(ws, PortableWebSocket)
        result = (1006, "")
        try:
            result = await ws.run(side, max_message)
        finally:
            if ws.ended is None:
                ws.ended = result
            try:
                ws.report_closed()
            finally:
                await finished(ws)

    async def run(self) -> None:
        """Nothing to run: each connection has its task."""


def transport_name(name: str | None = None) -> str:
    """The transport asked for: ``name``, else ``$PIPE_RELAY_TRANSPORT``, else ``"auto"``.

    Raises:
        ValueError: neither ``"auto"`` nor ``"portable"``.
    """
    if name is None:
        name = os.environ.get(TRANSPORT_VARIABLE) or "auto"
    if name not in ("auto", "portable"):
        raise ValueError(f"{TRANSPORT_VARIABLE} must be auto or portable, not {name!r}")
    return name


def open_transport(writer: Writer, listeners: Sequence[trio.abc.Listener[Any]], name: str | None = None) -> Transport:
    """The transport for a server on ``listeners``.

    Args:
        writer: the server's writer.
        listeners: what the server accepts connections from.
        name: ``"portable"``, or ``"auto"``: the fast transport when every
            listener is plain TCP and the system has epoll (Linux), else the
            portable one. None: the ``PIPE_RELAY_TRANSPORT`` environment
            variable's, ``"auto"`` when unset.

    Raises:
        ValueError: an unknown name (:func:`transport_name`).
    """
    if transport_name(name) == "portable":
        return PortableTransport(writer)
    plain = all(type(listener) is trio.SocketListener for listener in listeners)
    if plain and hasattr(select, "epoll") and os.name == "posix":
        return FastTransport(writer)
    return PortableTransport(writer)


class Polled(Protocol):
    """What a :class:`Poller` reads: a polled WebSocket, or a connection waiting for its request."""

    #: Its socket's descriptor (registered while it is polled).
    _fd: int
    poller: Poller | None

    def _readable(self) -> None:
        """Its socket has data (or the end): take one read's worth."""

    def _broken(self) -> None:
        """``_readable`` raised (a bug): end this connection and no other."""

    def _abandon(self) -> None:
        """The poller is going away (the server is): close the socket, telling nobody."""


class Poller:
    """Reads every plain-TCP connection from one task, through an epoll set of its own.

    Waiting on each socket with ``trio.lowlevel.wait_readable`` re-arms
    Trio's one-shot epoll registration with a system call per wait, and
    wakes a task per message: together about a third of the relay's CPU
    when many sockets each send a little (the Pipe round trip). Here each
    connection is registered once (level-triggered), one task waits for the
    set to become readable, reads one chunk from each ready connection,
    hands the messages on, and flushes what they produced together; the
    writer's eager connections (pipes) are written every ``EAGER_READS``
    reads as well, so a backend starts on the first events of a large
    round while the relay reads the rest. A
    connection read here has no task of its own while it is open, nor
    while it is waiting for its upgrade request.
    """

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._epoll = select.epoll()
        self._conns: dict[int, Polled] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, polled: Polled, replacing: Polled | None = None) -> None:
        """Start reading ``polled``.

        ``replacing``: what this poller reads ``polled``'s socket for now (the
        connection waiting for its request, whose WebSocket ``polled`` is);
        ``polled`` takes over its registration without a system call.
        """
        fd = polled._fd
        polled.poller = self
        if replacing is not None and self._conns.get(fd) is replacing:
            replacing.poller = None
            self._conns[fd] = polled
            return
        self._conns[fd] = polled
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)

    def remove(self, polled: Polled) -> None:
        """Stop reading ``polled``."""
        polled.poller = None
        if self._conns.get(polled._fd) is polled:
            del self._conns[polled._fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(polled._fd)

    async def run(self) -> None:
        """Read until cancelled."""
        conns = self._conns
        poll = self._epoll.poll
        eager = self.writer.eager
        write_eager = self.writer.write_eager
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                reads = 0
                for fd, _ in poll(0, POLL_BATCH):
                    polled = conns.get(fd)
                    if polled is None:
                        continue
                    try:
                        polled._readable()
                    except Exception:  # a bug past _consume's guard: this connection goes, the others stay
                        polled._broken()
                    reads += 1
                    if reads == EAGER_READS:
                        reads = 0
                        if eager:
                            write_eager()
                self.writer.flush()
        finally:
            # Cancelled (the server is going away): nobody waits on these
            # connections, so their sockets are closed here.
            for polled in list(conns.values()):
                polled._abandon()
            self._epoll.close()
