"""The servers under test: how to start them, know they are up, and stop them.

Every scenario gets a freshly started server so that memory and CPU figures
are not polluted by an earlier scenario.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

BENCH = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


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
    """name: column title; command: argv template where {host}, {port} (WebSocket)
    and optionally {api_port} (REST, when not served on {port}) are substituted;
    publish: how the harness injects events ("frame", "rest" or "pipe", see publish.py)."""

    name: str
    command: list[str]
    publish: str
    app: App = field(default_factory=App)


def baseline_spec() -> ServerSpec:
    script = BENCH / "baselines" / "websockets_server.py"
    return ServerSpec("baseline", [sys.executable, str(script), "--host", "{host}", "--port", "{port}"], "frame")


def relay_spec(command: str, publish: str, app: str) -> ServerSpec:
    return ServerSpec("relay", shlex.split(command), publish, App.parse(app))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RunningServer:
    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.port = free_port()
        self.api_port = self.port
        while any("{api_port}" in a for a in spec.command) and self.api_port == self.port:
            self.api_port = free_port()
        self.argv = [a.format(host=HOST, port=self.port, api_port=self.api_port) for a in spec.command]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the server; closed in stop()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ws_base(self) -> str:
        return f"ws://{HOST}:{self.port}"

    def ws_url(self) -> str:
        return f"{self.ws_base()}/app/{self.spec.app.key}?protocol=7&client=js&version=8.6.0&flash=false"

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    async def start(self, within: float = 15.0) -> None:
        """Starts the server and returns once it completes a Pusher handshake."""
        self.proc = self.spawn()
        deadline = time.monotonic() + within
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                await self.probe()
                return
            except (OSError, TimeoutError, WebSocketException) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.spec.name} not ready after {within}s: {exc}\n{self.output()}") from exc
                await asyncio.sleep(0.05)

    async def probe(self) -> None:
        """One full handshake; also warms the server's code paths before 'RSS before' is taken."""
        async with asyncio.timeout(2), connect(self.ws_url(), compression=None) as ws:
            first = json.loads(await ws.recv())
            if first.get("event") != "pusher:connection_established":
                raise OSError(f"unexpected first frame {first}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # Short grace: a polite shutdown of 10k connections is not what we measure.
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
