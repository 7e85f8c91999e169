"""Fuzz target ``signatures``: every verification accepts exactly the signature the spec's formula gives.

Three ways to get a signature are compared, for channel authorization (private,
encrypted and presence channels, pusher-channels.md 5.2-5.5), user
authentication (5.6) and REST request signing (9.2):

* the spec's formula, written out here with ``hmac``/``hashlib``;
* the official Python SDK, PyPI ``pusher`` 3.3.4 (``authenticate``,
  ``authenticate_user``, ``pusher.http.Request``);
* ``pipe_proto.signatures`` (``channel_auth``, ``signin_auth``, ``sign_query``).

They must agree, and ``pipe_proto``'s checks (``check_channel_auth``,
``check_signin``, ``rest.authenticate``, and the relay's
``authorize_subscription``/``authorize_signin``) must accept that signature and
refuse every other string, be it an arbitrary one or the valid one with a
character changed, another key, another socket id or channel, re-spaced
``channel_data``/``user_data``, or any request field altered after signing
(``check_*`` below compare ``pipe_proto``'s verdict with the formula's for
any input). Webhook bodies signed by the relay validate with the SDK's
``validate_webhook``, and not once tampered with.

Seeds: the channel and user authorizations that real pusher-js clients sent
(signed by the SDK in the interop auth server), and the SDK's REST requests
(``corpus/signatures``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pusher.http
import pytest
from hypothesis import strategies as st
from pusher.authentication_client import AuthenticationClient
from pusher.pusher_client import PusherClient

from fuzz._support import corpus_params, fuzz_property, plain_json, record
from pipe_proto import App
from pipe_proto.names import ChannelKind, channel_type
from pipe_proto.pusher.events import SignIn, Subscribe
from pipe_proto.relay.authorization import Allow, Refuse, authorize_signin, authorize_subscription
from pipe_proto.rest.auth import authenticate
from pipe_proto.signatures import (
    channel_auth,
    check_channel_auth,
    check_signin,
    shared_secret,
    sign_query,
    signin_auth,
)
from pipe_proto.webhooks import build_request

TARGET = "signatures"
#: An encryption master key (32 bytes, base64) for private-encrypted- channels (5.5).
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()


def spec_sign(secret: str, text: str) -> str:
    """pusher-channels.md 5.1: lowercase hex HMAC-SHA256, secret and text as UTF-8."""
    return hmac.new(secret.encode(), text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


# ---------------------------------------------------------------- checks


def check_channel(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None, auth: Any, two_part: bool = True
) -> bool:
    """``check_channel_auth``'s verdict equals the formula's (5.2; presence passes ``two_part=False``)."""
    record(TARGET, {"kind": "channel", "key": key, "secret": secret, "socket_id": socket_id, "channel": channel,
                    "channel_data": channel_data, "auth": auth, "two_part": two_part})
    candidates = []
    if channel_data is not None:
        candidates.append(f"{key}:{spec_sign(secret, f'{socket_id}:{channel}:{channel_data}')}")
    if channel_data is None or two_part:
        candidates.append(f"{key}:{spec_sign(secret, f'{socket_id}:{channel}')}")
    expected = auth in candidates
    problem = check_channel_auth(key, secret, socket_id, channel, auth, channel_data, two_part=two_part)
    assert (problem is None) == expected, f"check_channel_auth said {problem!r}; the formula says {expected}"
    assert problem is None or (isinstance(problem, str) and problem)
    return expected


def check_user(key: str, secret: str, socket_id: str, user_data: str, auth: Any) -> bool:
    """``check_signin``'s verdict equals the formula's (5.6)."""
    record(TARGET, {"kind": "user", "key": key, "secret": secret, "socket_id": socket_id, "user_data": user_data,
                    "auth": auth})
    expected = auth == f"{key}:{spec_sign(secret, f'{socket_id}::user::{user_data}')}"
    problem = check_signin(key, secret, socket_id, auth, user_data)
    assert (problem is None) == expected, f"check_signin said {problem!r}; the formula says {expected}"
    return expected


def spec_request_ok(key: str, secret: str, method: str, path: str, query: dict[str, str], body: bytes,
                    now: float) -> bool:
    """pusher-channels.md 9.2's verify_rest, for one app."""
    q = {k.lower(): v for k, v in query.items()}
    if q.get("auth_key") != key or q.get("auth_version") != "1.0":
        return False
    try:
        if abs(now - int(q["auth_timestamp"])) >= 600:
            return False
    except (KeyError, ValueError):
        return False
    md5 = hashlib.md5(body).hexdigest()
    if (body and q.get("body_md5") != md5) or (not body and q.get("body_md5", md5) != md5):
        return False
    signature = q.pop("auth_signature", "")
    text = "\n".join([method.upper(), path, "&".join(f"{k}={v}" for k, v in sorted(q.items()))])
    return hmac.compare_digest(spec_sign(secret, text).encode(), signature.encode("utf-8", "surrogatepass"))


