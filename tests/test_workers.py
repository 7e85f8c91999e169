"""``pipe-relay serve --workers N``: real processes on one port, sharing a real redis-server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio

from tests.processes import Lines, background
from tests.redis_server import RedisServer, free_port, running_redis
from tests.test_server import http_request

PIPE_RELAY = str(Path(sys.executable).with_name("pipe-relay"))


def test_workers_need_redis() -> None:
    """Without --redis, --workers 2 stops at once with one line saying why (exit status 2)."""
    done = subprocess.run([PIPE_RELAY, "serve", "--workers", "2"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "pipe-relay: --workers needs --redis: the workers share their state through Redis"
    ]


async def _listening(lines: Lines, count: int) -> None:
    """Wait until ``count`` workers said they listen (in all, since the start)."""
    with trio.fail_after(30):
        while sum("listening on" in line for line in lines.lines) < count:
            await lines.changed()


async def _nodes_seen(port: int, wanted: int) -> set[str]:
    """The node ids answering GET / on ``port`` (new connections spread over the workers)."""
    seen: set[str] = set()
    with trio.fail_after(20):
        while len(seen) < wanted:
            status, _, body = await http_request(port, "/")
            assert status == 200
            seen.add(json.loads(body)["cluster"]["node"])
    return seen


async def test_two_workers_share_the_port_and_one_that_dies_comes_back() -> None:
    """Both workers answer on the port; a SIGKILLed worker is started again; SIGTERM stops them all."""
    with running_redis() as redis:
        await _workers(redis)


def _two_free_ports() -> int:
    """A port free a moment ago, with the next one free too."""
    while True:
        port = free_port()
        if port < 65535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


async def _workers(redis: RedisServer) -> None:
    port = free_port()
    metrics = _two_free_ports()
    argv = [PIPE_RELAY, "serve", "--workers", "2", "--port", str(port), "--app", "1:key:secret", "--redis", redis.url,
            "--metrics-port", str(metrics)]
    async with background(argv) as lines:
        first = await lines.expect("worker 0 started", timeout=20)
        await _listening(lines, 2)
        before = await _nodes_seen(port, 2)
        # Each worker has its metrics on a port of its own: --metrics-port, then + 1.
        for index in range(2):
            status, _, body = await http_request(metrics + index, "/metrics")
            assert status == 200 and b"pipe_relay_redis_connected 1.0" in body
        # SIGHUP reaches every worker, which reloads.
        lines.process.send_signal(signal.SIGHUP)
        with trio.fail_after(20):
            while sum("reloaded" in line for line in lines.lines) < 2:
                await lines.changed()
        pid = int(re.search(r"pid (\d+)", first).group(1))  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        await lines.expect(f"worker 0 (pid {pid}) exited with status -9; starting it again", timeout=20)
        await _listening(lines, 3)
        after = await _nodes_seen(port, 2)
        assert len(after - before) == 1, "the restarted worker is a new node"
        lines.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await lines.process.wait() == 0
        assert any("worker 0" in line and "stopped" in line for line in lines.lines)
        assert any("worker 1" in line and "stopped" in line for line in lines.lines)
