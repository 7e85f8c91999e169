"""The relay driven directly through its socket API: handshake, channels, presence, client events, users, webhooks.

Every call goes through :class:`World`, which checks the relay's output contract on each one: a Send only
names sockets that are live when it is produced (never one closed earlier in the same list, never the one
whose closing is being reported), every frame decodes for a pusher client, no close code is in 4300-4399,
and the relay's socket count matches the sockets the world believes open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipe_proto import App, Features, Limits, WebhookTarget
from pipe_proto.apps import WEBHOOK_KINDS
from pipe_proto.pusher.codec import Role, decode
from pipe_proto.relay import Close, Output, Relay, Send, WebhookEvent
from pipe_proto.signatures import channel_auth, signin_auth

# Credentials of appendix A: with id_base=1233 and nonce=1234 the first socket is "1234.1234".
KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"
HOOK = "http://x/hook"
SOCKET_ID = re.compile(r"^\d+\.\d+$")


def make_app(**options: Any) -> App:
    """App 1 with the appendix A credentials and a webhook target taking every kind."""
    options.setdefault("webhooks", [WebhookTarget(url=HOOK)])
    return App(id="1", key=KEY, secret=SECRET, **options)


class World:
    """A relay, a clock and the set of sockets believed open; checks every output list."""

    def __init__(self, *apps: App, id_base: int = 1000) -> None:
        self.relay = Relay(list(apps) or [make_app()], id_base=id_base)
        self.now = 0.0
        self.live: set[str] = set()
        self.nonce = 0

    # ---------------------------------------------------------------- checks

    def check(self, out: list[Output], opened: str | None = None, gone: str | None = None) -> list[Output]:
        """Check one call's outputs against the contract and update the live set."""
        live = self.live | ({opened} if opened else set())
        closed: set[str] = set()
        for item in out:
            if isinstance(item, Send):
                assert item.targets, "a Send with no target"
                assert len(set(item.targets)) == len(item.targets), f"duplicate targets in {item}"
                for target in item.targets:
                    assert target in live, f"Send to unknown socket {target}: {item.text}"
                    assert target not in closed, f"Send after Close to {target}: {item.text}"
                    assert target != gone, f"Send to the socket whose close is reported: {item.text}"
                decode(item.text, role=Role.CLIENT)
            elif isinstance(item, Close):
                assert item.target in live and item.target not in closed
                assert not 4300 <= item.code < 4400, "43xx close codes make pusher-js give up"
                closed.add(item.target)
            elif isinstance(item, WebhookEvent):
                assert item.app_id in {app.id for app in self.relay.apps}
                assert item.event["name"] in WEBHOOK_KINDS
                assert item.urls
            else:  # pragma: no cover - no pipes here
                raise AssertionError(f"unexpected output {item}")
        self.live = live - closed - ({gone} if gone else set())
        assert self.relay.stats()["sockets"] == len(self.live)
        return out

    # --------------------------------------------------------------- driving

    def open(
        self, key: str = KEY, query: Mapping[str, str] | None = None, *, nonce: int | None = None,
        secure: bool = False,
    ) -> tuple[str, list[Output]]:
        """Open a socket now; returns its id and the outputs."""
        self.nonce += 1
        sid, out = self.relay.open_socket(
            key, {"protocol": "7"} if query is None else query, self.now,
            nonce=self.nonce if nonce is None else nonce, secure=secure,
        )
        return sid, self.check(out, opened=sid)

    def connect(self, key: str = KEY, **kwargs: Any) -> str:
        """Open a socket that must be accepted."""
        sid, out = self.open(key, **kwargs)
        assert [json.loads(o.text)["event"] for o in out if isinstance(o, Send)] == ["pusher:connection_established"]
        return sid

    def send(self, sid: str, message: Mapping[str, Any] | str) -> list[Output]:
        """A text message from a socket."""
        text = message if isinstance(message, str) else json.dumps(message)
        return self.check(self.relay.socket_message(sid, text, self.now))

    def close(self, sid: str) -> list[Output]:
        """The socket's connection ended."""
        return self.check(self.relay.socket_closed(sid, self.now), gone=sid)

    def tick(self, now: float) -> list[Output]:
        """Time passes to ``now``."""
        assert now >= self.now
        self.now = now
        return self.check(self.relay.tick(now))

    def publish(self, channels: list[str], event: str, data: str, exclude: str | None = None) -> list[Output]:
        """A REST trigger."""
        return self.check(self.relay.publish("1", channels, event, data, exclude, self.now))

    def subscribe(
        self, sid: str, channel: str, auth: str | None = "", channel_data: str | None = None
    ) -> list[Output]:
        """pusher:subscribe as pusher-js sends it."""
        data: dict[str, Any] = {} if auth is None else {"auth": auth}
        if channel_data is not None:
            data["channel_data"] = channel_data
        data["channel"] = channel
        return self.send(sid, {"event": "pusher:subscribe", "data": data})

    def join_private(self, sid: str, channel: str) -> list[Output]:
        """Subscribe with a valid signature (private, encrypted or cache variants)."""
        out = self.subscribe(sid, channel, channel_auth(KEY, SECRET, sid, channel))
        assert succeeded(out, sid, channel)
        return out

    def join_presence(self, sid: str, channel: str, user_id: Any, user_info: Any = None) -> list[Output]:
        """Subscribe to a presence channel with signed channel_data."""
        member: dict[str, Any] = {"user_id": user_id}
        if user_info is not None:
            member["user_info"] = user_info
        data = json.dumps(member, separators=(",", ":"))
        return self.subscribe(sid, channel, channel_auth(KEY, SECRET, sid, channel, data), data)

    def sign_in(self, sid: str, user: Mapping[str, Any] | str) -> list[Output]:
        """pusher:signin with a valid signature over ``user`` (JSON-encoded unless a string)."""
        user_data = user if isinstance(user, str) else json.dumps(user)
        auth = signin_auth(KEY, SECRET, sid, user_data)
        return self.send(sid, {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})

    def client_event(self, sid: str, channel: str, data: Any = None, event: str = "client-x") -> list[Output]:
        """A client event as pusher-js sends it."""
        return self.send(sid, {"event": event, "data": {"n": 1} if data is None else data, "channel": channel})


# ------------------------------------------------------------------- reading


def frames(out: list[Output], sid: str) -> list[dict[str, Any]]:
    """Frames sent to ``sid``, in order, as JSON."""
    return [json.loads(o.text) for o in out if isinstance(o, Send) and sid in o.targets]


def names(out: list[Output], sid: str) -> list[str]:
    """Event names of the frames sent to ``sid``."""
    return [f["event"] for f in frames(out, sid)]


def data_of(frame: dict[str, Any]) -> Any:
    """A frame's data, decoded once when it is a string."""
    data = frame.get("data")
    return json.loads(data) if isinstance(data, str) else data


def succeeded(out: list[Output], sid: str, channel: str) -> bool:
    """Whether ``sid`` was told its subscription to ``channel`` succeeded."""
    return any(
        f["event"] == "pusher_internal:subscription_succeeded" and f.get("channel") == channel
        for f in frames(out, sid)
    )


def sub_error(out: list[Output], sid: str, channel: str) -> dict[str, Any]:
    """The single subscription error sent to ``sid`` about ``channel``."""
    errors = [f for f in frames(out, sid) if f["event"] == "pusher:subscription_error"]
    assert len(errors) == 1, frames(out, sid)
    assert errors[0]["channel"] == channel
    data: dict[str, Any] = errors[0]["data"]
    return data


def errors(out: list[Output], sid: str) -> list[dict[str, Any]]:
    """The data of every pusher:error sent to ``sid``."""
    return [f["data"] for f in frames(out, sid) if f["event"] == "pusher:error"]


def closes(out: list[Output]) -> list[Close]:
    """The Close outputs."""
    return [o for o in out if isinstance(o, Close)]


def hooks(out: list[Output]) -> list[dict[str, Any]]:
    """The webhook events, each checked to go to the configured URL."""
    events = []
    for o in out:
        if isinstance(o, WebhookEvent):
            assert o.urls == (HOOK,)
            assert o.app_id == "1"
            events.append(o.event)
    return events


def presence_of(frame: dict[str, Any]) -> dict[str, Any]:
    """The presence object of a presence subscription_succeeded frame."""
    presence: dict[str, Any] = data_of(frame)["presence"]
    assert presence["count"] == len(presence["ids"]) == len(presence["hash"])
    assert set(presence["hash"]) == {str(i) for i in presence["ids"]}
    return presence


def delivered(out: list[Output], event: str) -> set[str]:
    """Every socket a frame with event name ``event`` went to."""
    return {t for o in out if isinstance(o, Send) and json.loads(o.text)["event"] == event for t in o.targets}


# ====================================================================== handshake


def test_connection_established() -> None:
    """An accepted socket gets exactly connection_established with its id and the app's activity timeout."""
    world = World()
    sid, out = world.open()
    assert SOCKET_ID.match(sid)
    assert len(out) == 1 and isinstance(out[0], Send) and out[0].targets == (sid,)
    frame = frames(out, sid)[0]
    assert frame["event"] == "pusher:connection_established"
    assert isinstance(frame["data"], str)
    assert json.loads(frame["data"]) == {"socket_id": sid, "activity_timeout": 120}


def test_activity_timeout_comes_from_the_app() -> None:
    """The announced activity_timeout is the app's setting."""
    world = World(make_app(limits=Limits(activity_timeout=30)))
    sid, out = world.open()
    assert data_of(frames(out, sid)[0])["activity_timeout"] == 30