def check_request(key: str, secret: str, method: str, path: str, query: dict[str, str], body: bytes,
                  now: float) -> bool:
    """``rest.authenticate``'s verdict equals the formula's (for a path with nothing to percent-decode)."""
    record(TARGET, {"kind": "request", "key": key, "secret": secret, "method": method, "path": path,
                    "query": query, "body_b64": base64.b64encode(body).decode(), "now": now})
    app = App(id="1", key=key, secret=secret)
    expected = spec_request_ok(key, secret, method, path, query, body, now)
    refusal = authenticate(app, method, path, query, body, now)
    assert (refusal is None) == expected, f"authenticate said {refusal!r}; the formula says {expected}"
    if refusal is not None:
        assert refusal[0] == 401 and refusal[1], refusal
    return expected


def check_entry(entry: dict[str, Any]) -> None:
    """Replay one corpus entry (the verdicts must agree; captured ones must be accepted)."""
    kind = entry["kind"]
    if kind == "channel":
        ok = check_channel(entry["key"], entry["secret"], entry["socket_id"], entry["channel"],
                           entry["channel_data"], entry["auth"], entry.get("two_part", True))
    elif kind == "user":
        ok = check_user(entry["key"], entry["secret"], entry["socket_id"], entry["user_data"], entry["auth"])
    else:
        ok = check_request(entry["key"], entry["secret"], entry["method"], entry["path"], entry["query"],
                           base64.b64decode(entry["body_b64"]), entry["now"])
    if "expect" in entry:
        assert ok == entry["expect"], entry


# ---------------------------------------------------------------- inputs

tokens = st.from_regex(r"[A-Za-z0-9_\-.]{1,20}", fullmatch=True)
socket_ids = st.from_regex(r"[0-9]{1,12}\.[0-9]{1,12}", fullmatch=True)
name_bodies = st.from_regex(r"[-a-zA-Z0-9_=@,.;]{1,40}", fullmatch=True)
channels = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["private-", "presence-", "private-encrypted-", "private-cache-", "presence-cache-", ""]),
    name_bodies,
)
user_ids = st.from_regex(r"[-a-zA-Z0-9_=@,.;]{1,30}", fullmatch=True)
members = st.fixed_dictionaries(
    {"user_id": user_ids | st.integers(-(10**6), 10**6)}, optional={"user_info": plain_json}
)


