"""Errors and the numeric codes that travel on the wire.

Two families of exceptions, after h11: a :class:`LocalProtocolError` means
the caller misused the API (tried to build or send something invalid), a
:class:`RemoteProtocolError` means the peer sent something invalid. Both carry
``code``, the hint the adapter needs to answer the peer: a Pusher error code,
a Pipe error code, a WebSocket close code or an HTTP status, depending on
where it was raised.

The codes themselves live in IntEnums so that tests, docs and both sides of
each protocol name them the same way.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode", "LocalProtocolError", "PipeCode", "ProtocolError", "PusherCode", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error this package raises on purpose.

    Attributes:
        code: the wire code that describes the error to the peer, or
            ``None`` where the protocol has none (Pusher's ``code: null``).
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class LocalProtocolError(ProtocolError):
    """The local side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class PusherCode(IntEnum):
    """Pusher Channels error and close codes (pusher-channels.md section 3).

    4000-4099 make pusher-js give up, 4100-4199 make it back off and retry,
    4200-4299 make it retry at once; 4300-4399 are sent as error frames only,
    never as close codes, because pusher-js treats them as fatal.
    """

    TLS_ONLY = 4000
    APP_NOT_FOUND = 4001
    APP_DISABLED = 4003
    OVER_CONNECTION_QUOTA = 4004
    PATH_NOT_FOUND = 4005
    INVALID_VERSION_FORMAT = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL_VERSION = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100
    #: This relay's own code: the connection did not read what it was sent
    #: and its outbound buffer filled up. In the back-off range, so pusher-js
    #: reconnects after a pause instead of hammering a congested link.
    SLOW_CONSUMER = 4101
    RECONNECT = 4200
    PONG_TIMEOUT = 4201
    INACTIVITY = 4202
    RATE_LIMITED = 4301
    WATCHLIST_LIMIT = 4302


class PipeCode(IntEnum):
    """Pipe error codes (pipe-protocol.md section 4) and pipe close codes."""

    #: Close code: another connection resumed this one's session (pipe-protocol.md 6).
    #: The client must not resume it again; it may connect with a fresh session.
    SESSION_TAKEN_OVER = 4203
    INVALID_EVENT_NAME = 4210
    INVALID_CHANNEL_NAME = 4211
    MALFORMED_SOCKET_ID = 4212
    PAYLOAD_TOO_LARGE = 4213
    TOO_MANY_TARGETS = 4214
    MALFORMED_REQUEST = 4220
    UNKNOWN_METHOD = 4221
    UNKNOWN_REQUEST_ID = 4222
    AUTH_HELD_ELSEWHERE = 4230
    UNKNOWN_EVENT_TYPE = 4240


class CloseCode(IntEnum):
    """WebSocket close codes used by the relay besides the Pusher ones."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    #: Never sent: reported when a connection ended without a close frame.
    ABNORMAL = 1006
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
