"""The core on asyncio: examples/asyncio_relay with the official pusher-js, the Python SDK and an asyncio pipe client."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pusher
import pytest
import trio

from tests.processes import background
from tests.support import APP_ID, APP_KEY, APP_SECRET

from .node import open_driver

pytestmark = pytest.mark.interop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "asyncio_relay"
APP = f"{APP_ID}:{APP_KEY}:{APP_SECRET}"


async def test_pusher_js_rest_and_back_channel_through_the_asyncio_relay() -> None:
    """pusher-js subscribes and gets a REST-published event; its back-channel message reaches the asyncio backend, whose answer comes back."""
    with trio.fail_after(60):
        async with background([sys.executable, str(EXAMPLE / "relay.py"), "--port", "0", "--app", APP]) as relay:
            found = re.search(r"ws://127\.0\.0\.1:(\d+)", await relay.expect("listening on"))
            assert found is not None
            port = int(found.group(1))
            async with background([sys.executable, str(EXAMPLE / "backend.py"), f"ws://127.0.0.1:{port}", "--app", APP]) as backend:
                await backend.expect("pipe connected as")
                async with open_driver() as driver:
                    socket_id = await driver.connected("a", SimpleNamespace(port=port))  # type: ignore[arg-type]
                    await backend.expect(f"new socket: {socket_id}")
                    await driver.subscribed("a", "news", "tick")
                    sdk = pusher.Pusher(app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=port, ssl=False)
                    await trio.to_thread.run_sync(lambda: sdk.trigger("news", "tick", {"n": 1}))
                    tick = await driver.expect({"type": "event", "id": "a", "channel": "news", "event": "tick"})
                    assert tick["data"] == {"n": 1}
                    await driver.call("bind", "a", event="acknowledge")
                    await driver.call("send_event", "a", event="eventFromBrowser", data={"some": "data"})
                    line = await backend.expect(f"{socket_id} sent eventFromBrowser")
                    assert json.loads(line.split("eventFromBrowser ", 1)[1]) == {"some": "data"}
                    answer = await driver.expect({"type": "event", "id": "a", "event": "acknowledge"})
                    assert answer["data"] == {"message": "Rodger"}
                    info = await trio.to_thread.run_sync(lambda: sdk.channel_info("news", ["subscription_count"]))
                    assert info["occupied"] is True
