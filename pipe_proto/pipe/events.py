"""The Pipe protocol (0.2 and 1.0) as typed, immutable events.

Three families (pipe-protocol.md 2):

* calls, what a pipe asks of the relay (``send_to_socket``, ``subscribe`` ...),
  carried in a :class:`Request` envelope with the client's ``id``;
* :class:`Reply` and :class:`ErrorReply`, the relay's answer to a request;
* notifications, what the relay tells a pipe (``socket_opened`` ...), carried
  in a :class:`Notification` envelope with 1.0's ``seq``, ``time_ms`` and
  ``redelivered``; and :class:`ErrorNotification`.

The codec (:mod:`pipe_proto.pipe.codec`) maps them to and from JSON text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "EVENT_TYPES",
    "EVENT_TYPES_0_2",
    "Ack",
    "AuthRequest",
    "AuthResponse",
    "Batch",
    "CallError",
    "ChannelOccupied",
    "ChannelVacated",
    "DisconnectSocket",
    "ErrorNotification",
    "ErrorReply",
    "Established",
    "Gap",
    "Leave",
    "MemberAdded",
    "MemberRemoved",
    "Notice",
    "Notification",
    "PingCall",
    "PipeCall",
    "Reply",
    "Request",
    "SendToChannel",
    "SendToSocket",
    "SocketClosed",
    "SocketMessage",
    "SocketOpened",
    "SubscribeEvents",
    "TerminateUser",
    "UnsubscribeEvents",
    "WarningNotice",
]

#: Event types a pipe may subscribe to, and those the 2011 protocol knew.
EVENT_TYPES = frozenset({"socket_existence", "socket_message", "channel_existence", "presence", "auth"})
EVENT_TYPES_0_2 = frozenset({"socket_existence", "socket_message"})

_str = attrs.validators.instance_of(str)
_opt_str = attrs.validators.optional(_str)


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        raise TypeError("expected a list of strings")
    # Taken once, then checked: an iterator has only one pass to give.
    items = tuple(value)
    if not all(isinstance(v, str) for v in items):
        raise TypeError("expected a list of strings")
    return items


def _request_id(_i: Any, _a: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int, float))):
        raise TypeError("id must be a string, a number or null")


def _calls(value: Iterable[PipeCall | CallError]) -> tuple[PipeCall | CallError, ...]:
    return tuple(value)


# ------------------------------------------------------------------ calls


class PipeCall:
    """Base class of what a pipe can ask (the ``method`` and ``params``)."""

    __slots__ = ()
    method: str = ""


@attrs.frozen(kw_only=True)
class SubscribeEvents(PipeCall):
    """``subscribe``: receive notifications of these event types."""

    method = "subscribe"
    events: tuple[str, ...] = attrs.field(converter=_strings)


@attrs.frozen(kw_only=True)
class UnsubscribeEvents(PipeCall):
    """``unsubscribe``: stop receiving these event types."""

    method = "unsubscribe"
    events: tuple[str, ...] = attrs.field(converter=_strings)


@attrs.frozen(kw_only=True)
class SendToSocket(PipeCall):
    """``send_to_socket``: an event to these sockets only.

    ``data`` is the string the sockets receive (the codec JSON-encodes other
    values once).
    """

    method = "send_to_socket"
    socket_ids: tuple[str, ...] = attrs.field(converter=_strings)
    event: str = attrs.field(validator=_str)
    data: str = attrs.field(validator=_str)
    channel: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class SendToChannel(PipeCall):
    """``send_to_channel``: a channel event to every subscriber but ``exclude``."""

    method = "send_to_channel"
    channels: tuple[str, ...] = attrs.field(converter=_strings)
    event: str = attrs.field(validator=_str)
    data: str = attrs.field(validator=_str)
    exclude: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class DisconnectSocket(PipeCall):
    """``disconnect_socket``: close that socket (default code 4009)."""

    method = "disconnect_socket"
    socket_id: str = attrs.field(validator=_str)
    code: int = attrs.field(default=4009, validator=attrs.validators.instance_of(int))
    reason: str = attrs.field(default="", validator=_str)


@attrs.frozen(kw_only=True)
class TerminateUser(PipeCall):
    """``terminate_user``: close every socket signed in as that user."""

    method = "terminate_user"
    user_id: str = attrs.field(validator=_str)


@attrs.frozen(kw_only=True)
class AuthResponse(PipeCall):
    """``auth_response``: the pipe's answer to an :class:`AuthRequest`."""

    method = "auth_response"
    request_id: str = attrs.field(validator=_str)
    allow: bool = attrs.field(validator=attrs.validators.instance_of(bool))
    channel_data: Any = None
    user_data: Any = None
    reason: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class Ack(PipeCall):
    """``ack``: every event with a seq up to this one is processed."""

    method = "ack"
    seq: int = attrs.field(validator=attrs.validators.instance_of(int))


@attrs.frozen(kw_only=True)
class CallError:
    """A call inside a batch that could not be read; it fails on its own."""

    code: int
    message: str


