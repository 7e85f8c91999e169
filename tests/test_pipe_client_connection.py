"""The client side of a pipe without I/O: lifecycle, replies, replays, acks, liveness."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from pipe_proto import LocalProtocolError
from pipe_proto.pipe import Ack, Batch, Leave, PingCall, SendToChannel, SendToSocket, SubscribeEvents, UnsubscribeEvents
from pipe_proto.pipe.client import (
    _TRANSITIONS,
    ACK_EVERY,
    BATCH_CALLS,
    BATCH_CHARS,
    ClientState,
    PipeClientConnection,
    _Input,
)
from pipe_proto.relay.outputs import Send
from tests.pipe_helpers import APP, Harness


def established(session: str = "s1", resumed: bool = False, gap: int = 0) -> str:
    data = {"socket_id": "1.2", "session": session, "resumed": resumed, "gap": gap, "heartbeat": 25, "protocol_version": "1.0"}
    return json.dumps({"id": None, "error": None, "result": {"event": "connection_established", "data": data}})


def message(seq: int, n: int = 0) -> str:
    result = {"event": "socket_message", "data": {"socket_id": "3.4", "event": "e", "data": {"n": n}}, "seq": seq, "time_ms": 1}
    return json.dumps({"id": None, "error": None, "result": result})


def connected_to_a_relay() -> tuple[Harness, str, PipeClientConnection]:
    """A client connection opened by a relay core's frames: the harness, the pipe's id, the client."""
    h = Harness()
    pipe, out = h.open_pipe(APP)
    conn = PipeClientConnection()
    conn.connecting(h.now)
    for output in out:
        assert isinstance(output, Send)
        (item,) = conn.receive(output.text, h.now)
        assert item.established is not None and item.established.socket_id == pipe
    return h, pipe, conn


def opened(session: str = "s1") -> PipeClientConnection:
    conn = PipeClientConnection()
    conn.connecting(0.0)
    list(conn.receive(established(session), 0.0))
    return conn


CONNECTING, OPEN, CLOSED = ClientState.CONNECTING, ClientState.OPEN, ClientState.CLOSED

# The lifecycle written out by hand (one connection: connect, established,
# close; reconnecting starts from CLOSED); None marks an illegal pair.
EXPECTED: dict[tuple[ClientState, _Input], ClientState | None] = {
    (CONNECTING, _Input.CONNECT): None,
    (CONNECTING, _Input.ESTABLISHED): OPEN,
    (CONNECTING, _Input.CLOSE): CLOSED,
    (OPEN, _Input.CONNECT): None,
    (OPEN, _Input.ESTABLISHED): None,
    (OPEN, _Input.CLOSE): CLOSED,
    (CLOSED, _Input.CONNECT): CONNECTING,
    (CLOSED, _Input.ESTABLISHED): None,
    (CLOSED, _Input.CLOSE): CLOSED,
}


def test_expected_table_covers_every_pair() -> None:
    """The table above names every (state, input) pair, and its legal moves are exactly the module's table."""
    assert set(EXPECTED) == set(itertools.product(ClientState, _Input))
    assert {k: (None, v) for k, v in EXPECTED.items() if v is not None} == _TRANSITIONS.moves
    assert _TRANSITIONS.final is CLOSED


@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=[f"{s.name}-{i.name}" for s, i in EXPECTED])
def test_every_state_and_input(state: ClientState, event: _Input) -> None:
    """Each (state, input) moves as the table above says, or raises and leaves the connection CLOSED."""
    conn = PipeClientConnection()
    conn.state = state
    expected = EXPECTED[(state, event)]
    if expected is None:
        with pytest.raises(LocalProtocolError):
            _TRANSITIONS.move(conn, event)
        assert conn.state is CLOSED
        with pytest.raises(LocalProtocolError):
            conn.request(PingCall())
    else:
        _TRANSITIONS.move(conn, event)
        assert conn.state is expected


def test_the_public_calls_walk_the_lifecycle() -> None:
    """connecting() opens, connection_established makes it OPEN, closed() ends it; connecting twice is refused."""
    conn = PipeClientConnection()
    assert conn.state is CLOSED
    conn.connecting(0.0)
    assert conn.state is CONNECTING
    with pytest.raises(LocalProtocolError):
        conn.connecting(0.0)
    assert conn.state is CLOSED
    conn.connecting(0.0)
    list(conn.receive(established(), 0.0))
    assert conn.state is OPEN
    conn.closed()
    assert conn.state is CLOSED


