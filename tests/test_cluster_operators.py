"""A cluster node's metrics and readiness, on a real redis-server: Redis round trips, reconnects, cross-node messages."""

from __future__ import annotations

import json

import trio

from tests.redis_server import RedisServer
from tests.test_cluster import TIMEOUT, client, cluster, next_of, sdk
from tests.test_metrics import get, scrape, value


async def test_a_node_scrape_shows_redis_and_cross_node_traffic_and_ready_follows_redis(nursery: trio.Nursery) -> None:
    """Round trips and inbox messages are counted; /ready is 503 while Redis is away, and a reconnect is counted."""
    own = RedisServer()
    own.start()
    try:
        async with cluster(nursery, own, nodes=2) as found, client(found, 0) as a:
            await a.subscribe("news")
            await sdk(lambda: found.rest(1).trigger("news", "hello", {}))
            await next_of(a, "hello")
            node = found.nodes[0]
            samples = await scrape(node.port)
            assert value(samples, "pipe_relay_redis_connected") == 1
            assert value(samples, "pipe_relay_redis_round_trip_seconds_count") > 0
            assert value(samples, "pipe_relay_redis_round_trip_seconds_sum") > 0
            assert value(samples, "pipe_relay_cluster_messages_received_total") >= 1
            assert value(samples, "pipe_relay_cluster_calls_total") >= 1
            assert value(samples, "pipe_relay_redis_reconnects_total") == 0
            own.stop()
            assert node.cluster is not None
            with trio.fail_after(TIMEOUT):
                await node.cluster.wait_disconnected()
            status, _, body = await trio.to_thread.run_sync(get, node.port, "/ready")
            assert (status, json.loads(body)) == (503, {"ready": False, "reason": "Redis is unreachable"})
            assert (await trio.to_thread.run_sync(get, node.port, "/health"))[0] == 200
            own.start()
            with trio.fail_after(TIMEOUT):
                await node.cluster.wait_connected()
            assert (await trio.to_thread.run_sync(get, node.port, "/ready"))[0] == 200
            samples = await scrape(node.port)
            assert value(samples, "pipe_relay_redis_reconnects_total") == 1
            assert value(samples, "pipe_relay_ready") == 1
    finally:
        own.stop()
