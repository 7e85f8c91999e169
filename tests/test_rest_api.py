"""The REST API as a pure function: authentication, endpoints, limits (pusher-channels.md 9)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipe_proto import App, Close, Relay, Send
from pipe_proto.rest import handle
from pipe_proto.signatures import channel_auth, sign_query, signin_auth

KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"
T = 1353088179
APP = App(id="3", key=KEY, secret=SECRET)


def signed(method: str, path: str, body: bytes = b"", query: dict[str, str] | None = None, *, md5: bool | None = None, now: int = T) -> dict[str, str]:
    """A query signed like the SDKs sign it (``body_md5`` when there is a body, or when asked)."""
    params = {"auth_key": KEY, "auth_timestamp": str(now), "auth_version": "1.0", **(query or {})}
    if body or md5:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    params["auth_signature"] = sign_query(SECRET, method, path, params)
    return params


def call(relay: Relay, method: str, path: str, body: Any = None, query: dict[str, str] | None = None, **kw: Any) -> Any:
    raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return handle(relay, method, path, signed(method, path, raw, query, **kw), raw, float(T))


def subscribe(relay: Relay, channel: str, *, user: str | None = None) -> str:
    """A socket subscribed to ``channel`` (signed as needed); returns its id."""
    sid, _ = relay.open_socket(KEY, {"protocol": "7"}, T, nonce=len(relay.stats()["apps"]) + T)
    data: dict[str, Any] = {"channel": channel}
    if channel.startswith("presence-"):
        data["channel_data"] = json.dumps({"user_id": user})
        data["auth"] = channel_auth(KEY, SECRET, sid, channel, data["channel_data"])
    elif channel.startswith("private-"):
        data["auth"] = channel_auth(KEY, SECRET, sid, channel)
    relay.socket_message(sid, json.dumps({"event": "pusher:subscribe", "data": data}), T)
    return sid


@pytest.fixture
def relay() -> Relay:
    return Relay([APP])


def test_vector_r1_triggers_the_documented_event(relay: Relay) -> None:
    """The documented request R1 is accepted and delivers the documented frame."""
    sid = subscribe(relay, "project-3")
    body = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    query = {
        "auth_key": KEY,
        "auth_timestamp": str(T),
        "auth_version": "1.0",
        "body_md5": "ec365a775a4cd0599faeb73354201b6f",
        "auth_signature": "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
    }
    answer = handle(relay, "POST", "/apps/3/events", query, body, float(T))
    assert (answer.status, answer.body) == (200, {})
    assert answer.outputs == [Send((sid,), '{"event":"foo","channel":"project-3","data":"{\\"some\\":\\"data\\"}"}')]
    tampered = handle(relay, "POST", "/apps/3/events", query, body.replace(b"foo", b"fob"), float(T))
    assert tampered.status == 401 and tampered.outputs == []


def test_vector_r3_python_style_get_with_body_md5(relay: Relay) -> None:
    """R3: the Python SDK's GET with the MD5 of an empty body, signed, is accepted."""
    query = {
        "auth_key": KEY,
        "auth_timestamp": str(T),
        "auth_version": "1.0",
        "body_md5": "d41d8cd98f00b204e9800998ecf8427e",
        "info": "user_count,subscription_count",
        "auth_signature": "1e5ce8ad11c48842231003911c29c872174a125059c4cdd215f10f2134d0c1b1",
    }
    answer = handle(relay, "GET", "/apps/3/channels/presence-foobar", query, b"", float(T))
    assert answer.status == 200
    assert answer.body == {"occupied": False, "user_count": 0, "subscription_count": 0}


