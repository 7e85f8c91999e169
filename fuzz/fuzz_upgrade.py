"""Fuzz target ``upgrade``: the relay's fast read of upgrade requests, differential against h11.

Checked for every input (``check_head``): whenever
:func:`pipe_trio._upgrade.parse_upgrade_request` returns a request, h11 (the
relay's general HTTP reader, configured as the relay configures it) reads
the same bytes as a ``GET`` with the same target, the same header fields in
the same order (names lower-cased, values without surrounding whitespace),
HTTP/1.1, no body, and the same trailing bytes. ``None`` is always allowed
(the relay then asks h11), so the property is "never accepts anything h11
would read differently or refuse", and a second property checks the fast
path is actually taken for the requests real clients send. Whatever h11
reads that asks for a WebSocket also gets a documented answer from the core
(:func:`pipe_proto.upgrade.upgrade`: a refusal with one of its statuses, or
a 101), never an exception.

Inputs: request lines with other methods, versions, targets with spaces or
control bytes; header fields with non-token names, values with leading,
trailing or inner whitespace, obs-text, NUL and control bytes, obsolete
line folding, bare LF line ends, zero, one or two ``Host`` fields,
``Content-Length`` and ``Transfer-Encoding``; heads cut short or longer
than the limit; random trailing bytes; and the upgrade requests of
pusher-js (ws), Chromium and the 2011 pipe client.
"""

from __future__ import annotations

import base64
from typing import Any

import h11
import pytest
from hypothesis import strategies as st

from fuzz._support import corpus_params, fuzz_property, record
from pipe_proto import App, Relay
from pipe_proto.upgrade import Refused, Upgraded, upgrade, wants_websocket
from pipe_trio._upgrade import parse_request, parse_upgrade_request

TARGET = "upgrade"
MAX_HEAD = 16 * 1024  # the relay's limit (pipe_trio.server.MAX_HEAD_BYTES)
MAX_BODY = 64  # small, so that bodies over the limit come up

REAL_HEADS = [
    # pusher-js 8 under Node (ws)
    b"GET /app/key?protocol=7&client=js&version=8.6.0&flash=false HTTP/1.1\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nHost: 127.0.0.1:6001\r\n\r\n",
    # Chromium
    b"GET /app/demo-key?protocol=7&client=js&version=8.6.0&flash=false HTTP/1.1\r\nHost: localhost:6001\r\n"
    b"Connection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"HeadlessChrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\n"
    b"Origin: http://localhost:8000\r\nSec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\nCookie: session=abc; theme=dark\r\n"
    b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n",
    # the 2011 pusher-pipe client
    b"GET /app/1?auth_key=key&auth_timestamp=1700000000&auth_version=1.0&auth_signature=abc HTTP/1.1\r\n"
    b"Upgrade: WebSocket\r\nConnection: Upgrade\r\nHost: 127.0.0.1:6001\r\nOrigin: http://127.0.0.1:6001\r\n"
    b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nSec-WebSocket-Version: 13\r\n\r\n",
]


REAL_CALLS = [
    # the official Node SDK's trigger, and the Python SDK's channel query
    b"POST /apps/1/events?auth_key=key&auth_timestamp=1700000000&auth_version=1.0&body_md5=abc&auth_signature=def "
    b"HTTP/1.1\r\ncontent-type: application/json\r\nx-pusher-library: pusher-http-node 5.2.0\r\n"
    b"Content-Length: 40\r\nHost: 127.0.0.1:6001\r\nConnection: keep-alive\r\n\r\n"
    b'{"name":"e","channels":["c"],"data":"x"}',
    b"GET /apps/1/channels?auth_key=key&auth_timestamp=1700000000&auth_version=1.0&auth_signature=def HTTP/1.1\r\n"
    b"Host: 127.0.0.1:6001\r\nUser-Agent: python-requests/2.32\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Accept: */*\r\nConnection: keep-alive\r\n\r\n",
]


