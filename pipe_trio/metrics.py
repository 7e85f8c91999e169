"""Prometheus metrics, health and readiness: ``GET /metrics``, ``/health``, ``/ready``.

Nothing is counted for metrics on the way of a message beyond what the relay
counts anyway: the core's per-app :class:`~pipe_proto.relay.AppCounts` (plain
integers, one increment per message in and one per frame written, however
many sockets a broadcast reaches), the pipe hubs', the webhook sender's and
the cluster link's. A scrape reads them all through :class:`RelayCollector`
and writes them with ``prometheus_client``'s exposition format (text, or
OpenMetrics when the scraper asks for it). Gauges that need a walk over
the records (channels and subscriptions by type, presence members) are
computed then, at the scrape, in time proportional to the channels.

Names follow Prometheus's conventions: ``pipe_relay_`` and the thing
counted, ``_total`` for counters, base units (bytes, seconds); ``app`` is
the app's id. docs/relay.md ("Metrics") lists them all.

``/health`` answers 200 while the process serves; ``/ready`` answers 200
when the relay takes traffic, 503 while it shuts down or, in cluster mode,
while Redis is unreachable (the node would serve its own sockets, but cannot
reach the others').
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import h11
import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import choose_encoder

from pipe_proto import __version__
from pipe_proto.names import ChannelKind
from pipe_proto.rest import describe_request

if TYPE_CHECKING:
    from .server import RelayServer

__all__ = ["LAG_INTERVAL", "Metrics", "RelayCollector", "serve_probes"]

log = logging.getLogger("pipe_trio")

#: Seconds between two measures of the event loop's lag.
LAG_INTERVAL = 0.5

_KIND_LABEL = {
    ChannelKind.PUBLIC: "public",
    ChannelKind.PRIVATE: "private",
    ChannelKind.ENCRYPTED: "private-encrypted",
    ChannelKind.PRESENCE: "presence",
    ChannelKind.USER: "user",
}


def channel_type_label(kind: ChannelKind, cached: bool) -> str:
    """The ``type`` label of a channel: its name's prefix, without the dash (``public`` for none)."""
    if not cached:
        return _KIND_LABEL[kind]
    return "cache" if kind is ChannelKind.PUBLIC else f"{_KIND_LABEL[kind]}-cache"


