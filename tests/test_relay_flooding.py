"""One socket must not be able to flood the pipes: subscribe rate, merged departures, control notices dropped first."""

from __future__ import annotations

import json
from typing import Any

from pipe_proto import App, Close, Limits, PipeSettings
from pipe_proto.departures import LEAVE_DELAY
from pipe_proto.signatures import channel_auth
from tests.pipe_helpers import T0, Harness, frames_for, notices


def subscribe(h: Harness, sock: str, channel: str) -> list[dict[str, Any]]:
    return frames_for(h.socket_send(sock, "pusher:subscribe", {"channel": channel}), sock)


def unsubscribe(h: Harness, sock: str, channel: str) -> list[Any]:
    return h.socket_send(sock, "pusher:unsubscribe", {"channel": channel})


def test_subscribe_rate_allows_a_burst_of_the_channel_limit_then_refuses_with_429() -> None:
    """A whole resubscription is fine; past the burst, subscribes are refused (429) until the rate refills them."""
    app = App(id="1", key="app-key", secret="app-secret",
              limits=Limits(max_channels_per_socket=20, subscriptions_per_second=5))
    h = Harness([app])
    sock, _ = h.open_socket()
    for n in range(20):  # pusher-js resubscribing to every channel after a reconnect
        assert subscribe(h, sock, f"c{n}")[0]["event"] == "pusher_internal:subscription_succeeded"
    for n in range(20):
        unsubscribe(h, sock, f"c{n}")  # always honoured
    assert h.relay.state_of("1").channels == {}
    (refused,) = subscribe(h, sock, "again")
    assert refused["event"] == "pusher:subscription_error" and refused["channel"] == "again"
    data = refused["data"] if isinstance(refused["data"], dict) else json.loads(refused["data"])
    assert (data["type"], data["status"]) == ("LimitReached", 429)
    h.now += 0.25  # one more at 5 per second
    assert subscribe(h, sock, "again")[0]["event"] == "pusher_internal:subscription_succeeded"
    assert subscribe(h, sock, "more")[0]["event"] == "pusher:subscription_error"
    out = unsubscribe(h, sock, "again")
    assert not any(isinstance(o, Close) for o in out)
    assert "again" not in h.relay.state_of("1").channels
    h.now += 20 / 5  # the whole burst is back
    assert all(subscribe(h, sock, f"d{n}")[0]["event"] == "pusher_internal:subscription_succeeded" for n in range(20))


def watcher(h: Harness, app: App | None = None, *types: str) -> str:
    pipe, _ = h.open_pipe(app) if app else h.open_pipe()
    h.call(pipe, "subscribe", {"events": list(types or ("channel_existence",))})
    return pipe


def events(outputs: list[Any], pipe: str) -> list[tuple[str, Any]]:
    return [(n["event"], n["data"]) for n in notices(outputs, pipe)]


def test_a_channel_vacated_and_occupied_again_within_the_delay_is_no_news_to_pipes() -> None:
    """Pipes hear channel_vacated 3 s late, and neither it nor the next channel_occupied when the channel comes back."""
    h = Harness()
    pipe = watcher(h)
    sock, _ = h.open_socket()
    assert events(h.socket_send(sock, "pusher:subscribe", {"channel": "news"}), pipe) == [
        ("channel_occupied", {"channel": "news"})
    ]
    out: list[Any] = []
    for _ in range(100):
        out += unsubscribe(h, sock, "news")
        out += h.socket_send(sock, "pusher:subscribe", {"channel": "news"})
        h.now += 0.01
    out += unsubscribe(h, sock, "news")
    gone_at = h.now
    out += h.tick(LEAVE_DELAY - 0.01)
    assert events(out, pipe) == []
    out = h.tick(0.01)
    assert events(out, pipe) == [("channel_vacated", {"channel": "news"})]
    assert notices(out, pipe)[0]["time_ms"] == int(gone_at * 1000)  # when it happened


def test_a_member_back_within_the_delay_is_no_news_unless_its_info_changed() -> None:
    """member_removed waits too; the same user back with the same info cancels both, with other info both go out, in order."""
    h = Harness()
    pipe = watcher(h, None, "presence")
    sock, _ = h.open_socket()

    def join(info: Any) -> list[Any]:
        data = json.dumps({"user_id": "u1", "user_info": info})
        auth = channel_auth("app-key", "app-secret", sock, "presence-room", data)
        return h.socket_send(sock, "pusher:subscribe", {"channel": "presence-room", "auth": auth, "channel_data": data})

    assert [e for e, _ in events(join({"n": 1}), pipe)] == ["member_added"]
    unsubscribe(h, sock, "presence-room")
    assert events(join({"n": 1}) + h.tick(LEAVE_DELAY), pipe) == []
    unsubscribe(h, sock, "presence-room")
    assert events(join({"n": 2}), pipe) == [
        ("member_removed", {"channel": "presence-room", "user_id": "u1"}),
        ("member_added", {"channel": "presence-room", "user_id": "u1", "user_info": {"n": 2}}),
    ]
    assert events(h.tick(LEAVE_DELAY), pipe) == []


