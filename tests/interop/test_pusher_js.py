"""The official pusher-js (Node build, 8.6.0) against a relay started by the test.

Each test drives real pusher-js clients through driver.js and, where the
protocol needs an app server, a real auth endpoint signing with the official
Python SDK. Absence is never shown by waiting: a marker published after the
event that must not arrive travels the same connection, so once the marker
is in, anything sent before it would be too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pusher
import pytest
import trio

from pipe_proto import App, Features
from pipe_trio import RelayServer, open_pipe
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay, url_of

from .node import AuthServer, Driver, open_driver, publish

pytestmark = [pytest.mark.interop, pytest.mark.both_transports]

#: Upper bound for any one test, Node start-up included.
TEST_TIMEOUT = 30
SOCKET_ID = re.compile(r"\A\d+\.\d+\Z")


@pytest.fixture
async def driver() -> AsyncIterator[Driver]:
    """A driver.js process for the test, stopped (with all its clients) at the end."""
    async with open_driver() as running:
        yield running


@pytest.fixture
async def auth(nursery: trio.Nursery) -> AuthServer:
    """The app's auth endpoints for app 1, on a free port."""
    return await AuthServer().start(nursery)


def channel_auth(auth: AuthServer, user_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """pusher-js ``channelAuthorization`` options naming the presence member to be."""
    params = {key: value for key, value in (("user_id", user_id), ("name", name)) if value is not None}
    return {"endpoint": auth.url("/pusher/auth"), "params": params}


def user_auth(auth: AuthServer, user_id: str, watchlist: Sequence[str] = ()) -> dict[str, Any]:
    """pusher-js ``userAuthentication`` options signing in as ``user_id``."""
    params = {"user_id": user_id, "watchlist": ",".join(watchlist)}
    return {"endpoint": auth.url("/pusher/user-auth"), "params": params}


async def marker(driver: Driver, server: RelayServer, id: str, channel: str) -> None:
    """Publish a marker on ``channel`` and wait until client ``id`` has it (it must have bound ``marker``)."""
    publish(server, channel, "marker", {"done": True})
    await driver.expect({"type": "event", "id": id, "channel": channel, "event": "marker"})


async def test_connects_with_socket_id(relay_server: RelayServer, driver: Driver) -> None:
    """pusher-js reaches ``connected`` with a ``digits.digits`` socket id the relay knows."""
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connect("a", relay_server)
        await driver.expect({"type": "state", "id": "a", "previous": None, "current": "connecting"})
        report = await driver.expect({"type": "state", "id": "a", "previous": "connecting", "current": "connected"})
        socket_id = report["socket_id"]
        assert SOCKET_ID.match(socket_id), socket_id
        assert socket_id in relay_server.conns
        status = await driver.call("status", "a")
        assert status == {"state": "connected", "socket_id": socket_id, "retrying": False, "connecting": False}
        assert not driver.seen({"type": "error"})


async def test_public_channel_receives_rest_event(relay_server: RelayServer, driver: Driver) -> None:
    """An event triggered with the Python SDK over REST reaches a pusher-js channel binding, decoded."""
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connected("a", relay_server)
        await driver.subscribed("a", "news", "update")
        await driver.call("bind_global", "a")
        sdk = pusher.Pusher(
            app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=relay_server.port, ssl=False
        )
        answer = await trio.to_thread.run_sync(lambda: sdk.trigger(["news"], "update", {"n": 1, "text": "héllo"}))
        assert answer == {}
        event = await driver.expect({"type": "event", "id": "a", "via": "bind", "event": "update"})
        assert event["channel"] == "news"
        assert event["data"] == {"n": 1, "text": "héllo"}
        assert event["metadata"] == {}
        await driver.expect({"type": "event", "id": "a", "via": "global", "event": "update", "data": {"n": 1}})


async def test_private_channel_through_auth_endpoint(
    relay_server: RelayServer, driver: Driver, auth: AuthServer
) -> None:
    """A private subscription authorized by a real ``authEndpoint`` succeeds and receives channel events."""
    with trio.fail_after(TEST_TIMEOUT):
        socket_id = await driver.connected("a", relay_server, authEndpoint=auth.url("/pusher/auth"))
        await driver.subscribed("a", "private-orders", "created")
        assert auth.requests == [("/pusher/auth", {"socket_id": socket_id, "channel_name": "private-orders"})]
        publish(relay_server, "private-orders", "created", {"id": 7})
        event = await driver.expect({"type": "event", "id": "a", "event": "created"})
        assert event["data"] == {"id": 7}


async def test_presence_members_join_and_leave(relay_server: RelayServer, driver: Driver, auth: AuthServer) -> None:
    """Presence members, ``me`` and ``member_added``/``member_removed`` as pusher-js sees them across two clients."""
    with trio.fail_after(TEST_TIMEOUT):
        room = "presence-room"
        await driver.connected("alice", relay_server, channelAuthorization=channel_auth(auth, "alice", "Alice"))
        await driver.connected("bob", relay_server, channelAuthorization=channel_auth(auth, "bob", "Bob"))
        await driver.subscribed("alice", room)
        members = await driver.call("members", "alice", channel=room)
        assert members["count"] == 1
        assert members["me"] == {"id": "alice", "info": {"name": "Alice"}}

        await driver.subscribed("bob", room)
        added = await driver.expect({"type": "member_added", "id": "alice", "channel": room})
        assert added["member"] == {"id": "bob", "info": {"name": "Bob"}}
        members = await driver.call("members", "bob", channel=room)
        assert members["count"] == 2
        assert sorted(members["ids"]) == ["alice", "bob"]
        assert members["me"] == {"id": "bob", "info": {"name": "Bob"}}
        assert members["hash"]["alice"] == {"name": "Alice"}
        assert not driver.seen({"type": "member_added", "id": "bob"})

        await driver.call("unsubscribe", "bob", channel=room)
        removed = await driver.expect({"type": "member_removed", "id": "alice", "channel": room})
        assert removed["member"] == {"id": "bob", "info": {"name": "Bob"}}
        assert (await driver.call("members", "alice", channel=room))["count"] == 1


async def test_client_events_on_private_channel(relay_server: RelayServer, driver: Driver, auth: AuthServer) -> None:
    """A client event on a private channel reaches the other subscriber, without ``user_id``, and not the sender."""
    with trio.fail_after(TEST_TIMEOUT):
        chat = "private-chat"
        for id in ("a", "b"):
            await driver.connected(id, relay_server, channelAuthorization=channel_auth(auth))
            await driver.subscribed(id, chat, "client-typing", "marker")
        assert await driver.call("trigger", "a", channel=chat, event="client-typing", data={"x": 1}) is True
        event = await driver.expect({"type": "event", "id": "b", "event": "client-typing"})
        assert event["data"] == {"x": 1}
        assert event["metadata"] == {}
        # The marker follows the client event on a's connection: if the relay
        # had echoed the event, a would have it before the marker.
        await marker(driver, relay_server, "a", chat)
        assert not driver.seen({"id": "a", "event": "client-typing"})
        assert not driver.seen({"type": "error"})


async def test_client_events_on_presence_carry_user_id(
    relay_server: RelayServer, driver: Driver, auth: AuthServer
) -> None:
    """A client event on a presence channel reaches the others with the sender's id as ``metadata.user_id``."""
    with trio.fail_after(TEST_TIMEOUT):
        room = "presence-game"
        for id in ("alice", "bob"):
            await driver.connected(id, relay_server, channelAuthorization=channel_auth(auth, id))
            await driver.subscribed(id, room, "client-move")
        assert await driver.call("trigger", "alice", channel=room, event="client-move", data={"to": "e4"}) is True
        event = await driver.expect({"type": "event", "id": "bob", "event": "client-move"})
        assert event["data"] == {"to": "e4"}
        assert event["metadata"] == {"user_id": "alice"}


async def test_client_event_on_public_channel_rejected(relay_server: RelayServer, driver: Driver) -> None:
    """A client event on a public channel gets ``pusher:error``, is not relayed, and the connection stays up."""
    with trio.fail_after(TEST_TIMEOUT):
        socket_id = await driver.connected("a", relay_server)
        await driver.connected("b", relay_server)
        for id in ("a", "b"):
            await driver.subscribed(id, "lobby", "client-shout", "marker")
        # pusher-js does not stop this itself (it only checks the client- prefix).
        assert await driver.call("trigger", "a", channel="lobby", event="client-shout", data={}) is True
        error = await driver.expect({"type": "error", "id": "a"})
        assert error["error"]["type"] == "PusherError"
        assert "private and presence" in error["message"]
        await marker(driver, relay_server, "b", "lobby")
        assert not driver.seen({"event": "client-shout"})
        await marker(driver, relay_server, "a", "lobby")
        status = await driver.call("status", "a")
        assert (status["state"], status["socket_id"]) == ("connected", socket_id)
        assert not driver.seen({"type": "state", "id": "a"})


async def test_signin_watchlist_and_server_to_user(relay_server: RelayServer, driver: Driver, auth: AuthServer) -> None:
    """Sign-in via ``userAuthentication``, watchlist online/offline between two users, a server-to-user event."""
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connected("alice", relay_server, userAuthentication=user_auth(auth, "alice", ["bob"]))
        for event in ("online", "offline"):
            await driver.call("user_bind", "alice", event=event, watchlist=True)
        await driver.call("user_bind", "alice", event="notice")
        await driver.call("signin", "alice")
        success = await driver.expect({"type": "signin_success", "id": "alice"})
        assert success["user_data"] == {"id": "alice", "watchlist": ["bob"]}

        await driver.connected("bob", relay_server, userAuthentication=user_auth(auth, "bob", ["alice"]))
        await driver.call("user_bind", "bob", event="online", watchlist=True)
        await driver.call("signin", "bob")
        await driver.expect({"type": "signin_success", "id": "bob"})
        online = await driver.expect({"type": "watchlist", "id": "alice", "event": "online"})
        assert online["data"] == {"name": "online", "user_ids": ["bob"]}
        # Bob watches alice, who was already online: he gets her status at once.
        snapshot = await driver.expect({"type": "watchlist", "id": "bob", "event": "online"})
        assert snapshot["data"]["user_ids"] == ["alice"]

        publish(relay_server, "#server-to-user-alice", "notice", {"text": "hi alice"})
        notice = await driver.expect({"type": "user_event", "id": "alice", "event": "notice"})
        assert notice["data"] == {"text": "hi alice"}

        await driver.call("disconnect", "bob")
        offline = await driver.expect({"type": "watchlist", "id": "alice", "event": "offline"})
        assert offline["data"] == {"name": "offline", "user_ids": ["bob"]}
        assert [path for path, _ in auth.requests] == ["/pusher/user-auth"] * 2
        assert not driver.seen({"type": "signin_error"})


async def test_cache_channel_replays_last_event(relay_server: RelayServer, driver: Driver) -> None:
    """A new subscriber of a cache channel gets the last published event right after subscribing."""
    with trio.fail_after(TEST_TIMEOUT):
        publish(relay_server, "cache-prices", "price", {"eur": 1})
        publish(relay_server, "cache-prices", "price", {"eur": 2})
        await driver.connected("a", relay_server)
        succeeded = await driver.subscribed("a", "cache-prices", "price")
        replay = await driver.expect({"type": "event", "id": "a", "event": "price"})
        assert replay["data"] == {"eur": 2}
        assert replay["channel"] == "cache-prices"
        assert replay["seq"] > succeeded["seq"]
        assert not driver.seen({"type": "cache_miss"})


async def test_cache_miss_on_empty_cache_channel(relay_server: RelayServer, driver: Driver) -> None:
    """Subscribing to a cache channel with nothing cached yields ``pusher:cache_miss`` after success."""
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connected("a", relay_server)
        succeeded = await driver.subscribed("a", "cache-empty")
        miss = await driver.expect({"type": "cache_miss", "id": "a", "channel": "cache-empty"})
        assert miss["seq"] > succeeded["seq"]


async def test_bad_signature_rejected(relay_server: RelayServer, driver: Driver, auth: AuthServer) -> None:
    """A private subscription signed with the wrong secret fails with AuthError 401 and the connection stays up."""
    impostor = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret="not-the-secret")

    def wrong_secret(form: dict[str, str]) -> tuple[int, Any]:
        return 200, impostor.authenticate(channel=form["channel_name"], socket_id=form["socket_id"])

    with trio.fail_after(TEST_TIMEOUT):
        endpoint = auth.route("/wrong-secret", wrong_secret)
        socket_id = await driver.connected("a", relay_server, channelAuthorization={"endpoint": endpoint})
        await driver.call("subscribe", "a", channel="private-vault")
        error = await driver.expect({"type": "subscription_error", "id": "a", "channel": "private-vault"})
        assert error["data"]["type"] == "AuthError"
        assert error["data"]["status"] == 401
        assert auth.requests[0][0] == "/wrong-secret"
        # Still connected, same socket: a later subscription succeeds on it.
        await driver.subscribed("a", "after")
        assert not driver.seen({"type": "subscription_succeeded", "channel": "private-vault"})
        status = await driver.call("status", "a")
        assert (status["state"], status["socket_id"]) == ("connected", socket_id)


