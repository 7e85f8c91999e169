"""A cluster of three real ``pipe-relay serve --config`` processes on a real redis-server, with the official clients.

pusher-js (driver.js) clients sit on different nodes; the official server SDKs (PyPI ``pusher`` and
npm ``pusher``) talk to different nodes; webhooks go to one receiver. The nodes learn their Redis, their
cluster name and short liveness bounds (beat 0.2 s, dead after 1 s) from the ``[cluster]`` table of
their configuration file. A load balancer sits in front where the clients must find a surviving node:
a round-robin TCP proxy (tests/cluster_front.py), or Debian's nginx with the configuration of
docs/cluster.md. Absence is shown with markers, never by waiting: an event published after the one that
must not arrive travels the same road, so once the marker is in, anything before it would be too.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import pusher
import pytest
import trio

from tests.cluster_front import round_robin
from tests.cluster_processes import BEAT, DEAD_AFTER, Node, cluster_config, nginx, relay_nodes, wait_for_line
from tests.http_receiver import HttpReceiver
from tests.redis_server import RedisServer
from tests.support import APP_ID, APP_KEY, APP_SECRET

from .node import AuthServer, Driver, open_driver

pytestmark = pytest.mark.interop

#: Upper bound for one test, process start-up included.
TEST_TIMEOUT = 60
#: Within this, the surviving nodes have cleaned up after a dead one (docs/cluster.md): a survivor looks
#: every beat for nodes silent for dead_after; the rest is slack for a loaded test machine.
CLEANUP_BOUND = DEAD_AFTER + BEAT + 5.0
ROOM = "presence-room"
_clusters = count(1)


@dataclass
class Front:
    """An address clients connect to (a load balancer)."""

    port: int


def python_sdk(port: int) -> pusher.Pusher:
    return pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=port, ssl=False)


def node_config(port: int) -> dict[str, Any]:
    return {"appId": APP_ID, "key": APP_KEY, "secret": APP_SECRET, "host": "127.0.0.1", "port": port}


async def sdk(port: int, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call the Python SDK pointed at ``port`` (in a thread: it blocks)."""
    client = python_sdk(port)
    return await trio.to_thread.run_sync(lambda: getattr(client, method)(*args, **kwargs))


def member_auth(auth: AuthServer, user_id: str) -> dict[str, Any]:
    """pusher-js options: channels authorized by ``auth`` as presence member ``user_id``; sign-in as that user."""
    return {
        "channelAuthorization": {"endpoint": auth.url("/pusher/auth"), "params": {"user_id": user_id}},
        "userAuthentication": {"endpoint": auth.url("/pusher/user-auth"), "params": {"user_id": user_id}},
    }


def webhook_events(receiver: HttpReceiver) -> list[tuple[str, ...]]:
    """Every webhook event received so far, as (name, channel[, user_id]); each request checked by the SDK."""
    checker = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET)
    events = []
    for request in receiver.received:
        valid = checker.validate_webhook(
            key=request.headers["x-pusher-key"], signature=request.headers["x-pusher-signature"],
            body=request.body.decode(),
        )
        assert valid is not None, "a webhook the SDK refuses"
        for event in valid["events"]:
            events.append(tuple(event[k] for k in ("name", "channel", "user_id") if k in event))
    return events


async def webhooks_exactly(receiver: HttpReceiver, wanted: Sequence[tuple[str, ...]]) -> None:
    """Wait until the webhooks received are ``wanted`` (in any order), failing at once on a duplicate."""
    with trio.fail_after(20):
        while True:
            events = webhook_events(receiver)
            assert len(events) == len(set(events)), f"a webhook event went out twice: {events}"
            if sorted(events) == sorted(wanted):
                return
            assert set(events) <= set(wanted), f"unexpected webhooks: {sorted(set(events) - set(wanted))}"
            await receiver.wait_for(len(receiver.received) + 1)


@asynccontextmanager
async def cluster(
    tmp_path: Path, redis: RedisServer, webhook_url: str | None = None, nodes: int = 3
) -> AsyncIterator[list[Node]]:
    """``nodes`` relay processes of a new cluster (its own prefix) on ``redis``."""
    config = tmp_path / f"cluster-{next(_clusters)}.toml"
    prefix = f"e2e-{config.stem}-{trio.current_time():.0f}"
    config.write_text(cluster_config(redis.url, prefix, webhook_url))
    async with relay_nodes(config, nodes) as started:
        yield started


