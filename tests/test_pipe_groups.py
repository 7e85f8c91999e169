"""Pipe groups: load sharing, acks and windows, resume, redelivery, bounds (pipe-protocol.md 6)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from pipe_proto import App, PipeSettings
from tests.pipe_helpers import Harness, notices


def app(**settings: Any) -> App:
    return App(id="1", key="app-key", secret="app-secret", pipe=PipeSettings(**settings))


def member(h: Harness, a: App, **params: Any) -> str:
    pipe, _ = h.open_pipe(a, **params)
    h.call(pipe, "subscribe", {"events": ["socket_message"]})
    return pipe


def messages(outputs: list[Any], pipe: str) -> list[dict[str, Any]]:
    return [n for n in notices(outputs, pipe) if n["event"] == "socket_message"]


def send_all(h: Harness, sockets: list[str], rounds: int) -> list[Any]:
    out: list[Any] = []
    for n in range(rounds):
        for sock in sockets:
            out += h.socket_send(sock, "msg", {"n": n})
    return out


def test_each_socket_sticks_to_one_member_and_the_load_is_shared() -> None:
    """Every message of a socket reaches the same member, in order; both members get sockets."""
    a = app()
    h = Harness([a])
    pipes = [member(h, a), member(h, a)]
    sockets = [h.open_socket()[0] for _ in range(40)]
    out = send_all(h, sockets, 5)
    owner: dict[str, str] = {}
    for pipe in pipes:
        seen: dict[str, list[int]] = {}
        for n in messages(out, pipe):
            sock = n["data"]["socket_id"]
            assert owner.setdefault(sock, pipe) == pipe
            seen.setdefault(sock, []).append(n["data"]["data"]["n"])
        assert all(v == list(range(5)) for v in seen.values())
    assert set(owner) == set(sockets)
    assert Counter(owner.values()).keys() == set(pipes)


def test_window_holds_back_until_acks() -> None:
    """A member gets at most `window` unacked events; acks release the rest, seq without gaps."""
    a = app(window=3)
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    out = send_all(h, [sock], 10)
    assert [n["seq"] for n in messages(out, pipe)] == [1, 2, 3]
    _, out = h.call(pipe, "ack", {"seq": 2}, reply=False)
    assert [n["seq"] for n in messages(out, pipe)] == [4, 5]
    _, out = h.call(pipe, "ack", {"seq": 5}, reply=False)
    assert [n["data"]["data"]["n"] for n in messages(out, pipe)] == [5, 6, 7]
    stats = h.relay.stats()["apps"]["1"]["pipe"]["groups"]["default"]
    assert stats["in_flight"] == 3 and stats["pending"] == 2


def test_resume_replays_exactly_the_unprocessed_events_with_their_seqs() -> None:
    """Reconnecting within the grace with session and last_seq replays seq > last_seq, then continues."""
    a = app()
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    first = messages(send_all(h, [sock], 4), pipe)
    session = h.relay.state_of("1").hub.by_pipe[pipe].id
    h.relay.pipe_closed(pipe, h.now)
    h.now += 5
    during = send_all(h, [sock], 2)
    again, out = h.open_pipe(a, session=session, last_seq=2)
    established = notices(out, again)[0]["data"]
    assert established["resumed"] is True and established["session"] == session
    replayed = messages(out, again)
    assert [(n["seq"], n["data"]["data"]["n"]) for n in replayed] == [(3, 2), (4, 3), (5, 0), (6, 1)]
    assert not any(n.get("redelivered") for n in replayed)
    assert [n["seq"] for n in first] == [1, 2, 3, 4] and messages(during, pipe) == []


def test_unknown_session_starts_fresh() -> None:
    """A session the relay does not know gives resumed false and a new session."""
    a = app()
    h = Harness([a])
    pipe, out = h.open_pipe(a, session="nope", last_seq=7)
    data = notices(out, pipe)[0]["data"]
    assert data["resumed"] is False and data["session"] != "nope"


def test_after_the_grace_pending_events_move_to_survivors_marked() -> None:
    """A member that does not come back loses its keys; its unacked events are redelivered to the others."""
    a = app()
    h = Harness([a])
    pipes = [member(h, a), member(h, a)]
    sockets = [h.open_socket()[0] for _ in range(20)]
    out = send_all(h, sockets, 2)
    dead, survivor = pipes
    dead_events = messages(out, dead)
    assert dead_events
    h.call(dead, "ack", {"seq": 1}, reply=False)
    h.relay.pipe_closed(dead, h.now)
    later = send_all(h, sockets, 1)
    dead_sockets = {n["data"]["socket_id"] for n in dead_events}
    assert all(n["data"]["socket_id"] not in dead_sockets for n in messages(later, survivor))
    out = h.tick(10.1)
    moved = messages(out, survivor)
    # The unacked ones it had been sent, then what queued for it in its grace.
    assert len(moved) == len(dead_events) - 1 + len(dead_sockets)
    assert all(n.get("redelivered") for n in moved)
    assert {n["data"]["socket_id"] for n in moved} <= dead_sockets
    assert h.relay.stats()["apps"]["1"]["pipe"]["groups"]["default"]["redelivered"] == len(moved)


def test_group_buffer_holds_events_for_the_next_member_and_reports_drops() -> None:
    """With no member left, events wait in the group buffer (bounded); the next member gets them and the gap."""
    a = app(buffer_events=5, resume_grace=1.0)
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    h.relay.pipe_closed(pipe, h.now)
    send_all(h, [sock], 8)
    h.tick(1.5)
    hub = h.relay.state_of("1").hub
    group = hub.groups["default"]
    assert len(group.buffer) == 5 and group.dropped == 3
    # A group without sessions takes nothing new.
    send_all(h, [sock], 1)
    assert len(group.buffer) == 5
    newcomer, out = h.open_pipe(a)
    established, gap = notices(out, newcomer)
    assert established["data"]["gap"] == 3
    assert (gap["event"], gap["data"], gap["seq"]) == ("gap", {"dropped": 3}, 1)
    _, out = h.call(newcomer, "subscribe", {"events": ["socket_message"]})
    moved = messages(out, newcomer)
    assert [n["data"]["data"]["n"] for n in moved] == [3, 4, 5, 6, 7]
    assert [n["seq"] for n in moved] == [2, 3, 4, 5, 6]


def test_buffered_events_age_out_and_are_counted() -> None:
    """Events older than buffer_ttl leave the buffer and count as dropped; the empty group is forgotten."""
    a = app(buffer_ttl=30.0, resume_grace=1.0)
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    h.relay.pipe_closed(pipe, h.now)
    send_all(h, [sock], 2)
    h.tick(1.5)
    hub = h.relay.state_of("1").hub
    assert len(hub.groups["default"].buffer) == 2
    h.tick(30)
    assert not hub.groups["default"].buffer
    assert hub.groups["default"].unreported == 2


def test_byte_bound_applies_too() -> None:
    """buffer_bytes bounds waiting events as well as their count."""
    a = app(buffer_bytes=400, window=1)
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    send_all(h, [sock], 20)
    group = h.relay.state_of("1").hub.groups["default"]
    assert group.pending_bytes <= 400 and group.dropped > 0
    _, out = h.call(pipe, "ack", {"seq": 1}, reply=False)
    assert notices(out, pipe)[0]["event"] == "gap"


def test_legacy_pipes_get_everything_beside_a_group() -> None:
    """A 0.2 pipe receives every event while a 1.0 group shares the same events between members."""
    a = app()
    h = Harness([a])
    legacy, _ = h.open_pipe(a, version="0.2")
    h.call(legacy, "subscribe", {"events": ["socket_message"]})
    pipes = [member(h, a), member(h, a)]
    sockets = [h.open_socket()[0] for _ in range(10)]
    out = send_all(h, sockets, 3)
    assert len(messages(out, legacy)) == 30
    assert all("seq" not in n for n in messages(out, legacy))
    assert sum(len(messages(out, p)) for p in pipes) == 30


def test_every_group_gets_its_copy() -> None:
    """Two groups of one app each receive every event once."""
    a = app()
    h = Harness([a])
    left = member(h, a, group="left")
    right = member(h, a, group="right")
    sock, _ = h.open_socket()
    out = send_all(h, [sock], 4)
    assert len(messages(out, left)) == len(messages(out, right)) == 4


def test_takeover_by_a_reconnecting_session_closes_the_old_connection() -> None:
    """A pipe resuming a session still attached elsewhere takes it over; the old connection is closed."""
    from pipe_proto import Close

    a = app()
    h = Harness([a])
    old = member(h, a)
    session = h.relay.state_of("1").hub.by_pipe[old].id
    new, out = h.open_pipe(a, session=session, last_seq=0)
    # 4203, not 4200: a client told to reconnect and resume would take the session back.
    assert Close(old, 4203, "session resumed on another connection") in out
    assert notices(out, new)[0]["data"]["resumed"] is True
    sock, _ = h.open_socket()
    out = send_all(h, [sock], 1)
    assert len(messages(out, new)) == 1 and messages(out, old) == []


@pytest.mark.parametrize("change", [{"group": "other"}, {"version": "0.2"}], ids=["other group", "0.2"])
def test_a_pipe_refused_the_resume_does_not_close_the_session_holder(change: dict[str, str]) -> None:
    """Naming a live session it cannot resume (another group's, or as a 0.2 pipe) gets a new session
    and leaves the holder's connection alone."""
    from pipe_proto import Close

    a = app()
    h = Harness([a])
    holder = member(h, a)
    session = h.relay.state_of("1").hub.by_pipe[holder].id
    params: dict[str, object] = {"session": session, "last_seq": 0, **change}
    _, out = h.open_pipe(a, **params)
    assert not any(isinstance(o, Close) and o.target == holder for o in out)
    assert h.relay.state_of("1").hub.by_pipe[holder].id == session


def test_status_counts_per_group() -> None:
    """The relay reports members, pending, in flight, delivered, redelivered and dropped per group."""
    a = app()
    h = Harness([a])
    member(h, a)
    sock, _ = h.open_socket()
    send_all(h, [sock], 2)
    stats = json.loads(json.dumps(h.relay.stats()))["apps"]["1"]["pipe"]
    assert stats["groups"]["default"] == {
        "members": 1,
        "sessions": 1,
        "pending": 0,
        "pending_bytes": 0,
        "in_flight": 2,
        "delivered": 2,
        "redelivered": 0,
        "dropped": 0,
    }


def test_drops_are_reported_to_the_live_member_at_once_and_add_up() -> None:
    """Group of two, one leaves (grace), the other stays and keeps up: every drop reaches it as a gap, exactly."""
    a = app(window=5, buffer_events=20, resume_grace=10.0)
    h = Harness([a])
    gone, live = member(h, a), member(h, a)
    sockets = [h.open_socket()[0] for _ in range(10)]
    h.relay.pipe_closed(gone, h.now)
    got: list[dict[str, Any]] = []

    def take(out: list[Any]) -> None:
        new = notices(out, live)
        while new:
            got.extend(new)
            _, more = h.call(live, "ack", {"seq": max(n["seq"] for n in got)}, reply=False)
            new = notices(more, live)

    produced = 0
    for _ in range(10):
        for sock in sockets:
            take(h.socket_send(sock, "msg", {"n": produced}))
            produced += 1
    gaps_in_grace = sum(n["data"]["dropped"] for n in got if n["event"] == "gap")
    assert gaps_in_grace > 0  # told while the other member's grace runs, not after
    take(h.tick(10.1))  # the grace ends: what waited for the gone member moves here
    messages = {n["data"]["data"]["n"] for n in got if n["event"] == "socket_message"}
    dropped = sum(n["data"]["dropped"] for n in got if n["event"] == "gap")
    assert len(messages) + dropped == produced
    assert dropped == h.relay.stats()["apps"]["1"]["pipe"]["groups"]["default"]["dropped"]


def test_a_resumed_session_hears_of_drops_no_live_member_could() -> None:
    """With nobody connected, drops wait for the next member to connect, a resuming one included."""
    a = app(buffer_events=3)
    h = Harness([a])
    pipe = member(h, a)
    session = h.relay.state_of("1").hub.by_pipe[pipe].id
    sock, _ = h.open_socket()
    h.relay.pipe_closed(pipe, h.now)
    send_all(h, [sock], 5)
    again, out = h.open_pipe(a, session=session, last_seq=0)
    established, gap = notices(out, again)[:2]
    assert established["data"]["resumed"] is True and established["data"]["gap"] == 2
    assert gap["data"] == {"dropped": 2}


def test_leave_ends_the_session_at_once_and_moves_its_events() -> None:
    """leave replies {}, closes the pipe with 1000 and hands its sockets to the others without the grace."""
    from pipe_proto import Close

    a = app(window=3)
    h = Harness([a])
    leaving, staying = member(h, a), member(h, a)
    hub = h.relay.state_of("1").hub
    session = hub.by_pipe[leaving].id
    sockets = [h.open_socket()[0] for _ in range(10)]
    h.now += 1  # membership settled before the messages: moving them later keeps their order

    def take(out: list[Any]) -> list[dict[str, Any]]:
        """What `staying` gets, acking everything until nothing more comes."""
        got = new = messages(out, staying)
        while new:
            _, more = h.call(staying, "ack", {"seq": new[-1]["seq"]}, reply=False)
            new = messages(more, staying)
            got = got + new
        return got

    out = send_all(h, sockets, 2)
    take(out)
    in_flight = [n["data"]["data"]["n"] for n in messages(out, leaving)]
    theirs = {n["data"]["socket_id"] for n in messages(out, leaving)}
    waiting = len(hub.sessions[session].waiting)
    assert len(in_flight) == 3 and waiting
    reply, out = h.call(leaving, "leave")
    assert reply["result"] == {} and reply["error"] is None
    assert out[-1] == Close(leaving, 1000, "left the group")
    assert session not in hub.sessions and leaving not in hub.by_pipe
    moved = [(n["data"]["data"]["n"], n.get("redelivered", False)) for n in take(out)]
    # What it had been sent comes marked; what it had never seen is not.
    assert [n for n, marked in moved if marked] == in_flight
    assert len([n for n, marked in moved if not marked]) == waiting
    later = take(send_all(h, sockets, 1))  # every socket is here now, nothing waits for a grace
    assert {n["data"]["socket_id"] for n in later} == set(sockets) and theirs
    assert h.relay.pipe_closed(leaving, h.now) == []


def test_leave_cannot_be_batched_and_works_for_0_2() -> None:
    """leave inside a batch is refused (4220); a 0.2 pipe may leave too."""
    from pipe_proto import Close

    h = Harness([app()])
    pipe = member(h, app())
    reply, _ = h.call(pipe, "batch", {"calls": [{"method": "leave", "params": {}}]})
    assert reply["result"][0]["error"]["code"] == 4220
    assert pipe in h.relay.state_of("1").hub.by_pipe
    legacy, _ = h.open_pipe(app(), version="0.2")
    reply, out = h.call(legacy, "leave")
    assert reply["result"] == {} and Close(legacy, 1000, "left the group") in out


def test_in_flight_bytes_are_bounded_by_window_bytes() -> None:
    """A member gets no more events while what it holds unacked reaches window_bytes (one always goes)."""
    a = app(window=100, window_bytes=1)
    h = Harness([a])
    pipe = member(h, a)
    sock, _ = h.open_socket()
    out = send_all(h, [sock], 3)
    assert [n["seq"] for n in messages(out, pipe)] == [1]
    _, out = h.call(pipe, "ack", {"seq": 1}, reply=False)
    assert [n["seq"] for n in messages(out, pipe)] == [2]


def test_pending_bytes_count_the_text_held_and_its_records() -> None:
    """An unsent event counts its notification data as JSON text plus a fixed overhead for its records."""
    from pipe_proto.relay.pipes import EVENT_OVERHEAD

    a = app(window=1)
    h = Harness([a])
    member(h, a)
    sock, _ = h.open_socket()
    send_all(h, [sock], 2)  # the first is in flight, the second waits
    data = {"socket_id": sock, "event": "msg", "data": {"n": 1}}
    group = h.relay.state_of("1").hub.groups["default"]
    assert group.pending_bytes == len(json.dumps(data, separators=(",", ":"))) + EVENT_OVERHEAD


def test_drops_are_told_to_a_member_that_takes_that_type_not_to_one_that_only_sends() -> None:
    """A pipe of the group subscribed to nothing (it only sends) is not the one told of lost messages."""
    a = app(window=100, buffer_events=5)
    h = Harness([a])
    sender, _ = h.open_pipe(a)  # first in the group, subscribed to nothing
    gone, worker = member(h, a), member(h, a)
    sockets = [h.open_socket()[0] for _ in range(10)]
    h.relay.pipe_closed(gone, h.now)
    out = send_all(h, sockets, 3)
    gaps = [n for n in notices(out, worker) if n["event"] == "gap"]
    assert gaps and notices(out, sender) == []
    assert sum(n["data"]["dropped"] for n in gaps) == h.relay.state_of("1").hub.dropped
