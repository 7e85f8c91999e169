"""One side of a Pusher connection: its transition table, handshake and heartbeat, on both roles."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pipe_proto.errors import LocalProtocolError, PusherCode, RemoteProtocolError
from pipe_proto.pusher.codec import Role, encode
from pipe_proto.pusher.connection import _TRANSITIONS, PONG_TIMEOUT, ConnectionState, PusherConnection, _Input
from pipe_proto.pusher.events import (
    ConnectionEstablished,
    Error,
    Message,
    Ping,
    Pong,
    PusherEvent,
    SignIn,
    SignInError,
    Subscribe,
    SubscriptionSucceeded,
)

CONNECTING, OPEN, CLOSED = ConnectionState.CONNECTING, ConnectionState.OPEN, ConnectionState.CLOSED
CLIENT, SERVER = Role.CLIENT, Role.SERVER

EXPECTED: dict[tuple[ConnectionState, _Input], ConnectionState | None] = {
    (CONNECTING, _Input.ESTABLISHED): OPEN,
    (CONNECTING, _Input.REFUSED): CLOSED,
    (CONNECTING, _Input.CLOSE): CLOSED,
    (OPEN, _Input.ESTABLISHED): None,
    (OPEN, _Input.REFUSED): None,
    (OPEN, _Input.CLOSE): CLOSED,
    (CLOSED, _Input.ESTABLISHED): None,
    (CLOSED, _Input.REFUSED): None,
    (CLOSED, _Input.CLOSE): CLOSED,
}


def test_expected_table_covers_every_pair() -> None:
    """The table above names every (state, input) pair, and its legal moves are exactly _TRANSITIONS."""
    assert set(EXPECTED) == set(itertools.product(ConnectionState, _Input))
    assert {k: (None, v) for k, v in EXPECTED.items() if v is not None} == _TRANSITIONS.moves
    assert _TRANSITIONS.final is CLOSED


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=[f"{s.name}-{i.name}" for s, i in EXPECTED])
def test_every_state_input_pair(role: Role, state: ConnectionState, event: _Input) -> None:
    """A legal move goes to its next state; an illegal one raises LocalProtocolError and leaves it CLOSED."""
    conn = PusherConnection(role, now=0.0)
    conn.state = state
    expected = EXPECTED[(state, event)]
    if expected is None:
        with pytest.raises(LocalProtocolError):
            _TRANSITIONS.move(conn, event)
        assert conn.state is CLOSED
        with pytest.raises(LocalProtocolError):
            conn.send(Ping())
        with pytest.raises(LocalProtocolError):
            conn.receive('{"event":"pusher:ping","data":{}}', 1.0)
        assert conn.tick(1e9) is None
    else:
        _TRANSITIONS.move(conn, event)
        assert conn.state is expected


# ------------------------------------------------------------------ server side


def frame(text: str) -> dict[str, Any]:
    """A frame as JSON, its data decoded when double-encoded."""
    msg: dict[str, Any] = json.loads(text)
    if isinstance(msg.get("data"), str):
        msg["data"] = json.loads(msg["data"])
    return msg


def test_server_establish_frame() -> None:
    """establish opens the connection and returns connection_established with the socket id and the timeout."""
    conn = PusherConnection(SERVER, now=0.0, activity_timeout=120)
    assert conn.state is CONNECTING
    text = conn.establish("123.456")
    assert text == (
        '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"123.456\\",\\"activity_timeout\\":120}"}'
    )
    assert conn.state is OPEN
    assert conn.socket_id == "123.456"


@pytest.mark.parametrize(("timeout", "socket_id"), [(0.5, "1.2"), (0.999, "1.2"), (120, 12)])
def test_server_establish_refuses_what_the_event_refuses(timeout: float, socket_id: Any) -> None:
    """A timeout below a second (which pusher-js cannot use) or an id that is no string: nothing moves."""
    conn = PusherConnection(SERVER, now=0.0, activity_timeout=timeout)
    with pytest.raises((ValueError, TypeError)):
        conn.establish(socket_id)
    assert conn.state is CONNECTING


def test_server_establish_twice_closes() -> None:
    """A second establish is an illegal move: LocalProtocolError, and the connection is CLOSED."""
    conn = PusherConnection(SERVER, now=0.0)
    conn.establish("1.1")
    with pytest.raises(LocalProtocolError):
        conn.establish("1.1")
    assert conn.state is CLOSED


def test_client_cannot_establish() -> None:
    """Only the server establishes a connection."""
    conn = PusherConnection(CLIENT, now=0.0)
    with pytest.raises(LocalProtocolError):
        conn.establish("1.1")


def test_server_cannot_send_before_establish() -> None:
    """Nothing may be sent before connection_established."""
    conn = PusherConnection(SERVER, now=0.0)
    with pytest.raises(LocalProtocolError):
        conn.send(Pong())


def open_server(now: float = 0.0, activity_timeout: float = 120) -> PusherConnection:
    """A server-side connection, established at ``now``."""
    conn = PusherConnection(SERVER, now=now, activity_timeout=activity_timeout)
    conn.establish("1.1")
    return conn


def test_server_pings_after_activity_timeout() -> None:
    """Silent for activity_timeout seconds: the server sends pusher:ping and keeps the connection open."""
    conn = open_server()
    assert conn.deadline() == 120.0
    assert conn.tick(119.9) is None
    action = conn.tick(120.0)
    assert action is not None
    assert action.send == '{"event":"pusher:ping","data":{}}'
    assert action.close_code is None
    assert conn.state is OPEN


def test_server_closes_4201_thirty_seconds_after_unanswered_ping() -> None:
    """No frame within 30 s of the ping: pusher:error 4201 and a 4201 close; the connection is CLOSED."""
    assert PONG_TIMEOUT == 30.0
    conn = open_server()
    conn.tick(120.0)
    assert conn.tick(149.9) is None
    action = conn.tick(150.0)
    assert action is not None
    error = {"event": "pusher:error", "data": {"code": 4201, "message": "Pong reply not received"}}
    assert frame(action.send or "") == error
    assert action.close_code == PusherCode.PONG_TIMEOUT == 4201
    assert action.reason == "Pong reply not received"
    assert conn.state is CLOSED
    assert conn.tick(1000.0) is None


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"pusher:pong","data":{}}',
        '{"event":"pusher:ping","data":{}}',
        '{"event":"client-x","channel":"private-a","data":{}}',
        '{"event":"pusher:subscribe","data":{"channel":"a"}}',
    ],
)
def test_any_frame_answers_the_ping(text: str) -> None:
    """Any frame after the ping, pong or not, counts: no 4201, and the next ping is activity_timeout later."""
    conn = open_server()
    conn.tick(120.0)
    conn.receive(text, 140.0)
    assert conn.tick(150.0) is None
    assert conn.tick(259.9) is None
    action = conn.tick(260.0)
    assert action is not None and action.send == '{"event":"pusher:ping","data":{}}'


def test_any_frame_resets_the_idle_timer() -> None:
    """A frame before the deadline moves the ping to activity_timeout seconds after it."""
    conn = open_server()
    conn.receive('{"event":"client-x","channel":"private-a","data":1}', 100.0)
    assert conn.tick(120.0) is None
    assert conn.deadline() == 220.0


def test_malformed_frame_counts_as_activity() -> None:
    """Even a frame that fails to decode shows the peer is alive (and the connection stays open)."""
    conn = open_server()
    with pytest.raises(RemoteProtocolError):
        conn.receive("not json", 100.0)
    assert conn.state is OPEN
    assert conn.deadline() == 220.0


def test_websocket_ping_counts_as_activity() -> None:
    """heard() (a WebSocket ping or pong) resets the idle timer and answers a probe."""
    conn = open_server()
    conn.tick(120.0)
    conn.heard(130.0)
    assert conn.tick(150.0) is None
    assert conn.deadline() == 250.0


def test_pinging_client_stays_connected() -> None:
    """A client that sends pusher:ping every activity_timeout seconds is never closed (checklist 23)."""
    conn = open_server()
    for step in range(1, 50):
        now = step * 10.0
        if step % 12 == 0:
            assert isinstance(conn.receive('{"event":"pusher:ping","data":{}}', now), Ping)
        action = conn.tick(now)
        assert action is None or action.close_code is None
    assert conn.state is OPEN


def test_server_receives_client_events() -> None:
    """receive decodes what a client sends; the server answers a Ping with a Pong."""
    conn = open_server()
    assert conn.receive('{"event":"pusher:ping","data":{}}', 1.0) == Ping()
    assert conn.send(Pong()) == '{"event":"pusher:pong","data":{}}'
    assert conn.receive('{"event":"pusher:subscribe","data":{"auth":"","channel":"c"}}', 2.0) == Subscribe(
        channel="c", auth=""
    )


def test_closed_connection_refuses_everything() -> None:
    """After close, receive and send raise LocalProtocolError and the timer does nothing."""
    conn = open_server()
    conn.close()
    assert conn.state is CLOSED
    with pytest.raises(LocalProtocolError):
        conn.receive('{"event":"pusher:ping","data":{}}', 1.0)
    with pytest.raises(LocalProtocolError):
        conn.send(Pong())
    assert conn.tick(1000.0) is None
    conn.close()  # closing twice is fine
    assert conn.state is CLOSED


# ------------------------------------------------------------------ client side


def established(socket_id: str = "123.456", timeout: int = 120) -> str:
    """The server's first frame."""
    return encode(ConnectionEstablished(socket_id=socket_id, activity_timeout=timeout), role=SERVER)


