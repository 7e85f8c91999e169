"""Pipes across a cluster, in one process: three nodes on a real redis-server, pipes and sockets on different nodes.

The nodes of tests/test_cluster.py (beats of 0.1 s, dead after 0.6 s); open_pipe backends and Python socket clients.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack, aclosing
from typing import Any
from weakref import WeakKeyDictionary

import trio

from pipe_proto import App, PipeSettings
from pipe_proto.pipe import AuthRequest, SocketClosed, SocketMessage, SocketOpened
from pipe_proto.relay.pipes import rendezvous_score
from pipe_trio import AuthAnswer, open_pipe
from pipe_trio.pusher_client import SubscriptionFailed
from pipe_trio.testing import rest_request
from tests.cluster_front import Forward
from tests.redis_server import RedisServer
from tests.test_cluster import KEY, SECRET, TIMEOUT, Cluster, client, cluster

APP_ID = "1"


def owner(socket_id: str, *sessions: str) -> str:
    """The member whose session takes a socket's events (rendezvous hashing)."""
    return max(sessions, key=lambda session: rendezvous_score(socket_id, session))


def pipe_app(**pipe: Any) -> App:
    return App(id=APP_ID, key=KEY, secret=SECRET, pipe=PipeSettings(**pipe))


def backend(found: Cluster, index: int, **options: Any) -> Any:
    return open_pipe(found.url(index), app_id=APP_ID, key=KEY, secret=SECRET, **options)


async def settled(found: Cluster) -> None:
    """Every node has heard of what changed before this call in Redis (pipes' subscriptions, say).

    A join's answer comes through a node's inbox after everything Redis sent
    there earlier: once a socket of each node has joined a channel, each
    node has read what came before.
    """
    for index in range(len(found.nodes)):
        async with client(found, index) as barrier:
            await barrier.subscribe("settled")


class _Recorder:
    """A pipe's socket notices since the first next_notice, kept until a test takes them.

    Handlers, not an ``async for``: a notice that comes while the test awaits
    something else (a reply that comes after it, say) is kept, not missed.
    """

    def __init__(self, pipe: Any) -> None:
        self.notices: list[Any] = []
        self.changed = trio.Event()
        for name in ("socket_opened", "socket_closed", "socket_message"):
            pipe.on(name, self.add)

    def add(self, notice: Any) -> None:
        self.notices.append(notice)
        self.changed.set()
        self.changed = trio.Event()


_recorders: WeakKeyDictionary[Any, _Recorder] = WeakKeyDictionary()


async def next_notice(pipe: Any, kind: type, **fields: Any) -> Any:
    """The first notice of ``kind`` with ``fields`` not taken yet (others stay for later calls)."""
    recorder = _recorders.get(pipe)
    if recorder is None:
        recorder = _recorders[pipe] = _Recorder(pipe)
    with trio.fail_after(TIMEOUT):
        while True:
            for index, notice in enumerate(recorder.notices):
                if isinstance(notice, kind) and all(getattr(notice, k) == v for k, v in fields.items()):
                    return recorder.notices.pop(index)
            await recorder.changed.wait()


