"""open_pipe against a real relay: reconnection, resume, backpressure, acks after processing."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

import pytest
import trio

from pipe_proto import App, PipeSettings, Relay
from pipe_proto.pipe import SocketClosed, SocketMessage
from pipe_trio import RelayServer, connect, open_pipe, serve
from pipe_trio._wsclient import ClientWebSocket, connect_websocket
from tests.support import APP_ID, APP_KEY, APP_SECRET, pure_core_only, start_relay, url_of

pytestmark = pytest.mark.both_transports


async def test_reconnects_and_resumes_after_the_connection_drops(relay_server: RelayServer) -> None:
    """When its connection is cut, the pipe reconnects, resumes its session and gets what was unacked."""
    url = url_of(relay_server)
    seen: list[int] = []
    release = trio.Event()
    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe:

            @pipe.sockets.on("event:n")
            async def handle(socket_id: str, data: Any) -> None:
                seen.append(data["n"])
                if data["n"] == 2:
                    await release.wait()  # still processing 2 when the connection drops

            session = pipe.session
            first_connection = pipe.socket_id
            async with connect(url, APP_KEY) as client:
                for n in range(1, 4):
                    await client.send_event("n", {"n": n})
                while seen != [1, 2]:
                    await trio.testing.wait_all_tasks_blocked()
                # Cut the pipe's connection from the relay's side.
                relay_server.conns[first_connection].close(4200, "test")
                relay_server.execute(relay_server.relay.pipe_closed(first_connection, relay_server.now()))
                await pipe.wait_connected(after=1)
                assert pipe.socket_id != first_connection
                release.set()
                while len(seen) < 3:
                    await trio.testing.wait_all_tasks_blocked()
                await client.send_event("n", {"n": 4})
                while len(seen) < 4:
                    await trio.testing.wait_all_tasks_blocked()
            assert pipe.session == session and pipe.core.resumed
            assert seen == [1, 2, 3, 4]
            assert pipe.connections == 2


async def test_survives_a_relay_restart(nursery: trio.Nursery) -> None:
    """The relay stops (4200) and comes back on the same port: the pipe reconnects with a fresh session."""
    first = await start_relay(nursery)
    port = first.port
    url = url_of(first)
    got: list[Any] = []
    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, max_backoff=0.5) as pipe:
            pipe.sockets.on("event:hello", lambda socket_id, data: got.append(data))
            old_session = pipe.session
            await first.shutdown(timeout=1)
            relay = Relay([App(id=APP_ID, key=APP_KEY, secret=APP_SECRET)], id_base=50_000)
            await nursery.start(lambda task_status: serve(relay, "127.0.0.1", port, task_status=task_status))
            await pipe.wait_connected(after=1)
            assert pipe.session != old_session and not pipe.core.resumed
            async with connect(url, APP_KEY) as client:
                await client.send_event("hello", {"again": True})
                while not got:
                    await trio.testing.wait_all_tasks_blocked()
    assert got == [{"again": True}]


async def test_events_left_from_an_ended_session_are_handled_but_not_acked_in_the_next(nursery: trio.Nursery) -> None:
    """Events still queued in the client when its session ends (a relay restart) are handled, but
    acking their seqs in the fresh session would settle its own events before they were handled."""
    first = await start_relay(nursery)
    port = first.port
    url = url_of(first)
    seen: list[Any] = []
    release = trio.Event()
    with trio.fail_after(20):
        async with open_pipe(
            url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"], max_backoff=0.5
        ) as pipe:

            @pipe.sockets.on("event:n")
            async def handle(socket_id: str, data: Any) -> None:
                seen.append(data)
                if data == {"old": 1}:
                    await release.wait()

            async with connect(url, APP_KEY) as client:
                for n in (1, 2, 3):
                    await client.send_event("n", {"old": n})
                while len(pipe._queue) < 2:  # 1 being handled, 2 and 3 queued in the client
                    await trio.testing.wait_all_tasks_blocked()
            await first.shutdown(timeout=1)
            second = await start_relay(nursery, port=port, id_base=50_000)
            await pipe.wait_connected(after=1)
            assert not pipe.core.resumed
            async with connect(url, APP_KEY) as client:
                await client.send_event("n", {"new": 1})
                await client.send_event("n", {"new": 2})
                session = second.relay.state_of(APP_ID).hub.groups["default"].sessions[pipe.session or ""]
                while session.next_seq < 3:
                    await trio.testing.wait_all_tasks_blocked()
                release.set()
                while len(seen) < 5:
                    await trio.testing.wait_all_tasks_blocked()
                while pipe.acked_seq < 2:
                    await trio.testing.wait_all_tasks_blocked()
                assert seen == [{"old": 1}, {"old": 2}, {"old": 3}, {"new": 1}, {"new": 2}]
                assert pipe.last_seq == pipe.acked_seq == session.acked == 2  # the fresh session's own


async def test_a_process_whose_session_another_resumed_goes_on_with_a_fresh_one(relay_server: RelayServer) -> None:
    """A second process resuming a live session (a restart overlapping the old process) takes it; the
    first, closed with 4203, connects again with a fresh session instead of taking it back (the two
    would take it from each other for ever)."""
    url = url_of(relay_server)
    got: list[str] = []
    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as first:
            first.sockets.on("event:n", lambda socket_id, data: got.append("first"))
            session = first.session
            async with open_pipe(
                url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"],
                resume=(session or "", first.last_seq),
            ) as second:
                second.sockets.on("event:n", lambda socket_id, data: got.append("second"))
                await first.wait_connected(after=1)
                assert second.session == session and second.core.resumed
                assert first.session not in (None, session) and not first.core.resumed
                async with connect(url, APP_KEY) as client:
                    for n in range(20):
                        await client.send_event("n", {"n": n})
                    while len(got) < 20:
                        await trio.testing.wait_all_tasks_blocked()
                # Each event reached one member of the group (they share the sockets by key),
                # and neither connection was taken from the other again.
                assert len(got) == 20 and (first.connections, second.connections) == (2, 1)


async def test_a_slow_handler_holds_the_stream_back_not_memory(nursery: trio.Nursery) -> None:
    """With a small window, a blocked handler leaves the rest waiting on the relay, not in the client."""
    app = App(id=APP_ID, key=APP_KEY, secret=APP_SECRET, pipe=PipeSettings(window=5))
    server = await start_relay(nursery, [app])
    url = url_of(server)
    unblock = trio.Event()
    processed: list[int] = []
    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe:

            @pipe.sockets.on("event:n")
            async def slow(socket_id: str, data: Any) -> None:
                await unblock.wait()
                processed.append(data["n"])

            async with connect(url, APP_KEY) as client:
                for n in range(40):
                    await client.send_event("n", {"n": n})
                await trio.testing.wait_all_tasks_blocked()
                group = server.relay.state_of(APP_ID).hub.groups["default"]
                assert group.pending_count >= 35 - 1  # held on the relay...
                assert len(pipe._queue) <= 5  # ...not queued in the client
                unblock.set()
                while len(processed) < 40:
                    await trio.testing.wait_all_tasks_blocked()
    assert processed == list(range(40))


async def test_iteration_acks_only_what_the_loop_finished(relay_server: RelayServer) -> None:
    """An event being handled in an async-for body is not acked until the loop asks for the next one."""
    url = url_of(relay_server)
    with trio.fail_after(20):
        async with (
            open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe,
            connect(url, APP_KEY) as client,
        ):
            await client.send_event("n", {"n": 1})
            await client.send_event("n", {"n": 2})
            events = pipe.events(meta=True)
            first = await events.__anext__()
            assert isinstance(first.notice, SocketMessage) and first.seq == 1
            await trio.testing.wait_all_tasks_blocked()
            assert pipe.last_seq == 0  # still "processing" seq 1
            second = await events.__anext__()
            assert second.seq == 2 and pipe.last_seq == 1
            await events.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert pipe.last_seq == 2 and pipe.acked_seq == 2


async def test_events_before_the_loop_begins_wait_for_it(relay_server: RelayServer) -> None:
    """Notifications that arrive before anyone iterates or registers a handler are kept for the loop, not acked."""
    url = url_of(relay_server)
    with trio.fail_after(20):
        async with (
            open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe,
            connect(url, APP_KEY) as client,
        ):
            for n in range(5):
                await client.send_event("n", {"n": n})
            while pipe.core.last_received < 5:
                await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            assert pipe.acked_seq == 0 and pipe.last_seq == 0  # nobody has taken them yet
            assert await numbers_from_a_loop(pipe, 5) == [0, 1, 2, 3, 4]


async def numbers_from_a_loop(pipe: Any, count: int) -> list[int]:
    """The ``n`` of the next ``count`` socket messages, taken by an ``async for`` that then ends."""
    got: list[int] = []
    async with aclosing(pipe.events()) as notices:
        async for notice in notices:
            assert isinstance(notice, SocketMessage)
            got.append(notice.data["n"])
            if len(got) == count:
                break
    return got


async def test_events_between_two_loops_wait_for_the_second_unless_a_handler_takes_them(
    relay_server: RelayServer,
) -> None:
    """Once the application has iterated, an event no handler takes waits for its next ``async for``
    (nothing is acked unseen); events a handler takes are handled meanwhile, in order."""
    url = url_of(relay_server)
    handled: list[int] = []
    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe:
            pipe.sockets.on("event:handled", lambda socket_id, data: handled.append(data["n"]))
            async with connect(url, APP_KEY) as client:
                await client.send_event("looped", {"n": 0})
                assert await numbers_from_a_loop(pipe, 1) == [0]
                await client.send_event("handled", {"n": 1})
                await client.send_event("looped", {"n": 2})
                await client.send_event("handled", {"n": 3})
                while pipe.core.last_received < 4:
                    await trio.testing.wait_all_tasks_blocked()
                await trio.testing.wait_all_tasks_blocked()
                assert handled == [1] and pipe.last_seq == 2  # 3 waits for a loop, and 4 behind it
                assert await numbers_from_a_loop(pipe, 2) == [2, 3]
                assert handled == [1, 3]


async def test_after_a_loop_a_gap_never_waits_and_an_event_that_does_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A gap (which no ``events=`` leaves out) with no handler does not wait for a loop: the events
    behind it go on to their handlers. An event that does wait, with no loop running, says so once."""
    from pipe_proto.pipe import Gap, SocketOpened
    from pipe_trio.testing import serve_fake_relay

    opened: list[str] = []
    app = App(id=APP_ID, key=APP_KEY, secret=APP_SECRET)
    with trio.fail_after(20):
        async with (
            serve_fake_relay(app) as relay,
            open_pipe(relay.url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe,
        ):
            await relay.notify(SocketOpened(socket_id="1.1"))
            async with aclosing(pipe.events()) as notices:
                async for _ in notices:
                    break
            pipe.sockets.on("open", opened.append)
            await relay.notify(Gap(dropped=3))
            await relay.notify(SocketOpened(socket_id="1.2"))
            while opened != ["1.2"]:
                await trio.testing.wait_all_tasks_blocked()
            assert not [r for r in caplog.records if "waits for an `async for`" in r.getMessage()]
            await relay.notify(SocketClosed(socket_id="1.2", code=1000, reason=""))  # no handler: it waits
            while not [r for r in caplog.records if "waits for an `async for`" in r.getMessage()]:
                await trio.testing.wait_all_tasks_blocked()
            assert pipe.last_seq == 3


async def _raw_socket(url: str) -> tuple[ClientWebSocket, str]:
    """A bare WebSocket to the relay as a Pusher socket; returns it and its socket id."""
    host, port = url.removeprefix("ws://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    ws = await connect_websocket(stream, f"{host}:{port}", f"/app/{APP_KEY}?protocol=7", max_message=65536)
    established = json.loads(await ws.get_message())
    return ws, json.loads(established["data"])["socket_id"]


async def test_socket_closed_carries_the_close_code_or_null_when_the_connection_was_lost(
    relay_server: RelayServer,
) -> None:
    """A socket closing with 1000 "bye" reaches a 1.0 pipe with that code and reason; one cut without a close frame with null."""
    url = url_of(relay_server)
    closed: dict[str, SocketClosed] = {}
    both = trio.Event()

    def on_closed(notice: SocketClosed) -> None:
        closed[notice.socket_id] = notice
        if len(closed) == 2:
            both.set()

    with trio.fail_after(20):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_existence"]) as pipe:
            pipe.on("socket_closed", on_closed)
            polite, polite_id = await _raw_socket(url)
            await polite.aclose(1000, "bye")
            rude, rude_id = await _raw_socket(url)
            await trio.aclose_forcefully(rude.stream)  # no close frame: the connection is lost
            await both.wait()
    assert (closed[polite_id].code, closed[polite_id].reason) == (1000, "bye")
    assert (closed[rude_id].code, closed[rude_id].reason) == (None, None)


async def test_a_normal_exit_leaves_the_group_at_once(relay_server: RelayServer) -> None:
    """Leaving `async with` normally ends the session on the relay: no grace, its sockets go to the others."""
    url = url_of(relay_server)
    hub = relay_server.relay.state_of(APP_ID).hub
    got: list[int] = []
    arrived = trio.Event()

    def on_n(socket_id: str, data: Any) -> None:
        got.append(data["n"])
        arrived.set()

    credentials = {"app_id": APP_ID, "key": APP_KEY, "secret": APP_SECRET, "events": ["socket_message"]}
    with trio.fail_after(20):
        async with open_pipe(url, **credentials) as staying:
            staying.sockets.on("event:n", on_n)
            async with open_pipe(url, **credentials) as leaving:
                session = leaving.session
                assert session in hub.sessions
            assert session not in hub.sessions and set(hub.sessions) == {staying.session}
            async with connect(url, APP_KEY) as client:
                await client.send_event("n", {"n": 1})
                await arrived.wait()
    assert got == [1]


async def test_keep_session_keeps_it_for_a_restart_that_resumes(relay_server: RelayServer) -> None:
    """With keep_session, a clean exit keeps the session for the grace; a new process resumes it and gets what queued."""
    url = url_of(relay_server)
    hub = relay_server.relay.state_of(APP_ID).hub
    credentials = {"app_id": APP_ID, "key": APP_KEY, "secret": APP_SECRET, "events": ["socket_message"]}
    got: list[int] = []
    arrived = trio.Event()

    def on_n(socket_id: str, data: Any) -> None:
        got.append(data["n"])
        arrived.set()

    with trio.fail_after(20):
        async with connect(url, APP_KEY) as client:
            async with open_pipe(url, keep_session=True, **credentials) as first:
                first.sockets.on("event:n", on_n)
                await client.send_event("n", {"n": 1})
                await arrived.wait()
                session = first.session
            saved = (session, first.last_seq)
            assert session in hub.sessions and hub.sessions[session].pipe is None  # in its grace
            arrived = trio.Event()
            await client.send_event("n", {"n": 2})  # queues for the session meanwhile
            await client.ping()
            async with open_pipe(url, keep_session=True, resume=saved, **credentials) as again:
                assert again.session == session and again.core.resumed
                again.sockets.on("event:n", on_n)
                await arrived.wait()
    assert got == [1, 2]


@pure_core_only
async def test_answers_made_together_go_out_as_one_batch_in_order(relay_server: RelayServer) -> None:
    """Fire-and-forget calls made in one turn of the tasks reach the relay as one batch frame, every
    answer arrives in order, and a request waiting for its reply goes after the calls made before it."""
    url = url_of(relay_server)
    relay = relay_server.relay
    frames: list[str] = []
    pipe_message = relay.pipe_message

    def recording(pipe_id: str, text: str, now: float) -> Any:
        frames.append(text)
        return pipe_message(pipe_id, text, now)

    relay.pipe_message = recording  # type: ignore[method-assign]
    release = trio.Event()
    with trio.fail_after(20):
        async with (
            open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]) as pipe,
            connect(url, APP_KEY) as client,
        ):

            @pipe.sockets.on("event:n")
            async def answer(socket_id: str, data: Any) -> None:
                if data["n"] == 0:
                    await release.wait()  # the others queue up meanwhile
                await pipe.socket(socket_id).trigger("answer", data, wait=False)
                if data["n"] == 29:
                    await pipe.socket(socket_id).trigger("after", data)  # waits for its reply

            for n in range(30):
                await client.send_event("n", {"n": n})
            while len(pipe._queue) < 29:
                await trio.testing.wait_all_tasks_blocked()
            release.set()
            got = [await client.next_event() for _ in range(31)]
    assert [(e.event, json.loads(e.data)["n"]) for e in got] == [("answer", n) for n in range(30)] + [("after", 29)]
    calls = [json.loads(f) for f in frames if "send_to_socket" in f]
    assert [c["method"] for c in calls] == ["batch", "send_to_socket"]
    assert calls[0]["id"] is None and len(calls[0]["params"]["calls"]) == 30
    assert calls[1]["id"] is not None