async def test_encrypted_channel_end_to_end(relay_server: RelayServer, driver: Driver, nursery: trio.Nursery) -> None:
    """An event the Python SDK encrypts for a ``private-encrypted-`` channel is decrypted by pusher-js."""
    master_key = base64.b64encode(bytes(range(32))).decode()
    auth = await AuthServer(master_key_b64=master_key).start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connected("a", relay_server, channelAuthorization=channel_auth(auth))
        await driver.subscribed("a", "private-encrypted-secrets", "reveal")
        sdk = pusher.Pusher(
            app_id=APP_ID,
            key=APP_KEY,
            secret=APP_SECRET,
            host="127.0.0.1",
            port=relay_server.port,
            ssl=False,
            encryption_master_key_base64=master_key,
        )
        await trio.to_thread.run_sync(lambda: sdk.trigger(["private-encrypted-secrets"], "reveal", {"pin": 1234}))
        event = await driver.expect({"type": "event", "id": "a", "event": "reveal"})
        assert event["data"] == {"pin": 1234}


async def refused(driver: Driver, server: RelayServer, key: str, code: int) -> None:
    """Connect with ``key``; pusher-js must see ``code`` and settle in ``disconnected`` with no retry pending."""
    await driver.connect("x", server, key)
    error = await driver.expect({"type": "error", "id": "x", "code": code})
    assert error["message"]
    await driver.expect({"type": "state", "id": "x", "previous": "connecting", "current": "disconnected"})
    status = await driver.call("status", "x")
    # No retry timer and no attempt under way: pusher-js will not reconnect by itself.
    assert status == {"state": "disconnected", "socket_id": None, "retrying": False, "connecting": False}
    assert not driver.seen({"type": "connecting_in"})