async def marker(js: Driver, port: int, clients: Sequence[str], channel: str) -> None:
    """Publish ``marker`` on ``channel`` through node ``port``; wait until each client has it."""
    await sdk(port, "trigger", channel, "marker", {})
    for client in clients:
        await js.expect({"type": "event", "id": client, "channel": channel, "event": "marker"})


# ------------------------------------------------------------------------------------ presence


async def test_presence_rest_counts_and_webhooks_across_node_processes(
    tmp_path: Path, redis: RedisServer, nursery: trio.Nursery
) -> None:
    """One member list for three nodes; member events and webhooks once per user; every node's REST agrees."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis, receiver.url) as nodes, open_driver() as js, open_driver("sdk.js") as npm:
            # Users 1, 2, 3 on nodes 0, 1, 2; user 2 a second time on node 2 ("2b").
            for client, user, node in (("1", "1", 0), ("2", "2", 1), ("3", "3", 2), ("2b", "2", 2)):
                await js.connected(client, nodes[node], **member_auth(auth, user))
                await js.subscribed(client, ROOM, "marker")
                members = await js.call("members", client, channel=ROOM)
                expected = {"1": ["1"], "2": ["1", "2"]}.get(client, ["1", "2", "3"])
                assert sorted(members["ids"]) == expected and members["count"] == len(expected)
            for index, node in enumerate(nodes):
                info = await sdk(node.port, "channel_info", ROOM, ["user_count", "subscription_count"])
                assert info == {"occupied": True, "user_count": 3, "subscription_count": 4}, f"node {index}"
                users = await sdk(node.port, "users_info", ROOM)
                assert sorted(u["id"] for u in users["users"]) == ["1", "2", "3"], f"node {index}"
                listed = await npm.call(
                    "get", config=node_config(node.port), path="/channels",
                    params={"filter_by_prefix": "presence-", "info": "user_count"},
                )
                assert listed == {"status": 200, "body": {"channels": {ROOM: {"user_count": 3}}}}, f"node {index}"
            # 2b leaving is not user 2 leaving (2 is still on node 1); 2 leaving then is.
            await js.call("disconnect", "2b")
            await js.call("disconnect", "2")
            for client in ("1", "3"):
                removed = await js.expect({"type": "member_removed", "id": client, "channel": ROOM})
                assert removed["member"]["id"] == "2"
            await marker(js, nodes[1].port, ["1", "3"], ROOM)
            for client in ("1", "3"):
                added = [r["member"]["id"] for r in js.seen({"type": "member_added", "id": client})]
                assert added == {"1": ["2", "3"], "3": []}[client], f"client {client}"
                assert not js.seen({"type": "member_removed", "id": client}), "user 2 removed once"
            info = await sdk(nodes[2].port, "channel_info", ROOM, ["user_count", "subscription_count"])
            assert info == {"occupied": True, "user_count": 2, "subscription_count": 2}
            for client in ("1", "3"):
                await js.call("disconnect", client)
            await webhooks_exactly(receiver, [
                ("channel_occupied", ROOM),
                ("member_added", ROOM, "1"), ("member_added", ROOM, "2"), ("member_added", ROOM, "3"),
                ("member_removed", ROOM, "1"), ("member_removed", ROOM, "2"), ("member_removed", ROOM, "3"),
                ("channel_vacated", ROOM),
            ])  # fmt: skip


# -------------------------------------------------------------------------------------- events


async def test_events_cross_node_processes_in_publish_order(
    tmp_path: Path, redis: RedisServer, nursery: trio.Nursery
) -> None:
    """REST events from both SDKs on different nodes, client events and user events reach every node's clients."""
    auth = await AuthServer().start(nursery)
    channel = "private-chat"
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis) as nodes, open_driver() as js, open_driver("sdk.js") as npm:
            clients = ["a", "b", "c"]
            for client, node in zip(clients, nodes, strict=True):
                await js.connected(client, node, **member_auth(auth, client))
                await js.subscribed(client, channel, "e", "client-hi", "marker")
            # Each SDK publishes a run of events through a node of its own; each run arrives in order.
            for n in range(5):
                await sdk(nodes[1].port, "trigger", channel, "e", {"from": "python", "n": n})
                await npm.call("trigger", config=node_config(nodes[2].port), channels=[channel], event="e",
                               data={"from": "node", "n": n})
            for client in clients:
                for origin in ("python", "node"):
                    for n in range(5):
                        event = await js.expect({"type": "event", "id": client, "event": "e", "data": {"from": origin}})
                        assert event["data"]["n"] == n, f"{client} got {origin}'s events out of order"
            # A client event from node 0 reaches nodes 1 and 2, and not its sender.
            assert await js.call("trigger", "a", channel=channel, event="client-hi", data={"from": "a"}) is True
            for client in ("b", "c"):
                hi = await js.expect({"type": "event", "id": client, "event": "client-hi"})
                assert hi["data"] == {"from": "a"}
            await marker(js, nodes[0].port, ["a"], channel)
            assert not js.seen({"type": "event", "id": "a", "event": "client-hi"})
            # A user signed in on node 2 gets what the npm SDK sends through node 0.
            await js.call("signin", "c")
            await js.expect({"type": "signin_success", "id": "c"})
            await js.call("user_bind", "c", event="note")
            sent = await npm.call("sendToUser", config=node_config(nodes[0].port), userId="c", event="note", data={"x": 1})
            assert sent["status"] == 200
            assert (await js.expect({"type": "user_event", "id": "c", "event": "note"}))["data"] == {"x": 1}


