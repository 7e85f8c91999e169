"""The debug console: its sign-in and tokens (no I/O), then its page and feed over real sockets."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import attrs
import pusher
import pytest
import trio
import trio_websocket

from pipe_proto import App, AppRegistry, Limits
from pipe_proto.console import MAX_DATA_CHARS, check_token, describe, issue_token, sign_in
from pipe_proto.relay.observe import Observed
from pipe_trio import RelayServer, connect
from pipe_trio.console import WATCHER_BUFFER
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay, url_of
from tests.test_metrics import get

APP = App(id="1", key="app-key", secret="app-secret", name="Shop")
UPGRADE = (
    b"GET /console/socket HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
APPS = AppRegistry([APP, App(id="2", key="other", secret="other-secret")])
NOW = 1_700_000_000.0


# ------------------------------------------------------------------ sans-I/O


def test_sign_in_answers_a_token_for_the_right_secret_only() -> None:
    """The right key and secret get a token naming the app; a wrong secret or key gets the same 401."""
    status, body = sign_in(APPS, "app-key", "app-secret", NOW)
    assert status == 200 and body["app_id"] == "1" and body["name"] == "Shop"
    assert check_token(APPS, body["token"], NOW) == APP
    assert sign_in(APPS, "app-key", "wrong", NOW) == sign_in(APPS, "nobody", "app-secret", NOW) == (
        401, {"error": "Unknown key, or wrong secret"},
    )
    assert sign_in(APPS, None, 3, NOW)[0] == 401
    assert APP.secret not in body["token"]


@pytest.mark.parametrize(
    ("token", "now", "message"),
    [
        ("garbage", NOW, "not a console token"),
        (None, NOW, "not a console token"),
        ("9.1.abc", NOW, "not a console token"),
        (issue_token(APP, NOW).replace("1.", "2.", 1), NOW, "token not valid"),
        (issue_token(APP, NOW, seconds=10), NOW + 11, "token expired"),
        (issue_token(attrs.evolve(APP, secret="old-secret"), NOW), NOW, "token not valid (was the secret changed?)"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: Any, now: float, message: str) -> None:
    """Forged, foreign, expired tokens and tokens of an old secret are refused."""
    result = check_token(APPS, token, now)
    assert isinstance(result, str) and message in result


def test_describe_shapes_a_happening_and_cuts_long_data() -> None:
    """Only the fields a happening has are shown; data over MAX_DATA_CHARS is cut and says how long it was."""
    entry = describe(Observed("client_event", "1.2", "private-x", "client-e", "x" * (MAX_DATA_CHARS + 5)), NOW)
    assert entry["type"] == "client_event" and entry["socket"] == "1.2" and entry["channel"] == "private-x"
    assert len(entry["data"]) == MAX_DATA_CHARS and entry["truncated"] == MAX_DATA_CHARS + 5
    assert describe(Observed("vacated", channel="c"), NOW) == {"time": NOW, "type": "vacated", "channel": "c"}


# ------------------------------------------------------------------- adapter


def text_frame(text: str) -> bytes:
    """A client's (masked, with a zero mask) WebSocket text frame of under 126 bytes."""
    data = text.encode()
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + b"\x00\x00\x00\x00" + data