def test_client_handshake() -> None:
    """connection_established as the first frame opens the client and gives it its socket id."""
    conn = PusherConnection(CLIENT, now=0.0)
    event = conn.receive(established(), 1.0)
    assert event == ConnectionEstablished(socket_id="123.456", activity_timeout=120)
    assert conn.state is OPEN
    assert conn.socket_id == "123.456"
    assert conn.send(Subscribe(channel="c", auth="")) == '{"event":"pusher:subscribe","data":{"auth":"","channel":"c"}}'


def test_client_reads_the_error_answering_a_sign_in_as_sign_in_error() -> None:
    """Only while a pusher:signin waits is a 4009 error a SignInError; other codes, and 4009 at other times, stay Error."""
    conn = PusherConnection(CLIENT, now=0.0)
    conn.receive(established(), 0.0)
    unauthorized = '{"event":"pusher:error","data":{"code":4009,"message":"no"}}'
    assert type(conn.receive(unauthorized, 1.0)) is Error
    conn.send(SignIn(auth="k:s", user_data='{"id":"1"}'))
    assert type(conn.receive('{"event":"pusher:error","data":{"code":4301,"message":"slow down"}}', 1.0)) is Error
    assert conn.receive(unauthorized, 1.0) == SignInError(code=4009, message="no")
    assert type(conn.receive(unauthorized, 1.0)) is Error  # answered: the next one is not about it
    conn.send(SignIn(auth="k:s", user_data='{"id":"1"}'))
    conn.receive('{"event":"pusher:signin_success","data":{"user_data":"{\\"id\\":\\"1\\"}"}}', 1.0)
    assert not conn.signing_in


