"""The debug console in a real headless Chromium: sign in, watch a socket connect and an event published, filter, pause.

Run with ``UPDATE_SCREENSHOTS=1`` to write the page as shown to ``docs/console.png``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pusher
import pytest
import trio

from pipe_proto import App
from pipe_trio import connect
from tests.interop.node import open_driver
from tests.support import start_relay, url_of

pytestmark = [pytest.mark.interop, pytest.mark.browser]

SHOP = App(id="1", key="shop-key", secret="shop-secret", name="Shop")
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console.png"


def rows_with(text: str) -> str:
    """A page expression: whether a shown row of the feed contains ``text``."""
    return (
        "[...document.querySelectorAll('#events tr')].some("
        f"r => !r.hidden && r.textContent.includes({json.dumps(text)}))"
    )


async def test_the_console_shows_a_socket_connecting_and_an_event_published(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Signed in with the key and secret, the page shows connections, subscriptions, presence, a client event, a REST publish, live."""
    server = await start_relay(nursery, [SHOP], console=True)
    rest = pusher.Pusher(app_id="1", key="shop-key", secret="shop-secret", host="127.0.0.1", port=server.port, ssl=False)
    with trio.fail_after(90):
        async with open_driver("browser.js") as chromium:
            await chromium.call("open", url=f"http://127.0.0.1:{server.port}/console",
                                viewport={"width": 1280, "height": 720}, timeout=30)
            assert "secret" not in await chromium.call("eval", expression="location.href")
            await chromium.call("eval", expression=(
                "document.getElementById('key').value = 'shop-key';"
                "document.getElementById('secret').value = 'shop-secret';"
                "document.getElementById('open').click(); true"
            ))
            await chromium.call("wait_for", expression="document.getElementById('state').textContent === 'live'")
            assert "app 1 · Shop" in await chromium.call("text", selector="#app")
            assert "shop-secret" not in await chromium.call("eval", expression="location.href + document.cookie")

            async with connect(url_of(server), "shop-key", secret="shop-secret") as alice, connect(
                url_of(server), "shop-key", secret="shop-secret"
            ) as bob:
                await chromium.call("wait_for", expression=rows_with(alice.socket_id))
                await alice.subscribe("presence-lobby", channel_data={"user_id": "alice", "user_info": {"name": "Alice"}})
                await bob.subscribe("presence-lobby", channel_data={"user_id": "bob"})
                await alice.subscribe("news")
                await bob.trigger("presence-lobby", "client-typing", {"who": "bob"})
                await trio.to_thread.run_sync(lambda: rest.trigger("news", "headline", {"title": "Relay ships"}))
                await chromium.call("wait_for", expression=rows_with("headline"))
                await chromium.call("wait_for", expression=rows_with("client-typing"))
                await chromium.call("wait_for", expression=rows_with("member added"))
                await chromium.call("wait_for", expression="document.getElementById('connections').textContent === '2'")
                feed = await chromium.call("text", selector="#events")
                assert "connection" in feed and "subscribed" in feed and "api message" in feed
                assert '{"title":"Relay ships"}' in feed or '{"title": "Relay ships"}' in feed

                shot = tmp_path / "console.png"
                await chromium.call("screenshot", path=str(shot))
                assert shot.read_bytes().startswith(b"\x89PNG")
                if os.environ.get("UPDATE_SCREENSHOTS"):
                    shutil.copyfile(shot, DOCS_SCREENSHOT)

                # Filter by channel: rows of other channels are hidden.
                await chromium.call("eval", expression=(
                    "const f = document.getElementById('filter-channel'); f.value = 'news';"
                    "f.dispatchEvent(new Event('input')); true"
                ))
                assert await chromium.call("eval", expression=rows_with("headline"))
                assert not await chromium.call("eval", expression=rows_with("client-typing"))

                # Paused, new events wait; resumed, they show.
                await chromium.call("eval", expression="document.getElementById('pause').click(); true")
                await trio.to_thread.run_sync(lambda: rest.trigger("news", "later", {}))
                await chromium.call("wait_for", expression="document.getElementById('state').textContent.includes('1 waiting')")
                assert not await chromium.call("eval", expression=rows_with("later"))
                await chromium.call("eval", expression="document.getElementById('pause').click(); true")
                assert await chromium.call("eval", expression=rows_with("later"))
        await server.shutdown(5)
