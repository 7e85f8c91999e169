"""The Python socket client (:func:`pipe_trio.connect`) against a real relay on loopback."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from pipe_proto import RemoteProtocolError
from pipe_proto.pusher import Error, MemberAdded, MemberRemoved, Message, Pong, SubscriptionSucceeded
from pipe_proto.signatures import channel_auth
from pipe_trio import PusherClient, RelayServer, SignInFailed, SubscriptionFailed, connect
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay, url_of

pytestmark = pytest.mark.both_transports


def publish(server: RelayServer, channel: str, event: str, data: str) -> None:
    """Publish a channel event of app 1 as the REST API would."""
    server.execute(server.relay.publish(APP_ID, [channel], event, data, None, server.now()))


async def settle(client: PusherClient) -> None:
    """Wait until the relay has handled everything ``client`` sent (a ping round trip)."""
    await client.ping()
    await client.next_event(Pong)


async def test_subscribe_receive_unsubscribe(relay_server: RelayServer) -> None:
    """A subscribed client receives the channel's events; after unsubscribing it no longer does."""
    with trio.fail_after(10):
        async with connect(url_of(relay_server), APP_KEY) as client:
            assert client.socket_id.count(".") == 1
            result = await client.subscribe("news")
            assert result == SubscriptionSucceeded(channel="news")
            assert client.channels == {"news"}
            assert await client.next_event() == result
            publish(relay_server, "news", "tick", '{"n":1}')
            assert await client.next_event() == Message(event="tick", channel="news", data='{"n":1}')
            await client.unsubscribe("news")
            assert client.channels == set()
            await settle(client)
            publish(relay_server, "news", "tick", '{"n":2}')
            await client.subscribe("other")
            publish(relay_server, "other", "tock", "x")
            assert await client.next_event() == SubscriptionSucceeded(channel="other")
            assert await client.next_event() == Message(event="tock", channel="other", data="x")


async def test_next_event_filters_by_name_class_and_channel(relay_server: RelayServer) -> None:
    """next_event skips events that do not match the name, the class or the channel asked for."""
    with trio.fail_after(10):
        async with connect(url_of(relay_server), APP_KEY) as client:
            await client.subscribe("a")
            await client.subscribe("b")
            publish(relay_server, "a", "one", "1")
            publish(relay_server, "b", "one", "2")
            publish(relay_server, "b", "two", "3")
            assert (await client.next_event("one", channel="b")).data == "2"
            assert (await client.next_event("two")).data == "3"
            publish(relay_server, "a", "three", "4")
            assert await client.next_event(Message) == Message(event="three", channel="a", data="4")


