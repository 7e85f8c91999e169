"""Opening a pipe: the signed URL, and the relay's decision on it.

A pipe connects to ``/app/{app_id}?auth_key=..&auth_timestamp=..&auth_version=1.0
&protocol_version=0.2|1.0[&group=..&session=..&last_seq=..&client=..]&auth_signature=..``
signed like a REST request with the method ``WEBSOCKET`` (pipe-protocol.md
1). :func:`check_pipe_handshake` decides before the WebSocket upgrade:
:class:`PipeAccepted` with the session's parameters, or :class:`PipeRefused`
with the HTTP status and message to answer. :func:`pipe_url` builds the URL
on the client side.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import attrs

from ..apps import App, AppRegistry
from ..names import is_token
from ..signatures import check_signed_query, sign_query, timestamp_problem

__all__ = [
    "PROTOCOL_VERSIONS",
    "PipeAccepted",
    "PipeRefused",
    "check_pipe_handshake",
    "is_pipe_query",
    "pipe_url",
]

PROTOCOL_VERSIONS = ("0.2", "1.0")
#: Longest group name and session id.
_MAX_GROUP = 64
_MAX_SESSION = 128


@attrs.frozen(kw_only=True)
class PipeAccepted:
    """The pipe may connect; these are its parameters."""

    app: App
    version: str
    group: str = "default"
    session: str | None = None
    last_seq: int | None = None
    client: str | None = None


@attrs.frozen(kw_only=True)
class PipeRefused:
    """Refuse the upgrade with this HTTP status and ``{"error": message}``."""

    status: int
    message: str


def is_pipe_query(query: Mapping[str, str]) -> bool:
    """Whether a ``/app/...`` upgrade is a pipe (sockets carry ``protocol``)."""
    return "protocol_version" in query and "auth_signature" in query


def check_pipe_handshake(
    app_id: str, query: Mapping[str, str], apps: AppRegistry, now: float
) -> PipeAccepted | PipeRefused:
    """Decide whether a pipe may connect to app ``app_id``.

    Refusals (pipe-protocol.md 1): 400 malformed or unsupported version or
    parameters, 404 unknown app, 401 bad key, version, timestamp or
    signature, 403 app disabled. (503, too many pipes, is the relay's call.)
    """
    version = query.get("protocol_version")
    if version not in PROTOCOL_VERSIONS:
        return PipeRefused(
            status=400,
            message=f"unsupported protocol_version {version!r}; this relay speaks 0.2 and 1.0",
        )
    app = apps.by_id(app_id)
    if app is None:
        return PipeRefused(status=404, message=f"unknown app {app_id!r}")
    if query.get("auth_key") != app.key:
        return PipeRefused(status=401, message="auth_key is not this app's key")
    if query.get("auth_version") != "1.0":
        return PipeRefused(status=401, message="auth_version must be 1.0")
    problem = timestamp_problem(query.get("auth_timestamp"), now)
    if problem:
        return PipeRefused(status=401, message=problem)
    problem = check_signed_query(app.secret, "WEBSOCKET", [f"/app/{app_id}"], query)
    if problem:
        return PipeRefused(status=401, message=problem)
    if not app.enabled:
        return PipeRefused(status=403, message="app is disabled")
    if version == "0.2":
        return PipeAccepted(app=app, version=version)
    group = query.get("group", "default")
    if not is_token(group, _MAX_GROUP):
        return PipeRefused(status=400, message="group must be 1-64 letters, digits or _-.")
    session = query.get("session") or None
    if session is not None and not is_token(session, _MAX_SESSION):
        return PipeRefused(status=400, message="malformed session")
    last_seq = None
    if query.get("last_seq"):
        try:
            last_seq = int(query["last_seq"])
        except ValueError:
            last_seq = -1
        if last_seq < 0:
            return PipeRefused(status=400, message="last_seq must be a non-negative integer")
    return PipeAccepted(
        app=app,
        version=version,
        group=group,
        session=session,
        last_seq=last_seq,
        client=query.get("client"),
    )


def pipe_url(
    base: str,
    *,
    app_id: str,
    key: str,
    secret: str,
    now: float,
    version: str = "1.0",
    group: str | None = None,
    session: str | None = None,
    last_seq: int | None = None,
    client: str | None = None,
) -> str:
    """The signed URL a pipe connects to; ``base`` is ``ws[s]://host:port``."""
    params = {
        "auth_key": key,
        "auth_timestamp": str(int(now)),
        "auth_version": "1.0",
        "protocol_version": version,
    }
    for name, value in (("group", group), ("session", session), ("client", client)):
        if value is not None:
            params[name] = value
    if last_seq is not None:
        params["last_seq"] = str(last_seq)
    path = f"/app/{app_id}"
    signature = sign_query(secret, "WEBSOCKET", path, params)
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"{base.rstrip('/')}{path}?{query}&auth_signature={signature}"
