"""Authorization asked of a pipe (pipe-protocol.md 5).

A subscription or sign-in with no signature goes to the group holding
``auth`` as an ``auth_request``; it waits at most the app's ``auth_timeout``
for the ``auth_response``, and a socket may have :data:`MAX_PENDING_AUTHS`
waiting. The answer joins the channel or signs the socket in exactly as a
valid signature would (:mod:`.channels`, :mod:`.users`), or refuses it: 403
denied, 408 no answer in time, 503 nobody holds ``auth``, 429 too many
waiting. Sign-in failures are ``pusher:error`` 4009 instead.
"""

from __future__ import annotations

from .. import jsontext
from ..errors import PipeCode, PusherCode
from ..names import ChannelKind, channel_type
from ..pipe import events as pipe_events
from ..pipe.codec import PipeFrameError
from .authorization import Refuse, member_from_data, user_from_data
from .channels import Channels
from .core import Core
from .state import AppState, PendingAuth, Socket
from .timers import Deadlines
from .users import Users

__all__ = ["MAX_PENDING_AUTHS", "PipeAuthorizations"]

#: Authorizations one socket may have waiting on a pipe at once.
MAX_PENDING_AUTHS = 16


class PipeAuthorizations:
    """Authorizations waiting for a pipe's answer."""

    def __init__(self, core: Core, channels: Channels, users: Users, prefix: str = "") -> None:
        self.core = core
        self.channels = channels
        self.users = users
        self.pending: dict[str, PendingAuth] = {}
        self.deadlines = Deadlines()
        self._next = 1
        #: Starts this relay's request ids (a cluster node's id and a colon), so an answer finds its way back.
        self.prefix = prefix

    def is_local(self, request_id: str) -> bool:
        """Whether this relay made the request (or nobody did)."""
        return not self.prefix or request_id.startswith(self.prefix) or ":" not in request_id

    def ask(self, sock: Socket, kind: str, channel: str | None, now: float) -> None:
        """Ask the pipe holding ``auth``: may ``sock`` join ``channel`` (``kind`` "channel"), or sign in ("user")?"""
        state = sock.app
        holder = state.hub.holder("auth")
        if holder is None:
            self.failed(sock, kind, channel, 503, "No signature given and no pipe authorizes this app")
            return
        if sock.auths is not None and len(sock.auths) >= MAX_PENDING_AUTHS:
            self.failed(sock, kind, channel, 429, "Too many authorizations waiting")
            return
        request_id = f"{self.prefix}{self._next}"
        self._next += 1
        state.counts.auth_requests += 1
        deadline = now + state.app.pipe.auth_timeout
        self.pending[request_id] = PendingAuth(sock.id, kind, channel, deadline)
        self.deadlines.push(deadline, request_id)
        if sock.auths is None:
            sock.auths = []
        sock.auths.append(request_id)
        notice = pipe_events.AuthRequest(
            request_id=request_id, socket_id=sock.id, kind=kind, channel=channel, socket=sock.describe()
        )
        state.hub.publish("auth", sock.id, notice, now)

    def failed(self, sock: Socket, kind: str, channel: str | None, status: int, message: str) -> None:
        """Tell ``sock`` its authorization failed."""
        if kind == "user":
            self.core.error(sock.id, message, PusherCode.UNAUTHORIZED)
        else:
            assert channel is not None
            self.channels.refuse(sock, channel, Refuse("AuthError", message, status))

    def forget(self, sock: Socket) -> None:
        """``sock`` went away: its requests will never be answered to it."""
        for request_id in sock.auths or ():
            self.pending.pop(request_id, None)

    def _settle(self, request_id: str) -> tuple[PendingAuth, Socket] | None:
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return None
        sock = self.core.sockets.get(pending.socket_id)
        if sock is None:
            return None
        if sock.auths is not None:
            sock.auths.remove(request_id)
            if not sock.auths:
                sock.auths = None
        return pending, sock

    def answer(self, state: AppState, answer: pipe_events.AuthResponse, now: float) -> None:
        """A pipe's ``auth_response``.

        Raises:
            PipeFrameError: 4222, the request is unknown, answered or timed out.
        """
        pending = self.pending.get(answer.request_id)
        owner = self.core.sockets.get(pending.socket_id) if pending else None
        if pending is None or owner is None or owner.app is not state:
            raise PipeFrameError(
                PipeCode.UNKNOWN_REQUEST_ID,
                f"request_id {answer.request_id!r} is unknown, already answered or timed out",
            )
        settled = self._settle(answer.request_id)
        assert settled is not None
        _, sock = settled
        if not answer.allow:
            state.counts.auth_denied += 1
            self.failed(sock, pending.kind, pending.channel, 403, answer.reason or "Forbidden by the app")
            return
        if pending.kind == "user":
            if not isinstance(answer.user_data, dict):
                self.failed(sock, "user", None, 403, "The app allowed a sign-in without user_data")
                return
            user = user_from_data(jsontext.dumps(answer.user_data), state.app.limits.max_watchlist)
            if isinstance(user, str):
                self.failed(sock, "user", None, 403, user)
            else:
                self.users.sign_in(sock, user, now)
            return
        assert pending.channel is not None
        member = None
        if channel_type(pending.channel).kind is ChannelKind.PRESENCE:
            found = member_from_data(answer.channel_data, state.app.limits)
            if isinstance(found, Refuse):
                self.channels.refuse(sock, pending.channel, found)
                return
            member = found
        self.channels.join(sock, pending.channel, member, now)

    def next_deadline(self) -> float:
        """When the next request times out."""
        return self.deadlines.next()

    def tick(self, now: float) -> None:
        """Fail the requests that timed out (408)."""
        for request_id in self.deadlines.due(now):
            settled = self._settle(request_id)
            if settled is not None:
                pending, sock = settled
                sock.app.counts.auth_timeouts += 1
                self.failed(sock, pending.kind, pending.channel, 408, "The app did not answer in time")

    def __len__(self) -> int:
        return len(self.pending)
