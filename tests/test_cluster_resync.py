"""What presence subscribers and webhooks see when the cluster's Redis restarts, with or without its data.

A Redis that keeps its data (an append-only file) comes back as it was: the nodes' resync finds their
shares where they left them and changes nothing, so nobody is told anything again. A Redis that lost its
data gets every node's share added back, so the arrivals are announced again (docs/cluster.md, "When
Redis dies or restarts"), but never to a node that holds the member itself: a socket is never told that
its own user joined, as a lone relay never does.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from pipe_proto import WebhookTarget
from pipe_proto.pusher.events import MemberAdded, MemberRemoved, Message
from tests.http_receiver import HttpReceiver
from tests.redis_server import running_redis
from tests.test_cluster import TIMEOUT, app, client, cluster, next_of, sdk

ROOM = "presence-room"


async def _restart(nursery: trio.Nursery, *, persistent: bool) -> tuple[dict[str, list[Any]], list[tuple[str, ...]]]:
    """alice on node 0 and bob on node 1 in ROOM; Redis killed and started again.

    Returns the member events each socket got between the restart and a marker published after both nodes
    resynchronised, and every webhook event sent until each node's next one (a channel occupied after
    the resync: a node sends its webhooks in order).
    """
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    hooked = app(webhooks=[WebhookTarget(url=receiver.url)])
    with running_redis(persistent=persistent) as own:
        async with cluster(nursery, own, hooked, nodes=2) as found, client(found, 0) as a, client(found, 1) as b:
            await a.subscribe(ROOM, channel_data={"user_id": "alice"})
            await b.subscribe(ROOM, channel_data={"user_id": "bob"})
            assert (await next_of(a, MemberAdded)).user_id == "bob"
            await trio.to_thread.run_sync(own.stop)
            with trio.fail_after(TIMEOUT):
                for node in found.nodes:
                    assert node.cluster is not None
                    await node.cluster.wait_disconnected()
            await trio.to_thread.run_sync(own.start)
            with trio.fail_after(TIMEOUT):
                for node in found.nodes:
                    assert node.cluster is not None
                    await node.cluster.wait_connected()
            await sdk(lambda: found.rest(0).trigger(ROOM, "marker", {}))
            seen: dict[str, list[Any]] = {}
            for socket, me in ((a, "alice"), (b, "bob")):
                seen[me] = []
                while not isinstance(event := await next_of(socket, None, ROOM), Message):
                    if isinstance(event, MemberAdded | MemberRemoved):
                        seen[me].append(event)
            await a.subscribe("after-0")
            await b.subscribe("after-1")
            with trio.fail_after(TIMEOUT):
                while True:
                    events = [
                        tuple(e[k] for k in ("name", "channel", "user_id") if k in e)
                        for request in receiver.received
                        for e in json.loads(request.body)["events"]
                    ]
                    if {("channel_occupied", "after-0"), ("channel_occupied", "after-1")} <= set(events):
                        return seen, events
                    await receiver.wait_for(len(receiver.received) + 1)


async def test_a_redis_that_kept_its_data_restarts_without_repeating_anything(nursery: trio.Nursery) -> None:
    """With an append-only file, no member event and no webhook is sent again after the restart."""
    seen, webhooks = await _restart(nursery, persistent=True)
    assert seen == {"alice": [], "bob": []}
    assert sorted(webhooks) == sorted([
        ("channel_occupied", ROOM), ("member_added", ROOM, "alice"), ("member_added", ROOM, "bob"),
        ("channel_occupied", "after-0"), ("channel_occupied", "after-1"),
        ("subscription_count", "after-0"), ("subscription_count", "after-1"),  # the markers' joins, as ever
    ])  # fmt: skip


async def test_a_redis_that_lost_its_data_hears_every_arrival_again(nursery: trio.Nursery) -> None:
    """Without its data, the cluster's members and channels are announced again: events and webhooks."""
    seen, webhooks = await _restart(nursery, persistent=False)
    # Each node's members are announced to the nodes that resynchronised before it (and itself).
    announced = [(me, e.user_id) for me, events in seen.items() for e in events if isinstance(e, MemberAdded)]
    assert announced and all(user in ("alice", "bob") for _, user in announced)
    assert not [e for events in seen.values() for e in events if isinstance(e, MemberRemoved)]
    assert webhooks.count(("channel_occupied", ROOM)) == 2
    assert webhooks.count(("member_added", ROOM, "alice")) == webhooks.count(("member_added", ROOM, "bob")) == 2


async def test_no_socket_is_told_that_its_own_user_joined_after_redis_lost_its_data(nursery: trio.Nursery) -> None:
    """A lone relay never tells a socket that its own user joined; nor does a resync after a data loss."""
    seen, _ = await _restart(nursery, persistent=False)
    for me, events in seen.items():
        assert me not in {e.user_id for e in events if isinstance(e, MemberAdded)}, f"{me} was told it joined"
