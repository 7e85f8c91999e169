"""Channels: subscribing, leaving, publishing, and what each means for others.

A socket's ``pusher:subscribe`` is checked (channels per socket, the
subscribe rate, the authorization decision of :mod:`.authorization`); an
allowed socket is recorded as in the channel at once (so leaving or closing
finds it) and the :mod:`.directory` is asked to join it: the answer
(:meth:`Channels.joined`) sends ``subscription_succeeded`` with the presence
members, then the cache channel's last event or ``cache_miss``. Only joined
sockets receive channel events. The directory reports the transitions it
sees (:meth:`occupied`, :meth:`member_added` ...), which become webhooks and
pipe notices here, in one place.

Publishing encodes the event once, stores it for cache channels, sends it to
this relay's subscribers and hands it to the directory for the rest of the
deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import jsontext
from ..names import ChannelKind, channel_type
from ..pipe import events as pipe_events
from ..pusher.codec import encode_message, subscription_succeeded
from ..pusher.events import CacheMiss, Presence, Subscribe, SubscriptionCount, SubscriptionError, SubscriptionSucceeded
from .authorization import AskPipe, Member, Refuse, authorize_subscription
from .core import Core, frame
from .directory import Directory, Joined
from .later import Later, gather
from .observe import Observed
from .outputs import Send
from .state import AppState, Cached, Channel, Socket

if TYPE_CHECKING:
    from .pipe_auth import PipeAuthorizations
    from .users import Users

__all__ = ["Channels"]


class Channels:
    """The channel rules of one relay."""

    def __init__(self, core: Core, directory: Directory) -> None:
        self.core = core
        self.directory = directory
        self.users: Users | None = None
        self.asking: PipeAuthorizations | None = None

    def bind(self, users: Users, asking: PipeAuthorizations) -> None:
        """Attach the collaborators subscriptions may involve."""
        self.users, self.asking = users, asking

    def refuse(self, sock: Socket, channel: str, refusal: Refuse) -> None:
        """Send a ``pusher:subscription_error``."""
        error = SubscriptionError(channel=channel, type=refusal.type, error=refusal.error, status=refusal.status)
        self.core.send(sock.id, frame(error))
        observer = sock.app.observer
        if observer is not None:
            details = {"type": refusal.type, "error": refusal.error, "status": refusal.status}
            observer(Observed("subscription_error", sock.id, channel, details=details))

    # ------------------------------------------------------------ joining

    def subscribe(self, sock: Socket, request: Subscribe, now: float) -> None:
        """A ``pusher:subscribe``: refuse, ask a pipe, or join."""
        name = request.channel
        if name in sock.channels:
            # Already in: repeat the confirmation (pusher-channels.md 4.3 step 4).
            self._again(sock, name, now)
            return
        limits = sock.app.app.limits
        if len(sock.channels) >= limits.max_channels_per_socket:
            refusal = Refuse(
                "LimitReached", f"a connection may join at most {limits.max_channels_per_socket} channels", 413
            )
            self.refuse(sock, name, refusal)
            return
        # Only attempts to join count: they are what reaches pipes and webhooks.
        if not self._may_subscribe(sock, now):
            rate, burst = limits.subscriptions_per_second, limits.max_channels_per_socket
            message = f"too many subscriptions: {rate:g} per second after a burst of {burst}"
            self.refuse(sock, name, Refuse("LimitReached", message, 429))
            return
        decision = authorize_subscription(sock.app.app, sock.id, request, sock.user)
        if isinstance(decision, Refuse):
            self.refuse(sock, name, decision)
        elif isinstance(decision, AskPipe):
            assert self.asking is not None
            self.asking.ask(sock, "channel", name, now)
        else:
            self.join(sock, name, decision.member, now)

    @staticmethod
    def _may_subscribe(sock: Socket, now: float) -> bool:
        # A token bucket of max_channels_per_socket subscribes, refilled at
        # subscriptions_per_second, kept as one number per socket: the time
        # at which it is full again (the generic cell rate algorithm). The
        # half interval of slack absorbs float rounding at epoch magnitudes.
        limits = sock.app.app.limits
        interval = 1.0 / limits.subscriptions_per_second
        full_at = max(sock.subscribe_full_at, now)
        if full_at - now > (limits.max_channels_per_socket - 0.5) * interval:
            return False
        sock.subscribe_full_at = full_at + interval
        return True

    def join(self, sock: Socket, name: str, member: Member | None, now: float) -> None:
        """Join an authorized socket to ``name`` (``member``: its presence member)."""
        if name in sock.channels:
            self._again(sock, name, now)
            return
        state = sock.app
        ctype = channel_type(name)
        presence = ctype.kind is ChannelKind.PRESENCE
        if presence and member is None:
            self.refuse(sock, name, Refuse("AuthError", "presence channels need a user", 400))
            return
        channel = state.channels.get(name)
        if channel is None:
            channel = state.channels[name] = Channel(name, ctype, presence)
        sock.channels[name] = member.key if member is not None and presence else None
        channel.joining += 1
        self.directory.join(state, channel, sock, member if presence else None, now)

    def _again(self, sock: Socket, name: str, now: float) -> None:
        channel = sock.app.channels[name]
        if sock.id in channel.sockets:
            self.directory.members(sock.app, channel, sock, now)
        # Still joining: the answer to the first subscribe is on its way.

    def joined(self, sock: Socket, channel: Channel, joined: Joined, now: float) -> None:
        """The directory's answer: ``sock`` is in ``channel``."""
        channel.joining -= 1
        channel.sockets.add(sock.id)
        name = channel.name
        self._succeeded(sock, channel, joined.members)
        if sock.app.observer is not None:
            sock.app.observer(Observed("subscribed", sock.id, name))
        if channel.type.cached:
            cached = joined.cached
            if cached is None:
                self.core.send(sock.id, frame(CacheMiss(channel=name)))
                if joined.miss_first and sock.app.webhooks.wants("cache_miss"):
                    sock.app.webhooks.event("cache_miss", now, channel=name)
            else:
                self.core.send(sock.id, encode_message(cached.event, cached.data, name))
        if joined.subscription_count is not None and sock.app.app.features.subscription_count:
            self.core.send(sock.id, frame(SubscriptionCount(channel=name, count=joined.subscription_count)))

    def joined_again(self, sock: Socket, channel: Channel, members: list[tuple[str | int, Any]] | None) -> None:
        """The directory's answer to a repeated subscribe."""
        if sock.id in channel.sockets:
            self._succeeded(sock, channel, members)

    def _succeeded(self, sock: Socket, channel: Channel, members: list[tuple[str | int, Any]] | None) -> None:
        if members is None:
            self.core.send(sock.id, subscription_succeeded(channel.name))
        else:
            succeeded = SubscriptionSucceeded(channel=channel.name, presence=Presence(members=members))
            self.core.send(sock.id, frame(succeeded))

    def join_refused(self, sock: Socket, channel: Channel, refusal: Refuse) -> None:
        """The directory's answer: ``sock`` may not join ``channel``."""
        channel.joining -= 1
        sock.channels.pop(channel.name, None)
        self.forget_if_empty(sock.app, channel)
        self.refuse(sock, channel.name, refusal)

    # ------------------------------------------------------------ leaving

    def leave(self, sock: Socket, name: str, now: float) -> None:
        """``sock`` leaves ``name`` (unsubscribed, or going away)."""
        key = sock.channels.pop(name)
        state = sock.app
        channel = state.channels[name]
        joined = sock.id in channel.sockets
        channel.sockets.discard(sock.id)
        self.directory.leave(state, channel, sock, key, joined, now)
        self.forget_if_empty(state, channel)
        if state.observer is not None:
            state.observer(Observed("unsubscribed", sock.id, name))

    @staticmethod
    def forget_if_empty(state: AppState, channel: Channel) -> None:
        """Drop the record of a channel this relay no longer has sockets in, nor joining."""
        if not channel.sockets and not channel.joining and state.channels.get(channel.name) is channel:
            del state.channels[channel.name]

    # --------------------------------------------------------- transitions

    def occupied(self, state: AppState, name: str, now: float) -> None:
        """The channel has its first subscriber in the deployment."""
        self._channel_hook(state, "channel_occupied", name, now)

    def vacated(self, state: AppState, name: str, now: float, *, confirmed: bool = False) -> None:
        """The channel's last subscriber in the deployment left.

        ``confirmed``: the directory already waited for a quick return; the
        webhook goes out at once instead of after its delay.
        """
        self._channel_hook(state, "channel_vacated", name, now, confirmed)

    def member_added(self, state: AppState, name: str, user_id: str | int, info: Any, now: float) -> None:
        """A user's first socket joined the presence channel."""
        self._member_hook(state, "member_added", name, user_id, info, now)

    def member_removed(
        self, state: AppState, name: str, user_id: str | int, info: Any, now: float, *, confirmed: bool = False
    ) -> None:
        """A user's last socket left the presence channel (``confirmed``: as for :meth:`vacated`)."""
        self._member_hook(state, "member_removed", name, user_id, info, now, confirmed)

    def count_changed(self, state: AppState, channel: Channel, count: int, now: float) -> None:
        """The subscription count of ``channel`` changed: tell its sockets and the webhooks."""
        if not state.app.features.subscription_count:
            return
        if channel.sockets:
            update = frame(SubscriptionCount(channel=channel.name, count=count))
            self.core.out.append(Send(tuple(channel.sockets), update))
        if state.webhooks.wants("subscription_count"):
            state.webhooks.event("subscription_count", now, channel=channel.name, subscription_count=count)

    @staticmethod
    def _channel_hook(state: AppState, kind: str, name: str, now: float, confirmed: bool = False) -> None:
        state.webhooks.event(kind, now, confirmed=confirmed, channel=name)
        if state.observer is not None:
            state.observer(Observed("occupied" if kind == "channel_occupied" else "vacated", channel=name))
        hub = state.hub
        if hub.wants("channel_existence"):
            # Vacated waits, and a quick return cancels both (pipe-protocol.md 3);
            # a confirmed departure has waited already.
            if kind == "channel_occupied":
                hub.arrive("channel_existence", name, pipe_events.ChannelOccupied(channel=name), now)
            elif confirmed:
                hub.publish("channel_existence", name, pipe_events.ChannelVacated(channel=name), now)
            else:
                hub.depart("channel_existence", name, pipe_events.ChannelVacated(channel=name), now)

    @staticmethod
    def _member_hook(
        state: AppState, kind: str, name: str, user_id: str | int, info: Any, now: float, confirmed: bool = False
    ) -> None:
        state.webhooks.event(kind, now, confirmed=confirmed, channel=name, user_id=str(user_id))
        if state.observer is not None:
            state.observer(Observed(kind, channel=name, details={"user_id": str(user_id)}))
        hub = state.hub
        if hub.wants("presence"):
            # As for channels; only a return with the same id and info cancels.
            who, match = str(user_id), jsontext.dumps([user_id, info])
            if kind == "member_added":
                notice = pipe_events.MemberAdded(channel=name, user_id=user_id, user_info=info)
                hub.arrive("presence", name, notice, now, who=who, match=match)
            elif confirmed:
                hub.publish("presence", name, pipe_events.MemberRemoved(channel=name, user_id=user_id), now)
            else:
                gone = pipe_events.MemberRemoved(channel=name, user_id=user_id)
                hub.depart("presence", name, gone, now, who=who, match=match)

    # ---------------------------------------------------------- publishing

    def publish(
        self,
        state: AppState,
        name: str,
        event: str,
        data: str,
        exclude: str | None,
        now: float,
        *,
        counted: bool = False,
    ) -> int | Later:
        """Publish a channel event (REST, a pipe); returns how many sockets it reached.

        This relay's sockets only, unless ``counted``: then the whole
        deployment's, which in a cluster is a :class:`~.later.Later` count.
        """
        ctype = channel_type(name)
        if ctype.kind is ChannelKind.USER:
            assert self.users is not None
            text = encode_message(event, data, name)
            return self.users.send_to_user(state, name, text, exclude, now, counted=counted)
        channel = state.channels.get(name)
        local = channel is not None and bool(channel.sockets)
        # Encoded once, and only when someone will read it.
        text = encode_message(event, data, name) if local or self.directory.remote else ""
        cached = Cached(event, data, now + state.app.limits.cache_ttl) if ctype.cached else None
        elsewhere = self.directory.publish(state, name, text, exclude, cached, now, counted=counted)
        here = self.deliver(channel, text, exclude) if local and channel is not None else 0
        return here if elsewhere is None else gather([here, elsewhere], sum)

    def deliver(self, channel: Channel, text: str, exclude: str | None) -> int:
        """Send a channel event to this relay's subscribers of ``channel``, but ``exclude``."""
        sockets = channel.sockets
        if exclude is not None and exclude in sockets:
            targets = tuple(s for s in sockets if s != exclude)
        else:
            targets = tuple(sockets)
        if targets:
            self.core.out.append(Send(targets, text))
        return len(targets)