def h11_view(data: bytes) -> tuple[Any, ...] | None:
    """What h11 reads from ``data`` as the relay drives it (None: no complete request)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        if not isinstance(request, h11.Request):
            return None
        end = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    return (
        request.method, request.target, list(request.headers), request.http_version,
        isinstance(end, h11.EndOfMessage), conn.trailing_data[0],
    )


def h11_whole(data: bytes) -> tuple[Any, ...] | None:
    """What h11 reads from ``data``: one whole request, its body and what follows (None: anything else)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    body = b""
    try:
        request = conn.next_event()
        if not isinstance(request, h11.Request):
            return None
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
    except h11.RemoteProtocolError:
        return None
    keep_alive = b"close" not in b",".join(v for k, v in request.headers if k == b"connection").lower()
    return (
        request.method, request.target, list(request.headers), request.http_version, body, conn.trailing_data[0],
        keep_alive,
    )


def check_plain(data: bytes, max_head: int) -> bool:
    """Whenever :func:`parse_request` takes ``data``, h11 reads the same whole request, body
    included, keeps the connection, and nothing follows; returns whether it took it."""
    plain = parse_request(data, max_head, MAX_BODY)
    if plain is None:
        return False
    expected = h11_whole(data)
    assert expected is not None, "h11 refuses (or cannot finish) what the fast path took"
    assert len(plain.body) <= MAX_BODY
    got = (plain.method, plain.target, plain.headers, b"1.1", plain.body, b"", True)
    assert got == expected, f"fast {got!r} != h11 {expected!r}"
    return True


def check_head(data: bytes, max_head: int = MAX_HEAD) -> bool:
    """The whole check for one input; returns whether the fast upgrade path took it."""
    record(TARGET, {"bytes_b64": base64.b64encode(data).decode(), "max_head": max_head})
    check_plain(data, max_head)
    expected = h11_view(data)
    if expected is not None and wants_websocket(expected[2]):
        check_decision(*expected[:4])
    fast = parse_upgrade_request(data, max_head)
    if fast is None:
        return False
    assert max_head <= MAX_HEAD, "the fast path is never given more room than h11"
    assert expected is not None, "h11 refuses (or cannot finish) what the fast path took"
    got = (b"GET", fast.target, fast.headers, b"1.1", True, fast.trailing)
    assert got == expected, f"fast {got!r} != h11 {expected!r}"
    return True


def check_decision(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes) -> None:
    """The core's answer to an upgrade request h11 read is one its module documents."""
    relay = Relay([App(id="1", key="key", secret="secret")])
    decision = upgrade(relay, method, target, headers, 1_700_000_000.0, nonce=1, http_version=version)
    if isinstance(decision, Refused):
        assert decision.status in (400, 401, 403, 404, 426), decision
    else:
        assert isinstance(decision, Upgraded)
        assert decision.response.startswith(b"HTTP/1.1 101 ")


# -------------------------------------------------------------- strategies

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~"
_TOKEN = st.text(_TOKEN_CHARS, min_size=1, max_size=12)
_ODD = st.sampled_from(
    [b"", b" ", b"\t", b"\x00", b"\x7f", b"\x80", b"\xff", b"\r", b"\n", b"\x0b", b"\x01", b":", b"\"", b"(", b"@"]
)


