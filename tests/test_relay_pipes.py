"""The relay's Pipe behaviour, driven without I/O (pipe-protocol.md 1-5)."""

from __future__ import annotations

import json

import pytest

from pipe_proto import App, Close, Limits, PipeSettings, Send
from pipe_proto.pipe import PipeAccepted, PipeRefused
from pipe_proto.signatures import channel_auth
from tests.pipe_helpers import APP, T0, Harness, frames_for, notices, pipe_query, texts_for


def test_connection_established_0_2_has_only_socket_id() -> None:
    """A 0.2 pipe's first frame is connection_established with just its socket id."""
    h = Harness()
    pipe, out = h.open_pipe(version="0.2")
    assert frames_for(out, pipe) == [
        {"id": None, "error": None, "result": {"event": "connection_established", "data": {"socket_id": pipe}}}
    ]


def test_connection_established_1_0_describes_the_session() -> None:
    """A 1.0 pipe learns its session, heartbeat and version, and is not resumed."""
    h = Harness()
    pipe, out = h.open_pipe()
    (result,) = notices(out, pipe)
    data = result["data"]
    assert data["socket_id"] == pipe
    assert data["resumed"] is False and data["gap"] == 0
    assert data["heartbeat"] == 25.0 and data["protocol_version"] == "1.0"
    assert data["session"]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"protocol_version": "0.3"}, 400),
        ({"auth_key": "nope"}, 401),
        ({"auth_signature": "0" * 64}, 401),
        ({"auth_version": "2.0"}, 401),
    ],
)
def test_handshake_refusals(change: dict[str, str], status: int) -> None:
    """Malformed, unsigned or mis-signed pipe URLs are refused with the spec's status."""
    h = Harness()
    query = {**pipe_query(), **change}
    decision = h.relay.pipe_handshake("1", query, T0)
    assert isinstance(decision, PipeRefused) and decision.status == status


def test_handshake_unknown_app_stale_timestamp_disabled_and_full() -> None:
    """Unknown app 404, a timestamp 600 s off 401 (599 s accepted), disabled 403, too many pipes 503."""
    off = App(id="2", key="k2", secret="s2", enabled=False)
    small = App(id="3", key="k3", secret="s3", pipe=PipeSettings(max_pipes=1))
    h = Harness([APP, off, small])
    assert h.relay.pipe_handshake("9", pipe_query(), T0) == PipeRefused(status=404, message="unknown app '9'")
    stale = h.relay.pipe_handshake("1", pipe_query(now=T0 - 600), T0)
    assert isinstance(stale, PipeRefused) and stale.status == 401 and "Timestamp expired" in stale.message
    assert isinstance(h.relay.pipe_handshake("1", pipe_query(now=T0 - 599), T0), PipeAccepted)
    disabled = h.relay.pipe_handshake("2", pipe_query(off), T0)
    assert isinstance(disabled, PipeRefused) and disabled.status == 403
    h.open_pipe(small)
    full = h.relay.pipe_handshake("3", pipe_query(small), T0)
    assert isinstance(full, PipeRefused) and full.status == 503


def test_socket_existence_and_messages_reach_a_0_2_pipe_in_2011_shape() -> None:
    """A 0.2 pipe sees socket_opened, socket_message and socket_closed with only the 2011 fields."""
    h = Harness()
    pipe, _ = h.open_pipe(version="0.2")
    reply, _ = h.call(pipe, "subscribe", {"events": ["socket_message", "socket_existence"], "data": ""})
    assert reply == {"id": reply["id"], "error": None, "result": {}}
    sock, out = h.open_socket()
    assert notices(out, pipe) == [{"event": "socket_opened", "data": {"socket_id": sock}}]
    out = h.socket_send(sock, "eventFromBrowser", {"some": "data"})
    assert notices(out, pipe) == [
        {"event": "socket_message", "data": {"socket_id": sock, "event": "eventFromBrowser", "data": {"some": "data"}}}
    ]
    out = h.relay.socket_closed(sock, h.now, 1000, "bye")
    assert notices(out, pipe) == [{"event": "socket_closed", "data": {"socket_id": sock}}]


