"""The REST API: endpoints and request authentication."""

from __future__ import annotations

import time

from pipe_proto.pusher import Message

from ...testing.http import http_request
from ..runner import Context, Failed, Level, case
from ._checks import expect_event, expect_nothing, expect_status, message_on


@case("rest.trigger", "POST events: 200 with a JSON body; the subscriber gets the event", ref="Pusher protocol 9.3")
async def trigger(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    response = await ctx.rest("POST", "/events", body={"name": "e", "channels": [channel], "data": '{"a":1}'})
    body = expect_status(response, 200)
    if not isinstance(body, dict):
        raise Failed("a JSON object body (the Python SDK parses it)", repr(response.body[:100]))
    await expect_event(sock, message_on(channel, "e"), "the triggered event")


@case("rest.trigger-empty-object", "POST events answers exactly {} without info", ref="Pusher protocol 9.3 (R)",
      level=Level.DECISION)
async def trigger_empty(ctx: Context) -> None:
    body = expect_status(await ctx.rest("POST", "/events", body={"name": "e", "channels": [ctx.channel()],
                                                                   "data": "x"}), 200)
    if body != {}:
        raise Failed("{}", repr(body))


@case("rest.trigger-single-channel", "POST events with \"channel\" instead of \"channels\" accepted",
      ref="Pusher protocol 9.3")
async def trigger_single(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    expect_status(await ctx.rest("POST", "/events", body={"name": "one", "channel": channel, "data": "1"}), 200)
    await expect_event(sock, message_on(channel, "one"), "the event")


@case("rest.socket-id-excluded", "the socket_id named in a trigger does not receive it; others do",
      ref="Pusher protocol 4.9, 9.3")
async def socket_id_excluded(ctx: Context) -> None:
    a, b = await ctx.socket(), await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(a, channel)
    await ctx.subscribed(b, channel)
    await ctx.trigger([channel], "x", "{}", socket_id=a.socket_id)
    await expect_event(b, message_on(channel, "x"), "the event at the other subscriber")
    await expect_nothing(a, message_on(channel, "x"), "nothing at the excluded socket", 0.4)


@case("rest.trigger-info", "POST events with info=user_count,subscription_count answers the counts per channel",
      ref="Pusher protocol 9.3")
async def trigger_info(ctx: Context) -> None:
    channel = ctx.channel("presence-")
    await ctx.subscribed(await ctx.socket(), channel, channel_data={"user_id": ctx.user()})
    body = expect_status(await ctx.rest("POST", "/events", body={
        "name": "e", "channels": [channel], "data": "{}", "info": "user_count,subscription_count"}), 200)
    info = (body or {}).get("channels", {}).get(channel, {}) if isinstance(body, dict) else {}
    if info.get("user_count") != 1:
        raise Failed(f"{{channels: {{{channel}: {{user_count: 1, ...}}}}}}", repr(body))


@case("rest.batch", "POST batch_events delivers each event", ref="Pusher protocol 9.3")
async def batch(ctx: Context) -> None:
    sock = await ctx.socket()
    c1, c2 = ctx.channel(), ctx.channel()
    await ctx.subscribed(sock, c1)
    await ctx.subscribed(sock, c2)
    expect_status(await ctx.rest("POST", "/batch_events", body={"batch": [
        {"channel": c1, "name": "b1", "data": "1"}, {"channel": c2, "name": "b2", "data": "2"}]}), 200)
    await expect_event(sock, message_on(c1, "b1"), "b1")
    await expect_event(sock, message_on(c2, "b2"), "b2")


@case("rest.batch-over-10", "a batch of 11 events refused with 400", ref="Pusher protocol 9.3, 9.5")
async def batch_over(ctx: Context) -> None:
    channel = ctx.channel()
    expect_status(await ctx.rest("POST", "/batch_events", body={
        "batch": [{"channel": channel, "name": f"e{n}", "data": "x"} for n in range(11)]}), 400)


@case("rest.channels", "GET channels lists occupied channels only, filtered by prefix", ref="Pusher protocol 9.3")
async def channels(ctx: Context) -> None:
    prefix = ctx.channel("list-") + "-"
    occupied = prefix + "a"
    await ctx.subscribed(await ctx.socket(), occupied)
    body = expect_status(await ctx.rest("GET", "/channels", params={"filter_by_prefix": prefix}), 200)
    listed = (body or {}).get("channels") if isinstance(body, dict) else None
    if not isinstance(listed, dict) or set(listed) != {occupied}:
        raise Failed(f"channels {{{occupied}: ...}} only", repr(body))


@case("rest.channels-user-count-needs-presence", "GET channels?info=user_count without a presence- prefix "
      "refused with 400", ref="Pusher protocol 9.3")
async def channels_user_count(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", params={"info": "user_count"}), 400)


@case("rest.channel-info", "GET channels/C: occupied true/false; user_count on a public channel is 400",
      ref="Pusher protocol 9.3")
async def channel_info(ctx: Context) -> None:
    channel = ctx.channel()
    body = expect_status(await ctx.rest("GET", f"/channels/{channel}"), 200)
    if not isinstance(body, dict) or body.get("occupied") is not False:
        raise Failed("{occupied: false}", repr(body))
    await ctx.subscribed(await ctx.socket(), channel)
    body = expect_status(await ctx.rest("GET", f"/channels/{channel}"), 200)
    if not isinstance(body, dict) or body.get("occupied") is not True:
        raise Failed("{occupied: true}", repr(body))
    expect_status(await ctx.rest("GET", f"/channels/{channel}", params={"info": "user_count"}), 400,
                  what="for user_count on a public channel")


@case("rest.stale-timestamp-401", "a request signed 600 s or more ago refused with 401",
      ref="Pusher protocol 9.2")
async def stale(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", timestamp=int(time.time()) - 700), 401,
                  what="for a timestamp 700 s old")


@case("rest.timestamp-within-window", "a request signed 500 s ago accepted", ref="Pusher protocol 9.2")
async def within_window(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", timestamp=int(time.time()) - 500), 200)


@case("rest.bad-signature-401", "a wrong auth_signature refused with 401", ref="Pusher protocol 9.2")
async def bad_signature(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", secret=ctx.app.secret + "x"), 401)


@case("rest.body-md5-mismatch-401", "a body changed after signing (body_md5 no longer matching) refused with 401",
      ref="Pusher protocol 9.2")
async def body_md5(ctx: Context) -> None:
    from pipe_proto.testing.signers import signed_rest_params

    path = f"/apps/{ctx.app.id}/events"
    signed = b'{"name":"e","channels":["c"],"data":"1"}'
    query = signed_rest_params(ctx.app.key, ctx.app.secret, "POST", path, now=time.time(), body=signed)
    sent = signed.replace(b'"1"', b'"2"')
    target = path + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    expect_status(await http_request(ctx.target.url, "POST", target, body=sent), 401)


@case("rest.foreign-key-401", "a request signed with another app's key and secret refused with 401",
      ref="Pusher protocol 9.2", needs=["app2"])
async def foreign_key(ctx: Context) -> None:
    other = ctx.target.app2
    assert other is not None
    expect_status(await ctx.rest("GET", "/channels", key=other.key, secret=other.secret), 401)


@case("rest.auth-version-401", "auth_version=2.0 refused with 401", ref="Pusher protocol 9.2")
async def auth_version(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", version="2.0"), 401)


@case("rest.unknown-app-404", "an unknown app id answered 404", ref="Pusher protocol 9.4")
async def unknown_app(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/apps/987654321/channels", absolute=True), 404)


@case("rest.body-md5-on-get", "a GET signed with body_md5 of the empty body (the Python SDK) accepted",
      ref="Pusher protocol 9.2, 9.6")
async def md5_on_get(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", body_md5=True), 200)


@case("rest.signature-first-in-query", "auth_signature placed first in the query accepted",
      ref="Pusher protocol 9.2")
async def signature_first(ctx: Context) -> None:
    expect_status(await ctx.rest("GET", "/channels", query_order=["auth_signature"]), 200)


@case("rest.too-many-channels-400", "a trigger to 101 channels refused with 400", ref="Pusher protocol 9.3, 9.5")
async def too_many_channels(ctx: Context) -> None:
    base = ctx.channel()
    expect_status(await ctx.rest("POST", "/events", body={
        "name": "e", "channels": [f"{base}-{n}" for n in range(101)], "data": "x"}), 400)


@case("rest.data-too-large-413", "10 240 bytes of data accepted, 10 241 refused with 413",
      ref="Pusher protocol 9.3, 9.5")
async def data_too_large(ctx: Context) -> None:
    channel = ctx.channel()
    expect_status(await ctx.rest("POST", "/events", body={"name": "e", "channels": [channel],
                                                          "data": "x" * 10240}), 200)
    expect_status(await ctx.rest("POST", "/events", body={"name": "e", "channels": [channel],
                                                          "data": "x" * 10241}), 413)


@case("rest.event-name-too-long-400", "an event name of 201 characters refused with 400",
      ref="Pusher protocol 9.3, 9.5")
async def event_name_long(ctx: Context) -> None:
    expect_status(await ctx.rest("POST", "/events", body={"name": "e" * 201, "channels": [ctx.channel()],
                                                          "data": "x"}), 400)


@case("rest.bad-socket-id-400", "a trigger excluding socket_id \"abc\" refused with 400",
      ref="Pusher protocol 9.3 (R)", level=Level.DECISION)
async def bad_socket_id(ctx: Context) -> None:
    expect_status(await ctx.rest("POST", "/events", body={"name": "e", "channels": [ctx.channel()],
                                                          "data": "x", "socket_id": "abc"}), 400)


@case("rest.reserved-event-name-400", "an event named pusher:... refused with 400", ref="Pusher protocol 9.3 (R)",
      level=Level.DECISION)
async def reserved_name(ctx: Context) -> None:
    sock = await ctx.socket()
    channel = ctx.channel()
    await ctx.subscribed(sock, channel)
    expect_status(await ctx.rest("POST", "/events", body={"name": "pusher:connection_established",
                                                          "channels": [channel], "data": "{}"}), 400)
    await expect_nothing(sock, lambda e: isinstance(e, Message), "no reserved event delivered", 0.2)


@case("rest.app-isolation", "a trigger on one app does not reach the same channel name on another app",
      ref="Pusher protocol 9.1", needs=["app2"])
async def app_isolation(ctx: Context) -> None:
    other = ctx.target.app2
    assert other is not None
    mine, theirs = await ctx.socket(), await ctx.socket(other)
    channel = ctx.channel()
    await ctx.subscribed(mine, channel)
    await ctx.subscribed(theirs, channel)
    await ctx.trigger([channel], "only-mine", "{}")
    await expect_event(mine, message_on(channel, "only-mine"), "the event on the app's own socket")
    await expect_nothing(theirs, message_on(channel), "nothing on the other app's socket", 0.3)
