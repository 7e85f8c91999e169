"""The Python quickstart backend as a process: Ctrl-C stops it cleanly, connected or not."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest
import trio

from pipe_proto import App
from tests.processes import background
from tests.support import start_relay

pytestmark = pytest.mark.both_transports

BACKEND = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "backend.py"
DEMO = App(id="1", key="demo-key", secret="demo-secret")


async def test_ctrl_c_leaves_the_pipe_and_exits_cleanly(nursery: trio.Nursery) -> None:
    """SIGINT on a connected backend closes its pipe, prints no traceback and exits 0."""
    server = await start_relay(nursery, [DEMO])
    with trio.fail_after(30):
        async with background([sys.executable, str(BACKEND)], {"RELAY_URL": f"ws://127.0.0.1:{server.port}"}) as output:
            await output.expect("backend connected")
            assert server.relay.stats()["pipes"] == 1
            output.process.send_signal(signal.SIGINT)
            await output.expect("backend stopped")  # its pipe's block ended normally
            assert await output.process.wait() == 0
    assert not [line for line in output.lines if "Traceback" in line or "Error" in line]


async def test_ctrl_c_before_the_relay_is_up_exits_cleanly() -> None:
    """SIGINT while the backend is still trying to reach the relay ends it at once, without a traceback."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there
    with trio.fail_after(30):
        argv = [sys.executable, "-u", str(BACKEND)]
        async with background(argv, {"RELAY_URL": f"ws://127.0.0.1:{port}"}) as output:
            await output.expect("backend connecting")  # Ctrl-C is handled from here on
            output.process.send_signal(signal.SIGINT)
            await output.expect("backend stopped")
            assert await output.process.wait() == 0
    assert not [line for line in output.lines if "Traceback" in line]