def test_1_0_socket_opened_carries_details_and_only_exposed_headers() -> None:
    """1.0 socket_opened adds remote address, origin, user agent, query and the exposed headers."""
    from pipe_proto import SocketDetails

    app = App(id="1", key="app-key", secret="app-secret", pipe=PipeSettings(expose_headers=["Cookie"]))
    h = Harness([app])
    pipe, _ = h.open_pipe(app)
    h.call(pipe, "subscribe", {"events": ["socket_existence"]})
    details = SocketDetails(
        remote_addr="10.0.0.1",
        origin="https://example.com",
        user_agent="UA",
        query={"protocol": "7", "x": "1"},
        headers={"cookie": "sid=1", "authorization": "secret"},
    )
    sock, out = h.relay.open_socket("app-key", {"protocol": "7"}, h.now, nonce=5, details=details)
    (result,) = notices(out, pipe)
    assert result["seq"] == 1 and result["time_ms"] == int(T0 * 1000)
    assert result["data"] == {
        "socket_id": sock,
        "remote_addr": "10.0.0.1",
        "origin": "https://example.com",
        "user_agent": "UA",
        "query": {"protocol": "7", "x": "1"},
        "headers": {"cookie": "sid=1"},
    }
    out = h.relay.socket_closed(sock, h.now, 4000, "gone")
    (closed,) = notices(out, pipe)
    assert closed["data"] == {"socket_id": sock, "code": 4000, "reason": "gone"} and closed["seq"] == 2


def test_send_to_socket_reaches_only_that_socket() -> None:
    """send_to_socket delivers the event (data JSON-encoded once) to the named socket only."""
    h = Harness()
    pipe, _ = h.open_pipe()
    a, _ = h.open_socket()
    b, _ = h.open_socket()
    reply, out = h.call(pipe, "send_to_socket", {"socket_id": a, "event": "acknowledge", "data": {"message": "Rodger"}})
    assert reply["result"] == {"delivered": 1}
    assert texts_for(out, a) == ['{"event":"acknowledge","data":"{\\"message\\":\\"Rodger\\"}"}']
    assert texts_for(out, b) == []
    reply, _ = h.call(pipe, "send_to_socket", {"socket_ids": [a, b, "123.456"], "event": "e", "data": "raw"})
    assert reply["result"] == {"delivered": 2}


def test_send_to_socket_never_reaches_another_apps_socket() -> None:
    """A socket of another app on the same relay counts as not found, named alone or in a list."""
    other = App(id="2", key="other-key", secret="other-secret")
    h = Harness([APP, other])
    pipe, _ = h.open_pipe()
    mine, _ = h.open_socket()
    theirs, _ = h.open_socket("other-key")
    for params in ({"socket_id": theirs}, {"socket_ids": [theirs]}, {"socket_ids": [theirs, mine, mine]}):
        reply, out = h.call(pipe, "send_to_socket", {**params, "event": "e", "data": "d"})
        assert reply["result"] == {"delivered": 1 if mine in params.get("socket_ids", ()) else 0}
        assert texts_for(out, theirs) == []
        assert texts_for(out, mine) == (['{"event":"e","data":"d"}'] if mine in params.get("socket_ids", ()) else [])
    legacy, _ = h.open_pipe(version="0.2")
    reply, out = h.call(legacy, "send_to_socket", {"socket_id": theirs, "event": "e", "data": "d"})
    assert reply["result"] == {} and texts_for(out, theirs) == []


