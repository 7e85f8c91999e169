"""Users: sign-in, watchlists, events for a user, terminating a user.

A socket signs in with ``pusher:signin`` (checked by :mod:`.authorization`,
or asked of a pipe). This relay records which of its sockets are signed in
as whom (``AppState.users``) and which watch whom (``AppState.watchers``);
the :mod:`.directory` says whether a user is online anywhere, answering a
sign-in with the watched users already online (:meth:`Users.watching`) and
reporting users going online or offline (:meth:`Users.went`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import PusherCode
from ..names import user_channel
from ..pusher.events import SignIn, SignInSuccess, WatchlistChange, WatchlistEvents
from .authorization import AskPipe, Refuse, SignedInUser, authorize_signin
from .core import Core, frame
from .directory import Directory
from .later import Later, gather
from .observe import Observed
from .outputs import Send
from .state import AppState, Socket

if TYPE_CHECKING:
    from .pipe_auth import PipeAuthorizations
    from .sockets import Sockets

__all__ = ["Users"]


class Users:
    """The user rules of one relay."""

    def __init__(self, core: Core, directory: Directory) -> None:
        self.core = core
        self.directory = directory
        self.sockets: Sockets | None = None
        self.asking: PipeAuthorizations | None = None

    def bind(self, sockets: Sockets, asking: PipeAuthorizations) -> None:
        """Attach the collaborators sign-in and termination involve."""
        self.sockets, self.asking = sockets, asking

    def signin(self, sock: Socket, request: SignIn, now: float) -> None:
        """A ``pusher:signin``: refuse, ask a pipe, or sign in."""
        if not sock.app.app.features.user_authentication:
            self.core.error(sock.id, "User authentication is not enabled for this app", PusherCode.UNAUTHORIZED)
            return
        decision = authorize_signin(sock.app.app, sock.id, request)
        if isinstance(decision, Refuse):
            self.core.error(sock.id, decision.error, PusherCode.UNAUTHORIZED)
        elif isinstance(decision, AskPipe):
            assert self.asking is not None
            self.asking.ask(sock, "user", None, now)
        elif decision.user is not None:
            self.sign_in(sock, decision.user, now)

    def sign_in(self, sock: Socket, user: SignedInUser, now: float) -> None:
        """Sign ``sock`` in as ``user`` (authorized)."""
        if sock.user is not None:
            if sock.user.id != user.id:
                self.core.error(sock.id, "Connection is already signed in as another user", PusherCode.UNAUTHORIZED)
            else:
                self.core.send(sock.id, frame(SignInSuccess(user_data=user.user_data)))
            return
        state = sock.app
        sock.user = user
        state.users.setdefault(user.id, set()).add(sock.id)
        self.core.send(sock.id, frame(SignInSuccess(user_data=user.user_data)))
        self.directory.sign_in(state, sock, user, now)
        if state.observer is not None:
            state.observer(Observed("signin", sock.id, details={"user_id": user.id}))

    def watching(self, sock: Socket, user: SignedInUser, online: list[str]) -> None:
        """The directory's answer to a sign-in: which watched users are online now."""
        state = sock.app
        if sock.user is not user or not state.app.features.watchlist:
            return
        if user.watchlist_truncated:
            limit = state.app.limits.max_watchlist
            self.core.error(
                sock.id,
                f"Watchlist limit exceeded: only the first {limit} user ids are watched",
                PusherCode.WATCHLIST_LIMIT,
            )
        for watched in user.watchlist:
            state.watchers.setdefault(watched, set()).add(sock.id)
        if online:
            change = WatchlistChange(name="online", user_ids=online)
            self.core.send(sock.id, frame(WatchlistEvents(events=[change])))

    def sign_out(self, sock: Socket, now: float) -> None:
        """``sock`` is going away: it stops watching, and its user may go offline."""
        state = sock.app
        user = sock.user
        assert user is not None
        sock.user = None
        # Stop watching first: the socket is gone, and a user watching itself
        # must not be sent its own 'offline'.
        for watched in user.watchlist:
            watchers = state.watchers.get(watched)
            if watchers is not None:
                watchers.discard(sock.id)
                if not watchers:
                    del state.watchers[watched]
        sockets = state.users.get(user.id)
        if sockets is not None:
            sockets.discard(sock.id)
            if not sockets:
                del state.users[user.id]
        self.directory.sign_out(state, sock, user, now)

    def went(self, state: AppState, user_id: str, *, online: bool) -> None:
        """``user_id`` came online or went offline: tell this relay's watchers."""
        watchers = state.watchers.get(user_id)
        if watchers:
            change = WatchlistChange(name="online" if online else "offline", user_ids=[user_id])
            self.core.out.append(Send(tuple(watchers), frame(WatchlistEvents(events=[change]))))

    def send_to_user(
        self, state: AppState, channel: str, text: str, exclude: str | None, now: float, *, counted: bool = False
    ) -> int | Later:
        """An event on ``#server-to-user-{id}``: every socket signed in as that user.

        Returns how many of this relay's sockets it reached (``counted``: of
        the deployment's, perhaps later).
        """
        user_id = user_channel(channel)
        assert user_id is not None
        elsewhere = self.directory.to_user(state, user_id, text, exclude, now, counted=counted)
        here = self.deliver_to_user(state, user_id, text, exclude)
        return here if elsewhere is None else gather([here, elsewhere], sum)

    def deliver_to_user(self, state: AppState, user_id: str, text: str, exclude: str | None = None) -> int:
        """Send ``text`` to this relay's sockets signed in as ``user_id``, but ``exclude``."""
        targets = tuple(s for s in state.users.get(user_id, ()) if s != exclude)
        if targets:
            self.core.out.append(Send(targets, text))
        return len(targets)

    def terminate(self, state: AppState, user_id: str, now: float, *, counted: bool = False) -> int | Later:
        """Close every socket signed in as ``user_id`` (4009).

        Returns how many of this relay's it closed (``counted``: of the
        deployment's, perhaps later).
        """
        elsewhere = self.directory.terminate(state, user_id, now, counted=counted)
        here = self.terminate_here(state, user_id, now)
        return here if elsewhere is None else gather([here, elsewhere], sum)

    def terminate_here(self, state: AppState, user_id: str, now: float) -> int:
        """Close this relay's sockets signed in as ``user_id`` (4009)."""
        assert self.sockets is not None
        sockets = list(state.users.get(user_id, ()))
        reason = "You got disconnected by the app."
        for socket_id in sockets:
            self.sockets.kick(self.core.sockets[socket_id], PusherCode.UNAUTHORIZED, reason, now)
        return len(sockets)