async def test_unknown_key_refused(relay_server: RelayServer, driver: Driver) -> None:
    """An unknown key gets 4001 and pusher-js stops in ``disconnected`` instead of retrying."""
    with trio.fail_after(TEST_TIMEOUT):
        await refused(driver, relay_server, "no-such-key", 4001)
        assert relay_server.relay.counters["sockets_refused"] == 1
        assert relay_server.relay.counters["sockets_opened"] == 0


async def test_disabled_app_refused(relay_server: RelayServer, driver: Driver) -> None:
    """A disabled app's key gets 4003 and pusher-js does not retry."""
    with trio.fail_after(TEST_TIMEOUT):
        await refused(driver, relay_server, "off-key", 4003)
        assert relay_server.relay.counters["sockets_refused"] == 1


async def test_over_connection_quota_refused(relay_server: RelayServer, driver: Driver) -> None:
    """The second connection of an app capped at one gets 4004; the first stays connected."""
    with trio.fail_after(TEST_TIMEOUT):
        first = await driver.connected("first", relay_server, "tiny-key")
        await refused(driver, relay_server, "tiny-key", 4004)
        status = await driver.call("status", "first")
        assert (status["state"], status["socket_id"]) == ("connected", first)


async def test_subscription_count_off_by_default(relay_server: RelayServer, driver: Driver) -> None:
    """With the default features pusher-js gets no ``pusher:subscription_count`` however many subscribe."""
    with trio.fail_after(TEST_TIMEOUT):
        for id in ("a", "b"):
            await driver.connected(id, relay_server)
            await driver.subscribed(id, "crowd", "marker")
        for id in ("a", "b"):
            await marker(driver, relay_server, id, "crowd")
        assert not driver.seen({"type": "subscription_count"})


