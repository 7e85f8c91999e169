"""The writer's turns: a large deferred flush lets other tasks write between its slices; a few connections can go
first; the poller writes the eager ones (pipes) every few reads of a round.

Connections here are polled WebSockets on socket pairs; what each peer can
read without blocking is what the writer wrote.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
from wsproto.frame_protocol import FrameProtocol

from pipe_trio._websocket import EAGER_READS, FLUSH_TURN, PolledWebSocket, Poller, Writer


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


class _Forward:
    """A side handing every text message on to one connection (a pipe), noting what its peer had then."""

    def __init__(self, pipe: PolledWebSocket, pipe_peer: socket.socket) -> None:
        self.pipe, self.pipe_peer = pipe, pipe_peer
        self.received = b""
        self.seen: list[int] = []  # frames the pipe's peer had received when each message came

    def text(self, conn_id: str, text: str) -> None:
        self.received += written(self.pipe_peer)
        self.seen.append(self.received.count(b"event"))
        self.pipe.push_text(f"event from {conn_id}")

    def heard(self, conn_id: str) -> None: ...
    def oversized(self, conn_id: str, size: int) -> None: ...
    def closed(self, conn_id: str, code: int, reason: str) -> None: ...


async def test_the_poller_writes_eager_connections_every_few_reads_of_a_round(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> None:
    """Many sockets ready at once, each sending the pipe an event: the pipe gets them in pieces during the round."""
    count = 3 * EAGER_READS + 1
    async with trio.open_nursery() as nursery:
        writer = Writer(nursery.start_soon)
        poller = Poller(writer)
        pipe, *sockets = connections(writer, pairs[: count + 1])
        writer.eager[pipe.id] = pipe
        side = _Forward(pipe, pairs[0][1])
        frame = bytes(FrameProtocol(client=True, extensions=[]).send_data("hi", fin=True))
        async def ended(ws: object) -> None: ...

        for ws, (_, peer) in zip(sockets, pairs[1 : count + 1], strict=True):
            assert ws.hand_over(side, 1000, poller, ended)
            peer.send(frame)  # every socket is ready before the poller's round
        nursery.start_soon(poller.run)
        with trio.fail_after(5):
            while side.received.count(b"event") < count:
                await trio.lowlevel.checkpoint()
                side.received += written(pairs[0][1])
        nursery.cancel_scope.cancel()
    # Each batch of reads' events was out before the next batch was read.
    assert side.seen == [EAGER_READS * (index // EAGER_READS) for index in range(count)]
