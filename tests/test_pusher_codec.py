"""The Pusher frame codec: the exact frames of section 1.6 both ways, round trips, tolerance and fuzzing."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz.fuzz_pusher_codec import CLIENT_SENDS, SERVER_SENDS
from pipe_proto.errors import LocalProtocolError, RemoteProtocolError
from pipe_proto.pusher.codec import Role, connection_established, decode, encode, encode_message, subscription_succeeded
from pipe_proto.pusher.events import (
    CacheMiss,
    ConnectionEstablished,
    Error,
    MemberAdded,
    MemberRemoved,
    Message,
    Ping,
    Pong,
    Presence,
    PusherEvent,
    SignIn,
    SignInSuccess,
    Subscribe,
    SubscriptionCount,
    SubscriptionError,
    SubscriptionSucceeded,
    Unsubscribe,
    WatchlistChange,
    WatchlistEvents,
)

CLIENT, SERVER = Role.CLIENT, Role.SERVER
AUTH = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"


def peer(role: Role) -> Role:
    """The other side of a connection."""
    return SERVER if role is CLIENT else CLIENT


# (role that sends the frame, event, exact frame): section 1.6, verbatim except for placeholders.
FRAMES: list[tuple[Role, PusherEvent, str]] = [
    # Client -> server (pusher-js key order: event, data, channel).
    (CLIENT, Ping(), '{"event":"pusher:ping","data":{}}'),
    (CLIENT, Pong(), '{"event":"pusher:pong","data":{}}'),
    (CLIENT, Subscribe(channel="my-channel", auth=""),
     '{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}'),
    (CLIENT, Subscribe(channel="private-foobar", auth=AUTH),
     '{"event":"pusher:subscribe","data":{"auth":"' + AUTH + '","channel":"private-foobar"}}'),
    (CLIENT, Subscribe(channel="presence-foobar", auth="k:s",
                       channel_data='{"user_id":"10","user_info":{"name":"A"}}'),
     '{"event":"pusher:subscribe","data":{"auth":"k:s",'
     '"channel_data":"{\\"user_id\\":\\"10\\",\\"user_info\\":{\\"name\\":\\"A\\"}}","channel":"presence-foobar"}}'),
    (CLIENT, Unsubscribe(channel="my-channel"), '{"event":"pusher:unsubscribe","data":{"channel":"my-channel"}}'),
    (CLIENT, Message(event="client-typing", data={"x": 1}, channel="private-chat"),
     '{"event":"client-typing","data":{"x":1},"channel":"private-chat"}'),
    (CLIENT, SignIn(auth="k:s", user_data='{"id":"12345"}'),
     '{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\\"id\\":\\"12345\\"}"}}'),
    (CLIENT, Subscribe(channel="#server-to-user-12345", auth=""),
     '{"event":"pusher:subscribe","data":{"auth":"","channel":"#server-to-user-12345"}}'),
    (CLIENT, Message(event="eventFromBrowser", data={"some": "data"}),
     '{"event":"eventFromBrowser","data":{"some":"data"}}'),
    # Server -> client.
    (SERVER, ConnectionEstablished(socket_id="123.456", activity_timeout=120),
     '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"123.456\\",\\"activity_timeout\\":120}"}'),
    (SERVER, Error(code=4001, message="..."), '{"event":"pusher:error","data":{"code":4001,"message":"..."}}'),
    (SERVER, Error(code=None, message="nope"), '{"event":"pusher:error","data":{"code":null,"message":"nope"}}'),
    (SERVER, Ping(), '{"event":"pusher:ping","data":{}}'),
    (SERVER, Pong(), '{"event":"pusher:pong","data":{}}'),
    (SERVER, SubscriptionSucceeded(channel="private-foobar"),
     '{"event":"pusher_internal:subscription_succeeded","channel":"private-foobar","data":"{}"}'),
    (SERVER, SubscriptionSucceeded(
        channel="presence-foobar", presence=Presence(members=[("10", {"name": "A"}), ("11", {"name": "B"})])),
     '{"event":"pusher_internal:subscription_succeeded","channel":"presence-foobar","data":"{\\"presence\\":'
     '{\\"ids\\":[\\"10\\",\\"11\\"],\\"hash\\":{\\"10\\":{\\"name\\":\\"A\\"},\\"11\\":{\\"name\\":\\"B\\"}},'
     '\\"count\\":2}}"}'),
    (SERVER, SubscriptionSucceeded(channel="presence-x", presence=Presence(members=[(10, None)])),
     '{"event":"pusher_internal:subscription_succeeded","channel":"presence-x","data":"{\\"presence\\":'
     '{\\"ids\\":[10],\\"hash\\":{\\"10\\":null},\\"count\\":1}}"}'),
    (SERVER, MemberAdded(channel="presence-foobar", user_id="11", user_info={"name": "B"}),
     '{"event":"pusher_internal:member_added","channel":"presence-foobar",'
     '"data":"{\\"user_id\\":\\"11\\",\\"user_info\\":{\\"name\\":\\"B\\"}}"}'),
    (SERVER, MemberAdded(channel="presence-foobar", user_id=11),
     '{"event":"pusher_internal:member_added","channel":"presence-foobar","data":"{\\"user_id\\":11}"}'),
    (SERVER, MemberRemoved(channel="presence-foobar", user_id="11"),
     '{"event":"pusher_internal:member_removed","channel":"presence-foobar","data":"{\\"user_id\\":\\"11\\"}"}'),
    (SERVER, SubscriptionError(channel="private-foobar", type="AuthError", error="...", status=401),
     '{"event":"pusher:subscription_error","channel":"private-foobar",'
     '"data":{"type":"AuthError","error":"...","status":401}}'),
    (SERVER, CacheMiss(channel="cache-prices"), '{"event":"pusher:cache_miss","channel":"cache-prices"}'),
    (SERVER, SubscriptionCount(channel="my-channel", count=3),
     '{"event":"pusher_internal:subscription_count","channel":"my-channel","data":"{\\"subscription_count\\":3}"}'),
    (SERVER, Message(event="my-event", channel="my-channel", data='{"n":1}'),
     '{"event":"my-event","channel":"my-channel","data":"{\\"n\\":1}"}'),
    (SERVER, Message(event="client-typing", channel="presence-room", data='{"x":1}', user_id="10"),
     '{"event":"client-typing","channel":"presence-room","data":"{\\"x\\":1}","user_id":"10"}'),
    (SERVER, SignInSuccess(user_data='{"id":"12345"}'),
     '{"event":"pusher:signin_success","data":{"user_data":"{\\"id\\":\\"12345\\"}"}}'),
    (SERVER, WatchlistEvents(events=[WatchlistChange(name="online", user_ids=["2"])]),
     '{"event":"pusher_internal:watchlist_events","data":"{\\"events\\":[{\\"name\\":\\"online\\",'
     '\\"user_ids\\":[\\"2\\"]}]}"}'),
    (SERVER, SubscriptionSucceeded(channel="#server-to-user-12345"),
     '{"event":"pusher_internal:subscription_succeeded","channel":"#server-to-user-12345","data":"{}"}'),
    (SERVER, Message(event="some-event", channel="#server-to-user-12345", data='{"message":"hi"}'),
     '{"event":"some-event","channel":"#server-to-user-12345","data":"{\\"message\\":\\"hi\\"}"}'),
    (SERVER, Message(event="acknowledge", data='{"message":"Rodger"}'),
     '{"event":"acknowledge","data":"{\\"message\\":\\"Rodger\\"}"}'),
]
FRAME_IDS = [f"{role.value}-{i}-{type(event).__name__}" for i, (role, event, _) in enumerate(FRAMES)]


@pytest.mark.parametrize(("role", "event", "text"), FRAMES, ids=FRAME_IDS)
def test_encode(role: Role, event: PusherEvent, text: str) -> None:
    """encode writes the exact frame of the catalogue for the side that sends it."""
    assert encode(event, role=role) == text


@pytest.mark.parametrize(("role", "event", "text"), FRAMES, ids=FRAME_IDS)
def test_decode_whole(role: Role, event: PusherEvent, text: str) -> None:
    """The peer decodes the frame, given whole as str or as UTF-8 bytes, into the same event."""
    assert decode(text, role=peer(role)) == event
    assert decode(text.encode(), role=peer(role)) == event


@pytest.mark.parametrize(("role", "event", "text"), FRAMES, ids=FRAME_IDS)
def test_decode_with_trailing_data(role: Role, event: PusherEvent, text: str) -> None:
    """A frame followed by more data is not one JSON document: RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        decode(text + text, role=peer(role))
    with pytest.raises(RemoteProtocolError):
        decode(text + "x", role=peer(role))
    # Whitespace around the document is fine.
    assert decode(" " + text + "\n", role=peer(role)) == event


