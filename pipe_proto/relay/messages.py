"""What sockets send that is not protocol: client events and the back channel.

A ``client-`` event on a private or presence channel the socket is in goes
to the channel's other sockets (``user_id`` added on presence), to the
``client_event`` webhook and to pipes taking ``socket_message``; any other
event goes up the back channel to the pipes only. Both are bounded per
socket per second (4301 beyond) and by the app's ``max_event_bytes``.
"""

from __future__ import annotations

from typing import Any

from .. import jsontext, prechecked
from ..errors import PusherCode
from ..names import channel_type, event_name_error
from ..pusher.codec import encode_message
from ..pusher.events import Message
from .core import Core
from .directory import Directory
from .observe import Observed
from .outputs import Send
from .state import Socket

__all__ = ["Messages"]


class Messages:
    """The client-event and back-channel rules of one relay."""

    def __init__(self, core: Core, directory: Directory) -> None:
        self.core = core
        self.directory = directory

    @staticmethod
    def _within_rate(sock: Socket, now: float, client: bool) -> bool:
        limits = sock.app.app.limits
        if client:
            if now - sock.client_window >= 1.0:
                sock.client_window, sock.client_count = now, 0
            sock.client_count += 1
            return sock.client_count <= limits.client_events_per_second
        if now - sock.back_window >= 1.0:
            sock.back_window, sock.back_count = now, 0
        sock.back_count += 1
        return sock.back_count <= limits.back_channel_per_second

    @staticmethod
    def _payload_error(sock: Socket, event: Message, text_length: int) -> str | None:
        problem = event_name_error(event.event)
        if problem:
            return problem
        limit = sock.app.app.limits.max_event_bytes
        # The data is part of the message: re-encoded, each of its characters
        # takes at most 12 bytes (a surrogate pair escaped), so a short
        # message cannot be over the limit and need not be measured.
        if text_length * 12 <= limit:
            return None
        try:
            size = jsontext.encoded_size(event.data)
        except ValueError:
            return "data is not encodable"
        if size > limit:
            return f"Event data is {size} bytes; the limit is {limit} bytes"
        return None

    def client_event(self, sock: Socket, event: Message, now: float, text_length: int) -> None:
        """A ``client-`` event on a channel."""
        core = self.core
        state = sock.app
        name = event.channel
        assert name is not None
        if not state.app.features.client_events:
            core.error(sock.id, "Client events are not enabled for this app")
            return
        if not channel_type(name).kind.allows_client_events:
            core.error(sock.id, "Client event rejected - only supported on private and presence channels")
            return
        channel = state.channels.get(name)
        if name not in sock.channels or channel is None or sock.id not in channel.sockets:
            core.error(sock.id, f"Cannot broadcast client event (connection not subscribed to channel {name})")
            return
        if not self._within_rate(sock, now, client=True):
            limit = state.app.limits.client_events_per_second
            core.error(sock.id, f"Client event rate limit exceeded ({limit} per second)", PusherCode.RATE_LIMITED)
            return
        problem = self._payload_error(sock, event, text_length)
        if problem:
            core.error(sock.id, f"Client event rejected: {problem}")
            return
        data = event.data if isinstance(event.data, str) else jsontext.dumps(event.data)
        # On presence channels a socket's entry is its member key: the user id as a string.
        user_id = sock.channels[name]
        text = encode_message(event.event, data, name, user_id)
        if self.directory.remote:
            self.directory.publish(state, name, text, sock.id, None, now)
        others = tuple(s for s in channel.sockets if s != sock.id)
        if others:
            core.out.append(Send(others, text))
        if state.observer is not None:
            state.observer(Observed("client_event", sock.id, name, event.event, data))
        if state.webhooks.wants("client_event"):
            fields: dict[str, Any] = {"channel": name, "event": event.event, "data": data, "socket_id": sock.id}
            if user_id is not None:
                fields["user_id"] = user_id
            state.webhooks.event("client_event", now, **fields)
        if state.hub.wants("socket_message"):
            notice = prechecked.socket_message(sock.id, event.event, event.data, name, user_id)
            state.hub.publish("socket_message", sock.id, notice, now)

    def back_channel(self, sock: Socket, event: Message, now: float, text_length: int) -> None:
        """Any other event: up the back channel to the pipes."""
        core = self.core
        state = sock.app
        if not self._within_rate(sock, now, client=False):
            limit = state.app.limits.back_channel_per_second
            core.error(sock.id, f"Back-channel rate limit exceeded ({limit} per second)", PusherCode.RATE_LIMITED)
            return
        problem = self._payload_error(sock, event, text_length)
        if problem:
            core.error(sock.id, f"Message rejected: {problem}")
            return
        if state.observer is not None:
            data = event.data if isinstance(event.data, str) else jsontext.dumps(event.data)
            state.observer(Observed("back_channel", sock.id, event.channel, event.event, data))
        hub = state.hub
        if not hub.wants("socket_message"):
            hub.unrouted += 1
            return
        notice = prechecked.socket_message(sock.id, event.event, event.data, event.channel, None)
        hub.publish("socket_message", sock.id, notice, now)
