"""Fuzz target ``rest``: :func:`pipe_proto.rest.handle` (and :func:`pipe_proto.routes.route` before it).

Each input is one HTTP request (method, raw target or path and query, body,
clock) against a relay holding sockets on public, presence and cache channels
and a signed-in user. Checked (``check_request``):

* ``handle`` never raises, and answers a :class:`RestResponse` whose status is
  one of 200, 400, 401, 403, 404, 405, 413 and whose body is a JSON object
  that survives ``dumps``/``loads``;
* every refusal is ``{"error": "<non-empty message>"}`` with no outputs;
* a 200 only ever answers a request that the spec's verification algorithm
  (pusher-channels.md 9.2, written out here with ``hmac`` and ``hashlib``)
  accepts for an enabled app; and, conversely, a request the algorithm accepts
  for an enabled app is never refused as unauthenticated (401/403);
* outputs (deliveries, closes of terminated sockets) only name open sockets,
  and every frame decodes for a Pusher client.

Inputs: random methods, raw request targets (paths, query strings with any
percent-encoding) and bodies; and requests for every endpoint, signed exactly
as an SDK would (with mixed-case parameter names at times), with generated
and mutated bodies, optionally tampered with after signing. Seeds: the REST
requests of the official Python SDK captured against a real relay
(``corpus/rest``). Headers are not an input: ``handle`` takes none (the
adapter reads only ``Content-Length`` and the body).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import strategies as st

from fuzz._support import (
    corpus_params,
    fuzz_property,
    json_values,
    load_corpus,
    mutated_json,
    record,
    to_text,
)
from pipe_proto import App, Close, Limits, Relay, Send, jsontext
from pipe_proto.pusher.codec import Role, decode
from pipe_proto.rest import RestResponse, handle
from pipe_proto.routes import RouteKind, route
from pipe_proto.signatures import channel_auth, signin_auth

TARGET = "rest"
NOW = 1_700_000_000.0
STATUSES = {200, 400, 401, 403, 404, 405, 413}
APPS = [
    App(id="1", key="app-key", secret="app-secret", limits=Limits(max_batch_events=3, max_channels_per_trigger=3)),
    App(id="2", key="off-key", secret="off-secret", enabled=False),
]


def populated_relay() -> tuple[Relay, list[str]]:
    """A relay with sockets on news, presence-r (two users), cache-news, and one signed in as u1."""
    relay = Relay(APPS, id_base=100)
    app = APPS[0]
    sockets = []
    for n, user in enumerate(["u1", "u2", "u1"]):
        sid, _ = relay.open_socket(app.key, {"protocol": "7"}, NOW, nonce=n)
        sockets.append(sid)
        user_data = f'{{"id":"{user}"}}'
        auth = signin_auth(app.key, app.secret, sid, user_data)
        signin = {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
        relay.socket_message(sid, to_text(signin), NOW)
        for channel in ("news", "cache-news"):
            relay.socket_message(sid, to_text({"event": "pusher:subscribe", "data": {"channel": channel}}), NOW)
        data = f'{{"user_id":"{user}"}}'
        auth = channel_auth(app.key, app.secret, sid, "presence-r", data)
        frame = {"event": "pusher:subscribe", "data": {"channel": "presence-r", "auth": auth, "channel_data": data}}
        relay.socket_message(sid, to_text(frame), NOW)
    relay.publish("1", ["cache-news"], "old", "{}", None, NOW)
    return relay, sockets


def spec_verify(method: str, raw_path: str, query: Mapping[str, str], body: bytes, now: float) -> bool:
    """pusher-channels.md 9.2's verify_rest, for the app the request names; True when authentic."""
    q = {k.lower(): v for k, v in query.items()}
    app = next((a for a in APPS if a.key == q.get("auth_key")), None)
    if app is None or q.get("auth_version") != "1.0":
        return False
    try:
        timestamp = int(q["auth_timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) >= 600:
        return False
    md5 = hashlib.md5(body).hexdigest()
    if (body and q.get("body_md5") != md5) or (not body and q.get("body_md5", md5) != md5):
        return False
    signature = q.pop("auth_signature", "")
    for path in {raw_path, unquote(raw_path)}:
        text = "\n".join([method.upper(), path, "&".join(f"{k}={v}" for k, v in sorted(q.items()))])
        expected = hmac.new(app.secret.encode(), text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        if hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogatepass")):
            return True
    return False


def _names_app(path: str, query: Mapping[str, str]) -> App | None:
    """The app a request addresses: ``/apps/{id}/...``, or by ``auth_key`` on the SDK's terminate path."""
    if path.startswith("/apps/"):
        return next((a for a in APPS if a.id == path.split("/")[2]), None)
    return next((a for a in APPS if a.key == {k.lower(): v for k, v in query.items()}.get("auth_key")), None)


def check_request(method: str, path: str, query: dict[str, str], body: bytes, now: float = NOW) -> RestResponse:
    """Answer one request against a populated relay and check the response."""
    record(TARGET, {"method": method, "path": path, "query": query,
                    "body_b64": base64.b64encode(body).decode(), "now": now})
    relay, _ = populated_relay()
    live = set(relay._core.sockets)
    response = handle(relay, method, path, query, body, now)
    assert isinstance(response, RestResponse), response
    assert response.status in STATUSES, response
    assert isinstance(response.body, dict), response
    assert jsontext.loads(jsontext.dumps(response.body)) == response.body
    authentic = spec_verify(method, path, query, body, now)
    app = _names_app(path, query)
    if response.status != 200:
        assert set(response.body) == {"error"} and isinstance(response.body["error"], str), response
        assert response.body["error"], response
        assert response.outputs == [], response
    else:
        assert authentic, f"200 for a request the spec's verification refuses: {response}"
        assert app is not None and app.enabled
    if authentic and app is not None and app.enabled and path.startswith(("/apps/", "/users/")):
        assert response.status not in (401, 403), f"an authentic request was refused: {response.body}"
    closed: set[str] = set()
    for output in response.outputs:
        if isinstance(output, Send):
            assert all(t in live and t not in closed for t in output.targets), output
            decode(output.text, role=Role.CLIENT)
        elif isinstance(output, Close):
            assert output.target in live and output.target not in closed, output
            closed.add(output.target)
    return response


def check_target(method: str, target: str, body: bytes) -> RestResponse | None:
    """A raw request target as the adapter sees it: routed, then handled if it is REST."""
    found = route(method, target, upgrade=False)
    if found.kind is not RouteKind.REST:
        return None
    return check_request(method, found.path, found.query, body)


def check_entry(entry: dict[str, Any]) -> None:
    """Replay one corpus entry."""
    check_request(entry["method"], entry["path"], entry["query"], base64.b64decode(entry["body_b64"]), entry["now"])


# ------------------------------------------------------------------ inputs


def sign(method: str, path: str, params: dict[str, str], body: bytes, secret: str, key: str) -> dict[str, str]:
    """``params`` plus the auth parameters, signed as the SDKs do (names as given, sorted lowercased)."""
    signed = {**params, "auth_key": key, "auth_timestamp": str(int(NOW)), "auth_version": "1.0"}
    if body or "body_md5" not in params:
        signed["body_md5"] = hashlib.md5(body).hexdigest()
    lowered = sorted((k.lower(), v) for k, v in signed.items())
    text = "\n".join([method.upper(), path, "&".join(f"{k}={v}" for k, v in lowered)])
    signed["auth_signature"] = hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    return signed


CHANNELS = ["news", "presence-r", "cache-news", "private-encrypted-x", "private-a", "#server-to-user-u1",
            "bad name", "", "c" * 170]
channel_values = st.sampled_from([*CHANNELS, 5, None, ["news"]])
trigger_items = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["update", "", "pusher:x", "x" * 201, 5, None]),
        "data": json_values | st.text(max_size=30) | st.just("x" * 11000),
        "channel": channel_values,
        "channels": st.lists(st.sampled_from(CHANNELS), max_size=4) | channel_values,
        "socket_id": st.sampled_from(["101.0", "1.1", "bad", "", 7]),
        "info": st.sampled_from(["user_count", "subscription_count", "user_count,subscription_count", "x", 5]),
    },
)
bodies = st.one_of(
    trigger_items.map(to_text),
    st.lists(trigger_items, max_size=5).map(lambda items: to_text({"batch": items})),
    json_values.map(to_text),
    mutated_json(['{"name":"update","data":"{}","channels":["news","presence-r"],"info":"subscription_count"}',
                  '{"batch":[{"name":"a","data":"1","channel":"news"},{"name":"b","data":{},"channel":"cache-news"}]}']),
    st.text(max_size=20),
).map(lambda text: text.encode("utf-8", "surrogatepass"))

