"""The backend's side of a pipe: requests out, notifications in, acks, resume.

Theory of operation. A :class:`PipeClientConnection` lives across
reconnections: it remembers the session the relay gave it and the highest
seq it has *processed*, so the next connection can ask to resume
(``session`` and ``last_seq`` in the URL, :meth:`url_params`). Each
connection starts CONNECTING; ``connection_established`` makes it OPEN (a
``resumed: false`` answer means a fresh session: what was remembered is
dropped). :meth:`receive` turns frames into :class:`Incoming` items:
notifications to hand to the application, replies to match with requests,
errors. The replay after a resume starts after the last *processed* seq, but
the application may still hold later ones (queued, or in a handler): every
notification at or below the last *received* seq of the session is filtered
out here, so a replay never reaches the application twice.

The event types the pipe receives are kept here too (``events``, changed by
a ``subscribe`` or ``unsubscribe`` when the relay accepts it, or when it is
sent without asking for a reply): a fresh session knows no
subscriptions, so the ``connection_established`` of one comes back with the
``subscribe`` request to send at once (:attr:`Incoming.send`); a resumed
session kept its own.

The application reports each notification done with :meth:`processed`; acks
are cumulative and go out in batches (:meth:`take_ack`) so that the relay's
window keeps moving without one ack per event. Calls nobody waits a reply
for may be queued (:meth:`queue`) and taken together as one ``batch`` frame
(:meth:`take_queued`), which goes before any frame made after them. Requests get ids from a
counter; replies are matched and unknown ones ignored. Liveness: a ``ping``
request after ``heartbeat`` seconds of silence, and the connection is given
up (the caller reconnects) when ``heartbeat`` more pass without a word.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import Enum

import attrs

from ..errors import LocalProtocolError, PipeCode
from ..liveness import Liveness, LivenessAction
from ..statemachine import Transitions
from .codec import MAX_BATCH_CALLS, decode_server_frame, encode_call, encode_request
from .events import (
    Ack,
    Batch,
    ErrorNotification,
    ErrorReply,
    Established,
    Leave,
    Notification,
    PingCall,
    PipeCall,
    Reply,
    Request,
    SubscribeEvents,
    UnsubscribeEvents,
)

__all__ = ["ACK_EVERY", "BATCH_CALLS", "BATCH_CHARS", "ClientState", "Incoming", "PipeClientConnection"]

#: Processed notifications after which an ack goes out even if more are coming.
ACK_EVERY = 100
#: Calls queued without a reply wanted (:meth:`PipeClientConnection.queue`)
#: after which they must go out: the most a ``batch`` may hold, and about
#: the characters of one (far below any relay's frame limit).
BATCH_CALLS = MAX_BATCH_CALLS
BATCH_CHARS = 16 * 1024


def _null_id_frame(calls: list[str]) -> str:
    # ``calls`` are batch items ({"method": ..., "params": ...}), encoded.
    if len(calls) == 1:
        return '{"id":null,' + calls[0][1:]
    return '{"id":null,"method":"batch","params":{"calls":[' + ",".join(calls) + "]}}"


class ClientState(Enum):
    """Lifecycle of one connection of a pipe client."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class _Input(Enum):
    CONNECT = "connect"
    ESTABLISHED = "be established"
    CLOSE = "close"


_TRANSITIONS = Transitions[ClientState, _Input, None](
    {
        (ClientState.CONNECTING, _Input.ESTABLISHED): (None, ClientState.OPEN),
        (ClientState.CONNECTING, _Input.CLOSE): (None, ClientState.CLOSED),
        (ClientState.OPEN, _Input.CLOSE): (None, ClientState.CLOSED),
        (ClientState.CLOSED, _Input.CLOSE): (None, ClientState.CLOSED),
        (ClientState.CLOSED, _Input.CONNECT): (None, ClientState.CONNECTING),
    },
    final=ClientState.CLOSED,
)


@attrs.frozen(kw_only=True)
class Incoming:
    """One thing read from the relay.

    Exactly one of ``notification``, ``reply`` or ``error`` is set.
    ``established`` is the ``connection_established`` notice when this frame
    opened the connection; ``send`` is a frame to send before anything else
    (the ``subscribe`` of a fresh session).
    """

    notification: Notification | None = None
    reply: Reply | ErrorReply | None = None
    error: ErrorNotification | None = None
    established: Established | None = None
    send: str | None = None


