"""The S4 backend: answers every `rt-ping` from a socket with `rt-pong` to that socket.

    python bench/harness/pipe_backend.py WS_URL APP_ID KEY SECRET [WORK_US]

Runs `open_pipe` in the group `bench`, so several processes share the sockets;
prints `ready` once connected. Answers go out without waiting for the relay's
reply (`wait=False`), the way a backend answering a stream would. With
WORK_US, each message first costs that many microseconds of this process's
CPU, standing in for an application's own work (a template, a query's
parsing): the case where one backend process, not the relay, is the limit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import trio

from pipe_trio import open_pipe


def work(ns: int) -> None:
    # CPU time, not wall time: the same work whichever process the OS runs.
    end = time.thread_time_ns() + ns
    while time.thread_time_ns() < end:
        pass


async def main(url: str, app_id: str, key: str, secret: str, work_us: str = "0") -> None:
    work_ns = int(float(work_us) * 1000)
    async with open_pipe(url, app_id=app_id, key=key, secret=secret, group="bench", events=["socket_message"]) as pipe:

        @pipe.sockets.on("event:rt-ping")
        async def answer(socket_id: str, data: Any) -> None:
            if work_ns:
                work(work_ns)
            await pipe.socket(socket_id).trigger("rt-pong", data, wait=False)

        print("ready", flush=True)
        await pipe.wait_closed()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:6])
