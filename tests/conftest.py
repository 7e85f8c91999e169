"""Shared fixtures (helpers live in tests/support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from pipe_trio import RelayServer
from tests.redis_server import RedisServer
from tests.support import start_relay


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
