"""The pipe buffer bound holds for memory, not just for JSON bytes: a relay process under load."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import trio

from pipe_proto.pipe.handshake import pipe_url
from pipe_trio._wsclient import ClientWebSocket, connect_websocket
from tests.processes import background

BUFFER_BYTES = 8 * 1024 * 1024
WINDOW_BYTES = 1024 * 1024
#: What the relay may take beyond its bounds: one message being read per
#: socket, parsing, the allocator's slack.
OVERHEAD = 32 * 1024 * 1024
SOCKETS, EACH = 1000, 10
#: 3,300 empty lists: 9.9 KB of JSON, many times that as Python objects.
DATA = "[" + ",".join(["[]"] * 3300) + "]"

RELAY = f"""
import trio
from pipe_proto import App, PipeSettings, Relay
from pipe_trio import serve

async def main():
    app = App(id="1", key="app-key", secret="app-secret",
              pipe=PipeSettings(buffer_bytes={BUFFER_BYTES}, window_bytes={WINDOW_BYTES}))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, Relay([app]), "127.0.0.1", 0)
        print("PORT", server.port, flush=True)

trio.run(main)
"""


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


async def websocket(port: int, resource: str) -> ClientWebSocket:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    return await connect_websocket(stream, f"127.0.0.1:{port}", resource, max_message=1 << 20)


async def send_and_sync(ws: ClientWebSocket, event: str) -> None:
    """Send EACH back-channel messages, then a ping: its pong means the relay has read them all."""
    for _ in range(EACH):
        await ws.send_message(event)
    await ws.send_message('{"event":"pusher:ping","data":{}}')
    while "pusher:pong" not in await ws.get_message():
        pass


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
async def test_a_group_that_does_not_read_holds_its_bounds_in_memory() -> None:
    """1,000 sockets send 10 events of 10 KB each to a 1.0 group that does not read: RSS stays near the bounds."""
    with trio.fail_after(120):
        async with background([sys.executable, "-c", RELAY]) as relay:
            port = int((await relay.expect("PORT")).split()[1])
            url = pipe_url("ws://x", app_id="1", key="app-key", secret="app-secret", now=time.time())
            pipe = await websocket(port, url.removeprefix("ws://x"))
            await pipe.get_message()  # connection_established; nothing is read after this
            await pipe.send_message('{"id":1,"method":"subscribe","params":{"events":["socket_message"]}}')
            sockets = [await websocket(port, "/app/app-key?protocol=7") for _ in range(SOCKETS)]
            for ws in sockets:
                await ws.get_message()
            baseline = memory(relay.process.pid)["VmRSS"]
            event = '{"event":"load","data":' + DATA + "}"
            async with trio.open_nursery() as nursery:
                for ws in sockets:
                    nursery.start_soon(send_and_sync, ws, event)
            grown = memory(relay.process.pid)["VmHWM"] - baseline
            for ws in [pipe, *sockets]:
                await trio.aclose_forcefully(ws.stream)
    # Buffered events count once, events in flight twice (the session's copy and the connection's queue).
    assert grown <= BUFFER_BYTES + 2 * WINDOW_BYTES + OVERHEAD, f"the relay grew by {grown / 2**20:.1f} MiB"
