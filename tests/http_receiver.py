"""A tiny HTTP server for tests: records requests, answers as told (or never).

``read_request`` and ``respond`` serve the other small test servers too.
"""

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
        read = await read_request(stream)
        if read is None:
            return
        conn, request, body = read
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
        await respond(stream, conn, status)
        await stream.aclose()


async def read_request(stream: trio.abc.Stream) -> tuple[h11.Connection, h11.Request, bytes] | None:
    """One whole HTTP request from ``stream`` (None if the client went away first)."""
    conn = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return conn, request, body
        else:
            return None


async def respond(
    stream: trio.abc.Stream, conn: h11.Connection, status: int, body: bytes = b"", content_type: str | None = None
) -> None:
    """Answer the request read from ``conn``, closing the connection after it."""
    headers = [("content-length", str(len(body))), ("connection", "close")]
    if content_type is not None:
        headers.insert(0, ("content-type", content_type))
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))
