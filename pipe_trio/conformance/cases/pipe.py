"""The Pipe (docs/pipe-protocol.md): handshake and signature, methods, notifications,
authorization through the pipe, groups and resume. Run with ``--pipe``."""

from __future__ import annotations

import json
import time
from typing import Any

from pipe_proto.pipe import (
    AuthRequest,
    AuthResponse,
    ErrorReply,
    Reply,
    SendToChannel,
    SendToSocket,
    SocketClosed,
    SocketMessage,
    SocketOpened,
    SubscribeEvents,
)
from pipe_proto.pusher import SubscriptionError, SubscriptionSucceeded

from ..runner import Context, Failed, Skipped, case, describe, subscription_outcome
from ._checks import data_of, expect_event, expect_nothing, message_on

PIPE = ["pipe"]


def _reply(reply: Reply | ErrorReply | None, what: str) -> Reply:
    if not isinstance(reply, Reply):
        raise Failed(what, describe(reply))
    return reply


def _error(reply: Reply | ErrorReply | None, code: int) -> None:
    if not isinstance(reply, ErrorReply) or reply.code != code:
        raise Failed(f"error reply {code}", describe(reply))


async def _refused(ctx: Context, status: int, **options: Any) -> None:
    backend = await ctx.raw_backend(**options)
    if backend.http_status != status:
        got = "connection_established" if backend.established else f"HTTP {backend.http_status}"
        raise Failed(f"HTTP {status} before the upgrade", got)


@case("pipe.handshake-1.0", "a signed 1.0 pipe gets connection_established {socket_id, session, resumed: false, "
      "heartbeat, protocol_version: 1.0}", ref="pipe-protocol.md 1", needs=PIPE)
async def handshake_10(ctx: Context) -> None:
    backend = await ctx.backend()
    est = backend.established
    assert est is not None
    if not est.session or est.resumed or est.protocol_version != "1.0" or not est.heartbeat:
        raise Failed("session, resumed false, heartbeat, protocol_version 1.0", describe(est))


@case("pipe.handshake-0.2", "a 0.2 pipe (the 2011 client) gets connection_established {socket_id}",
      ref="pipe-protocol.md 1", needs=PIPE)
async def handshake_02(ctx: Context) -> None:
    backend = await ctx.backend(version="0.2")
    assert backend.established is not None
    if not backend.established.socket_id or backend.established.session is not None:
        raise Failed("{socket_id} only", describe(backend.established))


@case("pipe.bad-signature-401", "a pipe URL signed with the wrong secret refused with 401",
      ref="pipe-protocol.md 1", needs=PIPE)
async def bad_signature(ctx: Context) -> None:
    from ...testing.backend import signed_pipe_url

    url = signed_pipe_url(ctx.target.url, app_id=ctx.app.id, key=ctx.app.key, secret=ctx.app.secret + "x")
    await _refused(ctx, 401, url=url)


@case("pipe.stale-timestamp-401", "a pipe URL signed 700 s ago refused with 401", ref="pipe-protocol.md 1",
      needs=PIPE)
async def stale(ctx: Context) -> None:
    await _refused(ctx, 401, timestamp=int(time.time()) - 700)


@case("pipe.unknown-app-404", "an unknown app id refused with 404", ref="pipe-protocol.md 1", needs=PIPE)
async def unknown_app(ctx: Context) -> None:
    from ...testing.backend import signed_pipe_url

    url = signed_pipe_url(ctx.target.url, app_id="987654321", key=ctx.app.key, secret=ctx.app.secret)
    await _refused(ctx, 404, url=url)


@case("pipe.unsupported-version-400", "protocol_version 9.9 refused with 400", ref="pipe-protocol.md 1",
      needs=PIPE)
async def bad_version(ctx: Context) -> None:
    await _refused(ctx, 400, version="9.9")


@case("pipe.socket-existence", "socket_existence: socket_opened and socket_closed (1.0 adds the close code)",
      ref="pipe-protocol.md 3", needs=PIPE)
