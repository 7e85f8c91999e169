"""Pipe groups: who receives which event, in what order, until acked.

Theory of operation (pipe-protocol.md 6).

Every pipe belongs to a *group* of its app: a 1.0 pipe to the group it names
(``default`` unless told), a 0.2 pipe to a group of its own. An event of type
T (``socket_message``, ``auth``, ...) goes to every group that holds T, a
group holding T while any of its sessions subscribed to T. Within a group it
goes to one *session*, chosen by rendezvous hashing of the event's key (the
socket id, or the channel name) over the sessions subscribed to T: all events
of one socket reach the same process, in order, and when a member comes or
goes only the keys of that member move. Departures (``channel_vacated``,
``member_removed``) wait ``LEAVE_DELAY`` in :meth:`PipeHub.depart` and a quick
return cancels both (pipe-protocol.md 3).

A session queues what it was given. A connected session has at most
``window`` events and ``window_bytes`` in flight (sent, not acked); the rest
wait, and acks make room (backpressure, no loss). Sequence numbers are given
when an event is sent, so they run from 1 without gaps even when unsent
events are dropped. When a 1.0 pipe disconnects its session stays for
``resume_grace``; events for its keys keep queueing. A pipe reconnecting with
that session and ``last_seq`` gets everything after ``last_seq`` again, with
the same seq numbers. When the grace ends, the session's events move to the
remaining sessions marked ``redelivered`` (sent or not: the new owner may
already hold newer events of those keys, so order is only promised for
unmarked events), or to the group buffer when none remain. A member that
calls ``leave`` ends its session at once: what it had been sent moves marked,
what it never saw moves unmarked unless keys moved since it was produced. A
group without sessions receives nothing new.

Memory is bounded per group: waiting and buffered events together stay
within ``buffer_events`` and ``buffer_bytes``, counted as held (each event's
JSON text plus a fixed overhead; parsed values are never kept). When a bound
is reached the oldest unsent control notification (channel existence,
presence) is dropped, and only when there is none the oldest unsent event:
a flood of notifications never costs a message. Buffered events live at most
``buffer_ttl``. Every drop is counted and reported at once to a connected
member (the session that lost the event if connected, else the group's first
connected member subscribed to its type), or to the next member to connect, as a ``gap``
notification (and ``connection_established.gap``). 0.2 pipes have neither
acks nor sessions: an event counts as delivered once written, as in 2011.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .. import jsontext
from ..apps import App
from ..departures import LEAVE_DELAY, Departures
from ..errors import PipeCode
from ..pipe.codec import PipeFrameError, notice_data
from ..pipe.events import Notice
from .later import Later

__all__ = [
    "CONTROL_TYPES",
    "EVENT_OVERHEAD",
    "MAX_GROUPS",
    "TAKEN_OVER",
    "Group",
    "Hub",
    "PipeHub",
    "Session",
    "notification_frame",
    "rendezvous_score",
]

#: Groups an app may have at once (sessions of all groups count against
#: ``max_pipes`` too); groups remembered only for unreported drops included.
MAX_GROUPS = 256


#: Event types whose notifications describe state the REST API can tell
#: again (``GET channels``, ``GET channels/{name}/users``): dropped first when
#: a group's bounds are reached, so a flood of them never costs a message.
CONTROL_TYPES = frozenset({"channel_existence", "presence"})
#: Bytes counted for each event held, besides its text: its records here.
EVENT_OVERHEAD = 320
#: How a connection whose session another one resumed is closed: a distinct
#: code, so that its client does not resume the session back (the two would
#: take it from each other for ever) but starts a fresh one.
TAKEN_OVER = (PipeCode.SESSION_TAKEN_OVER, "session resumed on another connection")


def notification_frame(name: str, data: str, extra: str = "") -> str:
    """A notification frame around ``data``, already JSON (``extra``: more members of ``result``)."""
    return '{"id":null,"error":null,"result":{"event":"' + name + '","data":' + data + extra + "}}"


class _Event:
    """One event as produced, shared by every 1.0 group that receives it.

    Held as the JSON text of its notification's ``data`` (never as parsed
    values, which can take twenty times the memory), and counted as ``size``
    bytes: that text plus :data:`EVENT_OVERHEAD`.
    """

    __slots__ = ("born", "dropped", "key", "name", "size", "text", "type")

    def __init__(self, type: str, key: str, name: str, text: str, now: float, dropped: int = 0) -> None:
        self.type = type
        self.key = key
        #: The notification's name (``socket_message``, ``channel_vacated``, ``gap`` ...).
        self.name = name
        self.text = text
        self.born = now
        #: For a ``gap`` report: how many drops it tells of.
        self.dropped = dropped
        # The text is ASCII (pipe_proto.jsontext escapes the rest): one byte a character.
        self.size = len(text) + EVENT_OVERHEAD


class _Pending:
    """An event in one session's queue: its seq once sent, and whether it is a redelivery."""

    __slots__ = ("event", "order", "redelivered", "seq")

    def __init__(self, event: _Event, redelivered: bool = False) -> None:
        self.event = event
        self.seq = 0
        self.redelivered = redelivered
        #: Arrival order in the queue holding it.
        self.order = 0


