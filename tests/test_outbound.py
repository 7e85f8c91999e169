"""The outbound queue over real sockets: fast readers keep up with bursts, slow consumers are closed (4101).

A connection is judged slow by what the kernel will not take and for how
long, never by what one request queued before anything was written. Tests
that depend on time run on Trio's ``MockClock`` (``autojump_clock``).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Any
from urllib.parse import urlencode

import h11
import pytest
import trio
import trio.testing
from wsproto.events import CloseConnection, Message, Ping, TextMessage

from pipe_proto import Probe, Send
from pipe_proto.pipe import Batch, SendToChannel, pipe_url
from pipe_proto.signatures import sign_query
from pipe_trio import RelayServer, open_pipe
from pipe_trio._websocket import BURST_ALLOWANCE, SLOW_GRACE
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay, url_of
from tests.test_server import SOCKET_PATH, RawClient, publish

pytestmark = pytest.mark.both_transports

# ----------------------------------------------------------------- helpers


async def rest_post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """A signed REST POST on a new connection; returns status and body."""
    params = {
        "auth_key": APP_KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    params["auth_signature"] = sign_query(APP_SECRET, "POST", path, params)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="POST",
            target=f"{path}?{urlencode(params)}",
            headers=[("host", "127.0.0.1"), ("content-type", "application/json"), ("content-length", str(len(body)))],
        )
        await stream.send_all(conn.send(request) + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status, answer = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                answer += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, answer
            else:  # pragma: no cover - the server cut the connection
                raise AssertionError(f"unexpected {event!r}")


async def subscribed_client(server: RelayServer, channels: list[str], rcvbuf: int | None = None) -> tuple[RawClient, str]:
    """A raw client subscribed to ``channels``; returns it and its socket id."""
    client = await RawClient.connect(server.port, SOCKET_PATH, rcvbuf=rcvbuf)
    established = await client.next_text()
    socket_id = json.loads(established["data"])["socket_id"]
    for channel in channels:
        await client.send(Message(data=json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})))
        assert (await client.next_text())["event"] == "pusher_internal:subscription_succeeded"
    return client, socket_id


async def read_events(client: RawClient, count: int) -> list[dict[str, Any]]:
    """Read (in a tight loop) until ``count`` channel events came; fails on an error or a close."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        event = await client.next_event()
        assert not isinstance(event, CloseConnection), f"closed with {event.code} after {len(got)} events"
        assert isinstance(event, TextMessage), event
        frame = json.loads(event.data)
        assert frame["event"] != "pusher:error", frame
        got.append(frame)
    return got


def shrink_send_buffer(server: RelayServer, socket_id: str, size: int = 4096) -> None:
    """Keep the kernel's share of a connection small, so that the relay's own queue is what fills."""
    server.conns[socket_id].stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)  # type: ignore[attr-defined]


def fill(server: RelayServer, socket_id: str, until: int) -> int:
    """Publish 1 KB ticks to ``news`` until the connection's queue holds more than ``until`` bytes; returns how many."""
    conn = server.conns[socket_id]
    sent = 0
    while conn._size <= until:
        assert socket_id in server.conns, f"closed after {sent} ticks with {conn._size} bytes queued"
        publish(server, "news", "tick", f"{sent}:" + "z" * 1000)
        sent += 1
    return sent


# ----------------------------------------------------------- fast readers


async def test_one_rest_call_to_thirty_channels_reaches_a_fast_reader(nursery: trio.Nursery) -> None:
    """One REST events call of 10,000 bytes to 30 channels reaches a reader subscribed to all 30, which is not closed."""
    server = await start_relay(nursery)
    channels = [f"ch-{n}" for n in range(30)]
    data = "x" * 10_000
    with trio.fail_after(20):
        client, socket_id = await subscribed_client(server, channels)
        try:
            async with trio.open_nursery() as tasks:
                result: list[list[dict[str, Any]]] = []

                async def reader() -> None:
                    result.append(await read_events(client, 30))

                tasks.start_soon(reader)
                body = json.dumps({"name": "big", "channels": channels, "data": data}).encode()
                status, answer = await rest_post(server.port, f"/apps/{APP_ID}/events", body)
                assert status == 200, answer
            assert sorted(frame["channel"] for frame in result[0]) == sorted(channels)
            assert all(frame["data"] == data for frame in result[0])
            assert socket_id in server.conns
        finally:
            await client.aclose()