def post_token(port: int, body: object) -> tuple[int, dict[str, Any]]:
    """POST /console/token (blocking, run in a thread)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/console/token", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def watch(nursery: trio.Nursery, server: RelayServer) -> trio_websocket.WebSocketConnection:
    """Sign in and open a console feed; returns the connection after its hello."""
    status, body = await trio.to_thread.run_sync(post_token, server.port, {"key": APP_KEY, "secret": APP_SECRET})
    assert status == 200, body
    ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{server.port}/console/socket")
    await ws.send_message(json.dumps({"token": body["token"]}))
    hello = json.loads(await ws.get_message())
    assert hello["type"] == "hello" and hello["app_id"] == APP_ID
    return ws


async def next_of(ws: trio_websocket.WebSocketConnection, kind: str) -> dict[str, Any]:
    while True:
        entry = json.loads(await ws.get_message())
        if entry["type"] == kind:
            return dict(entry)


async def test_the_console_is_off_unless_enabled(nursery: trio.Nursery, relay_server: RelayServer) -> None:
    """Without console=True: no page, no sign-in, no feed (404)."""
    assert (await trio.to_thread.run_sync(get, relay_server.port, "/console"))[0] == 404
    assert (await trio.to_thread.run_sync(post_token, relay_server.port, {"key": APP_KEY, "secret": APP_SECRET}))[0] == 404
    stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
    async with stream:
        await stream.send_all(UPGRADE)
        assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 404 ")


async def test_a_watcher_sees_connections_subscriptions_and_rest_publishes(nursery: trio.Nursery) -> None:
    """Signed in, the feed shows a socket connecting, subscribing, a REST publish, numbers; and only while watched."""
    server = await start_relay(nursery, console=True)
    with trio.fail_after(30):
        status, page, body = await trio.to_thread.run_sync(get, server.port, "/console")
        assert status == 200 and page.startswith("text/html") and "debug console" in body
        assert server.console is not None and server.relay.state_of(APP_ID).observer is None  # type: ignore[union-attr]
        ws = await watch(nursery, server)
        assert server.relay.state_of(APP_ID).observer is not None  # type: ignore[union-attr]
        stats = await next_of(ws, "stats")
        assert stats["connections"] == 0
        async with connect(url_of(server), APP_KEY) as sock:
            seen = await next_of(ws, "connection")
            assert seen["socket"] == sock.socket_id and seen["details"]["remote_addr"] == "127.0.0.1"
            await sock.subscribe("news")
            assert (await next_of(ws, "subscribed"))["channel"] == "news"
            client = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=server.port, ssl=False)
            await trio.to_thread.run_sync(lambda: client.trigger("news", "headline", {"n": 1}))
            published = await next_of(ws, "api_message")
            assert (published["channel"], published["event"], json.loads(published["data"])) == ("news", "headline", {"n": 1})
            stats = await next_of(ws, "stats")
            assert stats["connections"] == 1 and stats["channels"] == 1 and stats["received_per_second"] is not None
        assert (await next_of(ws, "disconnection"))["socket"] == sock.socket_id
        await ws.aclose()  # its close answered: the relay saw it go
        assert server.console.watching(APP_ID) == 0
        assert server.relay.state_of(APP_ID).observer is None  # type: ignore[union-attr]
        await server.shutdown(5)


async def test_sign_in_refusals(nursery: trio.Nursery) -> None:
    """A wrong secret is 401; a forged token closes the feed with 4009 and a reason."""
    server = await start_relay(nursery, console=True)
    with trio.fail_after(20):
        status, body = await trio.to_thread.run_sync(post_token, server.port, {"key": APP_KEY, "secret": "nope"})
        assert (status, body) == (401, {"error": "Unknown key, or wrong secret"})
        assert (await trio.to_thread.run_sync(post_token, server.port, ["not", "an", "object"]))[0] == 400
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(UPGRADE + text_frame(json.dumps({"token": "1.99999999999.forged"})))
            seen = b""
            while b"not valid" not in seen:
                chunk = await stream.receive_some(65536)
                assert chunk, seen
                seen += chunk
        assert seen.startswith(b"HTTP/1.1 101 ")
        # The close frame: opcode 8, code 4009 (0x0FA9), the reason.
        assert b"\x88" in seen and b"\x0f\xa9not valid" in seen.replace(b"token ", b"")
        await server.shutdown(5)


async def test_a_watcher_that_does_not_read_gets_dropped_n_and_bounded_memory(nursery: trio.Nursery) -> None:
    """A watcher that stops reading costs at most its bound; when it reads again it is told how many were dropped."""
    roomy = App(id=APP_ID, key=APP_KEY, secret=APP_SECRET,
                limits=Limits(back_channel_per_second=100000, max_event_bytes=100000, max_socket_message_bytes=200000))
    server = await start_relay(nursery, [roomy], console=True)
    assert server.console is not None
    with trio.fail_after(60):
        _, body = await trio.to_thread.run_sync(post_token, server.port, {"key": APP_KEY, "secret": APP_SECRET})
        # A raw client, so that nothing reads for it while it does not read.
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(UPGRADE)
        await stream.send_all(text_frame(json.dumps({"token": body["token"]})))
        watcher = next(iter(server.console._conns.values()))
        greeting = b""
        while b'"hello"' not in greeting:
            greeting += await stream.receive_some(65536)
        big = "x" * 50000
        async with connect(url_of(server), APP_KEY) as sock:
            for n in range(3000):
                await sock.send_event("to-backend", {"n": n, "pad": big})
                if watcher.dropped:
                    break
            assert watcher.dropped > 0
            assert watcher.ws.unwritten <= 2 * WATCHER_BUFFER
        # It reads again: everything queued comes, then a "dropped N" line before the next message.
        seen = b""
        async with connect(url_of(server), APP_KEY):
            pass
        while b'"type": "dropped"' not in seen:
            seen += await stream.receive_some(1 << 20)
        await stream.aclose()
        await server.shutdown(5)


async def test_a_console_connection_sending_pings_and_reading_no_pongs_is_closed_4101(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The console's own feed drops what a slow watcher cannot take, but pongs are queued like any
    frame: pings from a watcher that reads none of them close it as a slow consumer (4101)."""
    import socket

    from pipe_trio._wsframes import masked_frame

    server = await start_relay(nursery, console=True)
    assert server.console is not None
    with trio.fail_after(300):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.port))
        stream = trio.SocketStream(sock)
        await stream.send_all(UPGRADE)
        while not server.console._conns:
            await trio.testing.wait_all_tasks_blocked()
        watcher = next(iter(server.console._conns.values()))
        watcher.ws.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[attr-defined]
        ping = masked_frame(0x89, b"p" * 125, b"\x01\x02\x03\x04")
        sent = 0
        while not watcher.ws.closing:
            assert sent < 100_000, "never closed"
            await stream.send_all(ping * 100)
            sent += 100
            await trio.testing.wait_all_tasks_blocked()
        received = b""
        while chunk := await stream.receive_some(1 << 20):
            received += chunk
        assert b"\x88\x0f\x10\x05Slow consumer" in received  # the close frame, 4101
        await stream.aclose()


def test_the_upgrade_decision_for_the_console_feed() -> None:
    """/console/socket is 404 unless the console is served; then it is upgraded as a console, unknown to the relay."""
    from pipe_proto import Relay
    from pipe_proto.upgrade import CONSOLE_MAX_MESSAGE, ConnectionKind, Refused, Upgraded, upgrade

    relay = Relay([APP])
    head = [(b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    off = upgrade(relay, b"GET", b"/console/socket", head, NOW, nonce=1)
    assert isinstance(off, Refused) and off.status == 404
    on = upgrade(relay, b"GET", b"/console/socket", head, NOW, nonce=1, console=True)
    assert isinstance(on, Upgraded) and on.kind is ConnectionKind.CONSOLE
    assert (on.outputs, on.max_message) == ([], CONSOLE_MAX_MESSAGE)
    assert relay.stats()["sockets"] == 0
    stopping = upgrade(relay, b"GET", b"/console/socket", head, NOW, nonce=1, console=True, stopping=True)
    assert isinstance(stopping, Refused) and stopping.status == 503
