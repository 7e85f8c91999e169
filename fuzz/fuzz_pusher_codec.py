"""Fuzz target ``pusher_codec``: :func:`pipe_proto.pusher.codec.decode` and ``encode``, both roles.

Checked for every input (``check_frame``):

* decoding gives a :class:`PusherEvent` or raises :class:`RemoteProtocolError`
  with ``code`` ``None`` and a message (Pusher frame errors have no code);
  nothing else ever escapes;
* a decoded event encodes again as its sender would (ASCII text) and decodes
  back to the same event. The only normalisations are the documented
  tolerances: a ``Subscribe`` without ``auth`` is sent with ``auth: ""``, a
  server ``Message`` without ``data`` is re-sent with ``"null"``; and the only
  refusal allowed is ``encode`` declining a ``pusher:``/``pusher_internal:``
  name that a client read leniently as an application event.

Inputs: arbitrary text and bytes, frames captured from real pusher-js traffic
(``corpus/pusher_codec``) and a catalogue of every frame kind, mutated
structurally (fields replaced, deleted, added, stringified, nested, retyped,
out-of-range numbers, deep nesting) or character by character; and valid events
built field by field, whose ``decode(encode(event))`` must be the event itself.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import strategies as st

from fuzz._support import (
    corpus_params,
    corpus_texts,
    entry_text,
    fuzz_property,
    plain_json,
    record,
    seeded_frames,
    text_entry,
)
from pipe_proto.errors import LocalProtocolError, RemoteProtocolError
from pipe_proto.pusher.codec import Role, decode, encode
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

TARGET = "pusher_codec"
RESERVED = ("pusher:", "pusher_internal:")
ROLES = {"server": Role.SERVER, "client": Role.CLIENT}


def sender_of(role: Role) -> Role:
    """The side that sends what ``role`` decodes."""
    return Role.CLIENT if role is Role.SERVER else Role.SERVER


def normalised(event: PusherEvent, role: Role) -> PusherEvent:
    """``event`` with the documented tolerances of ``role``'s decoder applied."""
    if isinstance(event, Subscribe) and event.auth is None:
        return Subscribe(channel=event.channel, auth="", channel_data=event.channel_data)
    if role is Role.CLIENT and isinstance(event, Message) and event.data is None:
        return Message(event=event.event, data="null", channel=event.channel, user_id=event.user_id)
    return event


def check_frame(role: Role, text: str | bytes) -> PusherEvent | None:
    """Decode ``text`` as ``role``; check the error contract or the round trip."""
    record(TARGET, text_entry(text, role=role.value))
    try:
        event = decode(text, role=role)
    except RemoteProtocolError as exc:
        assert exc.code is None, f"a Pusher frame error must have code None, not {exc.code!r}"
        assert isinstance(exc.message, str) and exc.message
        return None
    assert isinstance(event, PusherEvent), event
    # Decoders build some events without their validators (pipe_proto.prechecked): what they build must pass them.
    attrs.validate(event)
    try:
        again = encode(event, role=sender_of(role))
    except LocalProtocolError:
        # The only refusal: a client reads unknown pusher:* server frames as messages.
        assert role is Role.CLIENT and isinstance(event, Message) and event.event.startswith(RESERVED), event
        return event
    assert again.isascii(), again
    assert normalised(decode(again, role=role), role) == normalised(event, role), (text, again)
    return event


def check_entry(entry: dict[str, Any]) -> None:
    """Replay one corpus entry."""
    check_frame(ROLES[entry["role"]], entry_text(entry))


# ------------------------------------------------------------------ seeds

CATALOGUE = {
    Role.SERVER: [
        '{"event":"pusher:ping","data":{}}',
        '{"event":"pusher:pong","data":{}}',
        '{"event":"pusher:subscribe","data":{"auth":"","channel":"news"}}',
        '{"event":"pusher:subscribe","data":{"auth":"k:0123","channel_data":"{\\"user_id\\":\\"u\\"}",'
        '"channel":"presence-a"}}',
        '{"event":"pusher:subscribe","data":"{\\"channel\\":\\"news\\"}"}',
        '{"event":"pusher:unsubscribe","data":{"channel":"news"}}',
        '{"event":"pusher:signin","data":{"auth":"k:00","user_data":"{\\"id\\":\\"u1\\"}"}}',
        '{"event":"client-move","channel":"private-a","data":{"x":[1,2.5,null,true]}}',
        '{"event":"eventFromBrowser","data":{"some":"data"}}',
    ],
    Role.CLIENT: [
        '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.2\\",\\"activity_timeout\\":120}"}',
        '{"event":"pusher:error","data":{"code":4001,"message":"nope"}}',
        '{"event":"pusher:error","data":{"code":null,"message":"nope"}}',
        '{"event":"pusher_internal:subscription_succeeded","channel":"news","data":"{}"}',
        '{"event":"pusher_internal:subscription_succeeded","channel":"presence-a","data":"{\\"presence\\":'
        '{\\"ids\\":[\\"a\\",2],\\"hash\\":{\\"a\\":{\\"n\\":1},\\"2\\":null},\\"count\\":2}}"}',
        '{"event":"pusher:subscription_error","channel":"private-a","data":{"type":"AuthError","error":"x",'
        '"status":401}}',
        '{"event":"pusher_internal:member_added","channel":"presence-a","data":"{\\"user_id\\":\\"b\\",'
        '\\"user_info\\":{}}"}',
        '{"event":"pusher_internal:member_removed","channel":"presence-a","data":"{\\"user_id\\":3}"}',
        '{"event":"pusher:cache_miss","channel":"cache-a"}',
        '{"event":"pusher_internal:subscription_count","channel":"news","data":"{\\"subscription_count\\":2}"}',
        '{"event":"pusher:signin_success","data":{"user_data":"{\\"id\\":\\"u1\\"}"}}',
        '{"event":"pusher_internal:watchlist_events","data":"{\\"events\\":[{\\"name\\":\\"online\\",'
        '\\"user_ids\\":[\\"u2\\"]}]}"}',
        '{"event":"update","channel":"news","data":"{\\"n\\":1}","user_id":"u1"}',
    ],
}
SEEDS = {role: CATALOGUE[role] + corpus_texts(TARGET, role=role.value) for role in (Role.SERVER, Role.CLIENT)}
roles = st.sampled_from([Role.SERVER, Role.CLIENT])


