"""The relay: apps, sockets, channels, presence, users and pipes, without I/O.

Theory of operation. The adapter owns the network; this object owns every
decision. The adapter reports what happened (a socket opened, a text message
arrived, a pipe closed, time passed) and gets back a list of
:mod:`~pipe_proto.relay.outputs` to carry out in order: send this text to
these connections, close that one, queue this webhook event. Nothing here
blocks, reads a clock or draws random numbers: ``now`` and ``nonce`` come in
as arguments.

Connections are named by id. Sockets get ``"{n}.{nonce}"`` ids: ``n`` counts
up from ``id_base`` (so ids are unique for the relay's lifetime) and the
nonce keeps them unguessable; pipes get ids of the same shape. When the relay
decides to close a connection (heartbeat, termination, shutdown) it forgets
the connection at once and emits :class:`~.outputs.Close`; the adapter's
later report that the connection closed is then a no-op.

State is kept only for live connections and occupied channels. Closing a
socket leaves every channel it was in (with the presence and webhook
consequences), signs it out, drops its watchers and its pending
authorizations; an app with no sockets, channels or pipes holds nothing but
its cache (bounded by ``max_cached_channels``) and delayed webhooks.

Timers: every connection has one entry in a heap keyed by the deadline it
had when pushed; a frame arriving only moves the connection's own deadline
(two attribute writes), and a popped entry whose deadline moved is pushed
again. Entries of closed connections are skipped, and the heap is rebuilt
when they outnumber the live ones.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .. import _json
from ..apps import App, AppRegistry
from ..errors import CloseCode, PipeCode, PusherCode, RemoteProtocolError
from ..liveness import LivenessAction
from ..names import SERVER_TO_USER_PREFIX, ChannelKind, channel_type, event_name_error
from ..pipe import events as pipe_events
from ..pipe.codec import PipeFrameError, encode_error_notification, encode_notification, encode_reply
from ..pipe.handshake import PipeAccepted, PipeRefused, check_pipe_handshake
from ..pipe.server import PipeServerConnection
from ..pusher.codec import Role, encode, encode_message
from ..pusher.connection import PusherConnection
from ..pusher.events import (
    CacheMiss,
    Error,
    MemberAdded,
    MemberRemoved,
    Message,
    Ping,
    Pong,
    Presence,
    SignIn,
    SignInSuccess,
    Subscribe,
    SubscriptionCount,
    SubscriptionError,
    SubscriptionSucceeded,
    Unsubscribe,
    WatchlistChange,
    WatchlistEvents,
)
from ..webhooks import WebhookScheduler
from .authorization import (
    AskPipe,
    Member,
    Refuse,
    SignedInUser,
    authorize_signin,
    authorize_subscription,
    member_from_data,
    user_from_data,
)
from .outputs import Close, Output, Probe, Send, WebhookEvent
from .pipes import PipeHub
from .state import AppState, Cached, Channel, PendingAuth, Pipe, PresenceMember, Socket, SocketDetails

__all__ = ["SUPPORTED_PROTOCOLS", "Relay"]

#: Pusher protocol versions accepted (1-3 are unsupported by Pusher itself).
SUPPORTED_PROTOCOLS = range(4, 8)
#: Authorizations one socket may have waiting on a pipe at once.
MAX_PENDING_AUTHS = 16


def _frame(event: Any) -> str:
    return encode(event, role=Role.SERVER)


class Relay:
    """The relay's state and rules.

    Args:
        apps: the configured apps.
        id_base: first number of connection ids; pass a random value so ids
            are not reused across restarts.
    """

    def __init__(self, apps: AppRegistry | Iterable[App], *, id_base: int = 1) -> None:
        self.apps = apps if isinstance(apps, AppRegistry) else AppRegistry(apps)
        self._next_id = id_base
        self._out: list[Output] = []
        self._states: dict[str, AppState] = {}
        self._sockets: dict[str, Socket] = {}
        self._pipes: dict[str, Pipe] = {}
        self._timers: list[tuple[float, str]] = []
        self._auths: dict[str, PendingAuth] = {}
        self._auth_timers: list[tuple[float, str]] = []
        self._next_auth = 1
        self.counters = {"sockets_opened": 0, "sockets_refused": 0, "pipes_opened": 0}
        for app in self.apps:
            self._states[app.id] = self._new_state(app)

    def _new_state(self, app: App) -> AppState:
        def send(pipe_id: str, text: str) -> None:
            self._out.append(Send((pipe_id,), text))

        def webhook(urls: tuple[str, ...], event: dict[str, Any]) -> None:
            self._out.append(WebhookEvent(app.id, urls, event))

        return AppState(app, PipeHub(app, send), WebhookScheduler(app, webhook))

    def _take(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _new_id(self, nonce: int) -> str:
        self._next_id += 1
        return f"{self._next_id}.{abs(nonce) % 10**10}"

    def _send(self, socket_id: str, text: str) -> None:
        self._out.append(Send((socket_id,), text))

    def _error(self, socket_id: str, message: str, code: int | None = None) -> None:
        self._send(socket_id, _frame(Error(code=code, message=message)))

    # ================================================================ sockets

    def open_socket(
        self,
        app_key: str | None,
        query: Mapping[str, str],
        now: float,
        *,
        nonce: int,
        details: SocketDetails | None = None,
        secure: bool = False,
    ) -> tuple[str, list[Output]]:
        """A WebSocket was accepted on ``/app/{app_key}`` (``app_key`` ``None``: on another path).

        Returns:
            The connection's id and what to do: ``connection_established``,
            or an error frame and a close (path not found 4005, unknown key
            4001, disabled 4003, over quota 4004, bad protocol
            4006/4007/4008, TLS only 4000). A refused connection is not kept.
        """
        socket_id = self._new_id(nonce)
        app = None if app_key is None else self.apps.by_key(app_key)
        if app_key is None:
            refusal: tuple[int, str] | None = (PusherCode.PATH_NOT_FOUND, "Path not found")
        else:
            refusal = self._refusal(app, query, secure)
        if refusal is not None or app is None:
            code, message = refusal or (PusherCode.APP_NOT_FOUND, "")
            self._error(socket_id, message, code)
            self._out.append(Close(socket_id, code, message))
            self.counters["sockets_refused"] += 1
            return socket_id, self._take()
        state = self._states[app.id]
        conn = PusherConnection(Role.SERVER, now=now, activity_timeout=app.limits.activity_timeout)
        sock = Socket(socket_id, state, conn, self._socket_details(app, details))
        self._sockets[socket_id] = sock
        state.socket_count += 1
        self.counters["sockets_opened"] += 1
        self._send(socket_id, conn.establish(socket_id))
        heapq.heappush(self._timers, (conn.deadline(), socket_id))
        if state.hub.wants("socket_existence"):
            notice = pipe_events.SocketOpened(socket_id=socket_id, **sock.describe())
            state.hub.publish("socket_existence", socket_id, notice, now)
        return socket_id, self._take()

    def _refusal(self, app: App | None, query: Mapping[str, str], secure: bool) -> tuple[int, str] | None:
        if app is None:
            return PusherCode.APP_NOT_FOUND, "App key does not exist on this relay"
        if not app.enabled:
            return PusherCode.APP_DISABLED, "Application is disabled"
        if app.features.tls_only and not secure:
            return PusherCode.TLS_ONLY, "Application only accepts TLS connections"
        protocol = query.get("protocol")
        if protocol is None:
            return PusherCode.NO_PROTOCOL_VERSION, "No protocol version supplied"
        # str.isdigit() also accepts non-ASCII digits such as '²' that int()
        # refuses, and int() refuses strings over 4300 digits: check both first.
        if not (protocol.isascii() and protocol.isdigit()):
            return PusherCode.INVALID_VERSION_FORMAT, "Invalid version string format"
        if len(protocol) > 9 or int(protocol) not in SUPPORTED_PROTOCOLS:
            return PusherCode.UNSUPPORTED_PROTOCOL, f"Unsupported protocol version {protocol}"
        limit = app.limits.max_connections
        if limit is not None and self._states[app.id].socket_count >= limit:
            return PusherCode.OVER_CONNECTION_QUOTA, "Application is over connection quota"
        return None

    @staticmethod
    def _socket_details(app: App, details: SocketDetails | None) -> SocketDetails | None:
        # Kept small: a socket keeps only the headers its app exposes to pipes.
        if details is None:
            return None
        headers = details.headers or {}
        exposed = {name: headers[name] for name in app.pipe.expose_headers if name in headers}
        return details._replace(headers=exposed or None)

    def socket_message(self, socket_id: str, text: str, now: float) -> list[Output]:
        """A socket sent a text message."""
        sock = self._sockets.get(socket_id)
        if sock is None:
            return []
        try:
            event = sock.conn.receive(text, now)
        except RemoteProtocolError as exc:
            self._error(socket_id, exc.message)
            return self._take()
        if isinstance(event, Message):
            if event.is_client_event:
                self._client_event(sock, event, now, len(text))
            else:
                self._back_channel(sock, event, now, len(text))
        elif isinstance(event, Ping):
            self._send(socket_id, _frame(Pong()))
        elif isinstance(event, Subscribe):
            self._subscribe(sock, event, now)
        elif isinstance(event, Unsubscribe):
            if event.channel in sock.channels:
                self._leave(sock, event.channel, now)
        elif isinstance(event, SignIn):
            self._signin(sock, event, now)
        return self._take()

    def socket_oversized(self, socket_id: str, size: int) -> list[Output]:
        """A socket sent a message larger than ``max_socket_message_bytes``; it was discarded."""
        sock = self._sockets.get(socket_id)
        if sock is not None:
            limit = sock.app.app.limits.max_socket_message_bytes
            self._error(socket_id, f"Message of {size}+ bytes discarded; the limit is {limit} bytes")
        return self._take()

    def socket_heard(self, socket_id: str, now: float) -> None:
        """A socket sent a WebSocket ping or pong (counts as activity)."""
        sock = self._sockets.get(socket_id)
        if sock is not None:
            sock.conn.heard(now)

    def socket_closed(
        self, socket_id: str, now: float, code: int | None = None, reason: str | None = None
    ) -> list[Output]:
        """A socket's connection ended (the client closed it, or the network failed).

        ``code`` and ``reason`` are the client's close frame's; ``None``, or
        1006 (which no close frame may carry, RFC 6455 7.4.1), when the
        connection was lost without one. 1.0 pipes get them in ``socket_closed``.
        """
        if code == CloseCode.ABNORMAL:
            code = reason = None
        sock = self._sockets.get(socket_id)
        if sock is not None:
            self._drop_socket(sock, now, code, reason)
        return self._take()

    def close_socket(self, socket_id: str, code: int, reason: str, now: float) -> list[Output]:
        """Close a socket on the relay's initiative: a ``pusher:error`` with ``code``, then the close."""
        sock = self._sockets.get(socket_id)
        if sock is not None:
            self._kick(sock, code, reason, now)
        return self._take()

    def slow_consumer(self, conn_id: str, now: float) -> list[Output]:
        """A socket or pipe stopped reading and its outbound buffer filled up.

        It is closed with 4101 (pusher-js reconnects after a pause; a 1.0
        pipe resumes its session). The adapter has already dropped what was
        queued for it, so the error frame and the close can go out.
        """
        reason = "Client too slow: outbound buffer full"
        sock = self._sockets.get(conn_id)
        if sock is not None:
            self._kick(sock, PusherCode.SLOW_CONSUMER, reason, now)
        pipe = self._pipes.pop(conn_id, None)
        if pipe is not None:
            pipe.app.hub.leave(conn_id, now)
            self._out.append(Close(conn_id, PusherCode.SLOW_CONSUMER, reason))
        return self._take()

    def _kick(self, sock: Socket, code: int, reason: str, now: float) -> None:
        self._error(sock.id, reason, code)
        self._out.append(Close(sock.id, code, reason))
        self._drop_socket(sock, now, code, reason)

    def _drop_socket(self, sock: Socket, now: float, code: int | None, reason: str | None) -> None:
        del self._sockets[sock.id]
        state = sock.app
        state.socket_count -= 1
        sock.conn.close()
        for name in list(sock.channels):
            self._leave(sock, name, now)
        if sock.user is not None:
            self._sign_out(sock, now)
        for request_id in sock.auths or ():
            self._auths.pop(request_id, None)
        if state.hub.wants("socket_existence"):
            notice = pipe_events.SocketClosed(socket_id=sock.id, code=code, reason=reason)
            state.hub.publish("socket_existence", sock.id, notice, now)

    # ------------------------------------------------------------ channels

    def _refuse(self, sock: Socket, channel: str, refusal: Refuse) -> None:
        self._send(
            sock.id,
            _frame(
                SubscriptionError(
                    channel=channel, type=refusal.type, error=refusal.error, status=refusal.status
                )
            ),
        )

    def _subscribe(self, sock: Socket, request: Subscribe, now: float) -> None:
        name = request.channel
        if name in sock.channels:
            # Already in: repeat the confirmation (pusher-channels.md 4.3 step 4).
            self._send(sock.id, self._succeeded_frame(sock.app, name))
            return
        limits = sock.app.app.limits
        if len(sock.channels) >= limits.max_channels_per_socket:
            refusal = Refuse(
                "LimitReached",
                f"a connection may join at most {limits.max_channels_per_socket} channels",
                413,
            )
            self._refuse(sock, name, refusal)
            return
        # Only attempts to join count: they are what reaches pipes and webhooks.
        if not self._may_subscribe(sock, now):
            rate, burst = limits.subscriptions_per_second, limits.max_channels_per_socket
            message = f"too many subscriptions: {rate:g} per second after a burst of {burst}"
            self._refuse(sock, name, Refuse("LimitReached", message, 429))
            return
        decision = authorize_subscription(sock.app.app, sock.id, request, sock.user)
        if isinstance(decision, Refuse):
            self._refuse(sock, name, decision)
        elif isinstance(decision, AskPipe):
            self._ask_pipe(sock, "channel", name, now)
        else:
            self._join(sock, name, decision.member, now)

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

    def _succeeded_frame(self, state: AppState, name: str) -> str:
        channel = state.channels[name]
        if channel.members is None:
            return _frame(SubscriptionSucceeded(channel=name))
        presence = Presence(members=[(m.user_id, m.info) for m in channel.members.values()])
        return _frame(SubscriptionSucceeded(channel=name, presence=presence))

    def _join(self, sock: Socket, name: str, member: Member | None, now: float) -> None:
        if name in sock.channels:
            self._send(sock.id, self._succeeded_frame(sock.app, name))
            return
        state = sock.app
        app = state.app
        channel = state.channels.get(name)
        ctype = channel_type(name)
        presence = ctype.kind is ChannelKind.PRESENCE
        if presence and member is None:
            self._refuse(sock, name, Refuse("AuthError", "presence channels need a user", 400))
            return
        if (
            member is not None
            and channel is not None
            and channel.members is not None
            and member.key not in channel.members
            and len(channel.members) >= app.limits.max_presence_members
        ):
            limit = app.limits.max_presence_members
            self._refuse(sock, name, Refuse("LimitReached", f"presence channel is full ({limit} members)", 413))
            return
        occupied = channel is None
        if channel is None:
            channel = state.channels[name] = Channel(name, ctype, presence)
        sock.channels[name] = member.key if member is not None and presence else None
        if occupied:
            self._channel_hook(state, "channel_occupied", name, now)
        if member is not None and channel.members is not None:
            existing = channel.members.get(member.key)
            if existing is None:
                channel.members[member.key] = PresenceMember(member, sock.id)
                if channel.sockets:
                    frame = _frame(MemberAdded(channel=name, user_id=member.user_id, user_info=member.info))
                    self._out.append(Send(tuple(channel.sockets), frame))
                self._member_hook(state, "member_added", name, member.user_id, member.info, now)
            else:
                existing.sockets.add(sock.id)
        channel.sockets.add(sock.id)
        self._send(sock.id, self._succeeded_frame(state, name))
        if ctype.cached:
            cached = self._cached(state, name, now)
            if cached is None:
                self._send(sock.id, _frame(CacheMiss(channel=name)))
                # One webhook per empty spell of an occupied channel (hosted
                # Channels de-duplicates too): a crowd subscribing to an empty
                # cache channel asks the backend to fill it once.
                if not channel.miss_reported and state.webhooks.wants("cache_miss"):
                    channel.miss_reported = True
                    state.webhooks.event("cache_miss", now, channel=name)
            else:
                self._send(sock.id, encode_message(cached.event, cached.data, name))
        if not presence:
            self._count_changed(state, channel, now)

    def _leave(self, sock: Socket, name: str, now: float) -> None:
        key = sock.channels.pop(name)
        state = sock.app
        channel = state.channels[name]
        channel.sockets.discard(sock.id)
        if key is not None and channel.members is not None:
            member = channel.members[key]
            member.sockets.discard(sock.id)
            if not member.sockets:
                del channel.members[key]
                if channel.sockets:
                    frame = _frame(MemberRemoved(channel=name, user_id=member.user_id))
                    self._out.append(Send(tuple(channel.sockets), frame))
                self._member_hook(state, "member_removed", name, member.user_id, member.info, now)
        if not channel.sockets:
            del state.channels[name]
            self._channel_hook(state, "channel_vacated", name, now)
        elif channel.members is None:
            self._count_changed(state, channel, now)

    def _count_changed(self, state: AppState, channel: Channel, now: float) -> None:
        if not state.app.features.subscription_count:
            return
        count = len(channel.sockets)
        frame = _frame(SubscriptionCount(channel=channel.name, count=count))
        self._out.append(Send(tuple(channel.sockets), frame))
        if state.webhooks.wants("subscription_count"):
            state.webhooks.event("subscription_count", now, channel=channel.name, subscription_count=count)

    def _channel_hook(self, state: AppState, kind: str, name: str, now: float) -> None:
        state.webhooks.event(kind, now, channel=name)
        hub = state.hub
        if hub.wants("channel_existence"):
            # Vacated waits, and a quick return cancels both (pipe-protocol.md 3).
            if kind == "channel_occupied":
                hub.arrive("channel_existence", name, pipe_events.ChannelOccupied(channel=name), now)
            else:
                hub.depart("channel_existence", name, pipe_events.ChannelVacated(channel=name), now)

    def _member_hook(
        self, state: AppState, kind: str, name: str, user_id: str | int, info: Any, now: float
    ) -> None:
        state.webhooks.event(kind, now, channel=name, user_id=str(user_id))
        hub = state.hub
        if hub.wants("presence"):
            # As for channels; only a return with the same id and info cancels.
            who, match = str(user_id), _json.dumps([user_id, info])
            if kind == "member_added":
                notice = pipe_events.MemberAdded(channel=name, user_id=user_id, user_info=info)
                hub.arrive("presence", name, notice, now, who=who, match=match)
            else:
                gone = pipe_events.MemberRemoved(channel=name, user_id=user_id)
                hub.depart("presence", name, gone, now, who=who, match=match)

    def _cached(self, state: AppState, name: str, now: float) -> Cached | None:
        cached = state.cache.get(name)
        if cached is not None and cached.expires <= now:
            del state.cache[name]
            return None
        return cached

    # -------------------------------------------------------- client events

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

    def _payload_error(self, sock: Socket, event: Message, text_length: int) -> str | None:
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
            size = _json.encoded_size(event.data)
        except ValueError:
            return "data is not encodable"
        if size > limit:
            return f"Event data is {size} bytes; the limit is {limit} bytes"
        return None

    def _client_event(self, sock: Socket, event: Message, now: float, text_length: int) -> None:
        state = sock.app
        name = event.channel
        assert name is not None
        if not state.app.features.client_events:
            self._error(sock.id, "Client events are not enabled for this app")
            return
        if not channel_type(name).kind.allows_client_events:
            self._error(sock.id, "Client event rejected - only supported on private and presence channels")
            return
        if name not in sock.channels:
            self._error(sock.id, f"Cannot broadcast client event (connection not subscribed to channel {name})")
            return
        if not self._within_rate(sock, now, client=True):
            limit = state.app.limits.client_events_per_second
            self._error(sock.id, f"Client event rate limit exceeded ({limit} per second)", PusherCode.RATE_LIMITED)
            return
        problem = self._payload_error(sock, event, text_length)
        if problem:
            self._error(sock.id, f"Client event rejected: {problem}")
            return
        data = event.data if isinstance(event.data, str) else _json.dumps(event.data)
        key = sock.channels[name]
        channel = state.channels[name]
        user_id = None
        if key is not None and channel.members is not None:
            user_id = str(channel.members[key].user_id)
        others = tuple(s for s in channel.sockets if s != sock.id)
        if others:
            self._out.append(Send(others, encode_message(event.event, data, name, user_id)))
        if state.webhooks.wants("client_event"):
            fields = {"channel": name, "event": event.event, "data": data, "socket_id": sock.id}
            if user_id is not None:
                fields["user_id"] = user_id
            state.webhooks.event("client_event", now, **fields)
        if state.hub.wants("socket_message"):
            notice = pipe_events.SocketMessage(
                socket_id=sock.id, name=event.event, data=event.data, channel=name, user_id=user_id
            )
            state.hub.publish("socket_message", sock.id, notice, now)

    def _back_channel(self, sock: Socket, event: Message, now: float, text_length: int) -> None:
        state = sock.app
        if not self._within_rate(sock, now, client=False):
            limit = state.app.limits.back_channel_per_second
            self._error(sock.id, f"Back-channel rate limit exceeded ({limit} per second)", PusherCode.RATE_LIMITED)
            return
        problem = self._payload_error(sock, event, text_length)
        if problem:
            self._error(sock.id, f"Message rejected: {problem}")
            return
        hub = state.hub
        if not hub.wants("socket_message"):
            hub.unrouted += 1
            return
        notice = pipe_events.SocketMessage(
            socket_id=sock.id, name=event.event, data=event.data, channel=event.channel
        )
        hub.publish("socket_message", sock.id, notice, now)

    # -------------------------------------------------------------- sign-in

    def _signin(self, sock: Socket, request: SignIn, now: float) -> None:
        if not sock.app.app.features.user_authentication:
            self._error(sock.id, "User authentication is not enabled for this app", PusherCode.UNAUTHORIZED)
            return
        decision = authorize_signin(sock.app.app, sock.id, request)
        if isinstance(decision, Refuse):
            self._error(sock.id, decision.error, PusherCode.UNAUTHORIZED)
        elif isinstance(decision, AskPipe):
            self._ask_pipe(sock, "user", None, now)
        elif decision.user is not None:
            self._sign_in(sock, decision.user, now)

    def _sign_in(self, sock: Socket, user: SignedInUser, now: float) -> None:
        if sock.user is not None:
            if sock.user.id != user.id:
                self._error(sock.id, "Connection is already signed in as another user", PusherCode.UNAUTHORIZED)
            else:
                self._send(sock.id, _frame(SignInSuccess(user_data=user.user_data)))
            return
        state = sock.app
        sock.user = user
        sockets = state.users.setdefault(user.id, set())
        first = not sockets
        sockets.add(sock.id)
        self._send(sock.id, _frame(SignInSuccess(user_data=user.user_data)))
        if first:
            # Before registering this socket's own watchlist: a user watching
            # itself learns it is online from the snapshot below, once.
            self._watchlist_change(state, user.id, "online")
        if state.app.features.watchlist:
            if user.watchlist_truncated:
                limit = state.app.limits.max_watchlist
                self._error(
                    sock.id,
                    f"Watchlist limit exceeded: only the first {limit} user ids are watched",
                    PusherCode.WATCHLIST_LIMIT,
                )
            for watched in user.watchlist:
                state.watchers.setdefault(watched, set()).add(sock.id)
            online = [uid for uid in user.watchlist if uid in state.users]
            if online:
                change = WatchlistChange(name="online", user_ids=online)
                self._send(sock.id, _frame(WatchlistEvents(events=[change])))

    def _sign_out(self, sock: Socket, now: float) -> None:
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
                self._watchlist_change(state, user.id, "offline")

    def _watchlist_change(self, state: AppState, user_id: str, name: str) -> None:
        watchers = state.watchers.get(user_id)
        if watchers:
            change = WatchlistChange(name=name, user_ids=[user_id])
            self._out.append(Send(tuple(watchers), _frame(WatchlistEvents(events=[change]))))

    # ------------------------------------------------- authorization by pipe

    def _ask_pipe(self, sock: Socket, kind: str, channel: str | None, now: float) -> None:
        state = sock.app
        holder = state.hub.holder("auth")
        if holder is None:
            self._auth_failed(sock, kind, channel, 503, "No signature given and no pipe authorizes this app")
            return
        if sock.auths is not None and len(sock.auths) >= MAX_PENDING_AUTHS:
            self._auth_failed(sock, kind, channel, 429, "Too many authorizations waiting")
            return
        request_id = f"{self._next_auth}"
        self._next_auth += 1
        deadline = now + state.app.pipe.auth_timeout
        self._auths[request_id] = PendingAuth(sock.id, kind, channel, deadline)
        heapq.heappush(self._auth_timers, (deadline, request_id))
        if sock.auths is None:
            sock.auths = []
        sock.auths.append(request_id)
        notice = pipe_events.AuthRequest(
            request_id=request_id, socket_id=sock.id, kind=kind, channel=channel, socket=sock.describe()
        )
        state.hub.publish("auth", sock.id, notice, now)

    def _auth_failed(self, sock: Socket, kind: str, channel: str | None, status: int, message: str) -> None:
        if kind == "user":
            self._error(sock.id, message, PusherCode.UNAUTHORIZED)
        else:
            assert channel is not None
            self._refuse(sock, channel, Refuse("AuthError", message, status))

    def _settle_auth(self, request_id: str) -> tuple[PendingAuth, Socket] | None:
        pending = self._auths.pop(request_id, None)
        if pending is None:
            return None
        sock = self._sockets.get(pending.socket_id)
        if sock is None:
            return None
        if sock.auths is not None:
            sock.auths.remove(request_id)
            if not sock.auths:
                sock.auths = None
        return pending, sock

    def _auth_response(self, state: AppState, answer: pipe_events.AuthResponse, now: float) -> None:
        pending = self._auths.get(answer.request_id)
        owner = self._sockets.get(pending.socket_id) if pending else None
        if pending is None or owner is None or owner.app is not state:
            raise PipeFrameError(
                PipeCode.UNKNOWN_REQUEST_ID,
                f"request_id {answer.request_id!r} is unknown, already answered or timed out",
            )
        settled = self._settle_auth(answer.request_id)
        assert settled is not None
        _, sock = settled
        if not answer.allow:
            reason = answer.reason or "Forbidden by the app"
            self._auth_failed(sock, pending.kind, pending.channel, 403, reason)
            return
        if pending.kind == "user":
            if not isinstance(answer.user_data, dict):
                self._auth_failed(sock, "user", None, 403, "The app allowed a sign-in without user_data")
                return
            user = user_from_data(_json.dumps(answer.user_data), state.app.limits.max_watchlist)
            if isinstance(user, str):
                self._auth_failed(sock, "user", None, 403, user)
            else:
                self._sign_in(sock, user, now)
            return
        assert pending.channel is not None
        member = None
        if channel_type(pending.channel).kind is ChannelKind.PRESENCE:
            found = member_from_data(answer.channel_data, state.app.limits)
            if isinstance(found, Refuse):
                self._refuse(sock, pending.channel, found)
                return
            member = found
        self._join(sock, pending.channel, member, now)

    # ================================================================ pipes

    def pipe_handshake(self, app_id: str, query: Mapping[str, str], now: float) -> PipeAccepted | PipeRefused:
        """Decide whether a pipe may connect (before the WebSocket upgrade)."""
        decision = check_pipe_handshake(app_id, query, self.apps, now)
        if isinstance(decision, PipeAccepted):
            state = self._states[decision.app.id]
            if state.hub.pipe_count >= decision.app.pipe.max_pipes:
                return PipeRefused(status=503, message="too many pipes for this app")
        return decision

    def open_pipe(self, accepted: PipeAccepted, now: float, *, nonce: int) -> tuple[str, list[Output]]:
        """A pipe's WebSocket was accepted after :meth:`pipe_handshake` said yes.

        Returns:
            The pipe's id and what to do: ``connection_established``, then
            whatever its session is owed (a resumed session's replay, a gap).
        """
        pipe_id = self._new_id(nonce)
        state = self._states[accepted.app.id]
        hub = state.hub
        previous = hub.sessions.get(accepted.session or "")
        if previous is not None and previous.pipe is not None and previous.pipe in self._pipes:
            # The same session reconnected before its old connection was seen to die.
            old = previous.pipe
            self._pipes.pop(old)
            hub.leave(old, now)
            self._out.append(Close(old, PusherCode.RECONNECT, "session resumed on another connection"))
        session_id = f"{self._new_id(nonce)}.{accepted.group}"
        try:
            session, resumed, gap = hub.join(
                pipe_id, accepted.version, accepted.group, session_id, accepted.session,
                accepted.last_seq, now,
            )
        except PipeFrameError as exc:
            self._out.append(Close(pipe_id, CloseCode.INTERNAL_ERROR, exc.message))
            return pipe_id, self._take()
        conn = PipeServerConnection(accepted.app, accepted.version, now)
        self._pipes[pipe_id] = Pipe(pipe_id, state, conn, session)
        self.counters["pipes_opened"] += 1
        established = pipe_events.Established(
            socket_id=pipe_id,
            session=session.id,
            resumed=resumed,
            gap=gap,
            heartbeat=accepted.app.pipe.heartbeat,
            protocol_version=accepted.version,
        )
        self._send(pipe_id, encode_notification(pipe_events.Notification(notice=established), accepted.version))
        heapq.heappush(self._timers, (conn.liveness.deadline(), pipe_id))
        hub.start(session, now)
        return pipe_id, self._take()

    def pipe_message(self, pipe_id: str, text: str, now: float) -> list[Output]:
        """A pipe sent a text message (a request)."""
        pipe = self._pipes.get(pipe_id)
        if pipe is None:
            return []
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
                self._send(pipe_id, encode_error_notification(code, exc.message))
            else:
                reply = pipe_events.ErrorReply(id=exc.request_id, code=code, message=exc.message)
                self._send(pipe_id, encode_reply(reply))
            return self._take()
        if pipe_id not in self._pipes:
            return self._take()
        if request.id is not None:
            self._send(pipe_id, encode_reply(pipe_events.Reply(id=request.id, result=result)))
        elif isinstance(request.call, pipe_events.Batch):
            # Nobody waits for this batch's reply, but its failures must not
            # go unnoticed: each is reported as a single request's would be.
            for item in result:
                if item["error"] is not None:
                    self._send(pipe_id, encode_error_notification(item["error"]["code"], item["error"]["message"]))
        if isinstance(request.call, pipe_events.Leave):
            # Its session is gone: the connection goes too, once the reply is out.
            del self._pipes[pipe_id]
            self._out.append(Close(pipe_id, CloseCode.NORMAL, "left the group"))
        return self._take()

    def pipe_heard(self, pipe_id: str, now: float) -> None:
        """A pipe sent a WebSocket ping or pong."""
        pipe = self._pipes.get(pipe_id)
        if pipe is not None:
            pipe.conn.liveness.heard(now)

    def pipe_closed(self, pipe_id: str, now: float) -> list[Output]:
        """A pipe's connection ended."""
        pipe = self._pipes.pop(pipe_id, None)
        if pipe is not None:
            pipe.app.hub.leave(pipe_id, now)
        return self._take()

    def pipe_oversized(self, pipe_id: str, now: float) -> list[Output]:
        """A pipe sent a frame over ``max_frame_bytes``: close it with 1009."""
        pipe = self._pipes.pop(pipe_id, None)
        if pipe is not None:
            pipe.app.hub.leave(pipe_id, now)
            limit = pipe.app.app.pipe.max_frame_bytes
            self._out.append(Close(pipe_id, CloseCode.MESSAGE_TOO_BIG, f"frame larger than {limit} bytes"))
        return self._take()

    def _execute(self, pipe: Pipe, call: pipe_events.PipeCall, now: float) -> Any:
        state = pipe.app
        modern = pipe.conn.version != "0.2"
        if isinstance(call, pipe_events.SendToChannel):
            delivered = 0
            for channel in call.channels:
                delivered += self._publish(state, channel, call.event, call.data, call.exclude, now)
            return {"delivered": delivered} if modern else {}
        if isinstance(call, pipe_events.SendToSocket):
            frame = encode_message(call.event, call.data, call.channel)
            targets = tuple(
                sid for sid in dict.fromkeys(call.socket_ids)
                if sid in self._sockets and self._sockets[sid].app is state
            )
            if targets:
                self._out.append(Send(targets, frame))
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
            self._auth_response(state, call, now)
            return {}
        if isinstance(call, pipe_events.DisconnectSocket):
            sock = self._sockets.get(call.socket_id)
            found = sock is not None and sock.app is state
            if sock is not None and found:
                self._kick(sock, call.code, call.reason or "Disconnected by the app", now)
            return {"disconnected": found} if modern else {}
        if isinstance(call, pipe_events.TerminateUser):
            return {"terminated": self._terminate(state, call.user_id, now)}
        if isinstance(call, pipe_events.Batch):
            results: list[dict[str, Any]] = []
            for item in call.calls:
                if isinstance(item, pipe_events.CallError):
                    results.append({"result": None, "error": {"code": item.code, "message": item.message}})
                    continue
                try:
                    results.append({"result": self._execute(pipe, item, now), "error": None})
                except PipeFrameError as exc:
                    error = {"code": exc.code, "message": exc.message}
                    results.append({"result": None, "error": error})
            return results
        return {}  # ping

    # ======================================================= server-side API

    def state_of(self, app_id: str) -> AppState | None:
        """The relay's state for an app (read-only use: the REST API's queries)."""
        return self._states.get(app_id)

    def publish(
        self,
        app_id: str,
        channels: Iterable[str],
        event: str,
        data: str,
        exclude: str | None,
        now: float,
    ) -> list[Output]:
        """Publish a channel event (the REST API's trigger); names must be valid."""
        state = self._states[app_id]
        for channel in channels:
            self._publish(state, channel, event, data, exclude, now)
        return self._take()

    def _publish(self, state: AppState, name: str, event: str, data: str, exclude: str | None, now: float) -> int:
        ctype = channel_type(name)
        if ctype.cached:
            cache = state.cache
            cache.pop(name, None)
            cache[name] = Cached(event, data, now + state.app.limits.cache_ttl)
            while len(cache) > state.app.limits.max_cached_channels:
                cache.popitem(last=False)
        if ctype.kind is ChannelKind.USER:
            sockets: set[str] | tuple[()] = state.users.get(name[len(SERVER_TO_USER_PREFIX) :], ())
        else:
            channel = state.channels.get(name)
            if channel is None:
                return 0
            channel.miss_reported = False
            sockets = channel.sockets
        if exclude is not None and exclude in sockets:
            targets = tuple(s for s in sockets if s != exclude)
        else:
            targets = tuple(sockets)
        if targets:
            self._out.append(Send(targets, encode_message(event, data, name)))
        return len(targets)

    def terminate_user(self, app_id: str, user_id: str, now: float) -> list[Output]:
        """Close every socket signed in as ``user_id`` (4009)."""
        self._terminate(self._states[app_id], user_id, now)
        return self._take()

    def _terminate(self, state: AppState, user_id: str, now: float) -> int:
        sockets = list(state.users.get(user_id, ()))
        for socket_id in sockets:
            self._kick(self._sockets[socket_id], PusherCode.UNAUTHORIZED, "You got disconnected by the app.", now)
        return len(sockets)

    def cached_event(self, app_id: str, channel: str, now: float) -> Cached | None:
        """The cache of a cache channel, if it has an unexpired event."""
        return self._cached(self._states[app_id], channel, now)

    # ================================================================ time

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (``inf``: nothing pending)."""
        deadline = self._timers[0][0] if self._timers else math.inf
        if self._auth_timers:
            deadline = min(deadline, self._auth_timers[0][0])
        for state in self._states.values():
            if state.hub.sessions or state.hub.groups:
                deadline = min(deadline, state.hub.next_deadline())
            if len(state.webhooks):
                deadline = min(deadline, state.webhooks.next_deadline())
        return deadline

    def tick(self, now: float) -> list[Output]:
        """Run every timer due at ``now``: heartbeats, auth timeouts, pipe graces, webhooks."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, conn_id = heapq.heappop(timers)
            sock = self._sockets.get(conn_id)
            if sock is not None:
                self._tick_socket(sock, now)
                continue
            pipe = self._pipes.get(conn_id)
            if pipe is not None:
                self._tick_pipe(pipe, now)
        while self._auth_timers and self._auth_timers[0][0] <= now:
            _, request_id = heapq.heappop(self._auth_timers)
            settled = self._settle_auth(request_id)
            if settled is not None:
                pending, sock = settled
                self._auth_failed(sock, pending.kind, pending.channel, 408, "The app did not answer in time")
        for state in self._states.values():
            if (state.hub.sessions or state.hub.groups) and state.hub.next_deadline() <= now:
                state.hub.tick(now)
            if len(state.webhooks):
                state.webhooks.tick(now)
        if len(timers) > 2 * (len(self._sockets) + len(self._pipes)) + 64:
            self._rebuild_timers()
        return self._take()

    def _tick_socket(self, sock: Socket, now: float) -> None:
        deadline = sock.conn.deadline()
        if deadline > now:
            heapq.heappush(self._timers, (deadline, sock.id))
            return
        action = sock.conn.tick(now)
        if action is not None and action.send is not None:
            self._send(sock.id, action.send)
        if action is not None and action.close_code is not None:
            self._out.append(Close(sock.id, action.close_code, action.reason))
            self._drop_socket(sock, now, action.close_code, action.reason)
        else:
            heapq.heappush(self._timers, (sock.conn.deadline(), sock.id))

    def _tick_pipe(self, pipe: Pipe, now: float) -> None:
        liveness = pipe.conn.liveness
        deadline = liveness.deadline()
        if deadline > now:
            heapq.heappush(self._timers, (deadline, pipe.id))
            return
        action = liveness.poll(now)
        if action is LivenessAction.EXPIRE:
            self._pipes.pop(pipe.id)
            pipe.app.hub.leave(pipe.id, now)
            self._out.append(Close(pipe.id, PusherCode.PONG_TIMEOUT, "pipe silent for two heartbeats"))
            return
        if action is not None:
            self._out.append(Probe(pipe.id))
        heapq.heappush(self._timers, (liveness.deadline(), pipe.id))

    def _rebuild_timers(self) -> None:
        self._timers = [(s.conn.deadline(), sid) for sid, s in self._sockets.items()]
        self._timers.extend((p.conn.liveness.deadline(), pid) for pid, p in self._pipes.items())
        heapq.heapify(self._timers)

    # ============================================================ lifecycle

    def shutdown(self, now: float) -> list[Output]:
        """Close every socket and pipe with 4200 (reconnect), for a graceful stop."""
        reason = "Server is shutting down. Please reconnect."
        for sock in list(self._sockets.values()):
            self._kick(sock, PusherCode.RECONNECT, reason, now)
        for pipe_id, pipe in list(self._pipes.items()):
            del self._pipes[pipe_id]
            pipe.app.hub.leave(pipe_id, now)
            self._out.append(Close(pipe_id, PusherCode.RECONNECT, reason))
        return self._take()

    def stats(self) -> dict[str, Any]:
        """Counts for the status endpoint: per app sockets, channels, users, pipes."""
        stats: dict[str, Any] = {
            "sockets": len(self._sockets),
            "pipes": len(self._pipes),
            "pending_auths": len(self._auths),
            **self.counters,
            "apps": {
                app_id: {
                    "sockets": state.socket_count,
                    "channels": len(state.channels),
                    "users": len(state.users),
                    "cached_channels": len(state.cache),
                    "pipe": state.hub.stats(),
                }
                for app_id, state in self._states.items()
            },
        }
        return stats

    def holds_nothing(self) -> bool:
        """True when no connection, channel, user, member or pending auth is left."""
        return (
            not self._sockets
            and not self._pipes
            and not self._auths
            and all(
                not s.channels and not s.users and not s.watchers and s.socket_count == 0
                for s in self._states.values()
            )
        )