@pytest.mark.parametrize(("own", "server", "effective"), [(120, 30, 30), (120, 120, 120), (60, 120, 60), (120, 1, 1)])
def test_client_lowers_activity_timeout_to_the_servers(own: float, server: int, effective: float) -> None:
    """The client pings after min(own timeout, the server's activity_timeout) seconds of silence."""
    conn = PusherConnection(CLIENT, now=0.0, activity_timeout=own)
    conn.receive(established(timeout=server), 0.0)
    assert conn.liveness.idle == effective
    assert conn.tick(effective - 0.01) is None
    action = conn.tick(effective)
    assert action is not None and action.send == '{"event":"pusher:ping","data":{}}'


def test_client_gives_up_after_unanswered_ping() -> None:
    """pong_timeout seconds after its ping, the client closes with 4201 and sends nothing."""
    conn = PusherConnection(CLIENT, now=0.0, pong_timeout=30.0)
    conn.receive(established(), 0.0)
    conn.tick(120.0)
    action = conn.tick(150.0)
    assert action is not None
    assert action.send is None
    assert action.close_code == 4201
    assert conn.state is CLOSED


@pytest.mark.parametrize("code", [4001, 4003, 4004, 4009, 4100, 4200])
def test_client_refused_by_error_first_frame(code: int) -> None:
    """A pusher:error first frame is a refusal: RemoteProtocolError carrying its code, and CLOSED."""
    conn = PusherConnection(CLIENT, now=0.0)
    text = encode(Error(code=code, message="App key does not exist"), role=SERVER)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(text, 1.0)
    assert info.value.code == code
    assert info.value.message == "App key does not exist"
    assert conn.state is CLOSED
    with pytest.raises(LocalProtocolError):
        conn.receive(established(), 2.0)


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"pusher:ping","data":{}}',
        '{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}',
        '{"event":"my-event","channel":"c","data":"{}"}',
        "not json",
        '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.1\\",\\"activity_timeout\\":0}"}',
        '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"1.1\\"}"}',
    ],
)
def test_client_invalid_handshake(text: str) -> None:
    """Any other first frame, or a malformed one, is an invalid handshake: RemoteProtocolError and CLOSED."""
    conn = PusherConnection(CLIENT, now=0.0)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(text, 1.0)
    assert info.value.code is None
    assert "handshake" in info.value.message
    assert conn.state is CLOSED


