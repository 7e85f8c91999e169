"""The relay's HTTP side over real sockets: keep-alive, what it echoes, and connection limits."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import time
from urllib.parse import urlencode

import h11
import pytest
import trio
import trio.testing
from wsproto.events import CloseConnection, Message

from pipe_proto import Relay
from pipe_proto.signatures import sign_query
from pipe_trio import RelayServer
from pipe_trio._io import escaped
from pipe_trio.server import ACCEPT_RETRY, ACCEPT_RETRY_MAX, _response
from tests.support import APP_ID, APP_KEY, APP_SECRET, default_apps, start_relay
from tests.test_server import SOCKET_PATH, UPGRADE_HEAD, RawClient

pytestmark = pytest.mark.both_transports

PIPE_PATH = b"/app/1?auth_key=app-key&auth_timestamp=1&auth_version=1.0&protocol_version=1.0&auth_signature=00"


async def responses(stream: trio.abc.Stream, count: int) -> list[tuple[h11.Response, bytes]]:
    """Read ``count`` responses from ``stream`` (fails if the connection ends first)."""
    conn = h11.Connection(h11.CLIENT)
    got: list[tuple[h11.Response, bytes]] = []
    response: h11.Response | None = None
    body = b""
    while len(got) < count:
        # h11's client side wants a request sent before it reads a response.
        if conn.our_state is h11.IDLE:
            conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            assert data, f"the connection ended after {len(got)} responses"
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            response, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            got.append((response, body))
            if conn.our_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
        else:  # pragma: no cover
            raise AssertionError(f"unexpected {event!r}")
    return got


def says_close(response: h11.Response) -> bool:
    """Whether the response carries ``Connection: close``."""
    return any(k == b"connection" and b"close" in v.lower() for k, v in response.headers)


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    """Everything until the server closes the connection."""
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    return received


# ------------------------------------------------------------ keep-alive


async def test_pipelined_requests_are_all_answered_and_the_connection_kept(relay_server: RelayServer) -> None:
    """GET /, /pipe-client.js and a 404, pipelined on one connection, are all answered; the connection stays open."""
    requests = b"".join(
        f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".encode() for target in ("/", "/pipe-client.js", "/nope", "/")
    )
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(requests)
            got = await responses(stream, 4)
            assert [r.status_code for r, _ in got] == [200, 200, 404, 200]
            assert not any(says_close(r) for r, _ in got)
            # Still open: one more request on it is answered.
            await stream.send_all(b"HEAD / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            conn = h11.Connection(h11.CLIENT)
            conn.send(h11.Request(method="HEAD", target="/", headers=[("host", "x")]))
            conn.send(h11.EndOfMessage())
            while not isinstance(event := conn.next_event(), h11.Response):
                conn.receive_data(await stream.receive_some(65536))
            assert event.status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /apps/1/events HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\n\r\n",
        b"POST /apps/1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n",
        b"GET /" + b"x" * 20_000,
        UPGRADE_HEAD.replace(b"sec-websocket-version: 13", b"sec-websocket-version: 8"),
        b"POST" + UPGRADE_HEAD[3:],
        UPGRADE_HEAD.replace(SOCKET_PATH.encode(), PIPE_PATH),
    ],
    ids=[
        "not http", "body on a static route", "body too large", "malformed body", "head too large", "bad version",
        "upgrade by POST", "pipe refused",
    ],
)
async def test_a_response_before_closing_says_connection_close(relay_server: RelayServer, request_bytes: bytes) -> None:
    """Every response after which the relay closes the connection carries Connection: close."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(request_bytes)
            received = await read_to_end(stream)
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 4"), received[:200]
    assert b"\r\nconnection: close" in head


