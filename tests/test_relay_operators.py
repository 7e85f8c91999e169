"""The core's side of operating a relay: per-app counters, observers (the console) and reloads, without I/O."""

from __future__ import annotations

import json

import attrs
import pytest

from pipe_proto import App, Close, ConfigError, Limits, Send, WebhookTarget
from pipe_proto.apps import app_changes
from pipe_proto.relay.observe import Observed
from pipe_proto.relay.state import close_class
from pipe_proto.signatures import channel_auth
from tests.pipe_helpers import APP, Harness, frames_for, notices

OTHER = App(id="2", key="other-key", secret="other-secret")


def subscribe(h: Harness, socket_id: str, channel: str, app: App = APP) -> list[object]:
    data: dict[str, str] = {"channel": channel}
    if channel.startswith("private-"):
        data["auth"] = channel_auth(app.key, app.secret, socket_id, channel)
    return list(h.socket_send(socket_id, "pusher:subscribe", data))


def closes(outputs: list[object]) -> dict[str, int]:
    return {o.target: o.code for o in outputs if isinstance(o, Close)}


# ---------------------------------------------------------------- counters


def test_close_classes_follow_pusher_js_reconnection_rules() -> None:
    """Close codes are grouped as pusher-js treats them, a lost connection apart."""
    assert [close_class(c) for c in (None, 1006, 1000, 1001, 4001, 4101, 4200, 4201, 4301, 3000)] == [
        "none", "none", "1xxx", "1xxx", "40xx", "41xx", "42xx", "42xx", "43xx", "other",
    ]


def test_counts_of_connections_messages_and_bytes_per_app() -> None:
    """Opening, messages in (UTF-8 bytes), REST publishes, frames written and closes are counted per app."""
    h = Harness([APP, OTHER])
    a, _ = h.open_socket()
    b, _ = h.open_socket()
    h.open_socket("other-key")
    h.open_socket("no-such-key")
    subscribe(h, a, "news")
    subscribe(h, b, "news")
    h.socket_send(a, "hello", {"text": "é"})  # back channel: nobody wants it
    outputs = h.relay.publish("1", ["news"], "e", "données", None, h.now)
    for output in outputs:
        assert isinstance(output, Send)
        h.relay.sent(output)
    h.relay.socket_closed(a, h.now, 1000, "bye")
    h.relay.socket_closed(b, h.now)
    counts = h.relay.state_of("1").counts  # type: ignore[union-attr]
    assert counts.sockets_opened == 2
    assert counts.socket_messages_in == 3
    sent = json.dumps({"event": "hello", "data": {"text": "é"}})
    assert counts.socket_bytes_in == 2 * len(json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}})) + len(sent.encode())
    assert (counts.rest_messages_in, counts.rest_bytes_in) == (1, len("données".encode()))
    text = outputs[0].text  # type: ignore[union-attr]
    assert (counts.socket_messages_out, counts.socket_bytes_out) == (2, 2 * len(text.encode()))
    assert counts.closed == {("socket", "1xxx"): 1, ("socket", "none"): 1}
    assert h.relay.state_of("2").counts.sockets_opened == 1  # type: ignore[union-attr]
    assert h.relay.counters["sockets_refused"] == 1


def test_refusals_of_a_known_app_are_counted_by_code() -> None:
    """A disabled app's refused sockets count under 4003 for that app."""
    h = Harness([attrs.evolve(APP, enabled=False)])
    _, out = h.open_socket()
    assert closes(out)
    assert h.relay.state_of("1").counts.refused == {4003: 1}  # type: ignore[union-attr]


def test_pipe_counts_auth_requests_timeouts_denials_and_closes() -> None:
    """Pipe messages, auth requests asked, denied and timed out, and pipe closes by class are counted."""
    h = Harness()
    pipe, _ = h.open_pipe()
    h.call(pipe, "subscribe", {"events": ["auth"]})
    sock, _ = h.open_socket()
    out = h.socket_send(sock, "pusher:subscribe", {"channel": "private-a"})
    request_id = notices(out, pipe)[0]["data"]["request_id"]
    h.call(pipe, "auth_response", {"request_id": request_id, "allow": False})
    h.socket_send(sock, "pusher:subscribe", {"channel": "private-b"})
    h.tick(APP.pipe.auth_timeout + 1)
    counts = h.relay.state_of("1").counts  # type: ignore[union-attr]
    assert (counts.auth_requests, counts.auth_denied, counts.auth_timeouts) == (2, 1, 1)
    assert (counts.pipes_opened, counts.pipe_messages_in) == (1, 2)
    h.relay.pipe_closed(pipe, h.now, 4200)
    assert counts.closed == {("pipe", "42xx"): 1}