class _Queue:
    """Unsent events in arrival order, control notifications apart (they are dropped first)."""

    __slots__ = ("_next", "control", "data")

    def __init__(self) -> None:
        self.control: deque[_Pending] = deque()
        self.data: deque[_Pending] = deque()
        self._next = 0

    def append(self, pending: _Pending) -> None:
        pending.order = self._next
        self._next += 1
        (self.control if pending.event.type in CONTROL_TYPES else self.data).append(pending)

    def popleft(self) -> _Pending:
        """The first event to arrive of those here."""
        control, data = self.control, self.data
        if control and (not data or control[0].order < data[0].order):
            return control.popleft()
        return data.popleft()

    def oldest(self) -> deque[_Pending] | None:
        """The line whose first event was born first, if any."""
        control, data = self.control, self.data
        if control and (not data or control[0].event.born < data[0].event.born):
            return control
        return data or None

    def clear(self) -> None:
        self.control.clear()
        self.data.clear()

    def __iter__(self) -> Iterator[_Pending]:
        return heapq.merge(self.control, self.data, key=lambda p: p.order)

    def __len__(self) -> int:
        return len(self.control) + len(self.data)


def rendezvous_score(key: str, session_id: str) -> int:
    """The weight of ``session_id`` for events of ``key``: the highest-scoring member takes them.

    The first 52 bits of SHA-1 over ``key``, a NUL and the session id: the
    cluster's script computes the same in Lua (whose numbers hold 53 bits),
    so every node, and this relay alone, route alike.
    """
    return int(hashlib.sha1(f"{key}\x00{session_id}".encode()).hexdigest()[:13], 16)


class Session:
    """One member of a group: a pipe's place in it, kept across reconnects (1.0)."""

    __slots__ = (
        "acked",
        "grace_until",
        "group",
        "id",
        "inflight",
        "inflight_bytes",
        "next_seq",
        "pipe",
        "replay",
        "types",
        "unreported",
        "version",
        "waiting",
    )

    def __init__(self, session_id: str, group: Group, version: str) -> None:
        self.id = session_id
        self.group = group
        self.version = version
        self.pipe: str | None = None
        self.types: set[str] = set()
        self.next_seq = 1
        self.acked = 0
        self.inflight: deque[_Pending] = deque()
        #: The ``size`` of the events in ``inflight``.
        self.inflight_bytes = 0
        #: Sent before a reconnect and not acked: sent again first after a resume.
        self.replay: deque[_Pending] = deque()
        self.waiting = _Queue()
        self.grace_until = math.inf
        #: Drops to report to this session in its next ``gap``.
        self.unreported = 0

    @property
    def legacy(self) -> bool:
        """A 0.2 session: no seq, no acks, no resume."""
        return self.version == "0.2"


