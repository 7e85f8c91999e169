"""Baseline for the benchmarks: a small Pusher-protocol broadcast server built
the way a typical Python developer would build it, on asyncio + `websockets`.

It speaks only the subset the benchmarks exercise (public channels, ping/pong)
plus one non-Pusher frame, `bench:publish`, so that the load can be driven
without an HTTP API. It is deliberately idiomatic: default `serve()` options
(default keepalive, listen backlog, queue sizes), the standard-library `json`,
and `websockets.broadcast()` -- neither tuned nor handicapped.

    python websockets_server.py --host 127.0.0.1 --port 6001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
from collections import defaultdict
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

ACTIVITY_TIMEOUT = 120  # seconds, the value hosted Pusher announces
PONG = json.dumps({"event": "pusher:pong", "data": {}})

# channel name -> open connections subscribed to it
subscribers: defaultdict[str, set[ServerConnection]] = defaultdict(set)


def new_socket_id() -> str:
    # The Pusher SDKs only accept ids matching ^\d+\.\d+$.
    return f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"


def channel_of(data: Any) -> str | None:
    # pusher-js sends `data` as an object, some other clients as a JSON string.
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    channel = data.get("channel") if isinstance(data, dict) else None
    return channel if isinstance(channel, str) and channel else None


async def reject(ws: ServerConnection, code: int, message: str) -> None:
    await ws.send(json.dumps({"event": "pusher:error", "data": {"code": code, "message": message}}))
    await ws.close(code, message)


async def handler(ws: ServerConnection) -> None:
    assert ws.request is not None
    path = ws.request.path.partition("?")[0]
    if not path.startswith("/app/") or len(path) <= len("/app/"):
        await reject(ws, 4005, "Path not found")
        return

    established = {"socket_id": new_socket_id(), "activity_timeout": ACTIVITY_TIMEOUT}
    await ws.send(json.dumps({"event": "pusher:connection_established", "data": json.dumps(established)}))

    mine: set[str] = set()
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
                event = msg["event"]
            except (ValueError, TypeError, KeyError):
                continue  # a benchmark server has no use for error replies
            if event == "bench:publish":
                channel = msg.get("channel")
                subs = subscribers.get(channel) if isinstance(channel, str) else None
                if subs:
                    # Encode once per event; broadcast() frames it per connection.
                    broadcast(subs, json.dumps({"event": msg.get("name"), "channel": channel, "data": msg.get("data")}))
            elif event == "pusher:subscribe":
                channel = channel_of(msg.get("data"))
                if channel is None:
                    continue
                subscribers[channel].add(ws)
                mine.add(channel)
                reply = {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}
                await ws.send(json.dumps(reply))
            elif event == "pusher:unsubscribe":
                channel = channel_of(msg.get("data"))
                if channel in mine:
                    mine.discard(channel)
                    forget(channel, ws)
            elif event == "pusher:ping":
                await ws.send(PONG)
    except ConnectionClosed:
        pass
    finally:
        for channel in mine:
            forget(channel, ws)


def forget(channel: str, ws: ServerConnection) -> None:
    subs = subscribers.get(channel)
    if subs is not None:
        subs.discard(ws)
        if not subs:
            del subscribers[channel]  # keep the dict from growing with dead channels


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6001)
    args = parser.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with serve(handler, args.host, args.port):
        print(f"listening on ws://{args.host}:{args.port}/app/<key>", flush=True)
        with contextlib.suppress(asyncio.CancelledError):  # cancelled by SIGINT/SIGTERM
            await stop


if __name__ == "__main__":
    asyncio.run(main())