async def socket_existence(ctx: Context) -> None:
    backend = await ctx.backend(group=ctx.user("g"))
    _reply(await backend.call(SubscribeEvents(events=["socket_existence"])), "subscribe {}")
    sock = await ctx.socket()
    opened = await backend.notification(lambda n: isinstance(n.notice, SocketOpened)
                                        and n.notice.socket_id == sock.socket_id)
    if opened.seq is None:
        raise Failed("a seq on a 1.0 notification", describe(opened))
    await sock.close(4021, "bye")
    closed = await backend.notification(lambda n: isinstance(n.notice, SocketClosed)
                                        and n.notice.socket_id == sock.socket_id)
    assert isinstance(closed.notice, SocketClosed)
    if closed.notice.code != 4021:
        raise Failed("socket_closed with code 4021", describe(closed.notice))


@case("pipe.back-channel", "a socket's non-client event reaches socket_message with its data",
      ref="pipe-protocol.md 3", needs=PIPE)
async def back_channel(ctx: Context) -> None:
    backend = await ctx.backend(group=ctx.user("g"))
    _reply(await backend.call(SubscribeEvents(events=["socket_message"])), "subscribe {}")
    sock = await ctx.socket()
    await sock.send_json({"event": "eventFromBrowser", "data": {"some": "data"}})
    got = await backend.notification(lambda n: isinstance(n.notice, SocketMessage)
                                     and n.notice.socket_id == sock.socket_id)
    assert isinstance(got.notice, SocketMessage)
    if got.notice.name != "eventFromBrowser" or got.notice.data != {"some": "data"}:
        raise Failed("socket_message eventFromBrowser {some: data}", describe(got.notice))
    await backend.ack(got.seq or 0)


@case("pipe.send-to-socket", "send_to_socket reaches that socket only; 1.0 replies {delivered: 1}",
      ref="pipe-protocol.md 4", needs=PIPE)
async def send_to_socket(ctx: Context) -> None:
    backend = await ctx.backend()
    target, other = await ctx.socket(), await ctx.socket()
    reply = _reply(await backend.call(SendToSocket(socket_ids=[target.socket_id], event="acknowledge",
                                                   data='{"message":"Rodger"}')), "{delivered: 1}")
    if reply.result != {"delivered": 1}:
        raise Failed("{delivered: 1}", repr(reply.result))
    got = await expect_event(target, lambda e: getattr(e, "event", None) == "acknowledge", "acknowledge")
    if data_of(got) != {"message": "Rodger"}:
        raise Failed("data {message: Rodger}", describe(got))
    await expect_nothing(other, lambda e: getattr(e, "event", None) == "acknowledge", "nothing at another socket")


@case("pipe.send-to-channel-excluding", "send_to_channel reaches the subscribers but the excluded socket",
      ref="pipe-protocol.md 4", needs=PIPE)
async def send_to_channel(ctx: Context) -> None:
    backend = await ctx.backend()
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    reply = _reply(await backend.call(SendToChannel(channels=[channel], event="news", data="{}",
                                                    exclude=a.socket_id)), "{delivered: 1}")
    if reply.result != {"delivered": 1}:
        raise Failed("{delivered: 1}", repr(reply.result))
    await expect_event(b, message_on(channel, "news"), "news at the other subscriber")
    await expect_nothing(a, message_on(channel, "news"), "nothing at the excluded socket", 0.3)


@case("pipe.errors", "unknown method 4221, invalid event name 4210, malformed socket id 4212; the pipe stays open",
      ref="pipe-protocol.md 2, 4", needs=PIPE)
async def errors(ctx: Context) -> None:
    backend = await ctx.backend()
    _error(await backend.request("no_such_method"), 4221)
    _error(await backend.call(SendToChannel(channels=[ctx.channel()], event="pusher:x", data="")), 4210)
    _error(await backend.call(SendToSocket(socket_ids=["abc"], event="e", data="")), 4212)
    _reply(await backend.request("ping"), "a reply to ping")


@case("pipe.not-json-4220", "a frame that is not JSON gets error notification 4220; the pipe stays open",
      ref="pipe-protocol.md 2", needs=PIPE)
async def not_json(ctx: Context) -> None:
    backend = await ctx.backend()
    await backend.send_raw("{nope")
    error = await backend.error_notification()
    if error.code != 4220:
        raise Failed("error notification 4220", describe(error))
    _reply(await backend.request("ping"), "a reply to ping")


