"""A cluster of real ``pipe-relay serve`` processes, and Debian's nginx in front of them as docs/cluster.md says.

:func:`relay_nodes` starts nodes from one configuration file (apps and a ``[cluster]`` table) on free ports
and yields them once each said it listens; :func:`nginx` runs nginx (:mod:`tests.nginx_front`) with the
load balancer configuration of ``docs/cluster.md``, its addresses filled in (:func:`cluster_block`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from tests.nginx_front import documented_block
from tests.nginx_front import nginx as run_nginx
from tests.processes import Lines, background
from tests.redis_server import free_port
from tests.support import APP_ID, APP_KEY, APP_SECRET
from tests.test_server import http_request

ROOT = Path(__file__).resolve().parent.parent
PIPE_RELAY = str(Path(sys.executable).with_name("pipe-relay"))
#: Liveness of the test clusters, set through the [cluster] table: short, to keep the tests short.
BEAT, DEAD_AFTER = 0.2, 1.0
#: The addresses and port the documented configuration names, replaced by the test's own.
DOC_NODES = re.compile(r"\bserver 10\.0\.0\.\d+:6001\b")
DOC_LISTEN = re.compile(r"\blisten 80;")


def cluster_config(redis_url: str, prefix: str, webhook_url: str | None = None) -> str:
    """A configuration file for the test app, naming the cluster in its ``[cluster]`` table.

    With ``webhook_url``, the occupancy and presence webhooks go there.
    """
    text = f"""
[cluster]
redis = "{redis_url}"
prefix = "{prefix}"
beat = {BEAT}
dead_after = {DEAD_AFTER}

[[apps]]
id = "{APP_ID}"
key = "{APP_KEY}"
secret = "{APP_SECRET}"

[apps.features]
client_events = true
user_authentication = true
subscription_count = true
"""
    if webhook_url is not None:
        kinds = '["channel_occupied", "channel_vacated", "member_added", "member_removed"]'
        text += f'\n[[apps.webhooks]]\nurl = "{webhook_url}"\nkinds = {kinds}\n'
    return text


class Node:
    """One running ``pipe-relay serve`` node (``port`` is where it listens)."""

    def __init__(self, lines: Lines, port: int, node_id: str) -> None:
        self.lines = lines
        self.port = port
        self.id = node_id

    def kill(self, signum: int = signal.SIGKILL) -> None:
        """Send ``signum``; by default SIGKILL: the node stops at once and tells nobody."""
        os.kill(self.lines.process.pid, signum)

    async def status(self) -> dict[str, Any]:
        """Its ``GET /`` document."""
        status, _, body = await http_request(self.port, "/")
        assert status == 200
        document: dict[str, Any] = json.loads(body)
        return document

    def count(self, text: str) -> int:
        """How many of its log lines so far contain ``text``."""
        return sum(text in line for line in self.lines.lines)


@asynccontextmanager
async def relay_nodes(config: Path, count: int = 3) -> AsyncIterator[list[Node]]:
    """Start ``count`` nodes with ``--config config`` on free ports; SIGTERM at the end."""
    # Only the file names the cluster: variables of the shell running the tests would win over it.
    env = {"PIPE_RELAY_REDIS": "", "PIPE_RELAY_REDIS_PREFIX": ""}
    argv = [PIPE_RELAY, "serve", "--port", "0", "--config", str(config)]
    async with AsyncExitStack() as stack:
        started = [await stack.enter_async_context(background(argv, env=env)) for _ in range(count)]
        nodes = []
        for lines in started:
            joined = await lines.expect("joins the cluster", timeout=30)
            listening = await lines.expect("listening on", timeout=30)
            port = re.search(r"listening on [^ ]+:(\d+) ", listening)
            node_id = re.search(r"node (\w+) joins", joined)
            assert port is not None and node_id is not None
            nodes.append(Node(lines, int(port.group(1)), node_id.group(1)))
        yield nodes


def cluster_block(block: str, listen_port: int, node_ports: Sequence[int]) -> str:
    """``block`` (docs/cluster.md) with the test's addresses: one node per documented server line, its port."""
    assert len(DOC_NODES.findall(block)) == len(node_ports), "one documented server line per node"
    addresses = iter(node_ports)
    block = DOC_NODES.sub(lambda _: f"server 127.0.0.1:{next(addresses)}", block)
    block, listens = DOC_LISTEN.subn(f"listen 127.0.0.1:{listen_port};", block)
    assert listens == 1, "the documented server block listens once"
    return block


@asynccontextmanager
async def nginx(node_ports: Sequence[int]) -> AsyncIterator[int]:
    """nginx in the foreground with docs/cluster.md's configuration before ``node_ports``; yields its port."""
    port = free_port()
    block = cluster_block(documented_block("cluster.md"), port, node_ports)
    async with run_nginx(lambda _prefix: block):
        yield port


async def wait_for_line(nodes: Sequence[Node], text: str, timeout: float = 20.0) -> None:  # noqa: ASYNC109
    """Wait until every node printed a line containing ``text``."""
    with trio.fail_after(timeout):
        for node in nodes:
            await node.lines.expect(text, timeout=timeout)
