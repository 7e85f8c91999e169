"""HTTP for test peers: signed REST requests out, webhooks in.

:func:`rest_request` is what a Pusher server SDK does (sign, send, read the
JSON answer) with every part of the signature overridable through
:func:`pipe_proto.testing.signed_rest_params`; :func:`http_request` sends
anything at all. :class:`WebhookReceiver` listens where a server was told to
send its webhooks and keeps every request it got.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import h11
import trio

from pipe_proto.testing.signers import signed_rest_params

__all__ = ["HttpResponse", "ReceivedRequest", "WebhookReceiver", "http_request", "rest_request"]

#: Largest response (head and body) read.
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Largest webhook request body kept.
MAX_WEBHOOK_BYTES = 1024 * 1024


@attrs.frozen
class HttpResponse:
    """An HTTP answer: status, headers (lowercased names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (``None`` when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _host_port(base: str) -> tuple[str, int, str]:
    parts = urlsplit(base)
    secure = parts.scheme in ("wss", "https")
    return parts.hostname or "127.0.0.1", parts.port or (443 if secure else 80), parts.netloc


async def http_request(
    base: str,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 5.0,  # noqa: ASYNC109
) -> HttpResponse:
    """Send one request to the server at ``base`` (``ws://`` and ``http://`` alike).

    Raises:
        OSError: the server cannot be reached or closed the connection early.
        trio.TooSlowError: no complete answer within ``timeout``.
    """
    host, port, netloc = _host_port(base)
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("Host", netloc), ("Content-Length", str(len(body))), ("Connection", "close"), *headers]
    if body and not any(k.lower() == "content-type" for k, _ in headers):
        all_headers.append(("Content-Type", "application/json"))
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            data = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
            data += conn.send(h11.Data(data=body)) or b"" if body else b""
            data += conn.send(h11.EndOfMessage()) or b""
            await stream.send_all(data)
            status, response_headers, chunks, size = 0, {}, [], 0
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    raise OSError(f"malformed HTTP response: {exc}") from None
                if event is h11.NEED_DATA:
                    received = await stream.receive_some(65536)
                    if not received and conn.their_state is h11.SEND_BODY and status:
                        break  # a body delimited by the end of the connection
                    conn.receive_data(bytes(received))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_RESPONSE_BYTES:
                        raise OSError("response too large")
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
    if not status:
        raise OSError("the server closed the connection without answering")
    return HttpResponse(status=status, headers=response_headers, body=b"".join(chunks))


async def rest_request(
    base: str,
    method: str,
    path: str,
    *,
    key: str,
    secret: str,
    params: Mapping[str, str] | None = None,
    body: Any = None,
    now: float | None = None,
    query_order: Sequence[str] | None = None,
    **signing: Any,
) -> HttpResponse:
    """A signed request to the Pusher REST API, as the SDKs send it.

    Args:
        base: the server (``ws://host:port`` or ``http://host:port``).
        method, path: e.g. ``"POST"``, ``"/apps/1/events"``.
        key, secret: the credentials to sign with.
        params: the request's own query parameters.
        body: bytes as they are, anything else as compact JSON.
        now: the clock to sign with (default: the real one).
        query_order: parameter names to put first in the URL (the
            signature does not depend on the order).
        signing: more arguments for :func:`~pipe_proto.testing.signed_rest_params`
            (``timestamp``, ``body_md5``, ``version``).
    """
    if body is None:
        raw = b""
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body, separators=(",", ":")).encode()
    query = signed_rest_params(
        key, secret, method, path, now=time.time() if now is None else now, params=params, body=raw, **signing
    )
    names = [*(query_order or ()), *(k for k in query if k not in (query_order or ()))]
    target = path + "?" + "&".join(f"{k}={quote(query[k], safe=',')}" for k in names if k in query)
    return await http_request(base, method, target, body=raw)


@attrs.frozen
class ReceivedRequest:
    """One request a :class:`WebhookReceiver` got."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body parsed as JSON (``None`` when it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class WebhookReceiver:
    """Records every HTTP request sent to it and answers 200 ``{}``.

    Start it with ``await nursery.start(receiver.serve, host, port)`` (port 0:
    any free one, then read :attr:`port`).
    """

    def __init__(self) -> None:
        self.received: list[ReceivedRequest] = []
        self._changed = trio.Event()
        self.port = 0

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[WebhookReceiver] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def wait_for(self, match: Any, timeout: float = 5.0) -> ReceivedRequest:  # noqa: ASYNC109
        """The first request (from the start) for which ``match(request)`` is true.

        Raises:
            trio.TooSlowError: none came within ``timeout``.
        """
        with trio.fail_after(timeout):
            seen = 0
            while True:
                for request in self.received[seen:]:
                    if match(request):
                        return request
                seen = len(self.received)
                changed = self._changed
                await changed.wait()

    async def _handle(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(10):
            async with stream:
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
                request: h11.Request | None = None
                body = b""
                while True:
                    try:
                        event = conn.next_event()
                    except h11.RemoteProtocolError:
                        return
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(bytes(data))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > MAX_WEBHOOK_BYTES:
                            return
                    elif isinstance(event, h11.EndOfMessage) and request is not None:
                        break
                    else:
                        return
                self.received.append(
                    ReceivedRequest(
                        method=request.method.decode(),
                        target=request.target.decode(),
                        headers={k.decode().lower(): v.decode("latin-1") for k, v in request.headers},
                        body=body,
                        at=time.time(),
                    )
                )
                self._changed.set()
                self._changed = trio.Event()
                answer = b"{}"
                headers = [("content-type", "application/json"), ("content-length", str(len(answer))),
                           ("connection", "close")]
                await stream.send_all(
                    (conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                    + (conn.send(h11.Data(data=answer)) or b"")
                    + (conn.send(h11.EndOfMessage()) or b"")
                )