@pytest.mark.parametrize(("role", "event", "text"), FRAMES, ids=FRAME_IDS)
def test_decode_truncated(role: Role, event: PusherEvent, text: str) -> None:
    """Every proper prefix of a frame is malformed (a WebSocket message is never a partial frame)."""
    for end in range(len(text)):
        with pytest.raises(RemoteProtocolError):
            decode(text[:end], role=peer(role))


@pytest.mark.parametrize(
    ("role", "event"),
    [
        (CLIENT, ConnectionEstablished(socket_id="1.2", activity_timeout=1)),
        (CLIENT, Error(code=None, message="x")),
        (CLIENT, SubscriptionSucceeded(channel="c")),
        (CLIENT, SignInSuccess(user_data="{}")),
        (CLIENT, CacheMiss(channel="c")),
        (CLIENT, MemberAdded(channel="c", user_id="1")),
        (CLIENT, WatchlistEvents(events=[])),
        (SERVER, Subscribe(channel="c")),
        (SERVER, Unsubscribe(channel="c")),
        (SERVER, SignIn(auth="a", user_data="{}")),
    ],
)
def test_encode_refuses_events_of_the_other_side(role: Role, event: PusherEvent) -> None:
    """A side cannot send the other side's events: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode(event, role=role)


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize("name", ["pusher:subscribe", "pusher_internal:member_added", "pusher:foo"])
def test_encode_refuses_reserved_message_names(role: Role, name: str) -> None:
    """A Message cannot use the protocol's reserved prefixes."""
    with pytest.raises(LocalProtocolError):
        encode(Message(event=name, data="{}", channel="c"), role=role)


