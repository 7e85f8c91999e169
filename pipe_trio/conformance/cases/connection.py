"""Connection handshake and refusals; heartbeats."""

from __future__ import annotations

import re

import trio

from pipe_proto.pusher import Ping, Pong

from ...testing.sockets import SocketClosed
from ..runner import Context, Failed, Level, Skipped, case, describe_refusal
from ._checks import expect_event, expect_nothing, expect_open, expect_refused

# ------------------------------------------------------------------ connection


@case("connection.established-first-frame", "pusher:connection_established as the first frame, with a "
      "string data holding socket_id and a positive activity_timeout", ref="Pusher protocol 1.3")
async def established(ctx: Context) -> None:
    sock = await ctx.raw_socket()
    if sock.established is None:
        raise Failed("pusher:connection_established", describe_refusal(sock))
    if sock.established.activity_timeout <= 0:
        raise Failed("activity_timeout > 0", str(sock.established.activity_timeout))


@case("connection.socket-id-format", "a socket_id of the form digits.digits (the SDKs refuse to sign others)",
      ref="Pusher protocol 1.4")
async def socket_id_format(ctx: Context) -> None:
    sock = await ctx.socket()
    if not re.fullmatch(r"\d+\.\d+", sock.socket_id):
        raise Failed("socket_id matching ^\\d+\\.\\d+$", repr(sock.socket_id))


@case("connection.socket-ids-unique", "20 concurrent connections get 20 distinct socket ids",
      ref="Pusher protocol 1.4")
async def socket_ids_unique(ctx: Context) -> None:
    ids = {(await ctx.socket()).socket_id for _ in range(20)}
    if len(ids) != 20:
        raise Failed("20 distinct socket ids", f"{len(ids)} distinct")


@case("connection.unknown-key-4001", "an unknown app key refused with pusher:error 4001 and close 4001",
      ref="Pusher protocol 1.2, 3.2")
async def unknown_key(ctx: Context) -> None:
    expect_refused(await ctx.raw_socket(f"no-such-key-{ctx.run_id}"), 4001)


@case("connection.disabled-app-4003", "a disabled app refused with 4003", ref="Pusher protocol 1.2, 3.2",
      needs=["disabled_key"])
async def disabled_app(ctx: Context) -> None:
    assert ctx.target.disabled_key is not None
    expect_refused(await ctx.raw_socket(ctx.target.disabled_key), 4003)


@case("connection.protocol-unsupported-4007", "protocol=3 refused with 4007 (versions 1-3 are unsupported)",
      ref="Pusher protocol 1.2, 3.2")
async def protocol_unsupported(ctx: Context) -> None:
    expect_refused(await ctx.raw_socket(protocol="3"), 4007)


@case("connection.protocol-missing-4008", "no protocol parameter refused with 4008",
      ref="Pusher protocol 1.2 (R); relay.md Pusher protocol decisions", level=Level.DECISION)
async def protocol_missing(ctx: Context) -> None:
    expect_refused(await ctx.raw_socket(protocol=None), 4008)


@case("connection.protocol-invalid-4006", "protocol=abc refused with 4006",
      ref="Pusher protocol 1.2 (R); relay.md Pusher protocol decisions", level=Level.DECISION)
async def protocol_invalid(ctx: Context) -> None:
    expect_refused(await ctx.raw_socket(protocol="abc"), 4006)


@case("connection.path-not-found-4005", "an upgrade on another path refused with 4005 (or HTTP 404)",
      ref="Pusher protocol 1.2, 3.2")
async def path_not_found(ctx: Context) -> None:
    sock = await ctx.raw_socket(path=f"/foo/{ctx.app.key}")
    if sock.http_status == 404:
        return
    expect_refused(sock, 4005)


@case("connection.extra-query-ignored", "unknown query parameters do not affect acceptance",
      ref="Pusher protocol 1.1")
async def extra_query(ctx: Context) -> None:
    await ctx.socket(query={"flash": "false", "something": "else", "x-y": "1"})


# ------------------------------------------------------------------ heartbeat


@case("heartbeat.ping-pong", "pusher:ping answered with pusher:pong", ref="Pusher protocol 2")
async def ping_pong(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_json({"event": "pusher:ping", "data": {}})
    await expect_event(sock, Pong, "pusher:pong")


@case("heartbeat.websocket-ping", "a WebSocket ping answered with a pong", ref="Pusher protocol 2")
async def websocket_ping(ctx: Context) -> None:
    sock = await ctx.socket()
    try:
        await sock.ws_ping(timeout=2)
    except trio.TooSlowError:
        raise Failed("a WebSocket pong", "none within 2 s") from None


@case("heartbeat.pong-not-answered", "an inbound pusher:pong gets no reply and the connection stays open",
      ref="Pusher protocol 2")
async def pong_not_answered(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_json({"event": "pusher:pong", "data": {}})
    await expect_nothing(sock, lambda e: True, "no frame in reply to a pusher:pong", 0.5)
    await expect_open(sock)


def _idle_wait(ctx: Context, timeout: int) -> float:
    if timeout > ctx.target.max_wait:
        raise Skipped(f"the server announces activity_timeout {timeout} s, longer than --max-wait "
                      f"{ctx.target.max_wait:g} s (configure a short one to run this case)")
    return float(timeout)


@case("heartbeat.server-pings-idle-socket", "a socket silent for activity_timeout gets a pusher:ping",
      ref="Pusher protocol 2", timeout=12)
async def server_pings(ctx: Context) -> None:
    sock = await ctx.socket(auto_pong=False)
    assert sock.established is not None
    wait = _idle_wait(ctx, sock.established.activity_timeout)
    await expect_event(sock, Ping, f"pusher:ping after {wait:g} s of silence", timeout=wait + 2)


@case("heartbeat.active-socket-kept", "a socket that pings every activity_timeout/2 stays connected for "
      "2.5 activity timeouts", ref="Pusher protocol 2", timeout=16)
async def active_kept(ctx: Context) -> None:
    sock = await ctx.socket()
    assert sock.established is not None
    wait = _idle_wait(ctx, sock.established.activity_timeout)
    deadline = trio.current_time() + 2.5 * wait
    while trio.current_time() < deadline:
        await trio.sleep(wait / 2)
        try:
            await sock.send_json({"event": "pusher:ping", "data": {}})
        except SocketClosed as exc:
            raise Failed("the pinging socket to stay connected", f"closed with {exc.code}") from None
    await expect_open(sock, "the pinging socket to stay connected")


@case("heartbeat.silent-socket-closed", "a socket that answers nothing is closed with 4201 after "
      "activity_timeout plus the pong wait", ref="Pusher protocol 2, 3.2", timeout=16)
async def silent_closed(ctx: Context) -> None:
    pong_wait = ctx.target.pong_wait
    if pong_wait is None:
        raise Skipped("needs --pong-wait, the server's wait for a pong (30 s recommended), if it is short")
    sock = await ctx.socket(auto_pong=False)
    assert sock.established is not None
    wait = _idle_wait(ctx, sock.established.activity_timeout)
    if wait + pong_wait > 14:
        raise Skipped(f"activity_timeout plus the pong wait ({wait + pong_wait:g} s) is longer than this case may take")
    try:
        code = await sock.wait_closed(timeout=wait + pong_wait + 1.5)
    except trio.TooSlowError:
        raise Failed("close 4201 (pong reply not received)", "still open") from None
    if code != 4201:
        raise Failed("close 4201 (pong reply not received)", f"close {code}")