def _edits(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with one character replaced, inserted or deleted, or its case flipped."""
    index = st.integers(0, max(0, len(valid) - 1))
    char = st.sampled_from("0123456789abcdefABCDEF:x ")
    return st.one_of(
        st.builds(lambda i, c: valid[:i] + c + valid[i + 1 :], index, char),
        st.builds(lambda i, c: valid[:i] + c + valid[i:], index, char),
        st.builds(lambda i: valid[:i] + valid[i + 1 :], index),
        st.just(valid.upper()),
        st.just(valid + "\n"),
        st.just(" " + valid),
    )


# ------------------------------------------------------------- properties


@fuzz_property(TARGET, 500, key=tokens, secret=tokens, socket_id=socket_ids, channel=channels,
               member=st.none() | members, data=st.data())
def test_channel_auth_matches_sdk(
    key: str, secret: str, socket_id: str, channel: str, member: dict[str, Any] | None, data: st.DataObject
) -> None:
    """The SDK's channel authorization is the spec's, pipe_proto's, and accepted; nothing else is."""
    sdk = AuthenticationClient(app_id="1", key=key, secret=secret, encryption_master_key_base64=MASTER_KEY)
    answer = sdk.authenticate(channel=channel, socket_id=socket_id, custom_data=member)
    auth, channel_data = answer["auth"], answer.get("channel_data")
    if "shared_secret" in answer:
        assert answer["shared_secret"].decode() == shared_secret(channel, MASTER_KEY)
    presence = channel.startswith("presence-")
    expected_text = f"{socket_id}:{channel}" if channel_data is None else f"{socket_id}:{channel}:{channel_data}"
    assert auth == f"{key}:{spec_sign(secret, expected_text)}"
    assert channel_auth(key, secret, socket_id, channel, channel_data) == auth
    assert check_channel(key, secret, socket_id, channel, channel_data, auth, two_part=not presence)
    # The relay's decision: never refused for the signature (member limits may still apply).
    app = App(id="1", key=key, secret=secret)
    decision = authorize_subscription(app, socket_id, Subscribe(channel=channel, auth=auth, channel_data=channel_data),
                                      None)
    kind = channel_type(channel).kind
    if kind in (ChannelKind.PRIVATE, ChannelKind.ENCRYPTED) or (presence and channel_data is not None):
        assert not (isinstance(decision, Refuse) and decision.status == 401), decision
    if kind is ChannelKind.PRIVATE and len(channel) <= app.limits.max_channel_name:
        assert isinstance(decision, Allow), decision
    # Everything else is refused: edits of the auth, other sockets, channels and data.
    wrong = data.draw(
        _edits(auth)
        | st.just(f"other:{auth.split(':', 1)[1]}")
        | st.just(channel_auth(key, secret, socket_id + "1", channel, channel_data))
        | st.just(channel_auth(key, secret, socket_id, channel + "x", channel_data))
        | st.text(max_size=80)
    )
    check_channel(key, secret, socket_id, channel, channel_data, wrong, two_part=not presence)
    if channel_data is not None:
        compact = json.dumps(json.loads(channel_data), separators=(",", ":"))
        check_channel(key, secret, socket_id, channel, compact, auth, two_part=not presence)
        check_channel(key, secret, socket_id, channel, None, auth)


@fuzz_property(TARGET, 500, key=tokens, secret=tokens, socket_id=socket_ids, user_id=user_ids,
               user_info=st.none() | plain_json, watchlist=st.none() | st.lists(user_ids, max_size=3), data=st.data())
def test_user_auth_matches_sdk(
    key: str, secret: str, socket_id: str, user_id: str, user_info: Any, watchlist: list[str] | None,
    data: st.DataObject,
) -> None:
    """The SDK's user authentication is the spec's, pipe_proto's, and signs the user in; nothing else does."""
    user: dict[str, Any] = {"id": user_id}
    if user_info is not None:
        user["user_info"] = user_info
    if watchlist is not None:
        user["watchlist"] = watchlist
    answer = AuthenticationClient(app_id="1", key=key, secret=secret).authenticate_user(socket_id, user)
    auth, user_data = answer["auth"], answer["user_data"]
    assert auth == f"{key}:{spec_sign(secret, f'{socket_id}::user::{user_data}')}"
    assert signin_auth(key, secret, socket_id, user_data) == auth
    assert check_user(key, secret, socket_id, user_data, auth)
    decision = authorize_signin(App(id="1", key=key, secret=secret), socket_id, SignIn(auth=auth, user_data=user_data))
    assert isinstance(decision, Allow) and decision.user is not None and decision.user.id == user_id, decision
    other_socket = signin_auth(key, secret, socket_id + "0", user_data)
    wrong = data.draw(_edits(auth) | st.just(other_socket) | st.text(max_size=80))
    check_user(key, secret, socket_id, user_data, wrong)
    compact = json.dumps(user, separators=(",", ":"))
    check_user(key, secret, socket_id, compact, auth)


param_names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda k: not k.startswith("auth_") and k != "body_md5"
)
param_values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
paths = st.builds(
    lambda app_id, rest: f"/apps/{app_id}{rest}",
    st.from_regex(r"[0-9]{1,6}", fullmatch=True),
    st.sampled_from(["/events", "/batch_events", "/channels", "/channels/presence-x/users", "/status",
                     "/users/u1/terminate_connections"]),
)


