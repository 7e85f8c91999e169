"""Webhooks: which events, when, how they are signed, and how they are sent (pusher-channels.md 10)."""

from __future__ import annotations

import json
import time
from typing import Any

import pusher
import pytest
import trio
import trio.testing

from pipe_proto import App, AppRegistry, WebhookTarget
from pipe_proto.webhooks import LEAVE_DELAY, WebhookScheduler, build_request, retry_delay
from pipe_trio import connect
from pipe_trio.webhooks import WebhookSender
from tests.http_receiver import HttpReceiver, Received
from tests.support import start_relay, url_of

pytestmark = pytest.mark.both_transports

KEY, SECRET = "hook-key", "hook-secret"


def scheduler(kinds: tuple[str, ...] = ()) -> tuple[WebhookScheduler, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    app = App(id="1", key=KEY, secret=SECRET, webhooks=[WebhookTarget(url="http://h/x", kinds=kinds)])
    return WebhookScheduler(app, lambda urls, event: sent.append(event)), sent


def test_vector_w2_signature() -> None:
    """The body of vector W2 gets the documented signature, Content-Type exactly application/json."""
    app = App(id="1", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
    request = build_request(app, [{"name": "channel_occupied", "channel": "my-channel"}], 1353088179.0)
    assert request.body == b'{"time_ms":1353088179000,"events":[{"name":"channel_occupied","channel":"my-channel"}]}'
    headers = dict(request.headers)
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Pusher-Key"] == "278d425bdf160c739803"
    assert headers["X-Pusher-Signature"] == "8039c268e5f53944f550e8d8ce9a942ae558c704b276c6c26eab94e54faf8592"


def test_departures_wait_and_quick_returns_cancel_both() -> None:
    """channel_vacated waits LEAVE_DELAY; a rejoin within it cancels the vacated and the new occupied."""
    hooks, sent = scheduler()
    hooks.event("channel_occupied", 0.0, channel="c")
    hooks.event("channel_vacated", 1.0, channel="c")
    assert sent == [{"name": "channel_occupied", "channel": "c"}]
    assert hooks.next_deadline() == 1.0 + LEAVE_DELAY
    hooks.event("channel_occupied", 2.0, channel="c")
    hooks.tick(10.0)
    assert sent == [{"name": "channel_occupied", "channel": "c"}]
    hooks.event("member_removed", 11.0, channel="p", user_id="u")
    hooks.tick(11.0 + LEAVE_DELAY - 0.01)
    assert len(sent) == 1
    hooks.tick(11.0 + LEAVE_DELAY)
    assert sent[-1] == {"name": "member_removed", "channel": "p", "user_id": "u"}
    assert len(hooks) == 0


def test_kinds_filter() -> None:
    """A target receives only the kinds it names."""
    hooks, sent = scheduler(("client_event",))
    assert not hooks.wants("channel_occupied") and hooks.wants("client_event")
    hooks.event("channel_occupied", 0.0, channel="c")
    hooks.event("client_event", 0.0, channel="private-c", event="client-x", data="{}", socket_id="1.1")
    assert [e["name"] for e in sent] == ["client_event"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example:80800/pusher", "http:///pusher", "ftp://hooks.example/", "http://a b/",
        "http://hooks.example/ä", "http://hööks.example/",
    ],
)
def test_a_webhook_url_the_sender_could_not_use_fails_the_configuration(url: str) -> None:
    """A port out of range, no host, another scheme: refused when the app is configured, not at the first webhook."""
    from pipe_proto import ConfigError

    with pytest.raises(ConfigError):
        WebhookTarget(url=url)


def test_retry_schedule_backs_off_to_a_minute() -> None:
    """Retries wait 1, 2, 4 ... seconds, at most 60."""
    assert [retry_delay(n) for n in (1, 2, 3, 7, 8, 20)] == [1, 2, 4, 60, 60, 60]


# ------------------------------------------------------- over the network


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead when the test has been idle 20 ms of real time."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def hook_app(url: str, **kw: Any) -> App:
    return App(id="1", key=KEY, secret=SECRET, webhooks=[WebhookTarget(url=url, **kw)])


def validated(request: Received) -> dict[str, Any]:
    """The body as the official Python SDK's webhook validation returns it."""
    sdk = pusher.Pusher(app_id="1", key=KEY, secret=SECRET)
    # The SDK compares time_ms with the real clock; the relay stamps bodies
    # with its own (virtual, here) clock, which starts at the real time.
    payload = sdk.validate_webhook(
        key=request.headers["x-pusher-key"],
        signature=request.headers["x-pusher-signature"],
        body=request.body.decode(),
    )
    assert payload is not None, "the SDK rejected the webhook"
    assert request.headers["content-type"] == "application/json"
    return dict(payload)


async def test_webhooks_are_signed_batched_and_valid_for_the_sdk(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    """A presence join sends occupied and member_added in one body that the Python SDK validates."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    server = await start_relay(nursery, [hook_app(receiver.url)])
    with trio.fail_after(30):
        async with connect(url_of(server), KEY, secret=SECRET) as client:
            await client.subscribe("presence-room", channel_data={"user_id": "u1"})
            (request,) = await receiver.wait_for(1)
            payload = validated(request)
            assert payload["events"] == [
                {"name": "channel_occupied", "channel": "presence-room"},
                {"name": "member_added", "channel": "presence-room", "user_id": "u1"},
            ]
            assert abs(payload["time_ms"] / 1000 - time.time()) < 300
        requests = await receiver.wait_for(2)
        assert [e["name"] for e in validated(requests[1])["events"]] == ["member_removed", "channel_vacated"]


async def test_failing_receiver_is_retried_without_stalling_delivery(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    """A 500, then a hang, then success: the event is retried with back-off while sockets keep receiving."""
    answers = iter([500, None, 200])
    receiver: HttpReceiver = await nursery.start(HttpReceiver(lambda r: next(answers)).serve)
    server = await start_relay(nursery, [hook_app(receiver.url)])
    with trio.fail_after(60):
        async with connect(url_of(server), KEY) as client:
            await client.subscribe("news")
            first = await receiver.wait_for(1)
            # While the receiver fails and hangs, events still flow to sockets.
            for i in range(20):
                server.execute(server.relay.publish("1", ["news"], "tick", str(i), None, server.now()))
                message = await client.next_event("tick")
                assert message.data == str(i)
            requests = await receiver.wait_for(3)
        assert requests[0].body == requests[1].body == requests[2].body == first[0].body
        assert requests[1].at - requests[0].at >= 1.0
        assert server.webhooks.stats["failed_attempts"] == 2 and server.webhooks.stats["sent"] == 1


async def test_a_target_whose_host_cannot_be_looked_up_fails_alone(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    """A host name the resolver refuses to encode (a label over 63 characters) is that target's failed
    delivery, retried and given up on: the sender (and so the relay) goes on."""
    unusable = "http://" + "a" * 64 + ".example/hook"
    receiver: HttpReceiver = await nursery.start(HttpReceiver(lambda r: 200).serve)
    sender = WebhookSender(AppRegistry([hook_app(unusable)]), trio.current_time)
    await nursery.start(lambda task_status: _started_then_run(sender, task_status))
    with trio.fail_after(600):
        sender.add("1", (unusable,), {"name": "channel_vacated", "channel": "a"})
        while sender.stats["dropped"] < 1:
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(30)  # MockClock: skips through the retries' back-off
        sender.add("1", (receiver.url,), {"name": "channel_vacated", "channel": "b"})
        [request] = await receiver.wait_for(1)
    assert json.loads(request.body)["events"][0]["channel"] == "b"
    assert sender.stats["failed_attempts"] >= 2


async def test_full_queue_drops_oldest_and_counts(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    """When a target's queue is full the oldest events go, and are counted."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver(lambda r: None).serve)
    server = await start_relay(nursery, [hook_app(receiver.url, kinds=["client_event"])])
    sender = server.webhooks
    sender.max_batch = 1
    sender.max_queue = 3
    with trio.fail_after(30):
        for i in range(10):
            sender.add("1", (receiver.url,), {"name": "client_event", "n": i})
        await receiver.wait_for(1)
    assert sender.stats["dropped"] == 7
    assert json.loads(receiver.received[0].body)["events"][0]["n"] == 7


async def test_events_after_the_sender_stopped_stay_queued() -> None:
    """An event added once the sender's tasks are gone (the relay stopping) is queued, never an error."""
    sender = WebhookSender(AppRegistry([hook_app("http://127.0.0.1:9/hook")]), time.time)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: _started_then_run(sender, task_status))
        nursery.cancel_scope.cancel()
    sender.add("1", ("http://127.0.0.1:9/hook",), {"name": "channel_vacated", "channel": "late"})
    assert [t.queue[-1]["channel"] for t in sender._targets.values()] == ["late"]


async def _started_then_run(sender: Any, task_status: trio.TaskStatus[None]) -> None:
    task_status.started()
    await sender.run()