def test_requests_need_an_open_connection_and_get_counted_ids() -> None:
    """Requests before connection_established are refused; open, ids count up and replies are matched once."""
    conn = PipeClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.request(PingCall())
    conn = opened()
    first, text = conn.request(SendToSocket(socket_ids=["1.1"], event="e", data="{}"))
    second, _ = conn.request(PingCall())
    assert (first, second) == (1, 2)
    assert json.loads(text) == {"id": 1, "method": "send_to_socket", "params": {"event": "e", "data": "{}", "socket_id": "1.1"}}
    assert conn.pending_requests == 2
    reply = json.dumps({"id": 1, "error": None, "result": {"delivered": 1}})
    (item,) = conn.receive(reply, 1.0)
    assert item.reply is not None and item.reply.result == {"delivered": 1}
    assert list(conn.receive(reply, 1.0)) == []  # a second reply to the same id is ignored
    assert conn.pending_requests == 1
    assert conn.request(SubscribeEvents(events=["auth"]), reply=False)[0] is None


def test_resume_parameters_and_replay_filtering() -> None:
    """The session and last processed seq go into the next URL; replays of what is already here are dropped."""
    conn = opened("s1")
    assert [i.notification.seq for m in (1, 2, 3) for i in conn.receive(message(m), 0.0)] == [1, 2, 3]
    conn.processed(1)
    conn.processed(2)
    conn.closed()
    assert conn.connecting(5.0) == {"session": "s1", "last_seq": "2"}
    list(conn.receive(established("s1", resumed=True), 5.0))
    assert conn.resumed and conn.session == "s1"
    assert list(conn.receive(message(2), 5.0)) == []
    # 3 was received before the reconnect and is still held by the application.
    assert list(conn.receive(message(3), 5.0)) == []
    assert [i.notification.seq for i in conn.receive(message(4), 5.0)] == [4]


def test_a_fresh_session_forgets_the_old_one() -> None:
    """resumed false means a new session: the processed seq starts over."""
    conn = opened("s1")
    list(conn.receive(message(1), 0.0))
    conn.processed(1)
    conn.closed()
    conn.connecting(1.0)
    list(conn.receive(established("s2", resumed=False), 1.0))
    assert conn.session == "s2" and conn.last_processed == 0
    assert [i.notification.seq for i in conn.receive(message(1), 1.0)] == [1]


def test_what_an_ended_session_left_unprocessed_is_not_acked_in_the_next() -> None:
    """A notification finished after its session ended does not count: in the fresh session its
    seq names another event, which an ack would settle before the application saw it."""
    conn = opened("s1")
    old = conn.epoch
    seqs = [i.notification.seq for m in (1, 2, 3) for i in conn.receive(message(m), 0.0)]
    conn.closed()
    conn.connecting(1.0)
    list(conn.receive(established("s2", resumed=False), 1.0))
    assert conn.epoch != old
    assert [i.notification.seq for i in conn.receive(message(1), 1.0)] == [1]
    for seq in seqs:  # the application finishes what it held of s1
        conn.processed(seq, old)
    assert conn.last_processed == 0 and conn.take_ack(force=True) is None
    conn.processed(1, conn.epoch)
    assert json.loads(conn.take_ack(force=True) or "")["params"] == {"seq": 1}


def test_a_session_taken_over_is_not_resumed_again() -> None:
    """Closed with 4203 (another connection resumed the session), the next connection asks for a fresh
    session; any other close keeps the session for resuming."""
    conn = opened("s1")
    conn.closed(4200)
    assert conn.connecting(1.0) == {"session": "s1", "last_seq": "0"}
    list(conn.receive(established("s1", resumed=True), 1.0))
    conn.closed(4203)
    assert conn.connecting(2.0) == {}


def test_acks_are_cumulative_and_batched() -> None:
    """No ack until ACK_EVERY are processed, unless forced; never the same ack twice."""
    conn = opened()
    for seq in range(1, ACK_EVERY):
        conn.processed(seq)
        assert conn.take_ack() is None
    assert json.loads(conn.take_ack(force=True) or "") == {"id": None, "method": "ack", "params": {"seq": ACK_EVERY - 1}}
    assert conn.take_ack(force=True) is None
    for seq in range(ACK_EVERY, 2 * ACK_EVERY):
        conn.processed(seq)
    assert json.loads(conn.take_ack() or "")["params"] == {"seq": 2 * ACK_EVERY - 1}
    assert conn.acked == 2 * ACK_EVERY - 1


