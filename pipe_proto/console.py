"""The debug console's sign-in and what it shows, without I/O.

The console is a page served by the relay (``pipe-relay serve --console``)
that shows, live, what happens to one app (:mod:`pipe_proto.relay.observe`).
Whoever knows the app's key and secret may watch it, and the secret never
goes into a URL:

1. the page posts the key and secret (``POST /console/token``, a JSON
   body); :func:`sign_in` checks them and answers a token,
   ``{app_id}.{expires}.{signature}``, where the signature is the HMAC-SHA256
   of ``console:{app_id}.{expires}`` keyed with the app's secret (so any
   relay serving the app accepts it, and a new secret voids it);
2. the page opens the console's WebSocket and sends the token as its first
   message; :func:`check_token` names the app, or says why not.

:func:`describe` turns an :class:`~pipe_proto.relay.observe.Observed` into the
JSON object the page shows, its data cut to :data:`MAX_DATA_CHARS`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from .apps import App, AppRegistry
from .relay.observe import Observed

__all__ = ["MAX_DATA_CHARS", "TOKEN_SECONDS", "check_token", "describe", "issue_token", "sign_in"]

#: How long a console token is valid.
TOKEN_SECONDS = 12 * 3600
#: Longest event data shown (longer data is cut, and says so).
MAX_DATA_CHARS = 2000


def _signature(app: App, app_id: str, expires: str) -> str:
    message = f"console:{app_id}.{expires}".encode()
    return hmac.new(app.secret.encode(), message, hashlib.sha256).hexdigest()


def issue_token(app: App, now: float, seconds: float = TOKEN_SECONDS) -> str:
    """A console token for ``app``, valid ``seconds`` from ``now``."""
    expires = str(int(now + seconds))
    return f"{app.id}.{expires}.{_signature(app, app.id, expires)}"


def sign_in(apps: AppRegistry, key: object, secret: object, now: float) -> tuple[int, dict[str, Any]]:
    """Answer the console's sign-in: (200, ``{"token", "app_id", "name", "expires"}``) or (401, ``{"error"}``).

    Unknown key and wrong secret get the same answer.
    """
    app = apps.by_key(key) if isinstance(key, str) else None
    given = secret.encode() if isinstance(secret, str) else b""
    if app is None or not hmac.compare_digest(app.secret.encode(), given):
        return 401, {"error": "Unknown key, or wrong secret"}
    token = issue_token(app, now)
    return 200, {"token": token, "app_id": app.id, "name": app.name, "expires": int(token.split(".")[1])}


def check_token(apps: AppRegistry, token: object, now: float) -> App | str:
    """The app a token lets one watch, or why it does not (a message for a close reason)."""
    if not isinstance(token, str) or token.count(".") != 2:
        return "not a console token"
    app_id, expires, signature = token.split(".")
    app = apps.by_id(app_id)
    if app is None or not expires.isdigit():
        return "not a console token"
    if not hmac.compare_digest(_signature(app, app_id, expires), signature):
        return "token not valid (was the secret changed?)"
    if int(expires) < now:
        return "token expired: sign in again"
    return app


def describe(seen: Observed, now: float) -> dict[str, Any]:
    """The JSON object the console shows for one happening (``now``: its time, seconds since the epoch).

    Details that are ``None`` (no origin, no close code) are left out.
    """
    entry: dict[str, Any] = {"time": round(now, 3), "type": seen.type}
    if seen.socket_id is not None:
        entry["socket"] = seen.socket_id
    if seen.channel is not None:
        entry["channel"] = seen.channel
    if seen.event is not None:
        entry["event"] = seen.event
    if seen.data is not None:
        data = seen.data
        if len(data) > MAX_DATA_CHARS:
            entry["truncated"] = len(data)
            data = data[:MAX_DATA_CHARS]
        entry["data"] = data
    details = {key: value for key, value in (seen.details or {}).items() if value is not None}
    if details:
        entry["details"] = details
    return entry
