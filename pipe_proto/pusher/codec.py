"""Text frames to Pusher events and back, for either side of a connection.

``decode(text, role=...)`` reads what the *peer* of ``role`` sends: the relay
(``Role.SERVER``) decodes client frames, the Python client (``Role.CLIENT``)
decodes server frames. ``encode(event, role=...)`` writes what ``role`` sends.
Any malformed frame raises :class:`~pipe_proto.errors.RemoteProtocolError`
(``code`` ``None``, a message saying what was wrong); nothing else escapes.

The double encoding of ``data`` (pusher-channels.md 1.5): the server sends
``data`` as a JSON string for connection_established, pusher_internal events
and application events, and as an object for ``pusher:error``,
``pusher:signin_success``, ping and pong. Clients send objects. Both readers
are tolerant: an object where a string is expected, or a JSON string where an
object is expected, is accepted as the other clients and servers in the wild
produce both.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from .. import jsontext, prechecked
from ..errors import LocalProtocolError, RemoteProtocolError
from .events import (
    CacheMiss,
    ConnectionEstablished,
    Error,
    MemberAdded,
    MemberRemoved,
    Message,
    Ping,
    Pong,
    Presence,
    PusherEvent,
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

__all__ = ["Role", "connection_established", "decode", "encode", "encode_message", "subscription_succeeded"]


class Role(Enum):
    """Which side of a Pusher connection the caller is."""

    CLIENT = "client"
    SERVER = "server"


_dumps = jsontext.dumps


class _Bad(Exception):
    """Internal: a field had the wrong shape."""


def _obj(value: Any, what: str) -> dict[str, Any]:
    """``value`` as an object, decoding one level of string encoding."""
    if isinstance(value, str):
        try:
            value = jsontext.loads(value)
        except ValueError:
            raise _Bad(f"{what} must be a JSON object") from None
    if not isinstance(value, dict):
        raise _Bad(f"{what} must be a JSON object")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(f"{key!r} must be a string")
    return value


def _req_str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _Bad(f"{key!r} must be a string")
    return value


def _user_id(data: dict[str, Any]) -> str | int:
    value = data.get("user_id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Bad("user_id must be a string or a number")
    return value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value)


# ---------------------------------------------------------------- decoding


def _decode_from_client(msg: dict[str, Any], name: str) -> PusherEvent:
    if name == "pusher:ping":
        return Ping()
    if name == "pusher:pong":
        return Pong()
    if name == "pusher:subscribe":
        data = _obj(msg.get("data"), "data")
        return Subscribe(
            channel=_req_str(data, "channel"),
            auth=_opt_str(data, "auth"),
            channel_data=_opt_str(data, "channel_data"),
        )
    if name == "pusher:unsubscribe":
        return Unsubscribe(channel=_req_str(_obj(msg.get("data"), "data"), "channel"))
    if name == "pusher:signin":
        data = _obj(msg.get("data"), "data")
        # user_data may be absent when the pipe is to decide (empty auth).
        return SignIn(auth=_opt_str(data, "auth") or "", user_data=_opt_str(data, "user_data") or "")
    if name.startswith(("pusher:", "pusher_internal:")):
        raise _Bad(f"unsupported event {name!r}")
    return prechecked.message(name, msg.get("data"), _opt_str(msg, "channel"), None)


def _presence(data: dict[str, Any]) -> Presence:
    presence = _obj(data["presence"], "presence")
    members = presence.get("hash")
    ids = presence.get("ids")
    if not isinstance(members, dict):
        raise _Bad("presence hash must be an object")
    if not isinstance(ids, list):
        ids = list(members)
    # 'hash' keys are strings; 'ids' keeps the JSON type of each user id,
    # which a user id has: a string or an integer.
    if not all(isinstance(uid, (str, int)) and not isinstance(uid, bool) for uid in ids):
        raise _Bad("presence ids must be strings or integers")
    return Presence(members=[(uid, members.get(str(uid))) for uid in ids])


def _decode_from_server(msg: dict[str, Any], name: str) -> PusherEvent:
    channel = _opt_str(msg, "channel")
    if name == "pusher:connection_established":
        data = _obj(msg.get("data"), "data")
        timeout = data.get("activity_timeout")
        if not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0:
            raise _Bad("activity_timeout must be a positive integer")
        return ConnectionEstablished(socket_id=_req_str(data, "socket_id"), activity_timeout=timeout)
    if name == "pusher:error":
        data = _obj(msg.get("data"), "data")
        code = data.get("code")
        if isinstance(code, bool) or not isinstance(code, (int, type(None))):
            raise _Bad("error code must be an integer or null")
        return Error(code=code, message=_as_text(data.get("message", "")))
    if name == "pusher:ping":
        return Ping()
    if name == "pusher:pong":
        return Pong()
    if name == "pusher:signin_success":
        return SignInSuccess(user_data=_req_str(_obj(msg.get("data"), "data"), "user_data"))
    if name == "pusher:cache_miss" and channel is not None:
        return CacheMiss(channel=channel)
    if name.startswith("pusher_internal:"):
        data = _obj(msg.get("data", "{}"), "data")
        if name == "pusher_internal:watchlist_events":
            events = data.get("events")
            if not isinstance(events, list):
                raise _Bad("watchlist events must be a list")
            changes = []
            for raw in events:
                item = _obj(raw, "watchlist event")
                ids = item.get("user_ids", [])
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    raise _Bad("watchlist user_ids must be a list of strings")
                changes.append(WatchlistChange(name=_req_str(item, "name"), user_ids=ids))
            return WatchlistEvents(events=changes)
        if channel is None:
            raise _Bad(f"{name} needs a channel")
        if name == "pusher_internal:subscription_succeeded":
            if "presence" in data:
                return SubscriptionSucceeded(channel=channel, presence=_presence(data))
            return SubscriptionSucceeded(channel=channel)
        if name == "pusher_internal:member_added":
            return MemberAdded(
                channel=channel, user_id=_user_id(data), user_info=data.get("user_info")
            )
        if name == "pusher_internal:member_removed":
            return MemberRemoved(channel=channel, user_id=_user_id(data))
        if name == "pusher_internal:subscription_count":
            count = data.get("subscription_count")
            if not isinstance(count, int) or isinstance(count, bool):
                raise _Bad("subscription_count must be an integer")
            return SubscriptionCount(channel=channel, count=count)
        raise _Bad(f"unsupported event {name!r}")
    if name == "pusher:subscription_error" and channel is not None:
        data = _obj(msg.get("data"), "data")
        status = data.get("status", 0)
        return SubscriptionError(
            channel=channel,
            type=_as_text(data.get("type", "")),
            error=_as_text(data.get("error", "")),
            status=status if isinstance(status, int) and not isinstance(status, bool) else 0,
        )
    user_id = msg.get("user_id")
    return Message(
        event=name,
        data=None if "data" not in msg else _as_text(msg["data"]),
        channel=channel,
        user_id=None if user_id is None else _as_text(user_id),
    )


def decode(text: str | bytes, *, role: Role) -> PusherEvent:
    """Decode one frame sent by the peer of ``role``.

    Args:
        text: the text of one WebSocket message.
        role: the side doing the decoding.

    Returns:
        The event the frame carries.

    Raises:
        RemoteProtocolError: the frame is not a valid Pusher frame for this
            direction (``code`` is ``None``; ``message`` says why).
    """
    try:
        msg = jsontext.loads(text)
    except ValueError as exc:
        raise RemoteProtocolError(f"Invalid JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise RemoteProtocolError("A frame must be a JSON object")
    name = msg.get("event")
    if not isinstance(name, str) or not name:
        raise RemoteProtocolError("A frame needs an 'event' string")
    try:
        if role is Role.SERVER:
            return _decode_from_client(msg, name)
        return _decode_from_server(msg, name)
    except _Bad as bad:
        raise RemoteProtocolError(f"Invalid {name} frame: {bad}") from None
    except (TypeError, ValueError) as wrong:
        # attrs validators: a field of the wrong type.
        raise RemoteProtocolError(f"Invalid {name} frame: {wrong}") from None


# ---------------------------------------------------------------- encoding


def encode_message(event: str, data: str, channel: str | None = None, user_id: str | None = None) -> str:
    """The server frame of an application event, with ``data`` already a string.

    The relay's hot path: it builds a channel event's frame once and sends the
    same text to every subscriber.
    """
    if channel is None:
        text = '{"event":' + _dumps(event) + ',"data":' + _dumps(data)
    else:
        text = '{"event":' + _dumps(event) + ',"channel":' + _dumps(channel) + ',"data":' + _dumps(data)
    if user_id is not None:
        text += ',"user_id":' + _dumps(user_id)
    return text + "}"


def _frame(event: str, data: Any = None, channel: str | None = None) -> str:
    msg: dict[str, Any] = {"event": event}
    if channel is not None:
        msg["channel"] = channel
    if data is not None:
        msg["data"] = data
    return _dumps(msg)


def _presence_data(p: Presence) -> dict[str, Any]:
    return {
        "presence": {
            "ids": [uid for uid, _ in p.members],
            "hash": {str(uid): info for uid, info in p.members},
            "count": p.count,
        }
    }


def _member(uid: str | int, info: Any) -> dict[str, Any]:
    return {"user_id": uid} if info is None else {"user_id": uid, "user_info": info}


def connection_established(socket_id: str, activity_timeout: int) -> str:
    """The server frame ``pusher:connection_established``: ``encode`` of that event, without building it.

    Every new socket gets one, so the relay writes it straight from its two values.
    """
    # The relay's ids (digits and a dot) and a positive int timeout need no escaping.
    if (
        type(activity_timeout) is int and activity_timeout > 0 and type(socket_id) is str
        and socket_id.isascii() and socket_id.replace(".", "").isdigit()
    ):
        return (
            '{"event":"pusher:connection_established","data":"{\\"socket_id\\":\\"' + socket_id
            + '\\",\\"activity_timeout\\":' + str(activity_timeout) + '}"}'
        )
    # Anything else is checked as the event checks it (a timeout below 1 is refused).
    checked = ConnectionEstablished(socket_id=socket_id, activity_timeout=activity_timeout)
    data = _dumps({"socket_id": checked.socket_id, "activity_timeout": checked.activity_timeout})
    return _frame("pusher:connection_established", data)


def _connection_established(e: ConnectionEstablished) -> str:
    return connection_established(e.socket_id, e.activity_timeout)


def subscription_succeeded(channel: str) -> str:
    """The server frame ``pusher_internal:subscription_succeeded`` of a public or private channel.

    ``encode`` of that event with no presence, without building it: every
    subscribe is answered with one.
    """
    return '{"event":"pusher_internal:subscription_succeeded","channel":' + _dumps(channel) + ',"data":"{}"}'


def _subscription_succeeded(e: SubscriptionSucceeded) -> str:
    if e.presence is None:
        return subscription_succeeded(e.channel)
    return _frame("pusher_internal:subscription_succeeded", _dumps(_presence_data(e.presence)), e.channel)


_SERVER_ENCODERS: dict[type[PusherEvent], Callable[[Any], str]] = {
    ConnectionEstablished: _connection_established,
    Error: lambda e: _frame("pusher:error", {"code": e.code, "message": e.message}),
    Ping: lambda e: _frame("pusher:ping", {}),
    Pong: lambda e: _frame("pusher:pong", {}),
    SubscriptionSucceeded: _subscription_succeeded,
    SubscriptionError: lambda e: _frame(
        "pusher:subscription_error",
        {"type": e.type, "error": e.error, "status": e.status},
        e.channel,
    ),
    MemberAdded: lambda e: _frame(
        "pusher_internal:member_added", _dumps(_member(e.user_id, e.user_info)), e.channel
    ),
    MemberRemoved: lambda e: _frame(
        "pusher_internal:member_removed", _dumps({"user_id": e.user_id}), e.channel
    ),
    CacheMiss: lambda e: _frame("pusher:cache_miss", None, e.channel),
    SubscriptionCount: lambda e: _frame(
        "pusher_internal:subscription_count", _dumps({"subscription_count": e.count}), e.channel
    ),
    SignInSuccess: lambda e: _frame("pusher:signin_success", {"user_data": e.user_data}),
    WatchlistEvents: lambda e: _frame(
        "pusher_internal:watchlist_events",
        _dumps({"events": [{"name": c.name, "user_ids": list(c.user_ids)} for c in e.events]}),
    ),
    Message: lambda e: encode_message(e.event, _as_text(e.data), e.channel, e.user_id),
}


def _subscribe_data(e: Subscribe) -> dict[str, Any]:
    data: dict[str, Any] = {"auth": "" if e.auth is None else e.auth}
    if e.channel_data is not None:
        data["channel_data"] = e.channel_data
    data["channel"] = e.channel
    return data


def _client_message(e: Message) -> str:
    msg: dict[str, Any] = {"event": e.event, "data": e.data}
    if e.channel is not None:
        msg["channel"] = e.channel
    return _dumps(msg)


_CLIENT_ENCODERS: dict[type[PusherEvent], Callable[[Any], str]] = {
    Ping: lambda e: _frame("pusher:ping", {}),
    Pong: lambda e: _frame("pusher:pong", {}),
    Subscribe: lambda e: _frame("pusher:subscribe", _subscribe_data(e)),
    Unsubscribe: lambda e: _frame("pusher:unsubscribe", {"channel": e.channel}),
    SignIn: lambda e: _frame("pusher:signin", {"auth": e.auth, "user_data": e.user_data}),
    Message: _client_message,
}


def encode(event: PusherEvent, *, role: Role) -> str:
    """Encode an event that ``role`` sends.

    Raises:
        LocalProtocolError: ``role`` never sends this kind of event (a client
            cannot send ``connection_established``), or a ``Message`` from a
            client names a reserved event or carries a non-JSON value.
    """
    table = _SERVER_ENCODERS if role is Role.SERVER else _CLIENT_ENCODERS
    encoder = table.get(type(event))
    if encoder is None:
        raise LocalProtocolError(f"a {role.value} does not send {type(event).__name__}")
    if isinstance(event, Message) and event.event.startswith(("pusher:", "pusher_internal:")):
        raise LocalProtocolError(f"{event.event!r} is reserved for the protocol")
    try:
        return encoder(event)
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {type(event).__name__}: {exc}") from None