def test_saved_session_is_resumed_on_the_first_connection() -> None:
    """resume() before connecting makes the first URL ask for that session."""
    conn = PipeClientConnection()
    conn.resume("old", 41)
    assert conn.connecting(0.0) == {"session": "old", "last_seq": "41"}


def test_heartbeat_pings_then_gives_up() -> None:
    """After a heartbeat of silence the client pings; after another it reports the relay silent."""
    conn = opened()
    assert conn.tick(24.0) is None
    ping = conn.tick(25.0)
    assert isinstance(ping, str) and json.loads(ping)["method"] == "ping"
    list(conn.receive(json.dumps({"id": 1, "error": None, "result": {}}), 30.0))
    assert conn.tick(54.0) is None
    assert isinstance(conn.tick(55.0), str)
    assert conn.tick(80.1) is True


def test_mirror_of_the_relay() -> None:
    """Frames the relay sends decode on the client side into what the relay meant."""
    h, pipe, conn = connected_to_a_relay()
    _, text = conn.request(SubscribeEvents(events=["socket_existence"]))
    out = h.relay.pipe_message(pipe, text, h.now)
    (reply,) = [i for o in out if isinstance(o, Send) for i in conn.receive(o.text, h.now)]
    assert reply.reply is not None and reply.reply.result == {}
    _, out = h.open_socket()
    (note,) = [i for o in out if isinstance(o, Send) and pipe in o.targets for i in conn.receive(o.text, h.now)]
    assert note.notification is not None and note.notification.seq == 1
    conn.processed(1)
    out = h.relay.pipe_message(pipe, conn.take_ack(force=True) or "", h.now)
    assert out == []
    assert not h.relay.state_of("1").hub.by_pipe[pipe].inflight
    assert Ack(seq=1).seq == 1


def test_a_fresh_session_gets_the_subscribe_to_send_and_a_resumed_one_does_not() -> None:
    """connection_established of a fresh session carries the subscribe of every kept event type, awaited until
    its reply (``subscribing``); a resume carries none."""
    conn = PipeClientConnection(events=["socket_message", "auth", "socket_message"])
    conn.connecting(0.0)
    (item,) = conn.receive(established("s1"), 0.0)
    assert item.send is not None
    sent = json.loads(item.send)
    assert sent == {"id": sent["id"], "method": "subscribe", "params": {"events": ["socket_message", "auth"]}}
    assert conn.subscribing == sent["id"] is not None
    list(conn.receive(json.dumps({"id": sent["id"], "error": None, "result": {}}), 0.0))
    assert conn.subscribing is None
    conn.closed()
    conn.connecting(1.0)
    (item,) = conn.receive(established("s1", resumed=True), 1.0)
    assert item.send is None
    assert PipeClientConnection().connecting(0.0) == {}
    bare = PipeClientConnection()
    bare.connecting(0.0)
    assert next(iter(bare.receive(established(), 0.0))).send is None  # nothing to subscribe to


def test_event_types_change_when_the_relay_accepts() -> None:
    """subscribe/unsubscribe change the kept types on a success reply, not on an error; without a reply, at once."""
    conn = opened()
    sub_id, _ = conn.request(SubscribeEvents(events=["presence"]))
    bad_id, _ = conn.request(SubscribeEvents(events=["nonsense"]))
    list(conn.receive(json.dumps({"id": bad_id, "error": {"code": 4240, "message": "unknown"}, "result": None}), 0.0))
    assert conn.events == []
    list(conn.receive(json.dumps({"id": sub_id, "error": None, "result": {}}), 0.0))
    assert conn.events == ["presence"]
    conn.request(UnsubscribeEvents(events=["presence"]), reply=False)
    assert conn.events == []