def test_vector_r6_python_terminate_path_without_apps_prefix(relay: Relay) -> None:
    """R6: the Python SDK's /users/{id}/terminate_connections is routed by auth_key."""
    query = {
        "auth_key": KEY,
        "auth_timestamp": str(T),
        "auth_version": "1.0",
        "body_md5": "99914b932bd37a50b983c5e7c90ae93b",
        "auth_signature": "103f2a90361bc4bcd8407c86f261563b23281fea1602c29fc81ac0ec1b7ec5a7",
    }
    sid, _ = relay.open_socket(KEY, {"protocol": "7"}, T, nonce=1)
    user_data = '{"id":"42"}'
    relay.socket_message(sid, json.dumps({"event": "pusher:signin", "data": {"auth": signin_auth(KEY, SECRET, sid, user_data), "user_data": user_data}}), T)
    answer = handle(relay, "POST", "/users/42/terminate_connections", query, b"{}", float(T))
    assert answer.status == 200 and answer.body == {}
    assert Close(sid, 4009, "You got disconnected by the app.") in answer.outputs


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda q: q.pop("auth_key"), "Missing parameter: auth_key"),
        (lambda q: q.update(auth_key="other"), "Unknown auth_key"),
        (lambda q: q.update(auth_version="2.0"), "Version not supported"),
        (lambda q: q.pop("auth_timestamp"), "Timestamp required"),
        (lambda q: q.update(auth_timestamp=str(T - 600)), "Timestamp expired"),
        (lambda q: q.update(body_md5="0" * 32), "body_md5"),
        (lambda q: q.update(auth_signature="f" * 64), "Invalid signature"),
    ],
)
def test_every_authentication_failure_is_401(relay: Relay, mutate: Any, reason: str) -> None:
    """Each way a signature can be wrong gives 401 naming the problem."""
    body = b'{"name":"e","channels":["c"],"data":"d"}'
    query = signed("POST", "/apps/3/events", body)
    mutate(query)
    answer = handle(relay, "POST", "/apps/3/events", query, body, float(T))
    assert answer.status == 401 and reason in answer.body["error"]


def test_timestamp_window_edges(relay: Relay) -> None:
    """599 s off is accepted, 600 s refused (both directions)."""
    for offset, status in ((599, 200), (-599, 200), (600, 401), (-600, 401)):
        answer = call(relay, "GET", "/apps/3/channels", now=T + offset)
        assert answer.status == status, offset


def test_signature_is_order_independent(relay: Relay) -> None:
    """auth_signature may come anywhere in the query."""
    query = signed("GET", "/apps/3/channels", query={"filter_by_prefix": "x"})
    reordered = {"auth_signature": query.pop("auth_signature"), **query}
    assert handle(relay, "GET", "/apps/3/channels", reordered, b"", float(T)).status == 200


def test_unknown_app_and_disabled_app() -> None:
    """An unknown app id is 404; a disabled app 403 after a valid signature."""
    relay = Relay([App(id="3", key=KEY, secret=SECRET, enabled=False)])
    assert call(relay, "GET", "/apps/9/channels").status == 404
    assert call(relay, "GET", "/apps/3/channels").status == 403


def test_trigger_limits(relay: Relay) -> None:
    """100 channels ok and 101 refused; 10240 bytes ok and 10241 is 413; names checked."""
    ok = call(relay, "POST", "/apps/3/events", {"name": "e", "channels": [f"c{i}" for i in range(100)], "data": "x"})
    assert ok.status == 200
    too_many = call(relay, "POST", "/apps/3/events", {"name": "e", "channels": [f"c{i}" for i in range(101)], "data": "x"})
    assert too_many.status == 400
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["c"], "data": "x" * 10240}).status == 200
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["c"], "data": "x" * 10241}).status == 413
    assert call(relay, "POST", "/apps/3/events", {"name": "e" * 201, "channels": ["c"], "data": ""}).status == 400
    assert call(relay, "POST", "/apps/3/events", {"name": "pusher:x", "channels": ["c"], "data": ""}).status == 400
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["bad name"], "data": ""}).status == 400
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["c"], "data": "", "socket_id": "abc"}).status == 400
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channel": "c", "data": ""}).status == 200
    assert call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["c"]}).status == 400
    encrypted = {"name": "e", "channels": ["private-encrypted-a", "b"], "data": ""}
    assert call(relay, "POST", "/apps/3/events", encrypted).status == 400
    assert call(relay, "POST", "/apps/3/events", b"not json").status == 400


def test_trigger_excludes_socket_and_reports_info(relay: Relay) -> None:
    """socket_id is excluded; info returns the applicable attributes per channel."""
    a = subscribe(relay, "presence-r", user="1")
    b = subscribe(relay, "presence-r", user="2")
    body = {"name": "e", "channels": ["presence-r", "plain"], "data": "d", "socket_id": a, "info": "user_count,subscription_count"}
    answer = call(relay, "POST", "/apps/3/events", body)
    assert answer.body == {
        "channels": {
            "presence-r": {"user_count": 2, "subscription_count": 2},
            "plain": {"subscription_count": 0},
        }
    }
    targets = [o.targets for o in answer.outputs if isinstance(o, Send)]
    assert targets == [(b,)]


