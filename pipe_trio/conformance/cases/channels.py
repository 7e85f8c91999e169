"""Public, private, presence, encrypted and cache channels."""

from __future__ import annotations

import base64
import json

from pipe_proto.pusher import CacheMiss, MemberAdded, MemberRemoved, Message
from pipe_proto.signatures import sign

from ..runner import Context, Failed, Level, case, describe
from ._checks import (
    data_of,
    expect_event,
    expect_nothing,
    expect_open,
    expect_rejected,
    expect_status,
    message_on,
)

# ----------------------------------------------------------------- public


@case("channels.public-subscribe", "a public channel with auth \"\" answered by subscription_succeeded "
      "naming the channel", ref="Pusher protocol 4.3, 4.4")
async def public_subscribe(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel())


@case("channels.public-without-auth", "a public subscribe without an auth field succeeds", ref="Pusher protocol 4.3")
async def public_without_auth(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel(), sign=False)


@case("channels.event-delivery", "a REST event reaches the subscriber as {event, channel, data} with the "
      "publisher's data string verbatim", ref="Pusher protocol 4.9, 1.5")
async def event_delivery(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    data = '{"some":"data","n":1}'
    await ctx.trigger([channel], "my-event", data)
    got = await expect_event(sock, message_on(channel, "my-event"), f"my-event on {channel}")
    if got.data != data:
        raise Failed(f"data {data!r} verbatim", repr(got.data))


@case("channels.unsubscribe", "pusher:unsubscribe gets no reply and stops deliveries", ref="Pusher protocol 4.6")
async def unsubscribe(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    await sock.unsubscribe(channel)
    await expect_nothing(sock, lambda e: True, "no reply to pusher:unsubscribe", 0.3)
    await ctx.trigger([channel], "after", "{}")
    await expect_nothing(sock, message_on(channel), "no event after unsubscribing", 0.5)


@case("channels.unsubscribe-unknown", "unsubscribing from a channel never joined: no frame, connection open",
      ref="Pusher protocol 4.6")
async def unsubscribe_unknown(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.unsubscribe(ctx.channel())
    await expect_nothing(sock, lambda e: True, "no reply", 0.3)
    await expect_open(sock)


@case("channels.invalid-names", "names with a space, a slash or a leading # refused; the connection stays open",
      ref="Pusher protocol 4.2, 4.5")
async def invalid_names(ctx: Context) -> None:
    sock = await ctx.socket()
    for name in (f"a b-{ctx.run_id}", f"x/y-{ctx.run_id}", f"#abc-{ctx.run_id}"):
        await sock.subscribe(name)
        await expect_rejected(sock, name)


@case("channels.name-164-accepted", "a channel name of 164 allowed characters accepted", ref="Pusher protocol 4.2")
async def name_164(ctx: Context) -> None:
    base = ctx.channel("=@,.;_-")
    sock = await ctx.socket()
    await ctx.subscribed(sock, base + "x" * (164 - len(base)))


@case("channels.name-over-200-refused", "a channel name of 201 characters refused (above every "
      "implementation's limit)", ref="Pusher protocol 4.2, 11")
async def name_201(ctx: Context) -> None:
    base = ctx.channel()
    name = base + "x" * (201 - len(base))
    sock = await ctx.socket()
    await sock.subscribe(name)
    await expect_rejected(sock, name)


@case("channels.prefix-anchored", "my-private-x is a public channel (prefixes count only at the start)",
      ref="Pusher protocol 4.1")
async def prefix_anchored(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel("my-private-"), auth="")
    await ctx.subscribed(sock, ctx.channel("x-cache-"), auth="")


@case("channels.double-subscribe", "subscribing twice: subscription_succeeded again (or an error frame), "
      "connection open", ref="Pusher protocol 4.3 (R); relay.md Pusher protocol decisions", level=Level.DECISION)
async def double_subscribe(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    await ctx.subscribed(sock, channel)
    await expect_open(sock)


# ---------------------------------------------------------------- private


@case("private.valid-signature", "a private channel with a valid auth signature succeeds",
      ref="Pusher protocol 5.2")
async def private_valid(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel("private-"))


@case("private.bad-signature", "a wrong signature refused (subscription error), connection open",
      ref="Pusher protocol 5.2, 4.5")
async def private_bad(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("private-")
    await sock.subscribe(channel, auth=f"{ctx.app.key}:{'0' * 64}")
    await expect_rejected(sock, channel)


@case("private.foreign-key", "a correct signature under another key refused", ref="Pusher protocol 5.2")
async def private_foreign_key(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("private-")
    good = sock.auth_for(channel).split(":", 1)[1]
    await sock.subscribe(channel, auth=f"not-{ctx.app.key}:{good}")
    await expect_rejected(sock, channel)


@case("private.other-socket-signature", "a signature made for another socket id refused",
      ref="Pusher protocol 5.2")
async def private_other_socket(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("private-")
    other = sign(ctx.app.secret, f"1234.5678:{channel}")
    await sock.subscribe(channel, auth=f"{ctx.app.key}:{other}")
    await expect_rejected(sock, channel)


@case("private.missing-auth", "a private subscribe without auth refused", ref="Pusher protocol 5.2, 4.5")
async def private_missing(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("private-")
    await sock.subscribe(channel, sign=False)
    await expect_rejected(sock, channel)


@case("private.three-part-signature", "a private subscribe with channel_data, signed over "
      "socket_id:channel:channel_data as the SDKs do, succeeds",
      ref="Pusher protocol 5.2 (decision); relay.md Pusher protocol decisions", level=Level.DECISION)
async def private_three_part(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel("private-"), channel_data={"user_id": "1"})


# --------------------------------------------------------------- presence


def _member(user_id: str, **info: str) -> dict[str, object]:
    return {"user_id": user_id, "user_info": info} if info else {"user_id": user_id}


@case("presence.members", "a presence subscribe answered with {presence: {ids, hash, count}} including "
      "the subscriber", ref="Pusher protocol 4.4, 6")
async def presence_members(ctx: Context) -> None:
    sock = await ctx.socket()
    user = ctx.user()
    ok = await ctx.subscribed(sock, ctx.channel("presence-"), channel_data=_member(user, name="A"))
    members = dict(ok.presence.members) if ok.presence else {}
    if ok.presence is None or members.get(user) != {"name": "A"} or ok.presence.count != 1:
        raise Failed(f"presence with {user} -> {{'name': 'A'}}, count 1", describe(ok))


@case("presence.python-sdk-spacing", "channel_data with the Python SDK's spacing, signed as sent, accepted",
      ref="Pusher protocol 5.3")
async def presence_spacing(ctx: Context) -> None:
    sock = await ctx.socket()
    text = json.dumps({"user_id": ctx.user(), "user_info": {"name": "Mr. Channels"}})
    await ctx.subscribed(sock, ctx.channel("presence-"), channel_data=text)


@case("presence.channel-data-without-user-id", "channel_data without user_id refused",
      ref="Pusher protocol 5.3, 4.5")
async def presence_no_user(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("presence-")
    await sock.subscribe(channel, channel_data={"user_info": {"name": "nobody"}})
    await expect_rejected(sock, channel)


@case("presence.member-added", "a second user joining: member_added to the first, never to itself",
      ref="Pusher protocol 6")
async def member_added(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-")
    await ctx.subscribed(a, channel, channel_data=_member(ctx.user("a")))
    user_b = ctx.user("b")
    await ctx.subscribed(b, channel, channel_data=_member(user_b, name="B"))
    added = await expect_event(a, MemberAdded, f"member_added for {user_b}")
    if added.user_id != user_b or added.user_info != {"name": "B"}:
        raise Failed(f"member_added {user_b} with its user_info", describe(added))
    await expect_nothing(b, lambda e: isinstance(e, MemberAdded), "no member_added about oneself", 0.3)


@case("presence.second-socket-same-user", "a user's second socket: no member_added, count unchanged",
      ref="Pusher protocol 6")
async def second_socket(ctx: Context) -> None:
    a, b1, b2 = await ctx.socket(), await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-")
    user_b = ctx.user("b")
    await ctx.subscribed(a, channel, channel_data=_member(ctx.user("a")))
    await ctx.subscribed(b1, channel, channel_data=_member(user_b))
    await expect_event(a, MemberAdded, "member_added for the first socket of b")
    ok = await ctx.subscribed(b2, channel, channel_data=_member(user_b))
    if ok.presence is None or ok.presence.count != 2:
        raise Failed("count 2 for two users on three sockets", describe(ok))
    await expect_nothing(a, lambda e: isinstance(e, MemberAdded), "no member_added for a second socket", 0.4)


@case("presence.member-removed", "member_removed only when a user's last socket leaves", ref="Pusher protocol 6")
async def member_removed(ctx: Context) -> None:
    a, b1, b2 = await ctx.socket(), await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-")
    user_b = ctx.user("b")
    await ctx.subscribed(a, channel, channel_data=_member(ctx.user("a")))
    await ctx.subscribed(b1, channel, channel_data=_member(user_b))
    await ctx.subscribed(b2, channel, channel_data=_member(user_b))
    await b1.close()
    await expect_nothing(a, lambda e: isinstance(e, MemberRemoved), "no member_removed while b has a socket", 0.4)
    await b2.unsubscribe(channel)
    removed = await expect_event(a, MemberRemoved, f"member_removed for {user_b}")
    if removed.user_id != user_b:
        raise Failed(f"member_removed {user_b}", describe(removed))


@case("presence.member-without-user-info", "a member without user_info is still a key of hash "
      "(pusher-js lists members from hash)", ref="Pusher protocol 4.4")
async def member_without_info(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-")
    user_a = ctx.user("a")
    await ctx.subscribed(a, channel, channel_data={"user_id": user_a})
    ok = await ctx.subscribed(b, channel, channel_data=_member(ctx.user("b"), name="B"))
    if ok.presence is None or user_a not in dict(ok.presence.members):
        raise Failed(f"{user_a} among the members", describe(ok))
    for text in reversed(b.raw):
        frame = json.loads(text)
        if frame.get("event") == "pusher_internal:subscription_succeeded" and frame.get("channel") == channel:
            data = frame.get("data")
            data = json.loads(data) if isinstance(data, str) else data
            hash_ = (data or {}).get("presence", {}).get("hash", {})
            if user_a not in hash_:
                raise Failed(f"{user_a} as a key of hash", repr(hash_)[:200])
            return


@case("presence.signed-in-without-channel-data", "a signed-in socket joins presence with auth over "
      "socket_id:channel and no channel_data, as its signed-in user", ref="Pusher protocol 5.4, 8.1")
async def presence_signed_in(ctx: Context) -> None:
    sock = await ctx.socket()
    user = ctx.user()
    await sock.signin({"id": user, "user_info": {"name": "S"}})
    from pipe_proto.pusher import SignInSuccess

    await expect_event(sock, SignInSuccess, "pusher:signin_success")
    channel = ctx.channel("presence-")
    ok = await ctx.subscribed(sock, channel)
    if ok.presence is None or user not in [str(u) for u, _ in ok.presence.members]:
        raise Failed(f"presence members including the signed-in {user}", describe(ok))


@case("presence.rest-user-count", "REST user_count counts distinct users, not sockets", ref="Pusher protocol 9.3")
async def presence_user_count(ctx: Context) -> None:
    channel = ctx.channel("presence-")
    user = ctx.user()
    for _ in range(2):
        await ctx.subscribed(await ctx.socket(), channel, channel_data=_member(user))
    await ctx.subscribed(await ctx.socket(), channel, channel_data=_member(ctx.user()))
    body = expect_status(await ctx.rest("GET", f"/channels/{channel}", params={"info": "user_count"}), 200)
    if not isinstance(body, dict) or body.get("user_count") != 2 or body.get("occupied") is not True:
        raise Failed("{occupied: true, user_count: 2}", repr(body))


@case("presence.rest-users", "REST users lists each distinct user once; 400 on a non-presence channel",
      ref="Pusher protocol 9.3")
async def presence_users(ctx: Context) -> None:
    channel = ctx.channel("presence-")
    users = {ctx.user(), ctx.user()}
    for user in [*users, next(iter(users))]:
        await ctx.subscribed(await ctx.socket(), channel, channel_data=_member(user))
    body = expect_status(await ctx.rest("GET", f"/channels/{channel}/users"), 200)
    got = sorted(str(u.get("id")) for u in (body or {}).get("users", []) if isinstance(u, dict))
    if got != sorted(users):
        raise Failed(f"users {sorted(users)}", repr(body))
    expect_status(await ctx.rest("GET", f"/channels/{ctx.channel()}/users"), 400, what="for a public channel")


# -------------------------------------------------------------- encrypted


@case("encrypted.subscribe", "private-encrypted- subscribes with a private-style signature",
      ref="Pusher protocol 5.5")
async def encrypted_subscribe(ctx: Context) -> None:
    sock = await ctx.socket()
    await ctx.subscribed(sock, ctx.channel("private-encrypted-"))


@case("encrypted.payload-verbatim", "an encrypted payload is relayed verbatim", ref="Pusher protocol 5.5")
async def encrypted_verbatim(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("private-encrypted-")
    await ctx.subscribed(sock, channel)
    data = json.dumps({"nonce": base64.b64encode(b"n" * 24).decode(),
                       "ciphertext": base64.b64encode(b"secret bytes").decode()})
    await ctx.trigger([channel], "sealed", data)
    got = await expect_event(sock, message_on(channel, "sealed"), "the sealed event")
    if got.data != data:
        raise Failed("the ciphertext verbatim", repr(got.data))


@case("encrypted.client-event-refused", "a client event on an encrypted channel is not relayed",
      ref="Pusher protocol 5.5, 7 (R)", level=Level.DECISION)
async def encrypted_client_event(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-encrypted-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-x", {"plain": "text"})
    await expect_nothing(b, message_on(channel, "client-x"), "no client event relayed", 0.5)


# ------------------------------------------------------------------ cache


@case("cache.miss", "an empty cache channel: subscription_succeeded then pusher:cache_miss",
      ref="Pusher protocol 4.7")
async def cache_miss(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel("cache-")
    await ctx.subscribed(sock, channel)
    await expect_event(sock, lambda e: isinstance(e, CacheMiss) and e.channel == channel, "pusher:cache_miss")


async def _cache_replay(ctx: Context, prefix: str) -> None:
    first, later = await ctx.socket(), await ctx.socket()
    channel = ctx.channel(prefix)
    await ctx.subscribed(first, channel)
    await ctx.trigger([channel], "price", '{"v":42}')
    await expect_event(first, message_on(channel, "price"), "the event on the cache channel")
    await ctx.subscribed(later, channel)
    got = await expect_event(later, lambda e: isinstance(e, (Message, CacheMiss)) and e.channel == channel,
                             "the cached event right after subscription_succeeded")
    if not isinstance(got, Message) or got.event != "price" or data_of(got) != {"v": 42}:
        raise Failed("the cached event price {v: 42}", describe(got))


@case("cache.replay", "a later subscriber to cache- gets the last published event at once",
      ref="Pusher protocol 4.7")
async def cache_replay(ctx: Context) -> None:
    await _cache_replay(ctx, "cache-")


@case("cache.private-replay", "the same for private-cache-", ref="Pusher protocol 4.7")
async def cache_private_replay(ctx: Context) -> None:
    await _cache_replay(ctx, "private-cache-")


@case("cache.presence-replay", "the same for presence-cache-", ref="Pusher protocol 4.7")
async def cache_presence_replay(ctx: Context) -> None:
    first, later = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-cache-")
    await ctx.subscribed(first, channel, channel_data=_member(ctx.user()))
    await ctx.trigger([channel], "price", '{"v":7}')
    await expect_event(first, message_on(channel, "price"), "the event on the cache channel")
    await ctx.subscribed(later, channel, channel_data=_member(ctx.user()))
    await expect_event(later, message_on(channel, "price"), "the cached event")


@case("cache.client-events-not-cached", "a client event on private-cache- is not cached",
      ref="Pusher protocol 4.7, 7")
async def cache_client_not_cached(ctx: Context) -> None:
    a, later = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-cache-")
    await ctx.subscribed(a, channel)
    await a.trigger(channel, "client-x", {"n": 1})
    await ctx.subscribed(later, channel)
    got = await expect_event(later, lambda e: isinstance(e, (Message, CacheMiss)) and e.channel == channel,
                             "pusher:cache_miss")
    if not isinstance(got, CacheMiss):
        raise Failed("pusher:cache_miss (client events are not cached)", describe(got))
