"""The relay server over real loopback sockets: HTTP, WebSocket, limits, shutdown, TLS, heartbeat.

Every test bounds itself with ``trio.fail_after`` and waits on the event it
checks (a frame, a close, a connection leaving ``server.conns``), never on a
sleep. Heartbeat tests run on Trio's ``MockClock`` (``autojump_clock``), where
sleeping is how time is advanced, not how tasks are synchronised.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import h11
import pytest
import trio
import trio.testing
import trio_websocket
import trustme
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Pong, Request, TextMessage

from pipe_proto import App, Features, Limits, Relay
from pipe_trio import RelayServer, connect, open_pipe, serve
from pipe_trio._websocket import BURST_ALLOWANCE
from tests.support import APP_ID, APP_KEY, APP_SECRET, pure_core_only, start_relay

pytestmark = pytest.mark.both_transports

SOCKET_PATH = f"/app/{APP_KEY}?protocol=7&client=js&version=8.6.0&flash=false"


# ----------------------------------------------------------------- helpers


async def http_request(
    port: int,
    target: str,
    method: str = "GET",
    headers: list[tuple[str, str]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a new connection; returns status, headers and body."""
    stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1", https_compatible=True)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method=method, target=target, headers=[("host", "127.0.0.1"), *(headers or [])])
        await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        status, found, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                found = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, found, body
            else:  # pragma: no cover - the server cut the connection
                raise AssertionError(f"unexpected {event!r}")


async def next_json(ws: trio_websocket.WebSocketConnection) -> Any:
    """The next text message of ``ws``, decoded."""
    message = await ws.get_message()
    assert isinstance(message, str), message
    return json.loads(message)