# ------------------------------------------------------------------------------- a node killed


async def test_a_killed_node_is_cleaned_up_and_its_clients_come_back(
    tmp_path: Path, redis: RedisServer, nursery: trio.Nursery
) -> None:
    """SIGKILL a node: within the bound its members leave once (events, webhooks), its channels are vacated,
    and its pusher-js clients behind the load balancer reconnect to a survivor and resubscribe."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis, receiver.url) as nodes, open_driver() as js:
            front = Front(await nursery.start(round_robin, nursery, [node.port for node in nodes]))
            # u0, u1, u2 through the load balancer: one per node, in turn.
            for index in range(3):
                await js.connected(f"u{index}", front, **member_auth(auth, f"u{index}"))
            for index, node in enumerate(nodes):
                assert (await node.status())["sockets"] == 1, f"node {index} has one of the three"
            # "lost" straight on node 2, with the only subscriber of "news": it has nowhere to come back to.
            await js.connected("lost", nodes[2], **member_auth(auth, "lost"))
            await js.subscribed("lost", "news")
            for client in ("u0", "u1", "u2", "lost"):
                await js.subscribed(client, ROOM, "e")
            await js.expect({"type": "member_added", "id": "u0", "member": {"id": "lost"}})
            old = (await js.call("status", "u2"))["socket_id"]
            nodes[2].kill()
            with trio.move_on_after(CLEANUP_BOUND) as late:
                for client in ("u0", "u1"):
                    gone = {"type": "member_removed", "id": client, "member": {"id": "lost"}}
                    await js.expect(gone, timeout=CLEANUP_BOUND)
            assert not late.cancelled_caught, f"members of the dead node still listed after {CLEANUP_BOUND} s"
            # u2 came back through the load balancer, to a survivor, and subscribed again.
            back = await js.expect({"type": "state", "id": "u2", "current": "connected"}, timeout=10)
            assert back["socket_id"] != old
            await js.expect({"type": "subscription_succeeded", "id": "u2", "channel": ROOM}, timeout=10)
            for index in (0, 1):
                users = await sdk(nodes[index].port, "users_info", ROOM)
                assert sorted(u["id"] for u in users["users"]) == ["u0", "u1", "u2"], f"node {index}"
                news = await sdk(nodes[index].port, "channel_info", "news", ["subscription_count"])
                assert news == {"occupied": False, "subscription_count": 0}, f"node {index}"
            assert sum([(await node.status())["sockets"] for node in nodes[:2]]) == 3
            await sdk(nodes[0].port, "trigger", ROOM, "e", {"after": True})
            for client in ("u0", "u1", "u2"):
                await js.expect({"type": "event", "id": client, "event": "e", "data": {"after": True}})
            reaped = [(await node.status())["cluster"]["nodes_reaped"] for node in nodes[:2]]
            assert sorted(reaped) == [0, 1], "one survivor reaped the dead node, once"
            # The dead node's departures are reported once (u2 may have come back before or after the
            # reaping: either way, it is a member again now).
            await webhooks_until(receiver, ("member_removed", ROOM, "lost"), ("channel_vacated", "news"))


async def test_a_stopped_node_hands_its_departures_over(
    tmp_path: Path, redis: RedisServer, nursery: trio.Nursery
) -> None:
    """SIGTERM a node: its members leave at once, and the webhooks it was holding back are sent once, by
    the node that cleans up after it."""
    receiver: HttpReceiver = await nursery.start(HttpReceiver().serve)
    auth = await AuthServer().start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis, receiver.url) as nodes, open_driver() as js:
            for client, node in (("a", nodes[0]), ("c", nodes[2])):
                await js.connected(client, node, **member_auth(auth, client))
                await js.subscribed(client, ROOM)
            await js.subscribed("c", "news")
            await js.expect({"type": "member_added", "id": "a", "member": {"id": "c"}})
            nodes[2].kill(signal.SIGTERM)
            error = await js.expect({"type": "error", "id": "c"})
            assert error["code"] == 4200
            with trio.fail_after(10):
                assert await nodes[2].lines.process.wait() == 0
            # Its members left with their sockets, as it stopped.
            await js.expect({"type": "member_removed", "id": "a", "member": {"id": "c"}}, timeout=DEAD_AFTER)
            await webhooks_exactly(receiver, [
                ("channel_occupied", ROOM), ("member_added", ROOM, "a"), ("member_added", ROOM, "c"),
                ("channel_occupied", "news"), ("member_removed", ROOM, "c"), ("channel_vacated", "news"),
            ])  # fmt: skip


async def webhooks_until(receiver: HttpReceiver, *wanted: tuple[str, ...]) -> None:
    """Wait until each of ``wanted`` was received; no event twice, but for u2's (it moved to another node)."""
    with trio.fail_after(20):
        while True:
            events = webhook_events(receiver)
            assert len(events) == len(set(events)) or _only_repeats_allowed(events), f"twice: {events}"
            if set(wanted) <= set(events):
                return
            await receiver.wait_for(len(receiver.received) + 1)