@pytest.mark.parametrize(
    ("apps", "key", "query", "secure", "code"),
    [
        ([make_app()], "unknown", {"protocol": "7"}, False, 4001),
        ([make_app(enabled=False)], KEY, {"protocol": "7"}, False, 4003),
        ([make_app(features=Features(tls_only=True))], KEY, {"protocol": "7"}, False, 4000),
        # The protocol's checks come first (pusher-channels.md 1.2): a retry over TLS could not fix them.
        ([make_app(features=Features(tls_only=True))], KEY, {"protocol": "3"}, False, 4007),
        ([make_app(features=Features(tls_only=True))], KEY, {"protocol": "abc"}, False, 4006),
        ([make_app(features=Features(tls_only=True))], KEY, {}, False, 4008),
        ([make_app()], KEY, {"protocol": "abc"}, False, 4006),
        ([make_app()], KEY, {"protocol": ""}, False, 4006),
        ([make_app()], KEY, {"protocol": "7.0"}, False, 4006),
        ([make_app()], KEY, {"protocol": "-7"}, False, 4006),
        ([make_app()], KEY, {"protocol": " 7"}, False, 4006),
        ([make_app()], KEY, {"protocol": "\u00b2"}, False, 4006),  # superscript two: isdigit() but not int()
        ([make_app()], KEY, {"protocol": "\u0667"}, False, 4006),  # Arabic-Indic seven
        ([make_app()], KEY, {"protocol": "3"}, False, 4007),
        ([make_app()], KEY, {"protocol": "8"}, False, 4007),
        ([make_app()], KEY, {"protocol": "0"}, False, 4007),
        ([make_app()], KEY, {"protocol": "9" * 5000}, False, 4007),  # beyond int()'s digit limit
        ([make_app()], KEY, {}, False, 4008),
        ([make_app()], KEY, {"client": "js", "version": "8.6.0"}, False, 4008),
    ],
)
def test_handshake_refusals(
    apps: list[App], key: str, query: dict[str, str], secure: bool, code: int
) -> None:
    """A refused socket gets a pusher:error with the code (never null) and a close with the same code, and is not kept."""
    world = World(*apps)
    sid, out = world.open(key, query, secure=secure)
    assert len(out) == 2
    close = out[1]
    assert isinstance(close, Close)
    assert frames(out, sid) == [{"event": "pusher:error", "data": {"code": code, "message": close.reason}}]
    assert close == Close(sid, code, close.reason)
    assert close.reason
    assert world.relay.holds_nothing()
    assert world.send(sid, {"event": "pusher:ping", "data": {}}) == []
    assert world.relay.counters["sockets_refused"] == 1


@pytest.mark.parametrize("protocol", ["4", "5", "6", "7", "07"])
def test_supported_protocols(protocol: str) -> None:
    """Protocol versions 4 to 7 are accepted."""
    World().connect(query={"protocol": protocol})


def test_extra_query_parameters_are_ignored() -> None:
    """pusher-js's client, version and flash parameters (and unknown ones) do not affect acceptance."""
    World().connect(query={"protocol": "7", "client": "js", "version": "8.6.0", "flash": "false", "x": "y"})


def test_tls_only_accepts_secure_sockets() -> None:
    """A TLS-only app accepts the same socket when it came over TLS."""
    World(make_app(features=Features(tls_only=True))).connect(secure=True)


def test_connection_quota() -> None:
    """At the app's cap a new socket is refused with 4004; existing ones are unaffected; a freed slot is reusable."""
    world = World(make_app(limits=Limits(max_connections=2)))
    a, b = world.connect(), world.connect()
    sid, out = world.open()
    assert closes(out) == [Close(sid, 4004, closes(out)[0].reason)]
    assert names(world.send(a, {"event": "pusher:ping", "data": {}}), a) == ["pusher:pong"]
    world.close(b)
    world.connect()


def test_a_thousand_sockets_get_distinct_ids() -> None:
    """1000 sockets opened with the same nonce get 1000 distinct digits.digits ids; closing them all leaves nothing."""
    world = World()
    ids = [world.connect(nonce=7) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(SOCKET_ID.match(sid) for sid in ids)
    for sid in ids:
        world.close(sid)
    assert world.relay.holds_nothing()


def test_exact_socket_id_from_id_base_and_nonce() -> None:
    """Socket ids are '{counter}.{nonce}', the counter starting after id_base."""
    world = World(id_base=1233)
    assert world.connect(nonce=1234) == "1234.1234"
    assert world.connect(nonce=-5) == "1235.5"


# ======================================================================= heartbeat


def test_ping_pong() -> None:
    """pusher:ping is answered with pusher:pong; pusher:pong gets no answer."""
    world = World()
    sid = world.connect()
    out = world.send(sid, '{"event":"pusher:ping","data":{}}')
    assert out == [Send((sid,), '{"event":"pusher:pong","data":{}}')]
    assert world.send(sid, '{"event":"pusher:pong","data":{}}') == []


def test_heartbeat_ping_then_4201() -> None:
    """Silent for 120 s: pusher:ping; silent 30 s more: pusher:error 4201 and close 4201; the socket is forgotten."""
    world = World()
    sid = world.connect()
    assert world.relay.next_deadline() == 120.0
    assert world.tick(119.9) == []
    assert world.tick(120.0) == [Send((sid,), '{"event":"pusher:ping","data":{}}')]
    assert world.tick(149.9) == []
    out = world.tick(150.0)
    assert errors(out, sid) == [{"code": 4201, "message": "Pong reply not received"}]
    assert closes(out) == [Close(sid, 4201, "Pong reply not received")]
    assert world.relay.holds_nothing()
    assert world.send(sid, '{"event":"pusher:pong","data":{}}') == []
    assert world.relay.next_deadline() == float("inf")


def test_pong_keeps_the_socket() -> None:
    """Answering the ping (or any frame) cancels the 4201 and the next ping comes 120 s after it."""
    world = World()
    sid = world.connect()
    world.tick(120.0)
    world.now = 125.0
    world.send(sid, '{"event":"pusher:pong","data":{}}')
    assert world.tick(150.0) == []
    assert world.tick(244.9) == []
    assert world.tick(245.0) == [Send((sid,), '{"event":"pusher:ping","data":{}}')]


def test_websocket_level_traffic_counts() -> None:
    """A WebSocket ping or pong (socket_heard) counts as activity."""
    world = World()
    sid = world.connect()
    world.relay.socket_heard(sid, 100.0)
    assert world.tick(120.0) == []
    assert world.tick(220.0) == [Send((sid,), '{"event":"pusher:ping","data":{}}')]


def test_a_client_pinging_every_activity_timeout_stays() -> None:
    """A client sending pusher:ping every 120 s and nothing else stays connected for many intervals."""
    world = World()
    sid = world.connect()
    for step in range(1, 100):
        world.tick(step * 10.0)
        if step % 12 == 0:
            world.send(sid, '{"event":"pusher:ping","data":{}}')
    assert sid in world.live


def test_heartbeat_timers_follow_many_sockets() -> None:
    """Of many sockets only the silent ones are pinged and closed, each at its own time."""
    world = World()
    quiet = [world.connect() for _ in range(5)]
    world.tick(60.0)
    chatty = [world.connect() for _ in range(5)]
    for t in range(70, 400, 10):
        world.now = float(t)
        if t % 60 == 0:
            for sid in chatty:
                world.send(sid, '{"event":"pusher:ping","data":{}}')
        out = world.tick(float(t))
        if t == 120:
            assert delivered(out, "pusher:ping") == set(quiet)
        if t == 150:
            assert {c.target for c in closes(out)} == set(quiet)
    assert world.live == set(chatty)


def test_malformed_frame_gets_an_error_and_stays_open() -> None:
    """Invalid JSON gets pusher:error with code null; the connection stays open (checklist 17)."""
    world = World()
    sid = world.connect()
    for text in ["not json", "[]", '{"event":"pusher:foo","data":{}}', '{"event":"pusher:subscribe","data":5}']:
        out = world.send(sid, text)
        assert [e["code"] for e in errors(out, sid)] == [None]
        assert closes(out) == []
    assert names(world.send(sid, '{"event":"pusher:ping","data":{}}'), sid) == ["pusher:pong"]


def test_oversized_message_gets_an_error() -> None:
    """A message over the socket limit, discarded by the adapter, gets an error frame and no close."""
    world = World()
    sid = world.connect()
    out = world.check(world.relay.socket_oversized(sid, 40000))
    assert len(errors(out, sid)) == 1
    assert "32768" in errors(out, sid)[0]["message"]
    assert closes(out) == []


# ================================================================== subscriptions


@pytest.mark.parametrize("auth", ["", None])
def test_subscribe_public(auth: str | None) -> None:
    """A public channel is joined with auth "" or no auth at all: subscription_succeeded with data "{}"."""
    world = World()
    sid = world.connect()
    out = world.subscribe(sid, "my-channel", auth)
    assert frames(out, sid) == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "my-channel", "data": "{}"}
    ]


def test_subscribe_private_with_vector_v1() -> None:
    """Socket 1234.1234 joins private-foobar with V1's exact auth string."""
    world = World(make_app(), id_base=1233)
    sid = world.connect(nonce=1234)
    auth = "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    out = world.subscribe(sid, "private-foobar", auth)
    assert names(out, sid) == ["pusher_internal:subscription_succeeded"]