async def test_private_and_presence_signed_with_secret(relay_server: RelayServer) -> None:
    """With the app secret, private and presence subscriptions are signed and accepted, with members."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with connect(url, APP_KEY, secret=APP_SECRET) as alice, connect(url, APP_KEY, secret=APP_SECRET) as bob:
            assert await alice.subscribe("private-chat") == SubscriptionSucceeded(channel="private-chat")
            joined = await alice.subscribe("presence-room", channel_data={"user_id": "a", "user_info": {"name": "A"}})
            assert joined.presence is not None
            assert dict(joined.presence.members) == {"a": {"name": "A"}}
            joined = await bob.subscribe("presence-room", channel_data={"user_id": "b"})
            assert joined.presence is not None
            assert dict(joined.presence.members) == {"a": {"name": "A"}, "b": None}
            assert await alice.next_event(MemberAdded) == MemberAdded(channel="presence-room", user_id="b")
            await bob.unsubscribe("presence-room")
            assert await alice.next_event(MemberRemoved) == MemberRemoved(channel="presence-room", user_id="b")


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
async def test_private_refused_without_valid_signature(relay_server: RelayServer, secret: str | None) -> None:
    """Unsigned (no pipe to ask) or wrongly signed private subscriptions raise SubscriptionFailed."""
    with trio.fail_after(10):
        async with connect(url_of(relay_server), APP_KEY, secret=secret) as client:
            with pytest.raises(SubscriptionFailed) as failed:
                await client.subscribe("private-chat")
            assert client.channels == set()
            assert await client.subscribe("public") == SubscriptionSucceeded(channel="public")
    assert failed.value.channel == "private-chat"
    assert failed.value.type == "AuthError"
    assert failed.value.status == (503 if secret is None else 401)


async def test_authorizer_callback_sync_and_async(relay_server: RelayServer) -> None:
    """An authorizer (plain or async) is asked with the socket id and channel, and its answer is used."""
    calls: list[tuple[str, str]] = []

    def sync_authorizer(socket_id: str, channel: str) -> dict[str, Any]:
        calls.append((socket_id, channel))
        return {"auth": channel_auth(APP_KEY, APP_SECRET, socket_id, channel)}

    async def async_authorizer(socket_id: str, channel: str) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        calls.append((socket_id, channel))
        data = json.dumps({"user_id": "42", "user_info": {"role": "admin"}})
        return {"auth": channel_auth(APP_KEY, APP_SECRET, socket_id, channel, data), "channel_data": data}

    url = url_of(relay_server)
    with trio.fail_after(10):
        async with connect(url, APP_KEY, authorizer=sync_authorizer) as first:
            await first.subscribe("private-a")
            await first.subscribe("public-b")  # public channels are not authorized
            assert calls == [(first.socket_id, "private-a")]
        async with connect(url, APP_KEY, authorizer=async_authorizer) as second:
            joined = await second.subscribe("presence-c")
            assert calls[-1] == (second.socket_id, "presence-c")
            assert joined.presence is not None
            assert dict(joined.presence.members) == {"42": {"role": "admin"}}

        def bad_authorizer(socket_id: str, channel: str) -> dict[str, Any]:
            return {"auth": channel_auth(APP_KEY, "not-the-secret", socket_id, channel)}

        async with connect(url, APP_KEY, authorizer=bad_authorizer) as third:
            with pytest.raises(SubscriptionFailed):
                await third.subscribe("private-a")


async def test_client_events_between_two_clients(relay_server: RelayServer) -> None:
    """A client event reaches the other subscriber (with user_id on presence) and never echoes to the sender."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with connect(url, APP_KEY, secret=APP_SECRET) as alice, connect(url, APP_KEY, secret=APP_SECRET) as bob:
            for client in (alice, bob):
                await client.subscribe("private-chat")
            await alice.trigger("private-chat", "client-typing", {"who": "alice"})
            received = await bob.next_event("client-typing")
            assert received == Message(event="client-typing", channel="private-chat", data='{"who":"alice"}')
            await settle(alice)  # the ping's pong is the first thing alice gets: no echo
            await alice.subscribe("presence-room", channel_data={"user_id": "alice-id"})
            await bob.subscribe("presence-room", channel_data={"user_id": "bob-id"})
            await bob.trigger("presence-room", "client-wave", [1, 2])
            waved = await alice.next_event("client-wave")
            assert waved.user_id == "bob-id"
            assert json.loads(waved.data) == [1, 2]