def test_send_to_channel_with_exclusion() -> None:
    """send_to_channel reaches every subscriber but the excluded socket."""
    h = Harness()
    pipe, _ = h.open_pipe(version="0.2")
    a, _ = h.open_socket()
    b, _ = h.open_socket()
    for sock in (a, b):
        h.socket_send(sock, "pusher:subscribe", {"channel": "news"})
    reply, out = h.call(pipe, "send_to_channel", {"channel": "news", "event": "e", "data": "d", "socket_id": a})
    assert reply["result"] == {}
    assert texts_for(out, a) == []
    assert texts_for(out, b) == ['{"event":"e","channel":"news","data":"d"}']


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("send_to_socket", {"socket_id": "1.1", "event": "pusher:x", "data": ""}, 4210),
        ("send_to_socket", {"socket_id": "1.1", "event": "", "data": ""}, 4210),
        ("send_to_channel", {"channel": "bad name", "event": "e", "data": ""}, 4211),
        ("send_to_socket", {"socket_id": "abc", "event": "e", "data": ""}, 4212),
        ("send_to_channel", {"channel": "c", "event": "e", "data": "x" * 10241}, 4213),
        ("send_to_socket", {"socket_ids": [f"{i}.1" for i in range(101)], "event": "e", "data": ""}, 4214),
        ("send_to_socket", {"socket_id": 5, "event": "e"}, 4220),
        ("disconnect_socket", {"socket_id": "1.1", "reason": "bye \ud800"}, 4220),  # no close frame can carry it
        ("nope", {}, 4221),
        ("auth_response", {"request_id": "404", "allow": True}, 4222),
        ("subscribe", {"events": ["everything"]}, 4240),
    ],
)
def test_method_errors_have_the_spec_codes(method: str, params: dict[str, object], code: int) -> None:
    """Each invalid request gets an error reply with the spec's code, and the pipe stays open."""
    h = Harness()
    pipe, _ = h.open_pipe()
    reply, out = h.call(pipe, method, params)
    assert reply["result"] is None and reply["error"]["code"] == code
    assert not any(isinstance(o, Close) for o in out)
    assert h.call(pipe, "ping")[0]["result"] == {}


def test_unreadable_frames_get_error_notifications() -> None:
    """Non-JSON and method-less frames get a 4220 error (notification or reply) and the pipe stays up."""
    h = Harness()
    pipe, _ = h.open_pipe()
    out = h.relay.pipe_message(pipe, "{not json", h.now)
    assert frames_for(out, pipe)[0]["error"]["code"] == 4220
    assert frames_for(out, pipe)[0]["id"] is None
    out = h.relay.pipe_message(pipe, json.dumps({"id": 7, "params": {}}), h.now)
    assert frames_for(out, pipe) == [{"id": 7, "error": {"code": 4220, "message": "request has no method"}, "result": None}]
    out = h.relay.pipe_message(pipe, json.dumps({"id": None, "method": "ping"}), h.now)
    assert frames_for(out, pipe) == []


def test_0_2_pipe_cannot_subscribe_to_1_0_types() -> None:
    """Protocol 0.2 knows only socket_existence and socket_message."""
    h = Harness()
    pipe, _ = h.open_pipe(version="0.2")
    reply, _ = h.call(pipe, "subscribe", {"events": ["presence"]})
    assert reply["error"]["code"] == 4240


def test_channel_existence_and_presence_notifications() -> None:
    """1.0 pipes see channels occupied/vacated and members added/removed (departures 3 s later)."""
    h = Harness()
    pipe, _ = h.open_pipe()
    h.call(pipe, "subscribe", {"events": ["channel_existence", "presence"]})
    sock, _ = h.open_socket()
    data = json.dumps({"user_id": "u1", "user_info": {"n": 1}})
    auth = channel_auth("app-key", "app-secret", sock, "presence-room", data)
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "presence-room", "auth": auth, "channel_data": data})
    assert [(n["event"], n["data"]) for n in notices(out, pipe)] == [
        ("channel_occupied", {"channel": "presence-room"}),
        ("member_added", {"channel": "presence-room", "user_id": "u1", "user_info": {"n": 1}}),
    ]
    assert notices(h.relay.socket_closed(sock, h.now), pipe) == []
    out = h.tick(3.0)
    assert [(n["event"], n["data"]) for n in notices(out, pipe)] == [
        ("member_removed", {"channel": "presence-room", "user_id": "u1"}),
        ("channel_vacated", {"channel": "presence-room"}),
    ]