@asynccontextmanager
async def ws_connect(
    server: RelayServer, path: str = SOCKET_PATH, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A trio-websocket client connection to ``path`` on ``server`` (wss when ``ssl_context``).

    The test owns the TCP stream and closes it: trio-websocket leaves it open
    when the server starts the closing handshake.
    """
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    if ssl_context is not None:
        stream = trio.SSLStream(stream, ssl_context, server_hostname="127.0.0.1", https_compatible=True)
    async with stream, trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", path)
        try:
            yield ws
        finally:
            await ws.aclose()


@asynccontextmanager
async def raw_socket(
    server: RelayServer, key: str = APP_KEY, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[trio_websocket.WebSocketConnection, str]]:
    """A trio-websocket connection to ``/app/{key}``; yields it and its socket id."""
    async with ws_connect(server, f"/app/{key}?protocol=7", ssl_context) as ws:
        first = await next_json(ws)
        assert first["event"] == "pusher:connection_established", first
        yield ws, json.loads(first["data"])["socket_id"]


async def subscribe(ws: trio_websocket.WebSocketConnection, channel: str) -> None:
    """Subscribe to a public channel and wait for the confirmation."""
    await ws.send_message(json.dumps({"event": "pusher:subscribe", "data": {"auth": "", "channel": channel}}))
    assert await next_json(ws) == {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}


def publish(server: RelayServer, channel: str, event: str, data: str, app_id: str = APP_ID) -> None:
    """Publish a channel event as the REST API would, through the server's ``execute``."""
    server.execute(server.relay.publish(app_id, [channel], event, data, None, server.now()))


def event_frame(channel: str, event: str, data: str) -> dict[str, str]:
    """The frame a subscriber receives for a published event."""
    return {"event": event, "channel": channel, "data": data}


class RawClient:
    """A WebSocket client on a bare socket (wsproto): reads only when the test asks.

    Unlike trio-websocket, it has no background reader, so a test can stop
    reading entirely, shrink the socket's receive buffer, and send fragments.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._pending: list[Any] = []

    @classmethod
    async def connect(cls, port: int, target: str, rcvbuf: int | None = None) -> RawClient:
        """Open a TCP connection (optionally with a small receive buffer) and upgrade it."""
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        client = cls(trio.SocketStream(sock))
        await client.stream.send_all(client.ws.send(Request(host="127.0.0.1", target=target)))
        event = await client.next_event()
        if not isinstance(event, AcceptConnection):
            await client.stream.aclose()
            raise AssertionError(f"upgrade refused: {event!r}")
        return client

    async def _next_piece(self) -> Any:
        while not self._pending:
            self._pending.extend(self.ws.events())
            if self._pending:
                break
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
        return self._pending.pop(0)

    async def next_event(self) -> Any:
        """The next wsproto event from the server, text messages reassembled (reads as needed)."""
        event = await self._next_piece()
        parts = []
        while isinstance(event, TextMessage) and not event.message_finished:
            parts.append(event.data)
            event = await self._next_piece()
            assert isinstance(event, TextMessage), event
        if parts:
            return TextMessage(data="".join([*parts, event.data]))
        return event

    async def next_text(self) -> Any:
        """The next text message, decoded from JSON (fails on anything else)."""
        event = await self.next_event()
        assert isinstance(event, TextMessage), event
        return json.loads(event.data)

    async def send(self, event: Any) -> None:
        """Send one wsproto event."""
        await self.stream.send_all(self.ws.send(event))

    async def aclose(self) -> None:
        """Drop the connection without a closing handshake."""
        await self.stream.aclose()


UPGRADE_HEAD = (
    f"GET {SOCKET_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
).encode()


async def assert_not_served(port: int) -> None:
    """A new connection is refused, or reset/closed without an answer (listener closing)."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    async with stream:
        try:
            await stream.send_all(UPGRADE_HEAD)
            assert await stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            pass


# -------------------------------------------------------------------- HTTP


async def test_the_relay_runs_on_the_transport_asked_for(relay_server: RelayServer, relay_transport: str) -> None:
    """The adapter suite runs twice: on the fast transport (Linux) and on the portable one."""
    assert relay_server.transport.name == relay_transport


async def test_status_document(relay_server: RelayServer) -> None:
    """GET / answers 200 with the JSON status document, counting open sockets."""
    with trio.fail_after(10):
        async with raw_socket(relay_server):
            status, headers, body = await http_request(relay_server.port, "/")
    assert status == 200
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert document["name"] == "pipe-relay"
    assert document["status"] == "ok"
    assert document["sockets"] == 1
    assert document["pipes"] == 0


@pytest.mark.parametrize(("target", "status"), [("/", 200), ("/pipe-client.js", 200), ("/nope", 404)])
async def test_head_has_headers_but_no_body(relay_server: RelayServer, target: str, status: int) -> None:
    """HEAD answers the status and headers of GET, its length included, without a body."""
    with trio.fail_after(10):
        got, headers, body = await http_request(relay_server.port, target, method="HEAD")
        _, get_headers, get_body = await http_request(relay_server.port, target)
    assert got == status
    assert body == b""
    assert headers["content-type"] == get_headers["content-type"]
    if target != "/":  # the status document's length changes with its uptime
        assert int(headers["content-length"]) == len(get_body)


async def test_pipe_client_js_served(relay_server: RelayServer) -> None:
    """GET /pipe-client.js answers 200 with a JavaScript content type."""
    with trio.fail_after(10):
        status, headers, body = await http_request(relay_server.port, "/pipe-client.js")
    assert status == 200
    assert headers["content-type"].split(";")[0] in ("application/javascript", "text/javascript")
    assert int(headers["content-length"]) == len(body) > 0


@pytest.mark.parametrize(("method", "target"), [("GET", "/nope"), ("GET", "/app"), ("POST", "/"), ("DELETE", "/x")])
async def test_unknown_path_is_404_json(relay_server: RelayServer, method: str, target: str) -> None:
    """Requests outside the routes get 404 with a JSON error body."""
    with trio.fail_after(10):
        status, headers, body = await http_request(relay_server.port, target, method=method)
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)


