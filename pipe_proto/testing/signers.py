"""Signatures a test peer needs: what an auth endpoint, an SDK or a webhook receiver computes.

The primitives are :mod:`pipe_proto.signatures`' (re-exported here so a test
needs one import); this module adds the two whole conversations a peer
signs or checks itself:

* :func:`signed_rest_params`: the query of a signed REST request
  (``auth_key``, ``auth_timestamp``, ``auth_version``, ``body_md5``,
  ``auth_signature``; pusher-channels.md 9.2), with every part overridable so
  that a conformance case can send a stale timestamp or a foreign key;
* :func:`webhook_problem`: why a received webhook is not genuine, with the
  checks the official SDKs make (exact ``Content-Type``, key, signature,
  ``time_ms`` within five minutes).

Nothing here reads a clock: ``now`` is an argument.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from ..signatures import (
    channel_auth,
    shared_secret,
    sign,
    sign_query,
    signin_auth,
    webhook_signature,
)

__all__ = [
    "WEBHOOK_MAX_AGE",
    "channel_auth",
    "shared_secret",
    "sign",
    "sign_query",
    "signed_rest_params",
    "signin_auth",
    "webhook_problem",
    "webhook_signature",
]

#: Seconds a webhook body may be old before the Python SDK rejects it.
WEBHOOK_MAX_AGE = 300.0


def signed_rest_params(
    key: str,
    secret: str,
    method: str,
    path: str,
    *,
    now: float,
    params: Mapping[str, str] | None = None,
    body: bytes = b"",
    body_md5: bool | None = None,
    timestamp: int | None = None,
    version: str = "1.0",
) -> dict[str, str]:
    """The query parameters of a signed REST request, ``auth_signature`` included.

    Args:
        key, secret: the credentials to sign with (a foreign pair makes a
            foreign request).
        method, path: as sent (the path without its query).
        now: the signer's clock, seconds since the epoch.
        params: the request's own parameters (``info``, ``filter_by_prefix`` ...).
        body: the body; its MD5 is signed when it is not empty.
        body_md5: force ``body_md5`` on (``True``, as the Python SDK does on
            GETs) or off (``False``); ``None``: only with a body.
        timestamp: ``auth_timestamp`` to send instead of ``int(now)``.
        version: ``auth_version``.
    """
    query = dict(params or {})
    query["auth_key"] = key
    query["auth_timestamp"] = str(int(now) if timestamp is None else timestamp)
    query["auth_version"] = version
    if body_md5 or (body_md5 is None and body):
        query["body_md5"] = hashlib.md5(body).hexdigest()
    query["auth_signature"] = sign_query(secret, method, path, query)
    return query


def webhook_problem(
    key: str,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    max_age: float = WEBHOOK_MAX_AGE,
) -> str | None:
    """Why a webhook request is not one the official SDKs accept, or ``None``.

    ``headers`` are matched case-insensitively. ``now`` is the receiver's
    clock in seconds.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type")
    if content_type != "application/json":
        return f"Content-Type is {content_type!r}, not exactly 'application/json' (the Node SDK's check)"
    if lowered.get("x-pusher-key") != key:
        return f"X-Pusher-Key is {lowered.get('x-pusher-key')!r}, not the app's key"
    expected = webhook_signature(secret, body)
    if lowered.get("x-pusher-signature") != expected:
        return "X-Pusher-Signature is not the HMAC-SHA256 of the body"
    try:
        payload = json.loads(body)
    except ValueError:
        return "the body is not JSON"
    if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
        return "the body has no 'events' list"
    time_ms = payload.get("time_ms")
    if isinstance(time_ms, bool) or not isinstance(time_ms, (int, float)):
        return "the body has no numeric 'time_ms'"
    if abs(now * 1000 - time_ms) > max_age * 1000:
        away = abs(now * 1000 - time_ms) / 1000
        return f"time_ms is {away:.0f} s away from now (the Python SDK allows {max_age:.0f})"
    return None