def _only_repeats_allowed(events: list[tuple[str, ...]]) -> bool:
    # u2 leaving with its node and coming back elsewhere may be a removal and an addition again.
    repeated = {event for event in events if events.count(event) > 1}
    return all(len(event) == 3 and event[2] == "u2" for event in repeated)


async def test_a_node_paused_past_the_bound_puts_itself_back(
    tmp_path: Path, redis: RedisServer, nursery: trio.Nursery
) -> None:
    """SIGSTOP a node until the others cleaned up after it, then SIGCONT: it closes its connections (4200) and its
    clients come back through it, with their members."""
    auth = await AuthServer().start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis) as nodes, open_driver() as js:
            for client, node in (("a", nodes[0]), ("c", nodes[2])):
                await js.connected(client, node, **member_auth(auth, client))
                await js.subscribed(client, ROOM, "e")
            await js.expect({"type": "member_added", "id": "a", "member": {"id": "c"}})
            nodes[2].kill(signal.SIGSTOP)
            try:
                await js.expect({"type": "member_removed", "id": "a", "member": {"id": "c"}}, timeout=CLEANUP_BOUND)
            finally:
                nodes[2].kill(signal.SIGCONT)
            # Cleaned up after, it closes its connections when it runs again (4200): its client comes back.
            await js.expect({"type": "member_added", "id": "a", "member": {"id": "c"}}, timeout=5)
            users = await sdk(nodes[0].port, "users_info", ROOM)
            assert sorted(u["id"] for u in users["users"]) == ["a", "c"]
            await sdk(nodes[0].port, "trigger", ROOM, "e", {"after": True})
            await js.expect({"type": "event", "id": "c", "data": {"after": True}})


# ----------------------------------------------------------------------------- Redis restarted


