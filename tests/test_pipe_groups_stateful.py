"""Random interleavings of sockets and pipes against the core, with delivery invariants.

Sockets connect, send and disconnect; pipes join the group, ack, crash,
resume and time out, on a fake clock. After every step:

* nothing vanishes: every message the group took is acked by some member,
  still held by the relay (in flight, waiting or buffered), or counted as
  dropped, and exactly one of these;
* a session sees each seq at most with one message (replays repeat it);
* per socket, the unmarked (not ``redelivered``) messages a session gets are
  in the order the socket sent them;
* every drop is reported exactly once: acked ``gap`` reports, unacked ones
  and drops not yet reported add up to the relay's count;
* no session has more than ``window`` messages in flight;
* the relay holds at most ``buffer_events`` unsent messages per group.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pipe_proto import App, Close, PipeSettings, Probe, Send
from pipe_proto.relay.outputs import Output
from tests.pipe_helpers import Harness

WINDOW, BUFFER, GRACE = 3, 12, 10.0
APP = App(
    id="1",
    key="app-key",
    secret="app-secret",
    pipe=PipeSettings(window=WINDOW, buffer_events=BUFFER, resume_grace=GRACE, buffer_ttl=30.0),
)


class SessionModel:
    def __init__(self) -> None:
        self.by_seq: dict[int, int] = {}
        self.gaps: dict[int, int] = {}
        self.acked = 0
        self.last_plain: dict[str, int] = {}


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness([APP])
        self.hub = self.h.relay.state_of("1").hub
        self.sockets: list[str] = []
        self.pipes: dict[str, str] = {}  # pipe id -> session id
        self.sessions: dict[str, SessionModel] = {}
        self.produced: set[int] = set()
        self.acked: set[int] = set()
        self.gaps_acked = 0
        self.counter = 0

    # ------------------------------------------------------------ plumbing

    def route(self, outputs: list[Output]) -> None:
        for output in outputs:
            if isinstance(output, Close):
                # The relay closes silent sockets (heartbeat) and pipes itself.
                self.pipes.pop(output.target, None)
                if output.target in self.sockets:
                    self.sockets.remove(output.target)
            if isinstance(output, Probe) and output.target in self.pipes:
                # A live backend answers pings (its WebSocket library does).
                self.h.relay.pipe_heard(output.target, self.h.now)
            if not isinstance(output, Send):
                continue
            for target in output.targets:
                session_id = self.pipes.get(target)
                if session_id is None:
                    continue
                frame = json.loads(output.text)
                result = frame.get("result")
                if frame.get("id") is not None or not isinstance(result, dict):
                    continue
                if result["event"] == "connection_established":
                    continue
                model = self.sessions[session_id]
                seq = result["seq"]
                n = result["data"]["data"]["n"] if result["event"] == "socket_message" else -seq
                replay = seq in model.by_seq
                assert model.by_seq.setdefault(seq, n) == n, "one seq, two messages"
                if result["event"] == "gap":
                    model.gaps[seq] = result["data"]["dropped"]
                if result["event"] == "socket_message" and not result.get("redelivered") and not replay:
                    sock = result["data"]["socket_id"]
                    assert model.last_plain.get(sock, -1) <= n, "unmarked messages out of order"
                    model.last_plain[sock] = n

    def join(self, session: str | None = None, last_seq: int | None = None) -> None:
        params: dict[str, Any] = {}
        if session is not None:
            params = {"session": session, "last_seq": last_seq}
        pipe, out = self.h.open_pipe(APP, **params)
        established = json.loads(next(o.text for o in out if isinstance(o, Send) and pipe in o.targets))
        session_id = established["result"]["data"]["session"]
        if not established["result"]["data"]["resumed"]:
            self.sessions[session_id] = SessionModel()
        self.pipes[pipe] = session_id
        self.route(out)
        if not established["result"]["data"]["resumed"]:
            _, out = self.h.call(pipe, "subscribe", {"events": ["socket_message"]})
            self.route(out)

    # --------------------------------------------------------------- rules

    @precondition(lambda self: len(self.sockets) < 4)
    @rule()
    def open_socket(self) -> None:
        sock, out = self.h.open_socket()
        self.sockets.append(sock)
        self.route(out)

    @precondition(lambda self: self.sockets)
    @rule(index=st.integers(0, 3), count=st.integers(1, 6))
    def send(self, index: int, count: int) -> None:
        sock = self.sockets[index % len(self.sockets)]
        for _ in range(count):
            self.counter += 1
            taken = self.hub.wants("socket_message")
            out = self.h.socket_send(sock, "msg", {"n": self.counter})
            refused = any(isinstance(o, Send) and sock in o.targets and "pusher:error" in o.text for o in out)
            if taken and not refused:  # refused: over the back channel's rate limit
                self.produced.add(self.counter)
            self.route(out)

    @precondition(lambda self: self.sockets)
    @rule(index=st.integers(0, 3))
    def close_socket(self, index: int) -> None:
        sock = self.sockets.pop(index % len(self.sockets))
        self.route(self.h.relay.socket_closed(sock, self.h.now))

    @precondition(lambda self: len(self.pipes) < 3)
    @rule()
    def new_member(self) -> None:
        self.join()

    @precondition(lambda self: self.pipes)
    @rule(index=st.integers(0, 2), upto=st.integers(0, 20))
    def ack(self, index: int, upto: int) -> None:
        pipe = sorted(self.pipes)[index % len(self.pipes)]
        model = self.sessions[self.pipes[pipe]]
        seqs = sorted(s for s in model.by_seq if s > model.acked)
        if not seqs:
            return
        seq = seqs[min(upto, len(seqs) - 1)]
        session = self.hub.sessions[self.pipes[pipe]]
        in_flight = {p.seq for p in (*session.inflight, *session.replay)}
        for s in range(model.acked + 1, seq + 1):
            n = model.by_seq.get(s)
            if s in in_flight and n is not None and n > 0:
                self.acked.add(n)
            if s in in_flight:
                self.gaps_acked += model.gaps.get(s, 0)
        model.acked = seq
        _, out = self.h.call(pipe, "ack", {"seq": seq}, reply=False)
        self.route(out)

    @precondition(lambda self: self.pipes)
    @rule(index=st.integers(0, 2))
    def crash(self, index: int) -> None:
        pipe = sorted(self.pipes)[index % len(self.pipes)]
        del self.pipes[pipe]
        self.route(self.h.relay.pipe_closed(pipe, self.h.now))

    @precondition(lambda self: self.pipes)
    @rule(index=st.integers(0, 2))
    def leave(self, index: int) -> None:
        pipe = sorted(self.pipes)[index % len(self.pipes)]
        del self.pipes[pipe]
        _, out = self.h.call(pipe, "leave")
        self.route(out)

    @precondition(lambda self: any(s.pipe is None for s in self.hub.sessions.values()))
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        waiting = sorted(s.id for s in self.hub.sessions.values() if s.pipe is None)
        session_id = data.draw(st.sampled_from(waiting))
        self.join(session_id, self.sessions[session_id].acked)

    @rule(seconds=st.sampled_from([0.5, 3.0, GRACE + 0.1, 31.0]))
    def wait(self, seconds: float) -> None:
        self.route(self.h.tick(seconds))

    # ---------------------------------------------------------- invariants

    def held(self) -> list[int]:
        items: list[int] = []
        for group in self.hub.groups.values():
            queues = [group.buffer]
            for session in group.sessions.values():
                queues += [session.inflight, session.replay, session.waiting]
            for queue in queues:
                for pending in queue:
                    if pending.event.type == "socket_message":
                        items.append(json.loads(pending.event.text)["data"]["n"])
        return items

    @invariant()
    def nothing_vanishes(self) -> None:
        held = self.held()
        assert len(held) == len(set(held)), "a message is held twice"
        assert not (set(held) & self.acked), "an acked message is still held"
        assert set(held) | self.acked <= self.produced
        assert len(self.produced) == len(self.acked) + len(held) + self.hub.dropped

    @invariant()
    def drops_add_up(self) -> None:
        in_flight = sum(
            p.event.dropped for s in self.hub.sessions.values() for p in (*s.inflight, *s.replay) if p.event.type == "gap"
        )
        unreported = sum(g.unreported for g in self.hub.groups.values())
        unreported += sum(s.unreported for s in self.hub.sessions.values())
        assert self.gaps_acked + in_flight + unreported == self.hub.dropped

    @invariant()
    def windows_and_bounds(self) -> None:
        for session in self.hub.sessions.values():
            assert len(session.inflight) <= WINDOW
            assert len(session.inflight) + len(session.replay) <= WINDOW
        for group in self.hub.groups.values():
            assert group.pending_count <= BUFFER
            unsent = len(group.buffer) + sum(len(s.waiting) for s in group.sessions.values())
            assert unsent == group.pending_count


TestGroups = GroupMachine.TestCase
TestGroups.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