def test_subscribe_encrypted_with_vector_e4() -> None:
    """Socket 1234.1234 joins private-encrypted-foobar with E4's exact auth and no shared_secret."""
    world = World(make_app(), id_base=1233)
    sid = world.connect(nonce=1234)
    auth = "278d425bdf160c739803:e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533"
    assert succeeded(world.subscribe(sid, "private-encrypted-foobar", auth), sid, "private-encrypted-foobar")


def test_private_with_channel_data_is_three_part() -> None:
    """A private subscribe carrying channel_data is checked over socket:channel:channel_data (or the two-part form)."""
    world = World()
    sid = world.connect()
    data = '{"user_id":"1"}'
    assert succeeded(world.subscribe(sid, "private-a", channel_auth(KEY, SECRET, sid, "private-a", data), data),
                     sid, "private-a")
    assert succeeded(world.subscribe(sid, "private-b", channel_auth(KEY, SECRET, sid, "private-b"), data),
                     sid, "private-b")
    bad = channel_auth(KEY, SECRET, sid, "private-c", data)
    assert sub_error(world.subscribe(sid, "private-c", bad, '{"user_id":"2"}'), sid, "private-c")["status"] == 401


def bad_auths(world: World, sid: str, other: str, channel: str) -> dict[str, str]:
    """Auth strings that must not authorize ``sid`` on ``channel``."""
    good = channel_auth(KEY, SECRET, sid, channel)
    return {
        "wrong signature": f"{KEY}:{'0' * 64}",
        "wrong key": "other-key:" + good.split(":", 1)[1],
        "other socket": channel_auth(KEY, SECRET, other, channel),
        "other channel": channel_auth(KEY, SECRET, sid, channel + "x"),
        "other secret": channel_auth(KEY, "other-secret", sid, channel),
        "no key part": good.split(":", 1)[1],
        "truncated": good[:-1],
    }


@pytest.mark.parametrize("channel", ["private-foobar", "private-encrypted-x", "private-cache-x"])
@pytest.mark.parametrize(
    "which", ["wrong signature", "wrong key", "other socket", "other channel", "other secret", "no key part", "truncated"]
)
def test_subscribe_private_refused(channel: str, which: str) -> None:
    """A bad signature is refused with AuthError 401 on the channel; nothing else is sent; the socket stays open."""
    world = World()
    sid, other = world.connect(), world.connect()
    out = world.subscribe(sid, channel, bad_auths(world, sid, other, channel)[which])
    error = sub_error(out, sid, channel)
    assert (error["type"], error["status"]) == ("AuthError", 401)
    assert names(out, sid) == ["pusher:subscription_error"]
    assert closes(out) == [] and hooks(out) == []
    assert world.relay.state_of("1").channels == {}  # type: ignore[union-attr]
    assert names(world.send(sid, '{"event":"pusher:ping","data":{}}'), sid) == ["pusher:pong"]


def test_wrong_key_is_named() -> None:
    """A wrong key part is reported as hosted does: 'Invalid key in subscription auth data'."""
    world = World()
    sid = world.connect()
    out = world.subscribe(sid, "private-a", "nope:" + "0" * 64)
    assert "Invalid key in subscription auth data" in sub_error(out, sid, "private-a")["error"]


@pytest.mark.parametrize("channel", ["private-a", "presence-a", "private-encrypted-a"])
@pytest.mark.parametrize("auth", ["", None])
def test_subscribe_without_signature_and_no_pipe(channel: str, auth: str | None) -> None:
    """A private or presence subscribe with no signature and no pipe holding auth is refused at once, AuthError 503."""
    world = World()
    sid = world.connect()
    error = sub_error(world.subscribe(sid, channel, auth), sid, channel)
    assert (error["type"], error["status"]) == ("AuthError", 503)


@pytest.mark.parametrize(
    "channel", ["a b", "#abc", "x/y", "", "x" * 165, "private-" + "x" * 157, "caché", "#server-to-user-"]
)
def test_invalid_channel_names(channel: str) -> None:
    """An invalid channel name gets InvalidChannel 400 and the socket stays open."""
    world = World()
    sid = world.connect()
    error = sub_error(world.subscribe(sid, channel, ""), sid, channel)
    assert (error["type"], error["status"]) == ("InvalidChannel", 400)
    assert world.relay.holds_nothing() is False  # the socket is still there
    assert names(world.send(sid, '{"event":"pusher:ping","data":{}}'), sid) == ["pusher:pong"]


def test_channel_name_of_164_characters() -> None:
    """164 characters is the default limit; an app may raise it to 200."""
    world = World()
    sid = world.connect()
    assert succeeded(world.subscribe(sid, "x" * 164), sid, "x" * 164)
    world2 = World(make_app(limits=Limits(max_channel_name=200)))
    sid2 = world2.connect()
    assert succeeded(world2.subscribe(sid2, "x" * 200), sid2, "x" * 200)
    assert sub_error(world2.subscribe(sid2, "x" * 201), sid2, "x" * 201)["type"] == "InvalidChannel"


def test_prefix_not_at_start_is_public() -> None:
    """my-private-x is public: joined with auth "" (checklist 35)."""
    world = World()
    sid = world.connect()
    assert succeeded(world.subscribe(sid, "my-private-x", ""), sid, "my-private-x")


def test_subscribe_twice() -> None:
    """A second subscribe to the same channel repeats subscription_succeeded and changes nothing else."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    world.join_presence(b, "presence-a", "B")
    out = world.join_presence(b, "presence-a", "B")
    assert names(out, b) == ["pusher_internal:subscription_succeeded"]
    assert frames(out, a) == [] and hooks(out) == []
    channel = world.relay.state_of("1").channels["presence-a"]  # type: ignore[union-attr]
    assert channel.sockets == {a, b}
    # Even a re-subscribe with a bad signature only repeats the confirmation of the existing membership.
    out = world.subscribe(b, "presence-a", "x:y", '{"user_id":"Z"}')
    assert presence_of(frames(out, b)[0])["ids"] == ["A", "B"]


@pytest.mark.parametrize(
    ("user_info", "ok"),
    [({"n": "1234"}, True), ({"n": "12345"}, False), ("1234567890", True), ("12345678901", False)],
)
def test_user_info_limit_counts_the_json_members_receive(user_info: Any, ok: bool) -> None:
    """user_info may take max_user_info_bytes as JSON, a string with its quotes: LimitReached 413 beyond."""
    world = World(make_app(limits=Limits(max_user_info_bytes=12)))
    sid = world.connect()
    out = world.join_presence(sid, "presence-a", "u", user_info)
    if ok:
        assert succeeded(out, sid, "presence-a")
    else:
        error = sub_error(out, sid, "presence-a")
        assert (error["type"], error["status"]) == ("LimitReached", 413)


def test_channels_per_socket_limit() -> None:
    """A socket may join at most max_channels_per_socket channels: LimitReached 413 beyond."""
    world = World(make_app(limits=Limits(max_channels_per_socket=2)))
    sid = world.connect()
    world.subscribe(sid, "a")
    world.subscribe(sid, "b")
    error = sub_error(world.subscribe(sid, "c"), sid, "c")
    assert (error["type"], error["status"]) == ("LimitReached", 413)
    assert succeeded(world.subscribe(sid, "b"), sid, "b")  # re-subscribing is not a new channel
    world.send(sid, {"event": "pusher:unsubscribe", "data": {"channel": "a"}})
    world.now += 1  # the subscribe rate's burst is max_channels_per_socket: 2 here
    assert succeeded(world.subscribe(sid, "c"), sid, "c")


# ===================================================================== unsubscribe


def test_unsubscribe() -> None:
    """pusher:unsubscribe gets no reply and later events on the channel are not delivered."""
    world = World()
    a, b = world.connect(), world.connect()
    world.subscribe(a, "news")
    world.subscribe(b, "news")
    assert world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}}) == []
    out = world.publish(["news"], "e", "{}")
    assert delivered(out, "e") == {b}


def test_unsubscribe_from_a_channel_never_joined() -> None:
    """Unsubscribing from a channel the socket is not in produces nothing and the socket stays open."""
    world = World()
    a, b = world.connect(), world.connect()
    world.subscribe(b, "news")
    assert world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}}) == []
    assert world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "nothing"}}) == []
    assert delivered(world.publish(["news"], "e", "{}"), "e") == {b}


# ======================================================================== presence


def test_presence_with_vector_v11() -> None:
    """The Python SDK's spaced channel_data (V11) is accepted as sent; the member list keeps the string id."""
    world = World(make_app(), id_base=1233)
    sid = world.connect(nonce=1234)
    data = '{"user_id": "10", "user_info": {"name": "Mr. Channels"}}'
    auth = "278d425bdf160c739803:96f61cf0b64a80c5cf1852da9dea2998a90fd7fa840c4cc62212573f1c524cdf"
    out = world.subscribe(sid, "presence-foobar", auth, data)
    assert presence_of(frames(out, sid)[0]) == {"ids": ["10"], "hash": {"10": {"name": "Mr. Channels"}}, "count": 1}


def test_presence_with_vector_v2() -> None:
    """V2's numeric user_id 10 is echoed as a number in ids and as the key "10" in hash."""
    world = World(make_app(), id_base=1233)
    sid = world.connect(nonce=1234)
    data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    auth = "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
    out = world.subscribe(sid, "presence-foobar", auth, data)
    assert presence_of(frames(out, sid)[0]) == {"ids": [10], "hash": {"10": {"name": "Mr. Channels"}}, "count": 1}


def test_member_without_user_info_keeps_its_key() -> None:
    """A member without user_info is a key of hash with value null (checklist 48)."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    out = world.join_presence(b, "presence-a", "B", {"n": 1})
    assert presence_of(frames(out, b)[0]) == {"ids": ["A", "B"], "hash": {"A": None, "B": {"n": 1}}, "count": 2}
    assert frames(out, a) == [
        {"event": "pusher_internal:member_added", "channel": "presence-a", "data": '{"user_id":"B","user_info":{"n":1}}'}
    ]


def test_member_added_only_for_a_users_first_socket_never_to_the_joiner() -> None:
    """member_added goes to the others on a user's first socket only; the joiner never hears about itself."""
    world = World()
    a, b1, b2 = world.connect(), world.connect(), world.connect()
    out = world.join_presence(a, "presence-a", "A", {"name": "a"})
    assert names(out, a) == ["pusher_internal:subscription_succeeded"]
    out = world.join_presence(b1, "presence-a", "B", {"name": "b"})
    assert names(out, a) == ["pusher_internal:member_added"]
    assert names(out, b1) == ["pusher_internal:subscription_succeeded"]
    assert data_of(frames(out, a)[0]) == {"user_id": "B", "user_info": {"name": "b"}}
    # B's second socket: no member_added; count unchanged, B once; the first user_info is kept.
    out = world.join_presence(b2, "presence-a", "B", {"name": "other"})
    assert frames(out, a) == [] and frames(out, b1) == []
    assert presence_of(frames(out, b2)[0]) == {
        "ids": ["A", "B"], "hash": {"A": {"name": "a"}, "B": {"name": "b"}}, "count": 2,
    }


def test_member_removed_on_the_last_socket() -> None:
    """Closing one of B's two sockets sends nothing; closing the last sends member_removed to the others."""
    world = World()
    a, b1, b2 = world.connect(), world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    world.join_presence(b1, "presence-a", "B")
    world.join_presence(b2, "presence-a", "B")
    out = world.close(b1)
    assert frames(out, a) == []
    out = world.close(b2)
    assert frames(out, a) == [
        {"event": "pusher_internal:member_removed", "channel": "presence-a", "data": '{"user_id":"B"}'}
    ]
    c = world.connect()
    assert presence_of(frames(world.join_presence(c, "presence-a", "C"), c)[0])["ids"] == ["A", "C"]


def test_member_removed_on_unsubscribe() -> None:
    """Unsubscribing a user's last socket sends member_removed, with the user id's JSON type."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    world.join_presence(b, "presence-a", 7)
    out = world.send(b, {"event": "pusher:unsubscribe", "data": {"channel": "presence-a"}})
    assert frames(out, b) == []
    assert data_of(frames(out, a)[0]) == {"user_id": 7}


def test_presence_member_limit() -> None:
    """The 101st distinct user is refused with LimitReached; the 100 others hear nothing; a member's second socket is fine."""
    world = World()
    members = [world.connect() for _ in range(100)]
    for i, sid in enumerate(members):
        world.join_presence(sid, "presence-big", f"u{i}")
    late = world.connect()
    out = world.join_presence(late, "presence-big", "u100")
    error = sub_error(out, late, "presence-big")
    assert (error["type"], error["status"]) == ("LimitReached", 413)
    assert all(frames(out, sid) == [] for sid in members)
    out = world.join_presence(late, "presence-big", "u5")
    assert presence_of(frames(out, late)[0])["count"] == 100


@pytest.mark.parametrize(("size", "accepted"), [(1024, True), (1025, False)])
def test_user_info_limit(size: int, accepted: bool) -> None:
    """user_info of 1024 bytes (compact JSON) is accepted, 1025 refused with LimitReached 413."""
    world = World()
    sid = world.connect()
    info = {"x": "a" * (size - 8)}  # {"x":""} is 8 bytes
    out = world.join_presence(sid, "presence-a", "A", info)
    if accepted:
        assert succeeded(out, sid, "presence-a")
    else:
        assert sub_error(out, sid, "presence-a")["type"] == "LimitReached"


def test_user_id_limit() -> None:
    """A presence user_id of 128 characters is accepted, 129 refused."""
    world = World()
    sid = world.connect()
    assert succeeded(world.join_presence(sid, "presence-a", "x" * 128), sid, "presence-a")
    assert sub_error(world.join_presence(sid, "presence-b", "x" * 129), sid, "presence-b")["status"] == 413


@pytest.mark.parametrize(
    "channel_data", ['{"user_info":{}}', "not json", "[1]", '"x"', '{"user_id":null}', '{"user_id":true}',
                     '{"user_id":""}', '{"user_id":1.5}', '{"user_id":["a"]}']
)
def test_presence_channel_data_without_a_user_id(channel_data: str) -> None:
    """Signed channel_data that is not an object with a string or number user_id is refused with status 400."""
    world = World()
    sid = world.connect()
    out = world.subscribe(sid, "presence-a", channel_auth(KEY, SECRET, sid, "presence-a", channel_data), channel_data)
    assert sub_error(out, sid, "presence-a")["status"] == 400
    assert not succeeded(out, sid, "presence-a")


def test_presence_needs_the_three_part_signature() -> None:
    """With channel_data, a signature over socket:channel alone is refused (it could carry any user_id)."""
    world = World()
    sid = world.connect()
    out = world.subscribe(sid, "presence-a", channel_auth(KEY, SECRET, sid, "presence-a"), '{"user_id":"admin"}')
    assert sub_error(out, sid, "presence-a")["status"] == 401


def test_presence_with_tampered_channel_data() -> None:
    """channel_data changed after signing is refused."""
    world = World()
    sid = world.connect()
    auth = channel_auth(KEY, SECRET, sid, "presence-a", '{"user_id":"1"}')
    assert sub_error(world.subscribe(sid, "presence-a", auth, '{"user_id":"2"}'), sid, "presence-a")["status"] == 401


def test_presence_through_sign_in() -> None:
    """A signed-in socket joins presence without channel_data: member id and info come from its sign-in."""
    world = World()
    a, sid = world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    world.sign_in(sid, {"id": "12345", "user_info": {"name": "me"}})
    out = world.subscribe(sid, "presence-a", channel_auth(KEY, SECRET, sid, "presence-a"))
    assert presence_of(frames(out, sid)[0])["hash"] == {"A": None, "12345": {"name": "me"}}
    assert data_of(frames(out, a)[0]) == {"user_id": "12345", "user_info": {"name": "me"}}


def test_presence_without_channel_data_needs_sign_in() -> None:
    """Without channel_data and without sign-in the presence subscribe is refused with AuthError 401."""
    world = World()
    sid = world.connect()
    error = sub_error(world.subscribe(sid, "presence-a", channel_auth(KEY, SECRET, sid, "presence-a")), sid, "presence-a")
    assert (error["type"], error["status"]) == ("AuthError", 401)


@pytest.mark.parametrize(
    "user", [{"id": "x" * 129}, {"id": "u", "user_info": "y" * 2000}], ids=["long id", "big user_info"]
)
def test_presence_through_sign_in_keeps_the_presence_limits(user: dict[str, Any]) -> None:
    """A signed-in user whose id or user_info is over the presence limits cannot join presence (LimitReached)."""
    world = World()
    sid = world.connect()
    assert names(world.sign_in(sid, user), sid) == ["pusher:signin_success"]
    out = world.subscribe(sid, "presence-a", channel_auth(KEY, SECRET, sid, "presence-a"))
    assert sub_error(out, sid, "presence-a")["type"] == "LimitReached"


# ==================================================================== client events


def private_room(world: World, channel: str = "private-chat", n: int = 3) -> list[str]:
    """``n`` sockets subscribed to a private channel."""
    socks = [world.connect() for _ in range(n)]
    for sid in socks:
        world.join_private(sid, channel)
    return socks


def test_client_event_reaches_the_others_not_the_sender() -> None:
    """A client event is delivered to every other subscriber, with data as a compact JSON string and no user_id."""
    world = World()
    a, b, c = private_room(world)
    out = world.client_event(a, "private-chat", {"x": 1, "y": [True, None]})
    assert delivered(out, "client-x") == {b, c}
    assert frames(out, b) == [{"event": "client-x", "channel": "private-chat", "data": '{"x":1,"y":[true,null]}'}]
    assert frames(out, a) == []


def test_client_event_string_data_is_relayed_verbatim() -> None:
    """String data is relayed as the same string, not encoded again."""
    world = World()
    a, b = private_room(world, n=2)
    out = world.client_event(a, "private-chat", "hello")
    assert frames(out, b)[0]["data"] == "hello"


def test_client_event_on_presence_carries_user_id() -> None:
    """On a presence channel the relayed frame has the sender's user_id at the top level, as a string."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_presence(a, "presence-room", 10)
    world.join_presence(b, "presence-room", "B")
    out = world.client_event(a, "presence-room", {"x": 1})
    assert frames(out, b) == [
        {"event": "client-x", "channel": "presence-room", "data": '{"x":1}', "user_id": "10"}
    ]
    assert frames(out, a) == []


@pytest.mark.parametrize("channel", ["public", "cache-x", "private-encrypted-x"])
def test_client_event_rejected_on_public_and_encrypted(channel: str) -> None:
    """Client events on public, cache and encrypted channels get pusher:error (code null) and go nowhere."""
    world = World()
    a, b = world.connect(), world.connect()
    for sid in (a, b):
        if channel.startswith("private-"):
            world.join_private(sid, channel)
        else:
            world.subscribe(sid, channel)
    out = world.client_event(a, channel)
    assert delivered(out, "client-x") == set()
    assert [e["code"] for e in errors(out, a)] == [None]
    assert closes(out) == [] and hooks(out) == []


def test_client_event_rejected_when_not_subscribed() -> None:
    """A client event on a channel the sender has not joined is rejected and not delivered."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_private(b, "private-chat")
    out = world.client_event(a, "private-chat")
    assert delivered(out, "client-x") == set()
    assert "not subscribed" in errors(out, a)[0]["message"]
    world.join_private(a, "private-chat")
    world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "private-chat"}})
    assert delivered(world.client_event(a, "private-chat"), "client-x") == set()