def test_calls_queued_together_reach_the_relay_as_one_batch_applied_in_order() -> None:
    """Queued calls come out as one batch frame with id null; the relay applies each in order and
    reports a failing one with an error notification, as it would a single call's."""
    h, pipe, conn = connected_to_a_relay()
    socket_id, _ = h.open_socket()
    assert conn.take_queued() == []
    assert conn.queue(SendToSocket(socket_ids=[socket_id], event="first", data="1")) is False
    assert conn.queue(SendToChannel(channels=["nobody-here"], event="e", data="x")) is False
    # A call the relay refuses (reserved event name): reported, and the rest still runs.
    assert conn.queue(SendToSocket(socket_ids=[socket_id], event="pusher:nope", data="2")) is False
    assert conn.queue(SendToSocket(socket_ids=[socket_id], event="last", data="3")) is False
    assert conn.queued == 4
    (text,) = conn.take_queued()
    assert conn.queued == 0 and conn.take_queued() == []
    frame = json.loads(text)
    assert frame["id"] is None and frame["method"] == "batch"
    assert [c["method"] for c in frame["params"]["calls"]] == ["send_to_socket", "send_to_channel", "send_to_socket", "send_to_socket"]
    out = h.relay.pipe_message(pipe, text, h.now)
    to_socket = [json.loads(o.text)["event"] for o in out if isinstance(o, Send) and socket_id in o.targets]
    assert to_socket == ["first", "last"]
    (error,) = [i for o in out if isinstance(o, Send) and pipe in o.targets for i in conn.receive(o.text, h.now)]
    assert error.error is not None and error.error.code == 4210


def test_one_queued_call_goes_as_itself_and_a_full_queue_says_so() -> None:
    """A lone queued call is a plain request with id null; the queue is full at BATCH_CALLS calls or
    about BATCH_CHARS characters and takes no more until taken; a batch never passes BATCH_CHARS
    (a larger call goes alone); batch and leave cannot be queued, nor anything while not connected."""
    conn = PipeClientConnection()
    with pytest.raises(LocalProtocolError):
        conn.queue(PingCall())
    conn = opened()
    conn.queue(SendToSocket(socket_ids=["1.1"], event="e", data="x"))
    assert [json.loads(f) for f in conn.take_queued()] == [
        {"id": None, "method": "send_to_socket", "params": {"event": "e", "data": "x", "socket_id": "1.1"}},
    ]
    fulls = [conn.queue(SendToSocket(socket_ids=["1.1"], event="e", data="x")) for _ in range(BATCH_CALLS)]
    assert fulls == [False] * (BATCH_CALLS - 1) + [True] and conn.full
    with pytest.raises(LocalProtocolError):
        conn.queue(SendToSocket(socket_ids=["1.1"], event="e", data="x"))
    (frame,) = conn.take_queued()
    assert len(json.loads(frame)["params"]["calls"]) == BATCH_CALLS and not conn.full
    third = "x" * (BATCH_CHARS // 3)
    assert [conn.queue(SendToSocket(socket_ids=["1.1"], event="e", data=third)) for _ in range(3)] == [False, False, True]
    first, second = (json.loads(f) for f in conn.take_queued())
    assert first["method"] == "batch" and len(first["params"]["calls"]) == 2
    assert second["method"] == "send_to_socket"
    conn.queue(SendToSocket(socket_ids=["1.1"], event="small", data="x"))
    conn.queue(SendToSocket(socket_ids=["1.1"], event="huge", data="x" * (2 * BATCH_CHARS)))
    small, huge = conn.take_queued()
    assert json.loads(small)["params"]["event"] == "small" and json.loads(huge)["params"]["event"] == "huge"
    for call in (Leave(), Batch(calls=[PingCall()])):
        with pytest.raises(LocalProtocolError):
            conn.queue(call)
    # An unsubscribe queued takes effect at once, as one sent without a reply does.
    conn.events = ["a", "b"]
    conn.queue(UnsubscribeEvents(events=["a"]))
    assert conn.events == ["b"]


@pytest.mark.parametrize(
    "make",
    [
        lambda ids: SendToSocket(socket_ids=ids, event="e", data="1"),
        lambda ids: SendToChannel(channels=ids, event="e", data="1"),
        lambda ids: SubscribeEvents(events=ids),
    ],
)
def test_lists_of_names_may_be_any_iterable_and_hold_only_strings(make: Callable[[Any], object]) -> None:
    """An iterator's names are all kept (one pass is all it has); a string or a non-string item is refused."""
    assert make(iter(["a", "b"])) == make(["a", "b"]) == make(("a", "b"))
    assert make(name for name in ["a"]) == make(["a"])
    with pytest.raises(TypeError):
        make("ab")
    with pytest.raises(TypeError):
        make(iter(["a", 1]))
