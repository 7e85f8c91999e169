"""Getting events into a server, the same way whichever server it is.

Three ways in: the baseline's `bench:publish` frame, the signed REST API of
the relay and Soketi (`POST /apps/{id}/batch_events`, signed as the SDKs
sign), and the relay's Pipe (`send_to_channel` on a backend connection).

Flow control is shared: a `Watcher` (a subscriber inside the harness) sees the
events come back, and `flood` keeps at most `in_flight` publishes (batches of
events) unacknowledged.
That is "as fast as the server accepts them" without a backlog of thousands of
events queued in socket buffers that the server would still be fanning out
long after publishing stopped, which would blur both rate and loss figures.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipe_proto.pipe import pipe_url
from pipe_proto.signatures import sign_query

from .servers import HOST, RunningServer

EVENT = "bench-event"
STALL_TIMEOUT = 10.0  # seconds without the awaited acknowledgement before flood() gives up


def payload(seq: int, size: int = 100) -> str:
    """About `size` bytes of event data carrying the wall-clock send time in
    nanoseconds; the load generator reads `ts` to compute end-to-end latency."""
    head = f'{{"seq":{seq},"ts":{time.time_ns()},"pad":"'
    return head + "x" * max(0, size - len(head) - 2) + '"}'


async def pusher_client(url: str, channel: str | None = None) -> ClientConnection:
    """Connect, wait for connection_established, optionally subscribe and wait for the ack."""
    ws = await connect(url, compression=None, max_queue=None)
    first = json.loads(await ws.recv())
    if first.get("event") != "pusher:connection_established":
        raise RuntimeError(f"unexpected first frame {first}")
    if channel is not None:
        await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
        while json.loads(await ws.recv()).get("event") != "pusher_internal:subscription_succeeded":
            pass
    return ws


class Watcher:
    """Counts the benchmark events that come back on one subscription."""

    def __init__(self, server: RunningServer, channel: str) -> None:
        self.url, self.channel = server.ws_url(), channel
        self.seen = 0
        self._wake = asyncio.Event()

    async def open(self) -> None:
        self.ws = await pusher_client(self.url, self.channel)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                event = json.loads(raw).get("event")
                if event == EVENT:
                    self.seen += 1
                    self._wake.set()
                elif event == "pusher:ping":
                    await self.ws.send('{"event":"pusher:pong","data":{}}')
        except ConnectionClosed:
            pass  # wait_until's timeout reports the stall

    async def wait_until(self, n: int) -> bool:
        """Waits until n events were seen; False if that took over STALL_TIMEOUT
        (the server is stuck, or lost events on this subscription)."""
        try:
            async with asyncio.timeout(STALL_TIMEOUT):
                while self.seen < n:
                    self._wake.clear()
                    await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if hasattr(self, "ws"):  # open() may have failed half-way
            self._task.cancel()
            await self.ws.close()


class Publisher:
    """Base: publishes lists of data strings as EVENT on one channel."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server

    async def open(self) -> None: ...

    async def publish(self, channel: str, datas: list[str]) -> None:
        raise NotImplementedError

    async def close(self) -> None: ...


class FramePublisher(Publisher):
    """The baseline's non-Pusher `bench:publish` frame, on a dedicated connection."""

    async def open(self) -> None:
        self.ws = await pusher_client(self.server.ws_url())

    async def publish(self, channel: str, datas: list[str]) -> None:
        for data in datas:
            await self.ws.send(json.dumps({"event": "bench:publish", "channel": channel, "name": EVENT, "data": data}))

    async def close(self) -> None:
        if hasattr(self, "ws"):
            await self.ws.close()


