"""One socket must not be able to flood the pipes: subscribe rate, merged departures, control notices dropped first."""

from __future__ import annotations

import json
from typing import Any

from pipe_proto import App, Close, Limits
from tests.pipe_helpers import Harness, frames_for


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
