"""The official server SDKs (PyPI ``pusher``, npm ``pusher``) against the relay's REST API.

Events the SDKs trigger are received by the official pusher-js; queries return
what the SDKs parse; webhooks the relay sends pass the SDKs' own validation.
"""

from __future__ import annotations

from typing import Any

import pusher
import pytest
import trio

from pipe_proto import App, WebhookTarget
from pipe_trio import RelayServer
from tests.http_receiver import HttpReceiver
from tests.interop.node import AuthServer, Driver, open_driver
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay

pytestmark = [pytest.mark.interop, pytest.mark.both_transports]


def python_sdk(server: RelayServer) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=server.port, ssl=False)


def node_config(server: RelayServer) -> dict[str, Any]:
    return {"appId": APP_ID, "key": APP_KEY, "secret": APP_SECRET, "host": "127.0.0.1", "port": server.port}


async def two_listeners(js: Driver, server: RelayServer, channels: list[str]) -> tuple[str, str]:
    """Clients a and b, both subscribed to ``channels`` and bound to event ``e``."""
    sockets = []
    for client in ("a", "b"):
        sockets.append(await js.connected(client, server))
        for channel in channels:
            await js.subscribed(client, channel, "e")
    return sockets[0], sockets[1]


async def test_python_sdk_triggers_reach_pusher_js(relay_server: RelayServer) -> None:
    """Single, multi-channel and batch triggers from the Python SDK arrive in pusher-js; socket_id excludes."""
    sdk = python_sdk(relay_server)
    with trio.fail_after(30):
        async with open_driver() as js:
            a, _ = await two_listeners(js, relay_server, ["one", "two"])
            assert await trio.to_thread.run_sync(lambda: sdk.trigger("one", "e", {"n": 1})) == {}
            for client in ("a", "b"):
                report = await js.expect({"type": "event", "id": client, "channel": "one", "event": "e"})
                assert report["data"] == {"n": 1}
            await trio.to_thread.run_sync(lambda: sdk.trigger(["one", "two"], "e", {"n": 2}, socket_id=a))
            for channel in ("one", "two"):
                await js.expect({"type": "event", "id": "b", "channel": channel, "data": {"n": 2}})
            batch = [{"channel": "one", "name": "e", "data": {"n": 3}}, {"channel": "two", "name": "e", "data": {"n": 4}}]
            await trio.to_thread.run_sync(lambda: sdk.trigger_batch(batch))
            for client in ("a", "b"):
                await js.expect({"type": "event", "id": client, "channel": "one", "data": {"n": 3}})
                await js.expect({"type": "event", "id": client, "channel": "two", "data": {"n": 4}})
            # a was excluded from n=2: the first event it got after n=1 is n=3.
            assert not js.seen({"type": "event", "id": "a", "data": {"n": 2}})


async def test_python_sdk_queries(relay_server: RelayServer, nursery: trio.Nursery) -> None:
    """channels_info, channel_info and users_info parse and describe the relay's channels."""
    sdk = python_sdk(relay_server)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(30):
        async with open_driver() as js:
            for client, user in (("a", "1"), ("b", "2")):
                await js.connected(client, relay_server, channelAuthorization={"endpoint": auth.url("/pusher/auth"), "params": {"user_id": user}})
                await js.subscribed(client, "presence-room")
            await js.subscribed("a", "news")
            channels = await trio.to_thread.run_sync(lambda: sdk.channels_info(prefix_filter="presence-", attributes=["user_count"]))
            assert channels == {"channels": {"presence-room": {"user_count": 2}}}
            one = await trio.to_thread.run_sync(lambda: sdk.channel_info("presence-room", ["user_count", "subscription_count"]))
            assert one == {"occupied": True, "user_count": 2, "subscription_count": 2}
            users = await trio.to_thread.run_sync(lambda: sdk.users_info("presence-room"))
            assert sorted(u["id"] for u in users["users"]) == ["1", "2"]
            every = await trio.to_thread.run_sync(sdk.channels_info)
            assert set(every["channels"]) == {"presence-room", "news"}


async def test_python_sdk_terminates_a_users_connections(relay_server: RelayServer, nursery: trio.Nursery) -> None:
    """terminate_user_connections (the SDK's path without /apps/{id}) closes that user's sockets only."""
    sdk = python_sdk(relay_server)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(30):
        async with open_driver() as js:
            for client, user in (("a", "7"), ("b", "8")):
                await js.connected(client, relay_server, userAuthentication={"endpoint": auth.url("/pusher/user-auth"), "params": {"user_id": user}})
                await js.call("signin", client)
                await js.expect({"type": "signin_success", "id": client})
            await trio.to_thread.run_sync(lambda: sdk.terminate_user_connections("7"))
            error = await js.expect({"type": "error", "id": "a"})
            assert error["code"] == 4009
            await js.expect({"type": "state", "id": "a", "current": "disconnected"})
            assert (await js.call("status", "b"))["state"] == "connected"


