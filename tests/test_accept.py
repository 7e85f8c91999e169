"""New connections: accepted in batches (the fast transport), whenever and however their request comes.

The fast transport upgrades a connection whose request is there when it is
accepted without a task; any other goes to a handler task with what was
read. Each test here drives one of those paths with real loopback sockets
and checks the client's view, on both transports.
"""

from __future__ import annotations

import gc
import json
import os
import socket
from typing import Any

import pytest
import trio
import trio.testing

from pipe_trio import RelayServer
from pipe_trio._accept import ACCEPT_BATCH, AcceptedStream, BatchAcceptor
from pipe_trio._websocket import FastTransport, PolledWebSocket, Poller
from pipe_trio._wsframes import CLOSE, TEXT, close_payload, masked_frame
from pipe_trio.server import open_listeners
from tests.support import APP_KEY, read_until

pytestmark = pytest.mark.both_transports

UPGRADE_HEAD = (
    f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\n"
    "connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
).encode()


async def test_a_batch_takes_every_connection_the_kernel_has_ready() -> None:
    with trio.fail_after(10):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        acceptor = BatchAcceptor(listener)
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(ACCEPT_BATCH + 3)]
        await acceptor.wait()
        first = acceptor.accept_now(ACCEPT_BATCH)
        second = acceptor.accept_now(ACCEPT_BATCH)
        assert (len(first), len(second), acceptor.accept_now(ACCEPT_BATCH)) == (ACCEPT_BATCH, 3, [])
        # Each is a stream of its own, connected to one of the clients.
        await first[0].send_all(b"hello")
        assert [await c.receive_some(5) for c in clients[:1]] == [b"hello"]
        for stream in [*first, *second, *clients]:
            await stream.aclose()
        acceptor.close()
        await listener.aclose()


def _tcp_options(stream: AcceptedStream) -> tuple[int, int]:
    return (
        stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT),
    )


async def _one_accepted(listener: trio.SocketListener) -> tuple[AcceptedStream, trio.SocketStream]:
    port = listener.socket.getsockname()[1]
    acceptor = BatchAcceptor(listener)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await acceptor.wait()
    (accepted,) = acceptor.accept_now(1)
    acceptor.close()
    return accepted, client


@pytest.mark.parametrize("made_by", ["open_listeners", "trio"])
async def test_accepted_connections_have_the_tcp_options_of_a_trio_socket_stream(made_by: str) -> None:
    # The relay's own listeners carry the options (Linux copies them on
    # accept, so no call per connection); any other listener's connections
    # get them one by one, as trio.SocketStream sets them.
    with trio.fail_after(10):
        if made_by == "open_listeners":
            (listener,) = await open_listeners("127.0.0.1", 0)
        else:
            (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        assert isinstance(listener, trio.SocketListener)
        accepted, client = await _one_accepted(listener)
        assert _tcp_options(accepted) == (1, 2**14)
        # Set on the listener only by the relay's own (the per-connection way is the fallback).
        on_listener = listener.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert on_listener == (made_by == "open_listeners")
        assert accepted.address == "127.0.0.1"
        for stream in (accepted, client, listener):
            await stream.aclose()


async def test_an_accepted_stream_behaves_as_a_trio_half_closeable_stream() -> None:
    async def pair() -> tuple[AcceptedStream, trio.SocketStream]:
        (listener,) = await open_listeners("127.0.0.1", 0)
        assert isinstance(listener, trio.SocketListener)
        accepted, client = await _one_accepted(listener)
        await listener.aclose()
        return accepted, client

    async def fill(stream: trio.abc.SendStream) -> None:
        # Sends until one blocks (the buffers are full), then gives up on it.
        async def send_forever() -> None:
            while True:
                await stream.send_all(b"x" * 10000)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_forever)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    async def clogged() -> tuple[AcceptedStream, trio.SocketStream]:
        accepted, client = await pair()
        await fill(accepted)
        await fill(client)
        return accepted, client

    with trio.fail_after(60):
        await trio.testing.check_half_closeable_stream(pair, clogged)