def test_client_events_reach_socket_message_pipes_with_channel_and_user() -> None:
    """A valid client event on presence is relayed and also reaches the pipe with channel and user_id."""
    h = Harness()
    pipe, _ = h.open_pipe()
    h.call(pipe, "subscribe", {"events": ["socket_message"]})
    sock, _ = h.open_socket()
    data = json.dumps({"user_id": "u1"})
    auth = channel_auth("app-key", "app-secret", sock, "presence-r", data)
    h.socket_send(sock, "pusher:subscribe", {"channel": "presence-r", "auth": auth, "channel_data": data})
    out = h.socket_send(sock, "client-typing", {"x": 1}, channel="presence-r")
    (n,) = notices(out, pipe)
    assert n["data"] == {"socket_id": sock, "event": "client-typing", "data": {"x": 1}, "channel": "presence-r", "user_id": "u1"}


def test_back_channel_rate_limit_and_size() -> None:
    """Over 50 back-channel messages a second get 4301; oversized ones an error; neither reaches the pipe."""
    h = Harness()
    pipe, _ = h.open_pipe()
    h.call(pipe, "subscribe", {"events": ["socket_message"]})
    sock, _ = h.open_socket()
    delivered = 0
    errors = []
    for _ in range(51):
        out = h.socket_send(sock, "e", {})
        delivered += len(notices(out, pipe))
        errors += [f for f in frames_for(out, sock) if f["event"] == "pusher:error"]
    assert delivered == 50 and errors[0]["data"]["code"] == 4301
    h.now += 1
    out = h.socket_send(sock, "e", "x" * 10241)
    assert notices(out, pipe) == [] and frames_for(out, sock)[0]["event"] == "pusher:error"


# ------------------------------------------------------------- auth by pipe


def _auth_pipe(h: Harness) -> str:
    pipe, _ = h.open_pipe()
    h.call(pipe, "subscribe", {"events": ["auth"]})
    return pipe


def test_private_subscription_allowed_by_the_pipe() -> None:
    """An unsigned private subscribe becomes an auth_request; allow subscribes the socket."""
    h = Harness()
    pipe = _auth_pipe(h)
    sock, _ = h.open_socket()
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "private-x", "auth": ""})
    (request,) = notices(out, pipe)
    assert request["event"] == "auth_request"
    assert request["data"]["socket_id"] == sock and request["data"]["kind"] == "channel"
    assert request["data"]["channel"] == "private-x" and "remote_addr" in request["data"]["socket"]
    assert frames_for(out, sock) == []
    reply, out = h.call(pipe, "auth_response", {"request_id": request["data"]["request_id"], "allow": True})
    assert reply["result"] == {}
    assert frames_for(out, sock) == [{"event": "pusher_internal:subscription_succeeded", "channel": "private-x", "data": "{}"}]
    again, _ = h.call(pipe, "auth_response", {"request_id": request["data"]["request_id"], "allow": True})
    assert again["error"]["code"] == 4222


def test_presence_allowed_by_the_pipe_uses_its_channel_data() -> None:
    """The pipe's channel_data names the presence member."""
    h = Harness()
    pipe = _auth_pipe(h)
    sock, _ = h.open_socket()
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "presence-x"})
    request_id = notices(out, pipe)[0]["data"]["request_id"]
    _, out = h.call(pipe, "auth_response", {"request_id": request_id, "allow": True, "channel_data": {"user_id": "42", "user_info": {"name": "Z"}}})
    (frame,) = frames_for(out, sock)
    assert json.loads(frame["data"]) == {"presence": {"ids": ["42"], "hash": {"42": {"name": "Z"}}, "count": 1}}


