"""The Pipe quickstart backend, in Python: the 2011 announcement's test.js, on open_pipe.

Run the relay (``pipe-relay serve``), then ``python examples/quickstart/backend.py``,
then open ``index.html`` in a browser. Credentials default to the relay's demo
app; set RELAY_URL, PIPE_APP_ID, PIPE_KEY and PIPE_SECRET for another one.
Stop it with Ctrl-C.
"""

import os
import signal

import trio

from pipe_trio import Pipe, open_pipe

RELAY_URL = os.environ.get("RELAY_URL", "ws://127.0.0.1:6001")
APP_ID = os.environ.get("PIPE_APP_ID", "1")
KEY = os.environ.get("PIPE_KEY", "demo-key")
SECRET = os.environ.get("PIPE_SECRET", "demo-secret")


async def main() -> None:
    connected, stop = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(stop_on_signal, connected, stop, nursery.cancel_scope)
        print(f"backend connecting to {RELAY_URL}", flush=True)
        async with open_pipe(RELAY_URL, app_id=APP_ID, key=KEY, secret=SECRET) as pipe:
            connected.set()
            await serve(pipe, stop)
        nursery.cancel_scope.cancel()  # done: stop watching for signals
    print("backend stopped", flush=True)


async def serve(pipe: Pipe, stop: trio.Event) -> None:
    """Answer the browsers until ``stop`` is set."""
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

    await stop.wait()


async def stop_on_signal(
    connected: trio.Event,
    stop: trio.Event,
    everything: trio.CancelScope,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ctrl-C (or SIGTERM) once connected sets ``stop``: the pipe's block ends normally, the pipe closes cleanly.

    Before the pipe is connected (the relay is not up yet), or at a second
    Ctrl-C, everything is cancelled instead. Catching KeyboardInterrupt would
    not do: it leaves Trio wrapped in an exception group, which ``except
    KeyboardInterrupt`` and ``contextlib.suppress`` miss before Python 3.12.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            if connected.is_set() and not stop.is_set():
                stop.set()
            else:
                everything.cancel()


if __name__ == "__main__":
    trio.run(main)
