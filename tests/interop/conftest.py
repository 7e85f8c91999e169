"""Interop tests run against one relay and against a cluster of three behind a round-robin address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from tests.cluster_front import start_cluster
from tests.redis_server import RedisServer
from tests.support import default_apps, start_relay


@pytest.fixture(params=["one relay", "three nodes"])
async def relay_server(request: pytest.FixtureRequest, nursery: trio.Nursery, redis: RedisServer) -> AsyncIterator[Any]:
    """One relay with the test apps; or three cluster nodes, each new connection going to the next."""
    if request.param == "one relay":
        yield await start_relay(nursery)
    else:
        yield await start_cluster(nursery, default_apps(), redis.url)