async def test_malformed_http_gets_400(relay_server: RelayServer) -> None:
    """Bytes that are not HTTP get a 400 answer and a closed connection, not a crash."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
        status, _, _ = await http_request(relay_server.port, "/")
    assert received.startswith(b"HTTP/1.1 400")
    assert status == 200


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n",
        f"GET {SOCKET_PATH} HTTP/1.1\r\nupgrade: websocket\r\n".encode(),
        b"POST /apps/1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n\r\n{",
        UPGRADE_HEAD[:-2] + b"content-length: 10\r\n\r\n",
    ],
    ids=["nothing", "half a head", "half an upgrade", "half a body", "upgrade body"],
)
async def test_stalled_http_connection_cut_quietly(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, sent: bytes
) -> None:
    """A connection that stalls before its request is complete is closed after the idle timeout, logging no error."""
    server = await start_relay(nursery)
    with trio.fail_after(300):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(sent)
            start = trio.current_time()
            assert await stream.receive_some(1024) == b""
            waited = trio.current_time() - start
    assert 59 <= waited <= 62
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_malformed_rest_body_gets_400(relay_server: RelayServer, caplog: pytest.LogCaptureFixture) -> None:
    """A REST request whose chunked body is malformed is answered 400, not treated as a server failure."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            head = b"POST /apps/1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n"
            await stream.send_all(head + b"zz\r\nnot a chunk\r\n")
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 400")
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_peer_ignoring_close_is_cut(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A peer that neither reads nor answers a close the relay started is disconnected after CLOSE_TIMEOUT."""
    server = await start_relay(nursery)
    with trio.fail_after(300):
        client = await RawClient.connect(server.port, SOCKET_PATH)
        try:
            established = await client.next_text()
            socket_id = json.loads(established["data"])["socket_id"]
            start = trio.current_time()
            server.execute(server.relay.close_socket(socket_id, 4009, "You got disconnected by the app.", server.now()))
            assert socket_id not in server.conns
            # The client reads only now: the error, the close frame, then the end of the TCP stream.
            assert (await client.next_text())["data"]["code"] == 4009
            close = await client.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == 4009
            assert await client.stream.receive_some(1024) == b""
            assert 4.9 <= trio.current_time() - start <= 6
        finally:
            await client.aclose()


# ------------------------------------------------------------- upgrades


async def test_upgrade_on_unknown_path_gets_4005(relay_server: RelayServer) -> None:
    """A WebSocket upgrade outside /app/{key} is accepted, sent pusher:error 4005 and closed with 4005."""
    with trio.fail_after(10):
        async with ws_connect(relay_server, "/foo/app-key?protocol=7") as ws:
            frame = await next_json(ws)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert frame["event"] == "pusher:error"
    assert frame["data"]["code"] == 4005
    assert closed.value.reason.code == 4005
    assert relay_server.relay.stats()["sockets"] == 0


async def test_unknown_key_gets_4001(relay_server: RelayServer) -> None:
    """An unknown app key gets pusher:error 4001 then close 4001, and nothing is kept."""
    with trio.fail_after(10):
        async with ws_connect(relay_server, "/app/nobody?protocol=7") as ws:
            frame = await next_json(ws)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert frame["data"]["code"] == 4001
    assert closed.value.reason.code == 4001
    assert relay_server.conns == {}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-version", "13")], 400),
        (
            [
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "8"),
            ],
            426,
        ),
        (
            [
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-key", "not sixteen bytes"),
                ("sec-websocket-version", "13"),
            ],
            400,
        ),
    ],
)
async def test_malformed_upgrade_refused_over_http(
    relay_server: RelayServer, headers: list[tuple[str, str]], status: int
) -> None:
    """An upgrade without a key (or with a key of other than 16 bytes) gets 400, one of another version 426."""
    with trio.fail_after(10):
        got, found, body = await http_request(relay_server.port, SOCKET_PATH, headers=headers)
    assert got == status
    assert "error" in json.loads(body)
    assert found.get("sec-websocket-version") == ("13" if status == 426 else None)


async def test_an_http_1_0_upgrade_is_refused_400(relay_server: RelayServer) -> None:
    """RFC 6455 4.1: an upgrade needs HTTP/1.1; an HTTP/1.0 request gets 400 and is closed."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(UPGRADE_HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"))
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    assert relay_server.relay.stats()["sockets"] == 0


# ------------------------------------------------------------- bad input

