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
from .directory import Directory
from .later import Later, gather
from .observe import Observed, observe_pipe_call
from .outputs import Close, Probe, Send
from .pipe_auth import PipeAuthorizations
from .pipes import TAKEN_OVER
from .sockets import Sockets
from .state import Pipe, utf8_size
from .users import Users

__all__ = ["MAX_EARLY", "PipeConnections"]

#: Requests kept from a pipe before its ``connection_established`` (a cluster attaches later).
MAX_EARLY = 64


def _outcome(value: Any) -> dict[str, Any]:
    """One call of a batch: its result, or its error."""
    if isinstance(value, PipeFrameError):
        return {"result": None, "error": {"code": value.code, "message": value.message}}
    return {"result": value, "error": None}


class PipeConnections:
    """The pipe rules of one relay."""

    def __init__(
        self,
        core: Core,
        directory: Directory,
        sockets: Sockets,
        channels: Channels,
        users: Users,
        asking: PipeAuthorizations,
    ) -> None:
        self.core = core
        self.directory = directory
        #: Requests of pipes still attaching, by pipe id.
        self._early: dict[str, list[str]] = {}
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
        """A pipe's WebSocket was accepted: attach it to its session, then greet it.

        The hub answers at once on one relay; in a cluster, once Redis did.
        """
        core = self.core
        state = core.states[accepted.app.id]
        # Requests a client sends before its connection_established (the
        # 2011 client subscribes at once) wait for it, in order.
        self._early[pipe_id] = []

        def attached(session: Any, resumed: bool, gap: int, now: float) -> None:
            early = self._early.pop(pipe_id, [])
            self._attached(pipe_id, accepted, session, resumed, gap, now)
            pipe = core.pipes.get(pipe_id)
            for text in early:
                if pipe is not None and pipe_id in core.pipes:
                    self.message(pipe, text, now)

        def failed(message: str) -> None:
            self._early.pop(pipe_id, None)
            core.out.append(Close(pipe_id, CloseCode.INTERNAL_ERROR, message))

        state.hub.attach(
            pipe_id,
            accepted.version,
            accepted.group,
            accepted.session,
            accepted.last_seq,
            now,
            new_session=lambda: f"{core.new_id(nonce)}.{accepted.group}",
            taken_over=lambda old: self.drop(old, now, TAKEN_OVER),
            attached=attached,
            failed=failed,
        )

    def early(self, pipe_id: str, text: str) -> None:
        """A request from a pipe still attaching: kept for when it is (ignored for an unknown pipe).

        At most :data:`MAX_EARLY` wait; a pipe sending more before its
        ``connection_established`` is closed with 1008.
        """
        waiting = self._early.get(pipe_id)
        if waiting is None:
            return
        if len(waiting) >= MAX_EARLY:
            self._early.pop(pipe_id)
            self.drop(pipe_id, 0.0, (CloseCode.POLICY_VIOLATION, "too many requests before connection_established"))
            return
        waiting.append(text)

    def _attached(
        self, pipe_id: str, accepted: PipeAccepted, session: Any, resumed: bool, gap: int, now: float
    ) -> None:
        core = self.core
        state = core.states[accepted.app.id]
        conn = PipeServerConnection(accepted.app, accepted.version, now)
        core.pipes[pipe_id] = Pipe(pipe_id, state, conn, session)
        core.counters["pipes_opened"] += 1
        state.counts.pipes_opened += 1
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
        state.hub.start(session, now)
        if state.observer is not None:
            details = {"group": accepted.group, "protocol": accepted.version, "session": session.id, "resumed": resumed}
            state.observer(Observed("pipe_connected", pipe_id, details=details))

    def message(self, pipe: Pipe, text: str, now: float) -> None:
        """A request from ``pipe``: executed, answered unless its id is null (answered later if it must wait)."""
        counts = pipe.app.counts
        counts.pipe_messages_in += 1
        counts.pipe_bytes_in += utf8_size(text)
        try:
            request = pipe.conn.receive(text, now)
            if pipe.app.observer is not None:
                for seen in observe_pipe_call(pipe.id, request.call):
                    pipe.app.observer(seen)
            try:
                result = self._execute(pipe, request.call, now, answered=request.id is not None)
            except PipeFrameError as exc:
                exc.request_id = request.id
                raise
        except PipeFrameError as exc:
            self._error(pipe.id, exc.request_id, exc)
            return
        if isinstance(result, Later):
            result.then(lambda value, error: self._answer(pipe.id, request, value, error))
        else:
            self._answer(pipe.id, request, result, None)

    def _error(self, pipe_id: str, request_id: Any, exc: PipeFrameError) -> None:
        code = exc.code or PipeCode.MALFORMED_REQUEST
        if request_id is None:
            self.core.send(pipe_id, encode_error_notification(code, exc.message))
        else:
            self.core.send(pipe_id, encode_reply(pipe_events.ErrorReply(id=request_id, code=code, message=exc.message)))

    def _answer(self, pipe_id: str, request: pipe_events.Request, result: Any, error: PipeFrameError | None) -> None:
        core = self.core
        if pipe_id not in core.pipes:
            return
        if error is not None:
            self._error(pipe_id, request.id, error)
            return
        if request.id is not None:
            core.send(pipe_id, encode_reply(pipe_events.Reply(id=request.id, result=result)))
        elif isinstance(request.call, pipe_events.Batch):
            # Nobody waits for this batch's reply, but its failures must not
            # go unnoticed: each is reported as a single request's would be.
            for item in result:
                if item["error"] is not None:
                    core.send(pipe_id, encode_error_notification(item["error"]["code"], item["error"]["message"]))
        if isinstance(request.call, pipe_events.Leave):
            # Its session is gone: the connection goes too, once the reply is out.
            del core.pipes[pipe_id]
            core.out.append(Close(pipe_id, CloseCode.NORMAL, "left the group"))

    def _execute(self, pipe: Pipe, call: pipe_events.PipeCall, now: float, *, answered: bool = True) -> Any:
        """Carry out one call; its result, or a :class:`~.later.Later` one (cluster).

        ``answered``: someone waits for the reply. When nobody does (an id of
        null), counts that would need other nodes' answers are not asked for.
        """
        state = pipe.app
        core = self.core
        modern = pipe.conn.version != "0.2"
        if isinstance(call, pipe_events.SendToChannel):
            counts = [
                self.channels.publish(
                    state, channel, call.event, call.data, call.exclude, now, counted=modern and answered
                )
                for channel in call.channels
            ]
            return gather(counts, lambda found: {"delivered": sum(found)} if modern else {})
        if isinstance(call, pipe_events.SendToSocket):
            text = encode_message(call.event, call.data, call.channel)
            sockets = core.sockets
            socket_ids = call.socket_ids
            if len(socket_ids) == 1 and socket_ids[0] in sockets:
                # A backend's usual answer: one socket, on this relay. No
                # other node is asked, so the count is known at once.
                delivered = 0
                if sockets[socket_ids[0]].app is state:
                    core.out.append(Send(socket_ids, text))
                    delivered = 1
                return {"delivered": delivered} if modern else {}
            wanted = tuple(dict.fromkeys(socket_ids))
            targets = tuple(sid for sid in wanted if sid in sockets and sockets[sid].app is state)
            if targets:
                core.out.append(Send(targets, text))
            elsewhere = self.directory.send_to_sockets(
                state, [s for s in wanted if s not in sockets], text, now, counted=answered
            )
            return gather([len(targets), elsewhere], lambda found: {"delivered": sum(found)} if modern else {})
        if isinstance(call, pipe_events.Leave):
            state.hub.leave(pipe.id, now, for_good=True)
            return {}
        if isinstance(call, pipe_events.Ack):
            state.hub.ack(pipe.session, call.seq, now)
            return {}
        if isinstance(call, pipe_events.SubscribeEvents):
            checked = state.hub.subscribe(pipe.session, call.events, now)
            return {} if checked is None else checked
        if isinstance(call, pipe_events.UnsubscribeEvents):
            state.hub.unsubscribe(pipe.session, call.events, now)
            return {}
        if isinstance(call, pipe_events.AuthResponse):
            if self.asking.is_local(call.request_id):
                self.asking.answer(state, call, now)
                return {}
            return self.directory.answer_elsewhere(state, call, now)
        if isinstance(call, pipe_events.DisconnectSocket):
            sock = core.sockets.get(call.socket_id)
            if sock is None:
                found: Any = self.directory.disconnect_elsewhere(state, call.socket_id, call.code, call.reason, now)
            else:
                found = sock.app is state
                if found:
                    self.sockets.kick(sock, call.code, call.reason or "Disconnected by the app", now)
            return gather([found], lambda found: {"disconnected": bool(found[0])} if modern else {})
        if isinstance(call, pipe_events.TerminateUser):
            closed = self.users.terminate(state, call.user_id, now, counted=answered)
            return gather([closed], lambda found: {"terminated": found[0]})
        if isinstance(call, pipe_events.Batch):
            outcomes: list[Any] = []
            for item in call.calls:
                if isinstance(item, pipe_events.CallError):
                    outcomes.append(PipeFrameError(item.code, item.message))
                    continue
                try:
                    outcomes.append(self._execute(pipe, item, now, answered=answered))
                except PipeFrameError as exc:
                    outcomes.append(exc)
            if not answered:
                # Only its failures are reported (see _answer): no outcome is built for the rest.
                return gather(outcomes, lambda values: [_outcome(v) for v in values if isinstance(v, PipeFrameError)])
            return gather(outcomes, lambda values: [_outcome(v) for v in values])
        return {}  # ping

    def heard(self, pipe: Pipe, now: float) -> None:
        """``pipe`` sent a WebSocket ping or pong."""
        pipe.conn.liveness.heard(now)

    def drop(
        self, pipe_id: str, now: float, close: tuple[int, str] | None = None, code: int | None = None
    ) -> None:
        """Forget a pipe (its session enters its grace).

        ``close``: close it with this code and reason; ``code``: the code it
        closed with (None: it went without a close frame).
        """
        self._early.pop(pipe_id, None)
        pipe = self.core.pipes.pop(pipe_id, None)
        if pipe is not None:
            state = pipe.app
            state.hub.leave(pipe_id, now)
            state.counts.count_close("pipe", close[0] if close is not None else code)
            if state.observer is not None:
                details = {"code": close[0], "reason": close[1]} if close is not None else {"code": code}
                state.observer(Observed("pipe_disconnected", pipe_id, details=details))
        elif not any(state.hub.abandoned(pipe_id, now) for state in self.core.states.values()):
            return  # not a pipe, or one already forgotten
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
