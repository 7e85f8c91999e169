"""Test helpers shared by every suite: the test apps and a relay on a free port."""

from __future__ import annotations

import importlib.machinery
from collections.abc import Sequence

import pytest
import trio

import pipe_proto.relay.relay
from pipe_proto import App, Features, Limits, Relay
from pipe_trio import RelayServer, serve

APP_ID, APP_KEY, APP_SECRET = "1", "app-key", "app-secret"

#: Whether the core under test is the compiled build (setup.py): its classes
#: and module functions cannot be replaced, so tests that plant a bug by
#: replacing one run on the pure build only.
COMPILED_CORE = (pipe_proto.relay.relay.__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
pure_core_only = pytest.mark.skipif(COMPILED_CORE, reason="replaces a part of the core, which a compiled core does not allow")


def default_apps() -> list[App]:
    """App 1 (everything on), app 2 (client events off), app 3 (disabled)."""
    return [
        App(id=APP_ID, key=APP_KEY, secret=APP_SECRET),
        App(id="2", key="quiet-key", secret="quiet-secret", features=Features(client_events=False)),
        App(id="3", key="off-key", secret="off-secret", enabled=False),
        App(id="4", key="tiny-key", secret="tiny-secret", limits=Limits(max_connections=1)),
    ]


async def start_relay(
    nursery: trio.Nursery, apps: Sequence[App] | None = None, *, port: int = 0, id_base: int = 1000, **options: object
) -> RelayServer:
    """Serve a new relay on 127.0.0.1 and ``port`` (a free one by default); returns the running server."""
    relay = Relay(list(apps) if apps is not None else default_apps(), id_base=id_base)
    server: RelayServer = await nursery.start(lambda task_status: serve(relay, "127.0.0.1", port, task_status=task_status, **options))
    return server


def url_of(server: RelayServer, scheme: str = "ws") -> str:
    """The base URL of a server started by :func:`start_relay`."""
    return f"{scheme}://127.0.0.1:{server.port}"


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read ``stream`` until ``marker`` has appeared (fails if it ends first)."""
    seen = b""
    while marker not in seen:
        chunk = await stream.receive_some(65536)
        assert chunk, f"ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen
