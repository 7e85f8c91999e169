"""The cluster's Lua script on a real redis-server: counts, reaping exactly once, resynchronising, departures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from itertools import count
from typing import Any

import coredis
import pytest
import trio

from pipe_proto.cluster import SCRIPT, SCRIPT_SHA1, multi
from pipe_proto.relay.outputs import ClusterCall
from tests.redis_server import RedisServer

_prefixes = count(1)




class Script:
    """Calls of the script as one node, under one prefix."""

    def __init__(self, client: coredis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def __call__(self, op: str, node: str, *args: str) -> Any:
        return await self.client.evalsha(SCRIPT_SHA1, keys=[], args=[op, self.prefix, node, *args])

    def key(self, name: str) -> str:
        return f"{self.prefix}:{name}"


@pytest.fixture
async def script(redis: RedisServer) -> AsyncIterator[Script]:
    async with coredis.Redis.from_url(redis.url) as client:
        await client.script_load(SCRIPT)
        yield Script(client, f"t{next(_prefixes)}")


async def join(script: Script, node: str, channel: str, token: str = "1", user: str | None = None) -> None:
    args = ["1", channel, token, "0", "0"]
    if user is not None:
        args += [user, json.dumps([user, None]), f"removed {user}", f"added {user}", "100"]
    assert await script("join", node, *args) == 1


async def test_a_dead_node_is_reaped_exactly_once(script: Script) -> None:
    """Two nodes reaping the same dead node: one gets the transitions, the other nothing; its share is gone."""
    await join(script, "dead", "news")
    await join(script, "dead", "presence-x", user="carol")
    # A departure the dead node was still waiting to confirm: the reaper sends it.
    await join(script, "dead", "brief")
    await script("leave", "dead", "1", "brief", "0")
    await join(script, "alive", "presence-x", user="alice")
    for node in ("dead", "alive", "other"):
        await script("beat", node, "{}")
    # The dead node's last heartbeat, long ago.
    await script.client.zadd(script.key("nodes"), {"dead": 1})
    first = json.loads(await script("reap", "alive", "5000", "", "1"))
    second = json.loads(await script("reap", "other", "5000", "", "1"))
    assert sorted(t[:3] for t in first) == [
        ["due", "1", "v|brief"], ["reaped", "dead"], ["removed", "1", "presence-x"], ["vacated", "1", "news"]
    ]
    assert second == []
    client = script.client
    assert await client.hget(script.key("a:1:ch"), "news") is None
    assert await client.hget(script.key("a:1:ch"), "presence-x") == b"1"
    assert list(await client.hkeys(script.key("a:1:pm:presence-x"))) == [b"alice"]
    assert await client.smembers(script.key("a:1:cn:presence-x")) == {b"alive"}
    assert not await client.exists([script.key("node:dead")])


async def test_resync_puts_a_lost_share_back(script: Script) -> None:
    """After Redis lost everything, a node's share sent again restores counts, members and interest."""
    await join(script, "a", "news")
    await join(script, "a", "presence-x", user="u1")
    await script.client.flushall()
    await script.client.script_load(SCRIPT)
    await script("rs_begin", "a")
    share = ["s|1|news", "2", "", "", "", "m|1|presence-x|u1", "1", json.dumps(["u1", None]), "rm", "add",
             "s|1|presence-x", "1", "", "", ""]
    transitions = json.loads(await script("rs_add", "a", "", *share))
    assert ["occupied", "1", "news"] in transitions and ["added", "1", "presence-x", "u1"] in transitions
    assert json.loads(await script("rs_end", "a", "")) == []
    client = script.client
    assert await client.hget(script.key("a:1:ch"), "news") == b"2"
    assert await client.hget(script.key("a:1:pm:presence-x"), "u1") == b"1"
    assert await client.smembers(script.key("a:1:cn:news")) == {b"a"}


async def test_resync_moves_counts_by_the_difference(script: Script) -> None:
    """A share that changed while Redis was away: counts move by the difference; what is gone is vacated."""
    await join(script, "a", "news")
    await join(script, "a", "news")
    await join(script, "b", "news")
    await join(script, "a", "gone")
    await script("rs_begin", "a")
    assert json.loads(await script("rs_add", "a", "", "s|1|news", "1", "", "", "")) == []
    transitions = json.loads(await script("rs_end", "a", ""))
    assert [t[:3] for t in transitions] == [["vacated", "1", "gone"]]
    assert await script.client.hget(script.key("a:1:ch"), "news") == b"2"
    assert await script.client.hget(script.key("node:a"), "s|1|news") == b"1"


async def test_a_resync_makes_the_departures_its_node_held_back_due(script: Script) -> None:
    """A node whose link broke forgot the departures waiting their delay (or never heard of them, its
    answers lost): its resync makes them due, but for a channel that came back on it meanwhile, and
    leaves other nodes' waiting."""
    for node, channel in (("a", "news"), ("a", "back"), ("b", "sports")):
        await join(script, node, channel)
        await script("leave", node, "1", channel, "0")
    assert await script("rs_begin", "a", "1") == 1
    transitions = json.loads(await script("rs_add", "a", "", "s|1|back", "1", "", "", ""))
    assert [t[:3] for t in transitions] == [["reoccupied", "1", "back"]]  # as one relay: nothing to tell
    assert json.loads(await script("rs_end", "a", "", "1")) == [["due", "1", "v|news"]]
    assert list(await script.client.hkeys(script.key("a:1:delay"))) == [b"v|sports"]


async def test_a_quick_return_cancels_the_departure(script: Script) -> None:
    """Leaving and coming back before the confirmation: 'reoccupied', and the confirm finds nothing to send."""
    await join(script, "a", "news")
    left = json.loads(await script("leave", "a", "1", "news", "0"))
    ((kind, app, channel, token),) = left["transitions"]
    assert (kind, app, channel) == ("vacated", "1", "news")
    assert await script("join", "b", "1", "news", "2", "0", "0") == 1
    assert await script("confirm", "b", "1", "v|news", token) == 0


async def test_every_key_carries_the_prefix(script: Script) -> None:
    """Two clusters share one Redis without meeting: every key this one made starts with its prefix."""
    await join(script, "a", "presence-x", user="u")
    await script("signin", "a", "1", "u", "9", "w")
    await script("beat", "a", "{}")
    keys = await script.client.keys(f"{script.prefix}*")
    assert keys
    others = [k for k in await script.client.keys("*") if not k.startswith(b"t")]
    assert others == []


async def test_prestore_rewinds_a_session_to_the_last_seq_its_node_wrote(script: Script) -> None:
    """A read whose answer was lost: prestore with the last seq written sends the rest again, with the same seqs."""
    await script("pattach", "n1", "1", "p1", "1.0", "default", "s1", "", "-1", "10", "7")
    await script("psub", "n1", "1", "s1", "socket_message")
    # Three events in one call (as an adapter merges them), kept in their order.
    events = "\x1e".join("\x1f".join(("socket_message", "k", "socket_message", str(i), "", "1000")) for i in range(3))
    assert await script("pp", "n1", "1", "100", "100000", events) == 1
    entries, more = await script("pread", "n1", "1", "s1", "p1", "10", "100000", "0")
    assert [(e[0], e[2]) for e in entries] == [(1, b"0"), (2, b"1"), (3, b"2")] and more == 0
    # Another pipe (or another node) restoring does not move this session.
    assert await script("prestore", "n1", "1", "s1", "p2", "1.0", "default", "socket_message", "1") == 0
    assert await script("prestore", "n2", "1", "s1", "p1", "1.0", "default", "socket_message", "1") == 0
    assert await script("pread", "n1", "1", "s1", "p1", "10", "100000", "3") == [[], 0]
    # Its own node, which wrote up to seq 1 only.
    assert await script("prestore", "n1", "1", "s1", "p1", "1.0", "default", "socket_message", "1") == 0
    entries, _ = await script("pread", "n1", "1", "s1", "p1", "10", "100000", "1")
    assert [(e[0], e[2]) for e in entries] == [(2, b"1"), (3, b"2")]
    # An ack after the rewind still removes exactly what it names.
    assert await script("pack", "n1", "1", "s1", "3", "10", "100000", "3") == 3


async def test_multi_runs_each_call_as_if_alone(script: Script) -> None:
    """One multi call of two joins: both counted, their answers in one bundle, each with its own transitions."""
    calls = [ClusterCall(("join", script.prefix, "a", "1", channel, token, "0", "0")) for channel, token in
             (("news", "1"), ("sport", "2"))]
    async with script.client.pubsub(channels=[script.key("n:a")]) as inbox:
        assert await script.client.evalsha(SCRIPT_SHA1, keys=[], args=list(multi(calls).args)) == 2
        with trio.fail_after(5):
            message = None
            while message is None:
                message = await inbox.get_message(ignore_subscribe_messages=True, timeout=1)
    kind, *lines = message["data"].decode().split("\n")
    assert kind == "b"
    replies = [(head, json.loads(body)["transitions"]) for head, body in zip(lines[::2], lines[1::2], strict=True)]
    assert replies == [("r 1", [["occupied", "1", "news"]]), ("r 2", [["occupied", "1", "sport"]])]
    assert await script.client.hget(script.key("a:1:ch"), "sport") == b"1"
    bad = multi([calls[0], ClusterCall(("nope", script.prefix, "a"))])
    with pytest.raises(coredis.exceptions.ResponseError, match="unknown operation nope"):
        await script.client.evalsha(SCRIPT_SHA1, keys=[], args=list(bad.args))


