"""The Pipe end to end: the 2011 Node client and ``open_pipe`` with the official pusher-js."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from pipe_proto.pipe import AuthRequest, pipe_url
from pipe_trio import AuthAnswer, PipeError, PipeRefusedError, RelayServer, open_pipe
from tests.cluster_front import settle
from tests.interop.node import AuthServer, open_driver
from tests.support import APP_ID, APP_KEY, APP_SECRET, url_of

pytestmark = [pytest.mark.interop, pytest.mark.both_transports]


def config_2011(server: RelayServer) -> dict[str, Any]:
    return {"key": APP_KEY, "secret": APP_SECRET, "app_id": int(APP_ID), "host": "127.0.0.1", "port": server.port}


async def test_2011_client_round_trip_with_pusher_js(relay_server: RelayServer) -> None:
    """pusher-pipe@0.0.10 sees pusher-js connect, gets its back-channel message, and its answer arrives."""
    with trio.fail_after(30):
        async with open_driver("pipe2011.js") as pipe, open_driver() as js:
            await pipe.call("connect", config=config_2011(relay_server), events=["socket_message", "socket_existence"])
            connected = await pipe.expect({"type": "connected"})
            assert connected["connection_id"].count(".") == 1
            await settle(relay_server)  # a cluster's other nodes hear of the pipe's subscription
            socket_id = await js.connected("a", relay_server)
            await pipe.expect({"type": "open", "socket_id": socket_id})
            await js.call("bind", "a", event="acknowledge")
            await js.call("send_event", "a", event="eventFromBrowser", data={"some": "data"})
            message = await pipe.expect({"type": "socket_event", "event": "eventFromBrowser"})
            assert message["socket_id"] == socket_id and message["data"] == {"some": "data"}
            assert await pipe.call("socket", socket_id=socket_id, event="acknowledge", data={"message": "Rodger"}) == {}
            ack = await js.expect({"type": "event", "id": "a", "event": "acknowledge"})
            assert ack["data"] == {"message": "Rodger"} and ack["channel"] is None
            await js.call("disconnect", "a")
            await pipe.expect({"type": "close", "socket_id": socket_id})


async def test_2011_client_channels_and_errors(relay_server: RelayServer, nursery: trio.Nursery) -> None:
    """The 2011 client publishes with exclusion, hears client events per channel, and gets errno on bad names."""
    auth = await AuthServer().start(nursery)
    with trio.fail_after(30):
        async with open_driver("pipe2011.js") as pipe, open_driver() as js:
            await pipe.call("connect", config=config_2011(relay_server), events=["socket_message"])
            await pipe.expect({"type": "connected"})
            await settle(relay_server)
            await pipe.call("listen", channel="private-room", event="client-move")
            sockets = {}
            for client in ("a", "b"):
                sockets[client] = await js.connected(client, relay_server, channelAuthorization={"endpoint": auth.url("/pusher/auth")})
                await js.subscribed(client, "private-room", "news", "client-move")
            await pipe.call("channel", channel="private-room", event="news", data={"v": 1}, socket_id=sockets["a"])
            await js.expect({"type": "event", "id": "b", "event": "news", "data": {"v": 1}})
            assert await js.call("trigger", "a", channel="private-room", event="client-move", data={"x": 3}) is True
            await js.expect({"type": "event", "id": "b", "event": "client-move", "data": {"x": 3}})
            heard = await pipe.expect({"type": "channel_listener", "channel": "private-room"})
            assert heard["socket_id"] == sockets["a"] and heard["data"] == {"x": 3}
            await pipe.expect({"type": "channel_event", "event": "client-move", "channel": "private-room"})
            assert not js.seen({"type": "event", "id": "a", "event": "news"})
            await pipe.send("channel", channel="private-room", event="pusher:bad", data="")
            error = await pipe.expect({"type": "reply", "cmd": "channel"})
            assert error["ok"] is False and error["errno"] == 4210
            await pipe.send("rpc", method="subscribe", params={"events": ["nonsense"]})
            unknown = await pipe.expect({"type": "reply", "cmd": "rpc"})
            assert unknown["errno"] == 4240


async def test_open_pipe_round_trip_with_pusher_js_and_pipe_client_js(relay_server: RelayServer) -> None:
    """open_pipe answers pusher-js's back_channel.trigger; back_channel.bind receives the answer."""
    url = url_of(relay_server)
    with trio.fail_after(30):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe, open_driver() as js:
            opened: list[str] = []
            pipe.sockets.on("open", opened.append)

            @pipe.sockets.on("event:eventFromBrowser")
            async def answer(socket_id: str, data: Any) -> None:
                assert data == {"some": "data"}
                await pipe.socket(socket_id).trigger("acknowledge", {"message": "Rodger"})

            socket_id = await js.connected("a", relay_server)
            await js.call("back_bind", "a", event="acknowledge")
            assert await js.call("back_trigger", "a", event="eventFromBrowser", data={"some": "data"}) is True
            ack = await js.expect({"type": "back_channel", "id": "a", "event": "acknowledge"})
            assert ack["data"] == {"message": "Rodger"}
            assert opened == [socket_id]