async def test_calls_queued_when_the_pipe_ends_or_its_connection_closes_still_go_out(nursery: trio.Nursery) -> None:
    """Calls queued in the last turn go out as the pipe ends (keeping its session, or on an error),
    and calls queued when the connection closes go out first on the next connection."""
    server = await start_relay(nursery)
    url = url_of(server)
    with trio.fail_after(20):
        async with connect(url, APP_KEY) as client:
            async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, keep_session=True) as pipe:
                await pipe.socket(client.socket_id).trigger("kept", {}, wait=False)
            assert (await client.next_event("kept")).event == "kept"

            failed = False
            try:
                async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe:
                    await pipe.socket(client.socket_id).trigger("failed", {}, wait=False)
                    raise KeyError("the application failed")
            except* KeyError:
                failed = True
            assert failed and (await client.next_event("failed")).event == "failed"

            async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe:
                await pipe.socket(client.socket_id).trigger("q1", {}, wait=False)
                await pipe.socket(client.socket_id).trigger("q2", {}, wait=False)
                assert pipe._ws is not None
                await pipe._ws.aclose(code=4201, reason="relay silent")  # as the heartbeat gives up
                assert pipe.core.queued == 2
                await pipe.wait_connected(after=1)
                assert [(await client.next_event(name)).event for name in ("q1", "q2")] == ["q1", "q2"]


async def test_cancellation_neither_loses_nor_sends_what_it_should_not(relay_server: RelayServer) -> None:
    """A writer cancelled before its write leaves the calls other tasks queued in the queue; a send
    cancelled before it is made is not made."""
    url = url_of(relay_server)
    with trio.fail_after(20):
        async with (
            connect(url, APP_KEY) as client,
            open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe,
        ):
            to_client = pipe.socket(client.socket_id)
            await to_client.trigger("a", {}, wait=False)
            with trio.CancelScope() as scope:
                scope.cancel()
                await to_client.trigger("b", {})  # a request, cancelled before it is written
            assert scope.cancelled_caught
            with trio.CancelScope() as cancelled:
                cancelled.cancel()
                await to_client.trigger("c", {}, wait=False)
            assert cancelled.cancelled_caught
            await to_client.trigger("d", {})
            assert [(await client.next_event()).event for _ in range(2)] == ["a", "d"]
