"""The relay's side of one pipe: reading requests, checking them, liveness.

Theory of operation. A pipe is OPEN from the upgrade until either side
closes it. Every text frame goes through :meth:`PipeServerConnection.receive`,
which decodes it and checks each call against the app's rules, so that the
relay only ever executes calls that make sense:

====================  =====  ==============================================
check                 code   applies to
====================  =====  ==============================================
event name rules      4210   send_to_socket, send_to_channel
channel name rules    4211   send_to_socket (channel), send_to_channel
socket id format      4212   send_to_socket, send_to_channel (exclusion),
                             disconnect_socket
payload size          4213   send_to_socket, send_to_channel
number of targets     4214   send_to_socket, send_to_channel, batch
request shape         4220   every method
unknown method        4221   every method
unknown event type    4240   subscribe, unsubscribe
====================  =====  ==============================================

A frame over ``max_frame_bytes`` is not read at all: the adapter stops
buffering it and closes the pipe with 1009 (pipe-protocol.md 2). Liveness
follows :mod:`pipe_proto.liveness` with ``idle = grace = heartbeat``.
"""

from __future__ import annotations

from ..apps import App
from ..errors import PipeCode
from ..liveness import Liveness
from ..names import channel_name_error, event_name_error, socket_id_error
from .codec import PipeFrameError, decode_request
from .events import (
    EVENT_TYPES,
    EVENT_TYPES_0_2,
    Batch,
    CallError,
    DisconnectSocket,
    PipeCall,
    Request,
    SendToChannel,
    SendToSocket,
    SubscribeEvents,
    UnsubscribeEvents,
)

__all__ = ["MAX_TARGETS", "PipeServerConnection"]

#: Most sockets or channels one send may name.
MAX_TARGETS = 100


class PipeServerConnection:
    """Protocol state of one pipe on the relay side.

    Args:
        app: the app the pipe authenticated for.
        version: ``"0.2"`` or ``"1.0"``.
        now: current time in seconds.
    """

    __slots__ = ("app", "liveness", "version")

    def __init__(self, app: App, version: str, now: float) -> None:
        self.app = app
        self.version = version
        beat = app.pipe.heartbeat
        self.liveness = Liveness(now, beat, beat)

    @property
    def event_types(self) -> frozenset[str]:
        """Event types a pipe of this version may subscribe to."""
        return EVENT_TYPES_0_2 if self.version == "0.2" else EVENT_TYPES

    def receive(self, text: str | bytes, now: float) -> Request:
        """Read and check one request frame.

        Returns:
            A request whose call (and every call of a batch that is not a
            :class:`CallError`) is valid for this app.

        Raises:
            PipeFrameError: the request cannot be executed; answer it with
                ``request_id`` (reply) or without (error notification).
        """
        self.liveness.heard(now)
        request = decode_request(text)
        try:
            call = request.call
            if isinstance(call, Batch):
                call = Batch(calls=[self._checked_in_batch(c) for c in call.calls])
                return Request(id=request.id, call=call)
            self.check(call)
        except PipeFrameError as exc:
            exc.request_id = request.id
            raise
        return request

    def _checked_in_batch(self, call: PipeCall | CallError) -> PipeCall | CallError:
        if isinstance(call, CallError):
            return call
        try:
            self.check(call)
        except PipeFrameError as exc:
            return CallError(code=exc.code or PipeCode.MALFORMED_REQUEST, message=exc.message)
        return call

    def check(self, call: PipeCall) -> None:
        """Raise :class:`PipeFrameError` if ``call`` breaks a rule of the table above."""
        limits = self.app.limits
        if isinstance(call, (SubscribeEvents, UnsubscribeEvents)):
            unknown = [e for e in call.events if e not in self.event_types]
            if unknown:
                raise PipeFrameError(
                    PipeCode.UNKNOWN_EVENT_TYPE,
                    f"unknown event type(s) {', '.join(map(repr, unknown))}; "
                    f"protocol {self.version} knows {', '.join(sorted(self.event_types))}",
                )
        elif isinstance(call, (SendToSocket, SendToChannel)):
            problem = event_name_error(call.event)
            if problem:
                raise PipeFrameError(PipeCode.INVALID_EVENT_NAME, problem)
            size = len(call.data.encode("utf-8", "surrogatepass"))
            if size > limits.max_event_bytes:
                raise PipeFrameError(
                    PipeCode.PAYLOAD_TOO_LARGE,
                    f"data is {size} bytes; the limit is {limits.max_event_bytes}",
                )
            targets: tuple[str, ...]
            channels: tuple[str, ...]
            check_socket: tuple[str, ...]
            if isinstance(call, SendToSocket):
                targets, check_socket = call.socket_ids, call.socket_ids
                channels = () if call.channel is None else (call.channel,)
            else:
                targets, channels = call.channels, call.channels
                check_socket = () if call.exclude is None else (call.exclude,)
            if not 1 <= len(targets) <= MAX_TARGETS:
                raise PipeFrameError(
                    PipeCode.TOO_MANY_TARGETS, f"name 1 to {MAX_TARGETS} targets, not {len(targets)}"
                )
            for channel in channels:
                problem = channel_name_error(channel, limits.max_channel_name)
                if problem:
                    raise PipeFrameError(PipeCode.INVALID_CHANNEL_NAME, problem)
            for socket_id in check_socket:
                problem = socket_id_error(socket_id)
                if problem:
                    raise PipeFrameError(PipeCode.MALFORMED_SOCKET_ID, problem)
        elif isinstance(call, DisconnectSocket):
            problem = socket_id_error(call.socket_id)
            if problem:
                raise PipeFrameError(PipeCode.MALFORMED_SOCKET_ID, problem)