def signed_call(method: str, path: str, body: bytes = b"", extra: bytes = b"") -> bytes:
    """A signed REST request, as bytes (``extra``: more header lines)."""
    params = {"auth_key": APP_KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0"}
    if body:
        params["body_md5"] = hashlib.md5(body).hexdigest()
    params["auth_signature"] = sign_query(APP_SECRET, method, path, params)
    length = f"content-length: {len(body)}\r\n".encode() if method == "POST" else b""
    return f"{method} {path}?{urlencode(params)} HTTP/1.1\r\nhost: x\r\n".encode() + length + extra + b"\r\n" + body


async def test_rest_calls_on_one_connection_are_answered_with_or_without_h11(relay_server: RelayServer) -> None:
    """Plain calls (read without h11), one h11 must read (asking to close), in order on one connection."""
    event = json.dumps({"name": "e", "channel": "c", "data": "x"}).encode()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            for call in (signed_call("POST", f"/apps/{APP_ID}/events", event), signed_call("GET", f"/apps/{APP_ID}/channels")):
                await stream.send_all(call)
                ((response, body),) = await responses(stream, 1)
                assert response.status_code == 200 and not says_close(response), body
            await stream.send_all(signed_call("GET", f"/apps/{APP_ID}/channels", extra=b"connection: close\r\n"))
            ((response, body),) = await responses(stream, 1)
            assert response.status_code == 200 and says_close(response)
            assert json.loads(body) == {"channels": {}}
            assert await read_to_end(stream) == b""


@pytest.mark.parametrize(
    ("status", "body", "head"), [(200, {}, False), (400, {"error": "Bad \u00e9"}, False), (200, b'{"a":1}', True)]
)
def test_a_response_written_without_h11_is_the_one_h11_writes(status: int, body: object, head: bool) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"%s / HTTP/1.1\r\nhost: x\r\n\r\n" % (b"HEAD" if head else b"GET"))
    conn.next_event()
    conn.next_event()
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    expected = conn.send(h11.Response(status_code=status, headers=[
        ("content-type", "application/json"), ("content-length", str(len(data))), ("access-control-allow-origin", "*"),
    ])) or b""
    expected += b"" if head else conn.send(h11.Data(data=data)) or b""
    assert _response(status, body, head=head) == expected + (conn.send(h11.EndOfMessage()) or b"")


# ---------------------------------------------------- what comes back out


async def test_a_400_does_not_echo_the_request_line(relay_server: RelayServer) -> None:
    """A malformed request line of 15 KB is answered 400 with a short body, not an echo of it."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(b"NOT HTTP " + b"x" * 15_000 + b"\r\n\r\n")
            received = await read_to_end(stream)
    assert received.startswith(b"HTTP/1.1 400")
    assert len(received) < 1024


async def test_a_404_does_not_echo_a_long_path(relay_server: RelayServer) -> None:
    """A 404 names the path, cut short."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(b"GET /" + b"x" * 15_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            ((response, body),) = await responses(stream, 1)
    assert response.status_code == 404
    assert len(body) < 1024


def test_escaped_makes_one_short_printable_line() -> None:
    """Client values are logged on one line, control characters escaped, cut to the limit."""
    assert escaped("plain é text") == "plain é text"
    assert escaped("bye\n2024-01-01 ERROR forged\r\x1b[31m") == "bye\\n2024-01-01 ERROR forged\\r\\x1b[31m"
    assert escaped("\u2028") == "\\u2028"
    assert escaped("a\\nb") == "a\\\\nb"  # a backslash typed by the client stays distinguishable
    assert escaped("x" * 300, 10) == "x" * 10 + "..."


