"""Every HMAC of the protocol: appendix A vectors, the checks, and the official Python SDK."""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any

import pusher
import pusher.authentication_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto import App, AppRegistry
from pipe_proto.pipe import PipeRefused, check_pipe_handshake
from pipe_proto.pusher.events import SignIn, Subscribe
from pipe_proto.relay.authorization import Allow, Refuse, authorize_signin, authorize_subscription
from pipe_proto.rest import authenticate
from pipe_proto.signatures import (
    channel_auth,
    check_channel_auth,
    check_signed_query,
    check_signin,
    query_string_to_sign,
    shared_secret,
    sign,
    sign_query,
    signin_auth,
    timestamp_problem,
    webhook_signature,
)
from pipe_proto.webhooks import build_request
from tests.pipe_helpers import pipe_query

# Credentials of appendix A (DOC-SIG / DOC-REST).
KEY, SECRET, SID = "278d425bdf160c739803", "7ad3773142a6692b25b8", "1234.1234"

# ------------------------------------------------------------ channel vectors

# (id, secret, key, socket id, channel, channel_data, signature)
CHANNEL_VECTORS = [
    ("V1", SECRET, KEY, SID, "private-foobar", None,
     "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"),
    ("V2", SECRET, KEY, SID, "presence-foobar", '{"user_id":10,"user_info":{"name":"Mr. Channels"}}',
     "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"),
    ("V12", SECRET, KEY, SID, "presence-foobar", '{"user_id":10,"user_info":{"name":"Mr. Pusher"}}',
     "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"),
    ("V11", SECRET, KEY, SID, "presence-foobar", '{"user_id": "10", "user_info": {"name": "Mr. Channels"}}',
     "96f61cf0b64a80c5cf1852da9dea2998a90fd7fa840c4cc62212573f1c524cdf"),
    ("E2", "tofu", "f00d", "123.456", "private-encrypted-bla", '"foo"',
     "962c48b78bf93d98ff4c92ee7dff04865821455b7b401e9d60a9e0a90af2c105"),
    ("E4", SECRET, KEY, SID, "private-encrypted-foobar", None,
     "e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533"),
]


@pytest.mark.parametrize(
    ("secret", "key", "socket_id", "channel", "channel_data", "signature"),
    [v[1:] for v in CHANNEL_VECTORS],
    ids=[v[0] for v in CHANNEL_VECTORS],
)
def test_channel_vectors(
    secret: str, key: str, socket_id: str, channel: str, channel_data: str | None, signature: str
) -> None:
    """Channel auth strings of appendix A are produced by channel_auth and accepted by check_channel_auth."""
    text = f"{socket_id}:{channel}" if channel_data is None else f"{socket_id}:{channel}:{channel_data}"
    assert sign(secret, text) == signature
    assert channel_auth(key, secret, socket_id, channel, channel_data) == f"{key}:{signature}"
    assert check_channel_auth(key, secret, socket_id, channel, f"{key}:{signature}", channel_data) is None
    assert check_channel_auth(
        key, secret, socket_id, channel, f"{key}:{signature}", channel_data, two_part=False
    ) is None


def test_docs_presence_vector_is_for_the_old_text() -> None:
    """DOC-SIG's printed presence signature (V12) does not sign the printed 'Mr. Channels' data (V2)."""
    v2_data = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}'
    docs_auth = f"{KEY}:afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"
    assert check_channel_auth(KEY, SECRET, SID, "presence-foobar", docs_auth, v2_data, two_part=False) is not None


# --------------------------------------------------------------- user vectors

USER_VECTORS = [
    ("U1", SECRET, KEY, SID, '{"id":"12345"}', "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"),
    ("U2", SECRET, KEY, SID, '{"id": "12345"}', "d06dc389319077f890321aeac54e04868921e1601686928f61fc9bf702e92830"),
    ("U3", "tofu", "aaaa", "123.456", '{"id":"45678"}',
     "f4b1fdeea7c93e32648c7230e32b172057c5623cace6cfce791c6e7035e0babd"),
]


