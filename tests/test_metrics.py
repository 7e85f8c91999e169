"""Metrics, health and readiness over real HTTP: scraped as Prometheus would, parsed by prometheus_client's parser."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

import pusher
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import pipe_proto
from pipe_proto import App, RemoteProtocolError, WebhookTarget
from pipe_proto.names import channel_type
from pipe_trio import RelayServer, connect, open_pipe
from pipe_trio.metrics import channel_type_label, serve_probes
from tests.support import APP_ID, APP_KEY, APP_SECRET, default_apps, start_relay, url_of


def get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    """A blocking GET (run in a thread): status, content type, body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


async def scrape(port: int, path: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape ``path`` and parse it with prometheus_client's text parser: {(sample name, labels): value}."""
    status, content_type, body = await trio.to_thread.run_sync(get, port, path)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def rest_client(server: RelayServer) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=server.port, ssl=False)


async def test_a_scrape_shows_connections_channels_messages_and_rest_per_app(nursery: trio.Nursery) -> None:
    """Sockets, their channels by type, presence members, messages in and out, REST calls and refusals all show."""
    server = await start_relay(nursery)
    with trio.fail_after(30):
        async with connect(url_of(server), APP_KEY, secret=APP_SECRET) as a, connect(
            url_of(server), APP_KEY, secret=APP_SECRET
        ) as b:
            await a.subscribe("news")
            await b.subscribe("news")
            await a.subscribe("private-room")
            await b.subscribe("presence-lobby", channel_data={"user_id": "bob"})
            client = rest_client(server)
            await trio.to_thread.run_sync(lambda: client.trigger("news", "headline", {"n": 1}))
            await a.next_event("headline")
            await b.next_event("headline")
            await trio.to_thread.run_sync(client.channels_info)
            with pytest.raises(RemoteProtocolError):
                async with connect(url_of(server), "no-such-key"):
                    pass
            samples = await scrape(server.port)
    assert value(samples, "pipe_relay_connections", app="1", kind="socket") == 2
    assert value(samples, "pipe_relay_connections_opened_total", app="1", kind="socket") == 3 - 1
    assert value(samples, "pipe_relay_connections_refused_total", app="", code="4001") == 1
    assert value(samples, "pipe_relay_channels", app="1", type="public") == 1
    assert value(samples, "pipe_relay_channels", app="1", type="private") == 1
    assert value(samples, "pipe_relay_channels", app="1", type="presence") == 1
    assert value(samples, "pipe_relay_subscriptions", app="1", type="public") == 2
    assert value(samples, "pipe_relay_presence_members", app="1") == 1
    assert value(samples, "pipe_relay_messages_received_total", app="1", transport="rest") == 1
    assert value(samples, "pipe_relay_received_bytes_total", app="1", transport="rest") == len('{"n": 1}')
    assert value(samples, "pipe_relay_messages_received_total", app="1", transport="socket") == 4
    # connection_established, 4 subscription_succeeded, the event twice.
    assert value(samples, "pipe_relay_messages_sent_total", app="1", transport="socket") >= 7
    assert value(samples, "pipe_relay_sent_bytes_total", app="1", transport="socket") > 0
    assert value(samples, "pipe_relay_rest_requests_total", app="1", endpoint="events", status="200") == 1
    assert value(samples, "pipe_relay_rest_requests_total", app="1", endpoint="channels", status="200") == 1
    assert value(samples, "pipe_relay_ready") == 1
    assert value(samples, "pipe_relay_info", version=pipe_proto.__version__) == 1
    assert ("pipe_relay_event_loop_lag_seconds", ()) in samples
    assert value(samples, "process_open_fds") > 0


async def test_closes_by_class_and_unknown_apps_add_no_label_values(nursery: trio.Nursery) -> None:
    """A client's close counts as 1xxx; REST calls for unknown app ids are counted without their id."""
    server = await start_relay(nursery)
    with trio.fail_after(30):
        async with connect(url_of(server), APP_KEY) as client:
            await client.close(1000, "bye")
        for app_id in ("777", "778"):
            stray = pusher.Pusher(app_id=app_id, key="k", secret="s", host="127.0.0.1", port=server.port, ssl=False)
            with pytest.raises(pusher.errors.PusherError):
                await trio.to_thread.run_sync(lambda stray=stray: stray.trigger("c", "e", {}))
        # The close is counted once the relay read the connection's end: let it settle.
        await trio.testing.wait_all_tasks_blocked()
        samples = await scrape(server.port)
    assert value(samples, "pipe_relay_connections_closed_total", app="1", kind="socket", code_class="1xxx") == 1
    assert value(samples, "pipe_relay_rest_requests_total", app="", endpoint="events", status="404") == 2
    assert not any("777" in str(labels) for _, labels in samples)


