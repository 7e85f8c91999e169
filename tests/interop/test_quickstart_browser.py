"""The quickstart in a real headless Chromium: page, relay, and each quickstart backend."""

from __future__ import annotations

import shutil
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from pipe_proto import App, Relay
from pipe_trio import RelayServer, serve
from tests.interop.node import open_driver
from tests.processes import background
from tests.support import start_relay

pytestmark = [pytest.mark.interop, pytest.mark.browser, pytest.mark.both_transports]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
DEMO = App(id="1", key="demo-key", secret="demo-secret")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
                await chromium.call(
                    "wait_for", expression="document.getElementById('state').textContent === 'connected' && helper === 'loaded'"
                )
                socket_id = await chromium.call("text", selector="#socket")
                await backend.expect(f"new socket: {socket_id}")
                sent = await chromium.call("eval", expression="pusher.back_channel.trigger('eventFromBrowser', {some: 'data'})")
                assert sent is True
                line = await backend.expect(f"eventFromBrowser from {socket_id}")
                assert "some" in line and "data" in line
                await chromium.call("wait_for", expression="document.getElementById('log').textContent.includes('acknowledge: Rodger')")


def page_url(port: int) -> str:
    """The quickstart page for the relay on ``port``."""
    return (QUICKSTART / "index.html").as_uri() + f"?host=127.0.0.1&port={port}&key=demo-key"


async def test_quickstart_page_says_when_pusher_js_cannot_be_loaded() -> None:
    """Without pusher-js (CDN unreachable), the page says so instead of staying at "starting"."""
    with trio.fail_after(60):
        async with open_driver("browser.js") as chromium:
            await chromium.call("open", url=page_url(free_port()), block_pusher=True, timeout=30)
            await chromium.call("wait_for", expression="document.getElementById('state').textContent !== 'starting'")
            assert await chromium.call("text", selector="#state") == "pusher-js not loaded"
            assert "could not be loaded" in await chromium.call("text", selector="#problem")


async def test_quickstart_page_opened_before_the_relay_recovers_when_it_comes_up(nursery: trio.Nursery) -> None:
    """A page opened while the relay is down says so, then connects and works once the relay and backend are up."""
    port = free_port()
    with trio.fail_after(90):
        async with open_driver("browser.js") as chromium:
            await chromium.call("open", url=page_url(port), timeout=30)
            await chromium.call(
                "wait_for", expression="document.getElementById('problem').textContent.includes('cannot be reached')",
                ms=30_000, timeout=35,
            )
            relay = Relay([DEMO], id_base=1000)
            server: RelayServer = await nursery.start(partial(serve, relay, "127.0.0.1", port))
            argv, env = backend_command("python", server.port)
            async with background(argv, env, cwd=str(QUICKSTART)) as backend:
                await backend.expect("backend connected")
                await chromium.call(
                    "wait_for",
                    expression="document.getElementById('state').textContent === 'connected' && helper === 'loaded'",
                    ms=40_000, timeout=45,
                )
                assert await chromium.call("text", selector="#problem") == ""
                await chromium.call("eval", expression="document.getElementById('send').click()")
                await backend.expect("eventFromBrowser from")
                await chromium.call(
                    "wait_for", expression="document.getElementById('log').textContent.includes('acknowledge: Rodger')"
                )