async def test_an_accepted_descriptor_is_non_blocking_and_closed_with_its_stream() -> None:
    # The fast transport reads and writes the descriptor itself: a read with
    # nothing there must not block the relay. Closed before anything asked
    # for its socket, the connection still ends for the peer, and the stream
    # then looks like a closed trio.SocketStream.
    with trio.fail_after(10):
        (listener,) = await open_listeners("127.0.0.1", 0)
        assert isinstance(listener, trio.SocketListener)
        accepted, client = await _one_accepted(listener)
        assert os.get_blocking(accepted.fd) is False
        with pytest.raises(BlockingIOError):
            os.read(accepted.fd, 10)
        await client.send_all(b"ping")
        await trio.lowlevel.wait_readable(accepted.fd)
        assert os.read(accepted.fd, 10) == b"ping"
        accepted.close()
        assert accepted.fd == -1
        assert await client.receive_some(10) == b""
        assert accepted.socket.fileno() == -1
        await accepted.aclose()  # again: nothing happens
        with pytest.raises(trio.ClosedResourceError):
            await accepted.send_all(b"x")
        for stream in (client, listener):
            await stream.aclose()


async def test_an_accepted_stream_dropped_unclosed_closes_its_descriptor_and_warns() -> None:
    # As a dropped socket object does: the peer sees the end, and the leak is reported.
    with trio.fail_after(10):
        (listener,) = await open_listeners("127.0.0.1", 0)
        assert isinstance(listener, trio.SocketListener)
        accepted, client = await _one_accepted(listener)
        with pytest.warns(ResourceWarning, match="unclosed accepted connection"):
            del accepted
            gc.collect()
        assert await client.receive_some(10) == b""
        for stream in (client, listener):
            await stream.aclose()


async def test_a_closed_acceptor_says_so() -> None:
    with trio.fail_after(10):
        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        acceptor = BatchAcceptor(listener)
        acceptor.close()
        with pytest.raises(trio.ClosedResourceError):
            acceptor.accept_now(1)
        await listener.aclose()


async def test_a_request_sent_after_the_connection_was_accepted_and_in_pieces_is_upgraded(
    relay_server: RelayServer,
) -> None:
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", relay_server.port) as stream:
            await trio.testing.wait_all_tasks_blocked(0.01)  # accepted, with nothing to read yet
            half = len(UPGRADE_HEAD) // 2
            await stream.send_all(UPGRADE_HEAD[:half])
            await trio.testing.wait_all_tasks_blocked(0.01)
            await stream.send_all(UPGRADE_HEAD[half:])
            answer = await read_until(stream, b"connection_established")
    assert answer.startswith(b"HTTP/1.1 101 ")


class _RecordingEpoll:
    """The poller's epoll set, with every registration and unregistration recorded."""

    def __init__(self, epoll: Any) -> None:
        self.epoll = epoll
        self.calls: list[tuple[str, int]] = []

    def register(self, fd: int, mask: int) -> None:
        self.calls.append(("register", fd))
        self.epoll.register(fd, mask)

    def unregister(self, fd: int) -> None:
        self.calls.append(("unregister", fd))
        self.epoll.unregister(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.epoll, name)


def _recorded_poller(server: RelayServer) -> tuple[Poller, _RecordingEpoll] | None:
    """The fast transport's poller, its epoll calls recorded from now on (None: the portable transport)."""
    if not isinstance(server.transport, FastTransport):
        return None
    poller = server.transport.poller
    recording = _RecordingEpoll(poller._epoll)
    poller._epoll = recording
    return poller, recording