async def test_pipe_groups_and_webhooks_are_in_the_scrape(nursery: trio.Nursery) -> None:
    """A pipe's group members and a failing webhook target's attempts are counted per app."""
    unreachable = socket.socket()
    unreachable.bind(("127.0.0.1", 0))
    port = unreachable.getsockname()[1]
    unreachable.close()  # nothing listens there: every attempt fails
    hooked = App(id="5", key="hook-key", secret="hook-secret", webhooks=[WebhookTarget(url=f"http://127.0.0.1:{port}/h")])
    server = await start_relay(nursery, [*default_apps(), hooked])
    with trio.fail_after(30):
        async with open_pipe(url_of(server), app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]):
            async with connect(url_of(server), "hook-key") as sock:
                await sock.subscribe("news")
                # The occupied webhook's first attempt fails at once; its retry waits on a timer.
                await trio.testing.wait_all_tasks_blocked()
                samples = await scrape(server.port)
                assert value(samples, "pipe_relay_webhook_requests_failed_total", app="5") >= 1
            assert value(samples, "pipe_relay_pipe_group_members", app="1", group="default") == 1
            assert value(samples, "pipe_relay_connections", app="1", kind="pipe") == 1
            assert value(samples, "pipe_relay_webhook_requests_retried_total", app="5") >= 1
            assert value(samples, "pipe_relay_pipe_buffered_events", app="1", group="default") == 0


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(relay_server: RelayServer) -> None:
    """An Accept of OpenMetrics gets OpenMetrics (ending in # EOF)."""
    status, content_type, body = await trio.to_thread.run_sync(
        get, relay_server.port, "/metrics", "application/openmetrics-text; version=1.0.0"
    )
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


async def test_health_and_readiness(relay_server: RelayServer) -> None:
    """/health is 200 while serving; /ready is 200, then 503 once the relay is shutting down."""
    assert (await trio.to_thread.run_sync(get, relay_server.port, "/health"))[0] == 200
    status, _, body = await trio.to_thread.run_sync(get, relay_server.port, "/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    relay_server._stopping = True  # what shutdown() sets first, without closing the listener under the test
    status, _, body = await trio.to_thread.run_sync(get, relay_server.port, "/ready")
    assert (status, json.loads(body)) == (503, {"ready": False, "reason": "shutting down"})
    assert (await trio.to_thread.run_sync(get, relay_server.port, "/health"))[0] == 200


async def test_metrics_port_serves_probes_and_the_main_port_stops_serving_metrics(nursery: trio.Nursery) -> None:
    """With a separate metrics listener, /metrics is there (with /health and /ready) and 404 on the public port."""
    server = await start_relay(nursery, metrics_here=False)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(serve_probes, server, listeners)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(20):
        samples = await scrape(port)
        assert value(samples, "pipe_relay_ready") == 1
        assert (await trio.to_thread.run_sync(get, port, "/ready"))[0] == 200
        assert (await trio.to_thread.run_sync(get, port, "/elsewhere"))[0] == 404
        assert (await trio.to_thread.run_sync(get, server.port, "/metrics"))[0] == 404
        assert (await trio.to_thread.run_sync(get, server.port, "/health"))[0] == 200


async def test_without_metrics_nothing_is_counted_or_served(nursery: trio.Nursery) -> None:
    """metrics=False: /metrics is 404 and frames written are not counted."""
    server = await start_relay(nursery, metrics=False)
    with trio.fail_after(20):
        async with connect(url_of(server), APP_KEY):
            pass
        assert (await trio.to_thread.run_sync(get, server.port, "/metrics"))[0] == 404
    state = server.relay.state_of("1")
    assert state is not None and state.counts.socket_messages_out == 0


def test_channel_type_labels_are_the_name_prefixes() -> None:
    """Each channel type is labelled by its prefix."""
    names = ["news", "cache-x", "private-x", "private-cache-x", "private-encrypted-x", "private-encrypted-cache-x",
             "presence-x", "presence-cache-x", "#server-to-user-1"]
    labels = [channel_type_label(channel_type(n).kind, channel_type(n).cached) for n in names]
    assert labels == ["public", "cache", "private", "private-cache", "private-encrypted",
                      "private-encrypted-cache", "presence", "presence-cache", "user"]
