"""A fake relay on a port, for testing a Pipe client: :class:`~pipe_proto.testing.FakeRelay` served by Trio.

::

    async with serve_fake_relay(App(id="1", key="k", secret="s")) as relay:
        async with open_pipe(relay.url, app_id="1", key="k", secret="s") as pipe:
            await relay.notify(SocketOpened(socket_id="1.1"))
            call = await relay.wait_call("send_to_socket")
            await relay.kick()                       # the client reconnects and resumes
            await relay.wait_connections(2)

Everything the script decides lives in the sans-I/O :class:`FakeRelay`
(``relay.core``); this module only accepts connections, moves frames and
closes connections when told.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket

from pipe_proto import App, PipeCode, PusherCode
from pipe_proto.pipe import Notice, PipeRefused, Request
from pipe_proto.testing.fake_relay import FakeRelay, PipeConnection

__all__ = ["FakeRelayServer", "serve_fake_relay"]


class FakeRelayServer:
    """A :class:`FakeRelay` listening on 127.0.0.1 (made by :func:`serve_fake_relay`).

    Attributes:
        core: the sans-I/O fake relay (script it directly: ``refuse_next``,
            ``fail_next``, ``drop``, ``expire_sessions``; read ``calls``,
            ``auth_answers``, ``handshakes``).
        url: ``ws://127.0.0.1:PORT``, to give to the client.
        connections: how many connections were accepted so far.
    """

    def __init__(self, core: FakeRelay) -> None:
        self.core = core
        self.url = ""
        self.connections = 0
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._conn: PipeConnection | None = None
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _until(self, ready: Callable[[], Any], timeout: float) -> Any:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while True:
                found = ready()
                if found:
                    return found
                await self._changed.wait()

    async def _send(self, frames: list[str]) -> None:
        ws = self._ws
        if ws is None:
            return
        for frame in frames:
            with suppress(trio_websocket.ConnectionClosed):
                await ws.send_message(frame)

    async def notify(self, notice: Notice) -> None:
        """Send a notification (kept for the replay when the client is disconnected)."""
        await self._send(self.core.notify(notice, time.time()))

    async def auth_request(self, socket_id: str, *, kind: str = "channel", channel: str | None = None,
                           timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Ask the client to authorize a socket and wait for its ``AuthResponse``."""
        request_id, frames = self.core.auth_request(socket_id, time.time(), kind=kind, channel=channel)
        await self._send(frames)
        return await self._until(lambda: self.core.auth_answers.get(request_id), timeout)

    async def wait_call(self, method: str, *, after: int = 0, timeout: float = 5.0) -> Request:  # noqa: ASYNC109
        """The first request of ``method`` among the client's calls from index ``after`` on."""
        def found() -> Request | None:
            return next((r for r in self.core.calls[after:] if r.call.method == method), None)

        request: Request = await self._until(found, timeout)
        return request

    async def wait_connections(self, count: int, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``count`` connections have been accepted."""
        await self._until(lambda: self.connections >= count, timeout)

    async def kick(self, code: int = 4200, reason: str = "kicked by the test") -> None:
        """Close the client's current connection (4200: reconnect at once)."""
        ws = self._ws
        if ws is not None:
            with suppress(trio_websocket.ConnectionClosed):
                await ws.aclose(code=code, reason=reason)

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        parts = urlsplit(request.path)
        app_id = parts.path.rsplit("/", 1)[-1]
        outcome = self.core.connect(app_id, dict(parse_qsl(parts.query)), time.time())
        if isinstance(outcome, PipeRefused):
            body = json.dumps({"error": outcome.message}).encode()
            await request.reject(outcome.status, extra_headers=[(b"content-type", b"application/json")], body=body)
            self._wake()
            return
        if self._ws is not None:
            # As the relay closes a connection whose session another resumed (4203), else 4200.
            taken_over = outcome.resumed and self._conn is not None and outcome.session is self._conn.session
            code = PipeCode.SESSION_TAKEN_OVER if taken_over else PusherCode.RECONNECT
            with suppress(trio_websocket.ConnectionClosed):
                await self._ws.aclose(code=code, reason="replaced by a new connection")
        ws = await request.accept()
        self._ws, self._conn = ws, outcome
        self.connections += 1
        await self._send(outcome.opening_frames(time.time()))
        self._wake()
        try:
            while True:
                try:
                    text = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    break
                if isinstance(text, str):
                    frames = outcome.receive(text, time.time())
                    self._wake()
                    if self._conn is outcome:
                        await self._send(frames)
        finally:
            outcome.closed()
            if self._ws is ws:
                self._ws, self._conn = None, None
            self._wake()


@asynccontextmanager
async def serve_fake_relay(app: App | FakeRelay, *, heartbeat: float = 25.0) -> AsyncIterator[FakeRelayServer]:
    """Serve a fake relay for ``app`` (or a ready :class:`FakeRelay`) on a free port of 127.0.0.1."""
    core = app if isinstance(app, FakeRelay) else FakeRelay(app, heartbeat=heartbeat)
    server = FakeRelayServer(core)
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(
            lambda task_status: trio_websocket.serve_websocket(
                server._handle, "127.0.0.1", 0, None, handler_nursery=nursery,
                disconnect_timeout=1, task_status=task_status,
            )
        )
        server.url = f"ws://127.0.0.1:{listening.port}"
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
