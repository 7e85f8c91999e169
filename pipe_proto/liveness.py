"""Heartbeats: one small state machine shared by every kind of connection.

Theory of operation. A connection is *active* while it hears from its peer.
After ``idle`` seconds of silence it sends a probe (``pusher:ping`` on a
Pusher socket, a WebSocket ping on a Pipe) and is *probing*; anything heard
makes it active again. If ``grace`` more seconds pass in silence it has
*expired*, and its owner closes it (4201 on both protocols). The Pusher relay
uses ``idle`` = activity_timeout, ``grace`` = 30 s (pusher-channels.md 2); a
Pipe uses ``idle`` = ``grace`` = heartbeat, so a pipe silent for two
heartbeats is closed (pipe-protocol.md 7). Clients run the same machine
against their server.

Only sends are never counted: a subscriber that receives a stream but never
writes must still be probed (pusher-channels.md 2, the quirk to avoid).

Hearing from the peer is the hot path, so :meth:`Liveness.heard` is two
attribute writes; the transition table (a
:class:`~pipe_proto.statemachine.Transitions`) is consulted only when a
deadline passes.
"""

from __future__ import annotations

import math
from enum import Enum

from .errors import LocalProtocolError
from .statemachine import Transitions

__all__ = ["Liveness", "LivenessAction", "LivenessState"]


class LivenessState(Enum):
    """Where a connection's heartbeat stands."""

    ACTIVE = "active"
    PROBING = "probing"
    EXPIRED = "expired"


class LivenessAction(Enum):
    """What the owner must do when :meth:`Liveness.poll` says so."""

    PROBE = "probe"  # send a ping
    EXPIRE = "expire"  # close the connection


class _Input(Enum):
    HEARD = "heard"
    IDLE_DEADLINE = "idle deadline"
    GRACE_DEADLINE = "grace deadline"


_TRANSITIONS = Transitions[LivenessState, _Input, LivenessAction](
    {
        (LivenessState.ACTIVE, _Input.HEARD): (None, LivenessState.ACTIVE),
        (LivenessState.ACTIVE, _Input.IDLE_DEADLINE): (LivenessAction.PROBE, LivenessState.PROBING),
        (LivenessState.PROBING, _Input.HEARD): (None, LivenessState.ACTIVE),
        (LivenessState.PROBING, _Input.GRACE_DEADLINE): (LivenessAction.EXPIRE, LivenessState.EXPIRED),
        # Frames still in flight when the owner gave up change nothing.
        (LivenessState.EXPIRED, _Input.HEARD): (None, LivenessState.EXPIRED),
    },
    final=LivenessState.EXPIRED,
)


class Liveness:
    """The heartbeat of one connection.

    Args:
        now: the current time, in seconds.
        idle: seconds of silence before a probe.
        grace: seconds after a probe before the connection expires.
    """

    __slots__ = ("grace", "idle", "last_heard", "probed_at", "state")

    def __init__(self, now: float, idle: float, grace: float) -> None:
        if idle <= 0 or grace <= 0:
            raise LocalProtocolError("idle and grace must be positive")
        self.idle = idle
        self.grace = grace
        self.last_heard = now
        self.probed_at = 0.0
        self.state = LivenessState.ACTIVE

    def heard(self, now: float) -> None:
        """Record that the peer sent something (any frame, pong included)."""
        self.last_heard = now
        if self.state is LivenessState.PROBING:
            _TRANSITIONS.move(self, _Input.HEARD)

    def deadline(self) -> float:
        """When :meth:`poll` next has something to do (``inf``: never)."""
        if self.state is LivenessState.ACTIVE:
            return self.last_heard + self.idle
        if self.state is LivenessState.PROBING:
            return self.probed_at + self.grace
        return math.inf

    def poll(self, now: float) -> LivenessAction | None:
        """Advance to ``now``; returns the action due, if any."""
        if now < self.deadline():
            return None
        if self.state is LivenessState.ACTIVE:
            self.probed_at = now
            return _TRANSITIONS.move(self, _Input.IDLE_DEADLINE)
        return _TRANSITIONS.move(self, _Input.GRACE_DEADLINE)
