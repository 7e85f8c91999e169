"""The Pipe across a cluster of real processes: a node SIGKILLed under a backend, nothing lost.

Three ``pipe-relay serve`` nodes on a real redis-server; pusher-js senders on nodes A and B send numbered
back-channel messages; two ``open_pipe`` backend processes (tests/workers/pipe_worker.py) of one group are
connected to B and, through a load balancer, to C. C is SIGKILLed mid-stream; the balancer then sends its
backend to A, where it resumes its session. Every message is counted. The 2011 client, through the same
kind of balancer, reconnects too: 0.2 has no sessions, so what happened while it was away is lost
(pipe-protocol.md 6.1), and the rest arrives.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import trio

from pipe_trio.pusher_client import connect
from tests.cluster_front import Forward
from tests.cluster_processes import Node, cluster_config, relay_nodes
from tests.interop.test_pipe_groups_e2e import Worker, assert_per_socket_order
from tests.processes import background
from tests.redis_server import RedisServer
from tests.support import APP_ID, APP_KEY, APP_SECRET

from .node import Driver, open_driver

pytestmark = [pytest.mark.interop, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SENDERS, PER_PHASE = 10, 100
_clusters = count(1)

#: The app's pipe settings and a back-channel limit the senders' bursts stay under.
PIPE_APP = """
[apps.limits]
back_channel_per_second = 1000000

[apps.pipe]
resume_grace = 30.0
"""


@asynccontextmanager
async def pipe_cluster(tmp_path: Path, redis: RedisServer) -> AsyncIterator[list[Node]]:
    config = tmp_path / f"pipes-{next(_clusters)}.toml"
    config.write_text(cluster_config(redis.url, f"pipes-{config.stem}-{trio.current_time():.0f}") + PIPE_APP)
    async with relay_nodes(config, 3) as nodes:
        yield nodes


class Backends:
    """Backend processes of one group, and a way to wait on all their output."""

    def __init__(self, stack: AsyncExitStack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.changed = trio.Event()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def start(self, name: str, port: int) -> Worker:
        state = self.tmp / f"{name}.state"
        argv = [sys.executable, "-m", "tests.workers.pipe_worker", f"ws://127.0.0.1:{port}", APP_ID, APP_KEY,
                APP_SECRET, "workers", str(state)]
        lines = await self.stack.enter_async_context(background(argv, cwd=str(ROOT), on_line=self._notify))
        await lines.expect("READY", timeout=20)
        return Worker(lines, state)

    async def until(self, condition: Any, timeout: float = 60) -> None:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while not condition():
                await self.changed.wait()


class At:
    """An address pusher-js connects to (driver.js reads ``port``)."""

    def __init__(self, port: int) -> None:
        self.port = port


async def settle(*ports: int) -> None:
    """Every node has heard what Redis told it before (a pipe subscribing): a join's answer comes after it."""
    for port in ports:
        async with connect(f"ws://127.0.0.1:{port}", APP_KEY, secret=APP_SECRET) as barrier:
            await barrier.subscribe("settled")


async def send(js: Driver, phase: int) -> set[int]:
    """Each sender sends PER_PHASE numbered messages; returns their numbers."""
    sent: set[int] = set()
    for i in range(SENDERS):
        first = i * 100_000 + phase * PER_PHASE
        assert await js.call("send_events", f"s{i}", event="work", first=first, count=PER_PHASE, timeout=30) == PER_PHASE
        sent |= set(range(first, first + PER_PHASE))
    return sent


def numbers(workers: list[Worker]) -> Counter[int]:
    return Counter(n for w in workers for (n, *_rest) in w.processed())


async def test_a_node_killed_under_a_backend_loses_nothing(tmp_path: Path, redis: RedisServer, nursery: trio.Nursery) -> None:
    """SIGKILL the node of one backend mid-stream: it resumes on another node; every message processed, once."""
    async with pipe_cluster(tmp_path, redis) as (a, b, c), open_driver() as js, AsyncExitStack() as stack:
        balancer = Forward(c.port)
        await nursery.start(balancer.serve, nursery)
        backends = Backends(stack, tmp_path)
        workers = [await backends.start("on-b", b.port), await backends.start("via-balancer", balancer.port)]
        await settle(a.port, b.port, c.port)
        for i in range(SENDERS):
            await js.connected(f"s{i}", At((a, b)[i % 2].port), key=APP_KEY)
        expected = await send(js, 0)
        await backends.until(lambda: len(numbers(workers)) >= len(expected) // 2)
        c.kill()
        balancer.target = a.port
        expected |= await send(js, 1)
        await backends.until(lambda: set(numbers(workers)) >= expected, timeout=90)

        counts = numbers(workers)
        assert set(counts) == expected, "every message processed"
        redelivered = {n for w in workers for n, _s, _q, r, _a in w.processed() if r}
        assert {n for n, times in counts.items() if times > 1} <= redelivered, "duplicates only among redelivered"
        moved = workers[1]
        after_kill = [n for n, *_ in moved.processed() if n % 100_000 >= PER_PHASE]
        assert after_kill, "the backend of the dead node went on, on another node"
        for worker in workers:
            assert_per_socket_order(worker)


async def test_the_2011_client_comes_back_after_its_node_dies(tmp_path: Path, redis: RedisServer, nursery: trio.Nursery) -> None:
    """The 2011 client's node dies: no crash anywhere; it reconnects through the balancer and gets what follows."""
    async with (
        pipe_cluster(tmp_path, redis) as (a, b, c),
        open_driver() as js,
        open_driver("pipe2011.js") as legacy,
    ):
        balancer = Forward(c.port)
        await nursery.start(balancer.serve, nursery)
        config = {"key": APP_KEY, "secret": APP_SECRET, "app_id": int(APP_ID), "host": "127.0.0.1", "port": balancer.port}
        await legacy.call("connect", config=config, events=["socket_message"])
        await legacy.expect({"type": "connected"})
        await settle(a.port, b.port, c.port)
        for i in range(SENDERS):
            await js.connected(f"s{i}", At((a, b)[i % 2].port), key=APP_KEY)
        before = await send(js, 0)
        for _ in before:
            await legacy.expect({"type": "socket_event", "event": "work"})
        c.kill()
        balancer.target = a.port
        # It reconnects (the 2011 client retries on its own) and subscribes again on a surviving node.
        await legacy.expect({"type": "connected"}, timeout=30)
        await settle(a.port, b.port)
        after = await send(js, 1)
        got = Counter()
        with trio.fail_after(30):
            while not set(got) >= after:
                report = await legacy.expect({"type": "socket_event", "event": "work"})
                got[report["data"]["n"]] += 1
        assert max(got.values()) == 1
        for node in (a, b):
            assert (await node.status())["status"] == "ok"