BAD_FRAMES = [
    ("not json", "Invalid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"event": 5}', "'event' string"),
    ('{"data": {}}', "'event' string"),
    ('{"event": "pusher:subscribe", "data": {"channel": 5}}', "'channel' must be a string"),
    ('{"event": "pusher:subscribe", "data": "not json"}', "data must be a JSON object"),
    ('{"event": "pusher:unsubscribe", "data": []}', "data must be a JSON object"),
    ('{"event": "pusher:signin", "data": {"auth": 1}}', "'auth' must be a string"),
    ('{"event": "pusher:teleport", "data": {}}', "unsupported event 'pusher:teleport'"),
    ('{"event": "pusher_internal:subscription_succeeded", "channel": "x"}', "unsupported event"),
]


async def test_bad_frames_answered_and_connection_kept(relay_server: RelayServer) -> None:
    """Each malformed frame gets a pusher:error (code null); the sender and another client keep receiving."""
    with trio.fail_after(10):
        async with raw_socket(relay_server) as (bad, _), raw_socket(relay_server) as (good, _):
            await subscribe(bad, "news")
            await subscribe(good, "news")
            for index, (text, fragment) in enumerate(BAD_FRAMES):
                await bad.send_message(text)
                error = await next_json(bad)
                assert error["event"] == "pusher:error", text
                assert error["data"]["code"] is None, text
                assert fragment in error["data"]["message"], (text, error)
                publish(relay_server, "news", "tick", str(index))
                assert await next_json(good) == event_frame("news", "tick", str(index))
                assert await next_json(bad) == event_frame("news", "tick", str(index))
            await bad.send_message('{"event": "pusher:ping", "data": {}}')
            assert (await next_json(bad))["event"] == "pusher:pong"


async def test_binary_frames_ignored(relay_server: RelayServer) -> None:
    """Binary frames get no answer at all and the connection carries on."""
    with trio.fail_after(10):
        async with raw_socket(relay_server) as (ws, socket_id):
            await ws.send_message(b'{"event": "pusher:ping", "data": {}}')
            await ws.send_message(b"\x00\xff" * 100)
            await ws.send_message('{"event": "pusher:ping", "data": {}}')
            assert await next_json(ws) == {"event": "pusher:pong", "data": {}}
            assert socket_id in relay_server.conns


def limited_app(**limits: Any) -> App:
    """App 1 with some limits lowered."""
    return App(id=APP_ID, key=APP_KEY, secret=APP_SECRET, limits=Limits(**limits))


async def test_oversized_message_discarded_connection_kept(nursery: trio.Nursery) -> None:
    """A message over max_socket_message_bytes is answered with an error and dropped; the connection keeps working."""
    server = await start_relay(nursery, [limited_app(max_socket_message_bytes=1024)])
    with trio.fail_after(10):
        async with raw_socket(server) as (big, _), raw_socket(server) as (other, _):
            await subscribe(other, "news")
            await big.send_message(json.dumps({"event": "pusher:subscribe", "data": {"channel": "x" * 100_000}}))
            error = await next_json(big)
            assert error["event"] == "pusher:error"
            assert "discarded" in error["data"]["message"]
            publish(server, "news", "tick", "1")
            assert await next_json(other) == event_frame("news", "tick", "1")
            # Still usable, and a message of exactly the limit is accepted.
            ping = json.dumps({"event": "pusher:ping", "data": {}, "pad": ""})
            exact = ping.replace('"pad": ""', '"pad": "' + "p" * (1024 - len(ping)) + '"')
            assert len(exact.encode()) == 1024
            await big.send_message(exact)
            assert (await next_json(big))["event"] == "pusher:pong"
            await subscribe(big, "news")


async def test_oversized_limit_counts_bytes(nursery: trio.Nursery) -> None:
    """The message limit is in bytes: 600 two-byte characters pass a 1024-character count but not 1024 bytes."""
    server = await start_relay(nursery, [limited_app(max_socket_message_bytes=1024)])
    with trio.fail_after(10):
        async with raw_socket(server) as (ws, _):
            text = json.dumps({"event": "client-x", "channel": "c", "data": "é" * 600}, ensure_ascii=False)
            assert len(text) < 1024 < len(text.encode())
            await ws.send_message(text)
            error = await next_json(ws)
            assert "discarded" in error["data"]["message"], error


async def test_oversized_fragmented_message_discarded(nursery: trio.Nursery) -> None:
    """An oversized message sent in fragments is dropped as it streams in; the next message is handled."""
    server = await start_relay(nursery, [limited_app(max_socket_message_bytes=1024)])
    with trio.fail_after(10):
        client = await RawClient.connect(server.port, f"/app/{APP_KEY}?protocol=7")
        try:
            assert (await client.next_text())["event"] == "pusher:connection_established"
            await client.send(Message(data='{"event": "pusher:ping", "data": "', message_finished=False))
            for _ in range(50):
                await client.send(Message(data="y" * 1000, message_finished=False))
            await client.send(Message(data='"}', message_finished=True))
            error = await client.next_text()
            assert error["event"] == "pusher:error"
            assert "discarded" in error["data"]["message"]
            await client.send(Message(data='{"event": "pusher:ping", "data": {}}'))
            assert (await client.next_text())["event"] == "pusher:pong"
        finally:
            await client.aclose()


async def test_subscribe_flood_over_channel_limit(nursery: trio.Nursery) -> None:
    """Subscribes past max_channels_per_socket get LimitReached errors; the socket and others stay usable."""
    # Subscribes may go as fast as they like here: only the channel limit is tested.
    server = await start_relay(nursery, [limited_app(max_channels_per_socket=3, subscriptions_per_second=10**6)])
    with trio.fail_after(10):
        async with raw_socket(server) as (flooder, flooder_id), raw_socket(server) as (other, _):
            await subscribe(other, "news")
            for index in range(10):
                await flooder.send_message(
                    json.dumps({"event": "pusher:subscribe", "data": {"auth": "", "channel": f"c{index}"}})
                )
            publish(server, "news", "tick", "during")
            answers = [await next_json(flooder) for _ in range(10)]
            assert await next_json(other) == event_frame("news", "tick", "during")
            succeeded = [a["channel"] for a in answers if a["event"] == "pusher_internal:subscription_succeeded"]
            refused = [a for a in answers if a["event"] == "pusher:subscription_error"]
            assert succeeded == ["c0", "c1", "c2"]
            assert [a["channel"] for a in refused] == [f"c{i}" for i in range(3, 10)]
            assert all(a["data"]["type"] == "LimitReached" and a["data"]["status"] == 413 for a in refused)
            # The flooder still works: leaving one channel makes room for another.
            await flooder.send_message(json.dumps({"event": "pusher:unsubscribe", "data": {"channel": "c0"}}))
            await subscribe(flooder, "c9")
            publish(server, "c9", "tick", "after")
            assert await next_json(flooder) == event_frame("c9", "tick", "after")
            assert flooder_id in server.conns


# -------------------------------------------------------------- heartbeat


async def test_websocket_ping_answered(relay_server: RelayServer) -> None:
    """A WebSocket ping control frame is answered with a pong carrying the same payload."""
    with trio.fail_after(10):
        client = await RawClient.connect(relay_server.port, SOCKET_PATH)
        try:
            assert (await client.next_text())["event"] == "pusher:connection_established"
            await client.send(Ping(payload=b"are you there"))
            pong = await client.next_event()
            assert isinstance(pong, Pong)
            assert pong.payload == b"are you there"
        finally:
            await client.aclose()


async def test_pusher_ping_answered(relay_server: RelayServer) -> None:
    """A pusher:ping frame is answered with pusher:pong."""
    with trio.fail_after(10):
        async with raw_socket(relay_server) as (ws, _):
            await ws.send_message('{"event":"pusher:ping","data":{}}')
            assert await next_json(ws) == {"event": "pusher:pong", "data": {}}


async def test_silent_client_pinged_then_closed_4201(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A silent client gets pusher:ping after activity_timeout, then 4201 (frame and close) 30 s later."""
    server = await start_relay(nursery)
    with trio.fail_after(600):
        async with raw_socket(server) as (ws, socket_id):
            start = trio.current_time()
            ping = await next_json(ws)
            pinged = trio.current_time() - start
            error = await next_json(ws)
            closed_after = trio.current_time() - start - pinged
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert ping["event"] == "pusher:ping"
    assert 119 <= pinged <= 122
    assert error == {"event": "pusher:error", "data": {"code": 4201, "message": "Pong reply not received"}}
    assert 29 <= closed_after <= 32
    assert closed.value.reason.code == 4201
    assert socket_id not in server.conns
    assert server.relay.stats()["sockets"] == 0


async def test_websocket_ping_counts_as_activity(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A WebSocket ping (a control frame, no text) restarts the activity timer."""
    server = await start_relay(nursery)
    with trio.fail_after(600):
        async with raw_socket(server) as (ws, _):
            start = trio.current_time()
            await trio.sleep(100)  # advance the mock clock, short of the 120 s timeout
            await ws.ping(b"still here")
            frame = await next_json(ws)
            pinged = trio.current_time() - start
    assert frame["event"] == "pusher:ping"
    assert 219 <= pinged <= 222


async def test_pong_answering_client_stays_connected(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A client answering every pusher:ping with pusher:pong is never closed."""
    server = await start_relay(nursery)
    with trio.fail_after(1000):
        async with raw_socket(server) as (ws, socket_id):
            start = trio.current_time()
            for _ in range(4):
                assert (await next_json(ws))["event"] == "pusher:ping"
                await ws.send_message('{"event":"pusher:pong","data":{}}')
            assert trio.current_time() - start >= 4 * 119
            assert socket_id in server.conns


# ----------------------------------------------------------- slow consumer


async def test_slow_consumer_closed_4101(nursery: trio.Nursery) -> None:
    """A subscriber that stops reading is closed with 4101 while its queue stays bounded and others keep receiving."""
    limit = 16 * 1024
    server = await start_relay(nursery, max_socket_buffer=limit)
    payload = "z" * 1000
    received: list[int] = []  # tick numbers the fast subscriber got, read as they come

    async def read_fast(ws: trio_websocket.WebSocketConnection) -> None:
        while (frame := await next_json(ws))["event"] == "tick":
            received.append(int(frame["data"].split(":")[0]))
        assert frame == event_frame("news", "end", "")

    with trio.fail_after(30):
        slow = await RawClient.connect(server.port, SOCKET_PATH, rcvbuf=4096)
        try:
            established = await slow.next_text()
            slow_id = json.loads(established["data"])["socket_id"]
            await slow.send(Message(data=json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}})))
            assert (await slow.next_text())["event"] == "pusher_internal:subscription_succeeded"
            # Keep the kernel's share small too, so the relay's own buffer is what fills.
            conn = server.conns[slow_id]
            conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
            async with raw_socket(server) as (fast, _), trio.open_nursery() as readers:
                await subscribe(fast, "news")
                readers.start_soon(read_fast, fast)
                sent = 0
                peak = 0
                while slow_id in server.conns:
                    assert sent < 20_000, "the slow consumer was never closed"
                    publish(server, "news", "tick", f"{sent}:{payload}")
                    sent += 1
                    # What the relay holds for the connection never passes the burst allowance.
                    queued = sum(map(len, conn._out or ()))
                    assert max(queued, conn._size) <= BURST_ALLOWANCE * limit
                    peak = max(peak, conn._size)
                    await trio.testing.wait_all_tasks_blocked()
                assert peak > limit
                assert received, "the fast subscriber got nothing while the slow one filled up"
                publish(server, "news", "end", "")
            assert received == list(range(sent))
            assert server.relay.stats()["sockets"] == 0
            # Reading again, the slow client finds the 4101 error and close after the queued events.
            while True:
                event = await slow.next_event()
                if isinstance(event, CloseConnection):
                    break
                assert isinstance(event, TextMessage)
                last = json.loads(event.data)
            assert event.code == 4101
            assert last["event"] == "pusher:error"
            assert last["data"]["code"] == 4101
        finally:
            await slow.aclose()


# ----------------------------------------------------------- shutdown


async def test_graceful_shutdown(nursery: trio.Nursery) -> None:
    """shutdown() sends every socket 4200, closes idle HTTP connections and returns in time though one client never reads."""
    server = await start_relay(nursery)
    port = server.port
    timeout = 1.0
    with trio.fail_after(15):
        deaf = await RawClient.connect(port, SOCKET_PATH)
        try:
            assert (await deaf.next_text())["event"] == "pusher:connection_established"
            early = await trio.open_tcp_stream("127.0.0.1", port)  # accepted, upgrades later
            async with early, raw_socket(server) as (ws, _):
                await trio.testing.wait_all_tasks_blocked()
                took: list[float] = []

                async def stop() -> None:
                    start = trio.current_time()
                    await server.shutdown(timeout)
                    took.append(trio.current_time() - start)

                async with trio.open_nursery() as inner:
                    inner.start_soon(stop)
                    frame = await next_json(ws)
                    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                        await ws.get_message()
                    assert frame == {
                        "event": "pusher:error",
                        "data": {"code": 4200, "message": "Server is shutting down. Please reconnect."},
                    }
                    assert closed.value.reason.code == 4200
                    # A connection accepted before the shutdown but idle is closed...
                    with contextlib.suppress(trio.BrokenResourceError):
                        await early.send_all(UPGRADE_HEAD)
                    assert await early.receive_some(65536) == b""
                    # ...and new connections are not served at all.
                    assert server.status()["status"] == "stopping"
                    await assert_not_served(port)
                assert took[0] <= timeout + 0.5
            # The deaf client's 4200 frame and close wait in its socket.
            frame = await deaf.next_text()
            assert frame["data"]["code"] == 4200
            close = await deaf.next_event()
            assert isinstance(close, CloseConnection)
            assert close.code == 4200
        finally:
            await deaf.aclose()
    assert server.conns == {}
    assert server.relay.stats()["sockets"] == 0


async def test_shutdown_with_no_connections_is_immediate(nursery: trio.Nursery) -> None:
    """shutdown() of an idle server returns at once and stops serve()."""
    server = await start_relay(nursery)
    port = server.port
    with trio.fail_after(2):
        await server.shutdown(10)
        await server.shutdown(10)  # a second call is a no-op
    with trio.fail_after(5):
        await assert_not_served(port)


# --------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a trustme certificate for 127.0.0.1, and a client context trusting it."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


async def start_tls_relay(nursery: trio.Nursery, server_context: ssl.SSLContext, apps: list[App]) -> RelayServer:
    """Serve ``apps`` over TLS on a free port."""
    relay = Relay(apps, id_base=1000)
    server: RelayServer = await nursery.start(partial(serve, relay, "127.0.0.1", 0, ssl_context=server_context))
    return server


async def test_tls_wss_and_https(nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """Over TLS, wss:// sockets connect (a tls_only app included) and receive events, and GET / works over https."""
    server_context, client_context = tls
    apps = [
        App(id=APP_ID, key=APP_KEY, secret=APP_SECRET),
        App(id="5", key="tls-key", secret="tls-secret", features=Features(tls_only=True)),
    ]
    server = await start_tls_relay(nursery, server_context, apps)
    assert server.secure
    assert server.transport.name == "portable"
    with trio.fail_after(10):
        async with raw_socket(server, "tls-key", client_context) as (ws, _):
            await subscribe(ws, "secure-news")
            publish(server, "secure-news", "tick", "1", app_id="5")
            assert await next_json(ws) == event_frame("secure-news", "tick", "1")
        async with connect(f"wss://127.0.0.1:{server.port}", APP_KEY, ssl_context=client_context) as client:
            await client.subscribe("news")
            publish(server, "news", "tick", "2")
            event = await client.next_event("tick")
            assert event.data == "2"
        status, _, body = await http_request(server.port, "/", ssl_context=client_context)
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        # A plain-text client on the TLS port is cut off unanswered, and the server keeps serving.
        plain = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with plain:
            await plain.send_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            assert await plain.receive_some(65536) == b""
        status, _, _ = await http_request(server.port, "/", ssl_context=client_context)
        assert status == 200


@pure_core_only
async def test_a_bug_over_tls_closes_that_connection_1011(
    nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TLS connection (always the portable transport) that hits a bug gets 1011, as on the fast one."""
    server_context, client_context = tls
    server = await start_tls_relay(nursery, server_context, [App(id=APP_ID, key=APP_KEY, secret=APP_SECRET)])

    def buggy(socket_id: str, text: str, now: float) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(server.relay, "socket_message", buggy)
    with trio.fail_after(10):
        async with raw_socket(server, APP_KEY, client_context) as (ws, _):
            await ws.send_message('{"event":"boom","data":{}}')
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert closed.value.reason.code == 1011


async def test_a_pipe_is_written_eagerly_while_it_is_open(nursery: trio.Nursery) -> None:
    """A pipe's events go out every few reads of a round (Writer.eager) from its connection to its end."""
    server = await start_relay(nursery, [App(id=APP_ID, key=APP_KEY, secret=APP_SECRET)])
    url = f"ws://127.0.0.1:{server.port}"
    with trio.fail_after(10):
        async with open_pipe(url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"]):
            assert [ws.id for ws in server.writer.eager.values()] == list(server._pipes)
            assert len(server.writer.eager) == 1
        while server.writer.eager:
            await trio.lowlevel.checkpoint()
        assert not server._pipes


async def test_open_pipe_over_tls(nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    """open_pipe speaks wss://: a back-channel message comes in and the answer goes out, both over TLS."""
    server_context, client_context = tls
    server = await start_tls_relay(nursery, server_context, [App(id=APP_ID, key=APP_KEY, secret=APP_SECRET)])
    url = f"wss://127.0.0.1:{server.port}"
    with trio.fail_after(10):
        async with open_pipe(
            url, app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_message"], ssl_context=client_context
        ) as pipe:

            @pipe.sockets.on("event:ask")
            async def answer(socket_id: str, data: Any) -> None:
                await pipe.socket(socket_id).trigger("answer", {"n": data["n"] + 1})

            async with connect(url, APP_KEY, ssl_context=client_context) as client:
                for n in range(50):
                    await client.send_event("ask", {"n": n})
                    event = await client.next_event("answer")
                    assert json.loads(event.data) == {"n": n + 1}


async def test_tls_only_app_refuses_plain_socket(nursery: trio.Nursery) -> None:
    """A tls_only app refuses a plain ws:// socket with pusher:error 4000 and close 4000."""
    app = App(id="5", key="tls-key", secret="tls-secret", features=Features(tls_only=True))
    server = await start_relay(nursery, [app])
    with trio.fail_after(10):
        async with ws_connect(server, "/app/tls-key?protocol=7") as ws:
            frame = await next_json(ws)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
    assert frame["data"]["code"] == 4000
    assert closed.value.reason.code == 4000


# ------------------------------------------------------------ misc


async def test_oversized_request_head_refused(relay_server: RelayServer) -> None:
    """An unfinished request head already over 16 KiB is answered 431 at once; the server keeps serving."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(b"GET /?" + b"x" * 20_000)
            received = b""
            while chunk := await stream.receive_some(65536):
                received += chunk
        assert received.startswith(b"HTTP/1.1 431")
        assert (await http_request(relay_server.port, "/"))[0] == 200


@pure_core_only
@pytest.mark.parametrize("where", ["adapter", "core"])
async def test_a_bug_while_reading_one_connection_closes_it_1011_and_spares_the_others(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """An exception for one message closes that connection (1011); the rest go on.

    In the core, the relay's guard turns it into a Failure and a 1011 Close;
    escaping into the server, the connection's reader closes it with 1011.
    """
    server = await start_relay(nursery)
    owner: Any = server.relay if where == "adapter" else server.relay._sockets
    name = "socket_message" if where == "adapter" else "message"
    real = getattr(owner, name)

    def buggy(*args: Any) -> Any:
        if any("boom" in arg for arg in args if isinstance(arg, str)):
            raise KeyError("a bug")
        return real(*args)

    monkeypatch.setattr(owner, name, buggy)
    with trio.fail_after(10):
        async with raw_socket(server) as (good, _):
            await subscribe(good, "news")
            bad = await RawClient.connect(server.port, SOCKET_PATH)
            try:
                await bad.next_text()
                await bad.send(Message(data='{"event":"boom","data":{}}'))
                closing = await bad.next_event()
                assert isinstance(closing, CloseConnection) and closing.code == 1011
            finally:
                await bad.aclose()
            publish(server, "news", "tick", "1")
            assert await next_json(good) == event_frame("news", "tick", "1")


async def test_nothing_follows_the_close_frame(nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a client's close is answered, no event reaches it, even before its socket is closed."""
    server = await start_relay(nursery)
    release = trio.Event()
    finish = server._finish

    async def held_back(ws: Any) -> None:
        await release.wait()
        await finish(ws)

    monkeypatch.setattr(server, "_finish", held_back)
    with trio.fail_after(10):
        client = await RawClient.connect(server.port, SOCKET_PATH)
        try:
            await client.next_text()
            await client.send(Message(data=json.dumps({"event": "pusher:subscribe", "data": {"channel": "news"}})))
            await client.next_text()
            await client.send(CloseConnection(code=1000))
            assert isinstance(await client.next_event(), CloseConnection)
            publish(server, "news", "late", "1")
            release.set()
            after = b""
            while data := await client.stream.receive_some(65536):
                after += data
            assert after == b""
        finally:
            await client.aclose()


async def test_events_in_a_row_for_the_same_sockets_are_queued_as_one_run(
    relay_server: RelayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consecutive sends to the same sockets cost one pass over them (one broadcast), and every
    socket still gets every frame once, in the order the outputs came, interleaved with others'."""
    from pipe_proto import Send

    url = f"ws://127.0.0.1:{relay_server.port}"
    with trio.fail_after(10):
        async with connect(url, APP_KEY) as a, connect(url, APP_KEY) as b, connect(url, APP_KEY) as c:
            pair = (a.socket_id, b.socket_id)

            def frame(n: int) -> str:
                return json.dumps({"event": "e", "channel": "ch", "data": str(n)})

            outputs = [Send(pair, frame(1)), Send(pair, frame(2)), Send((c.socket_id,), frame(3)),
                       Send(pair, frame(4)), Send(tuple(pair), frame(5))]
            passes: list[tuple[str, ...]] = []
            writer = type(relay_server.writer)
            broadcast = writer.broadcast

            def counted(self: Any, data: bytes, targets: tuple[str, ...], *args: Any) -> None:
                passes.append(targets)
                broadcast(self, data, targets, *args)

            monkeypatch.setattr(writer, "broadcast", counted)
            relay_server.execute(outputs)
            assert passes == [pair, (c.socket_id,), pair]
            for client in (a, b):
                got = [await client.next_event("e") for _ in range(4)]
                assert [event.data for event in got] == ["1", "2", "4", "5"]
            assert (await c.next_event("e")).data == "3"