class Metrics:
    """What the server measures itself for metrics (the rest is read from the relay at the scrape).

    Args:
        server: the server whose relay, webhook sender and cluster link are read.
    """

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        #: (app id or "", endpoint, status) -> REST requests answered.
        self.rest_requests: dict[tuple[str, str, int], int] = {}
        self.lag = 0.0
        self.lag_max = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RelayCollector(server, self))
        # The process's CPU, memory and file descriptors (Linux /proc), read at the scrape.
        ProcessCollector(namespace="", registry=self.registry)

    def rest(self, path: str, query: dict[str, str], status: int) -> None:
        """A REST request was answered with ``status``."""
        app_id, endpoint = describe_request(self.server.relay.apps, path, query)
        key = (app_id or "", endpoint, status)
        self.rest_requests[key] = self.rest_requests.get(key, 0) + 1

    async def watch_lag(self) -> None:
        """Measure how late the event loop wakes a sleeping task, every ``LAG_INTERVAL`` s, until cancelled."""
        while True:
            start = trio.current_time()
            await trio.sleep(LAG_INTERVAL)
            self.lag = max(0.0, trio.current_time() - start - LAG_INTERVAL)
            self.lag_max = max(self.lag_max, self.lag)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics as a scrape asks for them (``accept``: its Accept header): body and content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class RelayCollector:
    """Reads the relay's counts at each scrape (a ``prometheus_client`` custom collector)."""

    def __init__(self, server: RelayServer, metrics: Metrics) -> None:
        self.server = server
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read now."""
        yield from self._relay()
        yield from self._apps()
        yield from self._pipes()
        yield from self._rest_and_webhooks()
        yield from self._cluster()

    # ------------------------------------------------------------------ relay

    def _relay(self) -> Iterator[Metric]:
        server = self.server
        info = GaugeMetricFamily("pipe_relay_info", "The relay's version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        ready, _ = server.readiness()
        yield GaugeMetricFamily("pipe_relay_ready", "1 while the relay takes traffic (GET /ready is 200).", ready)
        yield GaugeMetricFamily(
            "pipe_relay_event_loop_lag_seconds",
            f"How late the event loop last woke a task (measured every {LAG_INTERVAL} s).",
            self.metrics.lag,
        )
        yield GaugeMetricFamily(
            "pipe_relay_event_loop_lag_max_seconds", "The largest lag measured since the start.", self.metrics.lag_max
        )
        yield GaugeMetricFamily(
            "pipe_relay_tcp_connections", "TCP connections open (HTTP, sockets, pipes, closing ones).",
            server.open_connections,
        )

    def _apps(self) -> Iterator[Metric]:
        relay = self.server.relay
        conns = GaugeMetricFamily("pipe_relay_connections", "Sockets and pipes open.", labels=["app", "kind"])
        opened = CounterMetricFamily(
            "pipe_relay_connections_opened", "Sockets and pipes admitted.", labels=["app", "kind"]
        )
        closed = CounterMetricFamily(
            "pipe_relay_connections_closed",
            "Sockets and pipes closed, by close code class (1xxx, 40xx no retry, 41xx retry later, "
            "42xx retry now, 43xx, none: lost without a close frame).",
            labels=["app", "kind", "code_class"],
        )
        refused = CounterMetricFamily(
            "pipe_relay_connections_refused",
            "Sockets refused at the handshake, by close code (app empty: unknown key or path).",
            labels=["app", "code"],
        )
        slow = CounterMetricFamily(
            "pipe_relay_slow_consumer_closes", "Connections closed as slow consumers (4101).", labels=["app", "kind"]
        )
        channels = GaugeMetricFamily("pipe_relay_channels", "Occupied channels, by type.", labels=["app", "type"])
        subscriptions = GaugeMetricFamily(
            "pipe_relay_subscriptions", "Subscriptions of this relay's sockets, by channel type.",
            labels=["app", "type"],
        )
        members = GaugeMetricFamily(
            "pipe_relay_presence_members", "Presence members on this relay's channels.", labels=["app"]
        )
        users = GaugeMetricFamily("pipe_relay_users_signed_in", "Users signed in on this relay.", labels=["app"])
        received = CounterMetricFamily(
            "pipe_relay_messages_received",
            "Messages received: socket messages, pipe requests, events published through REST.",
            labels=["app", "transport"],
        )
        received_bytes = CounterMetricFamily(
            "pipe_relay_received_bytes",
            "UTF-8 bytes of the messages received (REST: the events' data).",
            labels=["app", "transport"],
        )
        sent = CounterMetricFamily(
            "pipe_relay_messages_sent", "WebSocket messages written to sockets and pipes.", labels=["app", "transport"]
        )
        sent_bytes = CounterMetricFamily(
            "pipe_relay_sent_bytes", "UTF-8 bytes of the messages written.", labels=["app", "transport"]
        )
        auth = CounterMetricFamily(
            "pipe_relay_pipe_auth_requests", "Authorizations asked of the pipe holding auth.", labels=["app"]
        )
        denied = CounterMetricFamily("pipe_relay_pipe_auth_denied", "Authorizations the pipe refused.", labels=["app"])
        timeouts = CounterMetricFamily(
            "pipe_relay_pipe_auth_timeouts", "Authorizations not answered within auth_timeout (408).", labels=["app"]
        )
        for state in relay.app_states():
            app = state.app.id
            counts = state.counts
            conns.add_metric([app, "socket"], state.socket_count)
            conns.add_metric([app, "pipe"], state.hub.pipe_count)
            opened.add_metric([app, "socket"], counts.sockets_opened)
            opened.add_metric([app, "pipe"], counts.pipes_opened)
            for (kind, code_class), value in sorted(counts.closed.items()):
                closed.add_metric([app, kind, code_class], value)
            for code, value in sorted(counts.refused.items()):
                refused.add_metric([app, str(code)], value)
            slow.add_metric([app, "socket"], counts.slow_sockets)
            slow.add_metric([app, "pipe"], counts.slow_pipes)
            by_type: dict[str, list[int]] = {}
            presence = 0
            for channel in state.channels.values():
                label = channel_type_label(channel.type.kind, channel.type.cached)
                entry = by_type.setdefault(label, [0, 0])
                entry[0] += 1
                entry[1] += len(channel.sockets)
                if channel.members is not None:
                    presence += len(channel.members)
            for label, (count, subscribed) in sorted(by_type.items()):
                channels.add_metric([app, label], count)
                subscriptions.add_metric([app, label], subscribed)
            members.add_metric([app], presence)
            users.add_metric([app], len(state.users))
            for transport, messages, size in (
                ("socket", counts.socket_messages_in, counts.socket_bytes_in),
                ("pipe", counts.pipe_messages_in, counts.pipe_bytes_in),
                ("rest", counts.rest_messages_in, counts.rest_bytes_in),
            ):
                received.add_metric([app, transport], messages)
                received_bytes.add_metric([app, transport], size)
            for transport, messages, size in (
                ("socket", counts.socket_messages_out, counts.socket_bytes_out),
                ("pipe", counts.pipe_messages_out, counts.pipe_bytes_out),
            ):
                sent.add_metric([app, transport], messages)
                sent_bytes.add_metric([app, transport], size)
            auth.add_metric([app], counts.auth_requests)
            denied.add_metric([app], counts.auth_denied)
            timeouts.add_metric([app], counts.auth_timeouts)
        for code, value in sorted(relay.refused_unknown.items()):
            refused.add_metric(["", str(code)], value)
        yield from (conns, opened, closed, refused, slow, channels, subscriptions, members, users)
        yield from (received, received_bytes, sent, sent_bytes, auth, denied, timeouts)

    def _pipes(self) -> Iterator[Metric]:
        gauges = {
            "members": ("pipe_relay_pipe_group_members", "Members of the group with a pipe connected."),
            "sessions": ("pipe_relay_pipe_group_sessions", "Sessions of the group (connected or in their grace)."),
            "here": ("pipe_relay_pipe_group_members_here", "Members of the group connected to this node."),
            "pending": ("pipe_relay_pipe_buffered_events", "Events buffered for the group, not sent yet."),
            "pending_bytes": ("pipe_relay_pipe_buffered_bytes", "Bytes of the buffered events (as bounded)."),
            "in_flight": ("pipe_relay_pipe_in_flight_events", "Events sent to the group's members, not acked."),
        }
        counters = {
            "delivered": ("pipe_relay_pipe_delivered", "Events delivered to the group's members."),
            "redelivered": ("pipe_relay_pipe_redelivered", "Events sent again (after a member went)."),
            "dropped": ("pipe_relay_pipe_dropped", "Events dropped by the group's bounds (buffer_*)."),
        }
        families: dict[str, Any] = {
            key: GaugeMetricFamily(name, text, labels=["app", "group"]) for key, (name, text) in gauges.items()
        }
        families.update(
            {key: CounterMetricFamily(name, text, labels=["app", "group"]) for key, (name, text) in counters.items()}
        )
        unrouted = CounterMetricFamily(
            "pipe_relay_pipe_unrouted", "Back-channel messages no pipe group wanted.", labels=["app"]
        )
        dropped = CounterMetricFamily(
            "pipe_relay_pipe_app_dropped", "Events dropped by any group of the app (bounds, age).", labels=["app"]
        )
        for state in self.server.relay.app_states():
            app = state.app.id
            stats = state.hub.stats()
            unrouted.add_metric([app], stats.get("unrouted", 0))
            dropped.add_metric([app], stats.get("dropped", 0))
            for group, numbers in sorted(stats.get("groups", {}).items()):
                for key, value in numbers.items():
                    if key in families:
                        families[key].add_metric([app, group], value)
        yield from families.values()
        yield from (unrouted, dropped)

    def _rest_and_webhooks(self) -> Iterator[Metric]:
        rest = CounterMetricFamily(
            "pipe_relay_rest_requests",
            "REST requests answered, by endpoint and status (app empty: unknown app or key).",
            labels=["app", "endpoint", "status"],
        )
        for (app, endpoint, status), value in sorted(self.metrics.rest_requests.items()):
            rest.add_metric([app, endpoint, str(status)], value)
        yield rest
        hooks = self.server.webhooks
        names = {
            "sent": ("pipe_relay_webhook_events_sent", "Webhook events delivered (2xx)."),
            "failed": ("pipe_relay_webhook_requests_failed", "Webhook requests that failed (no answer, non-2xx)."),
            "retried": ("pipe_relay_webhook_requests_retried", "Failed webhook requests tried again."),
            "dropped": ("pipe_relay_webhook_events_dropped", "Webhook events given up (queue full, retries over)."),
        }
        families = {key: CounterMetricFamily(name, text, labels=["app"]) for key, (name, text) in names.items()}
        queued = GaugeMetricFamily("pipe_relay_webhook_queued_events", "Webhook events waiting.", labels=["app"])
        for app, numbers in sorted(hooks.per_app().items()):
            for key, family in families.items():
                family.add_metric([app], numbers[key])
            queued.add_metric([app], numbers["queued"])
        yield from families.values()
        yield queued

    def _cluster(self) -> Iterator[Metric]:
        link = self.server.cluster
        if link is None:
            return
        directory = link.directory
        yield GaugeMetricFamily("pipe_relay_redis_connected", "1 while Redis answers.", int(link.connected))
        yield SummaryMetricFamily(
            "pipe_relay_redis_round_trip_seconds",
            "Round trips to Redis (one pipeline of calls each) and their time.",
            count_value=link.round_trips,
            sum_value=link.round_trip_seconds,
        )
        yield GaugeMetricFamily(
            "pipe_relay_redis_round_trip_last_seconds", "The last round trip to Redis.", link.last_round_trip
        )
        yield CounterMetricFamily(
            "pipe_relay_redis_reconnects", "Times the link to Redis came back after an outage.", link.reconnects
        )
        yield GaugeMetricFamily("pipe_relay_redis_queued_calls", "Cluster calls waiting to be sent.", len(link))
        counters = directory.counters
        yield CounterMetricFamily(
            "pipe_relay_cluster_messages_received", "Messages from other nodes (this node's inbox).",
            counters["messages_in"],
        )
        yield CounterMetricFamily(
            "pipe_relay_cluster_calls", "Calls of the cluster script (what this node tells the others).",
            counters["calls"],
        )
        yield CounterMetricFamily(
            "pipe_relay_cluster_lost_while_down", "Events for other nodes lost while Redis was unreachable.",
            counters["lost_while_down"],
        )
        yield CounterMetricFamily("pipe_relay_cluster_resyncs", "Resynchronisations with Redis.", counters["resyncs"])
        yield CounterMetricFamily(
            "pipe_relay_cluster_nodes_reaped", "Dead nodes this node cleaned up after.", counters["nodes_reaped"]
        )


# ------------------------------------------------------------------ probes port


async def serve_probes(
    server: RelayServer,
    listeners: Sequence[trio.abc.Listener[Any]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics``, ``/health`` and ``/ready`` (only) on ``listeners`` (``--metrics-port``) until cancelled."""
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, lambda stream: _probe_connection(server, stream), [listener])
        task_status.started()


