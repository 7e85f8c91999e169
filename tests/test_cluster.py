"""Cluster mode, in one process: three relay nodes on a real redis-server, clients on different nodes.

Each test gets its own cluster name (key prefix) in one Redis started for the session, so tests never
see each other's data. Nodes beat every 0.1 s and are dead after 0.6 s of silence, to keep the tests short.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from itertools import count
from typing import Any

import pusher
import pytest
import trio

from pipe_proto import App, Features, Limits, Relay, WebhookTarget
from pipe_proto.cluster import ClusterDirectory
from pipe_proto.pusher.events import (
    CacheMiss,
    Error,
    MemberAdded,
    MemberRemoved,
    Message,
    SubscriptionCount,
    WatchlistEvents,
)
from pipe_trio import RelayServer, connect, serve
from pipe_trio.pusher_client import PusherClient, SubscriptionFailed
from tests.http_receiver import HttpReceiver
from tests.redis_server import RedisServer

pytestmark = pytest.mark.both_transports

KEY, SECRET = "app-key", "app-secret"
BEAT, DEAD_AFTER = 0.1, 0.6
TIMEOUT = 10.0
_clusters = count(1)


class Cluster:
    """Nodes of one cluster in this process, each in a cancel scope of its own (cancelled: it died)."""

    def __init__(self, nursery: trio.Nursery, redis: RedisServer, apps: list[App]) -> None:
        self.nursery = nursery
        self.redis = redis
        self.apps = apps
        self.prefix = f"test-{next(_clusters)}-{trio.current_time():.0f}"
        self.nodes: list[RelayServer] = []
        self.scopes: list[trio.CancelScope] = []

    async def start(self, count: int = 3) -> list[RelayServer]:
        for _ in range(count):
            await self.add()
        return self.nodes

    async def add(self) -> RelayServer:
        index = len(self.nodes)
        directory = partial(ClusterDirectory, node=str(index + 1), prefix=self.prefix, beat=BEAT, dead_after=DEAD_AFTER)
        relay = Relay(self.apps, directory=directory)
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[RelayServer]) -> None:
            with scope:
                await serve(relay, "127.0.0.1", 0, redis=self.redis.url, task_status=task_status)

        server: RelayServer = await self.nursery.start(run)
        self.nodes.append(server)
        self.scopes.append(scope)
        return server

    def kill(self, index: int) -> None:
        """The node dies: nothing of it runs any more, and it tells nobody."""
        self.scopes[index].cancel()

    def url(self, index: int) -> str:
        return f"ws://127.0.0.1:{self.nodes[index].port}"

    def rest(self, index: int, app: App | None = None) -> pusher.Pusher:
        """The official Python SDK pointed at node ``index``."""
        app = app or self.apps[0]
        return pusher.Pusher(
            app_id=app.id, key=app.key, secret=app.secret, host="127.0.0.1", port=self.nodes[index].port, ssl=False
        )


async def sdk(call: Callable[[], Any]) -> Any:
    """Run a call of the (blocking) Python SDK in a thread."""
    return await trio.to_thread.run_sync(call)




def app(**options: Any) -> App:
    options.setdefault("features", Features(subscription_count=True))
    return App(id="1", key=KEY, secret=SECRET, **options)


@asynccontextmanager
async def cluster(nursery: trio.Nursery, redis: RedisServer, *apps: App, nodes: int = 3) -> AsyncIterator[Cluster]:
    found = Cluster(nursery, redis, list(apps) or [app()])
    await found.start(nodes)
    yield found


@asynccontextmanager
async def client(found: Cluster, index: int) -> AsyncIterator[PusherClient]:
    async with connect(found.url(index), KEY, secret=SECRET) as socket:
        yield socket


async def next_of(socket: PusherClient, kind: Any, channel: str | None = None) -> Any:
    with trio.fail_after(TIMEOUT):
        return await socket.next_event(kind, channel=channel)


async def test_channel_events_reach_every_node_once_with_the_sender_excluded(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A REST trigger on one node reaches subscribers on all three, except the excluded socket, in publish order."""
    async with cluster(nursery, redis) as found, client(found, 0) as a, client(found, 1) as b, client(found, 2) as c:
        for socket in (a, b, c):
            await socket.subscribe("news")
        rest = found.rest(1)
        for n in range(5):
            await sdk(lambda n=n: rest.trigger("news", "tick", {"n": n}, socket_id=c.socket_id if n == 2 else None))
        for socket in (a, b):
            got = [json.loads((await next_of(socket, "tick")).data)["n"] for _ in range(5)]
            assert got == [0, 1, 2, 3, 4]
        got_c = [json.loads((await next_of(c, "tick")).data)["n"] for _ in range(4)]
        assert got_c == [0, 1, 3, 4]