@attrs.frozen(kw_only=True)
class Batch(PipeCall):
    """``batch``: calls applied in order, one result or error each."""

    method = "batch"
    calls: tuple[PipeCall | CallError, ...] = attrs.field(converter=_calls)


@attrs.frozen
class Leave(PipeCall):
    """``leave`` (1.0): end this member's session now; its sockets move to the others without a grace."""

    method = "leave"


@attrs.frozen
class PingCall(PipeCall):
    """``ping``: the relay replies ``{}``."""

    method = "ping"


@attrs.frozen(kw_only=True)
class Request:
    """A request envelope: the client's ``id`` (``None``: no reply wanted) and the call."""

    id: str | int | float | None = attrs.field(validator=_request_id)
    call: PipeCall


# ---------------------------------------------------------------- replies


@attrs.frozen(kw_only=True)
class Reply:
    """A successful reply to the request with this ``id``."""

    id: str | int | float | None = attrs.field(validator=_request_id)
    result: Any = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class ErrorReply:
    """A failed request: ``code`` from :class:`~pipe_proto.errors.PipeCode`."""

    id: str | int | float | None = attrs.field(validator=_request_id)
    code: int
    message: str


@attrs.frozen(kw_only=True)
class ErrorNotification:
    """An error not tied to a request (an unreadable frame, for instance)."""

    code: int
    message: str


# ---------------------------------------------------------- notifications


class Notice:
    """Base class of notification payloads (``result.event`` and ``result.data``)."""

    __slots__ = ()
    event: str = ""


@attrs.frozen(kw_only=True)
class Established(Notice):
    """``connection_established``: the pipe is connected (1.0 adds the session)."""

    event = "connection_established"
    socket_id: str
    session: str | None = None
    resumed: bool = False
    gap: int = 0
    heartbeat: float | None = None
    protocol_version: str = "0.2"


@attrs.frozen(kw_only=True)
class SocketOpened(Notice):
    """``socket_opened``; 1.0 adds where the socket came from."""

    event = "socket_opened"
    socket_id: str
    remote_addr: str | None = None
    origin: str | None = None
    user_agent: str | None = None
    query: dict[str, str] | None = None
    headers: dict[str, str] | None = None


@attrs.frozen(kw_only=True)
class SocketClosed(Notice):
    """``socket_closed``; 1.0 adds the close code and reason."""

    event = "socket_closed"
    socket_id: str
    code: int | None = None
    reason: str | None = None


@attrs.frozen(kw_only=True)
class SocketMessage(Notice):
    """``socket_message``: a back-channel message, or a client event on ``channel``."""

    event = "socket_message"
    socket_id: str
    name: str
    data: Any = None
    channel: str | None = None
    user_id: str | None = None


@attrs.frozen(kw_only=True)
class ChannelOccupied(Notice):
    """``channel_occupied`` (1.0): the channel's first subscriber joined."""

    event = "channel_occupied"
    channel: str


@attrs.frozen(kw_only=True)
class ChannelVacated(Notice):
    """``channel_vacated`` (1.0): the channel's last subscriber left."""

    event = "channel_vacated"
    channel: str


@attrs.frozen(kw_only=True)
class MemberAdded(Notice):
    """``member_added`` (1.0): a user's first socket joined a presence channel."""

    event = "member_added"
    channel: str
    user_id: str | int
    user_info: Any = None


@attrs.frozen(kw_only=True)
class MemberRemoved(Notice):
    """``member_removed`` (1.0): a user's last socket left a presence channel."""

    event = "member_removed"
    channel: str
    user_id: str | int


@attrs.frozen(kw_only=True)
class AuthRequest(Notice):
    """``auth_request`` (1.0): authorize a subscription (``channel``) or a sign-in."""

    event = "auth_request"
    request_id: str
    socket_id: str
    kind: str
    channel: str | None = None
    socket: dict[str, Any] = attrs.Factory(dict)

    def answer(self, *, allow: bool, data: Any = None, reason: str | None = None) -> AuthResponse:
        """The ``auth_response`` to this request (pipe-protocol.md 5).

        ``data`` is the member (``{user_id, user_info?}``) of a presence
        subscription, or the user (``{id, user_info?, watchlist?}``) of a
        sign-in: it goes in ``user_data`` when ``kind`` is ``user``, in
        ``channel_data`` otherwise. ``reason`` is what a refused socket is told.
        """
        if self.kind == "user":
            return AuthResponse(request_id=self.request_id, allow=allow, user_data=data, reason=reason)
        return AuthResponse(request_id=self.request_id, allow=allow, channel_data=data, reason=reason)


@attrs.frozen(kw_only=True)
class Gap(Notice):
    """``gap`` (1.0): events this group had to drop."""

    event = "gap"
    dropped: int


@attrs.frozen(kw_only=True)
class WarningNotice(Notice):
    """``warning``: free-form text the 2011 client prints."""

    event = "warning"
    data: Any = None


@attrs.frozen(kw_only=True)
class Notification:
    """A notification envelope; ``seq`` and ``time_ms`` only in 1.0."""

    notice: Notice
    seq: int | None = None
    time_ms: int | None = None
    redelivered: bool = False
