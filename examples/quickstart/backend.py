"""The Pipe quickstart backend, in Python: the 2011 announcement's test.js, on open_pipe.

Run the relay (``pipe-relay serve``), then ``python examples/quickstart/backend.py``,
then open ``index.html`` in a browser. Credentials default to the relay's demo
app; set RELAY_URL, PIPE_APP_ID, PIPE_KEY and PIPE_SECRET for another one.
"""

import contextlib
import os

import trio

from pipe_trio import open_pipe

RELAY_URL = os.environ.get("RELAY_URL", "ws://127.0.0.1:6001")
APP_ID = os.environ.get("PIPE_APP_ID", "1")
KEY = os.environ.get("PIPE_KEY", "demo-key")
SECRET = os.environ.get("PIPE_SECRET", "demo-secret")


async def main() -> None:
    async with open_pipe(RELAY_URL, app_id=APP_ID, key=KEY, secret=SECRET) as pipe:
        print(f"backend connected to {RELAY_URL} as {pipe.socket_id}", flush=True)

        @pipe.sockets.on("open")
        def opened(socket_id: str) -> None:
            print(f"new socket: {socket_id}", flush=True)

        @pipe.sockets.on("event:eventFromBrowser")
        async def answer(socket_id: str, data: object) -> None:
            print(f"eventFromBrowser from {socket_id}: {data}", flush=True)
            await pipe.socket(socket_id).trigger("acknowledge", {"message": "Rodger"})

        @pipe.sockets.on("close")
        def closed(socket_id: str) -> None:
            print(f"socket closed: {socket_id}", flush=True)

        await pipe.wait_closed()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