class PipeClientConnection:
    """Client-side pipe state, kept across reconnections.

    Args:
        heartbeat: seconds of silence before pinging the relay (the relay
            announces its own; the smaller is used).
        events: the event types to receive (subscribed on every fresh session).
    """

    def __init__(self, *, heartbeat: float = 25.0, events: Iterable[str] = ()) -> None:
        self.state = ClientState.CLOSED
        #: The event types this pipe receives, in the order first asked for.
        self.events: list[str] = list(dict.fromkeys(events))
        self.session: str | None = None
        self.socket_id: str | None = None
        self.resumed = False
        #: The id of the ``subscribe`` a fresh session sent, until its reply came
        #: (an adapter waits for it: events are then wanted, on every node of a cluster).
        self.subscribing: int | None = None
        #: Highest seq the application finished; acked up to ``_acked``.
        self.last_processed = 0
        #: Highest seq received in this session (the application may still hold it).
        self.last_received = 0
        #: Counts the sessions this pipe has had: a notification is processed
        #: in the epoch it was received in (see :meth:`processed`).
        self.epoch = 0
        self._acked = 0
        self._next_id = 1
        self._pending: dict[int, PipeCall] = {}
        # Calls queued without a reply wanted, encoded, until take_queued.
        self._queued: list[str] = []
        self._queued_chars = 0
        self._heartbeat = heartbeat
        self.liveness = Liveness(0.0, heartbeat, heartbeat)

    # ------------------------------------------------------------ lifecycle

    def connecting(self, now: float) -> dict[str, str]:
        """A new connection is being opened; returns the URL parameters to resume."""
        _TRANSITIONS.move(self, _Input.CONNECT)
        self.liveness = Liveness(now, self._heartbeat, self._heartbeat)
        self._pending.clear()
        return self.url_params()

    def resume(self, session: str, last_seq: int) -> None:
        """Continue a session saved by an earlier process (before the first connection)."""
        self.session = session
        self.last_processed = self.last_received = self._acked = last_seq
        self.epoch += 1

    @property
    def acked(self) -> int:
        """The highest seq acked so far."""
        return self._acked

    def url_params(self) -> dict[str, str]:
        """``session`` and ``last_seq`` to resume, when there is a session."""
        if self.session is None:
            return {}
        return {"session": self.session, "last_seq": str(self.last_processed)}

    def closed(self, code: int | None = None) -> None:
        """The connection ended with close ``code`` (None: unknown); the session is kept for resuming,
        unless another connection took it over (:attr:`PipeCode.SESSION_TAKEN_OVER`): resuming it back
        would take it from that one in turn, so the next connection starts a fresh session."""
        _TRANSITIONS.move(self, _Input.CLOSE)
        if code == PipeCode.SESSION_TAKEN_OVER:
            self.session = None

    # ----------------------------------------------------------- requests

    def request(self, call: PipeCall, *, reply: bool = True) -> tuple[int | None, str]:
        """Encode a request; returns its id (``None`` when no reply is wanted) and text.

        A ``subscribe`` or ``unsubscribe`` changes :attr:`events` once its
        reply says it succeeded (at once when no reply is wanted).

        Raises:
            LocalProtocolError: the connection is not open.
        """
        if self.state is not ClientState.OPEN:
            raise LocalProtocolError("the pipe is not connected")
        request_id: int | None = None
        if reply:
            request_id = self._next_id
            self._next_id += 1
            self._pending[request_id] = call
        else:
            self._applied(call)
        return request_id, encode_request(Request(id=request_id, call=call))

    def queue(self, call: PipeCall) -> bool:
        """Queue a call nobody waits a reply for, to go out with the others queued.

        Many such calls made together (a backend answering each event of a
        burst) then cost the relay and the network one frame, a ``batch``
        with id null (:meth:`take_queued`), instead of one each; the relay
        reports each failing call with its own error notification either
        way. Calls queued when a connection ends stay queued for the next.

        Returns:
            :attr:`full`: the queue holds :data:`BATCH_CALLS` calls or about
            :data:`BATCH_CHARS` characters; send it before queuing more.

        Raises:
            LocalProtocolError: the connection is not open, the queue is
                :attr:`full`, or ``call`` may not travel in a batch
                (``batch``, ``leave``: send them with :meth:`request`).
        """
        if self.state is not ClientState.OPEN:
            raise LocalProtocolError("the pipe is not connected")
        if isinstance(call, (Batch, Leave)):
            raise LocalProtocolError(f"a {call.method} cannot be queued with other calls")
        if self.full:
            raise LocalProtocolError("the queue is full: take it first")
        text = encode_call(call)
        self._applied(call)
        self._queued.append(text)
        self._queued_chars += len(text)
        return self.full

    @property
    def full(self) -> bool:
        """Whether the queue must be taken before another call is queued."""
        return len(self._queued) >= BATCH_CALLS or self._queued_chars >= BATCH_CHARS

    @property
    def queued(self) -> int:
        """Calls queued and not yet taken."""
        return len(self._queued)

    def take_queued(self) -> list[str]:
        """The queued calls as request frames with id null, in order (none when nothing is queued).

        Usually one frame: one call goes as itself, several as a ``batch``
        applied in order. Calls go in a batch of at most about
        :data:`BATCH_CHARS` characters, so far below any relay's frame limit
        (a call larger than that goes alone, as it would unqueued). Send
        them before any other frame: the calls were made first.
        """
        queued = self._queued
        if not queued:
            return []
        self._queued = []
        self._queued_chars = 0
        frames: list[str] = []
        start = size = 0
        for index, text in enumerate(queued):
            if index > start and size + len(text) > BATCH_CHARS:
                frames.append(_null_id_frame(queued[start:index]))
                start, size = index, 0
            size += len(text)
        frames.append(_null_id_frame(queued[start:]))
        return frames

    def _applied(self, call: PipeCall) -> None:
        """A call took effect on the relay: keep the event types in step."""
        if isinstance(call, SubscribeEvents):
            self.events.extend(t for t in call.events if t not in self.events)
        elif isinstance(call, UnsubscribeEvents):
            self.events = [t for t in self.events if t not in call.events]

    @property
    def pending_requests(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    # ------------------------------------------------------------ reading

    def receive(self, text: str, now: float) -> Iterator[Incoming]:
        """Read one frame from the relay.

        Yields nothing for a replayed notification already processed, and
        for replies to requests nobody waits for.

        Raises:
            RemoteProtocolError: the frame is not a Pipe frame.
        """
        self.liveness.heard(now)
        frame = decode_server_frame(text)
        if isinstance(frame, Notification):
            notice = frame.notice
            if isinstance(notice, Established):
                yield Incoming(notification=frame, established=notice, send=self._established(notice))
                return
            if frame.seq is not None:
                if frame.seq <= self.last_received:
                    return  # a replay of something already here (processed or queued)
                self.last_received = frame.seq
            yield Incoming(notification=frame)
        elif isinstance(frame, ErrorNotification):
            yield Incoming(error=frame)
        elif isinstance(frame.id, int) and (call := self._pending.pop(frame.id, None)) is not None:
            if isinstance(frame, Reply):
                self._applied(call)
            if frame.id == self.subscribing:
                self.subscribing = None
            yield Incoming(reply=frame)

    def _established(self, notice: Established) -> str | None:
        """Take the connection's first frame; returns the re-subscribe a fresh session needs."""
        if self.state is ClientState.CONNECTING:
            _TRANSITIONS.move(self, _Input.ESTABLISHED)
        self.socket_id = notice.socket_id
        self.resumed = notice.resumed
        if notice.heartbeat:
            self.liveness.idle = self.liveness.grace = min(self._heartbeat, notice.heartbeat)
        if not notice.resumed or notice.session != self.session:
            self.session = notice.session
            self.last_processed = self.last_received = self._acked = 0
            self.epoch += 1
        self.subscribing = None
        if notice.resumed or not self.events or self.state is not ClientState.OPEN:
            return None
        # The reader goes on reading; whoever opened the pipe may wait for the reply (subscribing).
        self.subscribing, text = self.request(SubscribeEvents(events=self.events))
        return text

    # --------------------------------------------------------------- acks

    def processed(self, seq: int | None, epoch: int | None = None) -> None:
        """The application finished the notification with this seq.

        ``epoch``: the :attr:`epoch` it was received in. One received in an
        earlier session counts for nothing: its seq numbers are that
        session's, and acking them in the new one would ack the new events
        with those numbers, still unprocessed, for good. (The relay has moved
        the old session's unacked events on, or lost them with a restart.)
        """
        if epoch is not None and epoch != self.epoch:
            return
        if seq is not None and seq > self.last_processed:
            self.last_processed = seq

    def take_ack(self, *, force: bool = False) -> str | None:
        """The ack to send now, if one is due (``force``: whatever is unacked)."""
        if self.state is not ClientState.OPEN or self.last_processed <= self._acked:
            return None
        if not force and self.last_processed - self._acked < ACK_EVERY:
            return None
        self._acked = self.last_processed
        _, text = self.request(Ack(seq=self.last_processed), reply=False)
        return text

    # ----------------------------------------------------------- liveness

    def tick(self, now: float) -> str | bool | None:
        """Heartbeat: a ping request to send, ``True`` when the relay went silent, else ``None``."""
        if self.state is not ClientState.OPEN:
            return None
        action = self.liveness.poll(now)
        if action is LivenessAction.PROBE:
            _, text = self.request(PingCall())
            return text
        if action is LivenessAction.EXPIRE:
            return True
        return None

    def deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        return self.liveness.deadline()