async def test_open_pipe_send_to_channel_with_exclusion(relay_server: RelayServer) -> None:
    """pipe.channel(name).trigger reaches every subscriber but the excluded one, and reports deliveries."""
    url = url_of(relay_server)
    with trio.fail_after(30):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe, open_driver() as js:
            a = await js.connected("a", relay_server)
            await js.connected("b", relay_server)
            for client in ("a", "b"):
                await js.subscribed(client, "scores", "goal")
            assert await pipe.channel("scores").trigger("goal", {"team": "x"}, exclude=a) == 1
            await js.expect({"type": "event", "id": "b", "event": "goal", "data": {"team": "x"}})
            assert await pipe.channel("scores").trigger("goal", {"team": "y"}) == 2
            await js.expect({"type": "event", "id": "a", "event": "goal", "data": {"team": "y"}})
            assert not js.seen({"type": "event", "id": "a", "data": {"team": "x"}})


async def test_authorization_through_the_pipe(relay_server: RelayServer) -> None:
    """Private and presence subscriptions decided by the pipe: allow, deny, timeout; no pipe is 503."""
    url = url_of(relay_server)
    timed_out = trio.Event()

    async def decide(request: AuthRequest) -> Any:
        if request.kind == "user":
            return {"id": "u1", "user_info": {"name": "Ann"}}
        if request.channel == "private-slow":
            await timed_out.wait()  # answers only after the relay gave up (408)
        if request.channel == "private-no":
            return AuthAnswer(allow=False, reason="not for you")
        if request.channel and request.channel.startswith("presence-"):
            return {"user_id": "u1", "user_info": {"name": "Ann"}}
        return True

    with trio.fail_after(30):
        async with open_driver() as js:
            await js.connected("early", relay_server, pipeAuth=True)
            await js.call("subscribe", "early", channel="private-x")
            unheld = await js.expect({"type": "subscription_error", "id": "early", "channel": "private-x"})
            assert unheld["data"]["status"] == 503
            async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=[], auth=decide):
                await js.connected("a", relay_server, pipeAuth=True, pipeSignin=True)
                await js.subscribed("a", "private-yes")
                await js.call("subscribe", "a", channel="private-no")
                denied = await js.expect({"type": "subscription_error", "id": "a", "channel": "private-no"})
                assert denied["data"] == {"type": "AuthError", "error": "not for you", "status": 403}
                await js.call("subscribe", "a", channel="private-slow")
                slow = await js.expect({"type": "subscription_error", "id": "a", "channel": "private-slow"}, timeout=10)
                assert slow["data"]["status"] == 408
                timed_out.set()
                # pusher-js needs a signed-in user to join presence without channel_data.
                await js.call("signin", "a")
                await js.expect({"type": "signin_success", "id": "a"})
                await js.subscribed("a", "presence-room")
                members = await js.call("members", "a", channel="presence-room")
                assert members["count"] == 1 and members["me"] == {"id": "u1", "info": {"name": "Ann"}}


async def test_pipe_refusals_have_the_spec_statuses(relay_server: RelayServer) -> None:
    """Bad signature 401, stale timestamp 401, unknown app 404, disabled app 403, reported by open_pipe."""
    url = url_of(relay_server)
    cases = [
        ({"app_id": APP_ID, "key": APP_KEY, "secret": "wrong"}, 401),
        ({"app_id": "99", "key": APP_KEY, "secret": APP_SECRET}, 404),
        ({"app_id": "3", "key": "off-key", "secret": "off-secret"}, 403),
    ]
    with trio.fail_after(30):
        for credentials, status in cases:
            with pytest.raises(PipeRefusedError) as refused:
                async with open_pipe(url, reconnect=False, **credentials):
                    pass
            assert refused.value.code == status
        stale = pipe_url(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, now=time.time() - 700)
        target = stale.split(f":{relay_server.port}", 1)[1]
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(
                f"GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer = b""
            while b"Timestamp expired" not in answer:
                chunk = await stream.receive_some(4096)
                assert chunk, answer
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 ")


async def test_pipe_errors_surface_as_pipe_error(relay_server: RelayServer) -> None:
    """A request the relay refuses raises PipeError with the spec's code."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe:
            with pytest.raises(PipeError) as error:
                await pipe.channel("bad name").trigger("e", {})
            assert error.value.code == 4211
            with pytest.raises(PipeError) as error:
                await pipe.socket("not-an-id").trigger("e", {})
            assert error.value.code == 4212


async def test_fire_and_forget_sends(relay_server: RelayServer) -> None:
    """trigger(wait=False) delivers without a reply, in order with other sends; failures only get logged."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe, open_driver() as js:
            socket_id = await js.connected("a", relay_server)
            await js.call("bind", "a", event="n")
            for n in range(20):
                assert await pipe.socket(socket_id).trigger("n", {"n": n}, wait=False) is None
            await pipe.channel("bad name").trigger("n", {}, wait=False)  # answered with an error notification
            await pipe.ping()
            for n in range(20):
                report = await js.expect({"type": "event", "id": "a", "event": "n"})
                assert report["data"] == {"n": n}
