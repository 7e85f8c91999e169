"""Pipes across a cluster: groups spanning nodes, sessions kept in Redis.

Theory of operation (pipe-protocol.md 6, docs/cluster.md). On one relay a
:class:`~pipe_proto.relay.pipes.PipeHub` holds every group, session and
queue. In a cluster they live in Redis, changed by the cluster script's pipe
operations, so that any node can take over a session whose node died:

* the members of every group (sessions, their types, the node holding each
  one's pipe) are one hash per app; every node keeps a copy, updated by the
  script's announcements ("pm"), for what must be answered at once (whether
  anyone takes an event type, who holds ``auth``, how many pipes);
* an event produced on any node goes to the script (``pp``), which picks
  each group's member by rendezvous hashing over the whole group, appends it
  to that member's queue (a Redis stream), keeps the group within its
  bounds (dropping unsent control notifications first) and tells the node
  holding the member's pipe ("pn");
* that node reads what is owed (``pread``: seqs are given in Redis, so a
  resume anywhere gives the same ones) while the member's window has room,
  and passes acks on (``pack``); both tell Redis how much room the window
  has left (the session's credit), and while there is, the script sends new
  events to the node with their seqs as it queues them ("pe"), saving the
  read's round trip;
* a pipe that goes away leaves its session in its resume grace (``pdetach``;
  a dead node's, when it is reaped); a resume on any node re-reads what was
  in flight, from the acked point, with the same seqs; ``leave`` and the end
  of a grace move the session's events to the members that take them now
  (``pleave``, ``pexpire``), marked ``redelivered`` as on one relay.

0.2 pipes keep nothing: an event is published straight to the node holding
the pipe ("pl") and written there, or lost.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import jsontext
from ..apps import App
from ..errors import PipeCode
from ..pipe.codec import PipeFrameError, notice_data
from ..pipe.events import Notice
from ..relay.later import Later
from ..relay.pipes import EVENT_OVERHEAD, MAX_GROUPS, notification_frame

if TYPE_CHECKING:
    from .directory import ClusterDirectory

__all__ = ["PP_FIELD", "PP_RECORD", "Attached", "ClusterHub", "Member"]

#: A ``pp`` call's events travel as one argument: records of fields, joined
#: by characters that no field can hold (names, ids, digits and JSON text,
#: which escapes every control character).
PP_FIELD, PP_RECORD = "\x1f", "\x1e"


class Member:
    """One session of the app's groups, as this node's copy knows it."""

    __slots__ = ("group", "node", "pipe", "types", "version")

    def __init__(self, group: str, version: str, types: frozenset[str], node: str, pipe: str) -> None:
        self.group = group
        self.version = version
        self.types = types
        self.node = node
        self.pipe = pipe

    @classmethod
    def from_json(cls, text: str) -> Member:
        data = jsontext.loads(text)
        return cls(data["g"], data["v"], frozenset(str(data["t"]).split()), data["n"], data["p"])


class Attached:
    """A session whose pipe is connected to this node (``Pipe.session`` in the relay)."""

    __slots__ = (
        "group", "id", "inflight", "inflight_bytes", "last_seq", "more", "pipe", "reading", "types", "version",
        "waiting",
    )

    def __init__(self, session_id: str, pipe: str, version: str, group: str) -> None:
        self.id = session_id
        self.pipe = pipe
        self.version = version
        self.group = group
        #: Its types as this node last set them (to put it back after Redis lost it).
        self.types = ""
        #: The last seq written to its pipe.
        self.last_seq = 0
        #: Sent and not acked: (seq, size).
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        #: A read is on its way; ``more``: read again after it (something new came).
        self.reading = False
        self.more = True
        #: Events come (read or pushed), not written yet, by seq: (size, frame).
        self.waiting: dict[int, tuple[int, str]] = {}

    @property
    def seen(self) -> int:
        """The last seq this node has with every one before it, written or waiting."""
        seq = self.last_seq
        while seq + 1 in self.waiting:
            seq += 1
        return seq


class ClusterHub:
    """The pipe hub of one app on a cluster node (the interface of :class:`~pipe_proto.relay.pipes.PipeHub`)."""

    def __init__(self, app: App, send: Callable[[str, str], None], directory: ClusterDirectory) -> None:
        self.app = app
        self._send = send
        self.directory = directory
        #: The cluster's members, by session id (this node's copy).
        self.members: dict[str, Member] = {}
        self.type_counts: dict[str, int] = {}
        # The same, of 0.2 members only: they get the 2011 frame too (see publish).
        self._legacy_counts: dict[str, int] = {}
        self.by_pipe: dict[str, Attached] = {}
        self._by_session: dict[str, Attached] = {}
        #: Pipes whose attach was asked and not answered yet: whether the
        #: pipe went away meanwhile, and what to call if it cannot be.
        self._attaching: dict[str, tuple[bool, Callable[[str], None]]] = {}
        self.unrouted = 0
        self.dropped = 0

    # ----------------------------------------------------------- the copy

    def learn(self, session_id: str, text: str) -> None:
        """An announcement of the cluster: a member changed (``text``), or ended (empty)."""
        old = self.members.pop(session_id, None)
        if old is not None:
            self._count(old, -1)
        if text:
            member = self.members[session_id] = Member.from_json(text)
            self._count(member, 1)

    def _count(self, member: Member, change: int) -> None:
        counts = (self.type_counts, self._legacy_counts) if member.version == "0.2" else (self.type_counts,)
        for type in member.types:
            for table in counts:
                table[type] = table.get(type, 0) + change

    def reset(self, members: dict[str, str]) -> None:
        """The whole copy anew (after Redis came back)."""
        self.members.clear()
        self.type_counts.clear()
        self._legacy_counts.clear()
        for session_id, text in members.items():
            self.learn(session_id, text)

    # ------------------------------------------------------------- queries

    def wants(self, type: str) -> bool:
        """Whether any group of the cluster takes ``type``."""
        return self.type_counts.get(type, 0) > 0

    def holder(self, type: str) -> str | None:
        """The group taking ``type`` (for ``auth``, the only one), if any."""
        for member in self.members.values():
            if type in member.types:
                return member.group
        return None

    @property
    def pipe_count(self) -> int:
        """Pipes connected to the cluster now."""
        return sum(1 for m in self.members.values() if m.node)

    @property
    def busy(self) -> bool:
        """Nothing here has timers: graces and buffers age in Redis."""
        return False

    # ---------------------------------------------------------- membership

    def attach(
        self,
        pipe_id: str,
        version: str,
        group: str,
        wanted_session: str | None,
        last_seq: int | None,
        now: float,
        *,
        new_session: Callable[[], str],
        taken_over: Callable[[str], None],
        attached: Callable[[Attached, bool, int, float], None],
        failed: Callable[[str], None],
    ) -> None:
        """As :meth:`PipeHub.attach <pipe_proto.relay.pipes.PipeHub.attach>`, answered once Redis did."""
        directory = self.directory
        if not directory.connected:
            failed("the cluster's Redis is unreachable; connect again")
            return
        self._attaching[pipe_id] = (False, failed)

        def answer(reply: Any, now: float) -> None:
            gone = self._attaching.pop(pipe_id, (True, failed))[0]
            if "error" in reply:
                failed(str(reply["error"]))
                return
            session = Attached(str(reply["session"]), pipe_id, version, group)
            session.types = str(reply.get("types") or "")
            # Replays go on from the acked point: the seq before the first it gets.
            session.last_seq = int(reply.get("seq") or 0)
            if gone:
                # The pipe went away before its answer: its session waits for a resume.
                self._call_detach(session)
                return
            self.by_pipe[pipe_id] = session
            self._by_session[session.id] = session
            attached(session, bool(reply["resumed"]), int(reply["gap"]), now)

        token = directory.expect(answer)
        directory.call(
            "pattach", self.app.id, pipe_id, version, group, new_session(), wanted_session or "",
            str(-1 if last_seq is None else last_seq), str(MAX_GROUPS), token,
        )

    def abandoned(self, pipe_id: str, now: float) -> bool:
        """A pipe went away before its attach was answered."""
        waiting = self._attaching.get(pipe_id)
        if waiting is not None:
            self._attaching[pipe_id] = (True, waiting[1])
            return True
        return False

    def start(self, session: Attached, now: float) -> None:
        """Send what the attached session is owed (replays first)."""
        session.more = True
        self._read(session)

    def leave(self, pipe_id: str, now: float, *, for_good: bool = False) -> None:
        """The pipe went away (its session waits for a resume), or left its group for good."""
        session = self.by_pipe.pop(pipe_id, None)
        if session is None:
            return
        self._by_session.pop(session.id, None)
        if for_good:
            settings = self.app.pipe
            self.directory.call(
                "pleave", self.app.id, session.id, pipe_id, str(settings.buffer_events), str(settings.buffer_bytes)
            )
        else:
            self._call_detach(session)

    def _call_detach(self, session: Attached) -> None:
        grace = str(int(self.app.pipe.resume_grace * 1000))
        self.directory.call("pdetach", self.app.id, session.id, session.pipe, grace)

    def taken_over(self, session_id: str, pipe_id: str) -> str | None:
        """Another node resumed this node's session: the pipe to close, if it is still here."""
        session = self.by_pipe.get(pipe_id)
        if session is None or session.id != session_id:
            return None
        del self.by_pipe[pipe_id]
        self._by_session.pop(session_id, None)
        return pipe_id

    def subscribe(self, session: Attached, types: tuple[str, ...], now: float) -> Later | None:
        """Add event types to a session; answered once the cluster checked ``auth`` is free (4230)."""
        done = Later()

        def answer(result: Any, now: float) -> None:
            text = result.decode() if isinstance(result, bytes) else str(result)
            if text.startswith("AUTH_HELD "):
                group = text.partition(" ")[2]
                message = f"auth is held by the group {group!r} of this app"
                done.fail(PipeFrameError(PipeCode.AUTH_HELD_ELSEWHERE, message))
            else:
                done.resolve({})

        session.types = " ".join(sorted(set(session.types.split()) | set(types)))
        self.directory.call("psub", self.app.id, session.id, " ".join(types), answer=answer)
        return done

    def unsubscribe(self, session: Attached, types: tuple[str, ...], now: float) -> None:
        """Remove event types from a session."""
        session.types = " ".join(sorted(set(session.types.split()) - set(types)))
        self.directory.call("punsub", self.app.id, session.id, " ".join(types))

    # ------------------------------------------------------------ delivery

    def arrive(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None:
        """An arrival (the cluster already cancelled quick returns): published."""
        self.publish(type, key, notice, now)

    def depart(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None:
        """A departure the cluster confirmed: published."""
        self.publish(type, key, notice, now)

    def publish(self, type: str, key: str, notice: Notice, now: float) -> int:
        """Give an event to every group of the cluster taking ``type`` (the script picks the members)."""
        if not self.wants(type):
            return 0
        if not self.directory.connected:
            self.directory.counters["lost_while_down"] += 1
            return 0
        data = jsontext.dumps(notice_data(notice, "1.0"))
        legacy = ""
        if self._legacy_counts.get(type, 0) > 0:
            legacy = notification_frame(notice.event, jsontext.dumps(notice_data(notice, "0.2")))
        settings = self.app.pipe
        event = PP_FIELD.join((type, key, notice.event, data, legacy, str(int(now * 1000))))
        self.directory.call("pp", self.app.id, str(settings.buffer_events), str(settings.buffer_bytes), event)
        return 1

    def notified(self, session_id: str) -> None:
        """Events wait for a session of this node ("pn")."""
        session = self._by_session.get(session_id)
        if session is not None:
            session.more = True
            self._read(session)

    def legacy(self, session_id: str, text: str) -> None:
        """A 0.2 notification for a pipe of this node ("pl")."""
        session = self._by_session.get(session_id)
        if session is not None:
            self._send(session.pipe, text)

    def pushed(self, session_id: str, body: str) -> None:
        """New events for a session of this node, sent as Redis queued them ("pe")."""
        session = self._by_session.get(session_id)
        if session is None:
            return  # Redis counts them as sent to a pipe that is gone: a resume sends them again
        for line in body.split("\n"):
            seq, born, name, data = line.split(" ", 3)
            self._came(session, int(seq), data, notification_frame(name, data, f',"seq":{seq},"time_ms":{born}'))
        self._write_waiting(session)

    @staticmethod
    def _came(session: Attached, seq: int, data: str, frame: str) -> None:
        if seq > session.last_seq:
            # (Seen again after an outage's rewind: the same seq is the same event.)
            session.waiting[seq] = (len(data) + EVENT_OVERHEAD, frame)

    def _write_waiting(self, session: Attached) -> None:
        # A read's answer (a call's result) and pushes (inbox messages) may
        # come in either order: the pipe gets seqs in order, each once. And
        # the room given for pushes may have been given twice over while
        # earlier pushes were on their way: the extra waits here until acks
        # make room, so the window is never exceeded.
        settings, waiting, inflight = self.app.pipe, session.waiting, session.inflight
        while waiting and len(inflight) < settings.window:
            entry = waiting.get(session.last_seq + 1)
            if entry is None or (inflight and session.inflight_bytes + entry[0] > settings.window_bytes):
                return
            session.last_seq += 1
            del waiting[session.last_seq]
            inflight.append((session.last_seq, entry[0]))
            session.inflight_bytes += entry[0]
            self._send(session.pipe, entry[1])

    def _room(self, session: Attached) -> tuple[int, int]:
        settings, waiting = self.app.pipe, session.waiting
        room_bytes = settings.window_bytes - session.inflight_bytes - sum(size for size, _ in waiting.values())
        return settings.window - len(session.inflight) - len(waiting), room_bytes

    def _read(self, session: Attached) -> None:
        if session.reading or not session.more or session.version == "0.2":
            return
        room, room_bytes = self._room(session)
        if room <= 0 or room_bytes <= 0:
            return  # acks make room, and read again
        session.reading = True
        session.more = False

        def answer(result: Any, now: float) -> None:
            session.reading = False
            if self._by_session.get(session.id) is not session or not result:
                return
            entries, more = result
            for raw_seq, name, raw_data, born, redelivered in entries:
                seq, data = int(raw_seq), _text(raw_data)
                extra = f',"seq":{seq},"time_ms":{int(born)}'
                if _text(redelivered) == "1":
                    extra += ',"redelivered":true'
                self._came(session, seq, data, notification_frame(_text(name), data, extra))
            self._write_waiting(session)
            if int(more):
                session.more = True
            self._read(session)

        self.directory.call(
            "pread", self.app.id, session.id, session.pipe, str(room), str(room_bytes), str(session.seen),
            answer=answer,
        )

    def ack(self, session: Attached, seq: int, now: float) -> None:
        """Cumulative ack: every event with seq <= ``seq`` is processed."""
        inflight = session.inflight
        while inflight and inflight[0][0] <= seq:
            session.inflight_bytes -= inflight.popleft()[1]
        self._write_waiting(session)
        room, room_bytes = self._room(session)
        self.directory.call("pack", self.app.id, session.id, str(seq), str(room), str(room_bytes), str(session.seen))
        self._read(session)

    # ------------------------------------------------------------- outages

    def down(self) -> None:
        """Redis went away: attaches will not be answered; reads stop until it is back."""
        attaching, self._attaching = self._attaching, {}
        for gone, failed in attaching.values():
            if not gone:
                failed("the cluster's Redis went away; connect again")
        for session in self._by_session.values():
            session.reading = False
            session.more = True
            # Read again after the rewind to the last seq written (restore).
            session.waiting.clear()

    def restore(self, now: float) -> None:
        """Redis is back: this node's sessions are put back if Redis lost them, then read again.

        A Redis that lost its data lost their queues too: a restored session
        goes on from the last seq this node wrote. One Redis kept is rewound
        to that seq, since a read it answered while the link went down never
        reached the pipe. Either way the pipe still holds, and will ack, what
        was written to it: its in-flight window stays as it is.
        """
        for session in self._by_session.values():
            self.directory.call(
                "prestore", self.app.id, session.id, session.pipe, session.version, session.group, session.types,
                str(session.last_seq),
            )
            session.more = True
            self._read(session)

    # -------------------------------------------------------------- timers

    def next_deadline(self) -> float:
        """Graces and buffer ages are kept in Redis (the directory's beat expires them)."""
        return math.inf

    def tick(self, now: float) -> list[Any]:
        """Nothing to do here (see :meth:`next_deadline`)."""
        return []

    def stats(self) -> dict[str, Any]:
        """This node's view: pipes of the cluster, members per group."""
        groups: dict[str, dict[str, int]] = {}
        for member in self.members.values():
            group = groups.setdefault(member.group, {"members": 0, "sessions": 0, "here": 0})
            group["sessions"] += 1
            group["members"] += bool(member.node)
        for session in self.by_pipe.values():
            known = self.members.get(session.id)
            if known is not None:
                groups[known.group]["here"] += 1
        return {"pipes": self.pipe_count, "unrouted": self.unrouted, "dropped": self.dropped, "groups": groups}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