@fuzz_property(TARGET, 500, key=tokens, secret=tokens, method=st.sampled_from(["GET", "POST"]), path=paths,
               params=st.dictionaries(param_names, param_values, max_size=5), data=st.data())
def test_request_signing_matches_sdk(
    key: str, secret: str, method: str, path: str, params: dict[str, str], data: st.DataObject
) -> None:
    """The SDK's signed REST requests are the spec's and authenticate; any field altered after signing does not."""
    client = PusherClient(app_id="1", key=key, secret=secret)
    request = pusher.http.Request(client, method, path, params)
    query = {k: str(v) for k, v in request.query_params.items()}
    body: bytes = request.body
    now = float(query["auth_timestamp"])
    unsigned = {k: v for k, v in query.items() if k != "auth_signature"}
    assert sign_query(secret, method, path, unsigned) == query["auth_signature"]
    assert check_request(key, secret, method, path, query, body, now)
    tamper = data.draw(st.sampled_from(["value", "add", "drop", "path", "method", "body", "time", "key"]))
    changed = dict(query)
    if tamper == "value":
        name = data.draw(st.sampled_from(sorted(changed)))
        changed[name] = data.draw(param_values.filter(lambda v: v != changed[name]))
    elif tamper == "add":
        changed[data.draw(param_names.filter(lambda k: k not in changed))] = data.draw(param_values)
    elif tamper == "drop":
        del changed[data.draw(st.sampled_from(sorted(k for k in changed if k != "auth_signature")))]
    outcome = check_request(
        key if tamper != "key" else key + "x",
        secret,
        ("POST" if method == "GET" else "GET") if tamper == "method" else method,
        path + "/x" if tamper == "path" else path,
        changed,
        body + b" " if tamper == "body" else body,
        now + 600 if tamper == "time" else now,
    )
    assert not outcome, f"a request altered ({tamper}) after signing still authenticates"


@fuzz_property(TARGET, 200, key=tokens, secret=tokens, events=st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["channel_occupied", "member_added"]), "channel": name_bodies}),
    min_size=1, max_size=3), flip=st.integers(0, 10_000))
def test_webhooks_validate_with_sdk(key: str, secret: str, events: list[dict[str, Any]], flip: int) -> None:
    """A webhook the relay signs validates with the SDK's validate_webhook; a changed body does not."""
    request = build_request(App(id="1", key=key, secret=secret), events, time.time())
    headers = dict(request.headers)
    sdk = AuthenticationClient(app_id="1", key=key, secret=secret)
    assert headers["X-Pusher-Key"] == key
    assert sdk.validate_webhook(key, headers["X-Pusher-Signature"], request.body.decode()) is not None
    body = bytearray(request.body)
    index = flip % len(body)
    body[index] = ord("0") if body[index] != ord("0") else ord("1")
    assert sdk.validate_webhook(key, headers["X-Pusher-Signature"], body.decode()) is None


@fuzz_property(TARGET, 600, key=tokens, secret=tokens, socket_id=socket_ids | st.text(max_size=8),
               channel=channels | st.text(max_size=8), channel_data=st.none() | st.text(max_size=20),
               auth=st.text(max_size=90) | st.none() | st.integers(), two_part=st.booleans(),
               user_data=st.text(max_size=20))
def test_arbitrary_auth_strings(
    key: str, secret: str, socket_id: str, channel: str, channel_data: str | None, auth: Any, two_part: bool,
    user_data: str,
) -> None:
    """Arbitrary auth values (any type, any text, lone surrogates included): the checks agree with the formula."""
    check_channel(key, secret, socket_id, channel, channel_data, auth, two_part)
    if isinstance(auth, str):
        check_user(key, secret, socket_id, user_data, auth)


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Authorizations signed by the SDK for real pusher-js clients, SDK requests, past crashes."""
    check_entry(entry)