#: Seconds a probe connection may take to send its request.
PROBE_TIMEOUT = 10.0


async def _probe_connection(server: RelayServer, stream: trio.abc.Stream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    try:
        async with stream:
            with trio.move_on_after(PROBE_TIMEOUT):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(bytes(data))
                        if not data:
                            return
                        continue
                    if not isinstance(event, h11.Request):
                        return
                    break
                path = event.target.decode("latin-1").partition("?")[0]
                accept = ""
                for name, value in event.headers:
                    if name == b"accept":
                        accept = value.decode("latin-1")
                if event.method not in (b"GET", b"HEAD"):
                    status, body, content_type = 405, b'{"error": "GET only"}', "application/json"
                else:
                    answer = server.probe(path, accept)
                    if answer is None:
                        status, body, content_type = 404, b'{"error": "Not found"}', "application/json"
                    else:
                        status, body, content_type = answer
                headers = [("content-type", content_type), ("content-length", str(len(body))), ("connection", "close")]
                out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                if event.method == b"GET":
                    out += conn.send(h11.Data(data=body)) or b""
                await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
        pass


def probe_answer(server: RelayServer, path: str, accept: str) -> tuple[int, bytes, str] | None:
    """The answer to ``GET path`` for ``/health``, ``/ready`` and ``/metrics``; None for any other path."""
    if path == "/health":
        return 200, b'{"status": "ok"}', "application/json"
    if path == "/ready":
        ready, reason = server.readiness()
        answer: dict[str, Any] = {"ready": ready} if ready else {"ready": False, "reason": reason}
        return (200 if ready else 503), json.dumps(answer).encode(), "application/json"
    if path == "/metrics" and server.metrics is not None:
        body, content_type = server.metrics.exposition(accept)
        return 200, body, content_type
    return None