def test_denied_timed_out_and_unheld_authorizations() -> None:
    """Deny gives AuthError 403, no answer in time 408, no pipe holding auth 503."""
    h = Harness()
    sock, _ = h.open_socket()
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "private-a"})
    assert frames_for(out, sock)[0]["data"]["status"] == 503
    pipe = _auth_pipe(h)
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "private-b"})
    request_id = notices(out, pipe)[0]["data"]["request_id"]
    _, out = h.call(pipe, "auth_response", {"request_id": request_id, "allow": False, "reason": "no way"})
    assert frames_for(out, sock) == [
        {"event": "pusher:subscription_error", "channel": "private-b", "data": {"type": "AuthError", "error": "no way", "status": 403}}
    ]
    h.socket_send(sock, "pusher:subscribe", {"channel": "private-c"})
    assert frames_for(h.tick(4.9), sock) == []
    out = h.tick(0.2)
    assert frames_for(out, sock)[0]["data"]["status"] == 408


def test_signin_through_the_pipe() -> None:
    """An unsigned sign-in is decided by the pipe; allow with user_data signs the socket in."""
    h = Harness()
    pipe = _auth_pipe(h)
    sock, _ = h.open_socket()
    out = h.socket_send(sock, "pusher:signin", {"auth": "", "user_data": ""})
    request = notices(out, pipe)[0]["data"]
    assert request["kind"] == "user" and "channel" not in request
    _, out = h.call(pipe, "auth_response", {"request_id": request["request_id"], "allow": True, "user_data": {"id": "7"}})
    assert frames_for(out, sock) == [{"event": "pusher:signin_success", "data": {"user_data": '{"id":"7"}'}}]
    out = h.socket_send(sock, "pusher:signin", {"auth": ""})
    request = notices(out, pipe)[0]["data"]
    _, out = h.call(pipe, "auth_response", {"request_id": request["request_id"], "allow": False})
    assert frames_for(out, sock)[0]["data"]["code"] == 4009


def test_auth_is_held_by_one_group_only() -> None:
    """A second group subscribing to auth gets 4230."""
    h = Harness()
    _auth_pipe(h)
    other, _ = h.open_pipe(group="other")
    reply, _ = h.call(other, "subscribe", {"events": ["auth"]})
    assert reply["error"]["code"] == 4230


def test_signed_subscriptions_do_not_ask_the_pipe() -> None:
    """A subscribe with a valid signature is decided by the relay alone."""
    h = Harness()
    pipe = _auth_pipe(h)
    sock, _ = h.open_socket()
    auth = channel_auth("app-key", "app-secret", sock, "private-x")
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "private-x", "auth": auth})
    assert notices(out, pipe) == []
    assert frames_for(out, sock)[0]["event"] == "pusher_internal:subscription_succeeded"


# ---------------------------------------------------------------- methods


def test_disconnect_socket_and_terminate_user() -> None:
    """disconnect_socket closes with the given code; terminate_user closes every signed-in socket."""
    h = Harness()
    pipe, _ = h.open_pipe()
    sock, _ = h.open_socket()
    reply, out = h.call(pipe, "disconnect_socket", {"socket_id": sock, "code": 4100, "reason": "later"})
    assert reply["result"] == {"disconnected": True}
    assert Close(sock, 4100, "later") in out
    from pipe_proto.signatures import signin_auth

    socks = [h.open_socket()[0] for _ in range(2)]
    for s in socks:
        h.socket_send(s, "pusher:signin", {"auth": signin_auth("app-key", "app-secret", s, '{"id":"u"}'), "user_data": '{"id":"u"}'})
    reply, out = h.call(pipe, "terminate_user", {"user_id": "u"})
    assert reply["result"] == {"terminated": 2}
    assert {o.target for o in out if isinstance(o, Close)} == set(socks)


