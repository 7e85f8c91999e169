"""The relay's records: sockets, channels, members, pipes, apps.

Plain slotted classes, no behaviour beyond bookkeeping; the rules live in
the modules of :mod:`pipe_proto.relay` named after each concept. They are kept small on purpose: a relay holds
tens of thousands of sockets, and a socket's record is what it costs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl

from ..names import ChannelType

if TYPE_CHECKING:
    from ..apps import App
    from ..pipe.server import PipeServerConnection
    from ..pusher.connection import PusherConnection
    from ..webhooks import WebhookScheduler
    from .authorization import Member, SignedInUser
    from .observe import Observer
    from .pipes import Hub

__all__ = [
    "AppCounts",
    "AppState",
    "Cached",
    "Channel",
    "PendingAuth",
    "Pipe",
    "PresenceMember",
    "Socket",
    "SocketDetails",
    "close_class",
    "utf8_size",
]


class SocketDetails(NamedTuple):
    """Where a socket came from, as the adapter saw its HTTP upgrade.

    ``headers`` holds every request header, names lowercased; the relay keeps
    only those the app exposes to pipes. ``query`` may be the raw query
    string: it is kept as is and parsed only when a pipe asks (a socket's
    parsed query would cost more than the rest of its record).
    """

    remote_addr: str | None = None
    origin: str | None = None
    user_agent: str | None = None
    query: Mapping[str, str] | str | None = None
    headers: dict[str, str] | None = None


class Socket:
    """One end-user connection."""

    __slots__ = (
        "app",
        "auths",
        "back_count",
        "back_window",
        "channels",
        "client_count",
        "client_window",
        "conn",
        "details",
        "id",
        "subscribe_full_at",
        "user",
    )

    def __init__(
        self, socket_id: str, app: AppState, conn: PusherConnection, details: SocketDetails | None
    ) -> None:
        self.id = socket_id
        self.app = app
        self.conn = conn
        #: Channel name -> presence member key (``None`` on other channels).
        self.channels: dict[str, str | None] = {}
        self.user: SignedInUser | None = None
        self.client_window = 0.0
        self.client_count = 0
        self.back_window = 0.0
        self.back_count = 0
        #: When its subscribe allowance is whole again (see Relay._may_subscribe).
        self.subscribe_full_at = 0.0
        #: Where the socket came from (see :meth:`describe`).
        self.details = details
        #: Pending pipe authorizations (request ids), ``None`` when there are none.
        self.auths: list[str] | None = None


    def describe(self) -> dict[str, Any]:
        """The ``socket`` object 1.0 pipes get: remote address, origin, user agent, query, headers."""
        details = self.details or SocketDetails()
        query = details.query
        return {
            "remote_addr": details.remote_addr,
            "origin": details.origin,
            "user_agent": details.user_agent,
            "query": dict(parse_qsl(query, keep_blank_values=True)) if isinstance(query, str) else dict(query or {}),
            "headers": dict(details.headers or {}),
        }


class PresenceMember:
    """A user present on a channel, through one or more sockets."""

    __slots__ = ("info", "sockets", "user_id")

    def __init__(self, member: Member, socket_id: str) -> None:
        self.user_id = member.user_id
        self.info = member.info
        self.sockets = {socket_id}


class Channel:
    """An occupied channel (a channel with no subscriber has no record)."""

    __slots__ = ("joining", "members", "miss_reported", "name", "sockets", "type")

    def __init__(self, name: str, type: ChannelType, presence: bool) -> None:
        self.name = name
        self.type = type
        #: This relay's sockets that have joined (they receive its events).
        self.sockets: set[str] = set()
        #: Sockets whose join the directory has not answered yet.
        self.joining = 0
        self.members: dict[str, PresenceMember] | None = {} if presence else None
        #: A cache channel's ``cache_miss`` webhook went out, and nothing was
        #: published since: further misses are not reported again.
        self.miss_reported = False


class Cached(NamedTuple):
    """The last event of a cache channel."""

    event: str
    data: str
    expires: float


class Pipe:
    """One connected pipe."""

    __slots__ = ("app", "conn", "id", "session")

    def __init__(self, pipe_id: str, app: AppState, conn: PipeServerConnection, session: Any) -> None:
        self.id = pipe_id
        self.app = app
        self.conn = conn
        #: Its place in its group (the hub's record: a PipeHub ``Session`` or a cluster's).
        self.session = session


class PendingAuth(NamedTuple):
    """A subscription or sign-in waiting for a pipe's ``auth_response``."""

    socket_id: str
    kind: str  # "channel" or "user"
    channel: str | None
    deadline: float