async def _accepted_waiting(server: RelayServer) -> trio.SocketStream:
    """A connection the server accepted and waits on for its first bytes."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    await trio.testing.wait_all_tasks_blocked(0.01)  # accepted, with nothing to read yet
    if isinstance(server.transport, FastTransport):
        assert len(server._greetings) == 1
    return stream


async def test_a_whole_request_sent_after_the_connection_was_accepted_is_upgraded_and_read_on(
    relay_server: RelayServer,
) -> None:
    """Accepted before its request came, then sent the whole request: upgraded, and read from then on.

    Under the fast transport the poller waited for the request; the WebSocket
    takes over that registration (registered once, unregistered once).
    """
    recorded = _recorded_poller(relay_server)
    subscribe = json.dumps({"event": "pusher:subscribe", "data": {"channel": "after-greeting"}}).encode()
    with trio.fail_after(10):
        async with await _accepted_waiting(relay_server) as stream:
            fd = next(iter(relay_server._greetings))._fd if recorded else -1
            await stream.send_all(UPGRADE_HEAD)
            await read_until(stream, b"connection_established")
            await stream.send_all(masked_frame(0x80 | TEXT, subscribe, b"\x01\x02\x03\x04"))
            answer = await read_until(stream, b"subscription_succeeded")
            assert b"after-greeting" in answer
            if recorded:
                poller, recording = recorded
                assert isinstance(poller._conns[fd], PolledWebSocket) and not relay_server._greetings
                assert recording.calls == [("register", fd)]
        while relay_server.open_connections:
            await trio.testing.wait_all_tasks_blocked(0.01)
    if recorded:
        assert len(poller) == 0 and recording.calls == [("register", fd), ("unregister", fd)]


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (UPGRADE_HEAD.replace(b"version: 13", b"version: 8"), b"HTTP/1.1 426 "),
        (b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n", b"HTTP/1.1 200 "),
        (UPGRADE_HEAD + masked_frame(0x80 | CLOSE, close_payload(1000), b"\x01\x02\x03\x04"), b"HTTP/1.1 101 "),
    ],
    ids=["refused upgrade", "plain request", "upgrade then close"],
)
async def test_a_connection_served_otherwise_after_waiting_is_no_longer_polled(
    relay_server: RelayServer, sent: bytes, answer: bytes
) -> None:
    """Accepted before its request came, then refused, sent to a handler task, or closed at once:
    the poller no longer reads it (no stale registration beside the task reading it)."""
    recorded = _recorded_poller(relay_server)
    with trio.fail_after(10):
        async with await _accepted_waiting(relay_server) as stream:
            await stream.send_all(sent)
            received = await read_until(stream, b"}" if b"101" not in answer else b"\x88")
            assert received.startswith(answer)
            if recorded:
                poller, recording = recorded
                assert len(poller) == 0 and not relay_server._greetings
                assert [call for call, _ in recording.calls] == ["register", "unregister"]


async def test_many_connections_at_once_are_all_established(relay_server: RelayServer) -> None:
    n = 3 * ACCEPT_BATCH

    async def one(results: list[str]) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", relay_server.port) as stream:
            await stream.send_all(UPGRADE_HEAD)
            answer = await read_until(stream, b'}"}')
            frame = answer[answer.index(b"\r\n\r\n") + 4 :]
            message = json.loads(frame[frame.index(b"{") :])  # after the 2-byte frame header
            results.append(json.loads(message["data"])["socket_id"])

    results: list[str] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one, results)
    assert len(set(results)) == n


async def test_a_refused_upgrade_and_a_plain_request_sent_at_once_are_answered(relay_server: RelayServer) -> None:
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", relay_server.port) as stream:
            await stream.send_all(UPGRADE_HEAD.replace(b"version: 13", b"version: 8"))
            refused = await read_until(stream, b"}")
        async with await trio.open_tcp_stream("127.0.0.1", relay_server.port) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            status = await read_until(stream, b"}")
    assert refused.startswith(b"HTTP/1.1 426 ") and b"sec-websocket-version: 13" in refused.lower()
    assert status.startswith(b"HTTP/1.1 200 ")


async def test_a_connection_that_leaves_before_sending_anything_is_forgotten(relay_server: RelayServer) -> None:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        await trio.testing.wait_all_tasks_blocked(0.01)  # accepted, waiting for its request
        assert relay_server.open_connections == 1
        await stream.aclose()
        while relay_server.open_connections:
            await trio.testing.wait_all_tasks_blocked(0.01)


async def test_a_connection_waiting_for_its_request_is_closed_at_shutdown(relay_server: RelayServer) -> None:
    with trio.fail_after(10):
        async with await trio.open_tcp_stream("127.0.0.1", relay_server.port) as stream:
            await trio.testing.wait_all_tasks_blocked(0.01)
            await relay_server.shutdown(timeout=5)
            assert await stream.receive_some(1024) == b""
    assert relay_server.open_connections == 0