class RestPublisher(Publisher):
    """Signed REST `batch_events` over keep-alive HTTP/1.1 connections, up to `connections` at once.

    Requests are signed with the formula every Pusher SDK uses
    (`pipe_proto.signatures.sign_query`; tests/interop/test_sdks.py checks
    the relay against the official SDKs themselves) but built here: the
    Python SDK spends about 1.4 ms of CPU per request in `requests`, which
    on two cores made the harness, not the server, the bottleneck. One
    request at a time would measure a request's round trip, so several run
    at once, as from a backend's several workers; `flood` still bounds the
    publishes in flight.
    """

    connections = 4

    async def open(self) -> None:
        self.conns = [await asyncio.open_connection(HOST, self.server.api_port) for _ in range(self.connections)]
        self.idle = list(range(self.connections))
        self.reconnects = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def publish(self, channel: str, datas: list[str]) -> None:
        while not self.idle:
            done, self.tasks = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failed request fails the scenario
        conn = self.idle.pop()
        batch = [{"channel": channel, "name": EVENT, "data": d} for d in datas]
        self.tasks.add(asyncio.create_task(self._request(conn, json.dumps({"batch": batch}).encode())))

    async def _request(self, conn: int, body: bytes) -> None:
        app = self.server.spec.app
        path = f"/apps/{app.app_id}/batch_events"
        params = {
            "auth_key": app.key, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
            "body_md5": hashlib.md5(body).hexdigest(),
        }
        params["auth_signature"] = sign_query(app.secret, "POST", path, params)
        reader, writer = self.conns[conn]
        writer.write(
            f"POST {path}?{urlencode(params)} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        status = await reader.readline()
        length, close = 0, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        answer = await reader.readexactly(length)
        # Soketi answers its errors with status 200 (docs/conformance.md): the body tells.
        if status.split()[1:2] != [b"200"] or answer.startswith(b'{"error"'):
            raise RuntimeError(f"batch_events answered {status!r}: {answer[:200]!r}")
        if close:
            # Soketi closes the connection after every REST answer: an SDK's
            # keep-alive agent then opens a new one, and so does this.
            writer.close()
            self.conns[conn] = await asyncio.open_connection(HOST, self.server.api_port)
            self.reconnects += 1
        self.idle.append(conn)

    async def close(self) -> None:
        if getattr(self, "tasks", None):
            await asyncio.gather(*self.tasks)
        for _, writer in getattr(self, "conns", []):
            writer.close()


class PipePublisher(Publisher):
    """The relay's Pipe: one backend connection sending `send_to_channel` requests.

    Requests go out with `"id": null` (no reply wanted; the relay answers only
    a failure), the way a backend streams events, the events of one `publish`
    together in one `batch` frame (as `open_pipe` sends calls made together,
    and as the REST publisher sends one `batch_events`); `flood` gets its
    flow control from the Watcher, like every other publisher.
    """

    async def open(self) -> None:
        app = self.server.spec.app
        base = self.server.backend_ws_base()
        url = pipe_url(base, app_id=app.app_id, key=app.key, secret=app.secret, now=time.time())
        self.ws = await connect(url, compression=None, max_queue=None)
        first = json.loads(await self.ws.recv())
        if first.get("result", {}).get("event") != "connection_established":
            raise RuntimeError(f"unexpected first pipe frame {first}")
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # Only error notifications could come (and pings, answered by websockets).
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                if frame.get("error"):
                    raise RuntimeError(f"the relay refused a publish: {frame['error']}")
        except ConnectionClosed:
            pass

    async def publish(self, channel: str, datas: list[str]) -> None:
        calls = [
            {"method": "send_to_channel", "params": {"channel": channel, "event": EVENT, "data": data}}
            for data in datas
        ]
        # One event goes as itself, several as a batch (as open_pipe writes them).
        batch = {"method": "batch", "params": {"calls": calls}}
        request = {"id": None, **(calls[0] if len(calls) == 1 else batch)}
        await self.ws.send(json.dumps(request))

    async def close(self) -> None:
        if hasattr(self, "ws"):
            self._reader.cancel()
            await self.ws.close()


PUBLISHERS: dict[str, type[Publisher]] = {"frame": FramePublisher, "rest": RestPublisher, "pipe": PipePublisher}


class Progress:
    """How far the load generator's subscribers have read, polled in the background.

    The watcher alone paces the publisher by how fast the *server* delivers;
    a server faster than the load generator would then pile events up in its
    buffers for the load generator's sockets (and rightly close them as slow
    consumers in the end). This keeps the publisher at most `backlog` events
    ahead of the load generator's average subscriber as well.
    """

    def __init__(self, lg: Any, subscribers: int, backlog: int, every: float = 0.02) -> None:
        self.lg, self.subscribers, self.backlog, self.every = lg, subscribers, backlog, every
        self.events = 0.0
        self._moved = asyncio.Event()

    async def __aenter__(self) -> Progress:
        self._task = asyncio.create_task(self._poll())
        return self

    async def __aexit__(self, *exc: object) -> None:
        # The load generator answers one command at a time: stop polling
        # (and let the reply in flight arrive) before anyone else asks.
        self._stop = True
        await self._task

    async def _poll(self) -> None:
        self._stop = False
        while not self._stop:
            stats = await self.lg.stats()
            events = stats["delivered"] / self.subscribers
            if events != self.events:
                self.events = events
                self._moved.set()
            await asyncio.sleep(self.every)

    async def wait_within(self, sent: int) -> bool:
        """Wait until the subscribers are at most `backlog` events behind `sent`; False on a stall."""
        try:
            async with asyncio.timeout(STALL_TIMEOUT):
                while sent - self.events > self.backlog:
                    self._moved.clear()
                    await self._moved.wait()
        except TimeoutError:
            return False
        return True


async def flood(
    pub: Publisher, watcher: Watcher, channel: str, seconds: float, batch: int, in_flight: int,
    progress: Progress | None = None,
) -> tuple[int, int, bool]:
    """Publish for `seconds`, `batch` events per publish (one REST `batch_events`,
    one pipe `batch` frame), with at most `in_flight` publishes unacknowledged
    (and, with `progress`, not too far ahead of the load generator): each
    publish waits until the watcher has seen every event but the last
    `in_flight - 1` batches', so that every publish carries a whole batch.
    Returns (events sent, publishes, whether it stopped early because
    acknowledgements stalled)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sent = publishes = 0
    while loop.time() < end:
        if not await watcher.wait_until(sent - (in_flight - 1) * batch):
            return sent, publishes, True
        if progress is not None and not await progress.wait_within(sent):
            return sent, publishes, True
        await pub.publish(channel, [payload(sent + i) for i in range(batch)])
        sent += batch
        publishes += 1
    return sent, publishes, False


async def paced(pub: Publisher, channel: str, rate: float, seconds: float) -> tuple[int, float]:
    """Publish one event every 1/rate s (catching up if late); returns (sent, elapsed seconds)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    total = round(rate * seconds)
    for i in range(total):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await pub.publish(channel, [payload(i)])
    return total, loop.time() - t0