def test_a_message_needs_an_event_name() -> None:
    """The decoder refuses a frame without an event name, so a Message cannot be built without one."""
    with pytest.raises(ValueError, match="event"):
        Message(event="", data="{}")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, object(), {1, 2}])
def test_encode_refuses_non_json_client_data(value: Any) -> None:
    """Client data that JSON cannot carry raises LocalProtocolError, not ValueError or TypeError."""
    with pytest.raises(LocalProtocolError):
        encode(Message(event="client-x", data=value, channel="private-c"), role=CLIENT)


def test_subscribe_without_auth_is_sent_with_empty_auth() -> None:
    """A Subscribe built without auth goes out as pusher-js sends public subscribes, with "auth":""."""
    text = encode(Subscribe(channel="c"), role=CLIENT)
    assert text == '{"event":"pusher:subscribe","data":{"auth":"","channel":"c"}}'


def test_encode_message_matches_generic_encoder() -> None:
    """The hot-path encode_message writes what encode writes for the same server Message."""
    for channel in (None, "c"):
        for user_id in (None, "u"):
            event = Message(event="e\u2028\"", data='{"a":"\\u00e9"}', channel=channel, user_id=user_id)
            assert encode_message("e\u2028\"", '{"a":"\\u00e9"}', channel, user_id) == encode(event, role=SERVER)


def test_output_is_ascii() -> None:
    """Encoded frames are ASCII, so a lone surrogate can never break the UTF-8 encoding of a frame."""
    text = encode(Message(event="é", data="\ud800", channel="c"), role=SERVER)
    assert text.isascii()
    assert decode(text, role=CLIENT) == Message(event="é", data="\ud800", channel="c")


# ------------------------------------------------------------------ round trips
# The event strategies are the fuzz target's (fuzz/fuzz_pusher_codec.py), so
# both suites build the same events.


@given(CLIENT_SENDS)
def test_client_round_trip(event: PusherEvent) -> None:
    """Whatever a client encodes, the server decodes back to an equal event."""
    text = encode(event, role=CLIENT)
    assert text.isascii()
    assert decode(text, role=SERVER) == event


@given(SERVER_SENDS)
def test_server_round_trip(event: PusherEvent) -> None:
    """Whatever the server encodes, a client decodes back to an equal event."""
    text = encode(event, role=SERVER)
    assert text.isascii()
    assert decode(text, role=CLIENT) == event


