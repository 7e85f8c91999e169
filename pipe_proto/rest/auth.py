"""Authenticating REST requests (pusher-channels.md 9.2).

A request carries ``auth_key``, ``auth_timestamp``, ``auth_version=1.0``,
``body_md5`` (when it has a body; the Python SDK also sends it for empty
bodies, signed) and ``auth_signature``, the HMAC of
``METHOD\\nPATH\\nsorted-query``. :func:`authenticate` returns ``None`` when
the request is genuine, or the status and message to refuse it with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from urllib.parse import unquote

from ..apps import App
from ..signatures import check_signed_query, timestamp_problem

__all__ = ["authenticate"]


def authenticate(
    app: App, method: str, path: str, query: Mapping[str, str], body: bytes, now: float
) -> tuple[int, str] | None:
    """Check a request's signature; ``None`` when it is valid.

    Every failure is 401 with a message naming the problem; a disabled app
    is 403 (checked after the signature, so it is not revealed to strangers).
    """
    q = {k.lower(): v for k, v in query.items()}
    if "auth_key" not in q:
        return 401, "Missing parameter: auth_key"
    if q["auth_key"] != app.key:
        return 401, "Unknown auth_key"
    if q.get("auth_version") != "1.0":
        return 401, "Version not supported: auth_version must be 1.0"
    problem = timestamp_problem(q.get("auth_timestamp"), now)
    if problem:
        return 401, problem
    md5 = hashlib.md5(body).hexdigest()
    if (body or "body_md5" in q) and q.get("body_md5") != md5:
        return 401, "body_md5 does not match the MD5 of the body"
    paths = [path] if unquote(path) == path else [path, unquote(path)]
    problem = check_signed_query(app.secret, method, paths, q)
    if problem:
        return 401, problem
    if not app.enabled:
        return 403, "Application is disabled"
    return None