async def test_node_sdk_triggers_queries_and_terminates(relay_server: RelayServer, nursery: trio.Nursery) -> None:
    """The npm SDK's trigger, triggerBatch, get and terminateUserConnections all work against the relay."""
    config = node_config(relay_server)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(30):
        async with open_driver() as js, open_driver("sdk.js") as sdk:
            a, _ = await two_listeners(js, relay_server, ["one", "two"])
            result = await sdk.call("trigger", config=config, channels=["one", "two"], event="e", data={"n": 1}, params={"socket_id": a, "info": "subscription_count"})
            assert result == {"status": 200, "body": {"channels": {"one": {"subscription_count": 2}, "two": {"subscription_count": 2}}}}
            for channel in ("one", "two"):
                await js.expect({"type": "event", "id": "b", "channel": channel, "data": {"n": 1}})
            batch = [{"channel": "one", "name": "e", "data": {"n": 2}}]
            assert (await sdk.call("triggerBatch", config=config, batch=batch))["status"] == 200
            await js.expect({"type": "event", "id": "a", "channel": "one", "data": {"n": 2}})
            assert not js.seen({"type": "event", "id": "a", "data": {"n": 1}})
            channels = await sdk.call("get", config=config, path="/channels", params={"filter_by_prefix": "o"})
            assert channels == {"status": 200, "body": {"channels": {"one": {}}}}
            channel = await sdk.call("get", config=config, path="/channels/two", params={"info": "subscription_count"})
            assert channel["body"] == {"occupied": True, "subscription_count": 2}
            await js.connected("c", relay_server, userAuthentication={"endpoint": auth.url("/pusher/user-auth"), "params": {"user_id": "9"}})
            await js.call("signin", "c")
            await js.expect({"type": "signin_success", "id": "c"})
            await js.call("user_bind", "c", event="note")
            assert (await sdk.call("sendToUser", config=config, userId="9", event="note", data={"hi": 1}))["status"] == 200
            note = await js.expect({"type": "user_event", "id": "c", "event": "note"})
            assert note["data"] == {"hi": 1}
            assert (await sdk.call("terminate", config=config, userId="9"))["status"] == 200
            await js.expect({"type": "state", "id": "c", "current": "disconnected"})


async def test_node_sdk_sees_errors_with_statuses(relay_server: RelayServer) -> None:
    """Bad credentials are 401 and oversize data 413, as the npm SDK reports them."""
    config = node_config(relay_server)
    with trio.fail_after(30):
        async with open_driver("sdk.js") as sdk:
            await sdk.send("trigger", config={**config, "secret": "wrong"}, channels=["c"], event="e", data="x")
            bad = await sdk.expect({"type": "reply", "cmd": "trigger"})
            assert bad["ok"] is False and bad["status"] == 401 and "Invalid signature" in bad["body"]
            await sdk.send("trigger", config=config, channels=["c"], event="e", data="x" * 10241)
            big = await sdk.expect({"type": "reply", "cmd": "trigger"})
            assert big["ok"] is False and big["status"] == 413


async def test_webhooks_pass_both_sdks_validation(nursery: trio.Nursery) -> None:
    """The relay's webhook bodies are valid for the npm SDK's webhook() and the Python SDK's validate_webhook."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    app = App(id=APP_ID, key=APP_KEY, secret=APP_SECRET, webhooks=[WebhookTarget(url=receiver.url)])
    server = await start_relay(nursery, [app])
    with trio.fail_after(30):
        async with open_driver() as js, open_driver("sdk.js") as sdk:
            await js.connected("a", server)
            await js.subscribed("a", "news")
            (request,) = await receiver.wait_for(1)
            node = await sdk.call("webhook", config=node_config(server), headers=request.headers, rawBody=request.body.decode())
            assert node["valid"] is True
            assert node["events"] == [{"name": "channel_occupied", "channel": "news"}]
            python = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET).validate_webhook(
                key=request.headers["x-pusher-key"], signature=request.headers["x-pusher-signature"], body=request.body.decode()
            )
            assert python is not None and python["events"] == node["events"]
            tampered = await sdk.call("webhook", config=node_config(server), headers=request.headers, rawBody=request.body.decode().replace("news", "newz"))
            assert tampered["valid"] is False
