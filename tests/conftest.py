"""Shared fixtures (helpers live in tests/support.py)."""

from __future__ import annotations

import select
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from pipe_trio import RelayServer
from pipe_trio._websocket import TRANSPORT_VARIABLE
from tests.redis_server import RedisServer
from tests.support import start_relay

#: The server transports the adapter suite (modules marked ``both_transports``)
#: runs on: the fast one where it can run (Linux), and the portable one.
TRANSPORTS = ["fast", "portable"] if hasattr(select, "epoll") else ["portable"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test marked ``both_transports`` runs once per transport (ids ``[fast]``, ``[portable]``)."""
    if metafunc.definition.get_closest_marker("both_transports") is not None:
        metafunc.parametrize("relay_transport", TRANSPORTS, indirect=True)


@pytest.fixture(autouse=True)
def relay_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """The transport of every relay the test starts, in-process or not (None: the default).

    Set through the environment, before any other fixture of the test runs.
    """
    name: str | None = getattr(request, "param", None)
    if name == "portable":
        monkeypatch.setenv(TRANSPORT_VARIABLE, "portable")
    elif name == "fast":
        monkeypatch.delenv(TRANSPORT_VARIABLE, raising=False)
    return name


@pytest.fixture
async def relay_server(nursery: trio.Nursery) -> AsyncIterator[RelayServer]:
    """A relay with the default test apps on a free port, stopped at the end of the test."""
    yield await start_relay(nursery)


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """A redis-server of the test session's own, on a free port (tests use their own key prefixes)."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()