def test_client_event_rejected_when_disabled() -> None:
    """An app with client events off rejects them."""
    world = World(make_app(features=Features(client_events=False)))
    a, _ = private_room(world, n=2)
    out = world.client_event(a, "private-chat")
    assert delivered(out, "client-x") == set()
    assert len(errors(out, a)) == 1 and hooks(out) == []


def test_client_event_rate_limit() -> None:
    """10 client events in a second pass; the 11th gets 4301 (frame only) and is dropped; the next second passes."""
    world = World()
    a, b = private_room(world, n=2)
    world.now = 10.0
    for _ in range(10):
        assert delivered(world.client_event(a, "private-chat"), "client-x") == {b}
    world.now = 10.9
    out = world.client_event(a, "private-chat")
    assert delivered(out, "client-x") == set()
    assert [e["code"] for e in errors(out, a)] == [4301]
    assert closes(out) == []
    world.now = 11.0
    assert delivered(world.client_event(a, "private-chat"), "client-x") == {b}
    # The limit is per socket: b is not affected by a's burst.
    assert delivered(world.client_event(b, "private-chat"), "client-x") == {a}


@pytest.mark.parametrize(("size", "accepted"), [(10240, True), (10241, False)])
def test_client_event_size_limit(size: int, accepted: bool) -> None:
    """Client event data up to 10 KB (compact JSON) is relayed; larger is rejected."""
    world = World()
    a, b = private_room(world, n=2)
    out = world.client_event(a, "private-chat", {"x": "a" * (size - 8)})
    assert (delivered(out, "client-x") == {b}) is accepted
    assert (errors(out, a) == []) is accepted


def test_client_event_name_too_long() -> None:
    """A client event named with more than 200 characters is rejected."""
    world = World()
    a, _ = private_room(world, n=2)
    out = world.client_event(a, "private-chat", event="client-" + "x" * 194)
    assert delivered(out, "client-" + "x" * 194) == set()
    assert errors(out, a)


def test_client_event_with_unencodable_data() -> None:
    """Data JSON cannot re-encode (1e400 parses as infinity) is rejected, not crashed on."""
    world = World()
    a, _ = private_room(world, n=2)
    out = world.send(a, '{"event":"client-x","channel":"private-chat","data":[1e400]}')
    assert delivered(out, "client-x") == set()
    assert errors(out, a)


def test_client_events_are_not_cached() -> None:
    """A client event on a cache channel leaves the cache empty: a later subscriber gets cache_miss."""
    world = World()
    a, _ = private_room(world, "private-cache-x", n=2)
    world.client_event(a, "private-cache-x")
    c = world.connect()
    out = world.join_private(c, "private-cache-x")
    assert names(out, c) == ["pusher_internal:subscription_succeeded", "pusher:cache_miss"]


# ================================================================== back channel


@pytest.mark.parametrize(
    "message",
    [{"event": "foo", "data": {}}, {"event": "foo", "data": {}, "channel": "private-chat"},
     {"event": "client-x", "data": {}}],
)
def test_back_channel_without_pipe_is_dropped(message: dict[str, Any]) -> None:
    """A non-client event (or a client- event without channel) with no pipe goes nowhere and is counted."""
    world = World()
    a, _ = private_room(world, n=2)
    hub = world.relay.state_of("1").hub  # type: ignore[union-attr]
    before = hub.unrouted
    assert world.send(a, message) == []
    assert hub.unrouted == before + 1


def test_back_channel_rate_limit() -> None:
    """More than 50 back-channel messages in a second get 4301 error frames."""
    world = World()
    sid = world.connect()
    for _ in range(50):
        assert world.send(sid, {"event": "foo", "data": {}}) == []
    out = world.send(sid, {"event": "foo", "data": {}})
    assert [e["code"] for e in errors(out, sid)] == [4301]


# ========================================================================= sign-in


def test_sign_in_with_vector_u1() -> None:
    """Socket 1234.1234 signs in with U1's exact auth; signin_success echoes the identical user_data string."""
    world = World(make_app(), id_base=1233)
    sid = world.connect(nonce=1234)
    auth = "278d425bdf160c739803:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    out = world.send(sid, {"event": "pusher:signin", "data": {"auth": auth, "user_data": '{"id":"12345"}'}})
    assert frames(out, sid) == [{"event": "pusher:signin_success", "data": {"user_data": '{"id":"12345"}'}}]
    assert world.relay.state_of("1").users == {"12345": {sid}}  # type: ignore[union-attr]


def test_sign_in_with_bad_signature() -> None:
    """A bad sign-in signature gets pusher:error 4009 and the connection stays open."""
    world = World()
    sid = world.connect()
    auth = signin_auth(KEY, SECRET, "1.1", '{"id":"1"}')
    out = world.send(sid, {"event": "pusher:signin", "data": {"auth": auth, "user_data": '{"id":"1"}'}})
    assert [e["code"] for e in errors(out, sid)] == [4009]
    assert names(out, sid) == ["pusher:error"] and closes(out) == []
    assert names(world.send(sid, '{"event":"pusher:ping","data":{}}'), sid) == ["pusher:pong"]
    assert world.relay.state_of("1").users == {}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "user_data", ['{"name":"x"}', '{"id":12345}', '{"id":""}', '{"id":null}', "[]", "not json", '{"id":"a b"}',
                  '{"id":"1","watchlist":"2"}', '{"id":"1","watchlist":[2]}']
)
def test_sign_in_with_bad_user_data(user_data: str) -> None:
    """Signed user_data without a valid string id (or with a bad watchlist) gets pusher:error, no success."""
    world = World()
    sid = world.connect()
    out = world.sign_in(sid, user_data)
    assert names(out, sid) == ["pusher:error"]
    assert world.relay.state_of("1").users == {}  # type: ignore[union-attr]


def test_second_sign_in() -> None:
    """Signing in again as the same user succeeds again; as another user it is refused with 4009."""
    world = World()
    sid = world.connect()
    world.sign_in(sid, {"id": "1"})
    assert names(world.sign_in(sid, {"id": "1"}), sid) == ["pusher:signin_success"]
    out = world.sign_in(sid, {"id": "2"})
    assert [e["code"] for e in errors(out, sid)] == [4009]
    assert world.relay.state_of("1").users == {"1": {sid}}  # type: ignore[union-attr]


def test_sign_in_disabled() -> None:
    """An app without user authentication answers a sign-in with 4009."""
    world = World(make_app(features=Features(user_authentication=False)))
    sid = world.connect()
    assert [e["code"] for e in errors(world.sign_in(sid, {"id": "1"}), sid)] == [4009]


# ================================================================ server-to-user


def test_server_to_user_channel_own_id_only() -> None:
    """A signed-in socket may join #server-to-user-<own id> with auth ""; any other id is AuthError 401."""
    world = World()
    sid = world.connect()
    assert sub_error(world.subscribe(sid, "#server-to-user-1"), sid, "#server-to-user-1")["status"] == 401
    world.sign_in(sid, {"id": "1"})
    out = world.subscribe(sid, "#server-to-user-1")
    assert frames(out, sid) == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "#server-to-user-1", "data": "{}"}
    ]
    error = sub_error(world.subscribe(sid, "#server-to-user-2"), sid, "#server-to-user-2")
    assert (error["type"], error["status"]) == ("AuthError", 401)


def test_publish_to_a_user_reaches_all_its_sockets() -> None:
    """An event to #server-to-user-U goes to every socket signed in as U, and to no other."""
    world = World()
    u1, u2, v, anon = world.connect(), world.connect(), world.connect(), world.connect()
    world.sign_in(u1, {"id": "U"})
    world.sign_in(u2, {"id": "U"})
    world.sign_in(v, {"id": "V"})
    world.subscribe(u1, "#server-to-user-U")
    out = world.publish(["#server-to-user-U"], "some-event", '{"message":"hi"}')
    assert delivered(out, "some-event") == {u1, u2}
    assert frames(out, v) == frames(out, anon) == []
    assert frames(out, u2) == [{"event": "some-event", "channel": "#server-to-user-U", "data": '{"message":"hi"}'}]
    assert delivered(world.publish(["#server-to-user-U"], "e", "{}", exclude=u1), "e") == {u2}
    assert world.publish(["#server-to-user-nobody"], "e", "{}") == []


# ====================================================================== publishing


def test_publish_with_exclusion() -> None:
    """A trigger with socket_id reaches every subscriber but that socket; data is relayed verbatim."""
    world = World()
    a, b, c = (world.connect() for _ in range(3))
    for sid in (a, b, c):
        world.subscribe(sid, "project-3")
    out = world.publish(["project-3"], "foo", '{"some":"data"}', exclude=a)
    assert delivered(out, "foo") == {b, c}
    assert frames(out, b) == [{"event": "foo", "channel": "project-3", "data": '{"some":"data"}'}]
    assert len([o for o in out if isinstance(o, Send)]) == 1  # one frame, many targets


# ======================================================================= watchlist


