"""A tiny HTTP server for tests: records requests, answers as told (or never)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import h11
import trio


@attrs.define
class Received:
    """One request the receiver got."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float


class HttpReceiver:
    """Serves on 127.0.0.1; ``answer(request) -> status`` decides (``None``: hang).

    ``received`` grows with every request; :meth:`wait_for` waits until it has ``n``.
    """

    def __init__(self, answer: Callable[[Received], int | None] = lambda r: 200) -> None:
        self.answer = answer
        self.received: list[Received] = []
        self._changed = trio.Event()
        self.port = 0

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def wait_for(self, count: int) -> list[Received]:
        """Wait until at least ``count`` requests arrived."""
        while len(self.received) < count:
            self._changed = trio.Event()
            await self._changed.wait()
        return self.received

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return
        assert request is not None
        received = Received(
            method=request.method.decode(),
            target=request.target.decode(),
            headers={k.decode(): v.decode() for k, v in request.headers},
            body=body,
            at=trio.current_time(),
        )
        self.received.append(received)
        self._changed.set()
        status = self.answer(received)
        if status is None:
            await trio.sleep_forever()
        response = h11.Response(status_code=status, headers=[("content-length", "0"), ("connection", "close")])
        await stream.send_all(conn.send(response) + (conn.send(h11.EndOfMessage()) or b""))
        await stream.aclose()
