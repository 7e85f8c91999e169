"""A scripted relay side of the Pipe, for testing Pipe clients (sans I/O).

Theory of operation. A :class:`FakeRelay` plays the relay for one app and
the connections of one client at a time. The test drives it: it decides
whether the next handshake is refused (:meth:`FakeRelay.refuse_next`), sends
notifications (:meth:`FakeRelay.notify`), asks for authorizations
(:meth:`FakeRelay.auth_request`), makes requests fail
(:meth:`FakeRelay.fail_next`), drops events to report a gap
(:meth:`FakeRelay.drop`) and forgets sessions as if their resume grace had
passed (:meth:`FakeRelay.expire_sessions`). Everything the client sends is
checked with the relay's own rules (:class:`~pipe_proto.pipe.PipeServerConnection`)
and recorded in :attr:`FakeRelay.calls`, so a test can assert on it.

Delivery follows pipe-protocol.md 6: notifications to a 1.0 client get
per-session seqs from 1 and stay unacked until an ``ack`` covers them; a
client that reconnects with ``session`` and ``last_seq`` of a live session
gets ``resumed: true`` and every unacked notification after ``last_seq``
again, with the same seq. Notifications sent while no connection is open
wait in the session for that replay.

Like the rest of ``pipe_proto`` it does no I/O: :meth:`FakeRelay.connect`
takes the handshake's path and query and returns the refusal or a
:class:`PipeConnection`; each method returns the text frames to send.
:mod:`pipe_trio.testing` serves one on a port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..apps import App, AppRegistry
from ..errors import PipeCode
from ..pipe.codec import PipeFrameError, encode_error_notification, encode_notification, encode_reply
from ..pipe.events import (
    Ack,
    AuthRequest,
    AuthResponse,
    Batch,
    CallError,
    ErrorReply,
    Established,
    Gap,
    Notice,
    Notification,
    PipeCall,
    Reply,
    Request,
    SendToChannel,
    SendToSocket,
    SubscribeEvents,
    UnsubscribeEvents,
)
from ..pipe.handshake import PipeAccepted, PipeRefused, check_pipe_handshake
from ..pipe.server import PipeServerConnection

__all__ = ["FakeRelay", "PipeConnection", "Session"]


@attrs.define
class Session:
    """A client's delivery state, kept across its connections."""

    id: str
    next_seq: int = 1
    unacked: list[Notification] = attrs.Factory(list)
    acked: int = 0


@attrs.define(eq=False)
class PipeConnection:
    """One connection of the client under test (made by :meth:`FakeRelay.connect`)."""

    relay: FakeRelay
    id: str
    version: str
    session: Session | None
    resumed: bool
    checker: PipeServerConnection
    open: bool = True
    subscribed: set[str] = attrs.Factory(set)

    def opening_frames(self, now: float) -> list[str]:
        """``connection_established``, then the replay of a resumed session (and a reported gap)."""
        return self.relay._opening(self, now)

    def receive(self, text: str, now: float) -> list[str]:
        """A frame from the client; returns the replies and error notifications to send."""
        return self.relay._receive(self, text, now)

    def closed(self) -> None:
        """The connection ended (either side closed it)."""
        self.open = False
        if self.relay.connection is self:
            self.relay.connection = None


