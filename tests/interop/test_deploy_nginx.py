"""docs/deploy.md's nginx configuration, as documented, with Debian's nginx in front of a relay: pusher-js over TLS through it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pusher
import pytest
import trio
import trustme
from pusher.requests import RequestsBackend

from pipe_proto.pipe import SocketOpened
from pipe_trio import open_pipe
from tests.interop.node import open_driver
from tests.nginx_front import documented_block, nginx
from tests.redis_server import free_port
from tests.support import APP_ID, APP_KEY, APP_SECRET, start_relay, url_of

pytestmark = [pytest.mark.interop]

#: The address nginx connects to the relay from (proxy_bind), the relay's trusted proxy: the
#: client connects from 127.0.0.1, so the relay can tell the two apart.
NGINX_SIDE = "127.0.0.2"


class TrustingBackend(RequestsBackend):
    """The Python SDK's HTTP backend, trusting the test's CA (the SDK pins a CA bundle of its own)."""

    def __init__(self, ca: Path, client: object, **options: object) -> None:
        super().__init__(client, **options)
        self.options["verify"] = str(ca)


def deploy_block(prefix: Path, ca: trustme.CA, relay_port: int, port: int) -> str:
    """docs/deploy.md's block with the test's ports, certificate and the proxy's source address."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(prefix / "fullchain.pem"))
    issued.private_key_pem.write_to_path(str(prefix / "privkey.pem"))
    block = documented_block("deploy.md")
    replacements = [
        ("server 127.0.0.1:6001;", f"server 127.0.0.1:{relay_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/letsencrypt/live/realtime.example.com/fullchain.pem", str(prefix / "fullchain.pem")),
        ("/etc/letsencrypt/live/realtime.example.com/privkey.pem", str(prefix / "privkey.pem")),
        ("proxy_pass http://pipe_relay;", f"proxy_pass http://pipe_relay;\n        proxy_bind {NGINX_SIDE};"),
    ]
    for old, new in replacements:
        assert block.count(old) == 1, f"docs/deploy.md's nginx block has {old!r} once"
        block = block.replace(old, new)
    return block


async def test_pusher_js_and_rest_through_the_documented_nginx(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through nginx: pusher-js connects over wss, subscribes, gets a REST event; the relay sees the client's address."""
    server = await start_relay(nursery, trusted_proxies=[NGINX_SIDE])
    port = free_port()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(tmp_path / "ca.pem"))  # pusher-js under Node
    opened: list[SocketOpened] = []
    seen = trio.Event()

    def on_opened(notice: SocketOpened) -> None:
        opened.append(notice)
        seen.set()

    with trio.fail_after(60):
        async with nginx(lambda prefix: deploy_block(prefix, ca, server.port, port)), open_pipe(
            url_of(server), app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, events=["socket_existence"]
        ) as pipe, open_driver("driver.js") as driver:
            pipe.on("socket_opened", on_opened)
            through = SimpleNamespace(port=port)
            socket_id = await driver.connected("a", through, forceTLS=True)  # type: ignore[arg-type]
            await driver.subscribed("a", "news", "update")
            sdk = pusher.Pusher(
                app_id=APP_ID, key=APP_KEY, secret=APP_SECRET, host="127.0.0.1", port=port, ssl=True,
                backend=partial(TrustingBackend, tmp_path / "ca.pem"),
            )
            answer = await trio.to_thread.run_sync(lambda: sdk.trigger(["news"], "update", {"via": "nginx"}))
            assert answer == {}  # the signature verified: path and query reached the relay as sent
            event = await driver.expect({"type": "event", "id": "a", "event": "update"})
            assert event["data"] == {"via": "nginx"}
            await seen.wait()
            # The relay saw nginx connect from NGINX_SIDE, and believed its X-Forwarded-For.
            (notice,) = [n for n in opened if n.socket_id == socket_id]
            assert notice.remote_addr == "127.0.0.1"
            peers = {s.details.remote_addr for s in server.relay._core.sockets.values() if s.details}
            assert peers == {"127.0.0.1"}
            info = await trio.to_thread.run_sync(lambda: sdk.channel_info("news", ["subscription_count"]))
            assert info["occupied"] is True
    await server.shutdown(5)