@st.composite
def names(draw: st.DrawFn) -> bytes:
    name = draw(_TOKEN).encode()
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(name)))
        name = name[:at] + draw(_ODD) + name[at:]
    special = [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Upgrade"]
    return draw(st.sampled_from([name, name, name, *special]))


@st.composite
def values(draw: st.DrawFn) -> bytes:
    value = draw(st.binary(max_size=30)) if draw(st.integers(0, 5)) == 0 else draw(st.text(
        "abc xyz;=,/\t0123456789", max_size=30)).encode()
    lead = draw(st.sampled_from([b"", b" ", b"  ", b"\t", b" \t"]))
    tail = draw(st.sampled_from([b"", b"", b" ", b"\t"]))
    return lead + value + tail


@st.composite
def heads(draw: st.DrawFn) -> tuple[bytes, int]:
    if draw(st.integers(0, 5)) == 0:
        base = draw(st.sampled_from(REAL_HEADS))
        cut = draw(st.integers(0, len(base)))
        mutated = base[:cut] + draw(_ODD) + base[cut + draw(st.integers(0, 2)):]
        return draw(st.sampled_from([base, mutated])) + draw(st.binary(max_size=20)), MAX_HEAD
    method = draw(st.sampled_from([b"GET", b"GET", b"GET", b"POST", b"get", b"HEAD"]))
    target = draw(st.sampled_from([b"/app/key?protocol=7", b"/", b"/app/1?a=b c", b"*", b"/\x00", b"/\xff", b""]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]))
    spacing = draw(st.sampled_from([b" ", b" ", b"  ", b"\t"]))
    lines = [method + spacing + target + b" " + version]
    fields = draw(st.lists(st.tuples(names(), values()), max_size=6))
    if draw(st.integers(0, 3)):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"127.0.0.1:6001"))
    for name, value in fields:
        sep = draw(st.sampled_from([b":", b":", b":", b" :", b""]))
        lines.append(name + sep + value)
        if draw(st.integers(0, 15)) == 0:
            lines.append(draw(st.sampled_from([b" folded", b"\tfolded", b""])))
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    data = eol.join(lines) + eol + eol + draw(st.binary(max_size=20))
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data, draw(st.sampled_from([MAX_HEAD, MAX_HEAD, 64, 200]))


@st.composite
def calls(draw: st.DrawFn) -> tuple[bytes, int]:
    """REST calls: real ones mutated, or made up with bodies of the declared length, or not."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(REAL_CALLS))
        cut = draw(st.integers(0, len(base)))
        mutated = base[:cut] + draw(_ODD) + base[cut + draw(st.integers(0, 2)):]
        return draw(st.sampled_from([base, mutated, base + b"GET / HTTP/1.1\r\n", base[:-1]])), MAX_HEAD
    method = draw(st.sampled_from([b"POST", b"POST", b"GET", b"HEAD", b"PUT", b"post"]))
    body = draw(st.binary(max_size=MAX_BODY + 8))
    declared = draw(st.sampled_from([str(len(body)).encode()] * 4 + [
        b"", b"0", b"+1", b"0x10", b" 3", str(len(body) + 1).encode(), b"1, 1", b"9" * 20,
    ]))
    fields = [(b"Host", b"relay"), (b"Content-Length", declared)] if draw(st.integers(0, 4)) else [(b"Host", b"relay")]
    extra = draw(st.lists(st.tuples(st.sampled_from(
        [b"Connection", b"Content-Length", b"Transfer-Encoding", b"Expect", b"X-Pusher-Library", b"Host"]),
        st.sampled_from([b"close", b"keep-alive", b"Close, keep-alive", b"chunked", b"100-continue", b"1", b""])),
        max_size=2))
    for at, field in enumerate(extra):
        fields.insert(draw(st.integers(0, len(fields))) if at else len(fields), field)
    head = method + b" /apps/1/events?auth_key=key HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in fields)
    return head + b"\r\n" + body, draw(st.sampled_from([MAX_HEAD, MAX_HEAD, 40]))


# --------------------------------------------------------------- properties


@fuzz_property(TARGET, 600, call=calls())
def test_rest_fast_path_reads_only_what_h11_reads_the_same(call: tuple[bytes, int]) -> None:
    check_head(*call)


@fuzz_property(TARGET, 600, head=heads())
def test_fast_path_reads_only_what_h11_reads_the_same(head: tuple[bytes, int]) -> None:
    check_head(*head)


@pytest.mark.parametrize("data", REAL_HEADS)
def test_real_clients_take_the_fast_path(data: bytes) -> None:
    assert check_head(data + b"\x81\x80abcd")


@pytest.mark.parametrize("data", REAL_CALLS)
def test_real_rest_calls_take_the_fast_path(data: bytes) -> None:
    assert check_plain(data, MAX_HEAD)


@pytest.mark.parametrize("entry", corpus_params(TARGET))
def test_replay_corpus(entry: dict[str, Any]) -> None:
    """Past failures."""
    check_head(base64.b64decode(entry["bytes_b64"]), entry["max_head"])
