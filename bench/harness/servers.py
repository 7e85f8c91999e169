"""The servers under test: how to start them, know they are up, and stop them.

Every scenario gets a freshly started server so that memory and CPU figures
are not polluted by an earlier scenario. A server may be several processes:
the relay with ``--workers 2`` (one port, a supervisor and its workers), or
two relay nodes on ports of their own joined through a redis-server that the
harness starts. Then the load generator's sockets ("clients") go to the last
node and publishers and Pipe backends ("backends") to the first, so every
event crosses from one node to the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

BENCH = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SOKETI = BENCH / "soketi" / "node_modules" / "@soketi" / "soketi" / "bin" / "server.js"
RELAY_CONFIG = BENCH / "relay.toml"
# Events per REST batch_events both servers take: bench/relay.toml's, given to Soketi too.
MAX_BATCH: int = tomllib.loads(RELAY_CONFIG.read_text())["apps"][0]["limits"]["max_batch_events"]
#: Where the harness's webhook receiver listens, on the port the server was told.
WEBHOOK_PATH = "/pusher/webhooks"


@dataclass(frozen=True)
class App:
    app_id: str = "1"
    key: str = "key"
    secret: str = "secret"

    @classmethod
    def parse(cls, spec: str) -> App:
        app_id, key, secret = spec.split(":", 2)
        return cls(app_id, key, secret)


@dataclass(frozen=True)
class ServerSpec:
    """name: column title; kind: "baseline", "soketi" or "relay" (what it can run);
    command: argv template where {host}, {port} (WebSocket), {api_port} (REST,
    when not served on {port}), {config} (a configuration file the harness
    writes for this start) and {redis} (the URL of the harness's redis-server)
    are substituted; publish: how the harness injects events ("frame", "rest"
    or "pipe", see publish.py); nodes: processes started, each on its port;
    redis: start a redis-server for this server's processes."""

    name: str
    kind: str
    command: list[str]
    publish: str
    app: App = field(default_factory=App)
    nodes: int = 1
    redis: bool = False


def baseline_spec() -> ServerSpec:
    script = BENCH / "baselines" / "websockets_server.py"
    return ServerSpec(
        "baseline", "baseline", [sys.executable, str(script), "--host", "{host}", "--port", "{port}"], "frame"
    )


def soketi_spec(app: str) -> ServerSpec | None:
    """Soketi 1.6.1 from bench/soketi (None when `npm ci` has not been run there)."""
    if not SOKETI.exists():
        return None
    node = shutil.which("node") or "node"
    return ServerSpec("soketi", "soketi", [node, str(SOKETI), "start", "--config={config}"], "rest", App.parse(app))


def relay_spec(command: str, publish: str, app: str) -> ServerSpec:
    return ServerSpec("relay", "relay", shlex.split(command), publish, App.parse(app))


def cluster_variants(relay: ServerSpec) -> dict[str, ServerSpec]:
    """The relay's cluster set-ups, each beside the one process in the benchmark's second table."""
    redis = ["--redis", "{redis}"]
    return {
        "--redis": replace(relay, name="relay --redis", command=[*relay.command, *redis], redis=True),
        "--workers 2": replace(
            relay, name="relay --workers 2", command=[*relay.command, "--workers", "2", *redis], redis=True
        ),
        "2 nodes": replace(relay, name="relay, 2 nodes", command=[*relay.command, *redis], redis=True, nodes=2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def soketi_config(spec: ServerSpec, port: int, webhook_port: int) -> dict[str, object]:
    """Soketi's JSON configuration: the benchmark's app without rate limits (as bench/relay.toml
    lifts the relay's), client events on and sent to the harness's webhook receiver."""
    return {
        "host": HOST,
        "port": port,
        "metrics.port": free_port(),
        # Its UDP discovery of other Soketi nodes binds this port: one of its own.
        "cluster.port": free_port(),
        "shutdownGracePeriod": 500,
        "appManager.array.apps": [{
            "id": spec.app.app_id, "key": spec.app.key, "secret": spec.app.secret, "enabled": True,
            "enableClientMessages": True, "maxConnections": -1, "maxBackendEventsPerSecond": -1,
            "maxClientEventsPerSecond": -1, "maxReadRequestsPerSecond": -1,
            "maxEventBatchSize": MAX_BATCH,
            "webhooks": [{"url": f"http://{HOST}:{webhook_port}{WEBHOOK_PATH}", "event_types": ["client_event"]}],
        }],
    }


def relay_config(webhook_port: int) -> str:
    """bench/relay.toml with the harness's webhook receiver added for client events."""
    return RELAY_CONFIG.read_text() + (
        f'\n[[apps.webhooks]]\nurl = "http://{HOST}:{webhook_port}{WEBHOOK_PATH}"\nkinds = ["client_event"]\n'
    )


class RedisProcess:
    """A redis-server of the harness's own on a free port, nothing saved to disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, within: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (tests/run installs Debian's redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--logfile", "", "--daemonize", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + within
        seen = b""
        for line in self.proc.stdout:  # it says when it is ready; the pipe closes if it dies
            seen += line
            if b"Ready to accept connections" in line:
                break
            if time.monotonic() > deadline:
                break
        else:
            raise RuntimeError(f"redis-server did not start:\n{seen.decode(errors='replace')}")
        self.proc.stdout.close()  # its later output is not read

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RunningServer:
    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.ports = [free_port() for _ in range(spec.nodes)]
        #: Where the harness's webhook receiver must listen (scenarios that use webhooks start one there).
        self.webhook_port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{spec.kind}-"))
        self.redis = RedisProcess() if spec.redis else None
        self.logs: list[IO[bytes]] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        api_ports = [self._api_port(port) for port in self.ports]
        self.api_port = api_ports[0]  # REST requests go to the backends' node
        self._argvs = [self._argv(port, api) for port, api in zip(self.ports, api_ports, strict=True)]

    def _api_port(self, port: int) -> int:
        if not any("{api_port}" in a for a in self.spec.command):
            return port
        api = free_port()
        while api == port:
            api = free_port()
        return api

    def _argv(self, port: int, api_port: int) -> list[str]:
        values = {"host": HOST, "port": port, "api_port": api_port, "config": self.tmp / f"{port}.conf",
                  "redis": self.redis.url if self.redis else ""}
        return [a.format(**values) for a in self.spec.command]

    @property
    def pid(self) -> int:
        """The first process's id (the only one, but for several nodes)."""
        return self.procs[0].pid

    @property
    def pids(self) -> list[int]:
        """Every process of the server (CPU and memory figures cover their trees)."""
        return [p.pid for p in self.procs]

    @property
    def redis_pid(self) -> int | None:
        return self.redis.proc.pid if self.redis is not None and self.redis.proc is not None else None

    @property
    def port(self) -> int:
        """The clients' node."""
        return self.ports[-1]

    def ws_base(self) -> str:
        """Where the load generator's sockets (and the harness's watcher) connect: the clients' node."""
        return f"ws://{HOST}:{self.port}"

    def backend_ws_base(self) -> str:
        """Where publishers' and backends' pipes connect: the first node (the other one, with two)."""
        return f"ws://{HOST}:{self.ports[0]}"

    def ws_url(self) -> str:
        return f"{self.ws_base()}/app/{self.spec.app.key}?protocol=7&client=js&version=8.6.0&flash=false"

    def _write_config(self, port: int) -> None:
        path = self.tmp / f"{port}.conf"
        if self.spec.kind == "soketi":
            path.write_text(json.dumps(soketi_config(self.spec, port, self.webhook_port)))
        else:
            path.write_text(relay_config(self.webhook_port))

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server; closed in stop()
        self.logs.append(log)
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    async def start(self, within: float = 30.0) -> None:
        """Starts the server and returns once every node completes a Pusher handshake."""
        if self.redis is not None:
            self.redis.start()
        for port, argv in zip(self.ports, self._argvs, strict=True):
            self._write_config(port)
            self.procs.append(self.spawn(argv))
        deadline = time.monotonic() + within
        for proc, port in zip(self.procs, self.ports, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{self.spec.name} exited with {proc.returncode}:\n{self.output()}")
                try:
                    await self.probe(port)
                    break
                except (OSError, TimeoutError, WebSocketException) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{self.spec.name} not ready after {within}s: {exc}\n{self.output()}"
                        ) from exc
                    await asyncio.sleep(0.05)

    async def probe(self, port: int) -> None:
        """One full handshake; also warms the server's code paths before 'RSS before' is taken."""
        url = f"ws://{HOST}:{port}/app/{self.spec.app.key}?protocol=7&client=js&version=8.6.0&flash=false"
        async with asyncio.timeout(2), connect(url, compression=None) as ws:
            first = json.loads(await ws.recv())
            if first.get("event") != "pusher:connection_established":
                raise OSError(f"unexpected first frame {first}")

    def output(self) -> str:
        out = []
        for log in self.logs:
            log.seek(0)
            out.append(log.read()[-4000:].decode(errors="replace"))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                # Short grace: a polite shutdown of 10k connections is not what we measure.
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
        for log in self.logs:
            log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
