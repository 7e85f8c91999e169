"""Webhooks (the kit listens at ``--webhook-url``, where the server was told to send them) and limits."""

from __future__ import annotations

import json
import time
from typing import Any

import trio

from pipe_proto.pusher import SubscriptionSucceeded
from pipe_proto.testing.signers import webhook_problem

from ...testing.http import ReceivedRequest
from ...testing.sockets import SocketClosed
from ..runner import Context, Failed, Level, case, describe, server_answers, subscription_outcome
from ._checks import expect_event, expect_nothing, expect_open, expect_rejected, is_error, message_on

# ----------------------------------------------------------------- webhooks


def _events(request: ReceivedRequest) -> list[dict[str, Any]]:
    body = request.json()
    events = body.get("events") if isinstance(body, dict) else None
    return [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


async def _webhook(
    ctx: Context, what: str, timeout: float = 3.0, **fields: Any  # noqa: ASYNC109
) -> tuple[ReceivedRequest, dict[str, Any]]:
    assert ctx.webhooks is not None

    def wanted(event: dict[str, Any]) -> bool:
        return all(str(event.get(k)) == str(v) for k, v in fields.items())

    try:
        request = await ctx.webhooks.wait_for(lambda r: any(wanted(e) for e in _events(r)), timeout=timeout)
    except trio.TooSlowError:
        raise Failed(what, f"no such webhook within {timeout:g} s") from None
    return request, next(e for e in _events(request) if wanted(e))


@case("webhooks.signed", "webhooks are POSTs with Content-Type exactly application/json, X-Pusher-Key, a valid "
      "X-Pusher-Signature and a fresh time_ms", ref="Pusher protocol 10", needs=["webhooks"])
async def signed(ctx: Context) -> None:
    channel = ctx.channel()
    await ctx.subscribed(await ctx.socket(), channel)
    request, _ = await _webhook(ctx, f"channel_occupied for {channel}", name="channel_occupied", channel=channel)
    problem = webhook_problem(ctx.app.key, ctx.app.secret, request.headers, request.body, now=time.time())
    if request.method != "POST" or problem:
        raise Failed("a webhook the official SDKs accept", problem or f"method {request.method}")


@case("webhooks.channel-occupied-vacated", "channel_occupied on the first subscriber, channel_vacated after "
      "the last leaves (within the 3 s hosted delay)", ref="Pusher protocol 10", needs=["webhooks"], timeout=8)
async def occupied_vacated(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    await _webhook(ctx, "channel_occupied", name="channel_occupied", channel=channel)
    await sock.unsubscribe(channel)
    await _webhook(ctx, "channel_vacated within 5 s", timeout=5, name="channel_vacated", channel=channel)


@case("webhooks.member-added-removed", "member_added and member_removed with the user_id", ref="Pusher protocol 10",
      needs=["webhooks"], timeout=8)
async def members(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("presence-")
    user = ctx.user()
    await ctx.subscribed(sock, channel, channel_data={"user_id": user})
    await _webhook(ctx, f"member_added {user}", name="member_added", channel=channel, user_id=user)
    await sock.close()
    await _webhook(ctx, f"member_removed {user} within 5 s", timeout=5, name="member_removed", channel=channel,
                   user_id=user)


@case("webhooks.client-event", "client_event with channel, event, data and socket_id", ref="Pusher protocol 10",
      needs=["webhooks"])
async def client_event(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-hook", {"k": 1})
    _, event = await _webhook(ctx, "client_event", name="client_event", channel=channel)
    data = event.get("data")
    data = json.loads(data) if isinstance(data, str) else data
    if event.get("event") != "client-hook" or event.get("socket_id") != a.socket_id or data != {"k": 1}:
        raise Failed("client_event {event: client-hook, data, socket_id of the sender}", repr(event)[:200])


@case("webhooks.cache-miss", "cache_miss when subscribing to an empty cache channel", ref="Pusher protocol 10, 4.7",
      needs=["webhooks"])
async def cache_miss(ctx: Context) -> None:
    channel = ctx.channel("cache-")
    await ctx.subscribed(await ctx.socket(), channel)
    await _webhook(ctx, "cache_miss", name="cache_miss", channel=channel)


# ------------------------------------------------------------------- limits


@case("limits.client-event-over-10kb", "a client event over 10 KB is not relayed", ref="Pusher protocol 7 (R), 11",
      level=Level.DECISION)
async def client_event_large(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-big", "x" * 11000)
    await expect_nothing(b, message_on(channel, "client-big"), "no relay of an 11 000-byte client event", 0.5)


def _presence_data(user_id: str, info: Any = None) -> dict[str, Any]:
    return {"user_id": user_id} if info is None else {"user_id": user_id, "user_info": info}


@case("limits.presence-user-info-over-1kb", "presence user_info over 1 KB refused", ref="Pusher protocol 5.8, 6")
async def user_info_large(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("presence-")
    await sock.subscribe(channel, channel_data=_presence_data(ctx.user(), {"bio": "x" * 2100}))
    await expect_rejected(sock, channel)


@case("limits.presence-user-id-over-128", "a presence user_id over 128 characters refused",
      ref="Pusher protocol 5.8, 6")
async def user_id_long(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("presence-")
    await sock.subscribe(channel, channel_data=_presence_data("u" * 129))
    await expect_rejected(sock, channel)


@case("limits.presence-101st-member", "the 101st distinct user of a presence channel refused; the others stay",
      ref="Pusher protocol 5.8, 6", timeout=10)
async def presence_members(ctx: Context) -> None:
    channel = ctx.channel("presence-")
    socks = [await ctx.socket() for _ in range(101)]
    for n, sock in enumerate(socks[:100]):
        await sock.subscribe(channel, channel_data=_presence_data(f"m{n}"))
    for sock in socks[:100]:
        outcome = await subscription_outcome(sock, channel)
        if not isinstance(outcome, SubscriptionSucceeded):
            raise Failed("100 members accepted", describe(outcome))
    await socks[100].subscribe(channel, channel_data=_presence_data("m100"))
    await expect_rejected(socks[100], channel)


# Malformed input last: a server that crashes on it hides as few cases as possible.


@case("limits.malformed-json", "a frame that is not JSON gets a pusher:error; the connection stays open",
      ref="Pusher protocol 1.5 (R); relay.md Pusher protocol decisions", level=Level.DECISION)
async def malformed_json(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_text("{this is not json")
    await expect_event(sock, lambda e: is_error(e, any_code=True), "a pusher:error")
    await expect_open(sock)


@case("limits.binary-frame-ignored", "a binary frame is ignored; the connection stays open",
      ref="Pusher protocol 1.5 (R)", level=Level.DECISION)
async def binary_frame(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_bytes(b'{"event":"pusher:ping","data":{}}')
    await sock.gather(0.2)
    await expect_open(sock)


@case("limits.unknown-pusher-event", "an unknown pusher: event does not close the connection",
      ref="Pusher protocol 1.6 (R)", level=Level.DECISION)
async def unknown_event(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_json({"event": "pusher:no-such-event", "data": {}})
    await sock.gather(0.2)
    await expect_open(sock)


@case("limits.subscribe-without-channel", "a pusher:subscribe without a channel does not close the connection",
      ref="Pusher protocol 4.3 (R)", level=Level.DECISION)
async def subscribe_without_channel(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.send_json({"event": "pusher:subscribe", "data": {"auth": ""}})
    await sock.gather(0.2)
    await expect_open(sock)


@case("limits.huge-frame", "a 2 MiB frame is refused (error frame or close) without harm to the server",
      ref="Pusher protocol 11; relay.md limits", timeout=8)
async def huge_frame(ctx: Context) -> None:
    sock = await ctx.socket()
    other = await ctx.socket()
    try:
        await sock.send_json({"event": "client-huge", "channel": "private-x", "data": "x" * (2 * 1024 * 1024)})
        await sock.gather(0.5)
    except SocketClosed:
        pass
    if not await server_answers(ctx.target.url, ctx.app.key):
        raise Failed("the server to go on answering", "no connection_established any more")
    await expect_open(other, "other connections unharmed")
