"""Client events; user sign-in, server-to-user events, watchlists and termination."""

from __future__ import annotations

import trio

from pipe_proto.pusher import Error, Message, SignInSuccess, WatchlistEvents

from ..runner import Context, Failed, Level, case, describe
from ._checks import (
    data_of,
    expect_event,
    expect_nothing,
    expect_open,
    expect_rejected,
    expect_status,
    is_error,
    message_on,
)

# ------------------------------------------------------------ client events


@case("client-events.private-relayed", "a client event on a private channel reaches the other subscribers, "
      "not the sender, without user_id, with the data sent", ref="Pusher protocol 7")
async def private_relayed(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-typing", {"who": "a", "n": 1})
    got = await expect_event(b, message_on(channel, "client-typing"), "client-typing at the other subscriber")
    if data_of(got) != {"who": "a", "n": 1} or got.user_id is not None:
        raise Failed("data {who: a, n: 1} and no user_id", describe(got))
    await expect_nothing(a, message_on(channel, "client-typing"), "no echo to the sender", 0.3)


@case("client-events.data-as-string", "relayed client event data is a JSON string (the protocol's double "
      "encoding)", ref="Pusher protocol 7 (R), 1.5", level=Level.DECISION)
async def data_as_string(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-x", {"k": "v"})
    await expect_event(b, message_on(channel, "client-x"), "client-x")
    raw = [t for t in b.raw if '"client-x"' in t]
    if not raw or '"data":"' not in raw[-1].replace(" ", ""):
        raise Failed('"data" as a JSON string', raw[-1][:200] if raw else "no frame")


@case("client-events.presence-user-id", "a client event on a presence channel carries the sender's user_id",
      ref="Pusher protocol 7, 6")
async def presence_user_id(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("presence-")
    user_a = ctx.user("a")
    await ctx.subscribed(a, channel, channel_data={"user_id": user_a})
    await ctx.subscribed(b, channel, channel_data={"user_id": ctx.user("b")})
    await a.trigger(channel, "client-hi", {})
    got = await expect_event(b, message_on(channel, "client-hi"), "client-hi")
    if got.user_id != user_a:
        raise Failed(f"user_id {user_a}", describe(got))


@case("client-events.public-refused", "a client event on a public channel is not relayed (and gets an error)",
      ref="Pusher protocol 7")
async def public_refused(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-x", {})
    await expect_nothing(b, message_on(channel, "client-x"), "no client event relayed on a public channel", 0.5)
    await expect_open(a)


@case("client-events.not-subscribed-refused", "a client event on a channel the sender has not joined is not "
      "relayed", ref="Pusher protocol 7")
async def not_subscribed(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "client-x", {})
    await expect_nothing(b, message_on(channel, "client-x"), "no event from a non-member", 0.5)
    await expect_open(a)


@case("client-events.prefix-required", "an event without the client- prefix is not relayed to the channel",
      ref="Pusher protocol 7")
async def prefix_required(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await a.trigger(channel, "typing", {})
    await expect_nothing(b, message_on(channel, "typing"), "no relay of a non-client- event", 0.5)


@case("client-events.rate-limit-4301", "over 10 client events a second: pusher:error 4301, the connection "
      "stays open", ref="Pusher protocol 7, 3.2", timeout=5)
async def rate_limit(ctx: Context) -> None:
    a = await ctx.socket()
    channel = ctx.channel("private-")
    await ctx.subscribed(a, channel)
    for n in range(30):
        await a.trigger(channel, "client-burst", {"n": n})
    await expect_event(a, lambda e: is_error(e, 4301), "pusher:error 4301")
    await expect_open(a)


# ------------------------------------------------------------------- users


@case("users.signin", "pusher:signin answered by pusher:signin_success echoing the user_data string",
      ref="Pusher protocol 8.1")
async def signin(ctx: Context) -> None:
    sock = await ctx.socket()
    sent = await sock.signin({"id": ctx.user(), "user_info": {"name": "A"}})
    got = await expect_event(sock, lambda e: isinstance(e, (SignInSuccess, Error)), "pusher:signin_success")
    if not isinstance(got, SignInSuccess) or got.user_data != sent:
        raise Failed(f"signin_success with user_data {sent!r}", describe(got))


@case("users.signin-bad-signature-4009", "a badly signed sign-in answered by pusher:error 4009",
      ref="Pusher protocol 8.1, 3.2")
async def signin_bad(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.signin({"id": ctx.user()}, auth=f"{ctx.app.key}:{'0' * 64}")
    got = await expect_event(sock, lambda e: isinstance(e, (SignInSuccess, Error)), "pusher:error 4009")
    if not is_error(got, 4009):
        raise Failed("pusher:error 4009", describe(got))


@case("users.signin-failure-keeps-connection", "a failed sign-in leaves the connection open",
      ref="Pusher protocol 8.1 (R); relay.md Pusher protocol decisions", level=Level.DECISION)
async def signin_keeps(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.signin({"id": ctx.user()}, auth=f"{ctx.app.key}:{'0' * 64}")
    await sock.gather(0.3)
    await expect_open(sock, "the connection to stay open after a failed sign-in")


@case("users.signin-without-id", "user_data without a string id refused", ref="Pusher protocol 5.6, 8.1")
async def signin_no_id(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.signin({"name": "anonymous"})
    got = await expect_event(sock, lambda e: isinstance(e, (SignInSuccess, Error)), "pusher:error",
                             timeout=1.5)
    if isinstance(got, SignInSuccess):
        raise Failed("a refusal", describe(got))


@case("users.second-signin-other-user", "a second sign-in as another user on the same connection refused",
      ref="Pusher protocol 8.1")
async def second_signin(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.signin({"id": ctx.user()})
    await expect_event(sock, SignInSuccess, "the first signin_success")
    await sock.signin({"id": ctx.user()})
    got = await expect_event(sock, lambda e: isinstance(e, (SignInSuccess, Error)), "pusher:error")
    if isinstance(got, SignInSuccess):
        raise Failed("a refusal of the second user", describe(got))


@case("users.server-to-user-channel", "a signed-in socket may join #server-to-user-<own id> with auth \"\", "
      "not another user's", ref="Pusher protocol 8.1")
async def server_to_user_channel(ctx: Context) -> None:
    sock = await ctx.socket()
    user = ctx.user()
    await sock.signin({"id": user})
    await expect_event(sock, SignInSuccess, "signin_success")
    await ctx.subscribed(sock, f"#server-to-user-{user}", auth="")
    other = f"#server-to-user-{ctx.user()}"
    await sock.subscribe(other, auth="")
    await expect_rejected(sock, other)


@case("users.server-to-user-delivery", "a REST event to #server-to-user-U reaches every socket signed in as U "
      "and no other", ref="Pusher protocol 8.2")
async def server_to_user_delivery(ctx: Context) -> None:
    user = ctx.user()
    mine = [await ctx.socket(), await ctx.socket()]
    other = await ctx.socket()
    for sock in mine:
        await sock.signin({"id": user})
        await expect_event(sock, SignInSuccess, "signin_success")
        await ctx.subscribed(sock, f"#server-to-user-{user}", auth="")
    await other.signin({"id": ctx.user()})
    await expect_event(other, SignInSuccess, "signin_success")
    channel = f"#server-to-user-{user}"
    await ctx.trigger([channel], "note", '{"hi":1}')
    for sock in mine:
        await expect_event(sock, message_on(channel, "note"), f"the event on {channel} at each socket of {user}")
    await expect_nothing(other, lambda e: isinstance(e, Message), "nothing for another user", 0.3)


async def _terminate(ctx: Context, *, absolute: bool) -> None:
    user = ctx.user()
    victims = [await ctx.socket(), await ctx.socket()]
    bystander = await ctx.socket()
    for sock in victims:
        await sock.signin({"id": user})
        await expect_event(sock, SignInSuccess, "signin_success")
    path = f"/users/{user}/terminate_connections"
    expect_status(await ctx.rest("POST", path, body={}, absolute=absolute), 200)
    for sock in victims:
        try:
            code = await sock.wait_closed(timeout=2)
        except trio.TooSlowError:
            raise Failed(f"the sockets of {user} closed", "still open") from None
        if code != 4009:
            raise Failed("close 4009 (pusher-js does not reconnect)", f"close {code}")
    await expect_open(bystander, "other sockets untouched")


@case("users.terminate-connections", "POST users/U/terminate_connections closes U's sockets (4009), not others",
      ref="Pusher protocol 8.4, 9.3; relay.md Pusher protocol decisions")
async def terminate(ctx: Context) -> None:
    await _terminate(ctx, absolute=False)


@case("users.terminate-python-sdk-path", "the Python SDK's POST /users/U/terminate_connections (no /apps "
      "prefix) works too", ref="Pusher protocol 9.6 (R)", level=Level.DECISION)
async def terminate_python(ctx: Context) -> None:
    await _terminate(ctx, absolute=True)


@case("users.watchlist-online", "a watcher learns of a watched user's sign-in (online)", ref="Pusher protocol 8.3")
async def watchlist(ctx: Context) -> None:
    watcher, watched = await ctx.socket(), await ctx.socket()
    friend = ctx.user("friend")
    await watcher.signin({"id": ctx.user(), "watchlist": [friend]})
    await expect_event(watcher, SignInSuccess, "signin_success")
    await watched.signin({"id": friend})
    got = await expect_event(watcher, WatchlistEvents, "pusher_internal:watchlist_events")
    if not any(c.name == "online" and friend in c.user_ids for c in got.events):
        raise Failed(f"online [{friend}]", describe(got))


@case("users.watchlist-limit-4302", "a watchlist of 101 ids: signin_success, then pusher:error 4302",
      ref="Pusher protocol 8.1, 3.2")
async def watchlist_limit(ctx: Context) -> None:
    sock = await ctx.socket()
    await sock.signin({"id": ctx.user(), "watchlist": [f"w{n}" for n in range(101)]})
    await expect_event(sock, SignInSuccess, "signin_success")
    await expect_event(sock, lambda e: is_error(e, 4302), "pusher:error 4302")