async def test_a_redis_restart_is_survived_by_every_node_process(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Redis killed and started again empty on its port: every node keeps serving its own clients, logs the
    outage once, counts what it could not send, and puts the cluster's state back without a restart."""
    own = RedisServer()
    await trio.to_thread.run_sync(own.start)
    auth = await AuthServer().start(nursery)
    try:
        with trio.fail_after(TEST_TIMEOUT):
            async with cluster(tmp_path, own) as nodes, open_driver() as js:
                for client, node in zip(("a", "b", "c"), nodes, strict=True):
                    await js.connected(client, node, **member_auth(auth, client))
                    await js.subscribed(client, ROOM, "e")
                await js.subscribed("b", "news", "e")
                await trio.to_thread.run_sync(own.stop)
                await wait_for_line(nodes, "is unreachable")
                # Alone, each node serves its own clients; what was for other nodes is counted as lost.
                await sdk(nodes[1].port, "trigger", [ROOM, "news"], "e", {"during": True})
                for channel in (ROOM, "news"):
                    await js.expect({"type": "event", "id": "b", "channel": channel, "data": {"during": True}})
                alone = (await nodes[1].status())["cluster"]
                assert alone["connected"] is False and alone["lost_while_down"] >= 1
                await trio.to_thread.run_sync(own.start)
                await wait_for_line(nodes, "is reachable again")
                # A node's REST question goes to Redis after its own resync (its calls go in order), so once
                # each node answered one, all three have put their shares back.
                for node in nodes:
                    await sdk(node.port, "channel_info", "news")
                for index, node in enumerate(nodes):
                    users = await sdk(node.port, "users_info", ROOM)
                    assert sorted(u["id"] for u in users["users"]) == ["a", "b", "c"], f"node {index}"
                    info = await sdk(node.port, "channel_info", "news", ["subscription_count"])
                    assert info == {"occupied": True, "subscription_count": 1}, f"node {index}"
                    status = (await node.status())["cluster"]
                    assert (status["connected"], status["outages"], status["resyncs"]) == (True, 1, 2)
                    assert node.count("is unreachable") == 1, "the outage is logged once"
                await sdk(nodes[0].port, "trigger", [ROOM, "news"], "e", {"after": True})
                for client in ("a", "b", "c"):
                    await js.expect({"type": "event", "id": client, "channel": ROOM, "data": {"after": True}})
                await js.expect({"type": "event", "id": "b", "channel": "news", "data": {"after": True}})
                assert not js.seen({"data": {"during": True}}), "a and c never got what node 1 could not send"
    finally:
        await trio.to_thread.run_sync(own.stop)


# ------------------------------------------------------------------------ nginx, as documented


async def test_pusher_js_through_the_documented_nginx(tmp_path: Path, redis: RedisServer, nursery: trio.Nursery) -> None:
    """Debian's nginx with docs/cluster.md's configuration before three nodes: connections go round the nodes,
    events published through it reach everyone whichever node takes the REST call, presence is one list,
    and the clients of a killed node come back through nginx."""
    auth = await AuthServer().start(nursery)
    with trio.fail_after(TEST_TIMEOUT):
        async with cluster(tmp_path, redis) as nodes, nginx([node.port for node in nodes]) as port:
            front = Front(port)
            async with open_driver() as js, open_driver("sdk.js") as npm:
                clients = ["a", "b", "c"]
                for client in clients:
                    await js.connected(client, front, **member_auth(auth, client))
                for index, node in enumerate(nodes):
                    assert (await node.status())["sockets"] == 1, f"nginx sent one of three to node {index}"
                for client in clients:
                    await js.subscribed(client, ROOM, "e")
                assert sorted((await js.call("members", "c", channel=ROOM))["ids"]) == clients
                for client, joined in (("a", ["b", "c"]), ("b", ["c"])):
                    for user in joined:
                        await js.expect({"type": "member_added", "id": client, "member": {"id": user}})
                # Three REST calls through nginx: one per node, each event reaching every node's client.
                for n in range(3):
                    if n % 2:
                        await npm.call("trigger", config=node_config(port), channels=[ROOM], event="e", data={"n": n})
                    else:
                        await sdk(port, "trigger", ROOM, "e", {"n": n})
                for client in clients:
                    for n in range(3):
                        event = await js.expect({"type": "event", "id": client, "event": "e"})
                        assert event["data"] == {"n": n}
                info = await sdk(port, "channel_info", ROOM, ["user_count", "subscription_count"])
                assert info == {"occupied": True, "user_count": 3, "subscription_count": 3}
                # A node dies: nginx sends its client's reconnection to another one.
                nodes[0].kill()
                dropped = await js.expect(lambda r: r["type"] == "state" and r["previous"] == "connected", timeout=10)
                victim = dropped["id"]
                await js.expect({"type": "state", "id": victim, "current": "connected"}, timeout=15)
                await js.expect({"type": "subscription_succeeded", "id": victim, "channel": ROOM}, timeout=10)
                await sdk(port, "trigger", ROOM, "e", {"n": "after"})
                for client in clients:
                    await js.expect({"type": "event", "id": client, "event": "e", "data": {"n": "after"}})
                assert not js.seen({"type": "state", "previous": "connected"}), "only the dead node's client moved"
