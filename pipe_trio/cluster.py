"""A relay node's link to Redis: its calls out, in order, and its inbox in.

The core (:class:`pipe_proto.cluster.ClusterDirectory`) decides everything;
this module only moves its :class:`~pipe_proto.relay.outputs.ClusterCall`
outputs to Redis and what Redis says back to the core, through coredis on
Trio. Calls go out in the order they were made, pipelined on one connection
held for the link's life: one batch at a time, everything queued meanwhile in
the next, so a busy node makes few round trips and Redis runs its calls in
order. The node's inbox is read on a pub/sub connection of its own.

When Redis cannot be reached (at start, or later), the core is told
(``cluster_down``) and keeps serving this node's sockets from its own
records; the link tries again after 0.1 s, doubling up to 5 s, logs the
outage once and its end once, and tells the core when Redis is back
(``cluster_up``), which then resynchronises. Calls not sent when the link
broke are dropped: the resync makes up for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from pipe_proto.cluster import MERGE_ARGS, MERGE_CALLS, SCRIPT, SCRIPT_SHA1, ClusterDirectory, merged, multi, weight
from pipe_proto.relay.outputs import ClusterCall, Output

if TYPE_CHECKING:
    from pipe_proto import Relay

__all__ = ["ClusterLink", "ClusterUnavailable"]

log = logging.getLogger("pipe_trio")

#: First and longest wait between attempts to reach Redis.
RETRY_FIRST, RETRY_MAX = 0.1, 5.0
#: Calls sent in one pipeline at most.
MAX_BATCH = 1000
#: Seconds a call may take before the link counts Redis as unreachable.
CALL_TIMEOUT = 5.0


def _grouped(batch: list[tuple[ClusterCall, _Waiter | None]]) -> list[tuple[ClusterCall, _Waiter | None]]:
    """The batch as sent: each run of calls whose results nobody reads as one ``multi`` call."""
    sent: list[tuple[ClusterCall, _Waiter | None]] = []
    run: list[ClusterCall] = []
    size = 0
    for call, waiter in batch:
        if waiter is None and call.token is None:
            run.append(call)
            size += weight(call)
            # Bounded in arguments too: one script run holds Redis up for every other node.
            if len(run) < MERGE_CALLS and size < MERGE_ARGS:
                continue
        if run:
            sent.append((multi(run), None))
            run, size = [], 0
        if waiter is not None or call.token is not None:
            sent.append((call, waiter))
    if run:
        sent.append((multi(run), None))
    return sent


def _link_errors() -> tuple[type[BaseException], ...]:
    import anyio
    import coredis

    return (OSError, trio.TooSlowError, coredis.exceptions.RedisError, anyio.ClosedResourceError,
            anyio.BrokenResourceError, anyio.EndOfStream)


class ClusterUnavailable(Exception):
    """Redis could not be reached to answer a question (the REST API says 503)."""


class _Waiter:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class ClusterLink:
    """Carries one node's cluster calls and inbox.

    Args:
        url: the Redis URL (``redis://host:port/db``).
        relay: the node's core, made with a :class:`~pipe_proto.cluster.ClusterDirectory`.
        execute: carries out the core's outputs (the server's ``execute``).
        now: the core's clock.
    """

    def __init__(
        self, url: str, relay: Relay, execute: Callable[[list[Output]], None], now: Callable[[], float]
    ) -> None:
        directory = relay.directory
        assert isinstance(directory, ClusterDirectory)
        self.url = url
        self.relay = relay
        self.directory = directory
        self.execute = execute
        self.now = now
        self._queue: list[tuple[ClusterCall, _Waiter | None]] = []
        self._wake = trio.Event()
        #: Whether Redis answers now (calls and inbox).
        self.connected = False
        self.ready = trio.Event()
        self._up = trio.Event()
        self._down = trio.Event()
        #: Pipelines sent and answered, their total and last time in seconds (metrics).
        self.round_trips = 0
        self.round_trip_seconds = 0.0
        self.last_round_trip = 0.0
        #: Times Redis came back after being unreachable.
        self.reconnects = 0
        self._resync_left = 0
        self._outage_logged = False

    # --------------------------------------------------------------- calls

    def submit(self, call: ClusterCall) -> None:
        """Queue a call of the core (sent in order, soon)."""
        if self.connected:
            queue = self._queue
            if queue and queue[-1][1] is None:
                together = merged(queue[-1][0], call)
                if together is not None:
                    queue[-1] = (together, None)
                    return
            queue.append((call, None))
            self._wake.set()

    async def call(self, call: ClusterCall) -> Any:
        """Run a call and return its result (a REST question).

        Raises:
            ClusterUnavailable: Redis is not reachable, or went away meanwhile.
        """
        if not self.connected:
            raise ClusterUnavailable("Redis is unreachable")
        waiter = _Waiter()
        self._queue.append((call, waiter))
        self._wake.set()
        await waiter.done.wait()
        if waiter.error is not None:
            raise ClusterUnavailable(str(waiter.error)) from waiter.error
        return waiter.result

    # ---------------------------------------------------------------- link

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the link up until cancelled; ``nursery.start`` returns after the first attempt."""
        delay = RETRY_FIRST
        started = False
        self._outage_logged = False

        def up() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                await self._connected_once(up)
            except* _link_errors() as group:
                # Stopping: coredis may raise a closed-stream error instead of Cancelled.
                await trio.lowlevel.checkpoint_if_cancelled()
                error = group.exceptions[0]
                while isinstance(error, BaseExceptionGroup):
                    error = error.exceptions[0]
                self._went_down(error)
                if not self._outage_logged:
                    where = self._where
                    log.warning("Redis at %s is unreachable (%s); serving this node's clients alone", where, error)
                    self._outage_logged = True
            else:
                delay = RETRY_FIRST
            up()  # the server starts serving without Redis rather than wait for it
            # Cancelled here when the server stops (coredis may have raised
            # a closed-stream error instead of Cancelled while closing).
            await trio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)

    async def _connected_once(self, started: Callable[[], None]) -> None:
        import coredis
        from coredis.retry import NoRetryPolicy

        options: dict[str, Any] = {
            "retry_policy": NoRetryPolicy(),
            "stream_timeout": CALL_TIMEOUT,
            "connect_timeout": CALL_TIMEOUT,
        }
        async with coredis.Redis.from_url(self.url, decode_responses=False, **options) as client:
            await client.script_load(SCRIPT)
            async with (
                client.connection_pool.acquire() as connection,
                client.pubsub(channels=[self.directory.inbox], retry_policy=NoRetryPolicy()) as inbox,
            ):
                self._went_up()
                if self._outage_logged:
                    log.warning("Redis at %s is reachable again; this node resynchronised", self._where)
                    self._outage_logged = False
                started()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, inbox)
                    nursery.start_soon(self._send, connection)

    @property
    def _where(self) -> str:
        return self.url.rpartition("@")[2]  # never log a password

    async def wait_connected(self) -> None:
        """Wait until Redis answers and has run this node's resync."""
        await self._up.wait()

    async def wait_disconnected(self) -> None:
        """Wait until the link noticed that Redis went away."""
        await self._down.wait()

    def _went_up(self) -> None:
        if self.ready.is_set():
            self.reconnects += 1
        self.connected = True
        self.ready.set()
        self.execute(self.relay.cluster_up(self.now()))
        if self._down.is_set():
            self._down = trio.Event()
        # Up once the calls of the resync, first in the queue, have run.
        self._resync_left = len(self._queue)
        if not self._resync_left:
            self._up.set()

    def _went_down(self, error: BaseException) -> None:
        was = self.connected
        self.connected = False
        if self._up.is_set():
            self._up = trio.Event()
        self._down.set()
        queued, self._queue = self._queue, []
        for _, waiter in queued:
            if waiter is not None:
                waiter.error = error
                waiter.done.set()
        if was or not self.ready.is_set():
            self.execute(self.relay.cluster_down(self.now()))

    async def _send(self, connection: Any) -> None:
        import coredis

        lost = (OSError, coredis.exceptions.ConnectionError)
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                started = trio.current_time()
                sent = _grouped(batch)
                # The connection's own requests rather than a pipeline object:
                # the same one write and in-order answers, at half the cost.
                with trio.fail_after(CALL_TIMEOUT):
                    requests = [
                        connection.create_request(b"EVALSHA", SCRIPT_SHA1, 0, *call.args, raise_exceptions=False)
                        for call, _ in sent
                    ]
                    results = [await request for request in requests]
                for result in results:
                    if isinstance(result, lost):
                        raise result
                self.last_round_trip = trio.current_time() - started
                self.round_trip_seconds += self.last_round_trip
                self.round_trips += 1
                self._deliver(sent, tuple(results))
                if self._resync_left > 0:
                    self._resync_left -= len(batch)
                    if self._resync_left <= 0:
                        self._up.set()

    def _deliver(self, batch: list[tuple[ClusterCall, _Waiter | None]], results: tuple[Any, ...]) -> None:
        import coredis

        now = self.now()
        outputs: list[Output] = []
        for (call, waiter), result in zip(batch, results, strict=True):
            if isinstance(result, coredis.exceptions.NoScriptError):
                # Redis lost its scripts, so its data too: reconnect and resync.
                raise coredis.exceptions.ConnectionError("Redis restarted (script missing)")
            if isinstance(result, BaseException):
                log.error("cluster call %s failed: %s", call.args[0], result)
                if waiter is not None:
                    waiter.error = result
                    waiter.done.set()
                continue
            if waiter is not None:
                waiter.result = result
                waiter.done.set()
            elif call.token is not None:
                outputs.extend(self.relay.cluster_result(call.token, result, now))
        if outputs:
            self.execute(outputs)

    async def _read(self, inbox: Any) -> None:
        relay, execute, now = self.relay, self.execute, self.now
        async for message in inbox:
            if message["type"] == "message":
                execute(relay.cluster_message(message["data"], now()))

    def __len__(self) -> int:
        """Calls queued, not sent yet."""
        return len(self._queue)

    def statistics(self) -> dict[str, Any]:
        """Numbers for the status document."""
        return {"connected": self.connected, "round_trips": self.round_trips, "queued": len(self._queue)}

