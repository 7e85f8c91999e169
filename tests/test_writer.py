"""The writer's turns: a large deferred flush lets other tasks write between its slices; a few connections can go first.

Connections here are polled WebSockets on socket pairs; what each peer can
read without blocking is what the writer wrote.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio

from pipe_trio._websocket import FLUSH_TURN, PolledWebSocket, Writer


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(2 * FLUSH_TURN + 5)]  # three slices
    yield made
    for a, b in made:
        a.close()
        b.close()


def written(peer: socket.socket) -> bytes:
    try:
        return peer.recv(65536, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def connections(writer: Writer, pairs: list[tuple[socket.socket, socket.socket]]) -> list[PolledWebSocket]:
    conns = []
    for index, (ours, _) in enumerate(pairs):
        ws = PolledWebSocket(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), b"", 1 << 20, writer)
        ws.id = f"c{index}"
        conns.append(ws)
    return conns


async def test_a_deferred_flush_gives_other_tasks_a_turn_after_each_slice(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    async with trio.open_nursery() as nursery:
        writer = Writer(nursery.start_soon)
        for ws in connections(writer, pairs):
            ws.push(b"frame")
        writer.flush_soon()
        # This task and the flush task each run once per round of Trio's
        # scheduler (in either order): by the second round at most two of
        # the three slices are out, and at least one.
        seen = []
        done = [False] * len(pairs)
        with trio.fail_after(5):
            while not all(done):
                for index, (_, peer) in enumerate(pairs):
                    done[index] = done[index] or written(peer) == b"frame"
                seen.append(sum(done))
                await trio.lowlevel.checkpoint()
        assert any(0 < count < len(pairs) for count in seen), seen


async def test_named_connections_are_written_at_once_and_the_others_at_the_flush(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    writer = Writer(lambda fn: None)
    conns = connections(writer, pairs[:3])
    for ws in conns:
        ws.push(b"frame")
    writer.write_these(("c2", "gone"), {ws.id: ws for ws in conns})
    assert [written(b) for _, b in pairs[:3]] == [b"", b"", b"frame"]
    conns[2].push(b"more")  # listed again: one write, with nothing twice
    writer.flush()
    assert [written(b) for _, b in pairs[:3]] == [b"frame", b"frame", b"more"]
