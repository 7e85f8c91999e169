"""What happens to an app, told to whoever watches it (the relay's debug console).

Nobody watches almost always, so the relay checks one attribute before
building anything: an app's :class:`~.state.AppState` has an ``observer``,
``None`` by default, set and cleared by ``Relay.observe``. While it is set,
each of these happenings calls it once with an :class:`Observed`:

========================  =====================================================
type                      when, and what it carries
========================  =====================================================
``connection``            a socket was admitted (``details``: origin, address,
                          user agent)
``refused``               a socket of this app was refused at the handshake
                          (``details``: code, message)
``disconnection``         a socket went (``details``: code, reason)
``subscribed``            a socket joined ``channel``
``subscription_error``    a subscription was refused (``details``: type,
                          error, status)
``unsubscribed``          a socket left ``channel`` (or went)
``occupied``/``vacated``  ``channel`` got its first subscriber, lost its last
``member_added``/         a user joined or left the presence ``channel``
``member_removed``        (``details``: user_id)
``signin``                a socket signed in (``details``: user_id)
``client_event``          a socket sent ``event`` with ``data`` on ``channel``
``back_channel``          a socket sent ``event`` up to the pipes
``api_message``           the REST API published ``event`` on ``channel``
``pipe_connected``        a pipe joined its group (``socket_id`` is the pipe's
                          id; ``details``: group, protocol, session, resumed)
``pipe_disconnected``     a pipe left its group
``pipe_request``          a pipe asked something (``event`` is the method;
                          ``channel``, ``data``, ``details`` its parameters);
                          acks and pings are not told
========================  =====================================================

The observer must not call back into the relay: it is called in the middle
of handling an input, and only records what it is told.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..pipe import events as pipe_events

__all__ = ["Observed", "Observer", "observe_pipe_call"]


class Observed(NamedTuple):
    """One happening of an app (see the module's table)."""

    type: str
    #: The socket's id (for a pipe's happenings, the pipe's).
    socket_id: str | None = None
    channel: str | None = None
    event: str | None = None
    #: The event's data as the sockets receive it (a string).
    data: str | None = None
    details: Mapping[str, Any] | None = None


#: Called with each happening (the watcher stamps the time: it is shown, never decided on).
Observer = Callable[[Observed], None]


def observe_pipe_call(pipe_id: str, call: pipe_events.PipeCall) -> list[Observed]:
    """The happenings a pipe's call is shown as (a batch: one per call; acks and pings: none)."""
    if isinstance(call, pipe_events.Batch):
        return [
            seen
            for item in call.calls
            if isinstance(item, pipe_events.PipeCall)
            for seen in observe_pipe_call(pipe_id, item)
        ]
    if isinstance(call, (pipe_events.Ack, pipe_events.PingCall)):
        return []
    method = call.method
    if isinstance(call, pipe_events.SendToChannel):
        details: dict[str, Any] = {"exclude": call.exclude} if call.exclude else {}
        return [
            Observed("pipe_request", pipe_id, channel, method, call.data, {"event": call.event, **details})
            for channel in call.channels
        ]
    if isinstance(call, pipe_events.SendToSocket):
        details = {"event": call.event, "socket_ids": list(call.socket_ids)}
        return [Observed("pipe_request", pipe_id, call.channel, method, call.data, details)]
    if isinstance(call, pipe_events.DisconnectSocket):
        details = {"socket_id": call.socket_id, "code": call.code, "reason": call.reason}
    elif isinstance(call, pipe_events.TerminateUser):
        details = {"user_id": call.user_id}
    elif isinstance(call, pipe_events.AuthResponse):
        details = {"request_id": call.request_id, "allow": call.allow}
        if call.reason:
            details["reason"] = call.reason
    elif isinstance(call, (pipe_events.SubscribeEvents, pipe_events.UnsubscribeEvents)):
        details = {"events": list(call.events)}
    else:
        details = {}
    return [Observed("pipe_request", pipe_id, None, method, None, details)]