def test_client_after_handshake_receives_errors_as_events() -> None:
    """Once open, a pusher:error is an ordinary event: it neither raises nor closes."""
    conn = PusherConnection(CLIENT, now=0.0)
    conn.receive(established(), 0.0)
    assert conn.receive('{"event":"pusher:error","data":{"code":4301,"message":"slow down"}}', 1.0) == Error(
        code=4301, message="slow down"
    )
    assert conn.state is OPEN
    with pytest.raises(RemoteProtocolError):
        conn.receive("{", 2.0)
    assert conn.state is OPEN


def test_client_cannot_send_before_handshake() -> None:
    """A client may not send before connection_established arrives."""
    conn = PusherConnection(CLIENT, now=0.0)
    with pytest.raises(LocalProtocolError):
        conn.send(Subscribe(channel="c"))


def test_client_cannot_send_server_events() -> None:
    """The connection refuses events of the other role."""
    conn = PusherConnection(CLIENT, now=0.0)
    conn.receive(established(), 0.0)
    with pytest.raises(LocalProtocolError):
        conn.send(SubscriptionSucceeded(channel="c"))


# --------------------------------------------------------------- both, together

client_events = st.one_of(
    st.builds(Ping),
    st.builds(Pong),
    st.builds(Subscribe, channel=st.text(max_size=5), auth=st.text(max_size=5)),
    st.builds(Message, event=st.sampled_from(["client-a", "b"]), data=st.integers() | st.text(max_size=5),
              channel=st.none() | st.just("private-c")),
)
server_events = st.one_of(
    st.builds(Ping),
    st.builds(Pong),
    st.builds(SubscriptionSucceeded, channel=st.text(max_size=5)),
    st.builds(Error, code=st.none() | st.integers(4000, 4399), message=st.text(max_size=5)),
    st.builds(Message, event=st.sampled_from(["a", "client-b"]), data=st.text(max_size=5),
              channel=st.none() | st.just("c"), user_id=st.none() | st.just("u")),
)


class ConnectionPair(RuleBasedStateMachine):
    """A client and a server wired together, with time passing; both answer pings at once."""

    @initialize(timeout=st.integers(1, 200), own=st.integers(1, 200))
    def start(self, timeout: int, own: int) -> None:
        """Open the server and hand its first frame to the client."""
        self.now = 0.0
        self.server = PusherConnection(SERVER, now=0.0, activity_timeout=timeout)
        self.client = PusherConnection(CLIENT, now=0.0, activity_timeout=own)
        self.client.receive(self.server.establish("5.6"), 0.0)
        assert self.client.socket_id == "5.6"
        assert self.client.liveness.idle == min(timeout, own)

    def deliver(self, sender: PusherConnection, receiver: PusherConnection, text: str) -> PusherEvent:
        """Carry one frame; a Ping is answered with a Pong, carried back too."""
        event = receiver.receive(text, self.now)
        if isinstance(event, Ping):
            answer = receiver.send(Pong())
            assert sender.receive(answer, self.now) == Pong()
        return event

    @rule(event=client_events)
    def client_sends(self, event: PusherEvent) -> None:
        """What the client sends arrives as the same event."""
        assert self.deliver(self.client, self.server, self.client.send(event)) == event

    @rule(event=server_events)
    def server_sends(self, event: PusherEvent) -> None:
        """What the server sends arrives as the same event."""
        assert self.deliver(self.server, self.client, self.server.send(event)) == event

    @rule(dt=st.floats(0, 500))
    def time_passes(self, dt: float) -> None:
        """Run both timers at every deadline in the interval, carrying their pings."""
        end = self.now + dt
        while True:
            due = min(self.server.deadline(), self.client.deadline())
            if due > end:
                break
            self.now = due
            for me, other in ((self.server, self.client), (self.client, self.server)):
                action = me.tick(self.now)
                if action is not None:
                    assert action.close_code is None
                    assert action.send is not None
                    assert isinstance(self.deliver(me, other, action.send), Ping)
        self.now = end

    @invariant()
    def both_open(self) -> None:
        """Peers that answer each other's pings at once never time out."""
        assert self.server.state is OPEN
        assert self.client.state is OPEN


TestConnectionPair = ConnectionPair.TestCase
