"""The Pusher Channels protocol (v7) as typed, immutable events.

Each frame on the wire is one of these classes (pusher-channels.md 1.6). They
validate their fields when built, so an event that exists can be encoded.
The same classes serve both sides: the relay decodes what clients send into
them and encodes what it sends from them, and the Python socket client does
the mirror image (see :mod:`pipe_proto.pusher.codec`).

Application events are :class:`Message`: ``data`` is any JSON value when a
client sends it, and a string (the protocol's double encoding) when the
server sends it; the codec enforces that per direction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

__all__ = [
    "CacheMiss",
    "ConnectionEstablished",
    "Error",
    "MemberAdded",
    "MemberRemoved",
    "Message",
    "Ping",
    "Pong",
    "Presence",
    "PusherEvent",
    "SignIn",
    "SignInError",
    "SignInSuccess",
    "Subscribe",
    "SubscriptionCount",
    "SubscriptionError",
    "SubscriptionSucceeded",
    "Unsubscribe",
    "WatchlistChange",
    "WatchlistEvents",
]

_str = attrs.validators.instance_of(str)
_opt_str = attrs.validators.optional(_str)
_int = attrs.validators.instance_of(int)
_name = attrs.validators.and_(_str, attrs.validators.min_len(1))


def _user_id(_inst: Any, _attr: Any, value: Any) -> None:
    # Presence user ids keep the JSON type they arrived with (pusher-channels.md 6).
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"user_id must be a string or an integer, not {value!r}")


def _members(value: Iterable[tuple[str | int, Any]]) -> tuple[tuple[str | int, Any], ...]:
    return tuple(value)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _changes(value: Iterable[WatchlistChange]) -> tuple[WatchlistChange, ...]:
    return tuple(value)


class PusherEvent:
    """Base class of every Pusher protocol event."""

    __slots__ = ()


@attrs.frozen(kw_only=True)
class ConnectionEstablished(PusherEvent):
    """``pusher:connection_established``: the first frame of every accepted socket."""

    socket_id: str = attrs.field(validator=_str)
    activity_timeout: int = attrs.field(validator=_int)

    def __attrs_post_init__(self) -> None:
        # pusher-js refuses a missing or zero timeout (pusher-channels.md 1.3).
        if self.activity_timeout <= 0:
            raise ValueError("activity_timeout must be positive")


@attrs.frozen(kw_only=True)
class Error(PusherEvent):
    """``pusher:error``; ``code`` is ``None`` for per-request rejections."""

    code: int | None = attrs.field(validator=attrs.validators.optional(_int))
    message: str = attrs.field(validator=_str)


@attrs.frozen
class Ping(PusherEvent):
    """``pusher:ping``, sent by either side; the other answers :class:`Pong`."""


@attrs.frozen
class Pong(PusherEvent):
    """``pusher:pong``."""


@attrs.frozen(kw_only=True)
class Subscribe(PusherEvent):
    """``pusher:subscribe``; ``auth`` and ``channel_data`` exactly as sent."""

    channel: str = attrs.field(validator=_str)
    auth: str | None = attrs.field(default=None, validator=_opt_str)
    channel_data: str | None = attrs.field(default=None, validator=_opt_str)


@attrs.frozen(kw_only=True)
class Unsubscribe(PusherEvent):
    """``pusher:unsubscribe``."""

    channel: str = attrs.field(validator=_str)


@attrs.frozen(kw_only=True)
class SignIn(PusherEvent):
    """``pusher:signin``; ``user_data`` is the exact signed JSON string.

    Both are empty when the client leaves the decision to the app's pipe.
    """

    auth: str = attrs.field(default="", validator=_str)
    user_data: str = attrs.field(default="", validator=_str)


@attrs.frozen(kw_only=True)
class SignInSuccess(PusherEvent):
    """``pusher:signin_success``, echoing the signed ``user_data`` string."""

    user_data: str = attrs.field(validator=_str)


@attrs.frozen(kw_only=True)
class SignInError(Error):
    """A ``pusher:error`` that answers the client's pending ``pusher:signin``: it failed.

    Not a frame of its own: the client side of a connection
    (:class:`~pipe_proto.pusher.PusherConnection`) reads a ``pusher:error``
    with code 4009 as this while a sign-in waits for its answer
    (pusher-channels.md 8.1); the connection stays open.
    """


@attrs.frozen(kw_only=True)
class Presence(PusherEvent):
    """The ``presence`` member list of a presence ``subscription_succeeded``.

    ``members`` maps each user id (as sent) to its ``user_info`` (``None`` when
    the member has none; the key is always present, pusher-channels.md 4.4).
    """

    members: tuple[tuple[str | int, Any], ...] = attrs.field(converter=_members)

    @property
    def count(self) -> int:
        """Number of distinct members."""
        return len(self.members)


@attrs.frozen(kw_only=True)
class SubscriptionSucceeded(PusherEvent):
    """``pusher_internal:subscription_succeeded`` (with members on presence)."""

    channel: str = attrs.field(validator=_str)
    presence: Presence | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Presence))
    )


@attrs.frozen(kw_only=True)
class SubscriptionError(PusherEvent):
    """``pusher:subscription_error``: the relay refused a subscription.

    ``type`` is ``AuthError``, ``InvalidChannel``, ``LimitReached`` or
    ``ServerError``; ``status`` an HTTP-like status (pusher-channels.md 4.5).
    """

    channel: str = attrs.field(validator=_str)
    type: str = attrs.field(validator=_str)
    error: str = attrs.field(validator=_str)
    status: int = attrs.field(validator=_int)


@attrs.frozen(kw_only=True)
class MemberAdded(PusherEvent):
    """``pusher_internal:member_added``: a user's first socket joined."""

    channel: str = attrs.field(validator=_str)
    user_id: str | int = attrs.field(validator=_user_id)
    user_info: Any = None


