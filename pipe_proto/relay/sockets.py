"""End-user sockets: the handshake, what each frame means, heartbeats, closing.

A socket is refused at the handshake (unknown key 4001, disabled 4003, over
quota 4004, bad protocol 4006/4007/4008, TLS only 4000, unknown path 4005),
or admitted and sent ``connection_established``. Each frame it sends is
decoded by its :class:`~pipe_proto.pusher.PusherConnection` and dispatched:
subscriptions to :mod:`.channels`, sign-in to :mod:`.users`, ``client-``
events to its channel, anything else up the back channel to the pipes
(:mod:`.messages`). Closing, on either side's initiative, leaves every
channel, signs the user out and tells the pipes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..apps import App
from ..errors import CloseCode, PusherCode, RemoteProtocolError
from ..pipe import events as pipe_events
from ..pusher.codec import Role
from ..pusher.connection import PusherConnection
from ..pusher.events import Message, Ping, Pong, SignIn, Subscribe, Unsubscribe
from .channels import Channels
from .core import Core, frame
from .directory import Directory
from .messages import Messages
from .observe import Observed
from .outputs import Close
from .state import AppState, Socket, SocketDetails

if TYPE_CHECKING:
    from .pipe_auth import PipeAuthorizations
    from .users import Users

__all__ = ["SUPPORTED_PROTOCOLS", "Sockets"]

#: Pusher protocol versions accepted (1-3 are unsupported by Pusher itself).
SUPPORTED_PROTOCOLS = range(4, 8)


class Sockets:
    """The socket rules of one relay."""

    def __init__(self, core: Core, directory: Directory, channels: Channels, users: Users) -> None:
        self.core = core
        self.directory = directory
        self.channels = channels
        self.users = users
        self.messages = Messages(core, directory)
        self.asking: PipeAuthorizations | None = None

    def bind(self, asking: PipeAuthorizations) -> None:
        """Attach the pipe authorizations a closing socket abandons."""
        self.asking = asking

    # ----------------------------------------------------------- handshake

    def open(
        self,
        socket_id: str,
        app_key: str | None,
        query: Mapping[str, str],
        now: float,
        details: SocketDetails | None,
        secure: bool,
    ) -> None:
        """A WebSocket was accepted on ``/app/{app_key}`` (``None``: another path)."""
        core = self.core
        app = None if app_key is None else core.apps.by_key(app_key)
        if app_key is None:
            refusal: tuple[int, str] | None = (PusherCode.PATH_NOT_FOUND, "Path not found")
        else:
            refusal = self._refusal(app, query, secure)
        state = None if app is None else core.states[app.id]
        if refusal is not None or state is None:
            self._refuse(socket_id, *(refusal or (PusherCode.APP_NOT_FOUND, "")), state)
            return

        def answer(fits: bool, now: float) -> None:
            if fits:
                self.admitted(socket_id, state.app, now, details)
            else:
                message = "Application is over connection quota"
                self._refuse(socket_id, PusherCode.OVER_CONNECTION_QUOTA, message, state)

        self.directory.admit(state, socket_id, now, answer)

    def _refuse(self, socket_id: str, code: int, message: str, state: AppState | None) -> None:
        self.core.error(socket_id, message, code)
        self.core.out.append(Close(socket_id, code, message))
        self.core.counters["sockets_refused"] += 1
        refused = self.core.refused_unknown if state is None else state.counts.refused
        refused[code] = refused.get(code, 0) + 1
        if state is not None and state.observer is not None:
            state.observer(Observed("refused", socket_id, details={"code": code, "message": message}))

    def admitted(self, socket_id: str, app: App, now: float, details: SocketDetails | None) -> None:
        """The socket may stay: record it and send ``connection_established``."""
        core = self.core
        state = core.states[app.id]
        conn = PusherConnection(Role.SERVER, now=now, activity_timeout=app.limits.activity_timeout)
        sock = Socket(socket_id, state, conn, self._socket_details(app, details))
        core.sockets[socket_id] = sock
        state.socket_count += 1
        state.counts.sockets_opened += 1
        core.counters["sockets_opened"] += 1
        core.send(socket_id, conn.establish(socket_id))
        core.deadlines.push(conn.deadline(), socket_id)
        if state.hub.wants("socket_existence"):
            notice = pipe_events.SocketOpened(socket_id=socket_id, **sock.describe())
            state.hub.publish("socket_existence", socket_id, notice, now)
            self.directory.socket_known(state, socket_id)
        if state.observer is not None:
            seen = details or SocketDetails()
            where = {"remote_addr": seen.remote_addr, "origin": seen.origin, "user_agent": seen.user_agent}
            state.observer(Observed("connection", socket_id, details=where))

    def _refusal(self, app: App | None, query: Mapping[str, str], secure: bool) -> tuple[int, str] | None:
        if app is None:
            return PusherCode.APP_NOT_FOUND, "App key does not exist on this relay"
        if not app.enabled:
            return PusherCode.APP_DISABLED, "Application is disabled"
        protocol = query.get("protocol")
        if protocol is None:
            return PusherCode.NO_PROTOCOL_VERSION, "No protocol version supplied"
        # str.isdigit() also accepts non-ASCII digits such as '²' that int()
        # refuses, and int() refuses strings over 4300 digits: check both first.
        if not (protocol.isascii() and protocol.isdigit()):
            return PusherCode.INVALID_VERSION_FORMAT, "Invalid version string format"
        if len(protocol) > 9 or int(protocol) not in SUPPORTED_PROTOCOLS:
            return PusherCode.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol}"
        # After the protocol's checks (pusher-channels.md 1.2): pusher-js retries a 4000
        # over TLS at once, which would only bring a refusal the plain connection could have had.
        if app.features.tls_only and not secure:
            return PusherCode.TLS_ONLY, "Application only accepts TLS connections"
        return None

    @staticmethod
    def _socket_details(app: App, details: SocketDetails | None) -> SocketDetails | None:
        # Kept small: a socket keeps only the headers its app exposes to pipes.
        if details is None or not details.headers:
            return details
        headers = details.headers
        exposed = {name: headers[name] for name in app.pipe.expose_headers if name in headers}
        return details._replace(headers=exposed or None)

    # -------------------------------------------------------------- frames

    def message(self, sock: Socket, text: str, now: float) -> None:
        """A text message from ``sock``."""
        try:
            event = sock.conn.receive(text, now)
        except RemoteProtocolError as exc:
            self.core.error(sock.id, exc.message)
            return
        if isinstance(event, Message):
            if event.is_client_event:
                self.messages.client_event(sock, event, now, len(text))
            else:
                self.messages.back_channel(sock, event, now, len(text))
        elif isinstance(event, Ping):
            self.core.send(sock.id, frame(Pong()))
        elif isinstance(event, Subscribe):
            self.channels.subscribe(sock, event, now)
        elif isinstance(event, Unsubscribe):
            if event.channel in sock.channels:
                self.channels.leave(sock, event.channel, now)
        elif isinstance(event, SignIn):
            self.users.signin(sock, event, now)

    def oversized(self, sock: Socket, size: int) -> None:
        """``sock`` sent a message over ``max_socket_message_bytes``; it was discarded."""
        limit = sock.app.app.limits.max_socket_message_bytes
        self.core.error(sock.id, f"Message of {size}+ bytes discarded; the limit is {limit} bytes")

    # ------------------------------------------------------------- closing

    def kick(self, sock: Socket, code: int, reason: str, now: float) -> None:
        """Close ``sock`` on the relay's initiative: a ``pusher:error`` with ``code``, then the close."""
        self.core.error(sock.id, reason, code)
        self.core.out.append(Close(sock.id, code, reason))
        self.drop(sock, now, code, reason)

    def drop(self, sock: Socket, now: float, code: int | None, reason: str | None) -> None:
        """Forget ``sock``: it leaves its channels, signs out, and the pipes are told."""
        core = self.core
        del core.sockets[sock.id]
        state = sock.app
        state.socket_count -= 1
        state.counts.count_close("socket", code)
        self.directory.released(state, sock.id)
        sock.conn.close()
        for name in list(sock.channels):
            self.channels.leave(sock, name, now)
        if sock.user is not None:
            self.users.sign_out(sock, now)
        if self.asking is not None:
            self.asking.forget(sock)
        self.directory.socket_gone(state, sock.id)
        if state.hub.wants("socket_existence"):
            notice = pipe_events.SocketClosed(socket_id=sock.id, code=code, reason=reason)
            state.hub.publish("socket_existence", sock.id, notice, now)
        if state.observer is not None:
            state.observer(Observed("disconnection", sock.id, details={"code": code, "reason": reason}))

    def fail(self, sock: Socket, now: float) -> None:
        """Handling ``sock``'s input hit a bug: close it with 1011, keep everyone else."""
        reason = "Internal error"
        self.core.out.append(Close(sock.id, CloseCode.INTERNAL_ERROR, reason))
        if sock.id in self.core.sockets:
            self.drop(sock, now, CloseCode.INTERNAL_ERROR, reason)

    # --------------------------------------------------------------- time

    def tick(self, sock: Socket, now: float) -> None:
        """``sock``'s heartbeat deadline came: ping it, or close a silent one (4201)."""
        deadline = sock.conn.deadline()
        if deadline > now:
            self.core.deadlines.push(deadline, sock.id)
            return
        action = sock.conn.tick(now)
        if action is not None and action.send is not None:
            self.core.send(sock.id, action.send)
        if action is not None and action.close_code is not None:
            self.core.out.append(Close(sock.id, action.close_code, action.reason))
            self.drop(sock, now, action.close_code, action.reason)
        else:
            self.core.deadlines.push(sock.conn.deadline(), sock.id)
