"""Pipe connections: the handshake, each method a backend calls, liveness.

A pipe is admitted by :func:`~pipe_proto.pipe.handshake.check_pipe_handshake`
(and the app's ``max_pipes``), attached to its group's session by the
:class:`~.pipes.PipeHub` (resuming one if asked), and greeted with
``connection_established``. Each request is checked by its
:class:`~pipe_proto.pipe.server.PipeServerConnection` and executed here
against the relay's rules: sends to sockets and channels, disconnects,
terminations, authorization answers, acks and subscriptions (pipe-protocol.md
4). A pipe silent for two heartbeats is closed with 4201.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CloseCode, PipeCode, PusherCode
from ..liveness import LivenessAction
from ..pipe import events as pipe_events
from ..pipe.codec import PipeFrameError, encode_error_notification, encode_notification, encode_reply
from ..pipe.handshake import PipeAccepted, PipeRefused, check_pipe_handshake
from ..pipe.server import PipeServerConnection
from ..pusher.codec import encode_message
from .channels import Channels
from .core import Core
from .outputs import Close, Probe, Send
from .pipe_auth import PipeAuthorizations
from .sockets import Sockets
from .state import Pipe
from .users import Users

__all__ = ["PipeConnections"]


class PipeConnections:
    """The pipe rules of one relay."""

    def __init__(
        self, core: Core, sockets: Sockets, channels: Channels, users: Users, asking: PipeAuthorizations
    ) -> None:
        self.core = core
        self.sockets = sockets
        self.channels = channels
        self.users = users
        self.asking = asking

    def handshake(self, app_id: str, query: Mapping[str, str], now: float) -> PipeAccepted | PipeRefused:
        """Decide whether a pipe may connect (before the WebSocket upgrade)."""
        decision = check_pipe_handshake(app_id, query, self.core.apps, now)
        if isinstance(decision, PipeAccepted):
            state = self.core.states[decision.app.id]
            if state.hub.pipe_count >= decision.app.pipe.max_pipes:
                return PipeRefused(status=503, message="too many pipes for this app")
        return decision

    def open(self, pipe_id: str, accepted: PipeAccepted, now: float, nonce: int) -> None:
        """A pipe's WebSocket was accepted: attach it to its session and greet it."""
        core = self.core
        state = core.states[accepted.app.id]
        hub = state.hub
        previous = hub.sessions.get(accepted.session or "")
        if previous is not None and previous.pipe is not None and previous.pipe in core.pipes:
            # The same session reconnected before its old connection was seen to die.
            old = previous.pipe
            core.pipes.pop(old)
            hub.leave(old, now)
            core.out.append(Close(old, PusherCode.RECONNECT, "session resumed on another connection"))
        session_id = f"{core.new_id(nonce)}.{accepted.group}"
        try:
            session, resumed, gap = hub.join(
                pipe_id, accepted.version, accepted.group, session_id, accepted.session, accepted.last_seq, now
            )
        except PipeFrameError as exc:
            core.out.append(Close(pipe_id, CloseCode.INTERNAL_ERROR, exc.message))
            return
        conn = PipeServerConnection(accepted.app, accepted.version, now)
        core.pipes[pipe_id] = Pipe(pipe_id, state, conn, session)
        core.counters["pipes_opened"] += 1
        established = pipe_events.Established(
            socket_id=pipe_id,
            session=session.id,
            resumed=resumed,
            gap=gap,
            heartbeat=accepted.app.pipe.heartbeat,
            protocol_version=accepted.version,
        )
        core.send(pipe_id, encode_notification(pipe_events.Notification(notice=established), accepted.version))
        core.deadlines.push(conn.liveness.deadline(), pipe_id)
        hub.start(session, now)

    def message(self, pipe: Pipe, text: str, now: float) -> None:
        """A request from ``pipe``: executed, answered unless its id is null."""
        core = self.core
        try:
            request = pipe.conn.receive(text, now)
            try:
                result = self._execute(pipe, request.call, now)
            except PipeFrameError as exc:
                exc.request_id = request.id
                raise
        except PipeFrameError as exc:
            code = exc.code or PipeCode.MALFORMED_REQUEST
            if exc.request_id is None:
                core.send(pipe.id, encode_error_notification(code, exc.message))
            else:
                reply = pipe_events.ErrorReply(id=exc.request_id, code=code, message=exc.message)
                core.send(pipe.id, encode_reply(reply))
            return
        if pipe.id not in core.pipes:
            return
        if request.id is not None:
            core.send(pipe.id, encode_reply(pipe_events.Reply(id=request.id, result=result)))
        elif isinstance(request.call, pipe_events.Batch):
            # Nobody waits for this batch's reply, but its failures must not
            # go unnoticed: each is reported as a single request's would be.
            for item in result:
                if item["error"] is not None:
                    core.send(pipe.id, encode_error_notification(item["error"]["code"], item["error"]["message"]))
        if isinstance(request.call, pipe_events.Leave):
            # Its session is gone: the connection goes too, once the reply is out.
            del core.pipes[pipe.id]
            core.out.append(Close(pipe.id, CloseCode.NORMAL, "left the group"))

    def _execute(self, pipe: Pipe, call: pipe_events.PipeCall, now: float) -> Any:
        state = pipe.app
        core = self.core
        modern = pipe.conn.version != "0.2"
        if isinstance(call, pipe_events.SendToChannel):
            delivered = 0
            for channel in call.channels:
                delivered += self.channels.publish(state, channel, call.event, call.data, call.exclude, now)
            return {"delivered": delivered} if modern else {}
        if isinstance(call, pipe_events.SendToSocket):
            text = encode_message(call.event, call.data, call.channel)
            targets = tuple(
                sid for sid in dict.fromkeys(call.socket_ids)
                if sid in core.sockets and core.sockets[sid].app is state
            )
            if targets:
                core.out.append(Send(targets, text))
            return {"delivered": len(targets)} if modern else {}
        if isinstance(call, pipe_events.Leave):
            state.hub.leave(pipe.id, now, for_good=True)
            return {}
        if isinstance(call, pipe_events.Ack):
            state.hub.ack(pipe.session, call.seq, now)
            return {}
        if isinstance(call, pipe_events.SubscribeEvents):
            state.hub.subscribe(pipe.session, call.events, now)
            return {}
        if isinstance(call, pipe_events.UnsubscribeEvents):
            state.hub.unsubscribe(pipe.session, call.events, now)
            return {}
        if isinstance(call, pipe_events.AuthResponse):
            self.asking.answer(state, call, now)
            return {}
        if isinstance(call, pipe_events.DisconnectSocket):
            sock = core.sockets.get(call.socket_id)
            found = sock is not None and sock.app is state
            if sock is not None and found:
                self.sockets.kick(sock, call.code, call.reason or "Disconnected by the app", now)
            return {"disconnected": found} if modern else {}
        if isinstance(call, pipe_events.TerminateUser):
            return {"terminated": self.users.terminate(state, call.user_id, now)}
        if isinstance(call, pipe_events.Batch):
            results: list[dict[str, Any]] = []
            for item in call.calls:
                if isinstance(item, pipe_events.CallError):
                    results.append({"result": None, "error": {"code": item.code, "message": item.message}})
                    continue
                try:
                    results.append({"result": self._execute(pipe, item, now), "error": None})
                except PipeFrameError as exc:
                    results.append({"result": None, "error": {"code": exc.code, "message": exc.message}})
            return results
        return {}  # ping

    def heard(self, pipe: Pipe, now: float) -> None:
        """``pipe`` sent a WebSocket ping or pong."""
        pipe.conn.liveness.heard(now)

    def drop(self, pipe_id: str, now: float, close: tuple[int, str] | None = None) -> None:
        """Forget a pipe (its session enters its grace); ``close``: close it with this code and reason."""
        pipe = self.core.pipes.pop(pipe_id, None)
        if pipe is not None:
            pipe.app.hub.leave(pipe_id, now)
            if close is not None:
                self.core.out.append(Close(pipe_id, *close))

    def oversized(self, pipe: Pipe, now: float) -> None:
        """``pipe`` sent a frame over ``max_frame_bytes``: close it with 1009."""
        limit = pipe.app.app.pipe.max_frame_bytes
        self.drop(pipe.id, now, (CloseCode.MESSAGE_TOO_BIG, f"frame larger than {limit} bytes"))

    def tick(self, pipe: Pipe, now: float) -> None:
        """``pipe``'s liveness deadline came: probe it, or close a silent one (4201)."""
        liveness = pipe.conn.liveness
        deadline = liveness.deadline()
        if deadline > now:
            self.core.deadlines.push(deadline, pipe.id)
            return
        action = liveness.poll(now)
        if action is LivenessAction.EXPIRE:
            self.drop(pipe.id, now, (PusherCode.PONG_TIMEOUT, "pipe silent for two heartbeats"))
            return
        if action is not None:
            self.core.out.append(Probe(pipe.id))
        self.core.deadlines.push(liveness.deadline(), pipe.id)