@st.composite
def seeded(draw: st.DrawFn) -> tuple[Role, str]:
    role = draw(roles)
    return role, draw(seeded_frames(SEEDS[role]))


# ------------------------------------------------------------ valid events

texts = st.text(max_size=16)
nonempty = st.text(min_size=1, max_size=16)
event_names = nonempty.filter(lambda s: not s.startswith(RESERVED))
user_ids = texts | st.integers()


@st.composite
def presences(draw: st.DrawFn) -> Presence:
    ids = draw(st.lists(user_ids, max_size=5, unique_by=str))
    return Presence(members=[(uid, draw(plain_json)) for uid in ids])


CLIENT_SENDS = st.one_of(
    st.builds(Ping),
    st.builds(Pong),
    st.builds(Subscribe, channel=texts, auth=texts, channel_data=st.none() | texts),
    st.builds(Unsubscribe, channel=texts),
    st.builds(SignIn, auth=texts, user_data=texts),
    st.builds(Message, event=event_names, data=plain_json, channel=st.none() | texts),
)
SERVER_SENDS = st.one_of(
    st.builds(ConnectionEstablished, socket_id=texts, activity_timeout=st.integers(min_value=1)),
    st.builds(Error, code=st.none() | st.integers(), message=texts),
    st.builds(Ping),
    st.builds(Pong),
    st.builds(SubscriptionSucceeded, channel=texts, presence=st.none() | presences()),
    st.builds(SubscriptionError, channel=texts, type=texts, error=texts, status=st.integers()),
    st.builds(MemberAdded, channel=texts, user_id=user_ids, user_info=plain_json),
    st.builds(MemberRemoved, channel=texts, user_id=user_ids),
    st.builds(CacheMiss, channel=texts),
    st.builds(SubscriptionCount, channel=texts, count=st.integers()),
    st.builds(SignInSuccess, user_data=texts),
    st.builds(
        WatchlistEvents,
        events=st.lists(st.builds(WatchlistChange, name=texts, user_ids=st.lists(texts, max_size=3)), max_size=3),
    ),
    st.builds(Message, event=event_names, data=texts, channel=st.none() | texts, user_id=st.none() | texts),
)
valid_events = st.one_of(
    st.tuples(st.just(Role.CLIENT), CLIENT_SENDS), st.tuples(st.just(Role.SERVER), SERVER_SENDS)
)


# ------------------------------------------------------------- properties


@fuzz_property(TARGET, 1000, role=roles, text=st.text())
def test_arbitrary_text(role: Role, text: str) -> None:
    """Arbitrary text: an event or RemoteProtocolError(code None)."""
    check_frame(role, text)


@fuzz_property(TARGET, 400, role=roles, data=st.binary())
def test_arbitrary_bytes(role: Role, data: bytes) -> None:
    """Arbitrary bytes: an event or RemoteProtocolError(code None)."""
    check_frame(role, data)


@fuzz_property(TARGET, 2000, frame=seeded())
def test_mutated_frames(frame: tuple[Role, str]) -> None:
    """Real and catalogue frames, mutated: an event (that round-trips) or RemoteProtocolError."""
    check_frame(*frame)


@fuzz_property(TARGET, 800, sent=valid_events)
def test_valid_events_round_trip(sent: tuple[Role, PusherEvent]) -> None:
    """A valid event encoded by its sender decodes to the same event on the other side."""
    sender, event = sent
    text = encode(event, role=sender)
    reader = sender_of(sender)
    assert check_frame(reader, text) == event


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Every corpus file (captured pusher-js traffic, past crashes) still passes the checks."""
    check_entry(entry)