@case("pipe.batch", "batch answers one result or error per call, in order", ref="pipe-protocol.md 4", needs=PIPE)
async def batch(ctx: Context) -> None:
    backend = await ctx.backend()
    reply = _reply(await backend.request("batch", {"calls": [
        {"method": "ping", "params": {}}, {"method": "nope", "params": {}}]}), "a list of results")
    results = reply.result
    if not (isinstance(results, list) and len(results) == 2 and results[0].get("error") is None
            and (results[1].get("error") or {}).get("code") == 4221):
        raise Failed("[{result: {}, error: null}, {error: {code: 4221}}]", repr(results)[:200])


@case("pipe.auth", "a private subscribe with empty auth is asked to the pipe: allow subscribes, a refusal "
      "gives the socket a subscription error with status 403", ref="pipe-protocol.md 5", needs=PIPE, timeout=5)
async def auth(ctx: Context) -> None:
    # One case, one group: a member that held ``auth`` keeps it through its resume grace,
    # and requests routed to it there would wait.
    backend = await ctx.backend(group=f"auth-{ctx.run_id}")
    reply = await backend.call(SubscribeEvents(events=["auth"]))
    if isinstance(reply, ErrorReply) and reply.code == 4230:
        raise Skipped("another group holds this app's auth (a pipe of the app, or a run of the kit within "
                      "the resume grace)")
    _reply(reply, "subscribe {}")
    for allow in (True, False):
        sock = await ctx.socket()
        channel = ctx.channel("private-")
        await sock.subscribe(channel, auth="")
        asked = await backend.notification(AuthRequest)
        assert isinstance(asked.notice, AuthRequest)
        if asked.notice.socket_id != sock.socket_id or asked.notice.channel != channel:
            raise Failed(f"auth_request for {sock.socket_id} on {channel}", describe(asked.notice))
        _reply(await backend.call(AuthResponse(request_id=asked.notice.request_id, allow=allow, reason="test")),
               "auth_response {}")
        outcome = await subscription_outcome(sock, channel)
        if allow and not isinstance(outcome, SubscriptionSucceeded):
            raise Failed("subscription_succeeded after allow", describe(outcome))
        if not allow and (not isinstance(outcome, SubscriptionError) or outcome.status != 403):
            raise Failed("subscription_error status 403 after a refusal", describe(outcome))


@case("pipe.resume", "events for a disconnected session are replayed, same seq, when it resumes",
      ref="pipe-protocol.md 6", needs=PIPE, timeout=6)
async def resume(ctx: Context) -> None:
    group = ctx.user("resume")
    first = await ctx.backend(group=group)
    _reply(await first.call(SubscribeEvents(events=["socket_message"])), "subscribe {}")
    assert first.established is not None
    session = first.established.session
    sock = await ctx.socket()
    await sock.send_json({"event": "before", "data": 1})
    got = await first.notification(SocketMessage)
    await first.ack(got.seq or 0)
    await first.close()
    await sock.send_json({"event": "while-away", "data": 2})
    second = await ctx.backend(group=group, session=session, last_seq=got.seq)
    assert second.established is not None
    if not second.established.resumed:
        raise Failed("resumed: true", describe(second.established))
    replayed = await second.notification(SocketMessage)
    assert isinstance(replayed.notice, SocketMessage)
    if replayed.notice.name != "while-away" or replayed.seq != (got.seq or 0) + 1:
        raise Failed(f"while-away with seq {(got.seq or 0) + 1}", describe(replayed))


@case("pipe.group-sharing", "two members of a group: each socket's events go to exactly one of them",
      ref="pipe-protocol.md 6", needs=PIPE)
async def group_sharing(ctx: Context) -> None:
    group = ctx.user("share")
    members = [await ctx.backend(group=group), await ctx.backend(group=group)]
    for member in members:
        _reply(await member.call(SubscribeEvents(events=["socket_message"])), "subscribe {}")
    socks = [await ctx.socket() for _ in range(6)]
    for n, sock in enumerate(socks):
        await sock.send_json({"event": "hello", "data": n})
    received: dict[str, int] = {}
    for member in members:
        for note in await member.gather(0.5):
            if isinstance(note.notice, SocketMessage) and note.notice.name == "hello":
                received[note.notice.socket_id] = received.get(note.notice.socket_id, 0) + 1
    missing = [s.socket_id for s in socks if received.get(s.socket_id) != 1]
    if missing:
        raise Failed("each of 6 sockets' event at exactly one member",
                     json.dumps({s.socket_id: received.get(s.socket_id, 0) for s in socks}))