async def test_a_close_reason_with_a_newline_is_logged_on_one_line(
    relay_server: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket close reason containing a newline does not start a log line of its own."""
    caplog.set_level(logging.INFO, logger="pipe_trio")
    with trio.fail_after(10):
        client = await RawClient.connect(relay_server.port, SOCKET_PATH)
        try:
            await client.next_text()
            await client.send(CloseConnection(code=1000, reason="bye\n2024-01-01 00:00:00 ERROR forged"))
            assert isinstance(await client.next_event(), CloseConnection)
        finally:
            await client.aclose()
        while relay_server.conns:
            await trio.testing.wait_all_tasks_blocked()
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines)
    assert "forged" in lines[0]


async def test_a_pipe_upgrade_with_a_newline_in_its_path_is_logged_on_one_line(
    relay_server: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pipe upgrade to /app/1%0A... is refused and logged on one line."""
    caplog.set_level(logging.INFO, logger="pipe_trio")
    target = PIPE_PATH.replace(b"/app/1?", b"/app/1%0A2024-01-01%20ERROR%20forged?")
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(UPGRADE_HEAD.replace(SOCKET_PATH.encode(), target))
            assert (await read_to_end(stream)).startswith(b"HTTP/1.1 4")
    messages = [r.getMessage() for r in caplog.records]
    refused = [m for m in messages if "forged" in m]
    assert refused and all("\n" not in m for m in messages)


# ---------------------------------------------------------- descriptors


class ExhaustedListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose accept fails with EMFILE ``failures`` times, then hands over one stream, then waits."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []
        self.client, self.server_side = trio.testing.memory_stream_pair()
        self.handed = trio.Event()

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.handed.is_set():
            self.handed.set()
            return self.server_side
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_accept_backs_off_and_logs_once_per_episode(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of descriptors, accept retries after a growing, bounded delay, logging one error, then one line on recovery."""
    caplog.set_level(logging.INFO, logger="pipe_trio")
    listener = ExhaustedListener(failures=40)
    server = RelayServer(Relay(default_apps(), id_base=1000))
    with trio.fail_after(600):
        await nursery.start(server.serve, [listener])
        await listener.handed.wait()
    failing = listener.calls[: listener.failures + 1]  # each failed accept and the one after it
    waits = [later - earlier for earlier, later in itertools.pairwise(failing)]
    assert waits[0] == pytest.approx(ACCEPT_RETRY)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(waits))
    assert max(waits) == pytest.approx(ACCEPT_RETRY_MAX)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "accept failed" in errors[0].getMessage()
    assert len([r for r in caplog.records if "accepting connections again" in r.getMessage()]) == 1


async def test_connections_over_the_per_address_limit_get_429(nursery: trio.Nursery) -> None:
    """With --max-connections-per-ip 2, a third connection from the address is answered 429 and closed; others are not."""
    server = await start_relay(nursery, max_connections_per_ip=2)
    with trio.fail_after(10):
        first = await RawClient.connect(server.port, SOCKET_PATH)
        second = await trio.open_tcp_stream("127.0.0.1", server.port)  # an idle HTTP connection counts too
        try:
            await first.next_text()
            third = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with third:
                await third.send_all(UPGRADE_HEAD)
                received = await read_to_end(third)
            assert received.startswith(b"HTTP/1.1 429")
            assert b"\r\nconnection: close\r\n" in received.lower()
            # The first connection was not disturbed.
            await first.send(Message(data='{"event":"pusher:ping","data":{}}'))
            assert (await first.next_text())["event"] == "pusher:pong"
            # Once one closes, the address may connect again.
            await second.aclose()
            while server._per_ip.get("127.0.0.1") != 1:
                await trio.testing.wait_all_tasks_blocked()
            again = await RawClient.connect(server.port, SOCKET_PATH)
            assert (await again.next_text())["event"] == "pusher:connection_established"
            await again.aclose()
        finally:
            await first.aclose()
            await second.aclose()


@pytest.mark.parametrize("path", [b"/", b"/apps/1/channels"], ids=["status", "rest"])
async def test_a_client_that_never_reads_its_responses_is_closed(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, path: bytes
) -> None:
    """Requests pipelined by a client that reads none of the answers fill the socket's buffers: the
    server gives the client its idle timeout to take a response, then closes the connection."""
    monkeypatch.setattr("pipe_trio.server.HTTP_IDLE_TIMEOUT", 0.5)
    server = await start_relay(nursery, max_connections_per_ip=1)
    request = b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n"
    with trio.fail_after(20):
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.port))
        with sock, pytest.raises(OSError) as gone:
            # The server stops reading once its answers are stuck; when it
            # gives up on the client, it closes with requests unread: a reset.
            while True:
                await sock.send(request * 200)
    assert gone.value.errno in (errno.ECONNRESET, errno.EPIPE)
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_connections == 0 and server._per_ip == {}  # the address's slot is free again


async def test_no_per_address_limit_by_default(relay_server: RelayServer) -> None:
    """Without the option, one address may open many connections."""
    with trio.fail_after(10):
        clients = [await RawClient.connect(relay_server.port, SOCKET_PATH) for _ in range(20)]
        try:
            for client in clients:
                assert (await client.next_text())["event"] == "pusher:connection_established"
        finally:
            for client in clients:
                await client.aclose()


async def test_a_chunk_not_ended_by_crlf_is_refused(relay_server: RelayServer) -> None:
    """A chunked body whose chunk is followed by two other bytes than CRLF is a 400, never read as a request."""
    body = b"5\r\nhelloXX0\r\n\r\n"
    head = b"POST /apps/1/events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(head + body)
            received = await read_to_end(stream)
    assert received.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nhost: x\r\n",
        b"GET " + SOCKET_PATH.encode() + b" HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n",
    ],
    ids=["status page", "upgrade"],
)
async def test_a_malformed_body_on_a_request_that_takes_none_is_a_400(relay_server: RelayServer, head: bytes) -> None:
    """A chunked body that is not chunked is answered 400 with Connection: close on every route, not only REST."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", relay_server.port)
        async with stream:
            await stream.send_all(head + b"transfer-encoding: chunked\r\n\r\nzz\r\n\r\n")
            received = await read_to_end(stream)
    assert received.startswith(b"HTTP/1.1 400")
    assert b"\r\nconnection: close\r\n" in received.lower()
