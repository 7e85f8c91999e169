"""Small I/O pieces shared by the relay's WebSockets and the clients' (open_pipe and connect)."""

from __future__ import annotations

import os

import trio

from ._accept import AcceptedStream

__all__ = ["RECEIVE_SIZE", "RandomBytes", "escaped", "raw_fd", "read_now", "read_ready", "receive"]

#: Most bytes taken from a socket in one read.
RECEIVE_SIZE = 65536


def escaped(value: object, limit: int = 200) -> str:
    """``value`` as one printable line, for a log or an error message: what a client sent goes through here.

    Control characters (newlines included) and other unprintable ones are
    escaped as in a Python literal, so a client cannot start a log line of
    its own, and the text is cut to ``limit`` characters (then ``...``), so
    it cannot fill a log or a response either.
    """
    text = str(value)
    shown = repr(text[:limit])[1:-1]
    return shown + "..." if len(text) > limit else shown


def raw_fd(stream: trio.abc.Stream) -> int:
    """The descriptor to read and write directly, or -1.

    -1 for TLS (bytes go through the SSL object) and off POSIX (a Windows
    socket handle is no file descriptor for ``os.read``): those use the stream.
    """
    if type(stream) is AcceptedStream:
        return stream.fd
    if isinstance(stream, trio.SocketStream) and os.name == "posix":
        return stream.socket.fileno()
    return -1


def read_now(stream: trio.abc.Stream) -> bytes:
    """What the peer has already sent, without waiting (``b""``: nothing yet, or no raw descriptor)."""
    fd = raw_fd(stream)
    if fd < 0:
        return b""
    try:
        return os.read(fd, RECEIVE_SIZE)
    except OSError:  # nothing yet (EAGAIN), or trouble the next read will meet again
        return b""


def read_ready(fd: int) -> bytes | None:
    """One read from a descriptor epoll said is readable: None if nothing after all, ``b""`` if it ended."""
    try:
        return os.read(fd, RECEIVE_SIZE)
    except BlockingIOError:
        return None
    except OSError:  # reset, or another error the connection will not survive
        return b""


async def receive(stream: trio.abc.Stream, fd: int) -> bytes:
    """The next bytes from the peer (``b""``: the connection ended).

    On plain TCP (``fd`` from :func:`raw_fd`), waits on the socket itself and
    reads it without blocking: a waiting connection then holds one small
    coroutine frame instead of the stream, socket and helper frames of
    ``receive_some``.
    """
    try:
        if fd < 0:
            return bytes(await stream.receive_some(RECEIVE_SIZE))
        socket = stream.socket  # type: ignore[attr-defined]  # raw_fd gave a descriptor: a TCP stream with a .socket
        while True:
            await trio.lowlevel.wait_readable(fd)
            if socket.fileno() != fd:
                return b""  # closed meanwhile: the number may already name another socket
            try:
                return os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue  # woken without data after all
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return b""


class RandomBytes:
    """Unpredictable bytes from the OS, read a block at a time.

    Connection ids and WebSocket masks need fresh randomness for every
    connection or frame; a system call each was a measurable part of both.
    """

    __slots__ = ("_at", "_block")

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        """``n`` (at most 4096) bytes never handed out before."""
        if self._at + n > len(self._block):
            self._block = os.urandom(4096)
            self._at = 0
        at = self._at
        self._at = at + n
        return self._block[at : at + n]