async def test_a_pipe_sees_and_reaches_sockets_on_every_node(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A pipe on node 0: opened, messages and closed of sockets on nodes 1 and 2; its sends reach them, counted."""
    async with cluster(nursery, redis, pipe_app()) as found, backend(found, 0) as pipe:
        await settled(found)
        async with client(found, 1) as one, client(found, 2) as two:
            for socket in (one, two):
                await next_notice(pipe, SocketOpened, socket_id=socket.socket_id)
            await two.send_event("hello", {"from": 2})
            message = await next_notice(pipe, SocketMessage, socket_id=two.socket_id)
            assert (message.name, message.data) == ("hello", {"from": 2})
            assert await pipe.socket(one.socket_id).trigger("direct", {"to": 1}) == 1
            with trio.fail_after(TIMEOUT):
                got = await one.next_event("direct")
            assert json.loads(got.data) == {"to": 1}
            for socket in (one, two):
                await socket.subscribe("news")
            assert await pipe.channel("news").trigger("all", {}, exclude=one.socket_id) == 1
            with trio.fail_after(TIMEOUT):
                await two.next_event("all")
            await pipe.disconnect_socket(two.socket_id, code=4009, reason="bye")
            closed = await next_notice(pipe, SocketClosed, socket_id=two.socket_id)
            assert closed.code == 4009
        closed = await next_notice(pipe, SocketClosed, socket_id=one.socket_id)
        assert closed.code == 1000


async def test_authorization_by_a_pipe_on_another_node(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A socket on node 2 subscribes unsigned; the pipe holding auth on node 0 allows one channel and denies another."""

    async def decide(request: AuthRequest) -> Any:
        return request.channel == "private-yes" or AuthAnswer(allow=False, reason="not that one")

    async with cluster(nursery, redis, pipe_app()) as found, backend(found, 0, events=(), auth=decide):
        await settled(found)
        async with client(found, 2) as socket:
            socket._secret = None  # unsigned: the pipe decides
            joined = await socket.subscribe("private-yes")
            assert joined.channel == "private-yes"
            try:
                await socket.subscribe("private-no")
            except SubscriptionFailed as refused:
                assert (refused.status, refused.error) == (403, "not that one")
            else:  # pragma: no cover
                raise AssertionError("private-no was allowed")


class Tally:
    """Back-channel messages ``n`` received by named members, with an event when a count is reached."""

    def __init__(self) -> None:
        self.got: list[tuple[str, str, int, bool]] = []
        self._wanted = 0
        self._done = trio.Event()

    def take(self, member: str) -> Any:
        def handler(note: Any) -> None:
            notice = note.notice
            if isinstance(notice, SocketMessage) and notice.name == "n":
                self.got.append((member, notice.socket_id, int(notice.data), bool(note.redelivered)))
                if len(self.got) >= self._wanted:
                    self._done.set()

        return handler

    async def wait_for(self, count: int) -> None:
        self._wanted = count
        if len(self.got) < count:
            self._done = trio.Event()
            with trio.fail_after(TIMEOUT * 2):
                await self._done.wait()


async def consume(pipe: Any, handler: Any) -> None:
    async with aclosing(pipe.events(meta=True)) as notes:
        async for note in notes:
            handler(note)


async def test_a_group_spans_nodes_and_shares_the_sockets(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Members on nodes 1 and 2 share sockets of node 0: each socket's messages reach one member, once, in order."""
    tally = Tally()
    options: dict[str, Any] = {"events": ("socket_message",), "group": "g"}
    async with (
        cluster(nursery, redis, pipe_app()) as found,
        backend(found, 1, **options) as a,
        backend(found, 2, **options) as b,
        trio.open_nursery() as readers,
    ):
        readers.start_soon(consume, a, tally.take("a"))
        readers.start_soon(consume, b, tally.take("b"))
        await settled(found)
        async with client(found, 0) as s1, client(found, 0) as s2, client(found, 0) as s3:
            sockets = (s1, s2, s3)
            for n in range(5):
                for socket in sockets:
                    await socket.send_event("n", n)
            await tally.wait_for(15)
        readers.cancel_scope.cancel()
    for socket in sockets:
        mine = [(member, n) for member, sid, n, _ in tally.got if sid == socket.socket_id]
        assert [n for _, n in mine] == [0, 1, 2, 3, 4], "every message once, in order"
        assert len({member for member, _ in mine}) == 1, "one member per socket"


async def test_a_backend_resumes_on_another_node_when_its_node_dies(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Node 2 dies under member b: b reconnects (through the balancer) to node 1, resumes, and nothing is lost.

    Sockets on node 0 keep sending while node 2 is gone; every message reaches a member exactly once (the
    pipe client drops replays it had processed), and b's session comes back resumed.
    """
    tally = Tally()
    async with cluster(nursery, redis, pipe_app(resume_grace=30.0)) as found:
        balancer = Forward(found.nodes[2].port)
        await nursery.start(balancer.serve, nursery)
        url = f"ws://127.0.0.1:{balancer.port}"
        options: dict[str, Any] = {"events": ("socket_message",), "group": "g", "max_backoff": 0.2}
        async with backend(found, 1, **options) as a, open_pipe(
            url, app_id=APP_ID, key=KEY, secret=SECRET, **options
        ) as b, trio.open_nursery() as readers:
            session = b.session
            readers.start_soon(consume, a, tally.take("a"))
            readers.start_soon(consume, b, tally.take("b"))
            await settled(found)
            async with client(found, 0) as s1, client(found, 0) as s2, client(found, 0) as s3, client(found, 0) as s4:
                sockets = (s1, s2, s3, s4)
                for n in range(10):
                    for socket in sockets:
                        await socket.send_event("n", n)
                await tally.wait_for(40)
                reconnections = b.connections
                balancer.target = found.nodes[1].port
                found.kill(2)
                for n in range(10, 20):
                    for socket in sockets:
                        await socket.send_event("n", n)
                with trio.fail_after(TIMEOUT):
                    await b.wait_connected(after=reconnections)
                assert b.session == session, "the same session, resumed"
                await tally.wait_for(80)
            readers.cancel_scope.cancel()
    for socket in sockets:
        mine = sorted(n for _, sid, n, _ in tally.got if sid == socket.socket_id)
        assert mine == list(range(20)), f"{socket.socket_id}: {mine}"


async def test_the_sockets_of_a_dead_node_are_told_closed_once(nursery: trio.Nursery, redis: RedisServer) -> None:
    """Node 2 dies with a socket: the pipe on node 0 hears socket_closed for it once, with code null."""
    closed: list[SocketClosed] = []
    async with cluster(nursery, redis, pipe_app()) as found, backend(found, 0, events=("socket_existence",)) as pipe:
        await settled(found)
        async with client(found, 2) as doomed:
            await next_notice(pipe, SocketOpened, socket_id=doomed.socket_id)
            found.kill(2)
            gone = await next_notice(pipe, SocketClosed, socket_id=doomed.socket_id)
            assert (gone.code, gone.reason) == (None, None)
            closed.append(gone)
        # Anything said after the reaping comes after any second report would have.
        async with client(found, 1) as marker:
            later = await next_notice(pipe, SocketOpened, socket_id=marker.socket_id)
            assert later.socket_id == marker.socket_id


async def test_a_member_that_leaves_hands_its_sockets_over_at_once(nursery: trio.Nursery, redis: RedisServer) -> None:
    """b (node 2) leaves: the socket it served is a's (node 1) at once, unmarked, nothing lost."""
    tally = Tally()
    options: dict[str, Any] = {"events": ("socket_message",), "group": "g"}
    async with (
        cluster(nursery, redis, pipe_app(resume_grace=60.0)) as found,
        backend(found, 1, **options) as a,
        trio.open_nursery() as readers,
    ):
        readers.start_soon(consume, a, tally.take("a"))
        async with client(found, 0) as s1, client(found, 0) as s2, client(found, 0) as s3:
            sockets = (s1, s2, s3)
            async with backend(found, 2, **options) as b:
                readers.start_soon(consume, b, tally.take("b"))
                await settled(found)
                for socket in sockets:
                    await socket.send_event("n", 0)
                await tally.wait_for(3)
            # b's block returned: it left its group (and its answer came before the block ended).
            await settled(found)
            for socket in sockets:
                await socket.send_event("n", 1)
            await tally.wait_for(6)
        readers.cancel_scope.cancel()
    after = [(member, redelivered) for member, _, n, redelivered in tally.got if n == 1]
    assert after == [("a", False)] * 3


async def test_a_member_gone_for_good_is_replaced_after_its_grace(nursery: trio.Nursery, redis: RedisServer) -> None:
    """b's node dies and b never comes back: after its grace, its sockets' events reach a, marked redelivered."""
    tally = Tally()
    options: dict[str, Any] = {"events": ("socket_message",), "group": "g"}
    async with (
        cluster(nursery, redis, pipe_app(resume_grace=0.5)) as found,
        backend(found, 1, **options) as a,
        trio.open_nursery() as readers,
    ):
        readers.start_soon(consume, a, tally.take("a"))
        b_scope = trio.CancelScope()

        async def run_b(task_status: trio.TaskStatus[str]) -> None:
            with b_scope:
                async with backend(found, 2, reconnect=False, **options) as b:
                    task_status.started(b.session)
                    await consume(b, lambda note: None)  # takes nothing: its events stay unacked

        b_session = await readers.start(run_b)
        await settled(found)
        async with AsyncExitStack() as stack:
            # Sockets until both members serve some (rendezvous decides which).
            sockets: list[Any] = []
            while {owner(s.socket_id, a.session, b_session) for s in sockets} != {a.session, b_session}:
                sockets.append(await stack.enter_async_context(client(found, 0)))
            for socket in sockets:
                await socket.send_event("n", 0)
            b_sockets = [s for s in sockets if owner(s.socket_id, a.session, b_session) == b_session]
            found.kill(2)
            b_scope.cancel()
            # Every socket's message reaches a: at once for a's sockets, after b's grace for b's.
            await tally.wait_for(len(sockets))
        readers.cancel_scope.cancel()
    assert sorted(sid for _, sid, _, _ in tally.got) == sorted(s.socket_id for s in sockets)
    marked = sorted(sid for _, sid, _, redelivered in tally.got if redelivered)
    assert marked == sorted(s.socket_id for s in b_sockets), "b's events, and only those, came to a marked"


async def test_drops_are_reported_exactly_across_nodes(nursery: trio.Nursery, redis: RedisServer) -> None:
    """A group past its bounds drops events produced on another node; what arrives plus the gaps adds up."""
    from pipe_proto.pipe import Gap

    received: list[int] = []
    gaps: list[int] = []
    go = trio.Event()
    done = trio.Event()

    async def slow(pipe: Any) -> None:
        await go.wait()
        async with aclosing(pipe.events()) as notices:
            async for notice in notices:
                if isinstance(notice, Gap):
                    gaps.append(notice.dropped)
                elif isinstance(notice, SocketMessage):
                    received.append(int(notice.data))
                if len(received) + sum(gaps) >= 20:
                    done.set()

    app = pipe_app(window=2, buffer_events=5)
    async with (
        cluster(nursery, redis, app) as found,
        backend(found, 1, events=("socket_message",)) as pipe,
        trio.open_nursery() as readers,
    ):
        readers.start_soon(slow, pipe)
        await settled(found)
        async with client(found, 0) as socket:
            for n in range(20):
                await socket.send_event("n", n)
            # Every message went through Redis before this socket's join answer.
            await socket.subscribe("after-sending")
            go.set()
            with trio.fail_after(TIMEOUT):
                await done.wait()
        readers.cancel_scope.cancel()
        # Any node tells the group's counters, kept in Redis.
        status = await rest_request(found.url(2), "GET", f"/apps/{APP_ID}/status", key=KEY, secret=SECRET)
        group = json.loads(status.body)["pipe"]["groups"]["default"]
        assert (group["dropped"], group["pending"]) == (sum(gaps), 0)
    assert len(received) + sum(gaps) == 20
    # Five kept, and the window's two if the member's node read them before the burst ended.
    assert len(received) in (5, 6, 7), f"{received} {gaps}"
    assert received == sorted(received) and received[-5:] == [15, 16, 17, 18, 19]


async def test_a_pipe_survives_a_redis_restart(nursery: trio.Nursery) -> None:
    """Redis restarts empty: the node puts its pipe's session back, and messages from other nodes reach it again."""
    own = RedisServer()
    own.start()
    try:
        async with (
            cluster(nursery, own, pipe_app(), nodes=2) as found,
            backend(found, 0, events=("socket_message",)) as pipe,
        ):
            await settled(found)
            async with client(found, 1) as socket:
                await socket.send_event("before", 1)
                await next_notice(pipe, SocketMessage, name="before")
                own.restart()
                with trio.fail_after(TIMEOUT):
                    for node in found.nodes:
                        assert node.cluster is not None
                        await node.cluster.wait_disconnected()
                    for node in found.nodes:
                        await node.cluster.wait_connected()
                await settled(found)
                await socket.send_event("after", 2)
                after = await next_notice(pipe, SocketMessage, name="after")
                assert after.data == 2
    finally:
        own.stop()
