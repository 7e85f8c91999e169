"""Accepting plain-TCP connections in batches, without a Trio wait per connection.

``trio.SocketListener.accept`` hands out one connection per call, and each
call is a checkpoint: in a reconnect storm (thousands of clients at once)
the accepting task goes through Trio's scheduler once per connection, and
so does the task spawned for each. :class:`BatchAcceptor` takes every
connection the kernel has ready in one go, and the server handles the usual
upgrade request of each on the spot (``RelayServer._accept_batches``).

The errors are Trio's: the ones a peer causes by going away before it was
accepted are skipped, a closed listener raises ``trio.ClosedResourceError``,
and any other ``OSError`` (out of descriptors, say) goes to the caller,
after the connections accepted before it.

Each connection comes as an :class:`AcceptedStream`, not a
``trio.SocketStream``: that one sets ``TCP_NODELAY`` and
``TCP_NOTSENT_LOWAT`` on every new socket, two system calls per
connection, where Linux copies both from the listening socket on accept
(and the fast transport, the only user of this module, is Linux's). The
options are set once on the listener (:func:`set_tcp_options`), and the peer's
address comes with the connection, not from a ``getpeername`` call: three
system calls fewer, about 5 % of the relay's CPU per new connection.

Nor does a connection get a socket object when it is accepted: the fast
transport reads and writes its descriptor, and building a standard socket
and a Trio socket around every new connection (Python code of both, for
each) was 5 % to 15 % more of it, in three alternating pairs of S1 runs.
An :class:`AcceptedStream` makes its Trio socket the first time something
asks for it: a write that has to wait, a connection handed to a task (a
REST call, a request that is not the usual upgrade, a refusal), a
listener without the TCP options, a test.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import trio

if sys.platform != "win32":
    import fcntl

__all__ = ["ACCEPT_BATCH", "ACCEPT_PENDING", "AcceptedStream", "BatchAcceptor", "set_tcp_options"]

#: Most new connections handled in one go (between two turns of the other tasks).
ACCEPT_BATCH = 64
#: Most connections accepted and waiting to be handled.
ACCEPT_PENDING = 4096

# What a connection that went away before accept() returns causes (as Trio skips them).
_SKIPPED = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN",
        "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
    )
    if hasattr(errno, name)
)
_CLOSED = frozenset((errno.EBADF, errno.ENOTSOCK))

#: What ``trio.SocketStream`` sets on each connection: no Nagle delay, and at
#: most 16 KiB unsent in the kernel before the socket stops being writable.
_TCP_OPTIONS = (
    (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
    *(((socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 2**14),) if hasattr(socket, "TCP_NOTSENT_LOWAT") else ()),
)


def set_tcp_options(sock: Any) -> None:
    """Set the options ``trio.SocketStream`` sets on a connection on ``sock`` (a standard or Trio
    socket), each that it accepts. Set on a listener before it listens, Linux gives them to every
    connection it accepts."""
    for level, option, value in _TCP_OPTIONS:
        with suppress(OSError):
            sock.setsockopt(level, option, value)


def _has_tcp_options(sock: socket.socket) -> bool:
    """Whether ``sock`` has every one of :data:`_TCP_OPTIONS` (False on a socket that is not TCP)."""
    try:
        return all(sock.getsockopt(level, option) == value for level, option, value in _TCP_OPTIONS)
    except OSError:
        return False


@contextmanager
def _stream_errors() -> Iterator[None]:
    # As trio.SocketStream reports them.
    try:
        yield
    except OSError as exc:
        if exc.errno in _CLOSED:
            raise trio.ClosedResourceError("this socket was already closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


@functools.cache
def _closed_socket() -> trio.socket.SocketType:
    # What a closed AcceptedStream that never made its socket answers with:
    # a closed Trio socket (made once, shared: nothing changes a closed socket).
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    return sock


class AcceptedStream(trio.abc.HalfCloseableStream):
    """A connection :class:`BatchAcceptor` accepted: a ``trio.SocketStream`` in behaviour.

    Args:
        fd: the connection's descriptor, non-blocking; the stream owns it.
        family: its address family.
        address: the peer's IP address, as ``accept`` gave it.

    Attributes:
        fd: the descriptor to read and write directly; -1 once closed.
        address: the peer's IP address.
    """

    def __init__(self, fd: int, family: int, address: str | None) -> None:
        self.fd = fd
        self.address = address
        self._family = family
        self._socket: trio.socket.SocketType | None = None
        self._sending = False

    @property
    def socket(self) -> trio.socket.SocketType:
        """The Trio socket, made the first time it is asked for (a closed one once the stream is closed)."""
        sock = self._socket
        if sock is None:
            if self.fd < 0:
                return _closed_socket()
            std = socket.socket(self._family, socket.SOCK_STREAM, 0, self.fd)
            try:
                sock = trio.socket.from_stdlib_socket(std)
            except BaseException:
                std.detach()  # the descriptor stays this stream's to close
                raise
            self._socket = sock
        return sock

    def close(self) -> None:
        """Close the connection now (idempotent); a Trio task waiting on it is woken."""
        if self._socket is not None:
            self._socket.close()
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        # As a socket object would: a warning, and its descriptor goes with it.
        fd = self.fd
        if self._socket is None and fd >= 0:
            self.fd = -1
            os.close(fd)
            warnings.warn(f"unclosed accepted connection (descriptor {fd})", ResourceWarning, stacklevel=1, source=self)

    @contextmanager
    def _one_sender(self) -> Iterator[None]:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this stream")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` (see ``trio.abc.SendStream.send_all``)."""
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        with self._one_sender(), _stream_errors(), memoryview(data) as view:
            if not view:
                if self.socket.fileno() == -1:
                    raise trio.ClosedResourceError("socket was already closed")
                await trio.lowlevel.checkpoint()
                return
            sent = 0
            while sent < len(view):
                with view[sent:] as rest:
                    sent += await self.socket.send(rest)

    async def wait_send_all_might_not_block(self) -> None:
        """Until the socket is writable."""
        with self._one_sender():
            if self.socket.fileno() == -1:
                raise trio.ClosedResourceError
            with _stream_errors():
                await self.socket.wait_writable()

    async def send_eof(self) -> None:
        """Shut the sending half down (idempotent)."""
        with self._one_sender():
            await trio.lowlevel.checkpoint()
            if self.socket.did_shutdown_SHUT_WR:
                return
            with _stream_errors():
                self.socket.shutdown(trio.socket.SHUT_WR)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` (64 KiB by default) received; ``b""`` at the end."""
        if max_bytes is None:
            max_bytes = 65536
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with _stream_errors():
            return await self.socket.recv(max_bytes)

    async def aclose(self) -> None:
        """Close the socket."""
        self.close()
        await trio.lowlevel.checkpoint()


class BatchAcceptor:
    """Accepts what a ``trio.SocketListener`` has ready, a batch at a time.

    It accepts through a duplicate of the listener's descriptor (a standard
    socket of its own, so no private Trio attribute is touched); :meth:`close`
    releases it. A listener not set up by :func:`set_tcp_options` (TCP
    options missing) gets the options on each connection instead.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        self._waiter = listener.socket
        self._socket = socket.socket(fileno=os.dup(listener.socket.fileno()))
        self._socket.setblocking(False)
        self._family = int(self._socket.family)
        self._inherited = _has_tcp_options(self._socket)

    def accept_now(self, limit: int) -> list[AcceptedStream]:
        """The connections ready now, at most ``limit`` (never waits)."""
        accepted: list[AcceptedStream] = []
        while len(accepted) < limit:
            try:
                # The descriptor alone (socket.accept would wrap it in an object).
                fd, address = self._socket._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _SKIPPED:
                    continue
                if accepted:
                    break  # these first; the error will come again
                if exc.errno in _CLOSED:
                    raise trio.ClosedResourceError from None
                raise
            stream = AcceptedStream(fd, self._family, str(address[0]) if address else None)
            # Linux's accept does not pass O_NONBLOCK on; a fresh socket has no other flag F_SETFL changes.
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            if not self._inherited:
                set_tcp_options(stream.socket)
            accepted.append(stream)
        return accepted

    async def wait(self) -> None:
        """Until a connection is ready (or the listener is closed)."""
        await trio.lowlevel.wait_readable(self._waiter)

    def close(self) -> None:
        """Release the duplicate descriptor (the listener itself is its owner's to close)."""
        self._socket.close()