def test_slow_consumers_are_counted_per_app() -> None:
    """A socket closed as a slow consumer counts once, with its 41xx close."""
    h = Harness()
    s, _ = h.open_socket()
    out = h.relay.slow_consumer(s, h.now)
    assert closes(out) == {s: 4101}
    counts = h.relay.state_of("1").counts  # type: ignore[union-attr]
    assert (counts.slow_sockets, counts.closed) == (1, {("socket", "41xx"): 1})


# --------------------------------------------------------------- observers


def test_nothing_is_observed_unless_asked_and_everything_after() -> None:
    """An observer set on one app sees its sockets, channels, client events, REST publishes and pipes, in order."""
    h = Harness([attrs.evolve(APP, features=attrs.evolve(APP.features, client_events=True)), OTHER])
    seen: list[Observed] = []
    quiet, _ = h.open_socket()
    h.relay.observe("1", seen.append)
    s, _ = h.open_socket()
    h.open_socket("other-key")  # another app: not observed
    subscribe(h, s, "private-room")
    subscribe(h, quiet, "private-room")
    h.socket_send(s, "client-typing", {"who": "me"}, channel="private-room")
    h.socket_send(s, "to-backend", "hi")
    h.relay.publish("1", ["private-room"], "news", '{"n":1}', None, h.now)
    pipe, _ = h.open_pipe()
    h.call(pipe, "send_to_channel", {"channels": ["private-room"], "event": "from-pipe", "data": "x"})
    h.call(pipe, "ack", {"seq": 0})
    h.socket_send(s, "pusher:unsubscribe", {"channel": "private-room"})
    h.relay.socket_closed(s, h.now, 1000, "bye")
    h.relay.pipe_closed(pipe, h.now, 1000)
    types = [o.type for o in seen]
    assert types == [
        "connection", "occupied", "subscribed", "subscribed", "client_event", "back_channel", "api_message",
        "pipe_connected", "pipe_request", "unsubscribed", "disconnection", "pipe_disconnected",
    ], types
    seen.pop(1)
    client = seen[3]
    assert (client.socket_id, client.channel, client.event, json.loads(client.data or "")) == (
        s, "private-room", "client-typing", {"who": "me"},
    )
    assert (seen[5].channel, seen[5].event, seen[5].data) == ("private-room", "news", '{"n":1}')
    request = seen[7]
    assert (request.socket_id, request.event, request.channel, request.data) == (pipe, "send_to_channel", "private-room", "x")
    assert seen[9].details == {"code": 1000, "reason": "bye"}
    h.relay.observe("1", None)
    h.open_socket()
    assert len(seen) == len(types) - 1


def test_occupied_vacated_and_presence_members_are_observed() -> None:
    """Channel transitions and presence members are observed with the user id."""
    h = Harness()
    seen: list[Observed] = []
    h.relay.observe("1", seen.append)
    s, _ = h.open_socket()
    data = json.dumps({"user_id": "u1"})
    auth = channel_auth(APP.key, APP.secret, s, "presence-x", data)
    h.socket_send(s, "pusher:subscribe", {"channel": "presence-x", "auth": auth, "channel_data": data})
    h.relay.socket_closed(s, h.now)
    h.tick(10)
    kinds = [(o.type, o.channel, (o.details or {}).get("user_id")) for o in seen if o.channel]
    assert ("occupied", "presence-x", None) in kinds
    assert ("member_added", "presence-x", "u1") in kinds
    assert ("member_removed", "presence-x", "u1") in kinds
    assert ("vacated", "presence-x", None) in kinds


def test_refused_subscriptions_are_observed() -> None:
    """A subscription refused for a bad signature is observed with its error."""
    h = Harness()
    seen: list[Observed] = []
    h.relay.observe("1", seen.append)
    s, _ = h.open_socket()
    h.socket_send(s, "pusher:subscribe", {"channel": "private-x", "auth": "app-key:bad"})
    errors = [o for o in seen if o.type == "subscription_error"]
    assert len(errors) == 1 and errors[0].channel == "private-x" and errors[0].details["status"] == 401  # type: ignore[index]


# ------------------------------------------------------------------ reload


