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
"""

from __future__ import annotations

import errno
import os
import socket

import trio

__all__ = ["ACCEPT_BATCH", "ACCEPT_PENDING", "BatchAcceptor"]

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


class BatchAcceptor:
    """Accepts what a ``trio.SocketListener`` has ready, a batch at a time.

    It accepts through a duplicate of the listener's descriptor (a standard
    socket of its own, so no private Trio attribute is touched); :meth:`close`
    releases it.
    """

    def __init__(self, listener: trio.SocketListener) -> None:
        self._waiter = listener.socket
        self._socket = socket.socket(fileno=os.dup(listener.socket.fileno()))
        self._socket.setblocking(False)

    def accept_now(self, limit: int) -> list[trio.SocketStream]:
        """The connections ready now, at most ``limit`` (never waits)."""
        accepted: list[trio.SocketStream] = []
        while len(accepted) < limit:
            try:
                sock, _ = self._socket.accept()
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
            accepted.append(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        return accepted

    async def wait(self) -> None:
        """Until a connection is ready (or the listener is closed)."""
        await trio.lowlevel.wait_readable(self._waiter)

    def close(self) -> None:
        """Release the duplicate descriptor (the listener itself is its owner's to close)."""
        self._socket.close()