ENDPOINTS = [
    ("POST", "/apps/{app}/events"),
    ("POST", "/apps/{app}/batch_events"),
    ("GET", "/apps/{app}/channels"),
    ("GET", "/apps/{app}/channels/{channel}"),
    ("GET", "/apps/{app}/channels/{channel}/users"),
    ("GET", "/apps/{app}/status"),
    ("POST", "/apps/{app}/users/{user}/terminate_connections"),
    ("POST", "/users/{user}/terminate_connections"),
    ("GET", "/apps/{app}/nope"),
]


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes, str | None]:
    """A request for an endpoint, signed correctly, then maybe tampered with (the tamper is returned)."""
    method, template = draw(st.sampled_from(ENDPOINTS))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "post"]))
    channel = draw(st.sampled_from(CHANNELS))
    path = template.format(
        app=draw(st.sampled_from(["1", "1", "1", "2", "9"])),
        channel=quote(channel, safe="") if draw(st.booleans()) else channel,
        user=draw(st.sampled_from(["u1", "u2", "", "bad%20id", "%75%31"])),
    )
    params: dict[str, str] = {}
    if method.upper() == "GET":
        for name, values in (("info", ["user_count", "subscription_count", "cache", "user_count,subscription_count",
                                       "bogus", ""]),
                             ("filter_by_prefix", ["presence-", "", "news", "é"])):
            if draw(st.booleans()):
                params[name] = draw(st.sampled_from(values))
    body = draw(bodies) if method.upper() == "POST" else b""
    app = APPS[1] if "/apps/2/" in path else APPS[0]
    signed = sign(method, path, params, body, app.secret, app.key)
    if draw(st.integers(0, 4)) == 0:
        # Parameter names in other cases: the signature covers them lowercased (9.2).
        signed = {k.upper() if draw(st.booleans()) else k: v for k, v in signed.items()}
    tamper = draw(st.sampled_from([None] * 5 + ["method", "path", "param", "body", "time", "signature"]))
    if tamper == "method":
        method = "PUT" if method.upper() != "PUT" else "GET"
    elif tamper == "path":
        path += "x"
    elif tamper == "param":
        signed["extra"] = "1"
    elif tamper == "body":
        body += b" "
    elif tamper == "time":
        return method, path, signed, body, "time"
    elif tamper == "signature":
        key = next(k for k in signed if k.lower() == "auth_signature")
        signed[key] = signed[key][::-1]
    return method, path, signed, body, tamper


methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "get", "PATCH", "", "POST "]) | st.text(max_size=6)
raw_targets = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda path, query: path + ("?" + query if query else ""),
        st.sampled_from(["/apps/1/events", "/apps/1/channels", "/apps/1/channels/news", "/apps//channels",
                         "/apps/1/channels/presence-r/users", "/users/u1/terminate_connections", "/apps/1",
                         "/apps/%31/status", "/apps/1/channels/%23server-to-user-u1", "/apps/1/channels/a%2Fb"]),
        st.text(st.sampled_from("auth_key=&%+;1.0abcé_\x00"), max_size=40),
    ),
)
REST_SEEDS = [entry for _, entry in load_corpus(TARGET)]


# ------------------------------------------------------------- properties


@fuzz_property(TARGET, 600, method=methods, target=raw_targets, body=st.binary(max_size=40))
def test_raw_requests(method: str, target: str, body: bytes) -> None:
    """Any method, raw target and body: a well-formed response, never an exception."""
    check_target(method, target, body)


@fuzz_property(
    TARGET, 500, method=methods, path=st.text(max_size=40) | st.sampled_from(["/apps/1/events", "/apps/1/channels"]),
    query=st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=6), body=st.binary(max_size=40),
    now=st.floats(allow_nan=False, allow_infinity=False) | st.just(NOW),
)
def test_arbitrary_requests(method: str, path: str, query: dict[str, str], body: bytes, now: float) -> None:
    """Any decoded query mapping, path and clock, straight into handle."""
    check_request(method, path, query, body, now)


@fuzz_property(TARGET, 1500, request=signed_requests())
def test_signed_requests(request: tuple[str, str, dict[str, str], bytes, str | None]) -> None:
    """Every endpoint, correctly signed (then maybe tampered with): authentic ones pass, tampered ones do not."""
    method, path, query, body, tamper = request
    now = NOW + (900 if tamper == "time" else 0)
    response = check_request(method, path, query, body, now)
    if tamper is not None:
        assert response.status != 200, f"a request tampered with ({tamper}) succeeded"


@pytest.mark.skipif(not REST_SEEDS, reason="no captured REST requests")
@fuzz_property(TARGET, 300, seed=st.sampled_from(REST_SEEDS or [{}]), body=bodies, data=st.data())
def test_captured_requests_with_new_bodies(seed: dict[str, Any], body: bytes, data: st.DataObject) -> None:
    """The Python SDK's captured requests, re-signed around new bodies and query values."""
    app = APPS[0]
    params = {k: v for k, v in seed["query"].items() if not k.startswith("auth_") and k != "body_md5"}
    if params and data.draw(st.booleans()):
        params[data.draw(st.sampled_from(sorted(params)))] = data.draw(st.text(max_size=10))
    new_body = body if seed["method"] == "POST" else b""
    query = sign(seed["method"], seed["path"], params, new_body, app.secret, app.key)
    check_request(seed["method"], seed["path"], query, new_body)


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Captured SDK requests and past crashes still get well-formed answers."""
    check_entry(entry)