async def test_client_events_cross_nodes_and_are_not_echoed(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A client event on node 0 reaches the channel's sockets on nodes 1 and 2, and not its sender."""
    async with cluster(nursery, redis) as found, client(found, 0) as a, client(found, 1) as b, client(found, 2) as c:
        for socket in (a, b, c):
            await socket.subscribe("private-room")
        # One at a time: two nodes publishing at once reach a third in either order.
        await a.trigger("private-room", "client-hi", {"from": "a"})
        assert json.loads((await next_of(c, "client-hi")).data) == {"from": "a"}
        assert json.loads((await next_of(b, "client-hi")).data) == {"from": "a"}
        await b.trigger("private-room", "client-hi", {"from": "b"})
        assert json.loads((await next_of(c, "client-hi")).data) == {"from": "b"}
        assert json.loads((await next_of(a, "client-hi")).data) == {"from": "b"}


async def test_presence_is_one_member_list_for_the_cluster(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Members on three nodes form one list; a user on two nodes is one member, added once and removed once."""
    async with cluster(nursery, redis) as found, client(found, 0) as a, client(found, 1) as b:
        joined = await a.subscribe("presence-room", channel_data={"user_id": "alice", "user_info": {"n": 1}})
        assert [m[0] for m in joined.presence.members] == ["alice"]
        joined = await b.subscribe("presence-room", channel_data={"user_id": "bob"})
        assert sorted(m[0] for m in joined.presence.members) == ["alice", "bob"]
        added = await next_of(a, MemberAdded)
        assert added.user_id == "bob"
        async with client(found, 2) as bob_again:
            joined = await bob_again.subscribe("presence-room", channel_data={"user_id": "bob"})
            assert sorted(m[0] for m in joined.presence.members) == ["alice", "bob"]
            users = await sdk(lambda: found.rest(2).users_info("presence-room"))
            assert sorted(u["id"] for u in users["users"]) == ["alice", "bob"]
            info = await sdk(lambda: found.rest(0).channel_info("presence-room", ["user_count", "subscription_count"]))
            assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
        # bob is still on node 1: no member_removed; leaving there removes him once.
        await b.unsubscribe("presence-room")
        removed = await next_of(a, MemberRemoved)
        assert removed.user_id == "bob"
        # Anything published after bob left comes after any member event his leaving caused.
        await sdk(lambda: found.rest(1).trigger("presence-room", "marker", {}))
        nothing_between = await next_of(a, None, "presence-room")
        assert isinstance(nothing_between, Message) and nothing_between.event == "marker"


async def test_rest_answers_for_the_whole_cluster_once_subscribed(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Once subscription_succeeded arrived, every node's REST answer counts the socket."""
    async with cluster(nursery, redis) as found, client(found, 0) as a, client(found, 1) as b:
        await a.subscribe("news")
        await b.subscribe("news")
        await b.subscribe("presence-lobby", channel_data={"user_id": "u1"})
        for index in range(3):
            channels = await sdk(lambda i=index: found.rest(i).channels_info(attributes=["subscription_count"]))
            assert channels["channels"]["news"] == {"subscription_count": 2}
            lobby = await sdk(lambda i=index: found.rest(i).channels_info("presence-", ["user_count"]))
            assert lobby == {"channels": {"presence-lobby": {"user_count": 1}}}
        await a.unsubscribe("news")
        await b.unsubscribe("news")
        await b.subscribe("other")  # answered after the unsubscribes, in order
        info = await sdk(lambda: found.rest(2).channel_info("news", ["subscription_count"]))
        assert info == {"occupied": False, "subscription_count": 0}


async def test_subscription_counts_are_the_clusters(nursery: trio.Nursery, redis: RedisServer) -> None:
    """subscription_count frames carry the cluster's count, to subscribers on every node."""
    async with cluster(nursery, redis) as found, client(found, 0) as a, client(found, 1) as b:
        await a.subscribe("counted")
        assert (await next_of(a, SubscriptionCount)).count == 1
        await b.subscribe("counted")
        assert (await next_of(b, SubscriptionCount)).count == 2
        assert (await next_of(a, SubscriptionCount)).count == 2


async def test_users_across_nodes(nursery: trio.Nursery, redis: RedisServer) -> None:
    """send_to_user and terminate reach a user's sockets on every node; watchlists see other nodes' users."""
    async with cluster(nursery, redis) as found, client(found, 0) as watcher:
        await watcher.signin({"id": "w", "watchlist": ["u"]})
        async with client(found, 1) as one, client(found, 2) as two:
            for socket in (one, two):
                await socket.signin({"id": "u"})
            change = await next_of(watcher, WatchlistEvents)
            assert change.events[0].name == "online" and list(change.events[0].user_ids) == ["u"]
            await sdk(lambda: found.rest(0).send_to_user("u", "note", {"x": 1}))
            for socket in (one, two):
                assert json.loads((await next_of(socket, "note")).data) == {"x": 1}
            await sdk(lambda: found.rest(0).terminate_user_connections("u"))
            for socket in (one, two):
                error = await next_of(socket, Error)
                assert error.code == 4009
            change = await next_of(watcher, WatchlistEvents)
            assert change.events[0].name == "offline"


async def test_cache_channels_share_their_last_event(nursery: trio.Nursery, redis: RedisServer) -> None:
    """An event published on one node is what a later subscriber on another node gets at once."""
    async with cluster(nursery, redis) as found, client(found, 2) as early:
        await early.subscribe("cache-scores")
        await next_of(early, CacheMiss)
        await sdk(lambda: found.rest(0).trigger("cache-scores", "score", {"home": 2}))
        async with client(found, 1) as late:
            await late.subscribe("cache-scores")
            event = await next_of(late, "score")
            assert json.loads(event.data) == {"home": 2}
        info = await sdk(lambda: found.rest(1).channel_info("cache-scores", ["cache"]))
        assert json.loads(info["cache"]["data"]) == {"home": 2} and 0 < info["cache"]["ttl"] <= 1800


async def test_app_limits_hold_for_the_cluster(nursery: trio.Nursery, redis: RedisServer) -> None:
    """max_connections and max_presence_members count every node's sockets."""
    limited = app(limits=Limits(max_connections=2, max_presence_members=1))
    async with cluster(nursery, redis, limited) as found, client(found, 0) as a, client(found, 1) as b:
        with pytest.raises(Exception) as refused:
            async with client(found, 2):
                pass
        assert getattr(refused.value, "code", None) == 4004
        await a.subscribe("presence-one", channel_data={"user_id": "x"})
        with pytest.raises(SubscriptionFailed) as full:
            await b.subscribe("presence-one", channel_data={"user_id": "y"})
        assert full.value.status == 413
    async with client(found, 2):
        pass  # both closed: room again


async def test_webhooks_are_sent_once_per_cluster(nursery: trio.Nursery, redis: RedisServer) -> None:
    """occupied, member_added, member_removed and vacated go out once, from the node that caused them."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    hooked = app(webhooks=[WebhookTarget(url=receiver.url)])
    async with cluster(nursery, redis, hooked) as found:
        async with client(found, 0) as a, client(found, 1) as b:
            await a.subscribe("presence-hooks", channel_data={"user_id": "alice"})
            await b.subscribe("presence-hooks", channel_data={"user_id": "alice"})
        names: list[str] = []
        with trio.fail_after(TIMEOUT):
            while sorted(names) != ["channel_occupied", "channel_vacated", "member_added", "member_removed"]:
                requests = await receiver.wait_for(len(receiver.received) + 1)
                names = [e["name"] for r in requests for e in json.loads(r.body)["events"]]
                assert len(names) == len(set(names)), f"a webhook event went out twice: {names}"


async def test_a_dead_node_is_cleaned_up_once(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Killing a node: within the bound, its members leave (once), its subscriptions stop counting."""
    async with cluster(nursery, redis) as found, client(found, 0) as a:
        await a.subscribe("presence-room", channel_data={"user_id": "alice"})
        async with client(found, 2) as doomed:
            await doomed.subscribe("presence-room", channel_data={"user_id": "carol"})
            await doomed.subscribe("news")
            assert (await next_of(a, MemberAdded)).user_id == "carol"
            found.kill(2)
            with trio.fail_after(TIMEOUT):
                async for _ in doomed:  # its node is gone: its connection ends
                    pass
        with trio.fail_after(TIMEOUT):
            removed = await a.next_event(MemberRemoved)
        assert removed.user_id == "carol"
        for index in (0, 1):
            users = await sdk(lambda i=index: found.rest(i).users_info("presence-room"))
            assert [u["id"] for u in users["users"]] == ["alice"]
            news = await sdk(lambda i=index: found.rest(i).channel_info("news", ["subscription_count"]))
            assert news == {"occupied": False, "subscription_count": 0}


async def test_redis_restart_is_survived_without_a_restart(nursery: trio.Nursery) -> None:
    """Redis going away and coming back empty: nodes keep serving their sockets, then put their state back."""
    own = RedisServer()
    own.start()
    try:
        async with cluster(nursery, own, nodes=2) as found, client(found, 0) as a, client(found, 1) as b:
            await a.subscribe("presence-room", channel_data={"user_id": "alice"})
            await b.subscribe("news")
            own.stop()
            with trio.fail_after(TIMEOUT):
                for node in found.nodes:
                    assert node.cluster is not None
                    await node.cluster.wait_disconnected()
            # Each node still serves its own clients.
            await sdk(lambda: found.rest(1).trigger("news", "local", {}))
            assert (await next_of(b, "local")).event == "local"
            own.start()
            with trio.fail_after(TIMEOUT):
                for node in found.nodes:
                    assert node.cluster is not None
                    await node.cluster.wait_connected()
            # Each node put its share back before answering anything else.
            users = await sdk(lambda: found.rest(1).users_info("presence-room"))
            news = await sdk(lambda: found.rest(0).channel_info("news", ["subscription_count"]))
            assert users == {"users": [{"id": "alice"}]}
            assert news == {"occupied": True, "subscription_count": 1}
            await sdk(lambda: found.rest(0).trigger("news", "after", {}))
            assert (await next_of(b, "after")).event == "after"
    finally:
        own.stop()


async def test_messages_of_one_node_stay_on_the_nodes_that_want_them(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A node without subscribers of a channel receives none of its traffic."""
    async with cluster(nursery, redis) as found, client(found, 0) as a:
        await a.subscribe("busy")
        before = found.nodes[2].relay.stats()["cluster"]["messages_in"]
        for n in range(20):
            await sdk(lambda n=n: found.rest(1).trigger("busy", "e", n))
        for _ in range(20):
            await next_of(a, Message)
        assert found.nodes[2].relay.stats()["cluster"]["messages_in"] == before


async def test_a_batch_to_one_channel_reaches_another_node_as_one_message(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A REST batch of 10 events to one channel: one inbox message at the subscriber's node, 10 events in order."""
    async with cluster(nursery, redis, nodes=2) as found, client(found, 0) as a:
        await a.subscribe("news")
        before = found.nodes[0].relay.stats()["cluster"]["messages_in"]
        batch = [{"channel": "news", "name": "tick", "data": str(n)} for n in range(10)]
        await sdk(lambda: found.rest(1).trigger_batch(batch))
        got = [(await next_of(a, "tick")).data for _ in range(10)]
        assert got == [str(n) for n in range(10)]
        assert found.nodes[0].relay.stats()["cluster"]["messages_in"] == before + 1
