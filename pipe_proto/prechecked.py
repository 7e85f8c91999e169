"""Events built from values already checked (by a decoder, or the relay's own state).

The events are frozen attrs classes whose validators and converters run on
every construction: what keeps an application from building an event the
relay would refuse. On the paths every message takes (a socket's event, a
pipe's ``send_to_socket``, the notification a pipe client reads) the
decoder has checked the same things a moment before, and attrs' generated
``__init__`` with its validators was the largest single cost left outside
the system calls: 6 % of the relay's CPU per Pipe round trip for
``SendToSocket`` alone. These builders set the fields directly, named as
the class names them. Each takes every field of its class, in the class's
order; ``tests/test_prechecked.py`` holds each to what the
class's own constructor makes from the same values, and to the class's
fields, so a field added to an event cannot be left unset here.

Only for values already checked: anything else goes through the class.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from .pipe.events import Notice, Notification, SendToSocket, SocketMessage
from .pusher.events import Message

__all__ = ["message", "notification", "send_to_socket", "socket_message"]

_T = TypeVar("_T")

_set = object.__setattr__


def _names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in attrs.fields(cls))


_MESSAGE = _names(Message)
_SOCKET_MESSAGE = _names(SocketMessage)
_NOTIFICATION = _names(Notification)
_SEND_TO_SOCKET = _names(SendToSocket)


def _filled(cls: type[_T], names: tuple[str, ...], values: tuple[Any, ...]) -> _T:
    built = cls.__new__(cls)
    for name, value in zip(names, values, strict=True):
        _set(built, name, value)
    return built


def message(event: str, data: Any, channel: str | None, user_id: str | None) -> Message:
    """A :class:`~pipe_proto.pusher.events.Message`; ``event`` a non-empty string."""
    return _filled(Message, _MESSAGE, (event, data, channel, user_id))


def socket_message(
    socket_id: str, name: str, data: Any, channel: str | None, user_id: str | None
) -> SocketMessage:
    """A :class:`~pipe_proto.pipe.events.SocketMessage` (a class without validators, but attrs' frozen
    ``__init__`` still costs twice these assignments)."""
    return _filled(SocketMessage, _SOCKET_MESSAGE, (socket_id, name, data, channel, user_id))


def notification(notice: Notice, seq: int | None, time_ms: int | None, redelivered: bool) -> Notification:
    """A :class:`~pipe_proto.pipe.events.Notification`."""
    return _filled(Notification, _NOTIFICATION, (notice, seq, time_ms, redelivered))


def send_to_socket(socket_ids: tuple[str, ...], event: str, data: str, channel: str | None) -> SendToSocket:
    """A :class:`~pipe_proto.pipe.events.SendToSocket`; ``socket_ids`` a tuple of strings."""
    return _filled(SendToSocket, _SEND_TO_SOCKET, (socket_ids, event, data, channel))