def test_watchlist_snapshot_online_and_offline() -> None:
    """Watchers get the online snapshot after sign-in, 'online' on a user's first socket, 'offline' on its last."""
    world = World()
    watcher, b1, b2, c = (world.connect() for _ in range(4))
    world.sign_in(c, {"id": "C"})
    out = world.sign_in(watcher, {"id": "W", "watchlist": ["B", "C"]})
    assert names(out, watcher) == ["pusher:signin_success", "pusher_internal:watchlist_events"]
    assert data_of(frames(out, watcher)[1]) == {"events": [{"name": "online", "user_ids": ["C"]}]}
    out = world.sign_in(b1, {"id": "B"})
    assert data_of(frames(out, watcher)[0]) == {"events": [{"name": "online", "user_ids": ["B"]}]}
    assert frames(world.sign_in(b2, {"id": "B"}), watcher) == []
    assert frames(world.close(b1), watcher) == []
    out = world.close(b2)
    assert data_of(frames(out, watcher)[0]) == {"events": [{"name": "offline", "user_ids": ["B"]}]}


def test_watchlist_without_online_users_sends_no_snapshot() -> None:
    """A watchlist of users who are all offline gets no (empty) watchlist event."""
    world = World()
    sid = world.connect()
    assert names(world.sign_in(sid, {"id": "W", "watchlist": ["X"]}), sid) == ["pusher:signin_success"]


def test_watchlist_over_100_ids() -> None:
    """101 watchlist ids: signin_success, then pusher:error 4302 (no close); only the first 100 are watched."""
    world = World()
    sid = world.connect()
    ids = [f"u{i}" for i in range(101)]
    out = world.sign_in(sid, {"id": "W", "watchlist": ids})
    assert names(out, sid) == ["pusher:signin_success", "pusher:error"]
    assert errors(out, sid)[0]["code"] == 4302
    assert closes(out) == []
    watchers = world.relay.state_of("1").watchers  # type: ignore[union-attr]
    assert set(watchers) == set(ids[:100])
    last = world.connect()
    assert frames(world.sign_in(last, {"id": "u100"}), sid) == []
    u99 = world.connect()
    assert names(world.sign_in(u99, {"id": "u99"}), sid) == ["pusher_internal:watchlist_events"]


def test_watchlist_disabled() -> None:
    """With the watchlist feature off nobody is told about online or offline users."""
    world = World(make_app(features=Features(watchlist=False)))
    w, b = world.connect(), world.connect()
    world.sign_in(b, {"id": "B"})
    assert names(world.sign_in(w, {"id": "W", "watchlist": ["B", "C"]}), w) == ["pusher:signin_success"]
    assert frames(world.close(b), w) == []


def test_user_watching_itself() -> None:
    """A user watching itself learns once that it is online, and its closed socket is sent nothing."""
    world = World()
    watcher = world.connect()
    world.sign_in(watcher, {"id": "W", "watchlist": ["A"]})
    sid = world.connect()
    out = world.sign_in(sid, {"id": "A", "watchlist": ["A"]})
    assert frames(out, sid) == [
        {"event": "pusher:signin_success", "data": {"user_data": '{"id": "A", "watchlist": ["A"]}'}},
        {"event": "pusher_internal:watchlist_events", "data": '{"events":[{"name":"online","user_ids":["A"]}]}'},
    ]
    assert names(out, watcher) == ["pusher_internal:watchlist_events"]
    out = world.close(sid)  # World.check refuses any Send to sid in the outputs of its close
    assert names(out, watcher) == ["pusher_internal:watchlist_events"]
    sid = world.connect()
    world.sign_in(sid, {"id": "A", "watchlist": ["A"]})
    out = world.check(world.relay.close_socket(sid, 4200, "bye", world.now))  # and no Send after the Close
    assert [type(o).__name__ for o in out] == ["Send", "Close", "Send"]
    assert names(out, watcher) == ["pusher_internal:watchlist_events"]
    world.close(watcher)
    assert world.relay.holds_nothing()


# ========================================================================== cache


def test_cache_replay() -> None:
    """After a trigger on cache-x a new subscriber gets subscription_succeeded then the cached event."""
    world = World()
    assert world.publish(["cache-x"], "E1", '"one"') == []
    world.publish(["cache-x"], "E", '{"v":2}')
    sid = world.connect()
    out = world.subscribe(sid, "cache-x")
    assert frames(out, sid) == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "cache-x", "data": "{}"},
        {"event": "E", "channel": "cache-x", "data": '{"v":2}'},
    ]
    assert hooks(out) == [{"name": "channel_occupied", "channel": "cache-x"}]


@pytest.mark.parametrize("channel", ["private-cache-x", "private-encrypted-cache-x", "presence-cache-x"])
def test_cache_replay_on_authorized_cache_channels(channel: str) -> None:
    """Private, encrypted and presence cache channels replay their last event too."""
    world = World()
    world.publish([channel], "E", "D")
    sid = world.connect()
    out = world.join_presence(sid, channel, "u") if channel.startswith("presence-") else world.join_private(sid, channel)
    assert names(out, sid) == ["pusher_internal:subscription_succeeded", "E"]


def test_cache_miss() -> None:
    """Joining an empty cache channel sends pusher:cache_miss (no data) and a cache_miss webhook."""
    world = World()
    sid = world.connect()
    out = world.subscribe(sid, "cache-x")
    assert frames(out, sid)[1] == {"event": "pusher:cache_miss", "channel": "cache-x"}
    assert hooks(out) == [
        {"name": "channel_occupied", "channel": "cache-x"}, {"name": "cache_miss", "channel": "cache-x"},
    ]


def test_cache_miss_webhook_once_per_empty_spell() -> None:
    """Every subscriber of an empty cache channel gets pusher:cache_miss; the backend gets one webhook,
    and another only once something was published (and expired) or the channel emptied."""
    world = World(make_app(limits=Limits(cache_ttl=10)))
    a, b = world.connect(), world.connect()
    first, second = world.subscribe(a, "cache-x"), world.subscribe(b, "cache-x")
    assert names(second, b)[1] == "pusher:cache_miss"
    assert [h["name"] for h in hooks(first) + hooks(second)].count("cache_miss") == 1
    world.publish(["cache-x"], "E", "D")
    world.tick(10.0)  # cached, then expired
    c = world.connect()
    out = world.subscribe(c, "cache-x")
    assert names(out, c)[1] == "pusher:cache_miss"
    assert hooks(out) == [{"name": "cache_miss", "channel": "cache-x"}]
    for sid in (a, b, c):
        world.close(sid)
    d = world.connect()
    assert {"name": "cache_miss", "channel": "cache-x"} in hooks(world.subscribe(d, "cache-x"))


def test_cache_ttl() -> None:
    """A cached event is replayed until its TTL passes, then the channel misses."""
    world = World(make_app(limits=Limits(cache_ttl=10)))
    world.publish(["cache-x"], "E", "D")
    world.tick(9.99)
    a = world.connect()
    assert names(world.subscribe(a, "cache-x"), a)[1] == "E"
    world.tick(10.0)
    b = world.connect()
    assert names(world.subscribe(b, "cache-x"), b)[1] == "pusher:cache_miss"
    assert world.relay.cached_event("1", "cache-x", world.now) is None


def test_non_cache_channels_keep_nothing() -> None:
    """Publishing to an ordinary channel keeps nothing for later subscribers."""
    world = World()
    world.publish(["news"], "E", "D")
    sid = world.connect()
    assert names(world.subscribe(sid, "news"), sid) == ["pusher_internal:subscription_succeeded"]


# ============================================================= subscription count


def test_subscription_count() -> None:
    """With the feature on, joins and leaves of a public channel send the socket count to its subscribers."""
    world = World(make_app(features=Features(subscription_count=True)))
    a, b = world.connect(), world.connect()
    out = world.subscribe(a, "my-channel")
    assert names(out, a) == ["pusher_internal:subscription_succeeded", "pusher_internal:subscription_count"]
    assert frames(out, a)[1] == {
        "event": "pusher_internal:subscription_count", "channel": "my-channel", "data": '{"subscription_count":1}'
    }
    assert {"name": "subscription_count", "channel": "my-channel", "subscription_count": 1} in hooks(out)
    out = world.subscribe(b, "my-channel")
    assert delivered(out, "pusher_internal:subscription_count") == {a, b}
    assert data_of(frames(out, a)[0]) == {"subscription_count": 2}
    out = world.send(b, {"event": "pusher:unsubscribe", "data": {"channel": "my-channel"}})
    assert frames(out, a) == [
        {"event": "pusher_internal:subscription_count", "channel": "my-channel", "data": '{"subscription_count":1}'}
    ]
    assert frames(out, b) == []


def test_subscription_count_never_on_presence() -> None:
    """Presence channels never get subscription_count."""
    world = World(make_app(features=Features(subscription_count=True)))
    a, b = world.connect(), world.connect()
    out = world.join_presence(a, "presence-a", "A") + world.join_presence(b, "presence-a", "B")
    out += world.close(b)
    assert delivered(out, "pusher_internal:subscription_count") == set()


def test_subscription_count_off_by_default() -> None:
    """Without the feature no subscription_count is sent."""
    world = World()
    a = world.connect()
    assert delivered(world.subscribe(a, "my-channel"), "pusher_internal:subscription_count") == set()


# =================================================================== termination


