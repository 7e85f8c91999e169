"""A fake backend: a raw Pipe connection a test drives request by request.

:func:`open_fake_backend` signs the URL with ``pipe_proto``'s
:func:`~pipe_proto.pipe.pipe_url` (or a deliberately wrong variant), reports
a refused handshake as an outcome (``http_status``), and reads the relay's
frames with ``pipe_proto``'s client-side codec. Nothing is automatic: no
subscription, no acks, no reconnection, so a test sees exactly what the
relay does.

::

    async with open_fake_backend(url, app_id="1", key=KEY, secret=SECRET) as pipe:
        await pipe.call(SubscribeEvents(events=["socket_existence"]))
        opened = await pipe.notification(SocketOpened)
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import quote, urlencode

import trio
import trio_websocket

from pipe_proto.errors import RemoteProtocolError
from pipe_proto.pipe import (
    Ack,
    ErrorNotification,
    ErrorReply,
    Established,
    Notice,
    Notification,
    PipeCall,
    Reply,
    Request,
    decode_server_frame,
    encode_request,
    pipe_url,
)
from pipe_proto.signatures import sign_query

from .sockets import _alone, _rejection, connect_ws

__all__ = ["FakeBackend", "open_fake_backend", "signed_pipe_url"]

Frame = Reply | ErrorReply | Notification | ErrorNotification
NoticeMatch = type[Notice] | str | Callable[[Notification], bool] | None


def signed_pipe_url(
    base: str,
    *,
    app_id: str,
    key: str,
    secret: str,
    version: str = "1.0",
    timestamp: int | None = None,
    extra: dict[str, str] | None = None,
    **options: Any,
) -> str:
    """The URL a pipe connects to, signed (``timestamp`` to send a stale one; ``extra``
    parameters are added to the signed query, e.g. an odd ``protocol_version``)."""
    now = time.time() if timestamp is None else timestamp
    if not extra:
        return pipe_url(base, app_id=app_id, key=key, secret=secret, now=now, version=version, **options)
    params = {"auth_key": key, "auth_timestamp": str(int(now)), "auth_version": "1.0", "protocol_version": version}
    params.update({k: str(v) for k, v in options.items() if v is not None})
    params.update(extra)
    path = f"/app/{app_id}"
    signature = sign_query(secret, "WEBSOCKET", path, params)
    return f"{base.rstrip('/')}{path}?{urlencode(params, quote_via=quote)}&auth_signature={signature}"


class FakeBackend:
    """One raw pipe (made by :func:`open_fake_backend`).

    Attributes:
        established: the ``connection_established`` notice, or ``None`` when refused.
        http_status, http_body: the refusal of the upgrade, if any.
        close_code: set once the relay closed the pipe.
    """

    def __init__(self) -> None:
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.established: Established | None = None
        self.established_seq: int | None = None
        self.http_status: int | None = None
        self.http_body: bytes = b""
        self.close_code: int | None = None
        self.unreadable: list[str] = []
        self._next_id = 1
        self._replies: dict[Any, Reply | ErrorReply] = {}
        self._notifications: deque[Notification] = deque()
        self._errors: deque[ErrorNotification] = deque()
        self._changed = trio.Event()
        self._closed = trio.Event()

    @property
    def closed(self) -> bool:
        """Whether the pipe has ended."""
        return self._closed.is_set()

    async def send_raw(self, text: str) -> None:
        """Send one text frame as is."""
        if self.ws is None:
            raise trio.ClosedResourceError("the pipe is not connected")
        await self.ws.send_message(text)

    async def request(self, method: str, params: Any = None, *, request_id: Any = "auto") -> Reply | ErrorReply | None:
        """Send a raw request ``{"id", "method", "params"}`` and wait for its reply.

        ``request_id=None`` sends it without an id and returns ``None`` at once.
        """
        if request_id == "auto":
            request_id = f"r{self._next_id}"
            self._next_id += 1
        await self.send_raw(json.dumps({"id": request_id, "method": method, "params": params or {}}))
        if request_id is None:
            return None
        return await self._reply(request_id)

    async def call(self, call: PipeCall, *, timeout: float = 3.0) -> Reply | ErrorReply:  # noqa: ASYNC109
        """Send a call (encoded by ``pipe_proto``) and wait for its reply.

        Raises:
            trio.TooSlowError: no reply within ``timeout``.
        """
        request_id = self._next_id
        self._next_id += 1
        await self.send_raw(encode_request(Request(id=request_id, call=call)))
        return await self._reply(request_id, timeout)

    async def ack(self, seq: int) -> None:
        """Acknowledge every notification up to ``seq`` (no reply is asked for)."""
        await self.send_raw(encode_request(Request(id=None, call=Ack(seq=seq))))

    async def _wait(self, ready: Callable[[], Any], timeout: float) -> Any:  # noqa: ASYNC109
        with trio.fail_after(timeout):
            while True:
                found = ready()
                if found is not None:
                    return found
                if self._closed.is_set():
                    raise trio.ClosedResourceError(f"the pipe closed ({self.close_code})")
                await self._changed.wait()

    async def _reply(self, request_id: Any, timeout: float = 3.0) -> Reply | ErrorReply:  # noqa: ASYNC109
        reply: Reply | ErrorReply = await self._wait(lambda: self._replies.pop(request_id, None), timeout)
        return reply

    async def notification(self, match: NoticeMatch = None, timeout: float = 3.0) -> Notification:  # noqa: ASYNC109
        """The first queued notification matching ``match`` (a notice class, an event name
        or a predicate on the envelope); the ones before it are dropped.

        Raises:
            trio.TooSlowError: none came within ``timeout``.
            trio.ClosedResourceError: the pipe closed first.
        """
        def ready() -> Notification | None:
            while self._notifications:
                item = self._notifications.popleft()
                if _matches(match, item):
                    return item
            return None

        found: Notification = await self._wait(ready, timeout)
        return found

    async def error_notification(self, timeout: float = 3.0) -> ErrorNotification:  # noqa: ASYNC109
        """The next error notification (an error not tied to a request)."""
        found: ErrorNotification = await self._wait(
            lambda: self._errors.popleft() if self._errors else None, timeout
        )
        return found

    async def gather(self, seconds: float) -> list[Notification]:
        """The notifications that arrive within ``seconds`` (and those already queued)."""
        with trio.move_on_after(seconds):
            await self._closed.wait()
        items = list(self._notifications)
        self._notifications.clear()
        return items

    async def wait_closed(self, timeout: float = 3.0) -> int:  # noqa: ASYNC109
        """Wait for the relay to close the pipe; returns the close code."""
        with trio.fail_after(timeout):
            await self._closed.wait()
        return self.close_code or 1006

    def _ended(self, code: int) -> None:
        if not self._closed.is_set():
            self.close_code = code
            self._closed.set()
        self._changed.set()

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            while True:
                try:
                    message = await self.ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    self._ended(exc.reason.code if exc.reason is not None else 1006)
                    return
                try:
                    frame: Frame = decode_server_frame(message)
                except RemoteProtocolError:
                    self.unreadable.append(str(message))
                    continue
                if isinstance(frame, Notification):
                    if isinstance(frame.notice, Established) and self.established is None:
                        self.established = frame.notice
                        self.established_seq = frame.seq
                    else:
                        self._notifications.append(frame)
                elif isinstance(frame, ErrorNotification):
                    self._errors.append(frame)
                else:
                    self._replies[frame.id] = frame
                self._changed.set()
                self._changed = trio.Event()
        finally:
            self._ended(1006)

    async def close(self, code: int = 1000) -> None:
        """Close the pipe (a no-op when it is closed already)."""
        if self.ws is not None:
            with suppress(trio_websocket.ConnectionClosed), trio.move_on_after(2):
                await self.ws.aclose(code=code)


def _matches(match: NoticeMatch, item: Notification) -> bool:
    if match is None:
        return True
    if isinstance(match, str):
        return item.notice.event == match
    if isinstance(match, type):
        return isinstance(item.notice, match)
    return bool(match(item))


@asynccontextmanager
async def open_fake_backend(
    base: str,
    *,
    app_id: str,
    key: str,
    secret: str,
    url: str | None = None,
    timeout: float = 3.0,  # noqa: ASYNC109
    **options: Any,
) -> AsyncIterator[FakeBackend]:
    """Open a pipe to the relay at ``base`` (``ws://host:port``).

    Returns once ``connection_established`` arrived or the upgrade was
    refused (see :attr:`FakeBackend.http_status`). ``url`` replaces the signed
    URL; other ``options`` go to :func:`signed_pipe_url` (``version``,
    ``group``, ``session``, ``last_seq``, ``timestamp``, ``extra``).

    Raises:
        OSError: nothing listens at ``base``.
        trio.TooSlowError: no ``connection_established`` within ``timeout``.
    """
    backend = FakeBackend()
    target = url or signed_pipe_url(base, app_id=app_id, key=key, secret=secret, **options)
    streams: list[trio.abc.Stream] = []
    entered = False
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(timeout):
                ws = await connect_ws(nursery, target, streams)
            backend.ws = ws
            nursery.start_soon(backend._read)
            with trio.fail_after(timeout):
                while backend.established is None and not backend.closed:
                    await backend._changed.wait()
            entered = True
            try:
                yield backend
            finally:
                with trio.CancelScope(shield=True):
                    await backend.close()
                nursery.cancel_scope.cancel()
    except (trio_websocket.ConnectionRejected, BaseExceptionGroup) as exc:
        rejected = _rejection(exc)
        if entered:
            raise
        if rejected is None:
            raise _alone(exc) from None
        backend.http_status, backend.http_body = rejected.status_code, rejected.body or b""
        backend._ended(1006)
        yield backend
    finally:
        for stream in streams:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