async def test_a_rest_batch_carried_out_in_turns_arrives_whole_and_in_order(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch_events call whose deliveries exceed EXECUTE_TURN (here 3) is carried out in
    several turns: every event still reaches both subscribers once, in the batch's order."""
    monkeypatch.setattr("pipe_trio.server.EXECUTE_TURN", 3)
    server = await start_relay(nursery)
    with trio.fail_after(20):
        clients = [(await subscribed_client(server, ["news"]))[0] for _ in range(2)]
        try:
            batch = [{"name": "tick", "channel": "news", "data": str(n)} for n in range(10)]
            body = json.dumps({"batch": batch}).encode()
            status, answer = await rest_post(server.port, f"/apps/{APP_ID}/batch_events", body)
            assert status == 200, answer
            for client in clients:
                assert [frame["data"] for frame in await read_events(client, 10)] == [str(n) for n in range(10)]
        finally:
            for client in clients:
                await client.aclose()


async def test_one_pipe_batch_of_a_hundred_events_reaches_a_fast_reader(nursery: trio.Nursery) -> None:
    """A Pipe batch of 100 send_to_channel calls of 4 KB each reaches a reader of that channel, which is not closed."""
    server = await start_relay(nursery)
    data = "y" * 4000
    with trio.fail_after(20):
        client, socket_id = await subscribed_client(server, ["news"])
        try:
            result: list[list[dict[str, Any]]] = []

            async def reader() -> None:
                result.append(await read_events(client, 100))

            async with (
                open_pipe(url_of(server), app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe,
                trio.open_nursery() as tasks,
            ):
                tasks.start_soon(reader)
                calls = [SendToChannel(channels=["news"], event=f"e{n}", data=data) for n in range(100)]
                answers = await pipe.request(Batch(calls=calls))
                assert len(answers) == 100
            assert [frame["event"] for frame in result[0]] == [f"e{n}" for n in range(100)]
            assert socket_id in server.conns
        finally:
            await client.aclose()


# ----------------------------------------------------------- slow consumers


async def test_a_burst_over_the_bound_is_given_time_to_drain(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Bytes the kernel would not take may stay over the bound for the grace period; a reader that catches up stays."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_socket_buffer=limit)
    with trio.fail_after(300):
        client, socket_id = await subscribed_client(server, ["news"], rcvbuf=4096)
        try:
            shrink_send_buffer(server, socket_id)
            conn = server.conns[socket_id]
            sent = fill(server, socket_id, 2 * limit)
            assert socket_id in server.conns
            await trio.sleep(SLOW_GRACE / 2)
            # Still over the bound, within the grace: one more frame is kept.
            assert conn._size > limit
            publish(server, "news", "tick", f"{sent}:late")
            sent += 1
            assert socket_id in server.conns
            got = await read_events(client, sent)
            assert [int(frame["data"].split(":")[0]) for frame in got] == list(range(sent))
            # Back under the bound, the grace starts afresh next time.
            await trio.sleep(SLOW_GRACE * 2)
            publish(server, "news", "tick", "again")
            assert (await read_events(client, 1))[0]["data"] == "again"
            assert socket_id in server.conns
        finally:
            await client.aclose()


async def test_a_reader_over_the_bound_past_the_grace_is_closed_4101(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A connection whose queue stays over the bound longer than the grace is closed with 4101 at its next frame."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_socket_buffer=limit)
    with trio.fail_after(300):
        client, socket_id = await subscribed_client(server, ["news"], rcvbuf=4096)
        try:
            shrink_send_buffer(server, socket_id)
            conn = server.conns[socket_id]
            fill(server, socket_id, 2 * limit)
            await trio.sleep(SLOW_GRACE + 1)
            assert conn._size > limit
            publish(server, "news", "tick", "one too many")
            assert socket_id not in server.conns
            frames = []
            while not isinstance(event := await client.next_event(), CloseConnection):
                frames.append(json.loads(event.data))
            assert event.code == 4101
            assert frames[-1]["event"] == "pusher:error" and frames[-1]["data"]["code"] == 4101
        finally:
            await client.aclose()


async def test_a_reader_that_stops_is_closed_4101_once_its_queue_reaches_the_burst_allowance(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Without any time passing, a queue that would pass BURST_ALLOWANCE times the bound closes the connection (4101)."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_socket_buffer=limit)
    with trio.fail_after(300):
        client, socket_id = await subscribed_client(server, ["news"], rcvbuf=4096)
        try:
            shrink_send_buffer(server, socket_id)
            conn = server.conns[socket_id]
            start = trio.current_time()
            sent = 0
            while socket_id in server.conns:
                assert sent < 1000, "the connection was never closed"
                publish(server, "news", "tick", f"{sent}:" + "z" * 1000)
                sent += 1
                assert conn._size <= BURST_ALLOWANCE * limit
            assert trio.current_time() == start
            assert sent > (BURST_ALLOWANCE - 1) * limit // 1000
            while not isinstance(event := await client.next_event(), CloseConnection):
                last = json.loads(event.data)
            assert event.code == 4101
            assert last["data"]["code"] == 4101
        finally:
            await client.aclose()


async def test_a_client_sending_pings_and_reading_no_pongs_is_closed_4101(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Pongs count against the bound like any frame: pings keep a socket alive, but one that reads none
    of the answers is a slow consumer all the same (4101)."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_socket_buffer=limit)
    with trio.fail_after(300):
        client, socket_id = await subscribed_client(server, [], rcvbuf=4096)
        try:
            shrink_send_buffer(server, socket_id)
            sent = 0
            while socket_id in server.conns:
                assert sent < 4000, "the connection was never closed"
                await client.send(Ping(payload=b"p" * 125))
                sent += 1
                await trio.testing.wait_all_tasks_blocked()
            assert sent > (BURST_ALLOWANCE - 1) * limit // 127
            while not isinstance(event := await client.next_event(), CloseConnection):
                pass
            assert event.code == 4101
        finally:
            await client.aclose()


async def test_a_pipe_over_its_bound_past_the_grace_is_closed_at_its_heartbeat(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A pipe's heartbeat ping counts as a frame: a pipe over its bound for longer than the grace is closed (4101)."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_pipe_buffer=limit)
    target = pipe_url("", app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, now=server.now())
    with trio.fail_after(300):
        client = await RawClient.connect(server.port, target, rcvbuf=4096)
        try:
            await client.next_text()  # established
            (pipe_id,) = server._pipes
            shrink_send_buffer(server, pipe_id)
            conn = server.conns[pipe_id]
            while conn.unwritten <= 2 * limit:
                server.execute([Send((pipe_id,), json.dumps({"result": {"filler": "z" * 1000}}))])
            await trio.sleep(SLOW_GRACE + 1)
            assert pipe_id in server.conns
            server.execute([Probe(pipe_id)])
            assert pipe_id not in server.conns
            while not isinstance(event := await client.next_event(), CloseConnection):
                pass
            assert event.code == 4101
        finally:
            await client.aclose()