def test_terminate_user() -> None:
    """Every socket signed in as U gets pusher:error 4009 and close 4009; other sockets are untouched."""
    world = World()
    u1, u2, v, anon = (world.connect() for _ in range(4))
    world.sign_in(u1, {"id": "U"})
    world.sign_in(u2, {"id": "U"})
    world.sign_in(v, {"id": "V"})
    world.join_presence(u1, "presence-a", "U")
    world.join_presence(v, "presence-a", "V")
    out = world.check(world.relay.terminate_user("1", "U", world.now))
    assert {c.target for c in closes(out)} == {u1, u2}
    assert all(c.code == 4009 for c in closes(out))
    for sid in (u1, u2):
        assert errors(out, sid) == [{"code": 4009, "message": "You got disconnected by the app."}]
    assert names(out, v) == ["pusher_internal:member_removed"]
    assert frames(out, anon) == []
    assert world.live == {v, anon}
    assert world.relay.state_of("1").users == {"V": {v}}  # type: ignore[union-attr]
    assert world.check(world.relay.terminate_user("1", "U", world.now)) == []


def test_terminate_does_not_touch_presence_only_members() -> None:
    """A socket that only joined presence with user_id U (not signed in) is not terminated."""
    world = World()
    sid = world.connect()
    world.join_presence(sid, "presence-a", "U")
    assert world.check(world.relay.terminate_user("1", "U", world.now)) == []
    assert sid in world.live


def test_shutdown_closes_everything_with_4200() -> None:
    """Shutdown sends pusher:error 4200 and closes 4200 to every socket."""
    world = World()
    socks = private_room(world)
    out = world.check(world.relay.shutdown(world.now))
    assert {c.target for c in closes(out)} == set(socks)
    assert {c.code for c in closes(out)} == {4200}
    assert world.relay.holds_nothing()


# ======================================================================= webhooks


def test_webhooks_occupied_and_vacated_after_delay() -> None:
    """channel_occupied on the first subscriber only; channel_vacated 3 s after the last leaves."""
    world = World()
    a, b = world.connect(), world.connect()
    assert hooks(world.subscribe(a, "news")) == [{"name": "channel_occupied", "channel": "news"}]
    assert hooks(world.subscribe(b, "news")) == []
    assert hooks(world.close(a)) == []
    world.now = 10.0
    assert hooks(world.close(b)) == []
    assert world.relay.next_deadline() == 13.0
    assert hooks(world.tick(12.99)) == []
    assert hooks(world.tick(13.0)) == [{"name": "channel_vacated", "channel": "news"}]
    assert hooks(world.tick(100.0)) == []


def test_webhooks_rejoin_within_delay_cancels_both() -> None:
    """A channel re-occupied within 3 s sends neither channel_vacated nor a second channel_occupied."""
    world = World()
    a = world.connect()
    world.subscribe(a, "news")
    world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    world.now = 2.9
    assert hooks(world.subscribe(a, "news")) == []
    assert hooks(world.tick(10.0)) == []
    assert world.relay.next_deadline() == 120.0  # only the heartbeat is left


def test_webhooks_rejoin_after_delay_before_tick() -> None:
    """A rejoin 5 s after vacating, handled before the timer ran, still reports vacated, then occupied."""
    world = World()
    a = world.connect()
    world.subscribe(a, "news")
    world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    world.now = 5.0
    assert hooks(world.subscribe(a, "news")) == [
        {"name": "channel_vacated", "channel": "news"}, {"name": "channel_occupied", "channel": "news"},
    ]
    assert hooks(world.tick(10.0)) == []


