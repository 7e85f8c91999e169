"""The directory: what holds for the whole deployment, not just this relay.

Theory of operation. The relay's rules keep the records of their own
connections (which of *this* relay's sockets are in a channel, signed in as
a user, watching whom) and fan events out to them. Some facts belong to the
whole deployment instead: whether a channel is occupied anywhere and by how
many sockets, who the members of a presence channel are, whether a user is
online, how many connections an app has; and some events must reach the
sockets of other relays. The rules ask a :class:`Directory` for those.

Its answers come back through callbacks on the rules (``channels.joined``,
``users.watching`` ...): at once from :class:`LocalDirectory`, where this
relay is the whole deployment and its own records are the answer; later from
:class:`pipe_proto.cluster.ClusterDirectory`, which asks Redis. The rules are
written once for both, in that continuation style.

A directory also reports the transitions it sees (a channel occupied or
vacated, a member added or removed, a user online or offline) back to the
rules, which turn them into webhooks, pipe notices and frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypeAlias, TypeVar, Union

from ..apps import App
from ..errors import PipeCode
from ..names import SERVER_TO_USER_PREFIX, ChannelKind, channel_type
from ..pipe.codec import PipeFrameError
from ..pipe.events import AuthResponse
from ..pusher.events import MemberAdded, MemberRemoved
from .authorization import Member, Refuse, SignedInUser
from .core import Core, frame
from .later import Later
from .outputs import Output, Send
from .pipes import Hub, PipeHub
from .state import AppState, Cached, Channel, PresenceMember, Socket

if TYPE_CHECKING:
    from .channels import Channels
    from .pipe_auth import PipeAuthorizations
    from .pipe_connections import PipeConnections
    from .sockets import Sockets
    from .users import Users

__all__ = [
    "Answer",
    "ChannelFacts",
    "Directory",
    "Joined",
    "LocalDirectory",
    "Pending",
]

T = TypeVar("T")


class Joined(NamedTuple):
    """What a socket learns when it has joined a channel.

    ``members``: the presence members, itself included (``None`` on other
    channels); ``cached``: a cache channel's event, if any; ``miss_first``:
    its ``cache_miss`` webhook is due (the first miss of an empty spell);
    ``subscription_count``: the channel's subscription count, for the joiner's
    ``subscription_count`` frame, or ``None`` when the directory sends the
    counts itself.
    """

    members: list[tuple[str | int, Any]] | None = None
    cached: Cached | None = None
    miss_first: bool = False
    subscription_count: int | None = None


class ChannelFacts(NamedTuple):
    """A channel as the REST API describes it, for the whole deployment."""

    subscriptions: int
    users: int
    cached: Cached | None


class Pending(Generic[T]):
    """An answer that needs the cluster first: run ``call``, then ``resume(reply)``.

    The adapter sends ``call`` (a :class:`pipe_proto.cluster.Eval`) and feeds
    what comes back to ``resume``, which returns the answer, or another
    :class:`Pending`.
    """

    __slots__ = ("call", "resume")

    def __init__(self, call: Output, resume: Callable[[Any], Answer[T]]) -> None:
        self.call = call
        self.resume = resume


#: A directory's answer to a REST question: at once, or after a cluster call.
Answer: TypeAlias = Union[T, Pending[T]]  # noqa: UP007 - a generic alias needs Union


class Directory(Protocol):
    """The deployment-wide view the relay's rules consult (module docstring)."""

    #: Whether other relays take part (published events must then be encoded for them).
    remote: bool

    def bind(
        self, sockets: Sockets, channels: Channels, users: Users, pipes: PipeConnections, asking: PipeAuthorizations
    ) -> None:
        """Attach the rules the answers go to (called once by the relay)."""

    def new_hub(self, app: App, send: Callable[[str, str], None]) -> Hub:
        """The pipe hub of an app (``send(pipe_id, text)`` sends a frame)."""

    def socket_known(self, state: AppState, socket_id: str) -> None:
        """Pipes were told this socket opened: they must hear when it closes, even if this relay dies."""

    def socket_gone(self, state: AppState, socket_id: str) -> None:
        """A socket pipes knew of closed."""

    def admit(self, state: AppState, socket_id: str, now: float, answer: Callable[[bool, float], None]) -> None:
        """Whether a new socket fits the app's connection limit: ``answer(fits, now)``, now or later."""

    def released(self, state: AppState, socket_id: str) -> None:
        """An admitted socket went away."""

    def abandoned(self, socket_id: str) -> None:
        """A socket went away before :meth:`admit` answered."""

    def join(self, state: AppState, channel: Channel, sock: Socket, member: Member | None, now: float) -> None:
        """``sock`` joins ``channel``; answered with ``channels.joined`` or ``channels.join_refused``."""

    def leave(self, state: AppState, channel: Channel, sock: Socket, key: str | None, joined: bool, now: float) -> None:
        """``sock`` left ``channel`` (``joined``: its join had been answered)."""

    def members(self, state: AppState, channel: Channel, sock: Socket, now: float) -> None:
        """A joined socket asks again: answered with ``channels.joined_again``."""

    def publish(
        self,
        state: AppState,
        name: str,
        text: str,
        exclude: str | None,
        cached: Cached | None,
        now: float,
        *,
        counted: bool = False,
    ) -> Later | None:
        """A channel event published here: store it if cached, carry it to the rest of the deployment.

        ``counted``: return how many sockets elsewhere it reached, once known
        (``None``: no other relay).
        """

    def cached(self, state: AppState, name: str, now: float) -> Answer[Cached | None]:
        """A cache channel's event, if it has one that has not expired."""

    def sign_in(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        """``sock`` signed in; answered with ``users.watching``."""

    def sign_out(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        """``sock``, signed in as ``user``, went away."""

    def to_user(
        self, state: AppState, user_id: str, text: str, exclude: str | None, now: float, *, counted: bool = False
    ) -> Later | None:
        """Carry an event for ``user_id``'s sockets to the rest of the deployment (``counted``: as for publish)."""

    def terminate(self, state: AppState, user_id: str, now: float, *, counted: bool = False) -> Later | None:
        """Close ``user_id``'s sockets in the rest of the deployment (``counted``: how many, once known)."""

    def send_to_sockets(self, state: AppState, socket_ids: list[str], text: str, now: float) -> int | Later:
        """Send ``text`` to sockets of other relays; how many got it."""

    def disconnect_elsewhere(
        self, state: AppState, socket_id: str, code: int, reason: str | None, now: float
    ) -> bool | Later:
        """Close a socket of another relay (a pipe's ``disconnect_socket``); whether one was."""

    def answer_elsewhere(self, state: AppState, answer: AuthResponse, now: float) -> Later:
        """A pipe's ``auth_response`` to a request another relay made.

        Raises:
            PipeFrameError: 4222, no relay made it.
        """

    def app_status(self, state: AppState, local: dict[str, Any]) -> Answer[dict[str, Any]]:
        """The status document of an app, from this relay's ``local`` one."""

    def channels(self, state: AppState, prefix: str, users: bool) -> Answer[dict[str, tuple[int, int]]]:
        """Occupied channels starting with ``prefix``: subscriptions and (``users``) presence users."""

    def channel(self, state: AppState, name: str, now: float) -> Answer[ChannelFacts]:
        """One channel's facts."""

    def channel_users(self, state: AppState, name: str) -> Answer[list[str]]:
        """The user ids present on a presence channel."""

    def next_deadline(self) -> float:
        """When :meth:`tick` has work."""

    def tick(self, now: float) -> None:
        """Run what is due."""

    def stats(self) -> dict[str, Any]:
        """Numbers for the status endpoint."""


class LocalDirectory:
    """This relay is the whole deployment: its own records answer, at once."""

    remote = False

    def __init__(self, core: Core) -> None:
        self.core = core
        self.channels_: Channels | None = None
        self.users_: Users | None = None
        self.sockets_: Sockets | None = None

    def bind(
        self, sockets: Sockets, channels: Channels, users: Users, pipes: PipeConnections, asking: PipeAuthorizations
    ) -> None:
        """Attach the rules the answers go to."""
        self.sockets_, self.channels_, self.users_ = sockets, channels, users

    def new_hub(self, app: App, send: Callable[[str, str], None]) -> Hub:
        return PipeHub(app, send)

    def socket_known(self, state: AppState, socket_id: str) -> None:
        pass

    def socket_gone(self, state: AppState, socket_id: str) -> None:
        pass

    # ------------------------------------------------------------- sockets

    def admit(self, state: AppState, socket_id: str, now: float, answer: Callable[[bool, float], None]) -> None:
        limit = state.app.limits.max_connections
        answer(limit is None or state.socket_count < limit, now)

    def released(self, state: AppState, socket_id: str) -> None:
        pass

    def abandoned(self, socket_id: str) -> None:
        pass

    # ------------------------------------------------------------ channels

    def join(self, state: AppState, channel: Channel, sock: Socket, member: Member | None, now: float) -> None:
        assert self.channels_ is not None
        rules = self.channels_
        members = channel.members
        name = channel.name
        if member is not None and members is not None and member.key not in members:
            limit = state.app.limits.max_presence_members
            if len(members) >= limit:
                full = Refuse("LimitReached", f"presence channel is full ({limit} members)", 413)
                rules.join_refused(sock, channel, full)
                return
        if not channel.sockets:
            rules.occupied(state, name, now)
        if member is not None and members is not None:
            existing = members.get(member.key)
            if existing is None:
                members[member.key] = PresenceMember(member, sock.id)
                if channel.sockets:
                    added = frame(MemberAdded(channel=name, user_id=member.user_id, user_info=member.info))
                    self.core.out.append(Send(tuple(channel.sockets), added))
                rules.member_added(state, name, member.user_id, member.info, now)
            else:
                existing.sockets.add(sock.id)
        snapshot = None if members is None else [(m.user_id, m.info) for m in members.values()]
        cached: Cached | None = None
        miss_first = False
        if channel.type.cached:
            cached = self._cached(state, name, now)
            # One cache_miss webhook per empty spell of an occupied channel.
            if cached is None and not channel.miss_reported:
                channel.miss_reported = miss_first = True
        rules.joined(sock, channel, Joined(members=snapshot, cached=cached, miss_first=miss_first), now)
        if members is None:
            rules.count_changed(state, channel, len(channel.sockets), now)

    def leave(self, state: AppState, channel: Channel, sock: Socket, key: str | None, joined: bool, now: float) -> None:
        assert self.channels_ is not None
        rules = self.channels_
        name = channel.name
        if key is not None and channel.members is not None:
            member = channel.members[key]
            member.sockets.discard(sock.id)
            if not member.sockets:
                del channel.members[key]
                if channel.sockets:
                    removed = frame(MemberRemoved(channel=name, user_id=member.user_id))
                    self.core.out.append(Send(tuple(channel.sockets), removed))
                rules.member_removed(state, name, member.user_id, member.info, now)
        if not channel.sockets:
            rules.vacated(state, name, now)
        elif channel.members is None:
            rules.count_changed(state, channel, len(channel.sockets), now)

    def members(self, state: AppState, channel: Channel, sock: Socket, now: float) -> None:
        assert self.channels_ is not None
        members = channel.members
        snapshot = None if members is None else [(m.user_id, m.info) for m in members.values()]
        self.channels_.joined_again(sock, channel, snapshot)

    def publish(
        self,
        state: AppState,
        name: str,
        text: str,
        exclude: str | None,
        cached: Cached | None,
        now: float,
        *,
        counted: bool = False,
    ) -> Later | None:
        if cached is not None:
            cache = state.cache
            cache.pop(name, None)
            cache[name] = cached
            while len(cache) > state.app.limits.max_cached_channels:
                cache.popitem(last=False)
            channel = state.channels.get(name)
            if channel is not None:
                channel.miss_reported = False
        return None

    def cached(self, state: AppState, name: str, now: float) -> Answer[Cached | None]:
        return self._cached(state, name, now)

    @staticmethod
    def _cached(state: AppState, name: str, now: float) -> Cached | None:
        cached = state.cache.get(name)
        if cached is not None and cached.expires <= now:
            del state.cache[name]
            return None
        return cached

    # --------------------------------------------------------------- users

    def sign_in(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        assert self.users_ is not None
        sockets = state.users.get(user.id)
        if sockets is not None and len(sockets) == 1:
            # Before registering this socket's own watchlist: a user watching
            # itself learns it is online from the snapshot, once.
            self.users_.went(state, user.id, online=True)
        online = [uid for uid in user.watchlist if uid in state.users]
        self.users_.watching(sock, user, online)

    def sign_out(self, state: AppState, sock: Socket, user: SignedInUser, now: float) -> None:
        assert self.users_ is not None
        if user.id not in state.users:
            self.users_.went(state, user.id, online=False)

    def to_user(
        self, state: AppState, user_id: str, text: str, exclude: str | None, now: float, *, counted: bool = False
    ) -> Later | None:
        return None

    def terminate(self, state: AppState, user_id: str, now: float, *, counted: bool = False) -> Later | None:
        return None

    def send_to_sockets(self, state: AppState, socket_ids: list[str], text: str, now: float) -> int | Later:
        return 0  # unknown or closed: skipped, as pipe-protocol.md 4 says

    def disconnect_elsewhere(
        self, state: AppState, socket_id: str, code: int, reason: str | None, now: float
    ) -> bool | Later:
        return False

    def answer_elsewhere(self, state: AppState, answer: AuthResponse, now: float) -> Later:
        raise PipeFrameError(
            PipeCode.UNKNOWN_REQUEST_ID, f"request_id {answer.request_id!r} is unknown, already answered or timed out"
        )

    # ---------------------------------------------------------------- REST

    def app_status(self, state: AppState, local: dict[str, Any]) -> Answer[dict[str, Any]]:
        return local

    def channels(self, state: AppState, prefix: str, users: bool) -> Answer[dict[str, tuple[int, int]]]:
        return {
            name: (len(channel.sockets), len(channel.members or {}))
            for name, channel in state.channels.items()
            if name.startswith(prefix) and channel.sockets
        }

    def channel(self, state: AppState, name: str, now: float) -> Answer[ChannelFacts]:
        channel = state.channels.get(name)
        cached = self._cached(state, name, now) if channel_type(name).cached else None
        if channel is None:
            return ChannelFacts(0, 0, cached)
        return ChannelFacts(len(channel.sockets), len(channel.members or {}), cached)

    def channel_users(self, state: AppState, name: str) -> Answer[list[str]]:
        channel = state.channels.get(name)
        members = channel.members or {} if channel else {}
        return [str(m.user_id) for m in members.values()]

    # ---------------------------------------------------------------- time

    def next_deadline(self) -> float:
        return math.inf

    def tick(self, now: float) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}


def user_channel(name: str) -> str | None:
    """The user id a ``#server-to-user-`` channel is for, or ``None`` for other channels."""
    if channel_type(name).kind is ChannelKind.USER:
        return name[len(SERVER_TO_USER_PREFIX) :]
    return None
