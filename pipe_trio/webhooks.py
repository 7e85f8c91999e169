"""Sending webhooks: a bounded queue per target, batching, retries with back-off.

The relay core decides which webhook events exist (:mod:`pipe_proto.webhooks`);
this sender only moves them. :meth:`WebhookSender.add` never blocks: each
(app, URL) target has a queue of at most ``max_queue`` events, and when it is
full the oldest event is dropped, counted and logged. One task per target
takes up to ``max_batch`` queued events, signs them into one body
(:func:`pipe_proto.webhooks.build_request`), and POSTs it; a failure (no
connection, a timeout, a non-2xx status) is retried on the schedule of
:func:`pipe_proto.webhooks.retry_delay` until ``MAX_RETRY_SECONDS`` after the
body was made, then dropped and counted. A slow or dead endpoint therefore
costs a bounded queue and one task, never the relay's time.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from pipe_proto import AppRegistry
from pipe_proto.webhooks import MAX_RETRY_SECONDS, WebhookRequest, build_request, retry_delay

from .logs import fields

__all__ = ["WebhookSender"]

log = logging.getLogger("pipe_trio.webhooks")


_PER_APP = ("sent", "failed", "retried", "dropped", "queued")


class _Target:
    __slots__ = ("app_id", "dropped", "failed", "queue", "retried", "running", "sent", "url")

    def __init__(self, app_id: str, url: str, max_queue: int) -> None:
        self.app_id = app_id
        self.url = url
        self.queue: deque[dict[str, Any]] = deque(maxlen=max_queue)
        self.running = False
        # Since the start: events delivered and given up, requests failed and tried again.
        self.sent = 0
        self.dropped = 0
        self.failed = 0
        self.retried = 0


class WebhookSender:
    """Delivers webhook events for the apps of a relay.

    Args:
        apps: the apps (for keys and secrets).
        clock: returns seconds since the epoch (the server's core clock).
        max_queue: events queued per target before the oldest are dropped.
        max_batch: events per webhook body.
        timeout: seconds one POST may take.
    """

    def __init__(
        self,
        apps: AppRegistry,
        clock: Any,
        *,
        max_queue: int = 10000,
        max_batch: int = 100,
        timeout: float = 10.0,
    ) -> None:
        self.apps = apps
        self.clock = clock
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.timeout = timeout
        self._targets: dict[tuple[str, str], _Target] = {}
        self._nursery: trio.Nursery | None = None
        self._idle: trio.Event | None = None
        self.stats = {"sent": 0, "failed_attempts": 0, "dropped": 0}

    def per_app(self) -> dict[str, dict[str, int]]:
        """Per app id: events ``sent``, ``dropped`` and ``queued``, requests ``failed`` and ``retried``."""
        apps: dict[str, dict[str, int]] = {}
        for target in self._targets.values():
            numbers = apps.setdefault(target.app_id, dict.fromkeys(_PER_APP, 0))
            numbers["sent"] += target.sent
            numbers["failed"] += target.failed
            numbers["retried"] += target.retried
            numbers["dropped"] += target.dropped
            numbers["queued"] += len(target.queue)
        return apps

    def add(self, app_id: str, urls: tuple[str, ...], event: dict[str, Any]) -> None:
        """Queue one event for each URL (never blocks)."""
        for url in urls:
            target = self._targets.get((app_id, url))
            if target is None:
                target = self._targets[(app_id, url)] = _Target(app_id, url, self.max_queue)
            if len(target.queue) == target.queue.maxlen:
                self.stats["dropped"] += 1
                target.dropped += 1
                if target.dropped % 1000 == 1:  # the first, then one line per thousand
                    log.warning("webhook queue for %s full: dropped %d events so far", url, target.dropped)
            target.queue.append(event)
            if not target.running and self._nursery is not None:
                target.running = True
                self._nursery.start_soon(self._deliver, target)

    async def run(self) -> None:
        """Run the sender's tasks until cancelled (events added after that stay queued)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for target in self._targets.values():
                    if target.queue and not target.running:
                        target.running = True
                        nursery.start_soon(self._deliver, target)
                await trio.sleep_forever()
        finally:
            self._nursery = None

    async def drain(self) -> None:
        """Wait until every queue is empty and nothing is being sent (shutdown, under a timeout)."""
        while any(t.queue or t.running for t in self._targets.values()):
            self._idle = trio.Event()
            await self._idle.wait()

    async def _deliver(self, target: _Target) -> None:
        try:
            while target.queue:
                app = self.apps.by_id(target.app_id)
                batch = [target.queue.popleft() for _ in range(min(self.max_batch, len(target.queue)))]
                if app is None:
                    continue
                request = build_request(app, batch, self.clock())
                await self._send_with_retries(target, request, len(batch))
        finally:
            target.running = False
            if self._idle is not None and not any(t.running for t in self._targets.values()):
                self._idle.set()

    async def _send_with_retries(self, target: _Target, request: WebhookRequest, count: int) -> None:
        made = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                with trio.fail_after(self.timeout):
                    status = await post(target.url, request.body, request.headers)
                if 200 <= status < 300:
                    self.stats["sent"] += count
                    target.sent += count
                    return
                problem = f"status {status}"
            except (
                OSError, trio.TooSlowError, h11.ProtocolError, trio.BrokenResourceError, ssl.SSLError,
                ValueError,  # a host name the resolver cannot encode, say: this target's failure, nobody else's
            ) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.stats["failed_attempts"] += 1
            target.failed += 1
            delay = retry_delay(attempt)
            if self.clock() + delay - made > MAX_RETRY_SECONDS:
                self.stats["dropped"] += count
                target.dropped += count
                log.warning(
                    "webhook to %s failed (%s); gave up on %d events", target.url, problem, count,
                    extra=fields("webhook_dropped", app=target.app_id, url=target.url, problem=problem, events=count),
                )
                return
            target.retried += 1
            log.info(
                "webhook to %s failed (%s); retry %d in %.0fs", target.url, problem, attempt, delay,
                extra=fields("webhook_failed", app=target.app_id, url=target.url, problem=problem, attempt=attempt),
            )
            await trio.sleep(delay)


async def post(url: str, body: bytes, headers: tuple[tuple[str, str], ...]) -> int:
    """POST ``body`` to ``url`` with h11; returns the status (the response body is read and dropped)."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if secure:
        stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host, https_compatible=True)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("host", parts.netloc),
                ("content-length", str(len(body))),
                ("connection", "close"),
                ("user-agent", "pipe-relay webhooks"),
                *headers,
            ],
        )
        head = conn.send(request) or b""
        await stream.send_all(head + (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status