def test_app_changes_tell_added_removed_changed_and_credentials() -> None:
    """Apps are compared by id; a new key or secret is a credential change."""
    limited = attrs.evolve(APP, limits=Limits(max_presence_members=5))
    rekeyed = attrs.evolve(OTHER, secret="new-secret")
    third = App(id="3", key="k3", secret="s3")
    changes = app_changes([APP, OTHER], [limited, rekeyed, third])
    assert changes.added == (third,)
    assert changes.removed == ()
    assert changes.changed == (limited, rekeyed)
    assert changes.credentials == (rekeyed,)
    assert app_changes([APP, OTHER], [OTHER]).removed == (APP,)


def test_reconfigure_adds_and_removes_apps_closing_only_the_removed_apps_connections() -> None:
    """A removed app's sockets and pipes get 4200 and are forgotten; other apps' connections stay; a new app is served."""
    h = Harness([APP, OTHER])
    keep, _ = h.open_socket("other-key")
    gone, _ = h.open_socket()
    subscribe(h, gone, "news")
    pipe, _ = h.open_pipe()
    third = App(id="3", key="k3", secret="s3")
    out = h.relay.reconfigure([OTHER, third], h.now)
    assert closes(out) == {gone: 4200, pipe: 4200}
    assert h.relay.state_of("1") is None
    assert h.relay.apps.by_key("app-key") is None
    assert h.relay.stats()["sockets"] == 1
    assert h.relay.socket_message(keep, json.dumps({"event": "pusher:ping", "data": {}}), h.now)
    _, refused = h.open_socket()
    assert 4001 in closes(refused).values()
    _newcomer, established = h.open_socket("k3")
    assert not closes(established)
    assert h.relay.state_of("3").socket_count == 1  # type: ignore[union-attr]


def test_reconfigure_with_new_credentials_closes_that_apps_connections_with_4200() -> None:
    """A changed secret closes every socket and pipe of the app (nothing authorized by the old secret stays)."""
    h = Harness([APP, OTHER])
    s, _ = h.open_socket()
    _other, _ = h.open_socket("other-key")
    pipe, _ = h.open_pipe()
    out = h.relay.reconfigure([attrs.evolve(APP, secret="rotated"), OTHER], h.now)
    assert closes(out) == {s: 4200, pipe: 4200}
    assert h.relay.apps.by_id("1").secret == "rotated"  # type: ignore[union-attr]
    assert h.relay.stats()["sockets"] == 1


def test_reconfigure_disabling_an_app_closes_its_sockets_with_4003() -> None:
    """A disabled app's sockets get 4003 (pusher-js stops), and new ones are refused with 4003."""
    h = Harness()
    s, _ = h.open_socket()
    out = h.relay.reconfigure([attrs.evolve(APP, enabled=False)], h.now)
    assert closes(out) == {s: 4003}
    _, refused = h.open_socket()
    assert list(closes(refused).values()) == [4003]


def test_reconfigure_applies_new_limits_and_webhooks_to_open_connections() -> None:
    """New limits apply to sockets already open; new webhook targets get events; the sockets stay."""
    h = Harness()
    s, _ = h.open_socket()
    other, _ = h.open_socket()
    subscribe(h, s, "news")
    changed = attrs.evolve(
        APP,
        limits=Limits(max_channels_per_socket=1),
        webhooks=[WebhookTarget(url="http://127.0.0.1:1/hooks", kinds=["channel_occupied"])],
    )
    assert not closes(h.relay.reconfigure([changed], h.now))
    refused = frames_for(subscribe(h, s, "sports"), s)  # type: ignore[arg-type]
    assert refused[-1]["event"] == "pusher:subscription_error"
    assert refused[-1]["data"]["status"] == 413
    out = subscribe(h, other, "weather")
    hooks = [o for o in out if type(o).__name__ == "WebhookEvent"]
    assert [(h.urls, h.event["name"]) for h in hooks] == [(("http://127.0.0.1:1/hooks",), "channel_occupied")]  # type: ignore[attr-defined]


def test_reconfigure_refuses_duplicate_keys_and_changes_nothing() -> None:
    """Two apps with one key are refused with ConfigError; the relay keeps serving the old apps."""
    h = Harness([APP])
    _s, _ = h.open_socket()
    with pytest.raises(ConfigError):
        h.relay.reconfigure([APP, App(id="9", key=APP.key, secret="x")], h.now)
    assert h.relay.apps.by_id("9") is None
    assert h.relay.stats()["sockets"] == 1
