"""One accepted WebSocket: how it is read, and its bounded outbound buffer.

Reading: bytes go to a :class:`~pipe_trio._wsframes.FrameReader` and complete
text messages to the connection's :class:`Side` (the relay's socket or pipe
entry points, shared by every connection of that kind, so a connection
carries no closures of its own). An oversized message is discarded as it
streams in, so nothing buffers more than the limit. On Linux the
:class:`Poller` reads every plain-TCP connection from one task; a TLS
connection (or any, without epoll) reads in its own task (:meth:`WebSocket.run`).

The writer side is a list of ready-made frames: a broadcast frame is built
once by the server and the same bytes object is appended to every
subscriber's list. Pushing only marks the connection dirty in the shared
:class:`Writer`; when the server has carried out a batch of outputs it calls
:meth:`Writer.flush`, and each dirty connection writes everything it has in
one system call, straight to its (non-blocking) socket. Only what the kernel
does not take at once is left to a flush task, so under load a broadcast
costs one ``send`` per subscriber per batch, and an idle connection has no
task and no buffer.

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
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ._io import RECEIVE_SIZE, raw_fd, receive
from ._wsframes import CLOSE, OVERSIZED, PING, PONG, TEXT, FrameReader, close_frame, control_frame, text_frame

__all__ = [
    "BURST_ALLOWANCE",
    "CLOSE_TIMEOUT",
    "SLOW_CLOSE_TIMEOUT",
    "SLOW_GRACE",
    "Poller",
    "Side",
    "WebSocket",
    "Writer",
    "broadcast_frame",
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

# Bytes handed to the stream at a time by a flush task.
_FLUSH_SLICE = 65536

#: The bytes of a text frame carrying a text, ready to write to any socket
#: (server frames are unmasked: the same bytes serve every subscriber).
broadcast_frame = text_frame


class Side(Protocol):
    """Where a connection's traffic goes (the relay's socket or pipe entry points)."""

    def text(self, conn_id: str, text: str) -> None:
        """A complete text message arrived."""

    def heard(self, conn_id: str) -> None:
        """A WebSocket ping or pong arrived."""

    def oversized(self, conn_id: str, size: int) -> None:
        """A message over the limit was discarded."""

    def closed(self, conn_id: str, code: int, reason: str) -> None:
        """The connection ended."""


class Writer:
    """Writes what connections queued, in one pass, once per batch of outputs.

    Args:
        spawn: starts a task in the server's nursery (for writes the kernel
            could not take at once, and for close watchdogs).
    """

    __slots__ = ("_scheduled", "dirty", "spawn")

    def __init__(self, spawn: Callable[[Callable[[], Awaitable[None]]], None]) -> None:
        self.spawn = spawn
        self.dirty: list[WebSocket] = []
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
        self.flush()

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

    def flush(self) -> None:
        """Write out every connection that queued something since the last flush."""
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn._write_now()


class WebSocket:
    """A server-side WebSocket after the handshake.

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
        self.reader = FrameReader()
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

    @property
    def pollable(self) -> bool:
        """Whether a :class:`Poller` can read it (plain TCP: its descriptor is known)."""
        return self._fd >= 0

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
        return self.push(broadcast_frame(text))

    def ping(self) -> bool:
        """Queue a WebSocket ping (pipe heartbeats); False when the connection is a slow consumer."""
        return self.close_sent or self.push(control_frame(PING))

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
        frame = close_frame(None if code == 1005 else code, reason)
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
        if self._flushing:
            self._drained = trio.Event()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._drained.wait()
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

    async def run(self, side: Side, max_message: int) -> tuple[int, str]:
        """Read until the connection ends; returns the close code and reason.

        Text messages go to ``side.text``, which may leave what it queued for
        the flush that follows each chunk read; binary messages are ignored (the
        Pusher protocol has none); pings are answered and, like pongs,
        reported to ``side.heard``. A message longer than ``max_message``
        bytes is dropped as it arrives and reported to ``side.oversized``.
        A peer that breaks the WebSocket framing is closed with 1002 (1007
        for text that is not UTF-8).
        """
        result = self._start(side, max_message)
        while result is None:
            self.writer.flush_soon()
            data = await self._receive()
            if not data:
                return 1006, ""
            result = self._consume(data)
        return result

    def hand_over(
        self, side: Side, max_message: int, poller: Poller, on_end: Callable[[WebSocket], Awaitable[None]]
    ) -> bool:
        """Have ``poller`` read this (plain TCP) connection, as :meth:`run` would.

        No task waits for it: when it ends, ``ended`` is set and ``on_end``
        runs in a task of its own. False if it ended already (its first
        bytes closed it); the caller then cleans up as after :meth:`run`.
        """
        assert self._fd >= 0
        result = self._start(side, max_message)
        if result is not None:
            self.ended = result
            return False
        self.writer.flush_soon()
        self._on_end = on_end
        poller.add(self)
        return True

    def _start(self, side: Side, max_message: int) -> tuple[int, str] | None:
        self.side = side
        self.reader.max_message = max_message
        data, self._trailing = self._trailing, b""
        return self._consume(data) if data else None

    def _readable(self) -> None:
        """The poller saw data (or the end) on this connection: take one read's worth."""
        try:
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        result = self._consume(data) if data else (1006, "")
        if result is not None:
            self._end(result)

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
        # Before the descriptor is closed: its number may soon name another socket.
        if self.poller is not None:
            self.poller.remove(self)

    def _consume(self, data: bytes) -> tuple[int, str] | None:
        """Handle the messages ``data`` completes; the close code and reason if the connection ended."""
        side = self.side
        assert side is not None
        conn_id = self.id
        for kind, value in self.reader.feed(data):
            if kind == TEXT:
                if not self.closing:
                    side.text(conn_id, value)
            elif kind == PING:
                if not self.close_sent:
                    self.push(control_frame(PONG, value))
                side.heard(conn_id)
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
        return None

    async def _receive(self) -> bytes:
        return await receive(self.stream, self._fd)