def test_batch_events(relay: Relay) -> None:
    """Up to 10 events, each validated; info answers per item in order."""
    sid = subscribe(relay, "c")
    events = [{"channel": "c", "name": f"e{i}", "data": str(i)} for i in range(10)]
    answer = call(relay, "POST", "/apps/3/batch_events", {"batch": events})
    assert answer.status == 200 and answer.body == {}
    assert [json.loads(o.text)["event"] for o in answer.outputs if isinstance(o, Send) and sid in o.targets] == [f"e{i}" for i in range(10)]
    assert call(relay, "POST", "/apps/3/batch_events", {"batch": [*events, events[0]]}).status == 400
    info = call(relay, "POST", "/apps/3/batch_events", {"batch": [{"channel": "c", "name": "e", "data": "", "info": "subscription_count"}, {"channel": "d", "name": "e", "data": ""}]})
    assert info.body == {"batch": [{"subscription_count": 1}, {}]}
    big = call(relay, "POST", "/apps/3/batch_events", {"batch": [{"channel": "c", "name": "e", "data": "x" * 10241}]})
    assert big.status == 413 and "batch[0]" in big.body["error"]


def test_channel_queries(relay: Relay) -> None:
    """channels lists occupied ones with filters; channel and users describe one channel."""
    subscribe(relay, "presence-a", user="1")
    subscribe(relay, "presence-a", user="1")
    subscribe(relay, "other")
    assert call(relay, "GET", "/apps/3/channels").body == {"channels": {"presence-a": {}, "other": {}}}
    filtered = call(relay, "GET", "/apps/3/channels", query={"filter_by_prefix": "presence-", "info": "user_count"})
    assert filtered.body == {"channels": {"presence-a": {"user_count": 1}}}
    assert call(relay, "GET", "/apps/3/channels", query={"info": "user_count"}).status == 400
    one = call(relay, "GET", "/apps/3/channels/presence-a", query={"info": "user_count,subscription_count"})
    assert one.body == {"occupied": True, "user_count": 1, "subscription_count": 2}
    assert call(relay, "GET", "/apps/3/channels/other", query={"info": "user_count"}).status == 400
    assert call(relay, "GET", "/apps/3/channels/presence-a/users").body == {"users": [{"id": "1"}]}
    assert call(relay, "GET", "/apps/3/channels/other/users").status == 400
    assert call(relay, "GET", "/apps/3/channels/presence-empty/users").body == {"users": []}


def test_cache_info(relay: Relay) -> None:
    """info=cache shows the cached event's data and remaining ttl, or null."""
    call(relay, "POST", "/apps/3/events", {"name": "e", "channels": ["cache-x"], "data": "v"})
    answer = call(relay, "GET", "/apps/3/channels/cache-x", query={"info": "cache"})
    assert answer.body == {"occupied": False, "cache": {"data": "v", "ttl": 1800}}
    empty = call(relay, "GET", "/apps/3/channels/cache-y", query={"info": "cache"})
    assert empty.body == {"occupied": False, "cache": None}


def test_routes_methods_and_unknown_paths(relay: Relay) -> None:
    """Wrong methods are 405 and unknown resources 404, after authentication."""
    assert call(relay, "GET", "/apps/3/events").status == 405
    assert call(relay, "GET", "/apps/3/nothing").status == 404
    assert handle(relay, "GET", "/elsewhere", {}, b"", float(T)).status == 404


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "X"]),
    path=st.one_of(
        st.sampled_from(["/apps/3/events", "/apps/3/batch_events", "/apps/3/channels", "/apps/3/channels/x", "/users/1/terminate_connections"]),
        st.text(max_size=40),
    ),
    query=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=6),
    body=st.binary(max_size=200),
    sign=st.booleans(),
)
def test_any_request_gets_a_well_formed_response(method: str, path: str, query: dict[str, str], body: bytes, sign: bool) -> None:
    """Whatever comes in, the answer is a status from the documented set with a JSON body."""
    relay = Relay([APP])
    if sign and path.startswith(("/apps/", "/users/")):
        query = {**query, **signed(method, path, body)}
    answer = handle(relay, method, path, query, body, float(T))
    assert answer.status in {200, 400, 401, 403, 404, 405, 413}
    json.dumps(answer.body)
    if answer.status != 200:
        assert isinstance(answer.body["error"], str) and answer.body["error"]


def test_status_endpoint_reports_the_app_and_its_pipe_groups(relay: Relay) -> None:
    """GET /apps/{id}/status (signed) answers the app's counts and its groups' delivery numbers."""
    subscribe(relay, "news")
    answer = call(relay, "GET", "/apps/3/status")
    assert answer.status == 200
    assert answer.body["sockets"] == 1 and answer.body["channels"] == 1
    assert answer.body["pipe"] == {"pipes": 0, "unrouted": 0, "dropped": 0, "groups": {}}
    assert handle(relay, "GET", "/apps/3/status", {}, b"", float(T)).status == 401