async def test_subscription_count_when_enabled(nursery: trio.Nursery, driver: Driver) -> None:
    """With the feature on, every subscriber's pusher-js gets the channel's current subscription count."""
    server = await start_relay(
        nursery, [App(id=APP_ID, key=APP_KEY, secret=APP_SECRET, features=Features(subscription_count=True))]
    )
    with trio.fail_after(TEST_TIMEOUT):
        await driver.connected("a", server)
        await driver.subscribed("a", "crowd")
        first = await driver.expect({"type": "subscription_count", "id": "a"})
        assert first["data"] == {"subscription_count": 1}
        await driver.connected("b", server)
        await driver.subscribed("b", "crowd")
        for id in ("a", "b"):
            report = await driver.expect({"type": "subscription_count", "id": id, "data": {"subscription_count": 2}})
            assert report["channel"] == "crowd"


async def test_back_channel_round_trip(relay_server: RelayServer, driver: Driver) -> None:
    """pusher-js ``send_event`` reaches a pipe and the pipe's answer reaches pusher-js's own binding."""
    with trio.fail_after(TEST_TIMEOUT):
        url = url_of(relay_server)
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET) as pipe:

            @pipe.sockets.on("event:eventFromBrowser")
            async def answer(socket_id: str, data: Any) -> None:
                await pipe.socket(socket_id).trigger("acknowledge", {"message": "Rodger", "got": data})

            await driver.connected("a", relay_server)
            await driver.call("bind", "a", event="acknowledge")
            assert await driver.call("send_event", "a", event="eventFromBrowser", data={"some": "data"}) is True
            reply = await driver.expect({"type": "event", "id": "a", "event": "acknowledge"})
            assert reply["data"] == {"message": "Rodger", "got": {"some": "data"}}