async def test_client_event_rejected_on_public_channel(relay_server: RelayServer) -> None:
    """A client event on a public channel comes back as a pusher:error and is not delivered."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with connect(url, APP_KEY) as alice, connect(url, APP_KEY) as bob:
            await alice.subscribe("public")
            await bob.subscribe("public")
            await alice.trigger("public", "client-x", {})
            error = await alice.next_event(Error)
            assert "private" in error.message
            publish(relay_server, "public", "marker", "m")
            assert (await bob.next_event(Message)).event == "marker"


async def test_sign_in_and_server_to_user(relay_server: RelayServer) -> None:
    """Sign-in signed with the secret succeeds, and the signed-in user receives server-to-user events."""
    with trio.fail_after(10):
        async with connect(url_of(relay_server), APP_KEY, secret=APP_SECRET) as client:
            user_data = await client.signin({"id": "u1", "user_info": {"name": "U"}})
            assert json.loads(user_data) == {"id": "u1", "user_info": {"name": "U"}}
            await client.subscribe("#server-to-user-u1")
            publish(relay_server, "#server-to-user-u1", "hello", '"there"')
            event = await client.next_event("hello")
            assert event.channel == "#server-to-user-u1"
            assert event.data == '"there"'


async def test_sign_in_refused(relay_server: RelayServer) -> None:
    """A sign-in with a bad signature raises SignInFailed with code 4009 and the connection stays usable."""
    with trio.fail_after(10):
        async with connect(url_of(relay_server), APP_KEY, secret=APP_SECRET) as client:
            with pytest.raises(SignInFailed) as failed:
                await client.signin({"id": "u1"}, auth=f"{APP_KEY}:{'0' * 64}")
            assert failed.value.code == 4009
            assert await client.subscribe("public") == SubscriptionSucceeded(channel="public")
            assert json.loads(await client.signin({"id": "u1"})) == {"id": "u1"}


@pytest.mark.parametrize(("key", "code"), [("nobody", 4001), ("off-key", 4003)])
async def test_refused_handshake_raises(relay_server: RelayServer, key: str, code: int) -> None:
    """A refused connection (unknown key 4001, disabled app 4003) raises RemoteProtocolError with the code."""
    with trio.fail_after(10), pytest.raises(RemoteProtocolError) as refused:
        async with connect(url_of(relay_server), key):
            pytest.fail("connected")  # pragma: no cover
    assert refused.value.code == code
    assert relay_server.relay.stats()["sockets"] == 0


async def test_refused_protocol_version(relay_server: RelayServer) -> None:
    """An unsupported protocol version is refused with 4007."""
    with trio.fail_after(10), pytest.raises(RemoteProtocolError) as refused:
        async with connect(url_of(relay_server), APP_KEY, protocol=3):
            pytest.fail("connected")  # pragma: no cover
    assert refused.value.code == 4007


async def test_over_connection_quota(relay_server: RelayServer) -> None:
    """An app at its connection cap refuses the next client with 4004 and keeps the first."""
    url = url_of(relay_server)
    with trio.fail_after(10):
        async with connect(url, "tiny-key") as first:
            with pytest.raises(RemoteProtocolError) as refused:
                async with connect(url, "tiny-key"):
                    pytest.fail("connected")  # pragma: no cover
            assert refused.value.code == 4004
            await settle(first)


async def test_server_close_ends_event_stream(nursery: trio.Nursery) -> None:
    """When the relay shuts down, the client gets the 4200 error, its events end and close_code is 4200."""
    server = await start_relay(nursery)
    with trio.fail_after(10):
        async with connect(url_of(server), APP_KEY) as client:
            await client.subscribe("news")
            nursery.start_soon(server.shutdown, 5.0)
            seen = [event async for event in client]
            assert seen[0] == SubscriptionSucceeded(channel="news")
            assert seen[-1] == Error(code=4200, message="Server is shutting down. Please reconnect.")
            assert client.close_code == 4200
            with pytest.raises(trio.EndOfChannel):
                await client.next_event()


async def test_closed_client_idles_quietly(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """After the relay closed the connection, staying inside connect() past the heartbeat raises nothing."""
    server = await start_relay(nursery)
    with trio.fail_after(1000):
        async with connect(url_of(server), APP_KEY) as client:
            nursery.start_soon(server.shutdown, 5.0)
            async for _ in client:
                pass
            await trio.sleep(400)  # several activity timeouts of mock time
            assert client.close_code == 4200


async def test_idle_client_kept_alive(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """An idle client stays connected for many activity timeouts: the heartbeat keeps the relay from closing it."""
    server = await start_relay(nursery)
    with trio.fail_after(2000):
        async with connect(url_of(server), APP_KEY, activity_timeout=1000) as client:
            await trio.sleep(600)  # five of the relay's 120 s activity timeouts
            assert client.socket_id in server.conns
            assert client.close_code is None
            await settle(client)


async def test_bind_calls_handlers_by_event_and_channel(relay_server: RelayServer) -> None:
    """bind() handlers fire for their event, globally or on one channel only; unbind stops them."""
    url = url_of(relay_server)
    seen: list[tuple[str, str | None]] = []
    with trio.fail_after(10):
        async with connect(url, APP_KEY) as client:
            await client.subscribe("a")
            await client.subscribe("b")

            def anywhere(message: Message) -> None:
                seen.append(("anywhere", message.channel))

            async def only_a(message: Message) -> None:
                seen.append(("only a", message.channel))

            client.bind("tick", anywhere)
            client.bind("tick", only_a, channel="a")
            for channel in ("a", "b"):
                relay_server.execute(relay_server.relay.publish(APP_ID, [channel], "tick", "{}", None, relay_server.now()))
                await client.next_event("tick", channel=channel)
            client.unbind("tick", anywhere)
            relay_server.execute(relay_server.relay.publish(APP_ID, ["b"], "tick", "{}", None, relay_server.now()))
            await client.next_event("tick", channel="b")
    assert seen == [("anywhere", "a"), ("only a", "a"), ("anywhere", "b")]