@attrs.frozen(kw_only=True)
class MemberRemoved(PusherEvent):
    """``pusher_internal:member_removed``: a user's last socket left."""

    channel: str = attrs.field(validator=_str)
    user_id: str | int = attrs.field(validator=_user_id)


@attrs.frozen(kw_only=True)
class CacheMiss(PusherEvent):
    """``pusher:cache_miss``: a cache channel had no event to replay."""

    channel: str = attrs.field(validator=_str)


@attrs.frozen(kw_only=True)
class SubscriptionCount(PusherEvent):
    """``pusher_internal:subscription_count`` (non-presence channels)."""

    channel: str = attrs.field(validator=_str)
    count: int = attrs.field(validator=_int)


@attrs.frozen(kw_only=True)
class WatchlistChange:
    """One element of a watchlist event: ``online`` or ``offline`` user ids."""

    name: str = attrs.field(validator=_str)
    user_ids: tuple[str, ...] = attrs.field(converter=_strings)


@attrs.frozen(kw_only=True)
class WatchlistEvents(PusherEvent):
    """``pusher_internal:watchlist_events``."""

    events: tuple[WatchlistChange, ...] = attrs.field(converter=_changes)


@attrs.frozen(kw_only=True)
class Message(PusherEvent):
    """An application event: channel events, client events, back-channel messages.

    From a client, ``data`` is any JSON value (pusher-js sends objects). From
    the server, ``data`` is a string (the publisher's string verbatim, or the
    compact JSON of a value). ``user_id`` travels only server to client, on
    client events relayed on presence channels.
    """

    # The codec refuses a frame without an event name; so does the class, so a
    # client cannot send what the relay would refuse.
    event: str = attrs.field(validator=_name)
    data: Any = None
    channel: str | None = attrs.field(default=None, validator=_opt_str)
    user_id: str | None = attrs.field(default=None, validator=_opt_str)

    @property
    def is_client_event(self) -> bool:
        """A ``client-`` event on a channel (relayed to the channel by Pusher rules)."""
        return self.channel is not None and self.event.startswith("client-")
