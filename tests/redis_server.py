"""A real redis-server of the tests' own, on a free port (never one that happens to be running)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

READY = b"Ready to accept connections"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process: nothing saved to disk unless asked, stopped at the end.

    Args:
        port: the port to listen on (a free one when not given); kept across
            :meth:`restart`, so clients can come back to the same address.
        persistent: keep the data across :meth:`stop` and :meth:`start` in an
            append-only file written before each write is acknowledged.
    """

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        self.port = port or free_port()
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="pipe-relay-redis-")

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and return once it accepts connections (at most 10 s)."""
        binary = shutil.which("redis-server")
        if binary is None:  # pragma: no cover - tests/run installs it
            raise RuntimeError("redis-server is not installed (tests/run installs Debian's redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self._dir,
             "--logfile", "", "--daemonize", "no",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        seen = b""
        # redis-server says when it is ready; the pipe closes if it dies.
        for line in self.process.stdout:
            seen += line
            if READY in line:
                break
        else:
            raise RuntimeError(f"redis-server did not start:\n{seen.decode(errors='replace')}")
        # Its later output is not read: keep the pipe from filling.
        self.process.stdout.close()

    def stop(self) -> None:
        """Kill it (its data is gone, unless it is persistent)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        """Stop it and start a new one on the same port (empty, unless persistent)."""
        self.stop()
        self.start()


@contextmanager
def running_redis(*, persistent: bool = False) -> Iterator[RedisServer]:
    """A redis-server for the block (its files removed at the end)."""
    server = RedisServer(persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server._dir, ignore_errors=True)
