"""The Pusher HTTP API (pusher-channels.md 9) as a pure function.

Besides Pusher's endpoints, ``GET /apps/{app_id}/status`` (signed like the
rest) answers the app's counts: sockets, channels, users, and per pipe group
members connected, pending, in flight, delivered, redelivered and dropped.

:func:`handle` takes a request (method, raw path, decoded query, body) and
``now``, consults and updates the relay, and returns a :class:`RestResponse`:
the status, the JSON body, and the relay's outputs to carry out (deliveries
of triggered events, closes of terminated sockets). It never raises for any
input: every failure is a 4xx with ``{"error": message}``.

Questions about the whole deployment (counts, members, the cache) go to the
relay's directory; in a cluster their answer may need a Redis call first, so
:func:`handle` may return a :class:`~pipe_proto.relay.directory.Pending`:
the adapter runs its ``call`` and passes the result to ``resume``, until a
:class:`RestResponse` comes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

import attrs

from .. import jsontext
from ..apps import AppRegistry
from ..names import (
    ChannelKind,
    channel_name_error,
    channel_type,
    event_name_error,
    socket_id_error,
    user_id_error,
)
from ..relay.directory import Answer, ChannelFacts, Pending
from ..relay.outputs import Output
from ..relay.relay import Relay
from ..routes import USERS_TERMINATE
from .auth import authenticate

__all__ = ["MAX_BODY_BYTES", "RestResponse", "describe_request", "handle", "then"]

#: Bodies larger than this are refused (413) before they are read.
MAX_BODY_BYTES = 1024 * 1024

_APP_PATH = re.compile(r"/apps/([^/]+)(/.*)?")
_CHANNEL = re.compile(r"/channels/([^/]+)")
_CHANNEL_USERS = re.compile(r"/channels/([^/]+)/users")


@attrs.frozen(kw_only=True)
class RestResponse:
    """An HTTP answer: status, JSON body, and what the relay must do."""

    status: int
    body: Any
    outputs: list[Output] = attrs.Factory(list)


class _Fail(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error(status: int, message: str) -> RestResponse:
    return RestResponse(status=status, body={"error": message})


_T = TypeVar("_T")
_U = TypeVar("_U")


def then(answer: Answer[_T], use: Callable[[_T], Answer[_U]]) -> Answer[_U]:
    """``use(value)`` once ``answer`` has its value: at once, or after its cluster call."""
    if isinstance(answer, Pending):
        return Pending(answer.call, lambda result: then(answer.resume(result), use))
    return use(answer)


def _gather(answers: list[Answer[_T]]) -> Answer[list[_T]]:
    """All of ``answers``, in order, one cluster call at a time."""
    values: list[_T] = []

    def step(index: int) -> Answer[list[_T]]:
        while index < len(answers):
            answer = answers[index]
            if isinstance(answer, Pending):
                def keep(value: _T, at: int = index) -> Answer[list[_T]]:
                    values.append(value)
                    return step(at + 1)

                return then(answer, keep)
            values.append(answer)
            index += 1
        return values

    return step(0)


def describe_request(apps: AppRegistry, path: str, query: Mapping[str, str]) -> tuple[str | None, str]:
    """Which app and endpoint a REST request is for, as metrics label it.

    Returns:
        The app's id (None: no such app, so that unknown ids add no label
        values) and the endpoint: ``events``, ``batch_events``, ``channels``,
        ``channel``, ``channel_users``, ``status``, ``terminate_user``, or
        ``other``.
    """
    if USERS_TERMINATE.fullmatch(path):
        app = apps.by_key({k.lower(): v for k, v in query.items()}.get("auth_key", ""))
        return (None if app is None else app.id), "terminate_user"
    match = _APP_PATH.fullmatch(path)
    if match is None:
        return None, "other"
    app = apps.by_id(match.group(1))
    sub = match.group(2) or ""
    if sub in ("/events", "/batch_events", "/channels", "/status"):
        endpoint = sub[1:]
    elif _CHANNEL_USERS.fullmatch(sub):
        endpoint = "channel_users"
    elif _CHANNEL.fullmatch(sub):
        endpoint = "channel"
    elif USERS_TERMINATE.fullmatch(sub):
        endpoint = "terminate_user"
    else:
        endpoint = "other"
    return (None if app is None else app.id), endpoint


def handle(
    relay: Relay, method: str, path: str, query: Mapping[str, str], body: bytes, now: float
) -> Answer[RestResponse]:
    """Answer one REST request.

    Args:
        relay: the relay whose apps and state the request concerns.
        method: the HTTP method, e.g. ``"POST"``.
        path: the path exactly as sent (signatures cover it).
        query: the percent-decoded query parameters.
        body: the raw body.
        now: current time, seconds since the epoch.
    """
    try:
        return _handle(relay, method.upper(), path, query, body, now)
    except _Fail as exc:
        return _error(exc.status, exc.message)


def _handle(
    relay: Relay, method: str, path: str, query: Mapping[str, str], body: bytes, now: float
) -> Answer[RestResponse]:
    terminate = USERS_TERMINATE.fullmatch(path)
    if terminate is not None:
        # The Python SDK posts here without /apps/{id} (pusher-channels.md 9.6).
        # Parameter names are case-insensitive, as authenticate() reads them (pusher-channels.md 9.2).
        app = relay.apps.by_key({k.lower(): v for k, v in query.items()}.get("auth_key", ""))
        if app is None:
            return _error(401, "Unknown auth_key")
        sub = path
    else:
        match = _APP_PATH.fullmatch(path)
        if match is None:
            return _error(404, f"No such resource: {path}")
        app = relay.apps.by_id(match.group(1))
        if app is None:
            return _error(404, f"Unknown app id {match.group(1)!r}")
        sub = match.group(2) or ""
    refusal = authenticate(app, method, path, query, body, now)
    if refusal is not None:
        return _error(*refusal)

    def expect(wanted: str) -> None:
        if method != wanted:
            raise _Fail(405, f"{sub or path} accepts {wanted} only")

    if sub == "/events":
        expect("POST")
        return _trigger(relay, app.id, _body(body), now)
    if sub == "/batch_events":
        expect("POST")
        return _batch(relay, app.id, _body(body), now)
    if sub == "/channels":
        expect("GET")
        return _channels(relay, app.id, query)
    if sub == "/status":
        # This relay's own endpoint: the app's counts, and its pipe groups'.
        expect("GET")
        return then(relay.app_status(app.id), lambda body: RestResponse(status=200, body=body))
    users_match = _CHANNEL_USERS.fullmatch(sub)
    if users_match is not None:
        expect("GET")
        return _users(relay, app.id, unquote(users_match.group(1)))
    channel_match = _CHANNEL.fullmatch(sub)
    if channel_match is not None:
        expect("GET")
        return _channel(relay, app.id, unquote(channel_match.group(1)), query, now)
    terminate = USERS_TERMINATE.fullmatch(sub)
    if terminate is not None:
        expect("POST")
        user_id = terminate.group(1)
        problem = user_id_error(user_id)
        if problem:
            raise _Fail(400, problem)
        return RestResponse(status=200, body={}, outputs=relay.terminate_user(app.id, user_id, now))
    return _error(404, f"No such resource: {path}")


def _body(body: bytes) -> dict[str, Any]:
    try:
        data = jsontext.loads(body)
    except ValueError:
        raise _Fail(400, "Body must be a JSON object") from None
    if not isinstance(data, dict):
        raise _Fail(400, "Body must be a JSON object")
    return data


def _info(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        raise _Fail(400, "info must be a comma-separated string")
    return [v for v in value.split(",") if v]


class _Event:
    __slots__ = ("channels", "data", "exclude", "info", "name")

    def __init__(self, item: dict[str, Any], relay: Relay, app_id: str, batch: bool) -> None:
        app = relay.apps.by_id(app_id)
        assert app is not None
        limits = app.limits
        name = item.get("name")
        problem = event_name_error(name)
        if problem:
            raise _Fail(400, problem)
        assert isinstance(name, str)
        if "data" not in item:
            raise _Fail(400, "Missing data")
        data = item["data"]
        text = data if isinstance(data, str) else jsontext.dumps(data)
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > limits.max_event_bytes:
            raise _Fail(413, f"Event data is {size} bytes; the limit is {limits.max_event_bytes} bytes")
        if batch or "channels" not in item:
            channels = [item.get("channel")]
        else:
            channels = item["channels"]
            if not isinstance(channels, list):
                raise _Fail(400, "channels must be a list")
        if not channels or channels == [None]:
            raise _Fail(400, "Missing channels")
        if len(channels) > limits.max_channels_per_trigger:
            raise _Fail(400, f"An event may go to at most {limits.max_channels_per_trigger} channels")
        names: list[str] = []
        for channel in channels:
            problem = channel_name_error(channel, limits.max_channel_name)
            if problem:
                raise _Fail(400, problem)
            names.append(str(channel))
        if len(names) > 1 and any(channel_type(c).kind is ChannelKind.ENCRYPTED for c in names):
            raise _Fail(400, "An event to an encrypted channel must name that channel alone")
        exclude = item.get("socket_id")
        if exclude is not None:
            problem = socket_id_error(exclude)
            if problem:
                raise _Fail(400, problem)
        self.name = name
        self.data = text
        self.channels = list(dict.fromkeys(names))
        self.exclude: str | None = exclude
        self.info = _info(item.get("info"))


def _attributes(facts: ChannelFacts, channel: str, info: list[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if "user_count" in info and channel_type(channel).kind is ChannelKind.PRESENCE:
        attributes["user_count"] = facts.users
    if "subscription_count" in info:
        attributes["subscription_count"] = facts.subscriptions
    return attributes


def _trigger(relay: Relay, app_id: str, item: dict[str, Any], now: float) -> Answer[RestResponse]:
    event = _Event(item, relay, app_id, batch=False)
    outputs = relay.publish(app_id, event.channels, event.name, event.data, event.exclude, now)
    if not event.info:
        return RestResponse(status=200, body={}, outputs=outputs)
    info, channels = event.info, event.channels
    return then(
        _gather([relay.channel_facts(app_id, c, now) for c in channels]),
        lambda facts: RestResponse(
            status=200,
            body={"channels": {c: _attributes(f, c, info) for f, c in zip(facts, channels, strict=True)}},
            outputs=outputs,
        ),
    )


def _batch(relay: Relay, app_id: str, body: dict[str, Any], now: float) -> Answer[RestResponse]:
    app = relay.apps.by_id(app_id)
    assert app is not None
    items = body.get("batch")
    if not isinstance(items, list) or not items:
        raise _Fail(400, "batch must be a non-empty list of events")
    if len(items) > app.limits.max_batch_events:
        raise _Fail(400, f"A batch holds at most {app.limits.max_batch_events} events")
    events = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Fail(400, f"batch[{index}] must be an object")
        try:
            events.append(_Event(item, relay, app_id, batch=True))
        except _Fail as exc:
            raise _Fail(exc.status, f"batch[{index}]: {exc.message}") from None
    outputs: list[Output] = []
    for event in events:
        outputs.extend(relay.publish(app_id, event.channels, event.name, event.data, event.exclude, now))
    if not any(e.info for e in events):
        return RestResponse(status=200, body={}, outputs=outputs)
    answers = [relay.channel_facts(app_id, e.channels[0], now) for e in events]
    return then(
        _gather(answers),
        lambda facts: RestResponse(
            status=200,
            body={"batch": [_attributes(f, e.channels[0], e.info) for f, e in zip(facts, events, strict=True)]},
            outputs=outputs,
        ),
    )


def _channels(relay: Relay, app_id: str, query: Mapping[str, str]) -> Answer[RestResponse]:
    prefix = query.get("filter_by_prefix", "")
    info = _info(query.get("info"))
    unknown = set(info) - {"user_count", "subscription_count"}
    if unknown:
        raise _Fail(400, f"Unknown info attribute(s): {', '.join(sorted(unknown))}")
    if "user_count" in info and not prefix.startswith("presence-"):
        raise _Fail(400, "info=user_count needs filter_by_prefix starting with presence-")

    def answer(found: dict[str, tuple[int, int]]) -> RestResponse:
        channels = {
            name: _attributes(ChannelFacts(subscriptions, users, None), name, info)
            for name, (subscriptions, users) in found.items()
        }
        return RestResponse(status=200, body={"channels": channels})

    return then(relay.channels_facts(app_id, prefix, "user_count" in info), answer)


def _valid_channel(relay: Relay, app_id: str, channel: str) -> None:
    app = relay.apps.by_id(app_id)
    assert app is not None
    problem = channel_name_error(channel, app.limits.max_channel_name)
    if problem:
        raise _Fail(400, problem)


def _channel(relay: Relay, app_id: str, channel: str, query: Mapping[str, str], now: float) -> Answer[RestResponse]:
    _valid_channel(relay, app_id, channel)
    info = _info(query.get("info"))
    unknown = set(info) - {"user_count", "subscription_count", "cache"}
    if unknown:
        raise _Fail(400, f"Unknown info attribute(s): {', '.join(sorted(unknown))}")
    ctype = channel_type(channel)
    if "user_count" in info and ctype.kind is not ChannelKind.PRESENCE:
        raise _Fail(400, "info=user_count is only for presence channels")

    def answer(facts: ChannelFacts) -> RestResponse:
        body: dict[str, Any] = {"occupied": facts.subscriptions > 0}
        body.update(_attributes(facts, channel, info))
        if "cache" in info:
            cached = facts.cached
            body["cache"] = None if cached is None else {"data": cached.data, "ttl": max(0, int(cached.expires - now))}
        return RestResponse(status=200, body=body)

    return then(relay.channel_facts(app_id, channel, now), answer)


def _users(relay: Relay, app_id: str, channel: str) -> Answer[RestResponse]:
    _valid_channel(relay, app_id, channel)
    if channel_type(channel).kind is not ChannelKind.PRESENCE:
        raise _Fail(400, "users is only for presence channels")
    return then(
        relay.channel_users(app_id, channel),
        lambda users: RestResponse(status=200, body={"users": [{"id": user} for user in users]}),
    )
