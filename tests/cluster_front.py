"""Three relay nodes of one cluster behind one address, each new connection going to the next node.

Tests written for one relay run against this as they are: it has the ``port`` they connect to, and the
``conns`` and ``relay.counters`` they look at, summed over the nodes.
"""

from __future__ import annotations

import contextlib
from collections import ChainMap
from collections.abc import Sequence
from functools import partial
from itertools import count
from typing import Any

import trio

from pipe_proto import App, Relay
from pipe_proto.cluster import ClusterDirectory
from pipe_trio import RelayServer, serve

_clusters = count(1)


class _Relays:
    """The nodes' relays seen as one: counters summed; publishing on the first node."""

    def __init__(self, nodes: Sequence[RelayServer]) -> None:
        self.nodes = nodes

    def publish(self, *args: Any) -> Any:
        return self.nodes[0].relay.publish(*args)

    @property
    def counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for node in self.nodes:
            for name, value in node.relay.counters.items():
                total[name] = total.get(name, 0) + value
        return total


class ClusterFront:
    """Nodes and a round-robin TCP proxy in front of them."""

    def __init__(self, nodes: list[RelayServer], port: int) -> None:
        self.nodes = nodes
        self.port = port
        self.relay = _Relays(nodes)

    def execute(self, outputs: Any) -> None:
        """Carry out outputs of the first node's relay (see ``relay.publish``)."""
        self.nodes[0].execute(outputs)

    def now(self) -> float:
        return self.nodes[0].now()

    @property
    def conns(self) -> ChainMap[str, Any]:
        """Every node's connections."""
        return ChainMap(*(node.conns for node in self.nodes))


async def _pipe(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream) -> None:
    try:
        async for chunk in source:
            await sink.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        # One way done: tell the other side, so a close travels on.
        if isinstance(sink, trio.SocketStream):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await sink.send_eof()


class Forward:
    """A TCP forwarder to one port that can change: a load balancer moving to a surviving node."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.port = 0

    async def serve(self, nursery: trio.Nursery, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)

        async def handle(client: trio.SocketStream) -> None:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
            except OSError:
                await client.aclose()
                return
            async with client, upstream, trio.open_nursery() as both:
                both.start_soon(_pipe, client, upstream)
                both.start_soon(_pipe, upstream, client)

        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def round_robin(nursery: trio.Nursery, ports: list[int], task_status: trio.TaskStatus[int]) -> None:
    """A TCP proxy on a free port (given to ``task_status``): each connection goes to the next of ``ports``.

    A port that refuses is skipped for that connection, as a load balancer does with a dead node.
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    turn = count()

    async def handle(client: trio.SocketStream) -> None:
        first = next(turn)
        for attempt in range(len(ports)):
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", ports[(first + attempt) % len(ports)])
                break
            except OSError:
                continue
        else:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as both:
            both.start_soon(_pipe, client, upstream)
            both.start_soon(_pipe, upstream, client)

    await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def start_cluster(
    nursery: trio.Nursery, apps: list[App], redis_url: str, nodes: int = 3, *, beat: float = 0.2,
    dead_after: float = 1.0,
) -> ClusterFront:
    """Start ``nodes`` relays of a new cluster on ``redis_url`` and the round-robin proxy before them."""
    prefix = f"front-{next(_clusters)}-{trio.current_time():.0f}"
    servers: list[RelayServer] = []
    for index in range(nodes):
        directory = partial(ClusterDirectory, node=str(index + 1), prefix=prefix, beat=beat, dead_after=dead_after)
        relay = Relay(apps, directory=directory)
        server: RelayServer = await nursery.start(
            lambda task_status, relay=relay: serve(relay, "127.0.0.1", 0, redis=redis_url, task_status=task_status)
        )
        servers.append(server)
    port = await nursery.start(round_robin, nursery, [s.port for s in servers])
    return ClusterFront(servers, port)


async def settle(server: Any) -> None:
    """On a cluster, wait until every node heard of what happened before in Redis (a pipe subscribing, say).

    A socket of each node joins a channel: its answer comes through that node's inbox after
    everything Redis sent there earlier. Nothing to wait for on one relay.
    """
    if not isinstance(server, ClusterFront):
        return
    from pipe_trio.client import connect
    from tests.support import APP_KEY, APP_SECRET

    for node in server.nodes:
        async with connect(f"ws://127.0.0.1:{node.port}", APP_KEY, secret=APP_SECRET) as barrier:
            await barrier.subscribe("settle")