class Poller:
    """Reads every plain-TCP connection from one task, through an epoll set of its own.

    Waiting on each socket with ``trio.lowlevel.wait_readable`` re-arms
    Trio's one-shot epoll registration with a system call per wait, and
    wakes a task per message: together about a third of the relay's CPU
    when many sockets each send a little (the Pipe round trip). Here each
    connection is registered once (level-triggered), one task waits for the
    set to become readable, reads one chunk from each ready connection,
    hands the messages on, and flushes what they produced together. A
    connection read here has no task of its own while it is open.
    """

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self._epoll = select.epoll()
        self._conns: dict[int, WebSocket] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, ws: WebSocket) -> None:
        """Start reading ``ws`` (its reader task then waits for the end)."""
        self._conns[ws._fd] = ws
        ws.poller = self
        self._epoll.register(ws._fd, select.EPOLLIN | select.EPOLLRDHUP)

    def remove(self, ws: WebSocket) -> None:
        """Stop reading ``ws``."""
        ws.poller = None
        if self._conns.get(ws._fd) is ws:
            del self._conns[ws._fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(ws._fd)

    async def run(self) -> None:
        """Read until cancelled."""
        conns = self._conns
        poll = self._epoll.poll
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, _ in poll(0, 4096):
                    ws = conns.get(fd)
                    if ws is None:
                        continue
                    try:
                        ws._readable()
                    except Exception:  # a bug: this connection goes, the others stay
                        log.exception("reading %s failed", ws.id)
                        ws._send_close(1011, "internal error")
                        ws._end((1011, "internal error"))
                self.writer.flush()
        finally:
            # Cancelled (the server is going away): nobody waits on these
            # connections, so their sockets are closed here.
            for ws in list(conns.values()):
                stream = ws.stream
                ws._forget_socket()
                if isinstance(stream, trio.SocketStream):
                    stream.socket.close()
            self._epoll.close()