def test_departures_held_for_pipes_are_bounded() -> None:
    """At most buffer_events departures wait; beyond, the oldest goes out early (nothing is lost)."""
    app = App(id="1", key="app-key", secret="app-secret", pipe=PipeSettings(buffer_events=5))
    h = Harness([app])
    pipe = watcher(h, app)
    sock, _ = h.open_socket()
    out: list[Any] = []
    for n in range(7):
        h.socket_send(sock, "pusher:subscribe", {"channel": f"c{n}"})
        out += unsubscribe(h, sock, f"c{n}")
    assert events(out, pipe) == [("channel_vacated", {"channel": "c0"}), ("channel_vacated", {"channel": "c1"})]
    assert len(events(h.tick(LEAVE_DELAY), pipe)) == 5
    assert h.relay.next_deadline() > h.now


def test_held_departures_are_forgotten_with_the_last_pipe_that_wanted_them() -> None:
    """No pipe left for channel_existence: nothing held, nothing due, nothing told to a later subscriber."""
    h = Harness()
    pipe = watcher(h)
    sock, _ = h.open_socket()
    h.socket_send(sock, "pusher:subscribe", {"channel": "news"})
    unsubscribe(h, sock, "news")
    h.call(pipe, "unsubscribe", {"events": ["channel_existence"]})
    assert h.relay.next_deadline() > T0 + LEAVE_DELAY
    h.call(pipe, "subscribe", {"events": ["channel_existence"]})
    assert events(h.tick(LEAVE_DELAY), pipe) == []


def drain(h: Harness, pipe: str, out: list[Any]) -> list[dict[str, Any]]:
    """Every notification the pipe gets when it acks all it is sent until nothing more comes."""
    got = notices(out, pipe)
    new = got
    while True:
        if not new:
            new = notices(h.tick(LEAVE_DELAY), pipe)  # the departures still held
            got += new
            if not new:
                return got
        _, more = h.call(pipe, "ack", {"seq": max(n["seq"] for n in got)}, reply=False)
        new = notices(more, pipe)
        got += new


def test_control_notices_never_evict_socket_messages() -> None:
    """A socket flapping subscriptions while others send to a group also holding channel_existence: no message lost.

    The messages alone fit the group's bounds; with the notifications they do not.
    """
    app = App(id="1", key="app-key", secret="app-secret", pipe=PipeSettings(window=5, buffer_events=200))
    h = Harness([app])
    pipe = watcher(h, app, "socket_message", "channel_existence")
    flapper, _ = h.open_socket()
    senders = [h.open_socket()[0] for _ in range(4)]
    out: list[Any] = []
    produced = 0
    for round in range(40):  # the pipe does not ack meanwhile: its group's bounds are reached
        for n in range(10):
            out += h.socket_send(flapper, "pusher:subscribe", {"channel": f"r{round}-{n}"})
            out += unsubscribe(h, flapper, f"r{round}-{n}")
        for sock in senders:
            out += h.socket_send(sock, "msg", {"n": produced})
            produced += 1
        h.now += 0.1
        out += h.tick()
    got = drain(h, pipe, out)
    messages = sorted(n["data"]["data"]["n"] for n in got if n["event"] == "socket_message")
    assert messages == list(range(produced))
    dropped = sum(n["data"]["dropped"] for n in got if n["event"] == "gap")
    controls = sum(n["event"] in ("channel_occupied", "channel_vacated") for n in got)
    assert dropped > 0 and controls + dropped == 2 * 400
    assert h.relay.stats()["apps"]["1"]["pipe"]["dropped"] == dropped


def test_one_socket_flapping_one_channel_costs_nothing_and_is_slowed_down() -> None:
    """The reported attack: 2,000 subscribe/unsubscribe pairs at once on one public channel, beside senders."""
    app = App(id="1", key="app-key", secret="app-secret", pipe=PipeSettings(window=5, buffer_events=500))
    h = Harness([app])
    pipe = watcher(h, app, "socket_message", "channel_existence")
    flapper, _ = h.open_socket()
    senders = [h.open_socket()[0] for _ in range(10)]
    out: list[Any] = []
    refused = 0
    for n in range(2000):
        joined = h.socket_send(flapper, "pusher:subscribe", {"channel": "public"})
        refused += "pusher:subscription_error" in str(frames_for(joined, flapper))
        out += joined + unsubscribe(h, flapper, "public")
        if n % 50 == 0:
            for sock in senders:
                out += h.socket_send(sock, "msg", {"n": n})
    assert refused == 2000 - 1000  # past the burst of max_channels_per_socket
    got = drain(h, pipe, out)
    assert sum(n["event"] == "socket_message" for n in got) == 10 * 40
    assert [n["event"] for n in got if n["event"] != "socket_message"] == ["channel_occupied", "channel_vacated"]
