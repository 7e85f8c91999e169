"""The quickstart in a real headless Chromium: page, relay, and each quickstart backend."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trio

from pipe_proto import App
from tests.interop.node import open_driver
from tests.processes import background
from tests.support import start_relay

pytestmark = [pytest.mark.interop, pytest.mark.browser]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
DEMO = App(id="1", key="demo-key", secret="demo-secret")


def backend_command(kind: str, port: int) -> tuple[list[str], dict[str, str]]:
    if kind == "python":
        return [sys.executable, str(QUICKSTART / "backend.py")], {"RELAY_URL": f"ws://127.0.0.1:{port}"}
    node = shutil.which("node")
    assert node is not None
    return [node, str(QUICKSTART / "backend.js")], {"RELAY_PORT": str(port)}


@pytest.mark.parametrize("kind", ["python", "node"])
async def test_quickstart_in_chromium(nursery: trio.Nursery, kind: str) -> None:
    """The page connects, the backend logs the socket, back_channel.trigger reaches it, acknowledge comes back."""
    server = await start_relay(nursery, [DEMO])
    argv, env = backend_command(kind, server.port)
    with trio.fail_after(60):
        async with background(argv, env, cwd=str(QUICKSTART)) as backend:
            await backend.expect("backend connected")
            async with open_driver("browser.js") as chromium:
                url = (QUICKSTART / "index.html").as_uri() + f"?host=127.0.0.1&port={server.port}&key=demo-key"
                await chromium.call("open", url=url, timeout=30)
                await chromium.call("wait_for", expression="document.getElementById('state').textContent === 'connected'")
                socket_id = await chromium.call("text", selector="#socket")
                await backend.expect(f"new socket: {socket_id}")
                sent = await chromium.call("eval", expression="pusher.back_channel.trigger('eventFromBrowser', {some: 'data'})")
                assert sent is True
                line = await backend.expect(f"eventFromBrowser from {socket_id}")
                assert "some" in line and "data" in line
                await chromium.call("wait_for", expression="document.getElementById('log').textContent.includes('acknowledge: Rodger')")
