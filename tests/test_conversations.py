"""Both cores of each conversation wired in memory, no adapter: the relay's side and the client's side.

The relay core (:class:`~pipe_proto.Relay`) talks to the client cores
(:class:`~pipe_proto.pusher.PusherConnection` on the client side,
:class:`~pipe_proto.pipe.client.PipeClientConnection`) through nothing but the
texts in its ``Send`` outputs and the texts the client cores encode. Whatever
an adapter would have to decide is asked of a core here, so a rule that leaked
into an adapter would be missing from these conversations.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest

from pipe_proto import App, Close, Output, PipeSettings, Relay, RemoteProtocolError, Send
from pipe_proto.pipe import (
    AuthRequest,
    Gap,
    Leave,
    PipeAccepted,
    Reply,
    SendToChannel,
    SendToSocket,
    SocketClosed,
    SocketMessage,
    SocketOpened,
    SubscribeEvents,
    pipe_url,
)
from pipe_proto.pipe.client import ClientState, Incoming, PipeClientConnection
from pipe_proto.pusher import (
    ConnectionEstablished,
    ConnectionState,
    Error,
    MemberAdded,
    Message,
    Ping,
    Pong,
    PusherConnection,
    PusherEvent,
    Role,
    SignIn,
    SignInError,
    SignInSuccess,
    Subscribe,
    SubscriptionError,
    SubscriptionSucceeded,
)
from pipe_proto.routes import split_target
from pipe_proto.signatures import channel_auth, signin_auth

KEY, SECRET = "app-key", "app-secret"
T0 = 1_700_000_000.0


def app(**pipe: Any) -> App:
    return App(id="1", key=KEY, secret=SECRET, pipe=PipeSettings(**pipe))


class Wire:
    """The relay core and its peers' cores: each ``Send`` reaches the inbox of every connection it names."""

    def __init__(self, *apps: App) -> None:
        self.relay = Relay(list(apps) or [app()])
        self.now = T0
        self.nonce = 0
        self.inbox: dict[str, list[str]] = defaultdict(list)
        self.closed: dict[str, tuple[int, str]] = {}

    def next_nonce(self) -> int:
        self.nonce += 1
        return self.nonce

    def carry(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                for target in output.targets:
                    self.inbox[target].append(output.text)
            elif isinstance(output, Close):
                self.closed[output.target] = (output.code, output.reason)

    def later(self, seconds: float) -> None:
        self.now += seconds
        self.carry(self.relay.tick(self.now))


class Socket:
    """An end user: the Pusher client core on one side of the wire."""

    def __init__(self, wire: Wire, key: str = KEY, protocol: str = "7") -> None:
        self.wire = wire
        self.conn = PusherConnection(Role.CLIENT, now=wire.now)
        self.id, outputs = wire.relay.open_socket(key, {"protocol": protocol}, wire.now, nonce=wire.next_nonce())
        wire.carry(outputs)

    def send(self, event: PusherEvent) -> None:
        self.wire.carry(self.wire.relay.socket_message(self.id, self.conn.send(event), self.wire.now))

    def events(self) -> list[PusherEvent]:
        """Everything the relay sent since last asked, as the client core reads it."""
        texts, self.wire.inbox[self.id] = self.wire.inbox[self.id], []
        return [self.conn.receive(text, self.wire.now) for text in texts]

    def close(self, code: int = 1000) -> None:
        self.conn.close()
        self.wire.carry(self.wire.relay.socket_closed(self.id, self.wire.now, code, ""))


class Backend:
    """A backend: the Pipe client core on the other side of the wire, across its reconnections."""

    def __init__(self, wire: Wire, *, version: str = "1.0", events: tuple[str, ...] = ("socket_existence", "socket_message")) -> None:
        self.wire = wire
        self.version = version
        self.core = PipeClientConnection(events=events)
        self.id = ""
        self.received: list[Incoming] = []
        #: Every text the relay sent, as sent.
        self.texts: list[str] = []

    def connect(self) -> Incoming:
        """Open a connection (resuming when the core has a session); returns the established item."""
        params = self.core.connecting(self.wire.now)
        url = pipe_url(
            "ws://relay", app_id="1", key=KEY, secret=SECRET, now=self.wire.now, version=self.version,
            session=params.get("session"), last_seq=int(params["last_seq"]) if "last_seq" in params else None,
        )
        _, query = split_target(url.removeprefix("ws://relay"))
        decision = self.wire.relay.pipe_handshake("1", query, self.wire.now)
        assert isinstance(decision, PipeAccepted), decision
        self.id, outputs = self.wire.relay.open_pipe(decision, self.wire.now, nonce=self.wire.next_nonce())
        self.wire.carry(outputs)
        (first, *_) = self.read()
        assert first.established is not None
        return first

    def read(self) -> list[Incoming]:
        """Everything the relay sent since last asked; what the core says to send goes out at once."""
        items: list[Incoming] = []
        while self.wire.inbox[self.id]:
            text = self.wire.inbox[self.id].pop(0)
            self.texts.append(text)
            for item in self.core.receive(text, self.wire.now):
                if item.send is not None:
                    self.wire.carry(self.wire.relay.pipe_message(self.id, item.send, self.wire.now))
                items.append(item)
        self.received += items
        return items

    def notices(self) -> list[Any]:
        """The notices read since last asked (the established one aside)."""
        return [i.notification.notice for i in self.read() if i.notification is not None and i.established is None]

    def call(self, call: Any) -> Any:
        """Send a request and return the relay's reply (a Reply or ErrorReply)."""
        request_id, text = self.core.request(call)
        self.wire.carry(self.wire.relay.pipe_message(self.id, text, self.wire.now))
        (reply,) = [i.reply for i in self.read() if i.reply is not None and i.reply.id == request_id]
        return reply

    def drop(self) -> None:
        """The connection is lost (no leave)."""
        self.core.closed()
        self.wire.carry(self.wire.relay.pipe_closed(self.id, self.wire.now))


# ------------------------------------------------------------------ Pusher


def test_pusher_connect_subscribe_publish_ping() -> None:
    """A socket is established, subscribes, receives a published event, and pings both ways."""
    wire = Wire()
    sock = Socket(wire)
    (established,) = sock.events()
    assert established == ConnectionEstablished(socket_id=sock.id, activity_timeout=120)
    assert sock.conn.state is ConnectionState.OPEN and sock.conn.socket_id == sock.id
    sock.send(Subscribe(channel="news"))
    assert sock.events() == [SubscriptionSucceeded(channel="news")]
    wire.carry(wire.relay.publish("1", ["news"], "tick", '{"n":1}', None, wire.now))
    assert sock.events() == [Message(event="tick", data='{"n":1}', channel="news")]
    sock.send(Ping())
    assert sock.events() == [Pong()]
    wire.later(120)  # the relay's activity timeout: it pings, the client core answers
    (ping,) = sock.events()
    assert isinstance(ping, Ping)
    sock.send(Pong())
    wire.later(30)
    assert sock.id not in wire.closed


def test_pusher_private_presence_and_client_events() -> None:
    """Signed private and presence subscriptions, members announced, client events to the others only."""
    wire = Wire()
    alice, bob = Socket(wire), Socket(wire)
    alice.events(), bob.events()
    alice.send(Subscribe(channel="private-x", auth="app-key:" + "0" * 64))
    (refused,) = alice.events()
    assert isinstance(refused, SubscriptionError) and refused.status == 401
    for sock, user in ((alice, "a"), (bob, "b")):
        data = json.dumps({"user_id": user})
        sock.send(Subscribe(channel="presence-room", auth=channel_auth(KEY, SECRET, sock.id, "presence-room", data), channel_data=data))
    (joined_a, added) = alice.events()
    (joined_b,) = bob.events()
    assert isinstance(joined_a, SubscriptionSucceeded) and joined_a.presence is not None
    assert added == MemberAdded(channel="presence-room", user_id="b")
    assert isinstance(joined_b, SubscriptionSucceeded) and joined_b.presence is not None
    assert sorted(m[0] for m in joined_b.presence.members) == ["a", "b"]
    alice.send(Message(event="client-hi", data={"x": 1}, channel="presence-room"))
    assert alice.events() == []
    assert bob.events() == [Message(event="client-hi", data='{"x":1}', channel="presence-room", user_id="a")]


def test_pusher_sign_in_answers_are_read_by_the_client_core() -> None:
    """A refused sign-in reaches the client core as SignInError and the socket stays open; a good one as SignInSuccess."""
    wire = Wire()
    sock = Socket(wire)
    sock.events()
    user = json.dumps({"id": "u1"})
    sock.send(SignIn(auth=f"{KEY}:{'0' * 64}", user_data=user))
    assert sock.conn.signing_in
    (refused,) = sock.events()
    assert isinstance(refused, SignInError) and refused.code == 4009
    assert not sock.conn.signing_in and sock.conn.state is ConnectionState.OPEN
    sock.send(SignIn(auth=signin_auth(KEY, SECRET, sock.id, user), user_data=user))
    assert sock.events() == [SignInSuccess(user_data=user)]
    assert not sock.conn.signing_in
    # A 4009 that answers no sign-in is an ordinary error, and closes.
    wire.carry(wire.relay.terminate_user("1", "u1", wire.now))
    (terminated,) = sock.events()
    assert type(terminated) is Error and terminated.code == 4009
    assert wire.closed[sock.id][0] == 4009


@pytest.mark.parametrize(("key", "protocol", "code"), [("nobody", "7", 4001), (KEY, "3", 4007)])
def test_pusher_refusals(key: str, protocol: str, code: int) -> None:
    """A refused socket's only frame is the error: the client core raises it with its code, the relay closes."""
    wire = Wire()
    sock = Socket(wire, key=key, protocol=protocol)
    with pytest.raises(RemoteProtocolError) as refused:
        sock.events()
    assert refused.value.code == code
    assert sock.conn.state is ConnectionState.CLOSED
    assert wire.closed[sock.id][0] == code


# ------------------------------------------------------------------ Pipe


@pytest.mark.parametrize("version", ["0.2", "1.0"])
def test_pipe_sockets_messages_and_sends(version: str) -> None:
    """A pipe hears sockets open, talk and close, and sends to one socket and to a channel."""
    wire = Wire()
    backend = Backend(wire, version=version)
    established = backend.connect()
    assert established.established is not None and established.established.socket_id == backend.id
    assert established.send is not None  # the fresh session's subscribe, sent by the core's decision
    sock = Socket(wire)
    sock.events()
    sock.send(Subscribe(channel="news"))
    sock.events()
    sock.send(Message(event="eventFromBrowser", data={"some": "data"}))
    opened, message = backend.notices()
    assert isinstance(opened, SocketOpened) and opened.socket_id == sock.id
    assert message == SocketMessage(socket_id=sock.id, name="eventFromBrowser", data={"some": "data"})
    reply = backend.call(SendToSocket(socket_ids=[sock.id], event="acknowledge", data='{"message":"Rodger"}'))
    assert isinstance(reply, Reply) and reply.result == ({} if version == "0.2" else {"delivered": 1})
    reply = backend.call(SendToChannel(channels=["news"], event="tick", data="1"))
    assert isinstance(reply, Reply)
    assert sock.events() == [
        Message(event="acknowledge", data='{"message":"Rodger"}'),
        Message(event="tick", data="1", channel="news"),
    ]
    sock.close(4321)
    (closed,) = backend.notices()
    assert isinstance(closed, SocketClosed) and closed.socket_id == sock.id
    assert (closed.code, closed.reason) == ((None, None) if version == "0.2" else (4321, ""))


def test_pipe_authorizes_subscriptions_and_sign_ins() -> None:
    """auth_request for a channel and for a user: the answer's data lands in the field the kind needs."""
    wire = Wire()
    backend = Backend(wire)
    backend.connect()
    assert isinstance(backend.call(SubscribeEvents(events=["auth"])), Reply)
    assert "auth" in backend.core.events
    sock = Socket(wire)
    sock.events()
    sock.send(SignIn())
    (ask,) = [n for n in backend.notices() if isinstance(n, AuthRequest)]
    assert ask.kind == "user"
    assert isinstance(backend.call(ask.answer(allow=True, data={"id": "u1"})), Reply)
    (signed_in,) = sock.events()
    assert isinstance(signed_in, SignInSuccess) and json.loads(signed_in.user_data) == {"id": "u1"}
    sock.send(Subscribe(channel="presence-room", auth=""))
    (ask,) = backend.notices()
    assert isinstance(ask, AuthRequest) and (ask.kind, ask.channel) == ("channel", "presence-room")
    backend.call(ask.answer(allow=True, data={"user_id": "u1", "user_info": {"name": "U"}}))
    (joined,) = sock.events()
    assert isinstance(joined, SubscriptionSucceeded) and joined.presence is not None
    assert joined.presence.members == (("u1", {"name": "U"}),)
    sock.send(Subscribe(channel="private-secret", auth=""))
    (ask,) = backend.notices()
    backend.call(ask.answer(allow=False, reason="not you"))
    assert sock.events() == [SubscriptionError(channel="private-secret", type="AuthError", error="not you", status=403)]


def test_pipe_resume_replays_what_was_not_processed_and_no_more() -> None:
    """Reconnecting within the grace resumes: nothing re-subscribed, the replay of what the client holds filtered, the rest delivered."""
    wire = Wire(app(resume_grace=10.0))
    backend = Backend(wire)
    backend.connect()
    sock = Socket(wire)
    sock.events()
    for n in (1, 2):
        sock.send(Message(event="e", data=n))
    notes = [i.notification for i in backend.read() if i.notification is not None]
    assert [n.seq for n in notes] == [1, 2, 3]  # socket_opened, then the two messages
    backend.core.processed(1)
    backend.core.processed(2)  # 3 is still with the application
    backend.drop()
    sock.send(Message(event="e", data=3))
    wire.later(5)
    sent_before, received_before = len(backend.texts), len(backend.received)
    again = backend.connect()
    assert again.established is not None and again.established.resumed
    assert again.send is None  # a resumed session kept its subscriptions
    replayed = [json.loads(t)["result"].get("seq") for t in backend.texts[sent_before:]]
    assert replayed == [None, 3, 4]  # connection_established, then everything after last_seq=2
    delivered = [i.notification for i in backend.received[received_before:] if i.notification is not None]
    assert [(n.seq, n.notice) for n in delivered[1:]] == [(4, SocketMessage(socket_id=sock.id, name="e", data=3))]


def test_pipe_gap_then_a_fresh_session_subscribes_again() -> None:
    """Events dropped while away arrive as a gap; after the grace the session is new and the core subscribes again."""
    wire = Wire(app(buffer_events=2, resume_grace=1.0))
    backend = Backend(wire)
    backend.connect()
    sock = Socket(wire)
    sock.events()
    backend.read()
    backend.drop()
    for n in range(5):
        sock.send(Message(event="e", data=n))
    again = backend.connect()
    assert again.established is not None and again.established.resumed and again.established.gap == 3
    gap, *kept = [i.notification.notice for i in backend.received[-3:] if i.notification is not None]
    assert gap == Gap(dropped=3)
    assert kept == [SocketMessage(socket_id=sock.id, name="e", data=n) for n in (3, 4)]
    backend.drop()
    wire.later(2)  # past the grace: the session is gone
    fresh = backend.connect()
    assert fresh.established is not None and not fresh.established.resumed
    assert fresh.send is not None and json.loads(fresh.send)["params"]["events"] == ["socket_existence", "socket_message"]
    assert backend.core.session == fresh.established.session and backend.core.last_processed == 0
    sock.send(Message(event="after", data=1))
    assert backend.notices() == [SocketMessage(socket_id=sock.id, name="after", data=1)]


def test_pipe_leave_ends_the_session() -> None:
    """leave is answered {} and the relay closes the pipe with 1000; its session cannot be resumed."""
    wire = Wire()
    backend = Backend(wire)
    backend.connect()
    session = backend.core.session
    reply = backend.call(Leave())
    assert isinstance(reply, Reply) and reply.result == {}
    assert wire.closed[backend.id][0] == 1000
    backend.core.closed()
    assert backend.core.state is ClientState.CLOSED
    again = backend.connect()
    assert again.established is not None and not again.established.resumed
    assert again.established.session != session
