"""Events built from values a decoder has just checked.

The events are frozen attrs classes whose validators and converters run on
every construction: what keeps an application from building an event the
relay would refuse. On the paths every message takes (a socket's event, a
pipe's ``send_to_socket``, the notification a pipe client reads) the
decoder has checked the same things a moment before, and attrs' generated
``__init__`` with its validators was the largest single cost left: 6 % of
the relay's CPU per Pipe round trip for ``SendToSocket`` alone. These
builders set the fields directly. Each takes every field of its class, in
the class's order; ``tests/test_prechecked.py`` holds each to what the
class's own constructor makes from the same values, and to the class's
fields, so a field added to an event cannot be left unset here.

Only for values already checked: anything else goes through the class.
"""

from __future__ import annotations

from typing import Any

from .pipe.events import Notice, Notification, SendToSocket, SocketMessage
from .pusher.events import Message

__all__ = ["message", "notification", "send_to_socket", "socket_message"]

_set = object.__setattr__


def message(event: str, data: Any, channel: str | None, user_id: str | None) -> Message:
    """A :class:`~pipe_proto.pusher.events.Message`; ``event`` a non-empty string."""
    built = Message.__new__(Message)
    _set(built, "event", event)
    _set(built, "data", data)
    _set(built, "channel", channel)
    _set(built, "user_id", user_id)
    return built


def socket_message(
    socket_id: str, name: str, data: Any, channel: str | None, user_id: str | None
) -> SocketMessage:
    """A :class:`~pipe_proto.pipe.events.SocketMessage` (a class without validators, but attrs' frozen
    ``__init__`` still costs twice these assignments)."""
    built = SocketMessage.__new__(SocketMessage)
    _set(built, "socket_id", socket_id)
    _set(built, "name", name)
    _set(built, "data", data)
    _set(built, "channel", channel)
    _set(built, "user_id", user_id)
    return built


def notification(notice: Notice, seq: int | None, time_ms: int | None, redelivered: bool) -> Notification:
    """A :class:`~pipe_proto.pipe.events.Notification`."""
    built = Notification.__new__(Notification)
    _set(built, "notice", notice)
    _set(built, "seq", seq)
    _set(built, "time_ms", time_ms)
    _set(built, "redelivered", redelivered)
    return built


def send_to_socket(socket_ids: tuple[str, ...], event: str, data: str, channel: str | None) -> SendToSocket:
    """A :class:`~pipe_proto.pipe.events.SendToSocket`; ``socket_ids`` a tuple of strings."""
    built = SendToSocket.__new__(SendToSocket)
    _set(built, "socket_ids", socket_ids)
    _set(built, "event", event)
    _set(built, "data", data)
    _set(built, "channel", channel)
    return built
