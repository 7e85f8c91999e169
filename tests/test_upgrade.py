"""The WebSocket upgrade decided by the core: the handshake rules, and one answer per request head, no sockets."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto import App, Close, Features, PipeSettings, Relay, Send
from pipe_proto.pipe.handshake import pipe_url
from pipe_proto.upgrade import (
    ConnectionKind,
    Refused,
    Upgraded,
    accept_token,
    check_handshake,
    upgrade,
    wants_websocket,
)
from tests.support import APP_ID, APP_KEY, APP_SECRET, default_apps

NOW = 1_700_000_000.0
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
HEADERS = [
    (b"host", b"relay"),
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]
SOCKET_TARGET = f"/app/{APP_KEY}?protocol=7".encode()


def decide(target: bytes = SOCKET_TARGET, headers: list[tuple[bytes, bytes]] | None = None, **options: object) -> Upgraded | Refused:
    return upgrade(Relay(default_apps()), b"GET", target, HEADERS if headers is None else headers, NOW, nonce=7, **options)  # type: ignore[arg-type]


def replaced(name: bytes, value: bytes | None) -> list[tuple[bytes, bytes]]:
    """HEADERS with ``name`` set to ``value`` (None: left out)."""
    return [(k, v) for k, v in HEADERS if k != name] + ([] if value is None else [(name, value)])


def test_accept_token_is_rfc_6455s_example() -> None:
    assert accept_token(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_an_accepted_socket_gets_the_101_its_id_its_welcome_and_its_apps_message_limit() -> None:
    decision = decide()
    assert isinstance(decision, Upgraded)
    assert decision.kind is ConnectionKind.SOCKET
    assert decision.response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )
    assert decision.max_message == default_apps()[0].limits.max_socket_message_bytes
    (welcome,) = decision.outputs
    assert isinstance(welcome, Send) and welcome.targets == (decision.conn_id,)
    assert json.loads(welcome.text)["event"] == "pusher:connection_established"


@pytest.mark.parametrize(
    ("target", "code"),
    [
        (b"/app/no-such-key?protocol=7", 4001),
        (b"/app/off-key?protocol=7", 4003),
        (f"/app/{APP_KEY}".encode(), 4008),
        (f"/app/{APP_KEY}?protocol=2".encode(), 4007),
        (b"/elsewhere", 4005),
    ],
)
def test_a_socket_refused_by_pusher_rules_is_upgraded_then_closed_and_read_no_further(target: bytes, code: int) -> None:
    decision = decide(target)
    assert isinstance(decision, Upgraded)
    assert decision.kind is ConnectionKind.REFUSED
    assert decision.max_message == 0
    error, close = decision.outputs
    assert isinstance(error, Send) and json.loads(error.text)["data"]["code"] == code
    assert close == Close(decision.conn_id, code, close.reason)


def test_a_tls_only_app_refuses_plain_sockets_with_4000() -> None:
    app = App(id="9", key="tls-key", secret="s", features=Features(tls_only=True))
    plain = upgrade(Relay([app]), b"GET", b"/app/tls-key?protocol=7", HEADERS, NOW, nonce=1)
    secure = upgrade(Relay([app]), b"GET", b"/app/tls-key?protocol=7", HEADERS, NOW, nonce=1, secure=True)
    assert isinstance(plain, Upgraded) and plain.kind is ConnectionKind.REFUSED
    assert isinstance(plain.outputs[-1], Close) and plain.outputs[-1].code == 4000
    assert isinstance(secure, Upgraded) and secure.kind is ConnectionKind.SOCKET


def test_a_socket_over_its_apps_quota_is_refused_with_4004() -> None:
    relay = Relay(default_apps())
    first = upgrade(relay, b"GET", b"/app/tiny-key?protocol=7", HEADERS, NOW, nonce=1)
    second = upgrade(relay, b"GET", b"/app/tiny-key?protocol=7", HEADERS, NOW, nonce=2)
    assert isinstance(first, Upgraded) and first.kind is ConnectionKind.SOCKET
    assert isinstance(second, Upgraded) and second.kind is ConnectionKind.REFUSED
    assert isinstance(second.outputs[-1], Close) and second.outputs[-1].code == 4004


def test_the_socket_keeps_where_it_came_from() -> None:
    relay = Relay(default_apps())
    headers = [*HEADERS, (b"origin", b"https://example.com"), (b"user-agent", b"tests")]
    decision = upgrade(relay, b"GET", SOCKET_TARGET, headers, NOW, nonce=1, remote_addr="10.0.0.1")
    assert isinstance(decision, Upgraded)
    details = relay._core.sockets[decision.conn_id].details
    assert (details.remote_addr, details.origin, details.user_agent) == ("10.0.0.1", "https://example.com", "tests")



@pytest.mark.parametrize(("exposed", "kept"), [((), None), (("Cookie", "X-Missing"), {"cookie": "sid=1"})])
def test_the_socket_keeps_only_the_headers_its_app_exposes_to_pipes(
    exposed: tuple[str, ...], kept: dict[str, str] | None
) -> None:
    app = App(id=APP_ID, key=APP_KEY, secret=APP_SECRET, pipe=PipeSettings(expose_headers=list(exposed)))
    relay = Relay([app])
    headers = [*HEADERS, (b"cookie", b"sid=1"), (b"authorization", b"secret")]
    decision = upgrade(relay, b"GET", SOCKET_TARGET, headers, NOW, nonce=1)
    assert isinstance(decision, Upgraded)
    assert relay._core.sockets[decision.conn_id].details.headers == kept

def pipe_target(secret: str = APP_SECRET, app_id: str = APP_ID) -> bytes:
    url = pipe_url("ws://relay", app_id=app_id, key=APP_KEY, secret=secret, now=NOW, group="workers")
    return url.removeprefix("ws://relay").encode()


def test_an_accepted_pipe_gets_its_settings_and_its_frame_limit() -> None:
    decision = decide(pipe_target())
    assert isinstance(decision, Upgraded)
    assert decision.kind is ConnectionKind.PIPE
    assert decision.pipe is not None and decision.pipe.group == "workers"
    assert decision.max_message == default_apps()[0].pipe.max_frame_bytes
    assert decision.outputs and all(o.targets == (decision.conn_id,) for o in decision.outputs if isinstance(o, Send))


@pytest.mark.parametrize(
    ("target", "status"),
    [(pipe_target(secret="wrong"), 401), (pipe_target(app_id="77"), 404)],
)
def test_a_refused_pipe_gets_its_http_status(target: bytes, status: int) -> None:
    decision = decide(target)
    assert isinstance(decision, Refused)
    assert decision.status == status
    assert decision.route is not None and decision.body == {"error": decision.message}


@pytest.mark.parametrize("target", [SOCKET_TARGET, pipe_target()])
def test_a_stopping_relay_refuses_upgrades_with_503_and_opens_nothing(target: bytes) -> None:
    relay = Relay(default_apps())
    decision = upgrade(relay, b"GET", target, HEADERS, NOW, nonce=1, stopping=True)
    assert isinstance(decision, Refused) and decision.status == 503
    assert relay.holds_nothing()


@pytest.mark.parametrize(
    ("method", "headers", "http_version"),
    [
        (b"POST", HEADERS, b"1.1"),
        (b"GET", HEADERS, b"1.0"),
        (b"GET", replaced(b"connection", None), b"1.1"),
        (b"GET", replaced(b"connection", b"keep-alive"), b"1.1"),
        (b"GET", replaced(b"connection", b"upgraded"), b"1.1"),
        (b"GET", replaced(b"sec-websocket-key", None), b"1.1"),
        (b"GET", replaced(b"sec-websocket-key", b"short"), b"1.1"),
        (b"GET", replaced(b"sec-websocket-key", base64.b64encode(bytes(15)) + b"AA"), b"1.1"),
        (b"GET", replaced(b"sec-websocket-key", b"!" * 24), b"1.1"),
        (b"GET", [*HEADERS, (b"sec-websocket-key", KEY)], b"1.1"),
    ],
)
def test_a_request_breaking_rfc_6455_is_400(method: bytes, headers: list[tuple[bytes, bytes]], http_version: bytes) -> None:
    decision = check_handshake(method, headers, http_version)
    assert isinstance(decision, Refused) and decision.status == 400
    assert decision.headers == ()


@pytest.mark.parametrize("version", [None, b"8", b"12", b"14", b" 13"])
def test_another_websocket_version_is_426_naming_13(version: bytes | None) -> None:
    decision = check_handshake(b"GET", replaced(b"sec-websocket-version", version))
    assert isinstance(decision, Refused) and decision.status == 426
    assert decision.headers == (("sec-websocket-version", "13"),)


def test_connection_may_list_other_tokens_in_any_case() -> None:
    headers = replaced(b"connection", b"keep-alive, UPGRADE")
    assert isinstance(check_handshake(b"GET", headers), bytes)


def test_the_handshake_is_checked_before_the_route() -> None:
    decision = decide(pipe_target(), replaced(b"sec-websocket-version", b"8"))
    assert isinstance(decision, Refused) and decision.status == 426


@pytest.mark.parametrize(
    ("headers", "wanted"),
    [(HEADERS, True), (replaced(b"upgrade", b"WebSocket "), True), (replaced(b"upgrade", b"h2c"), False), ([], False)],
)
def test_wants_websocket(headers: list[tuple[bytes, bytes]], wanted: bool) -> None:
    assert wants_websocket(headers) is wanted


# ----------------------------------------------------------- any request head

NAMES = [b"host", b"upgrade", b"connection", b"sec-websocket-key", b"sec-websocket-version", b"origin", b"user-agent"]
VALUES = [b"websocket", b"Upgrade", KEY, b"13", b"8", b"keep-alive, upgrade", b""]
TARGETS = [SOCKET_TARGET, pipe_target(), pipe_target("x"), b"/app/off-key?protocol=7", b"/", b"/app/%ff?protocol=%zz"]
#: Every status the module's docstring names.
STATUSES = {400, 401, 403, 404, 426, 503}


@st.composite
def request_heads(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    method = draw(st.sampled_from([b"GET", b"GET", b"POST", b"get"]) | st.binary(max_size=8))
    target = draw(st.sampled_from(TARGETS) | st.binary(max_size=60))
    if draw(st.booleans()):
        target = target + draw(st.binary(max_size=20))
    headers = [(k, v) for k, v in HEADERS if draw(st.integers(0, 5))]
    extra = st.tuples(st.sampled_from(NAMES) | st.binary(max_size=10), st.sampled_from(VALUES) | st.binary(max_size=40))
    headers += draw(st.lists(extra, max_size=4))
    headers = draw(st.permutations(headers))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]) | st.binary(max_size=3))
    return method, target, headers, version


@given(head=request_heads(), stopping=st.booleans(), secure=st.booleans())
def test_any_request_head_gets_a_documented_answer(
    head: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes], stopping: bool, secure: bool
) -> None:
    """Never an exception: a refusal with a documented status, or an upgrade with its 101."""
    method, target, headers, version = head
    relay = Relay(default_apps())
    decision = upgrade(
        relay, method, target, headers, NOW, nonce=3, http_version=version, stopping=stopping, secure=secure
    )
    if isinstance(decision, Refused):
        assert decision.status in STATUSES
        assert decision.message
        assert decision.headers == ((("sec-websocket-version", "13"),) if decision.status == 426 else ())
        assert relay.holds_nothing()
        return
    assert isinstance(decision, Upgraded)
    assert not stopping
    assert decision.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert decision.response.endswith(b"\r\n\r\n")
    closed = [o for o in decision.outputs if isinstance(o, Close)]
    if decision.kind is ConnectionKind.REFUSED:
        assert decision.max_message == 0
        assert [c.target for c in closed] == [decision.conn_id]
        assert relay.holds_nothing()
    else:
        assert decision.max_message > 0
        assert not closed
        assert (decision.pipe is not None) is (decision.kind is ConnectionKind.PIPE)