class FakeRelay:
    """The relay side of the Pipe, scripted by a test (see the module docstring).

    Args:
        app: the app whose credentials the client must sign with.
        heartbeat: announced in ``connection_established`` (seconds).
        results: the ``result`` to reply per method, instead of the defaults
            (``{"delivered": n}`` for sends with ``n`` targets, ``{}`` otherwise).
    """

    def __init__(self, app: App, *, heartbeat: float = 25.0, results: Mapping[str, Any] | None = None) -> None:
        self.app = app
        self.apps = AppRegistry([app])
        self.heartbeat = heartbeat
        self.results = dict(results or {})
        self.sessions: dict[str, Session] = {}
        self.connection: PipeConnection | None = None
        #: Every request the client made, in order (across connections).
        self.calls: list[Request] = []
        #: The client's answers to :meth:`auth_request`, by request id.
        self.auth_answers: dict[str, AuthResponse] = {}
        #: Every handshake the client attempted: ``(query, outcome)``.
        self.handshakes: list[tuple[dict[str, str], PipeAccepted | PipeRefused]] = []
        self._refusals: list[PipeRefused] = []
        self._failures: dict[str, list[tuple[int, str]]] = {}
        self._dropped = 0
        self._serial = 0
        self._auth_serial = 0

    # ------------------------------------------------------------ the script

    def refuse_next(self, status: int, message: str = "refused by the test") -> None:
        """Refuse the next handshake with this HTTP status (call again for more)."""
        self._refusals.append(PipeRefused(status=status, message=message))

    def fail_next(self, method: str, code: int, message: str = "failed by the test") -> None:
        """Answer the next request of ``method`` with an error reply ``code``."""
        self._failures.setdefault(method, []).append((code, message))

    def expire_sessions(self) -> None:
        """Forget every session, as if their resume grace had passed."""
        self.sessions.clear()

    def drop(self, count: int) -> None:
        """Count ``count`` events as dropped: the next connection reports them as a gap
        (``connection_established.gap`` and a ``gap`` notification)."""
        self._dropped += count

    def notify(self, notice: Notice, now: float) -> list[str]:
        """Send a notification (queued in the session while no connection is open).

        Returns:
            The frames to send on the open connection (none when disconnected).
        """
        conn = self.connection
        session = conn.session if conn is not None else self._last_session()
        seq = None
        if session is not None and (conn is None or conn.version != "0.2"):
            seq = session.next_seq
            session.next_seq += 1
        notification = Notification(notice=notice, seq=seq, time_ms=int(now * 1000))
        if session is not None and seq is not None:
            session.unacked.append(notification)
        if conn is None or not conn.open:
            return []
        return [encode_notification(notification, conn.version)]

    def auth_request(
        self, socket_id: str, now: float, *, kind: str = "channel", channel: str | None = None,
        socket: Mapping[str, Any] | None = None,
    ) -> tuple[str, list[str]]:
        """Ask the client to authorize a socket; returns the request id and the frames to send.

        The answer lands in :attr:`auth_answers` when the client sends it.
        """
        self._auth_serial += 1
        request_id = f"auth-{self._auth_serial}"
        notice = AuthRequest(request_id=request_id, socket_id=socket_id, kind=kind, channel=channel,
                             socket=dict(socket or {"socket_id": socket_id}))
        return request_id, self.notify(notice, now)

    # ------------------------------------------------------------ connections

    def connect(self, app_id: str, query: Mapping[str, str], now: float) -> PipeRefused | PipeConnection:
        """Decide a handshake: a scripted refusal, the relay's own checks, or a new connection.

        A connection already open is replaced (the caller closes it).
        """
        outcome: PipeAccepted | PipeRefused
        if self._refusals:
            outcome = self._refusals.pop(0)
        else:
            outcome = check_pipe_handshake(app_id, query, self.apps, now)
        self.handshakes.append((dict(query), outcome))
        if isinstance(outcome, PipeRefused):
            return outcome
        if self.connection is not None:
            self.connection.closed()
        self._serial += 1
        session: Session | None = None
        resumed = False
        if outcome.version != "0.2":
            known = self.sessions.get(outcome.session or "")
            if known is not None:
                session, resumed = known, True
            else:
                session = Session(id=f"session-{self._serial}")
                self.sessions[session.id] = session
            if resumed and outcome.last_seq is not None:
                self._acked(session, outcome.last_seq)
        conn = PipeConnection(
            relay=self,
            id=f"{self._serial}.{self._serial}",
            version=outcome.version,
            session=session,
            resumed=resumed,
            checker=PipeServerConnection(outcome.app, outcome.version, now),
        )
        self.connection = conn
        return conn

    def _last_session(self) -> Session | None:
        return next(reversed(self.sessions.values()), None)

    @staticmethod
    def _acked(session: Session, seq: int) -> None:
        session.acked = max(session.acked, seq)
        session.unacked = [n for n in session.unacked if n.seq is None or n.seq > seq]

    def _opening(self, conn: PipeConnection, now: float) -> list[str]:
        gap, self._dropped = self._dropped, 0
        notice = Established(
            socket_id=conn.id,
            session=None if conn.session is None else conn.session.id,
            resumed=conn.resumed,
            gap=gap,
            heartbeat=self.heartbeat,
            protocol_version=conn.version,
        )
        frames = [encode_notification(Notification(notice=notice), conn.version)]
        if conn.session is not None and conn.resumed:
            frames += [encode_notification(n, conn.version) for n in conn.session.unacked]
        if gap:
            frames += self.notify(Gap(dropped=gap), now)
        return frames

    def _receive(self, conn: PipeConnection, text: str, now: float) -> list[str]:
        try:
            request = conn.checker.receive(text, now)
        except PipeFrameError as exc:
            code = exc.code or PipeCode.MALFORMED_REQUEST
            if exc.request_id is None:
                return [encode_error_notification(code, exc.message)]
            return [encode_reply(ErrorReply(id=exc.request_id, code=code, message=exc.message))]
        self.calls.append(request)
        outcome = self._execute(conn, request.call)
        if request.id is None:
            if isinstance(outcome, ErrorReply):
                return [encode_error_notification(outcome.code, outcome.message)]
            return []
        if isinstance(outcome, ErrorReply):
            return [encode_reply(ErrorReply(id=request.id, code=outcome.code, message=outcome.message))]
        return [encode_reply(Reply(id=request.id, result=outcome))]

    def _execute(self, conn: PipeConnection, call: PipeCall) -> Any:
        failures = self._failures.get(call.method)
        if failures:
            code, message = failures.pop(0)
            return ErrorReply(id=None, code=code, message=message)
        if isinstance(call, Ack):
            if conn.session is not None:
                self._acked(conn.session, call.seq)
            return {}
        if isinstance(call, AuthResponse):
            if call.request_id in self.auth_answers or not call.request_id.startswith("auth-"):
                return ErrorReply(id=None, code=PipeCode.UNKNOWN_REQUEST_ID,
                                  message=f"unknown request_id {call.request_id!r}")
            self.auth_answers[call.request_id] = call
            return {}
        if isinstance(call, SubscribeEvents):
            conn.subscribed.update(call.events)
        elif isinstance(call, UnsubscribeEvents):
            conn.subscribed.difference_update(call.events)
        elif isinstance(call, Batch):
            results = []
            for item in call.calls:
                if isinstance(item, CallError):
                    results.append({"result": None, "error": {"code": item.code, "message": item.message}})
                    continue
                outcome = self._execute(conn, item)
                if isinstance(outcome, ErrorReply):
                    results.append({"result": None, "error": {"code": outcome.code, "message": outcome.message}})
                else:
                    results.append({"result": outcome, "error": None})
            return results
        if call.method in self.results:
            return self.results[call.method]
        if isinstance(call, (SendToSocket, SendToChannel)) and conn.version != "0.2":
            targets = call.socket_ids if isinstance(call, SendToSocket) else call.channels
            return {"delivered": len(targets)}
        return {}