async def test_held_answers_go_before_any_other_message_to_their_node(script: Script) -> None:
    """In a multi, a message for the calling node first sends the answers held back: its inbox keeps the order."""
    join = [ClusterCall(("join", script.prefix, "a", "1", channel, token, "0", "0")) for channel, token in
            (("news", "1"), ("sport", "2"))]
    tell = ClusterCall(("tell", script.prefix, "a", "a", "q - b 1 ss\n{}"))
    async with script.client.pubsub(channels=[script.key("n:a")]) as inbox:
        await script.client.evalsha(SCRIPT_SHA1, keys=[], args=list(multi([join[0], tell, join[1]]).args))
        got: list[str] = []
        with trio.fail_after(5):
            while len(got) < 3:
                message = await inbox.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    got.append(message["data"].decode().partition("\n")[0])
    assert got == ["r 1", "q - b 1 ss", "r 2"]


async def test_events_go_to_the_node_at_once_while_the_session_has_credit(script: Script) -> None:
    """A read that finds nothing leaves credit: the next events are pushed ("pe") with their seqs, the rest wait."""
    await script("pattach", "n1", "1", "p1", "1.0", "default", "s1", "", "-1", "10", "7")
    await script("psub", "n1", "1", "s1", "socket_message")
    async with script.client.pubsub(channels=[script.key("n:n1")]) as inbox:
        assert await script("pread", "n1", "1", "s1", "p1", "2", "100000", "0") == [[], 0]
        events = "\x1e".join(
            "\x1f".join(("socket_message", "k", "socket_message", str(i), "", "1000")) for i in range(3)
        )
        assert await script("pp", "n2", "1", "100", "100000", events) == 1
        got: list[bytes] = []
        with trio.fail_after(5):
            while b"pn 1 s1" not in got:
                message = await inbox.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    got.append(message["data"])
    # Two events pushed in one message (the credit the read left), then the third waits.
    assert got == [b"pe 1 s1\n1 1000 socket_message 0\n2 1000 socket_message 1", b"pn 1 s1"]
    entries, more = await script("pread", "n1", "1", "s1", "p1", "10", "100000", "2")
    assert [(e[0], e[2]) for e in entries] == [(3, b"2")] and more == 0


async def test_an_ack_trims_exactly_what_it_names_after_drops_in_the_middle(script: Script) -> None:
    """Acks trim the stream's head: with unsent events dropped between the in-flight ones and the rest, each ack
    still removes exactly the events up to its seq, and reads go on with the next seq."""
    await script("pattach", "n1", "1", "p1", "1.0", "default", "s1", "", "-1", "10", "7")
    await script("psub", "n1", "1", "s1", "socket_message")
    assert await script("pread", "n1", "1", "s1", "p1", "2", "100000", "0") == [[], 0]  # credit: 2
    events = "\x1e".join("\x1f".join(("socket_message", "k", "socket_message", str(i), "", "1000")) for i in range(8))
    # Two pushed (seqs 1, 2); six wait, and the group keeps 3 of them (buffer_events 3): 3 dropped.
    assert await script("pp", "n2", "1", "3", "100000", events) == 1
    queue = script.key("a:1:pq:s1")
    assert await script.client.xlen(queue) == 5
    assert await script("pack", "n1", "1", "s1", "1", "10", "100000", "2") == 1
    entries, more = await script("pread", "n1", "1", "s1", "p1", "10", "100000", "2")
    # What waited, with the seqs after the pushed ones, then the gap report.
    assert [(e[0], e[1], e[2]) for e in entries] == [
        (3, b"socket_message", b"5"), (4, b"socket_message", b"6"), (5, b"socket_message", b"7"),
        (6, b"gap", b'{"dropped":3}'),
    ] and more == 0
    assert await script("pack", "n1", "1", "s1", "4", "10", "100000", "6") == 3
    remaining = await script.client.xrange(queue)
    assert [entry.field_values[b"d"] for entry in remaining] == [b"7", b'{"dropped":3}']
    assert await script("pack", "n1", "1", "s1", "6", "10", "100000", "6") == 2
    assert await script.client.xlen(queue) == 0
    marks = await script.client.hgetall(script.key("a:1:ps:s1"))
    assert (marks[b"acked_seq"], marks[b"sent_seq"], marks[b"high_seq"]) == (b"6", b"6", b"6")