def test_batch_applies_calls_in_order_and_reports_each() -> None:
    """A failing call in a batch does not stop the others; one result or error per call."""
    h = Harness()
    pipe, _ = h.open_pipe()
    sock, _ = h.open_socket()
    reply, out = h.call(
        pipe,
        "batch",
        {
            "calls": [
                {"method": "send_to_socket", "params": {"socket_id": sock, "event": "a", "data": "1"}},
                {"method": "send_to_socket", "params": {"socket_id": "x", "event": "b", "data": "2"}},
                {"method": "nope"},
                {"method": "send_to_socket", "params": {"socket_id": sock, "event": "c", "data": "3"}},
            ]
        },
    )
    results = reply["result"]
    assert results[0] == {"result": {"delivered": 1}, "error": None}
    assert results[1]["error"]["code"] == 4212
    assert results[2]["error"]["code"] == 4221
    assert results[3] == {"result": {"delivered": 1}, "error": None}
    assert [json.loads(t)["event"] for t in texts_for(out, sock)] == ["a", "c"]
    assert frames_for(out, pipe) == [reply]  # its failures are in the reply, not also notified


def test_batch_without_id_reports_only_its_failures() -> None:
    """A batch nobody waits for gets no reply, but each failing call an error notification."""
    h = Harness()
    pipe, _ = h.open_pipe()
    sock, _ = h.open_socket()
    calls = [
        {"method": "send_to_socket", "params": {"socket_id": sock, "event": "a", "data": "1"}},
        {"method": "send_to_socket", "params": {"socket_id": sock, "event": "pusher:no", "data": "2"}},
        {"method": "nope"},
    ]
    _, out = h.call(pipe, "batch", {"calls": calls}, reply=False)
    assert [json.loads(t)["event"] for t in texts_for(out, sock)] == ["a"]
    to_pipe = frames_for(out, pipe)
    assert [f["error"]["code"] for f in to_pipe] == [4210, 4221]
    assert all(f["id"] is None and f["result"] is None for f in to_pipe)
    _, out = h.call(pipe, "batch", {"calls": calls[:1]}, reply=False)
    assert frames_for(out, pipe) == []


def test_pipe_liveness_pings_then_closes_4201() -> None:
    """A silent pipe is pinged after one heartbeat and closed with 4201 after two."""
    from pipe_proto import Probe

    h = Harness()
    pipe, _ = h.open_pipe()
    assert h.tick(24.9) == []
    assert h.tick(0.2) == [Probe(pipe)]
    h.relay.pipe_heard(pipe, h.now)
    assert h.tick(24.9) == []
    assert h.tick(0.2) == [Probe(pipe)]
    out = h.tick(25.1)
    assert out == [Close(pipe, 4201, "pipe silent for two heartbeats")]


def test_pipe_frame_over_the_limit_closes_1009() -> None:
    """A frame over max_frame_bytes closes the pipe with 1009."""
    h = Harness()
    pipe, _ = h.open_pipe()
    out = h.relay.pipe_oversized(pipe, h.now)
    assert out == [Close(pipe, 1009, "frame larger than 1048576 bytes")]


def test_closed_pipes_leave_nothing_behind() -> None:
    """0.2 pipes end with their connection; 1.0 sessions end after their grace."""
    h = Harness()
    old, _ = h.open_pipe(version="0.2")
    new, _ = h.open_pipe()
    h.relay.pipe_closed(old, h.now)
    h.relay.pipe_closed(new, h.now)
    hub = h.relay.state_of("1").hub
    assert len(hub.sessions) == 1
    h.tick(10.1)
    assert hub.sessions == {} and hub.groups == {} and h.relay.holds_nothing()


def test_limits_apply_to_pipe_sends() -> None:
    """The app's event size limit applies to pipe sends."""
    app = App(id="1", key="app-key", secret="app-secret", limits=Limits(max_event_bytes=10))
    h = Harness([app])
    pipe, _ = h.open_pipe(app)
    reply, _ = h.call(pipe, "send_to_channel", {"channel": "c", "event": "e", "data": "x" * 11})
    assert reply["error"]["code"] == 4213
    reply, out = h.call(pipe, "send_to_channel", {"channel": "c", "event": "e", "data": "x" * 10})
    assert reply["result"] == {"delivered": 0} and not [o for o in out if isinstance(o, Send) and o.targets != (pipe,)]
