"""One side of a Pusher connection: handshake, heartbeat, close, as a table.

Theory of operation. A connection starts CONNECTING. The server moves it to
OPEN by sending ``pusher:connection_established``, which must be its first
frame (pusher-channels.md 1.3); the client moves it to OPEN by receiving that
frame, and to CLOSED if the first frame is anything else (pusher-js calls it
an invalid handshake) or a ``pusher:error`` (a refusal). Once OPEN, either
side answers pings and, through :class:`~pipe_proto.liveness.Liveness`, probes
a silent peer and gives up on one that stays silent. CLOSED is final.

On the client side a sent ``pusher:signin`` waits for its answer: the next
``pusher:signin_success``, or a ``pusher:error`` with code 4009, which
:meth:`PusherConnection.receive` returns as :class:`SignInError` so that the
caller need not guess which error answers the sign-in.

The legal moves are the table ``_TRANSITIONS`` (a
:class:`~pipe_proto.statemachine.Transitions`); a move missing from it raises
:class:`LocalProtocolError` and leaves the connection CLOSED, so a misused
connection refuses further calls instead of carrying on in a state nobody
designed.

The relay keeps one of these per end-user socket; the Python socket client
keeps one per connection. Neither reads a clock: every call takes ``now``.
"""

from __future__ import annotations

from enum import Enum

from ..errors import LocalProtocolError, PusherCode, RemoteProtocolError
from ..liveness import Liveness, LivenessAction
from ..statemachine import Transitions
from .codec import Role, connection_established, decode, encode
from .events import ConnectionEstablished, Error, Ping, PusherEvent, SignIn, SignInError, SignInSuccess

__all__ = ["PONG_TIMEOUT", "ConnectionState", "PusherConnection", "TimerAction"]

#: Seconds the server waits for any frame after its ``pusher:ping``.
PONG_TIMEOUT = 30.0


class ConnectionState(Enum):
    """Lifecycle of a Pusher connection."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


class _Input(Enum):
    ESTABLISHED = "connection established"
    REFUSED = "refused"
    CLOSE = "close"


_TRANSITIONS = Transitions[ConnectionState, _Input, None](
    {
        (ConnectionState.CONNECTING, _Input.ESTABLISHED): (None, ConnectionState.OPEN),
        (ConnectionState.CONNECTING, _Input.REFUSED): (None, ConnectionState.CLOSED),
        (ConnectionState.CONNECTING, _Input.CLOSE): (None, ConnectionState.CLOSED),
        (ConnectionState.OPEN, _Input.CLOSE): (None, ConnectionState.CLOSED),
        (ConnectionState.CLOSED, _Input.CLOSE): (None, ConnectionState.CLOSED),
    },
    final=ConnectionState.CLOSED,
)


class TimerAction:
    """What a timer asks the owner of a connection to do.

    ``send`` is a frame to send (a ping, or an error before closing);
    ``close_code`` is set when the connection must then be closed.
    """

    __slots__ = ("close_code", "reason", "send")

    def __init__(self, send: str | None, close_code: int | None = None, reason: str = "") -> None:
        self.send = send
        self.close_code = close_code
        self.reason = reason


class PusherConnection:
    """The protocol state of one Pusher connection, client or server side.

    Args:
        role: which side this object plays.
        now: current time in seconds.
        activity_timeout: seconds of silence before pinging the peer. The
            server announces it in ``connection_established``; a client
            starts with its own value and lowers it to the server's.
        pong_timeout: seconds to wait for any frame after a ping.
    """

    __slots__ = ("liveness", "role", "signing_in", "socket_id", "state")

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        activity_timeout: float = 120.0,
        pong_timeout: float = PONG_TIMEOUT,
    ) -> None:
        self.role = role
        self.state = ConnectionState.CONNECTING
        self.socket_id: str | None = None
        #: Client side: a ``pusher:signin`` was sent and has no answer yet.
        self.signing_in = False
        self.liveness = Liveness(now, activity_timeout, pong_timeout)

    def establish(self, socket_id: str) -> str:
        """Server side: open the connection; returns the first frame to send."""
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only the server establishes a connection")
        frame = connection_established(socket_id, int(self.liveness.idle))
        _TRANSITIONS.move(self, _Input.ESTABLISHED)
        self.socket_id = socket_id
        return frame

    def receive(self, text: str, now: float) -> PusherEvent:
        """Decode one frame from the peer and advance the state.

        Returns:
            The event. A :class:`Ping` must be answered with a ``Pong``. On
            the client side, the error answering a pending sign-in is a
            :class:`SignInError`.

        Raises:
            RemoteProtocolError: the frame is malformed (the connection stays
                open; answer with an error frame), or, on the client side, the
                handshake failed (the connection is now CLOSED).
            LocalProtocolError: the connection is closed.
        """
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("connection is closed")
        self.liveness.heard(now)
        if self.state is ConnectionState.CONNECTING and self.role is Role.CLIENT:
            try:
                event = decode(text, role=self.role)
            except RemoteProtocolError:
                _TRANSITIONS.move(self, _Input.REFUSED)
                raise RemoteProtocolError("Invalid handshake") from None
            if isinstance(event, ConnectionEstablished):
                _TRANSITIONS.move(self, _Input.ESTABLISHED)
                self.socket_id = event.socket_id
                self.liveness.idle = min(self.liveness.idle, event.activity_timeout)
                return event
            _TRANSITIONS.move(self, _Input.REFUSED)
            if isinstance(event, Error):
                raise RemoteProtocolError(event.message, code=event.code)
            raise RemoteProtocolError("Invalid handshake: first frame was not connection_established")
        event = decode(text, role=self.role)
        if self.signing_in:
            if isinstance(event, SignInSuccess):
                self.signing_in = False
            elif isinstance(event, Error) and event.code == PusherCode.UNAUTHORIZED:
                self.signing_in = False
                return SignInError(code=event.code, message=event.message)
        return event

    def heard(self, now: float) -> None:
        """Record traffic that is not a text frame (a WebSocket ping or pong)."""
        self.liveness.heard(now)

    def send(self, event: PusherEvent) -> str:
        """Encode an event this side may send now.

        Raises:
            LocalProtocolError: the connection is not open, or this side never
                sends such an event.
        """
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"cannot send when {self.state.value}")
        text = encode(event, role=self.role)
        if isinstance(event, SignIn):
            self.signing_in = True
        return text

    def deadline(self) -> float:
        """When :meth:`tick` next has something to do."""
        return self.liveness.deadline()

    def tick(self, now: float) -> TimerAction | None:
        """Run the heartbeat; returns what to send and whether to close."""
        if self.state is not ConnectionState.OPEN:
            return None
        action = self.liveness.poll(now)
        if action is LivenessAction.PROBE:
            return TimerAction(encode(Ping(), role=self.role))
        if action is LivenessAction.EXPIRE:
            _TRANSITIONS.move(self, _Input.CLOSE)
            if self.role is Role.SERVER:
                reason = "Pong reply not received"
                error = Error(code=PusherCode.PONG_TIMEOUT, message=reason)
                return TimerAction(encode(error, role=Role.SERVER), PusherCode.PONG_TIMEOUT, reason)
            return TimerAction(None, PusherCode.PONG_TIMEOUT, "Pong reply not received")
        return None

    def close(self) -> None:
        """Mark the connection closed (either side closed it)."""
        _TRANSITIONS.move(self, _Input.CLOSE)
