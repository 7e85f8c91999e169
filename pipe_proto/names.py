"""Names: channel types, and the rules for channel, event and socket ids.

Channel types are decided by anchored prefixes with their dash
(pusher-channels.md 4.1): ``my-private-x`` is public, ``cache-`` marks a cache
channel only at the start. The rules return an error message or ``None`` so
that each protocol can wrap the message in its own error shape (a Pusher
subscription error, a Pipe error reply, an HTTP 400).
"""

from __future__ import annotations

import re
from enum import Enum

import attrs

__all__ = [
    "DEFAULT_MAX_CHANNEL_NAME",
    "MAX_CHANNEL_NAME_CEILING",
    "MAX_EVENT_NAME",
    "MAX_USER_ID",
    "RESERVED_EVENT_PREFIXES",
    "SERVER_TO_USER_PREFIX",
    "SOCKET_ID",
    "ChannelKind",
    "ChannelType",
    "channel_name_error",
    "channel_type",
    "event_name_error",
    "is_token",
    "socket_id_error",
    "user_channel",
    "user_id_error",
]

# Characters allowed in channel names (pusher-channels.md 4.2); '#' only in
# the relay's own '#server-to-user-' channels.
_CHANNEL_CHARS = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
SOCKET_ID = re.compile(r"[0-9]+\.[0-9]+")
# App keys and secrets, pipe groups and sessions: the characters that need no
# escaping in a URL or a signed query.
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.]+")
SERVER_TO_USER_PREFIX = "#server-to-user-"

#: Longest channel name accepted by default (the documented 164; apps may
#: raise it up to :data:`MAX_CHANNEL_NAME_CEILING`, what the SDKs allow).
DEFAULT_MAX_CHANNEL_NAME = 164
MAX_CHANNEL_NAME_CEILING = 200
MAX_EVENT_NAME = 200
MAX_USER_ID = 200
RESERVED_EVENT_PREFIXES = ("pusher:", "pusher_internal:")


class ChannelKind(Enum):
    """What a channel needs to be joined and what may be sent on it."""

    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "encrypted"
    PRESENCE = "presence"
    USER = "user"  # '#server-to-user-{id}'

    @property
    def needs_signature(self) -> bool:
        """Whether subscribing needs an ``auth`` signature (or a pipe's yes)."""
        return self in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED, ChannelKind.PRESENCE)

    @property
    def allows_client_events(self) -> bool:
        """Whether sockets may send ``client-`` events on such a channel."""
        return self in (ChannelKind.PRIVATE, ChannelKind.PRESENCE)


@attrs.frozen(slots=True)
class ChannelType:
    """The kind of a channel and whether it is a cache channel."""

    kind: ChannelKind
    cached: bool


# Anchored prefixes, longest first (pusher-channels.md 4.1).
_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    ("presence-cache-", ChannelType(ChannelKind.PRESENCE, True)),
    ("presence-", ChannelType(ChannelKind.PRESENCE, False)),
    ("private-encrypted-cache-", ChannelType(ChannelKind.ENCRYPTED, True)),
    ("private-encrypted-", ChannelType(ChannelKind.ENCRYPTED, False)),
    ("private-cache-", ChannelType(ChannelKind.PRIVATE, True)),
    ("private-", ChannelType(ChannelKind.PRIVATE, False)),
    (SERVER_TO_USER_PREFIX, ChannelType(ChannelKind.USER, False)),
    ("cache-", ChannelType(ChannelKind.PUBLIC, True)),
)
_PUBLIC = ChannelType(ChannelKind.PUBLIC, False)


_PREFIX_STARTS = frozenset(prefix[0] for prefix, _ in _PREFIXES)


def channel_type(name: str) -> ChannelType:
    """Classify a channel by its name's anchored prefix."""
    if name[:1] not in _PREFIX_STARTS:  # most public channels: no prefix to try
        return _PUBLIC
    for prefix, kind in _PREFIXES:
        if name.startswith(prefix):
            return kind
    return _PUBLIC


def user_channel(name: str) -> str | None:
    """The user id a ``#server-to-user-`` channel is for, or ``None`` for other channels."""
    if channel_type(name).kind is ChannelKind.USER:
        return name[len(SERVER_TO_USER_PREFIX) :]
    return None


def channel_name_error(name: object, max_length: int = DEFAULT_MAX_CHANNEL_NAME) -> str | None:
    """Why ``name`` is not a valid channel name, or ``None`` when it is.

    ``#server-to-user-{id}`` names are valid (the id part follows the same
    character rules); any other ``#`` is reserved.
    """
    if not isinstance(name, str):
        return "channel name must be a string"
    if not name:
        return "channel name must not be empty"
    if len(name) > max_length:
        return f"channel name is longer than {max_length} characters"
    body = name[len(SERVER_TO_USER_PREFIX) :] if name.startswith(SERVER_TO_USER_PREFIX) else name
    if not _CHANNEL_CHARS.fullmatch(body):
        return (
            f"invalid channel name {name!r}: only letters, digits and _-=@,.; are allowed"
        )
    return None


def event_name_error(name: object, *, allow_reserved: bool = False) -> str | None:
    """Why ``name`` is not a valid event name to publish, or ``None``.

    Event names are 1-200 characters of anything; the ``pusher:`` and
    ``pusher_internal:`` prefixes belong to the protocol itself.
    """
    if not isinstance(name, str):
        return "event name must be a string"
    if not name:
        return "event name must not be empty"
    if len(name) > MAX_EVENT_NAME:
        return f"event name is longer than {MAX_EVENT_NAME} characters"
    if not allow_reserved and name.startswith(RESERVED_EVENT_PREFIXES):
        return f"event name {name!r} uses a reserved prefix"
    return None


def is_token(value: object, max_length: int | None = None) -> bool:
    """Whether ``value`` is a non-empty string of ``A-Za-z0-9_-.`` (at most ``max_length`` long).

    The form of app keys and secrets, and of a pipe's group and session.
    """
    if not isinstance(value, str) or (max_length is not None and len(value) > max_length):
        return False
    return _TOKEN_CHARS.fullmatch(value) is not None


def socket_id_error(value: object) -> str | None:
    """Why ``value`` is not a well-formed socket id (``digits.digits``)."""
    if not isinstance(value, str) or not SOCKET_ID.fullmatch(value) or len(value) > 64:
        return f"malformed socket id {value!r}: expected digits.digits"
    return None


def user_id_error(value: object, max_length: int = MAX_USER_ID) -> str | None:
    """Why ``value`` is not a valid signed-in user id (non-empty string)."""
    if not isinstance(value, str) or not value:
        return "user id must be a non-empty string"
    if len(value) > max_length:
        return f"user id is longer than {max_length} characters"
    if not _CHANNEL_CHARS.fullmatch(value):
        return f"invalid user id {value!r}: only letters, digits and _-=@,.; are allowed"
    return None
