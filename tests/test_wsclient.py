"""The clients' WebSocket (open_pipe and connect) against wsproto playing the server, over in-memory streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from pipe_trio._wsclient import ConnectionClosed, HandshakeRefused, connect_websocket


class Server:
    """wsproto's server side on one end of a stream pair."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.events: list[object] = []

    async def next(self) -> object:
        while not self.events:
            self.ws.receive_data(bytes(await self.stream.receive_some(65536)) or None)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.ws.send(event))  # type: ignore[arg-type]


@asynccontextmanager
async def served(script: Callable[[Server], Awaitable[None]]) -> AsyncIterator[trio.abc.Stream]:
    """The client's end of a stream whose other end runs ``script``."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(script, Server(server_stream))
        yield client_stream


async def test_messages_pings_and_the_servers_close() -> None:
    async with served(server_accepts_and_talks) as stream:
        ws = await connect_websocket(stream, "relay", "/app/1?x=1", max_message=100)
        assert await ws.get_message() == "first"
        await ws.send_message("é" * 30)
        assert await ws.get_message() == "x" * 100  # at the limit
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert (closed.value.code, closed.value.reason) == (4000, "bye")
        with pytest.raises(ConnectionClosed):
            await ws.send_message("too late")


async def server_accepts_and_talks(server: Server) -> None:
    request = await server.next()
    assert isinstance(request, Request) and request.target == "/app/1?x=1" and request.host == "relay"
    await server.send(AcceptConnection())
    await server.send(Message(data="first"))
    assert await server.next() == TextMessage(data="é" * 30)
    await server.send(Ping(payload=b"are you there"))
    assert await server.next() == Pong(payload=b"are you there")
    await server.send(Message(data="x" * 100))
    await server.send(CloseConnection(code=4000, reason="bye"))
    assert isinstance(await server.next(), CloseConnection)  # the client answered the close


async def test_a_message_over_the_limit_closes_1009() -> None:
    async def talk(server: Server) -> None:
        await server.next()
        await server.send(AcceptConnection())
        await server.stream.send_all(server.ws.send(Message(data="y" * 101)) + server.ws.send(Message(data="after")))
        closing = await server.next()
        assert isinstance(closing, CloseConnection) and closing.code == 1009

    async with served(talk) as stream:
        ws = await connect_websocket(stream, "relay", "/", max_message=100)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()  # not "after": nothing counts once the connection has ended
        assert closed.value.code == 1009


async def test_a_refused_upgrade_reports_status_and_body() -> None:
    async def refuse(server: Server) -> None:
        await server.next()
        body = b'{"error": "bad signature"}'
        headers = [(b"content-length", b"%d" % len(body))]
        await server.send(RejectConnection(status_code=401, headers=headers, has_body=True))
        await server.send(RejectData(data=body))

    async with served(refuse) as stream:
        with pytest.raises(HandshakeRefused) as refused:
            await connect_websocket(stream, "relay", "/", max_message=100)
        assert refused.value.status_code == 401
        assert refused.value.body == b'{"error": "bad signature"}'


async def test_closing_sends_a_close_frame_and_ends_the_reader() -> None:
    closings: list[object] = []

    async def accept_then_expect_a_close(server: Server) -> None:
        await server.next()
        await server.send(AcceptConnection())
        closings.append(await server.next())

    async with served(accept_then_expect_a_close) as stream, trio.open_nursery() as nursery:
        ws = await connect_websocket(stream, "relay", "/", max_message=100)
        reader_saw: list[ConnectionClosed] = []

        async def read() -> None:
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                reader_saw.append(exc)

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await ws.aclose(4201, "relay silent")
    assert [(e.code, e.reason) for e in reader_saw] == [(4201, "relay silent")]
    [closing] = closings
    assert isinstance(closing, CloseConnection) and (closing.code, closing.reason) == (4201, "relay silent")


async def test_a_send_cancelled_midway_ends_the_connection() -> None:
    """Part of a frame may be out: nothing can follow it, so the connection is dropped (the pipe reconnects)."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    server = Server(server_stream)
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            await server.next()
            await server.send(AcceptConnection())

        nursery.start_soon(accept)
        ws = await connect_websocket(client_stream, "relay", "/", max_message=100)
        with trio.CancelScope() as scope:
            nursery.start_soon(lambda: _cancel_when_blocked(scope))
            await ws.send_message("z" * 10_000)  # nobody reads: blocks until cancelled
        assert scope.cancelled_caught
        with pytest.raises(ConnectionClosed), trio.fail_after(1):
            await ws.send_message("next")
        with pytest.raises(ConnectionClosed):
            await ws.get_message()


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