def test_round_trip_strategies_cover_every_event_class() -> None:
    """The two strategies above build every event class each side sends."""
    client = {Ping, Pong, Subscribe, Unsubscribe, SignIn, Message}
    server = {
        ConnectionEstablished, Error, Ping, Pong, SubscriptionSucceeded, SubscriptionError, MemberAdded,
        MemberRemoved, CacheMiss, SubscriptionCount, SignInSuccess, WatchlistEvents, Message,
    }
    every = {cls for cls in PusherEvent.__subclasses__() if cls is not Presence}
    assert client | server == every
    for cls in every - client:
        with pytest.raises(LocalProtocolError):
            encode(next(e for _, e, _ in FRAMES if type(e) is cls), role=CLIENT)


# -------------------------------------------------------------------- tolerance

TOLERATED: list[tuple[Role, str, PusherEvent]] = [
    # (side decoding, frame, event): double-encoded or object data where the other form is documented.
    (SERVER, '{"event":"pusher:subscribe","data":"{\\"auth\\":\\"\\",\\"channel\\":\\"my-channel\\"}"}',
     Subscribe(channel="my-channel", auth="")),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":"my-channel"}}', Subscribe(channel="my-channel")),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":"c","auth":null,"channel_data":null}}',
     Subscribe(channel="c")),
    (SERVER, '{"event":"pusher:unsubscribe","data":"{\\"channel\\":\\"c\\"}"}', Unsubscribe(channel="c")),
    (SERVER, '{"event":"pusher:signin","data":"{\\"auth\\":\\"k:s\\",\\"user_data\\":\\"{}\\"}"}',
     SignIn(auth="k:s", user_data="{}")),
    # Sign-in without a signature is left to the app's pipe: missing fields read as "".
    (SERVER, '{"event":"pusher:signin","data":{"auth":"k:s"}}', SignIn(auth="k:s")),
    (SERVER, '{"event":"pusher:signin","data":{"user_data":"{}"}}', SignIn(user_data="{}")),
    (SERVER, '{"event":"pusher:signin","data":{"auth":null,"user_data":null}}', SignIn()),
    (SERVER, '{"event":"pusher:ping"}', Ping()),
    (SERVER, '{"event":"pusher:ping","data":"whatever"}', Ping()),
    (SERVER, '{"event":"client-x","channel":"private-c","data":"{\\"x\\":1}"}',
     Message(event="client-x", channel="private-c", data='{"x":1}')),
    (SERVER, '{"event":"client-x","channel":"private-c"}', Message(event="client-x", channel="private-c")),
    (SERVER, '{"event":"client-x","channel":"private-c","data":1,"extra":[1,2]}',
     Message(event="client-x", channel="private-c", data=1)),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":30}}',
     ConnectionEstablished(socket_id="1.2", activity_timeout=30)),
    (CLIENT, '{"event":"pusher:error","data":"{\\"code\\":4009,\\"message\\":\\"Connection is unauthorized\\"}"}',
     Error(code=4009, message="Connection is unauthorized")),
    (CLIENT, '{"event":"pusher:error","data":{"code":4200}}', Error(code=4200, message="")),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c"}', SubscriptionSucceeded(channel="c")),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":{}}',
     SubscriptionSucceeded(channel="c")),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"presence-c",'
             '"data":{"presence":{"hash":{"1":null,"2":{"a":1}},"count":2}}}',
     SubscriptionSucceeded(channel="presence-c", presence=Presence(members=[("1", None), ("2", {"a": 1})]))),
    (CLIENT, '{"event":"pusher_internal:member_added","channel":"p","data":{"user_id":"1","user_info":5}}',
     MemberAdded(channel="p", user_id="1", user_info=5)),
    (CLIENT, '{"event":"pusher:signin_success","data":"{\\"user_data\\":\\"{}\\"}"}', SignInSuccess(user_data="{}")),
    (CLIENT, '{"event":"my-event","channel":"c","data":{"n":1}}',
     Message(event="my-event", channel="c", data='{"n":1}')),
    (CLIENT, '{"event":"my-event","channel":"c","data":5,"user_id":10}',
     Message(event="my-event", channel="c", data="5", user_id="10")),
    (CLIENT, '{"event":"pusher:subscription_error","channel":"c","data":{"type":"AuthError"}}',
     SubscriptionError(channel="c", type="AuthError", error="", status=0)),
    (CLIENT, '{"event":"my-event"}', Message(event="my-event")),
]


