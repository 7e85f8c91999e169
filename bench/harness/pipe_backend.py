"""The S4 backend: answers every `rt-ping` from a socket with `rt-pong` to that socket.

    python bench/harness/pipe_backend.py WS_URL APP_ID KEY SECRET

Runs `open_pipe` in the group `bench`, so several processes share the sockets;
prints `ready` once connected. Answers go out without waiting for the relay's
reply (`wait=False`), the way a backend answering a stream would.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from pipe_trio import open_pipe


async def main(url: str, app_id: str, key: str, secret: str) -> None:
    async with open_pipe(url, app_id=app_id, key=key, secret=secret, group="bench", events=["socket_message"]) as pipe:

        @pipe.sockets.on("event:rt-ping")
        async def answer(socket_id: str, data: Any) -> None:
            await pipe.socket(socket_id).trigger("rt-pong", data, wait=False)

        print("ready", flush=True)
        await pipe.wait_closed()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:5])
