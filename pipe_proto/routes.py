"""Which handler an HTTP request on the relay's single port goes to.

One port serves everything (pusher-channels.md 1.1 R): WebSocket upgrades on
``/app/{key}`` are Pusher sockets, upgrades on ``/app/{app_id}`` signed with
``protocol_version`` are pipes (pipe-protocol.md 1), ``/apps/...`` (and the
Python SDK's ``/users/{id}/terminate_connections``) is the REST API, ``/`` the
status, ``/pipe-client.js`` the browser helper; ``/health``, ``/ready`` and
``/metrics`` are for operators (probes, Prometheus), ``/console`` the debug
console's page, ``/console/token`` its sign-in (POST) and an upgrade on
``/console/socket`` its live feed. An upgrade on any other path is accepted
and closed with 4005 so pusher-js stops retrying (pusher-channels.md 1.2);
any other plain request gets 404.
"""

from __future__ import annotations

import re
from enum import Enum
from urllib.parse import parse_qsl, unquote

import attrs

from .pipe.handshake import is_pipe_query

__all__ = ["USERS_TERMINATE", "Route", "RouteKind", "route", "split_target"]


class RouteKind(Enum):
    """Where a request goes."""

    SOCKET = "socket"
    PIPE = "pipe"
    WEBSOCKET_NOT_FOUND = "websocket not found"
    REST = "rest"
    STATUS = "status"
    PIPE_CLIENT_JS = "pipe-client.js"
    HEALTH = "health"
    READY = "ready"
    METRICS = "metrics"
    CONSOLE = "console"
    CONSOLE_TOKEN = "console token"
    CONSOLE_SOCKET = "console socket"
    NOT_FOUND = "not found"


@attrs.frozen(kw_only=True)
class Route:
    """A routed request: its kind, raw path, decoded query and path parameter.

    ``name`` is the app key (sockets) or app id (pipes); empty otherwise.
    """

    kind: RouteKind
    path: str
    query: dict[str, str]
    name: str = ""


_APP = re.compile(r"/app/([^/]+)")
_GET_ROUTES = {
    "/health": RouteKind.HEALTH,
    "/ready": RouteKind.READY,
    "/metrics": RouteKind.METRICS,
    "/console": RouteKind.CONSOLE,
}
#: The Python SDK's user termination path (the user id is group 1).
USERS_TERMINATE = re.compile(r"/users/([^/]+)/terminate_connections")


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """The raw path and the percent-decoded query of a request target.

    A key repeated in the query keeps its last value.
    """
    path, _, query = target.partition("?")
    if "%" in query or "+" in query:
        return path, dict(parse_qsl(query, keep_blank_values=True))
    # Nothing to decode (pusher-js's own query): parse_qsl's result, without its per-field work.
    fields: dict[str, str] = {}
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            fields[name] = value
    return path, fields


def route(method: str, target: str, *, upgrade: bool) -> Route:
    """Route a request by method, target and whether it asks for a WebSocket."""
    path, query = split_target(target)
    if upgrade:
        if path == "/console/socket":
            return Route(kind=RouteKind.CONSOLE_SOCKET, path=path, query=query)
        match = _APP.fullmatch(path)
        if match is None:
            return Route(kind=RouteKind.WEBSOCKET_NOT_FOUND, path=path, query=query)
        name = unquote(match.group(1))
        kind = RouteKind.PIPE if is_pipe_query(query) else RouteKind.SOCKET
        return Route(kind=kind, path=path, query=query, name=name)
    if path.startswith("/apps/") or (method == "POST" and USERS_TERMINATE.fullmatch(path)):
        return Route(kind=RouteKind.REST, path=path, query=query)
    if method in ("GET", "HEAD"):
        if path == "/":
            return Route(kind=RouteKind.STATUS, path=path, query=query)
        if path == "/pipe-client.js":
            return Route(kind=RouteKind.PIPE_CLIENT_JS, path=path, query=query)
        operator = _GET_ROUTES.get(path)
        if operator is not None:
            return Route(kind=operator, path=path, query=query)
    if method == "POST" and path == "/console/token":
        return Route(kind=RouteKind.CONSOLE_TOKEN, path=path, query=query)
    return Route(kind=RouteKind.NOT_FOUND, path=path, query=query)
