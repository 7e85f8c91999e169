"""Every HMAC the Pusher and Pipe protocols use, computed and checked here.

``sign(secret, text)`` is lowercase hex HMAC-SHA256 over UTF-8 text
(pusher-channels.md 5.1). What is signed differs by use:

* private channel: ``"{socket_id}:{channel}"``, with ``":{channel_data}"``
  appended when the subscribe carries channel data (5.2, 5.3);
* sign-in: ``"{socket_id}::user::{user_data}"`` (5.6);
* REST request and Pipe URL: ``"{METHOD}\\n{path}\\n{sorted query}"`` (9.2,
  pipe-protocol.md 1);
* webhook: the raw body (10).

Every comparison goes through :func:`hmac.compare_digest`. Signed strings are
always the exact strings the peer sent, never re-serialised JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping

__all__ = [
    "TIMESTAMP_GRACE",
    "channel_auth",
    "check_channel_auth",
    "check_signed_query",
    "check_signin",
    "query_string_to_sign",
    "shared_secret",
    "sign",
    "sign_query",
    "signin_auth",
    "timestamp_problem",
    "webhook_signature",
]

#: Seconds a signed timestamp (REST request, Pipe URL) may differ from the
#: relay's clock, either way (pusher-channels.md 9.2, pipe-protocol.md 1).
TIMESTAMP_GRACE = 600


def sign(secret: str, text: str | bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``text`` keyed with ``secret``."""
    message = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def _equal(expected: str, given: str) -> bool:
    # compare_digest refuses non-ASCII str; a non-ASCII signature is wrong anyway.
    try:
        return hmac.compare_digest(expected, given)
    except TypeError:
        return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


def channel_auth(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The ``auth`` string an auth endpoint returns for a channel subscription."""
    text = f"{socket_id}:{channel}" if channel_data is None else f"{socket_id}:{channel}:{channel_data}"
    return f"{key}:{sign(secret, text)}"


def signin_auth(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` string a user-authentication endpoint returns."""
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def _split_auth(key: str, auth: object) -> str | None:
    """The signature part of ``auth`` when its key part is ``key``."""
    if not isinstance(auth, str) or ":" not in auth:
        return None
    given_key, signature = auth.split(":", 1)
    return signature if _equal(key, given_key) else None


def check_channel_auth(
    key: str,
    secret: str,
    socket_id: str,
    channel: str,
    auth: object,
    channel_data: str | None = None,
    *,
    two_part: bool = True,
) -> str | None:
    """Why ``auth`` does not authorize ``socket_id`` on ``channel``, or ``None``.

    With ``channel_data`` the three-part form is checked, and also the
    two-part form unless ``two_part`` is false (private channels whose auth
    endpoint ignored the data; the SDKs sign the data whenever there is some,
    pusher-channels.md 5.2).
    """
    if not isinstance(auth, str) or ":" not in auth:
        return "auth must be a string 'key:signature'"
    signature = _split_auth(key, auth)
    if signature is None:
        return f"Invalid key in subscription auth data: {auth.split(':', 1)[0]!r}"
    candidates = []
    if channel_data is not None:
        candidates.append(f"{socket_id}:{channel}:{channel_data}")
    if channel_data is None or two_part:
        candidates.append(f"{socket_id}:{channel}")
    # Check every candidate so the time taken does not reveal which failed.
    ok = False
    for text in candidates:
        ok |= _equal(sign(secret, text), signature)
    if ok:
        return None
    return f"Invalid signature: expected HMAC SHA256 hex digest of {candidates[0]!r}"


def check_signin(key: str, secret: str, socket_id: str, auth: object, user_data: str) -> str | None:
    """Why ``auth`` does not sign ``user_data`` in for ``socket_id``, or ``None``."""
    signature = _split_auth(key, auth)
    if signature is None:
        return "Invalid sign-in auth: expected 'key:signature' with this app's key"
    text = f"{socket_id}::user::{user_data}"
    if not _equal(sign(secret, text), signature):
        return f"Invalid signature: expected HMAC SHA256 hex digest of {text!r}"
    return None


def query_string_to_sign(method: str, path: str, params: Mapping[str, str]) -> str:
    """``METHOD\\npath\\nk=v&...`` with keys lowercased and sorted, values as given.

    ``auth_signature`` is left out; values are the decoded ones (neither SDK
    escapes them, pusher-channels.md 9.2).
    """
    lowered = sorted(
        (k.lower(), v) for k, v in params.items() if k.lower() != "auth_signature"
    )
    query = "&".join(f"{k}={v}" for k, v in lowered)
    return f"{method.upper()}\n{path}\n{query}"


def sign_query(secret: str, method: str, path: str, params: Mapping[str, str]) -> str:
    """The ``auth_signature`` for a signed REST request or Pipe URL."""
    return sign(secret, query_string_to_sign(method, path, params))


def timestamp_problem(value: str | None, now: float) -> str | None:
    """Why ``auth_timestamp`` ``value`` is not acceptable at ``now``, or ``None``.

    It must be an integer within :data:`TIMESTAMP_GRACE` seconds of ``now``.
    """
    try:
        timestamp = int(value or "")
    except ValueError:
        return "Timestamp required: auth_timestamp must be an integer"
    if abs(now - timestamp) >= TIMESTAMP_GRACE:
        return (
            f"Timestamp expired: Given timestamp ({timestamp}) not within "
            f"{TIMESTAMP_GRACE}s of server time ({int(now)})"
        )
    return None


def check_signed_query(
    secret: str,
    method: str,
    paths: Iterable[str],
    params: Mapping[str, str],
) -> str | None:
    """Why ``params['auth_signature']`` does not sign the request, or ``None``.

    ``paths`` are the spellings of the path to accept (as sent, and
    percent-decoded when it differs).
    """
    given = params.get("auth_signature", "")
    text = ""
    for path in paths:
        text = query_string_to_sign(method, path, params)
        if _equal(sign(secret, text), given):
            return None
    return (
        f"Invalid signature: you should have sent HmacSHA256Hex({text!r}, your_secret_key), "
        f"but you sent {given!r}"
    )


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature`` for a webhook body."""
    return sign(secret, body)


def shared_secret(channel: str, master_key_b64: str) -> str:
    """The base64 ``shared_secret`` of a ``private-encrypted-`` channel.

    Raises:
        ValueError: the master key is not base64 of exactly 32 bytes.
    """
    master = base64.b64decode(master_key_b64, validate=True)
    if len(master) != 32:
        raise ValueError("encryption master key must be 32 bytes")
    return base64.b64encode(hashlib.sha256(channel.encode() + master).digest()).decode()