def _resumes(session: Session, version: str, group: str) -> bool:
    # Whether a pipe of ``version`` in ``group`` asking for ``session`` resumes it (1.0 on both sides, same group).
    return not session.legacy and version != "0.2" and session.group.name == group


class Group:
    """The sessions of one app sharing work, and the events nobody holds."""

    __slots__ = (
        "buffer",
        "delivered",
        "dropped",
        "name",
        "pending_bytes",
        "pending_count",
        "redelivered",
        "routed_at",
        "sessions",
        "unreported",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions: dict[str, Session] = {}
        self.buffer = _Queue()
        #: Unsent events (sessions' waiting queues and the buffer): count, bytes.
        self.pending_count = 0
        self.pending_bytes = 0
        #: Drops no live member could be told of: for the next to connect.
        self.unreported = 0
        self.delivered = 0
        self.redelivered = 0
        self.dropped = 0
        #: When the sessions holding some type last changed (keys may have moved).
        self.routed_at = -math.inf

    def holds(self, type: str) -> bool:
        """Whether any session of the group subscribed to ``type``."""
        return any(type in s.types for s in self.sessions.values())

    def owner(self, type: str, key: str) -> Session | None:
        """The session that receives events of ``type`` for ``key``."""
        holders = [session for session in self.sessions.values() if type in session.types]
        if len(holders) <= 1:
            return holders[0] if holders else None  # the usual group of one: nothing to weigh
        best: Session | None = None
        best_score = -1
        for session in holders:
            score = rendezvous_score(key, session.id)
            if score > best_score:
                best, best_score = session, score
        return best


class Hub(Protocol):
    """What the relay's rules ask of an app's pipes: :class:`PipeHub` on one relay,
    :class:`pipe_proto.cluster.ClusterHub` on a cluster node. Sessions are opaque
    to the rules (they have an ``id``)."""

    #: The app's settings (replaced when the configuration is reloaded).
    app: App
    unrouted: int

    def wants(self, type: str) -> bool: ...
    def holder(self, type: str) -> object | None: ...
    @property
    def pipe_count(self) -> int: ...
    @property
    def busy(self) -> bool: ...
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
        attached: Callable[[Any, bool, int, float], None],
        failed: Callable[[str], None],
    ) -> None: ...
    def abandoned(self, pipe_id: str, now: float) -> bool: ...
    def start(self, session: Any, now: float) -> None: ...
    def leave(self, pipe_id: str, now: float, *, for_good: bool = False) -> object: ...
    def subscribe(self, session: Any, types: tuple[str, ...], now: float) -> Later | None: ...
    def unsubscribe(self, session: Any, types: tuple[str, ...], now: float) -> None: ...
    def ack(self, session: Any, seq: int, now: float) -> None: ...
    def arrive(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None: ...
    def depart(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None: ...
    def publish(self, type: str, key: str, notice: Notice, now: float) -> int: ...
    def next_deadline(self) -> float: ...
    def tick(self, now: float) -> object: ...
    def stats(self) -> dict[str, Any]: ...


class PipeHub:
    """The pipes of one app: groups, sessions and what they are owed.

    Args:
        app: the app.
        send: called with a pipe id and a frame's text for every frame to send.
    """

    def __init__(self, app: App, send: Callable[[str, str], None]) -> None:
        self.app = app
        self._send = send
        self.groups: dict[str, Group] = {}
        self.sessions: dict[str, Session] = {}
        self.by_pipe: dict[str, Session] = {}
        self.type_counts: dict[str, int] = {}
        #: Back-channel messages dropped because no pipe wanted them.
        self.unrouted = 0
        #: Events dropped by any group of this app since the start (bounds, age).
        self.dropped = 0
        #: Departures waiting for a quick return: (type, key, notice, when it happened).
        self._held: Departures[tuple[str, str, Notice, float]] = Departures(LEAVE_DELAY)

    # ------------------------------------------------------------- queries

    def wants(self, type: str) -> bool:
        """Whether any group holds ``type`` (cheap: checked before building events)."""
        return self.type_counts.get(type, 0) > 0

    def holder(self, type: str) -> Group | None:
        """The first group holding ``type`` (for ``auth``, the only one)."""
        for group in self.groups.values():
            if group.holds(type):
                return group
        return None

    @property
    def pipe_count(self) -> int:
        """Pipes connected now."""
        return len(self.by_pipe)

    @property
    def busy(self) -> bool:
        """Whether anything is held here (sessions or groups): timers may be due."""
        return bool(self.sessions or self.groups)

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
        attached: Callable[[Session, bool, int, float], None],
        failed: Callable[[str], None],
    ) -> None:
        """Attach a pipe to its session (resumed, or new) and call ``attached(session, resumed, gap, now)``.

        ``taken_over(old_pipe)``: the session was still attached to another
        connection, which must go (the process came back before its old
        connection was seen to die). ``failed(message)``: no session (too
        many groups). Here everything is answered at once; the same call
        answers later in a cluster (:class:`pipe_proto.cluster.ClusterHub`).
        """
        previous = self.sessions.get(wanted_session or "")
        if previous is not None and previous.pipe is not None and _resumes(previous, version, group):
            taken_over(previous.pipe)
        try:
            session, resumed, gap = self.join(pipe_id, version, group, new_session(), wanted_session, last_seq, now)
        except PipeFrameError as exc:
            failed(exc.message)
            return
        attached(session, resumed, gap, now)

    def abandoned(self, pipe_id: str, now: float) -> bool:
        """A pipe went away before :meth:`attach` answered (never here: it answers at once)."""
        return False

    def join(
        self,
        pipe_id: str,
        version: str,
        group_name: str,
        session_id: str,
        wanted_session: str | None,
        last_seq: int | None,
        now: float,
    ) -> tuple[Session, bool, int]:
        """Attach a pipe; returns its session, whether it resumed, and the gap to report.

        ``session_id`` is the id for a new session; ``wanted_session`` the one
        the pipe asks to resume. After sending ``connection_established`` the
        caller must call :meth:`start` to replay and pump.
        """
        session = self.sessions.get(wanted_session) if wanted_session else None
        resumed = session is not None and _resumes(session, version, group_name)
        if session is not None and resumed:
            if session.pipe is not None:
                # The process came back before its old connection was noticed dead.
                self.by_pipe.pop(session.pipe, None)
            if last_seq is not None:
                self._acknowledge(session, last_seq)
            # Everything still in flight goes out again, same seq, first
            # (outside the group's bounds: the window bounded it already).
            session.replay.extend(session.inflight)
            session.inflight.clear()
            session.inflight_bytes = 0
        else:
            if version == "0.2":
                group_name = f"0.2:{pipe_id}"
            group = self.groups.get(group_name)
            if group is None:
                if len(self.groups) >= MAX_GROUPS:
                    raise PipeFrameError(PipeCode.TOO_MANY_TARGETS, "too many pipe groups")
                group = self.groups[group_name] = Group(group_name)
            session = Session(session_id, group, version)
            group.sessions[session.id] = session
            self.sessions[session.id] = session
        # Drops no live member could be told of go to the first to connect.
        group = session.group
        session.unreported += group.unreported
        group.unreported = 0
        session.pipe = pipe_id
        session.grace_until = math.inf
        self.by_pipe[pipe_id] = session
        return session, bool(resumed), session.unreported

    def start(self, session: Session, now: float) -> None:
        """Deliver what a newly attached session is owed (replay, buffer, gap)."""
        group = session.group
        if group.buffer and session.types:
            self._drain_buffer(group, now)
        self._pump(session, now)

    def leave(self, pipe_id: str, now: float, *, for_good: bool = False) -> Session | None:
        """Detach a pipe: a 1.0 session enters its grace, unless it leaves ``for_good``; a 0.2 one ends."""
        session = self.by_pipe.pop(pipe_id, None)
        if session is None:
            return None
        session.pipe = None
        if session.legacy or for_good:
            self._end(session, now, left=True)
        else:
            session.grace_until = now + self.app.pipe.resume_grace
        return session

    def subscribe(self, session: Session, types: tuple[str, ...], now: float) -> Later | None:
        """Add event types to a session (answered at once here: ``None``; later in a cluster).

        Raises:
            PipeFrameError: 4230 when ``auth`` is held by another group.
        """
        if "auth" in types:
            holder = self.holder("auth")
            if holder is not None and holder is not session.group:
                raise PipeFrameError(
                    PipeCode.AUTH_HELD_ELSEWHERE,
                    f"auth is held by the group {holder.name!r} of this app",
                )
        for type in types:
            if type not in session.types:
                session.types.add(type)
                self.type_counts[type] = self.type_counts.get(type, 0) + 1
                session.group.routed_at = now
        if session.group.buffer:
            self._drain_buffer(session.group, now)
        return None

    def unsubscribe(self, session: Session, types: tuple[str, ...], now: float) -> None:
        """Remove event types from a session."""
        for type in types:
            if type in session.types:
                session.types.discard(type)
                self.type_counts[type] -= 1
                session.group.routed_at = now
        if self._held:
            # Departures nobody wants to hear of any more are forgotten (a
            # later subscriber never saw the arrival).
            self._held.discard(lambda item: not self.type_counts[item[0]])

    def _end(self, session: Session, now: float, *, left: bool = False) -> None:
        """Remove a session for good; its events move on (see the module docstring).

        ``left``: the member asked to leave (``leave``), rather than not
        coming back within its grace.
        """
        group = session.group
        routed_at = group.routed_at
        self.unsubscribe(session, tuple(session.types), now)
        del group.sessions[session.id]
        del self.sessions[session.id]
        if session.legacy:
            group.pending_count = group.pending_bytes = 0
            del self.groups[group.name]
            return
        sent = [*session.inflight, *session.replay]
        unsent = list(session.waiting)
        for pending in unsent:
            group.pending_count -= 1
            group.pending_bytes -= pending.event.size
        session.inflight.clear()
        session.inflight_bytes = 0
        session.replay.clear()
        session.waiting.clear()
        unreported = session.unreported
        for pending in sent:
            if pending.event.type == "gap":
                # An unacked gap report: the drops are still unreported.
                unreported += pending.event.dropped
                continue
            # It may have been processed there.
            self._move(group, pending, now)
        for pending in unsent:
            # Never seen there. Marked anyway after a crash, or when keys
            # moved since it was produced: its new owner may already hold
            # newer events of the same key (ordering is for unmarked events).
            self._move(group, pending, now, mark=not left or pending.event.born <= routed_at)
        if unreported:
            self._report(group, unreported, None, None, now)
        self._forget_if_idle(group)

    def _move(self, group: Group, pending: _Pending, now: float, *, mark: bool = True) -> None:
        pending.seq = 0
        if mark and not pending.redelivered:
            pending.redelivered = True
            group.redelivered += 1
        self._place(group, pending, now)

    def _forget_if_idle(self, group: Group) -> None:
        if not group.sessions and not group.buffer and not group.unreported:
            del self.groups[group.name]

    # ------------------------------------------------------------ delivery

    def depart(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None:
        """Publish a departure (``channel_vacated``, ``member_removed``) after ``LEAVE_DELAY``.

        An :meth:`arrive` of the same ``type``, ``key`` and ``who`` with an
        equal ``match`` within the delay cancels it and itself. At most
        ``buffer_events`` wait; beyond, the oldest is published at once.
        """
        if not self.wants(type):
            return
        self._release(now)
        self._held.hold((type, key, who), (type, key, notice, now), now, match)
        while len(self._held) > self.app.pipe.buffer_events:
            self.publish(*self._held.oldest())

    def arrive(self, type: str, key: str, notice: Notice, now: float, *, who: str = "", match: Any = None) -> None:
        """Publish an arrival (``channel_occupied``, ``member_added``) unless it cancels a held departure."""
        if not self.wants(type):
            return  # nothing of this type is held either
        self._release(now)
        cancelled, held = self._held.arrive((type, key, who), match)
        if cancelled:
            return
        if held is not None:
            self.publish(*held)  # back, but changed: the departure first
        self.publish(type, key, notice, now)

    def _release(self, now: float) -> None:
        # Departures due go out before anything that happens after them.
        if self._held:
            for held in self._held.due(now):
                self.publish(*held)

    def publish(self, type: str, key: str, notice: Notice, now: float) -> int:
        """Give an event to every group holding ``type``; returns how many took it."""
        if not self.wants(type):
            return 0
        event: _Event | None = None
        legacy: str | None = None
        taken = 0
        for group in list(self.groups.values()):
            owner = group.owner(type, key)
            if owner is None:
                continue
            taken += 1
            if owner.legacy:
                # 0.2: no acks, nothing kept; written now, or never.
                if owner.pipe is not None:
                    if legacy is None:
                        legacy = notification_frame(notice.event, jsontext.dumps(notice_data(notice, "0.2")))
                    group.delivered += 1
                    self._send(owner.pipe, legacy)
                continue
            if event is None:
                event = _Event(type, key, notice.event, jsontext.dumps(notice_data(notice, "1.0")), now)
            self._queue(owner, _Pending(event), now)
        return taken

    def _place(self, group: Group, pending: _Pending, now: float) -> None:
        """Queue a moved event with its key's owner in the group, or buffer it."""
        owner = group.owner(pending.event.type, pending.event.key)
        if owner is None:
            group.buffer.append(pending)
            group.pending_count += 1
            group.pending_bytes += pending.event.size
            self._bound(group, now)
        else:
            self._queue(owner, pending, now)

    def _queue(self, session: Session, pending: _Pending, now: float) -> None:
        group = session.group
        session.waiting.append(pending)
        group.pending_count += 1
        group.pending_bytes += pending.event.size
        self._bound(group, now)
        if session.pipe is not None:
            self._pump(session, now)

    def _pump(self, session: Session, now: float) -> None:
        """Send waiting events while the session's window has room (in events and in bytes)."""
        if session.pipe is None:
            return
        settings = self.app.pipe
        group = session.group
        inflight = session.inflight
        while len(inflight) < settings.window and session.inflight_bytes < settings.window_bytes:
            # Replays (they keep their seq) go first, then the gap report,
            # then new events: seqs increase along the in-flight queue.
            if session.replay:
                pending = session.replay.popleft()
            elif session.unreported:
                count, session.unreported = session.unreported, 0
                pending = _Pending(_Event("gap", "", "gap", f'{{"dropped":{count}}}', now, count))
            elif session.waiting:
                pending = session.waiting.popleft()
                group.pending_count -= 1
                group.pending_bytes -= pending.event.size
            else:
                break
            self._send_pending(session, pending)

    def _send_pending(self, session: Session, pending: _Pending) -> None:
        assert session.pipe is not None
        if not pending.seq:
            pending.seq = session.next_seq
            session.next_seq += 1
        session.inflight.append(pending)
        event = pending.event
        session.inflight_bytes += event.size
        extra = f',"seq":{pending.seq},"time_ms":{int(event.born * 1000)}'
        if pending.redelivered:
            extra += ',"redelivered":true'
        session.group.delivered += 1
        self._send(session.pipe, notification_frame(event.name, event.text, extra))

    def _drain_buffer(self, group: Group, now: float) -> None:
        held = list(group.buffer)
        group.buffer.clear()
        for pending in held:
            group.pending_count -= 1
            group.pending_bytes -= pending.event.size
            self._place(group, pending, now)

    def ack(self, session: Session, seq: int, now: float) -> None:
        """Cumulative ack: every event with seq <= ``seq`` is processed."""
        self._acknowledge(session, seq)
        self._pump(session, now)

    @staticmethod
    def _acknowledge(session: Session, seq: int) -> None:
        inflight = session.inflight
        while inflight and inflight[0].seq <= seq:
            session.inflight_bytes -= inflight.popleft().event.size
        replay = session.replay
        while replay and replay[0].seq <= seq:
            replay.popleft()
        session.acked = max(session.acked, min(seq, session.next_seq - 1))

    def _bound(self, group: Group, now: float) -> None:
        limits = self.app.pipe
        while group.pending_count > limits.buffer_events or group.pending_bytes > limits.buffer_bytes:
            if not self._drop_oldest(group, now):
                break

    def _drop_oldest(self, group: Group, now: float) -> bool:
        """Drop the oldest unsent control notification, else the oldest unsent event."""
        queues: list[tuple[_Queue, Session | None]] = [(group.buffer, None)]
        queues.extend((s.waiting, s) for s in group.sessions.values())
        for kind in ("control", "data"):
            heads = [(getattr(q, kind)[0].event.born, i) for i, (q, _) in enumerate(queues) if getattr(q, kind)]
            if heads:
                queue, session = queues[min(heads)[1]]
                self._drop(group, getattr(queue, kind), session, now)
                return True
        return False

    def _drop(self, group: Group, line: deque[_Pending], session: Session | None, now: float) -> None:
        dropped = line.popleft()
        group.pending_count -= 1
        group.pending_bytes -= dropped.event.size
        group.dropped += 1
        self.dropped += 1
        self._report(group, 1, session, dropped.event.type, now)

    def _report(self, group: Group, count: int, session: Session | None, type: str | None, now: float) -> None:
        """Tell ``count`` drops (of events of ``type``, if one) to a connected member of ``group``.

        That is ``session`` if it is connected, else the group's first
        connected member subscribed to ``type`` (to any type when ``type`` is
        ``None``), else its first connected member: not a pipe that only
        sends, when there is another. With nobody connected the drops wait
        for the next member to connect. The report goes out at once if the
        member's window has room, else first thing when it has
        (pipe-protocol.md 6).
        """
        if session is None or session.pipe is None:
            live = [s for s in group.sessions.values() if s.pipe is not None]
            wanting = (s for s in live if (type in s.types if type else s.types))
            session = next(wanting, live[0] if live else None)
        if session is None:
            group.unreported += count
            return
        session.unreported += count
        self._pump(session, now)

    # -------------------------------------------------------------- timers

    def next_deadline(self) -> float:
        """When :meth:`tick` next has work (a departure is due, a grace ends, a buffered event ages out)."""
        deadline = self._held.next_deadline()
        for session in self.sessions.values():
            deadline = min(deadline, session.grace_until)
        ttl = self.app.pipe.buffer_ttl
        for group in self.groups.values():
            line = group.buffer.oldest()
            if line:
                deadline = min(deadline, line[0].event.born + ttl)
        return deadline

    def tick(self, now: float) -> list[Session]:
        """Publish departures due, end sessions whose grace is over and age out buffered events.

        Returns:
            The sessions that ended (their pending auth requests fail).
        """
        self._release(now)
        ended = [s for s in self.sessions.values() if s.grace_until <= now]
        for session in ended:
            self._end(session, now)
        ttl = self.app.pipe.buffer_ttl
        for group in list(self.groups.values()):
            while (line := group.buffer.oldest()) and line[0].event.born + ttl <= now:
                self._drop(group, line, None, now)
            self._forget_if_idle(group)
        return ended

    def shutdown(self) -> Iterator[str]:
        """The pipes to close when the relay stops."""
        yield from list(self.by_pipe)

    def stats(self) -> dict[str, Any]:
        """Per group: members connected, sessions, pending, in flight, counters."""
        return {
            "pipes": self.pipe_count,
            "unrouted": self.unrouted,
            "dropped": self.dropped,
            "groups": {
                name: {
                    "members": sum(1 for s in g.sessions.values() if s.pipe is not None),
                    "sessions": len(g.sessions),
                    "pending": g.pending_count,
                    "pending_bytes": g.pending_bytes,
                    "in_flight": sum(len(s.inflight) + len(s.replay) for s in g.sessions.values()),
                    "delivered": g.delivered,
                    "redelivered": g.redelivered,
                    "dropped": g.dropped,
                }
                for name, g in self.groups.items()
            },
        }