@pytest.mark.parametrize(("role", "text", "event"), TOLERATED)
def test_tolerant_decoding(role: Role, text: str, event: PusherEvent) -> None:
    """Frames other clients and servers produce (double-encoded, object data, missing optional fields) decode."""
    assert decode(text, role=role) == event


# -------------------------------------------------------------------- malformed

MALFORMED: list[tuple[Role, str | bytes]] = [
    *((role, text) for role in (CLIENT, SERVER) for text in [
        "",
        " ",
        "{",
        "not json",
        "{'event':'pusher:ping'}",
        '{"event":"pusher:ping",}',
        "[]",
        '["pusher:ping"]',
        '"pusher:ping"',
        "1",
        "null",
        "true",
        "{}",
        '{"event":null}',
        '{"event":""}',
        '{"event":1}',
        '{"event":["pusher:ping"]}',
        '{"event":{"a":1}}',
        '{"data":{}}',
        '{"event":"x","data":NaN}',
        '{"event":"x","data":Infinity}',
        '{"event":"x","data":-Infinity}',
        '{"event":"x","channel":1}',
        '{"event":"x","channel":["c"]}',
        '{"event":"x","channel":{}}',
        '{"event":"pusher_internal:foo","channel":"c","data":"{}"}',
        "[" * 100000,
        "[" * 100000 + "]" * 100000,
        '{"event":"x","data":' + "[" * 100000 + "]" * 100000 + "}",
        '{"event":"x","data":' + '{"a":' * 100000 + "1" + "}" * 100000 + "}",
        '{"event":"x","data":' + "1" * 5000 + "}",
        b"\xff\xfe",
        b'{"event":"pusher:ping","data":"\xc3\x28"}',
    ]),
    # What clients send, read by the server.
    (SERVER, '{"event":"pusher:subscribe"}'),
    (SERVER, '{"event":"pusher:subscribe","data":null}'),
    (SERVER, '{"event":"pusher:subscribe","data":{}}'),
    (SERVER, '{"event":"pusher:subscribe","data":[]}'),
    (SERVER, '{"event":"pusher:subscribe","data":5}'),
    (SERVER, '{"event":"pusher:subscribe","data":"my-channel"}'),
    (SERVER, '{"event":"pusher:subscribe","data":"[1]"}'),
    (SERVER, '{"event":"pusher:subscribe","data":"\\"{\\\\\\"channel\\\\\\":\\\\\\"c\\\\\\"}\\""}'),  # triple
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":5}}'),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":null}}'),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":"c","auth":5}}'),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":"c","auth":{"k":"s"}}}'),
    (SERVER, '{"event":"pusher:subscribe","data":{"channel":"c","channel_data":{"user_id":"1"}}}'),
    (SERVER, '{"event":"pusher:unsubscribe","data":{}}'),
    (SERVER, '{"event":"pusher:unsubscribe","data":{"channel":true}}'),
    (SERVER, '{"event":"pusher:signin","data":{"auth":"k:s","user_data":{"id":"1"}}}'),
    (SERVER, '{"event":"pusher:signin","data":{"auth":5,"user_data":"{}"}}'),
    (SERVER, '{"event":"pusher:signin"}'),
    (SERVER, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":1}}'),
    (SERVER, '{"event":"pusher:error","data":{"code":1,"message":"m"}}'),
    (SERVER, '{"event":"pusher:signin_success","data":{"user_data":"{}"}}'),
    (SERVER, '{"event":"pusher:foo","data":{}}'),
    (SERVER, '{"event":"pusher:cache_miss","channel":"c"}'),
    (SERVER, '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}'),
    (SERVER, '{"event":"pusher_internal:member_added","channel":"c","data":"{}"}'),
    # What servers send, read by a client.
    (CLIENT, '{"event":"pusher:connection_established"}'),
    (CLIENT, '{"event":"pusher:connection_established","data":"{}"}'),
    (CLIENT, '{"event":"pusher:connection_established","data":"not json"}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2"}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":0}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":-5}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":true}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":"120"}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":"1.2","activity_timeout":1.5}}'),
    (CLIENT, '{"event":"pusher:connection_established","data":{"socket_id":12,"activity_timeout":120}}'),
    (CLIENT, '{"event":"pusher:error"}'),
    (CLIENT, '{"event":"pusher:error","data":[]}'),
    (CLIENT, '{"event":"pusher:error","data":{"code":"4001","message":"m"}}'),
    (CLIENT, '{"event":"pusher:error","data":{"code":true,"message":"m"}}'),
    (CLIENT, '{"event":"pusher:error","data":{"code":40.5,"message":"m"}}'),
    (CLIENT, '{"event":"pusher:error","data":{"code":1,"message":1e400}}'),
    (CLIENT, '{"event":"pusher:signin_success","data":{}}'),
    (CLIENT, '{"event":"pusher:signin_success","data":{"user_data":{"id":"1"}}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","data":"{}"}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"[]"}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{\\"presence\\":5}"}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":{"presence":{"hash":[]}}}'),
    # A member's id is a string or an integer, in the ids list as in member_added.
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c",'
             '"data":{"presence":{"ids":[null,"b"],"hash":{"b":null}}}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c",'
             '"data":{"presence":{"ids":[true],"hash":{"True":null}}}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_succeeded","channel":"c",'
             '"data":{"presence":{"ids":[1.5],"hash":{"1.5":null}}}}'),
    (CLIENT, '{"event":"pusher_internal:member_added","channel":"c","data":"{}"}'),
    (CLIENT, '{"event":"pusher_internal:member_added","channel":"c","data":{"user_id":true}}'),
    (CLIENT, '{"event":"pusher_internal:member_added","channel":"c","data":{"user_id":1.5}}'),
    (CLIENT, '{"event":"pusher_internal:member_added","channel":"c","data":{"user_id":null}}'),
    (CLIENT, '{"event":"pusher_internal:member_removed","channel":"c","data":{"user_id":[1]}}'),
    (CLIENT, '{"event":"pusher_internal:member_removed","data":{"user_id":"1"}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_count","channel":"c","data":{"subscription_count":"3"}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_count","channel":"c","data":{"subscription_count":false}}'),
    (CLIENT, '{"event":"pusher_internal:subscription_count","channel":"c","data":{}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{"events":{}}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{"events":[5]}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{"events":[{"user_ids":[]}]}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":[1]}]}}'),
    (CLIENT, '{"event":"pusher_internal:watchlist_events","data":{"events":[{"name":"online","user_ids":"2"}]}}'),
    (CLIENT, '{"event":"pusher_internal:unknown","channel":"c","data":"{}"}'),
    (CLIENT, '{"event":"pusher:subscription_error","channel":"c","data":"oops"}'),
    (CLIENT, '{"event":"my-event","channel":"c","data":1e400}'),
    (CLIENT, '{"event":"my-event","channel":"c","data":"x","user_id":1e400}'),
]