def utf8_size(text: str) -> int:
    """The size of ``text`` in UTF-8, in bytes (``isascii`` is O(1) in CPython: the usual case costs nothing)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def close_class(code: int | None) -> str:
    """The class of a WebSocket close code, as metrics label it.

    ``"1xxx"`` the WebSocket's own codes (a client's 1000 or 1001), ``"40xx"``
    refusals pusher-js does not retry, ``"41xx"`` closes it retries after a
    pause (4101 slow consumer), ``"42xx"`` closes it retries at once (4200
    reconnect, 4201 pong timeout), ``"43xx"`` other Pusher codes, ``"none"``
    a connection lost without a close frame, ``"other"`` anything else.
    """
    if code is None or code == 1006:
        return "none"
    if 1000 <= code < 2000:
        return "1xxx"
    if 4000 <= code < 4400:
        return f"{code // 100}xx"
    return "other"


class AppCounts:
    """What happened to one app since it was added: plain integers, read by metrics.

    Incremented where each thing happens (per connection, per message in, per
    frame written), never per delivery of a broadcast: a channel event to a
    thousand sockets adds to ``socket_messages_out`` once.
    """

    __slots__ = (
        "auth_denied",
        "auth_requests",
        "auth_timeouts",
        "closed",
        "pipe_bytes_in",
        "pipe_bytes_out",
        "pipe_messages_in",
        "pipe_messages_out",
        "pipes_opened",
        "refused",
        "rest_bytes_in",
        "rest_messages_in",
        "slow_pipes",
        "slow_sockets",
        "socket_bytes_in",
        "socket_bytes_out",
        "socket_messages_in",
        "socket_messages_out",
        "sockets_opened",
    )

    def __init__(self) -> None:
        self.sockets_opened = 0
        self.pipes_opened = 0
        #: (``"socket"`` or ``"pipe"``, :func:`close_class`) -> connections closed.
        self.closed: dict[tuple[str, str], int] = {}
        #: Close code -> sockets refused at the handshake.
        self.refused: dict[int, int] = {}
        self.socket_messages_in = 0
        self.socket_bytes_in = 0
        self.pipe_messages_in = 0
        self.pipe_bytes_in = 0
        self.rest_messages_in = 0
        self.rest_bytes_in = 0
        self.socket_messages_out = 0
        self.socket_bytes_out = 0
        self.pipe_messages_out = 0
        self.pipe_bytes_out = 0
        self.auth_requests = 0
        self.auth_denied = 0
        self.auth_timeouts = 0
        self.slow_sockets = 0
        self.slow_pipes = 0

    def count_close(self, kind: str, code: int | None) -> None:
        """A socket or pipe (``kind``) closed with ``code`` (None: without a close frame)."""
        key = (kind, close_class(code))
        self.closed[key] = self.closed.get(key, 0) + 1


class AppState:
    """Everything the relay holds for one app."""

    __slots__ = (
        "app",
        "cache",
        "channels",
        "counts",
        "hub",
        "observer",
        "socket_count",
        "users",
        "watchers",
        "webhooks",
    )

    def __init__(self, app: App, hub: Hub, webhooks: WebhookScheduler) -> None:
        self.app = app
        self.channels: dict[str, Channel] = {}
        #: Signed-in user id -> its sockets.
        self.users: dict[str, set[str]] = {}
        #: Watched user id -> sockets watching it.
        self.watchers: dict[str, set[str]] = {}
        self.cache: OrderedDict[str, Cached] = OrderedDict()
        self.socket_count = 0
        self.hub = hub
        self.webhooks = webhooks
        self.counts = AppCounts()
        #: Called with what happens to the app while someone watches it
        #: (:mod:`.observe`); None, the usual case, costs one test per event.
        self.observer: Observer | None = None