def test_webhooks_late_rejoin_sends_vacated_then_occupied() -> None:
    """Rejoining after the 3 s delay: channel_vacated has gone out, and a new channel_occupied follows."""
    world = World()
    a = world.connect()
    world.subscribe(a, "news")
    world.send(a, {"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    assert hooks(world.tick(3.0)) == [{"name": "channel_vacated", "channel": "news"}]
    assert hooks(world.subscribe(a, "news")) == [{"name": "channel_occupied", "channel": "news"}]


def test_webhooks_member_added_and_removed() -> None:
    """member_added on a user's first socket, member_removed 3 s after its last, with string user_ids."""
    world = World()
    a, b1, b2 = world.connect(), world.connect(), world.connect()
    assert hooks(world.join_presence(a, "presence-a", 1)) == [
        {"name": "channel_occupied", "channel": "presence-a"},
        {"name": "member_added", "channel": "presence-a", "user_id": "1"},
    ]
    assert hooks(world.join_presence(b1, "presence-a", "B")) == [
        {"name": "member_added", "channel": "presence-a", "user_id": "B"}
    ]
    assert hooks(world.join_presence(b2, "presence-a", "B")) == []
    assert hooks(world.close(b1)) == []
    world.close(b2)
    assert hooks(world.tick(3.0)) == [{"name": "member_removed", "channel": "presence-a", "user_id": "B"}]


def test_webhooks_member_back_within_delay() -> None:
    """A member leaving and coming back within 3 s sends neither member_removed nor a second member_added."""
    world = World()
    a, b = world.connect(), world.connect()
    world.join_presence(a, "presence-a", "A")
    world.join_presence(b, "presence-a", "B")
    world.close(b)
    world.now = 1.0
    assert hooks(world.join_presence(world.connect(), "presence-a", "B")) == []
    assert hooks(world.tick(60.0)) == []


def test_webhooks_client_event() -> None:
    """A relayed client event sends client_event with channel, event, data, socket_id; user_id on presence only."""
    world = World()
    a, _ = private_room(world, n=2)
    assert hooks(world.client_event(a, "private-chat", {"x": 1})) == [
        {"name": "client_event", "channel": "private-chat", "event": "client-x", "data": '{"x":1}', "socket_id": a}
    ]
    c, d = world.connect(), world.connect()
    world.join_presence(c, "presence-r", "C")
    world.join_presence(d, "presence-r", "D")
    assert hooks(world.client_event(c, "presence-r", "s")) == [
        {"name": "client_event", "channel": "presence-r", "event": "client-x", "data": "s", "socket_id": c,
         "user_id": "C"}
    ]


def test_webhooks_only_for_configured_kinds() -> None:
    """A target listing kinds gets only those; an app without targets gets none."""
    world = World(make_app(webhooks=[WebhookTarget(url=HOOK, kinds=frozenset({"channel_vacated"}))]))
    a = world.connect()
    assert hooks(world.subscribe(a, "cache-x")) == []
    world.close(a)
    assert hooks(world.tick(3.0)) == [{"name": "channel_vacated", "channel": "cache-x"}]
    world = World(make_app(webhooks=[]))
    a = world.connect()
    out = world.join_presence(a, "presence-cache-x", "A") + world.close(a) + world.tick(10.0)
    assert [o for o in out if isinstance(o, WebhookEvent)] == []


# ===================================================================== leak check


def test_everything_is_released_when_every_socket_closes() -> None:
    """After a busy session, once every socket has closed the relay holds nothing."""
    world = World(make_app(features=Features(subscription_count=True)))
    socks = [world.connect() for _ in range(6)]
    for i, sid in enumerate(socks):
        world.sign_in(sid, {"id": f"u{i % 3}", "watchlist": ["u0", "u1", "u2", "nobody"]})
        world.subscribe(sid, "news")
        world.subscribe(sid, "cache-x")
        world.join_private(sid, "private-chat")
        world.join_presence(sid, "presence-room", f"u{i % 3}", {"i": i})
        world.subscribe(sid, f"#server-to-user-u{i % 3}")
        world.client_event(sid, "presence-room")
        world.send(sid, {"event": "foo", "data": 1})
    world.send(socks[0], {"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    world.tick(120.0)  # everyone is pinged
    for sid in socks[:3]:
        world.close(sid)
    world.check(world.relay.terminate_user("1", "u1", world.now))
    world.tick(150.0)  # the rest time out
    assert world.live == set()
    assert world.relay.holds_nothing()
    world.tick(200.0)
    state = world.relay.state_of("1")
    assert state is not None and len(state.webhooks) == 0


# ================================================================ stateful model

CHANNELS = ["cache-a", "private-a", "private-cache-b", "presence-a", "presence-b"]
USERS = ["u1", "u2", "u3", "u4", "u5"]
BAD = ["signature", "key", "socket", "channel", "empty", "data"]


class RelayMachine(RuleBasedStateMachine):
    """Random opens, subscribes, client events, sign-ins, unsubscribes, closes and time jumps, against a model."""

    @initialize()
    def start(self) -> None:
        """A relay with small limits so that they are reached."""
        app = make_app(limits=Limits(max_presence_members=2, client_events_per_second=3))
        self.world = World(app)
        self.dead: list[str] = []
        #: Model: socket -> channel -> presence user key (None on other channels).
        self.subs: dict[str, dict[str, str | None]] = {}
        self.users: dict[str, str] = {}

    # ------------------------------------------------------------ model upkeep

    def sync(self) -> None:
        """Forget, in the model, sockets the relay closed (heartbeat, termination)."""
        for sid in list(self.subs):
            if sid not in self.world.live:
                self.forget(sid)

    def forget(self, sid: str) -> None:
        """Drop a socket from the model."""
        self.subs.pop(sid, None)
        self.users.pop(sid, None)
        self.dead.append(sid)

    def subscribers(self, channel: str) -> set[str]:
        """Sockets the model has on ``channel``."""
        return {s for s, chans in self.subs.items() if channel in chans}

    def members(self, channel: str) -> set[str]:
        """Distinct presence users the model has on ``channel``."""
        return {key for chans in self.subs.values() for c, key in chans.items() if c == channel and key is not None}

    def pick(self, data: st.DataObject) -> str:
        """A live socket, or now and then a closed one."""
        if self.dead and data.draw(st.integers(0, 9)) == 0:
            return data.draw(st.sampled_from(self.dead))
        return data.draw(st.sampled_from(sorted(self.subs)))

    def expect_subscription(self, out: list[Output], sid: str, channel: str, ok: bool) -> None:
        """The socket got success or a subscription error, as the model predicts."""
        if sid not in self.subs:
            assert out == []
            return
        got = succeeded(out, sid, channel)
        assert got is ok, (channel, frames(out, sid))
        if not ok:
            sub_error(out, sid, channel)

    # ------------------------------------------------------------------ rules

    @precondition(lambda self: len(self.subs) < 4)
    @rule()
    def open(self) -> None:
        """A socket connects (at most four at once, so that they meet on channels)."""
        sid = self.world.connect()
        self.subs[sid] = {}

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), channel=st.sampled_from(["cache-a"]))
    def subscribe_public(self, data: st.DataObject, channel: str) -> None:
        """Public channels are always joined."""
        sid = self.pick(data)
        out = self.world.subscribe(sid, channel)
        self.expect_subscription(out, sid, channel, True)
        if sid in self.subs:
            self.subs[sid][channel] = None

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), channel=st.sampled_from(["private-a", "private-cache-b"]), bad=st.none() | st.sampled_from(BAD))
    def subscribe_private(self, data: st.DataObject, channel: str, bad: str | None) -> None:
        """Private channels are joined exactly with a valid signature (or when already joined)."""
        sid = self.pick(data)
        auth = self.auth(sid, channel, None, bad)
        out = self.world.subscribe(sid, channel, auth)
        joined = channel in self.subs.get(sid, {})
        self.expect_subscription(out, sid, channel, bad is None or joined)
        if sid in self.subs and (bad is None or joined):
            self.subs[sid][channel] = None

    @staticmethod
    def auth(sid: str, channel: str, channel_data: str | None, bad: str | None) -> str:
        """A valid auth string, or one spoiled in the way ``bad`` names."""
        if bad == "key":
            return "other:" + channel_auth(KEY, SECRET, sid, channel, channel_data).split(":", 1)[1]
        if bad == "socket":
            return channel_auth(KEY, SECRET, "9.9", channel, channel_data)
        if bad == "channel":
            return channel_auth(KEY, SECRET, sid, channel + "x", channel_data)
        if bad == "signature":
            return f"{KEY}:{'a' * 64}"
        if bad == "empty":
            return ""
        if bad == "data":
            return channel_auth(KEY, SECRET, sid, channel, '{"user_id":"someone-else"}')
        return channel_auth(KEY, SECRET, sid, channel, channel_data)

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), channel=st.sampled_from(["presence-a", "presence-b"]), user=st.sampled_from(USERS),
          bad=st.none() | st.sampled_from(BAD), via_sign_in=st.booleans())
    def subscribe_presence(
        self, data: st.DataObject, channel: str, user: str, bad: str | None, via_sign_in: bool
    ) -> None:
        """Presence is joined with a valid signature while the channel has room for the user."""
        sid = self.pick(data)
        signed_in = self.users.get(sid)
        if via_sign_in and signed_in is not None:
            key, channel_data = signed_in, None
            auth = self.auth(sid, channel, None, bad if bad != "data" else "signature")
        else:
            key, channel_data = user, json.dumps({"user_id": user})
            auth = self.auth(sid, channel, channel_data, bad)
        out = self.world.subscribe(sid, channel, auth, channel_data)
        joined = channel in self.subs.get(sid, {})
        room = key in self.members(channel) or len(self.members(channel)) < 2
        ok = joined or (bad is None and room)
        self.expect_subscription(out, sid, channel, ok)
        if sid in self.subs and ok and not joined:
            others = {s for s, chans in self.subs.items() if channel in chans}
            added = delivered(out, "pusher_internal:member_added")
            assert added == (others if key not in self.members(channel) else set())
            self.subs[sid][channel] = key
            presence = presence_of(frames(out, sid)[0])
            assert set(presence["hash"]) == self.members(channel)

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), user=st.sampled_from(USERS), valid=st.booleans(),
          watch=st.lists(st.sampled_from(USERS), max_size=3))
    def sign_in(self, data: st.DataObject, user: str, valid: bool, watch: list[str]) -> None:
        """A valid sign-in succeeds unless the socket is signed in as someone else."""
        sid = self.pick(data)
        user_data = json.dumps({"id": user, "watchlist": watch})
        auth = signin_auth(KEY, SECRET, sid, user_data) if valid else signin_auth(KEY, "x", sid, user_data)
        out = self.world.send(sid, {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
        if sid not in self.subs:
            assert out == []
            return
        ok = valid and self.users.get(sid, user) == user
        assert ("pusher:signin_success" in names(out, sid)) is ok
        if ok:
            self.users[sid] = user
        else:
            assert errors(out, sid)[0]["code"] == 4009

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def client_event(self, data: st.DataObject) -> None:
        """Delivered to the other subscribers or to nobody; never to the sender."""
        # Mostly a sender that shares a private or presence channel with others, so that events are relayed.
        shared = sorted(
            s for s, chans in self.subs.items()
            if any(c.startswith(("private-", "presence-")) and len(self.subscribers(c)) > 1 for c in chans)
        )
        sid = data.draw(st.sampled_from(shared)) if shared and data.draw(st.booleans()) else self.pick(data)
        own = sorted(c for c in self.subs.get(sid, {}) if c.startswith(("private-", "presence-")))
        channel = data.draw(st.sampled_from(CHANNELS if not own or data.draw(st.integers(0, 4)) == 0 else own))
        out = self.world.client_event(sid, channel)
        got = delivered(out, "client-x")
        assert sid not in got
        if sid not in self.subs:
            assert out == []
            return
        others = {s for s, chans in self.subs.items() if channel in chans} - {sid}
        allowed = channel.startswith(("private-", "presence-")) and channel in self.subs[sid]
        if not allowed:
            assert got == set()
        elif errors(out, sid):
            assert got == set()
            assert errors(out, sid)[0]["code"] == 4301
        else:
            assert got == others

    @precondition(lambda self: self.subs)
    @rule(data=st.data(), channel=st.sampled_from(CHANNELS))
    def unsubscribe(self, data: st.DataObject, channel: str) -> None:
        """No reply; presence members of the remaining sockets hear member_removed for a user's last socket."""
        sid = self.pick(data)
        out = self.world.send(sid, {"event": "pusher:unsubscribe", "data": {"channel": channel}})
        assert frames(out, sid) == []
        if sid in self.subs and channel in self.subs[sid]:
            key = self.subs[sid].pop(channel)
            removed = delivered(out, "pusher_internal:member_removed")
            if key is not None and key not in self.members(channel):
                assert removed == {s for s, chans in self.subs.items() if channel in chans}
            else:
                assert removed == set()

    @precondition(lambda self: self.subs)
    @rule(channel=st.sampled_from(CHANNELS))
    def publish(self, channel: str) -> None:
        """A trigger reaches exactly the model's subscribers."""
        out = self.world.publish([channel], "server-event", "{}")
        assert delivered(out, "server-event") == {s for s, chans in self.subs.items() if channel in chans}

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        """A socket goes away."""
        sid = self.pick(data)
        out = self.world.close(sid)
        if sid in self.subs:
            self.forget(sid)
        else:
            assert out == []

    @precondition(lambda self: self.subs)
    @rule(data=st.data())
    def ping(self, data: st.DataObject) -> None:
        """A socket pings and is answered."""
        sid = self.pick(data)
        out = self.world.send(sid, {"event": "pusher:ping", "data": {}})
        assert names(out, sid) == (["pusher:pong"] if sid in self.subs else [])

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 3.0, 60.0, 121.0, 200.0]))
    def time_passes(self, dt: float) -> None:
        """Time jumps: heartbeats, webhook delays and cache TTLs advance."""
        self.world.tick(self.world.now + dt)
        self.sync()

    # ------------------------------------------------------------- invariants

    @invariant()
    def presence_counts_are_distinct_users(self) -> None:
        """Each presence channel's members are exactly the distinct users subscribed, counted once."""
        if not hasattr(self, "world"):
            return
        state = self.world.relay.state_of("1")
        assert state is not None
        for name in ("presence-a", "presence-b"):
            channel = state.channels.get(name)
            expected = self.members(name)
            if channel is None:
                assert expected == set()
                continue
            assert channel.members is not None
            assert set(channel.members) == expected
            assert len(expected) <= 2
            assert set().union(*(m.sockets for m in channel.members.values())) == channel.sockets

    @invariant()
    def channels_match_the_model(self) -> None:
        """The relay's channel membership is the model's."""
        if not hasattr(self, "world"):
            return
        state = self.world.relay.state_of("1")
        assert state is not None
        actual = {name: set(ch.sockets) for name, ch in state.channels.items()}
        expected: dict[str, set[str]] = {}
        for sid, chans in self.subs.items():
            for name in chans:
                expected.setdefault(name, set()).add(sid)
        assert actual == expected
        assert set(self.subs) == self.world.live
        assert {u: s for u, s in state.users.items()} == {
            u: {s for s, v in self.users.items() if v == u} for u in set(self.users.values())
        }

    def teardown(self) -> None:
        """Closing every socket leaves the relay holding nothing."""
        if not hasattr(self, "world"):
            return
        for sid in sorted(self.world.live):
            self.world.close(sid)
        assert self.world.relay.holds_nothing()
        self.world.tick(self.world.now + 10.0)
        state = self.world.relay.state_of("1")
        assert state is not None and len(state.webhooks) == 0


TestRelayMachine = RelayMachine.TestCase
TestRelayMachine.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)