@pytest.mark.parametrize(("role", "text"), MALFORMED, ids=[f"{r.value}-{i}" for i, (r, _) in enumerate(MALFORMED)])
def test_malformed_frames_raise_remote_protocol_error(role: Role, text: str | bytes) -> None:
    """Each malformed frame raises RemoteProtocolError with code None and a message, and nothing else."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(text, role=role)
    assert info.value.code is None
    assert info.value.message


# Arbitrary text and bytes, mutated and edited frames: fuzz/fuzz_pusher_codec.py.


@given(
    st.one_of(st.from_regex(r"[0-9]{1,12}\.[0-9]{1,10}", fullmatch=True), st.text(max_size=30)),
    st.integers(min_value=1, max_value=10**12),
)
def test_connection_established_is_the_json_of_its_fields(socket_id: str, timeout: int) -> None:
    """The frame every new socket gets (put together directly for the relay's ids) says exactly its fields.

    The relay writes it without building the event: the same text.
    """
    text = encode(ConnectionEstablished(socket_id=socket_id, activity_timeout=timeout), role=Role.SERVER)
    assert connection_established(socket_id, timeout) == text
    outer = json.loads(text)
    assert list(outer) == ["event", "data"]
    assert outer["event"] == "pusher:connection_established"
    assert json.loads(outer["data"]) == {"socket_id": socket_id, "activity_timeout": timeout}
    assert text == json.dumps(outer, separators=(",", ":"))  # compact and ASCII, like every frame


@given(st.text(max_size=40))
def test_subscription_succeeded_without_presence_is_the_json_of_its_fields(channel: str) -> None:
    text = encode(SubscriptionSucceeded(channel=channel), role=Role.SERVER)
    assert subscription_succeeded(channel) == text  # what the relay writes without building the event
    assert json.loads(text) == {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}
    assert text == json.dumps(json.loads(text), separators=(",", ":"))
