"""The Redis ACL that docs/cluster.md gives the nodes' user is enough for a cluster to work."""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

import coredis
import pusher
import pytest
import trio

from pipe_proto import Relay
from pipe_proto.cluster import ClusterDirectory
from pipe_proto.pusher.events import MemberAdded
from pipe_trio import RelayServer, connect, serve
from tests.redis_server import running_redis
from tests.test_cluster import KEY, SECRET, app, next_of, sdk

DOC = Path(__file__).resolve().parent.parent / "docs" / "cluster.md"


def documented_acl() -> list[str]:
    """The rules of the ``ACL SETUSER`` line of docs/cluster.md (for the default prefix)."""
    found = re.findall(r"^ACL SETUSER pipe-relay (.*)$", DOC.read_text(), re.MULTILINE)
    assert len(found) == 1, "docs/cluster.md has one ACL SETUSER line"
    return str(found[0]).split()


async def test_nodes_work_with_the_documented_acl(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    """Two nodes whose Redis user has only the documented rights: joins, presence, REST, events, heartbeats."""
    with running_redis() as redis:
        async with coredis.Redis.from_url(redis.url, decode_responses=True) as admin:
            assert await admin.acl_setuser("pipe-relay", *[r.replace("SECRET", "pw") for r in documented_acl()])
            url = f"redis://pipe-relay:pw@127.0.0.1:{redis.port}/0"
            nodes: list[RelayServer] = []
            for index in range(2):
                directory = partial(ClusterDirectory, node=f"n{index}", beat=0.1, dead_after=0.6)
                relay = Relay([app()], id_base=(index + 1) * 10**6, directory=directory)
                nodes.append(await nursery.start(partial(serve, relay, "127.0.0.1", 0, redis=url)))
            rest = pusher.Pusher(app_id="1", key=KEY, secret=SECRET, host="127.0.0.1", port=nodes[1].port, ssl=False)
            async with (
                connect(f"ws://127.0.0.1:{nodes[0].port}", KEY, secret=SECRET) as a,
                connect(f"ws://127.0.0.1:{nodes[1].port}", KEY, secret=SECRET) as b,
            ):
                await a.subscribe("presence-room", channel_data={"user_id": "alice"})
                await b.subscribe("presence-room", channel_data={"user_id": "bob"})
                assert (await next_of(a, MemberAdded)).user_id == "bob"
                # Answered after each node's first heartbeat and look for dead nodes (calls go in order).
                users = await sdk(lambda: rest.users_info("presence-room"))
                assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]
                await sdk(lambda: rest.trigger("presence-room", "e", {}))
                assert (await next_of(a, "e")).event == "e"
            assert sorted(await admin.zrange("pipe-relay:nodes", 0, -1)) == ["n0", "n1"]
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