@pytest.mark.parametrize(
    ("secret", "key", "socket_id", "user_data", "signature"),
    [v[1:] for v in USER_VECTORS],
    ids=[v[0] for v in USER_VECTORS],
)
def test_user_vectors(secret: str, key: str, socket_id: str, user_data: str, signature: str) -> None:
    """Sign-in auth strings of appendix A are produced by signin_auth and accepted by check_signin."""
    assert sign(secret, f"{socket_id}::user::{user_data}") == signature
    assert signin_auth(key, secret, socket_id, user_data) == f"{key}:{signature}"
    assert check_signin(key, secret, socket_id, f"{key}:{signature}", user_data) is None


def test_user_vector_is_spacing_sensitive() -> None:
    """U1's signature does not sign U2's differently spaced user_data: the raw string is what is signed."""
    u1 = f"{KEY}:4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    assert check_signin(KEY, SECRET, SID, u1, '{"id": "12345"}') is not None


# ----------------------------------------------------------- encrypted vectors


@pytest.mark.parametrize(
    ("master", "channel", "expected"),
    [
        ("zyrm8pvV2C9fJcBfhyXzvxbJVN/H7QLmbe0xJi1GhPU=", "private-encrypted-bla",
         "nlr49ISQHz91yS3cy/yWmW8wFMNeTnNL5tNHnbPJcLQ="),
        ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "private-encrypted-foobar",
         "g3Au6SZ+UCU+IMfFsFva0rq+Gi4tzSHR6WCcWZbS9sY="),
    ],
    ids=["E1", "E3"],
)
def test_shared_secret_vectors(master: str, channel: str, expected: str) -> None:
    """shared_secret derives the appendix A value from the channel name and the master key."""
    assert shared_secret(channel, master) == expected


@pytest.mark.parametrize("master", ["", "AAAA", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8fHw==", "not base64!"])
def test_shared_secret_refuses_bad_master_keys(master: str) -> None:
    """A master key that is not base64 of exactly 32 bytes raises ValueError."""
    with pytest.raises(ValueError):
        shared_secret("private-encrypted-x", master)


# ----------------------------------------------------------------- REST vectors

TS = "1353088179"
R_BASE = {"auth_key": KEY, "auth_timestamp": TS, "auth_version": "1.0"}

# (id, secret, method, path, extra params, body or None, body_md5, signature)
REST_VECTORS: list[tuple[str, str, str, str, dict[str, str], bytes | None, str | None, str]] = [
    ("R1", SECRET, "POST", "/apps/3/events", {},
     b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}',
     "ec365a775a4cd0599faeb73354201b6f", "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"),
    ("R2", SECRET, "GET", "/apps/3/channels", {"filter_by_prefix": "presence-", "info": "user_count"}, None, None,
     "16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291"),
    ("R3", SECRET, "GET", "/apps/3/channels/presence-foobar", {"info": "user_count,subscription_count"}, b"",
     "d41d8cd98f00b204e9800998ecf8427e", "1e5ce8ad11c48842231003911c29c872174a125059c4cdd215f10f2134d0c1b1"),
    ("R4", SECRET, "POST", "/apps/3/batch_events", {},
     b'{"batch":[{"channel":"my-channel","name":"my-event","data":"{\\"n\\":1}"}]}',
     "e8cb5d5dbb5fdf8e85415f93a3b9017b", "fbe8f4442b678db084f21db26aa7116d3f3a725c480c2cfb4eae6fc856a11d10"),
    ("R5", SECRET, "POST", "/apps/3/users/42/terminate_connections", {}, b"{}",
     "99914b932bd37a50b983c5e7c90ae93b", "2829710742ff5f799010258297d09016e2366257e3e954039eeda349073a2bcf"),
    ("R6", SECRET, "POST", "/users/42/terminate_connections", {}, b"{}",
     "99914b932bd37a50b983c5e7c90ae93b", "103f2a90361bc4bcd8407c86f261563b23281fea1602c29fc81ac0ec1b7ec5a7"),
]
NODE_T = {"auth_key": "f00d", "auth_timestamp": "1234567890", "auth_version": "1.0"}
REST_VECTORS += [
    ("R7", "tofu", "GET", "/event", {}, b"example body", "165d5e6d7ca8f73b3853ce45addf42fc",
     "a650196dc427ebe837226f8565ca9232198c6d1b9455eaa72374a9dc0b620e7b"),
    ("R8", "tofu", "GET", "/event", {"baz": "123454321", "foo": "bar"}, None, None,
     "d8bdbd31911fb7400a14fbd36fd7de053494725b64400ae5856deafe304b34a9"),
]


def _rest_params(vector_id: str, extra: dict[str, str], body_md5: str | None) -> dict[str, str]:
    params = dict(NODE_T if vector_id in ("R7", "R8") else R_BASE)
    params.update(extra)
    if body_md5 is not None:
        params["body_md5"] = body_md5
    return params


@pytest.mark.parametrize(
    ("vector_id", "secret", "method", "path", "extra", "body", "body_md5", "signature"),
    REST_VECTORS,
    ids=[v[0] for v in REST_VECTORS],
)
def test_rest_vectors(
    vector_id: str,
    secret: str,
    method: str,
    path: str,
    extra: dict[str, str],
    body: bytes | None,
    body_md5: str | None,
    signature: str,
) -> None:
    """REST vectors R1-R8 are signed by sign_query and accepted by check_signed_query; a changed value is not."""
    if body is not None:
        assert hashlib.md5(body).hexdigest() == body_md5  # M1, M2 and the per-vector MD5s
    params = _rest_params(vector_id, extra, body_md5)
    assert sign_query(secret, method, path, params) == signature
    signed = {**params, "auth_signature": signature}
    assert check_signed_query(secret, method, [path], signed) is None
    # auth_signature first (Python SDK order) changes nothing: the string is rebuilt sorted.
    assert check_signed_query(secret, method, [path], {"auth_signature": signature, **params}) is None
    tampered = {**signed, "auth_timestamp": str(int(params["auth_timestamp"]) + 1)}
    assert check_signed_query(secret, method, [path], tampered) is not None
    assert check_signed_query(secret, "PUT" if method != "PUT" else "GET", [path], signed) is not None
    assert check_signed_query(secret, method, [path + "x"], signed) is not None


def test_r1_string_to_sign() -> None:
    """R1's string to sign is exactly the one printed in section 9.2."""
    params = {**R_BASE, "body_md5": "ec365a775a4cd0599faeb73354201b6f", "auth_signature": "ignored"}
    assert query_string_to_sign("post", "/apps/3/events", params) == (
        "POST\n/apps/3/events\n"
        "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0"
        "&body_md5=ec365a775a4cd0599faeb73354201b6f"
    )


def test_query_keys_are_lowercased_and_values_kept_raw() -> None:
    """Keys are lowercased before sorting, any-case auth_signature is left out, values are not escaped."""
    text = query_string_to_sign("GET", "/p", {"Info": "a,b", "AUTH_SIGNATURE": "x", "b": "c d"})
    assert text == "GET\n/p\nb=c d&info=a,b"


def test_check_signed_query_tries_every_path_spelling() -> None:
    """A signature over the second spelling of the path is accepted; over neither, refused."""
    params = {**R_BASE, "auth_signature": sign_query(SECRET, "GET", "/apps/3/channels/a b", R_BASE)}
    assert check_signed_query(SECRET, "GET", ["/apps/3/channels/a%20b", "/apps/3/channels/a b"], params) is None
    assert check_signed_query(SECRET, "GET", ["/apps/3/channels/a%20b"], params) is not None


def test_check_signed_query_without_signature() -> None:
    """A request without auth_signature is refused, with the expected string in the message."""
    problem = check_signed_query(SECRET, "GET", ["/apps/3/channels"], R_BASE)
    assert problem is not None
    assert "GET\\n/apps/3/channels\\nauth_key=" in problem


# -------------------------------------------------------------- webhook vectors


@pytest.mark.parametrize(
    ("secret", "body", "signature"),
    [
        ("tofu", b'{"time_ms":1403175510755,"events":[{"channel":"test_channel","name":"channel_vacated"}]}',
         "c17257e92037cd7de407ebc1ed174ceb7b2e518db127f44411b9ffc4f5b28cc5"),
        (SECRET, b'{"time_ms":1353088179000,"events":[{"name":"channel_occupied","channel":"my-channel"}]}',
         "8039c268e5f53944f550e8d8ce9a942ae558c704b276c6c26eab94e54faf8592"),
    ],
    ids=["W1", "W2"],
)
def test_webhook_vectors(secret: str, body: bytes, signature: str) -> None:
    """webhook_signature signs the raw body as in W1 and W2."""
    assert webhook_signature(secret, body) == signature
    assert webhook_signature(secret, body + b" ") != signature


def test_build_request_reproduces_w2(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_request at time 1353088179 writes W2's exact body and headers, which the PyPI SDK validates."""
    app = App(id="3", key=KEY, secret=SECRET)
    request = build_request(app, [{"name": "channel_occupied", "channel": "my-channel"}], 1353088179.0)
    assert request.body == b'{"time_ms":1353088179000,"events":[{"name":"channel_occupied","channel":"my-channel"}]}'
    assert dict(request.headers) == {
        "Content-Type": "application/json",
        "X-Pusher-Key": KEY,
        "X-Pusher-Signature": "8039c268e5f53944f550e8d8ce9a942ae558c704b276c6c26eab94e54faf8592",
    }
    sdk = pusher.Pusher(app_id="3", key=KEY, secret=SECRET)
    monkeypatch.setattr(pusher.authentication_client.time, "time", lambda: 1353088179.0 + 60)
    payload = sdk.validate_webhook(KEY, dict(request.headers)["X-Pusher-Signature"], request.body)
    assert payload == {"time_ms": 1353088179000, "events": [{"name": "channel_occupied", "channel": "my-channel"}]}
    monkeypatch.setattr(pusher.authentication_client.time, "time", lambda: 1353088179.0 + 301)
    assert sdk.validate_webhook(KEY, dict(request.headers)["X-Pusher-Signature"], request.body) is None


# --------------------------------------------------- check_channel_auth exactly

GOOD = channel_auth(KEY, SECRET, SID, "private-foobar")
DATA = '{"user_id":"10"}'
GOOD3 = channel_auth(KEY, SECRET, SID, "presence-foobar", DATA)
TWO_PART_PRESENCE = channel_auth(KEY, SECRET, SID, "presence-foobar")


@pytest.mark.parametrize(
    ("auth", "socket_id", "channel", "channel_data", "two_part", "accepted"),
    [
        (GOOD, SID, "private-foobar", None, True, True),
        ("other-key:" + GOOD.split(":", 1)[1], SID, "private-foobar", None, True, False),
        (":" + GOOD.split(":", 1)[1], SID, "private-foobar", None, True, False),
        (GOOD.split(":", 1)[1], SID, "private-foobar", None, True, False),  # signature alone, no key part
        (GOOD, "1234.1235", "private-foobar", None, True, False),
        (GOOD, SID, "private-foobaz", None, True, False),
        (GOOD.upper().replace(KEY.upper(), KEY), SID, "private-foobar", None, True, False),  # hex must be lowercase
        (GOOD[:-1], SID, "private-foobar", None, True, False),
        (GOOD + "0", SID, "private-foobar", None, True, False),
        (GOOD + ":extra", SID, "private-foobar", None, True, False),
        (f"{KEY}:", SID, "private-foobar", None, True, False),
        (f"{KEY}:é", SID, "private-foobar", None, True, False),  # non-ASCII signature: refused, no TypeError
        ("é:" + GOOD.split(":", 1)[1], SID, "private-foobar", None, True, False),
        ("", SID, "private-foobar", None, True, False),
        (None, SID, "private-foobar", None, True, False),
        (12, SID, "private-foobar", None, True, False),
        (GOOD3, SID, "presence-foobar", DATA, False, True),
        (GOOD3, SID, "presence-foobar", DATA, True, True),
        (GOOD3, SID, "presence-foobar", '{"user_id":"11"}', False, False),  # tampered channel_data
        (GOOD3, SID, "presence-foobar", '{"user_id": "10"}', False, False),  # re-serialised channel_data
        (GOOD3, SID, "presence-foobar", None, True, False),  # three-part signature, data dropped
        (TWO_PART_PRESENCE, SID, "presence-foobar", DATA, True, True),  # two-part form allowed
        (TWO_PART_PRESENCE, SID, "presence-foobar", DATA, False, False),  # ... unless two_part=False
        (GOOD3, "1234.1235", "presence-foobar", DATA, False, False),
    ],
)
def test_check_channel_auth_accepts_exactly_the_right_signature(
    auth: object, socket_id: str, channel: str, channel_data: str | None, two_part: bool, accepted: bool
) -> None:
    """check_channel_auth returns None only for the app key and the signature of this socket, channel and data."""
    problem = check_channel_auth(KEY, SECRET, socket_id, channel, auth, channel_data, two_part=two_part)
    if accepted:
        assert problem is None
    else:
        assert isinstance(problem, str)
        assert problem


def test_check_channel_auth_names_a_wrong_key() -> None:
    """A wrong key part is reported as 'Invalid key in subscription auth data' with the key given (ISS-KEYERR)."""
    problem = check_channel_auth(KEY, SECRET, SID, "private-foobar", "nope:" + GOOD.split(":", 1)[1])
    assert problem == "Invalid key in subscription auth data: 'nope'"


def test_check_channel_auth_reports_the_string_to_sign() -> None:
    """A wrong signature is reported with the string that should have been signed."""
    problem = check_channel_auth(KEY, SECRET, SID, "private-foobar", f"{KEY}:{'0' * 64}")
    assert problem is not None
    assert "1234.1234:private-foobar" in problem


@pytest.mark.parametrize(
    ("auth", "socket_id", "user_data", "accepted"),
    [
        (signin_auth(KEY, SECRET, SID, '{"id":"1"}'), SID, '{"id":"1"}', True),
        (signin_auth(KEY, SECRET, SID, '{"id":"1"}'), SID, '{"id":"2"}', False),
        (signin_auth(KEY, SECRET, SID, '{"id":"1"}'), "1.2", '{"id":"1"}', False),
        (signin_auth("other", SECRET, SID, '{"id":"1"}'), SID, '{"id":"1"}', False),
        (signin_auth(KEY, "other", SID, '{"id":"1"}'), SID, '{"id":"1"}', False),
        (KEY + "::user::" + sign(SECRET, f'{SID}::user::{{"id":"1"}}'), SID, '{"id":"1"}', False),  # DOC-PROTO typo
        (None, SID, '{"id":"1"}', False),
        ("", SID, '{"id":"1"}', False),
    ],
)
def test_check_signin_accepts_exactly_the_right_signature(
    auth: object, socket_id: str, user_data: str, accepted: bool
) -> None:
    """check_signin returns None only for 'key:sign(secret, sid::user::user_data)'."""
    problem = check_signin(KEY, SECRET, socket_id, auth, user_data)
    assert (problem is None) is accepted


# ------------------------------------------- differential against the PyPI SDK

MASTER = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
NAME_CHARS = string.ascii_letters + string.digits + "-_=@,.;"
tokens = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=30)
socket_ids = st.from_regex(r"\A[0-9]{1,10}\.[0-9]{1,10}\Z")
names = st.text(NAME_CHARS, min_size=1, max_size=60)
channels = st.builds(
    lambda prefix, name: prefix + name,
    st.sampled_from(["", "private-", "presence-", "private-encrypted-", "private-cache-", "cache-"]),
    names,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
user_ids = st.text(NAME_CHARS, min_size=1, max_size=40)
presence_data = st.fixed_dictionaries(
    {"user_id": user_ids | st.integers(min_value=0, max_value=10**12)},
    optional={"user_info": json_values},
)


def _sdk(key: str, secret: str) -> pusher.Pusher:
    return pusher.Pusher(app_id="1", key=key, secret=secret, encryption_master_key_base64=MASTER)


@given(key=tokens, secret=tokens, socket_id=socket_ids, channel=channels,
       custom_data=st.none() | presence_data)
def test_channel_auth_matches_the_python_sdk(
    key: str, secret: str, socket_id: str, channel: str, custom_data: dict[str, Any] | None
) -> None:
    """What pusher.Pusher.authenticate returns is what channel_auth builds and check_channel_auth accepts."""
    response = _sdk(key, secret).authenticate(channel, socket_id, custom_data)
    data = response.get("channel_data")
    assert response["auth"] == channel_auth(key, secret, socket_id, channel, data)
    assert check_channel_auth(key, secret, socket_id, channel, response["auth"], data, two_part=False) is None
    assert check_channel_auth(key, secret, socket_id + "0", channel, response["auth"], data) is not None
    assert check_channel_auth(key, secret + "x", socket_id, channel, response["auth"], data) is not None
    if channel.startswith("private-encrypted-"):
        assert response["shared_secret"].decode() == shared_secret(channel, MASTER)
    # And the relay's decision agrees: the SDK's answer authorizes the subscription.
    app = App(id="1", key=key, secret=secret)
    request = Subscribe(channel=channel, auth=response["auth"], channel_data=data)
    decision = authorize_subscription(app, socket_id, request, None)
    if channel.startswith("presence-") and custom_data is None:
        assert isinstance(decision, Refuse)  # no channel_data and no signed-in user
    elif channel.startswith("presence-"):
        info_size = len(json.dumps(custom_data.get("user_info"), separators=(",", ":")))
        if len(str(custom_data["user_id"])) <= 128 and info_size <= 1024:
            assert isinstance(decision, Allow)
            assert decision.member is not None
            assert decision.member.user_id == custom_data["user_id"]
            assert decision.member.info == custom_data.get("user_info")
    else:
        assert decision == Allow()


@given(
    key=tokens,
    secret=tokens,
    socket_id=socket_ids,
    user_data=st.fixed_dictionaries(
        {"id": user_ids},
        optional={"user_info": json_values, "watchlist": st.lists(user_ids, max_size=5)},
    ),
)
def test_signin_auth_matches_the_python_sdk(
    key: str, secret: str, socket_id: str, user_data: dict[str, Any]
) -> None:
    """What pusher.Pusher.authenticate_user returns is what signin_auth builds and the relay signs in."""
    response = _sdk(key, secret).authenticate_user(socket_id, user_data)
    assert response["auth"] == signin_auth(key, secret, socket_id, response["user_data"])
    assert check_signin(key, secret, socket_id, response["auth"], response["user_data"]) is None
    assert check_signin(key, secret, socket_id + "1", response["auth"], response["user_data"]) is not None
    app = App(id="1", key=key, secret=secret)
    decision = authorize_signin(app, socket_id, SignIn(auth=response["auth"], user_data=response["user_data"]))
    assert isinstance(decision, Allow)
    assert decision.user is not None
    assert decision.user.id == user_data["id"]
    assert decision.user.user_data == response["user_data"]
    assert decision.user.watchlist == tuple(dict.fromkeys(user_data.get("watchlist", [])))


event_names = st.text(string.printable.replace("&", "").replace("=", ""), min_size=1, max_size=50)


@st.composite
def sdk_requests(draw: st.DrawFn) -> tuple[pusher.Pusher, Any]:
    key, secret = draw(tokens), draw(tokens)
    sdk = pusher.Pusher(app_id=draw(st.from_regex(r"\A[0-9]{1,6}\Z")), key=key, secret=secret)
    client = sdk._pusher_client
    # The SDK refuses to trigger to encrypted channels without a master key: not what this checks.
    plain = st.text(NAME_CHARS, min_size=1, max_size=30).filter(lambda name: not name.startswith("private-encrypted-"))
    kind = draw(st.sampled_from(["trigger", "batch", "channels", "channel", "users", "terminate"]))
    if kind == "trigger":
        request = client.trigger.make_request(
            draw(st.lists(plain, min_size=1, max_size=5, unique=True)), draw(event_names), draw(json_values),
            draw(st.none() | socket_ids),
        )
    elif kind == "batch":
        batch = [{"channel": draw(plain), "name": draw(event_names), "data": draw(json_values)}]
        request = client.trigger_batch.make_request(batch)
    elif kind == "channels":
        request = client.channels_info.make_request(
            draw(st.none() | plain), draw(st.lists(st.sampled_from(["user_count", "subscription_count"])))
        )
    elif kind == "channel":
        request = client.channel_info.make_request(
            draw(plain), draw(st.lists(st.sampled_from(["user_count", "subscription_count", "cache"])))
        )
    elif kind == "users":
        request = client.users_info.make_request("presence-" + draw(plain))
    else:
        request = client.terminate_user_connections.make_request(draw(plain))
    return sdk, request


@given(sdk_requests())
def test_request_signing_matches_the_python_sdk(sdk_and_request: tuple[pusher.Pusher, Any]) -> None:
    """Every REST request the PyPI SDK signs is accepted by check_signed_query and re-signed identically."""
    sdk, request = sdk_and_request
    secret = sdk._pusher_client.secret
    params = dict(request.query_params)
    assert params["body_md5"] == hashlib.md5(request.body).hexdigest()
    unsigned = {k: v for k, v in params.items() if k != "auth_signature"}
    assert sign_query(secret, request.method, request.path, unsigned) == params["auth_signature"]
    assert check_signed_query(secret, request.method, [request.path], params) is None
    other = {**params, "auth_timestamp": params["auth_timestamp"] + "0"}
    assert check_signed_query(secret, request.method, [request.path], other) is not None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1000", None),
        ("401", None),  # 599 s behind
        ("1599", None),  # 599 s ahead
        ("400", "Timestamp expired"),
        ("1600", "Timestamp expired"),
        (None, "Timestamp required"),
        ("soon", "Timestamp required"),
    ],
)
def test_timestamp_window(value: str | None, problem: str | None) -> None:
    """A signed timestamp is accepted less than 600 s either way from now, and must be an integer."""
    found = timestamp_problem(value, 1000.0)
    assert found is None if problem is None else (found is not None and found.startswith(problem))


def test_rest_and_pipe_share_the_timestamp_rule() -> None:
    """A REST request and a Pipe URL signed 600 s ago are refused with the same message."""
    app = App(id="1", key="app-key", secret="app-secret")
    query = pipe_query(app, now=1000.0)
    pipe = check_pipe_handshake("1", query, AppRegistry([app]), now=1600.0)
    assert isinstance(pipe, PipeRefused) and pipe.status == 401
    params = {"auth_key": "app-key", "auth_timestamp": "1000", "auth_version": "1.0"}
    params["auth_signature"] = sign_query("app-secret", "GET", "/apps/1/channels", params)
    rest = authenticate(app, "GET", "/apps/1/channels", params, b"", now=1600.0)
    assert rest == (401, pipe.message) == (401, timestamp_problem("1000", 1600.0))
