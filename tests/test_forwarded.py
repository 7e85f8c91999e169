"""The client's address behind trusted proxies: X-Forwarded-For read from the right, believed only from them."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from pipe_proto.forwarded import TrustedProxies
from pipe_trio import RelayServer
from tests.support import APP_KEY, start_relay

PROXIES = TrustedProxies(["10.0.0.0/8", "127.0.0.1", "::1"])


@pytest.mark.parametrize(
    ("peer", "headers", "client"),
    [
        ("10.1.2.3", ["203.0.113.7"], "203.0.113.7"),  # one proxy
        ("10.1.2.3", ["198.51.100.1, 203.0.113.7, 10.9.9.9"], "203.0.113.7"),  # two proxies; the client's own claim skipped
        ("10.1.2.3", ["198.51.100.1", "203.0.113.7"], "203.0.113.7"),  # several headers, in order
        ("192.0.2.5", ["203.0.113.7"], "192.0.2.5"),  # not a trusted proxy: the header is not believed
        ("10.1.2.3", [], "10.1.2.3"),  # a proxy that forwards nothing
        ("10.1.2.3", ["garbage, 203.0.113.7"], "203.0.113.7"),
        ("10.1.2.3", ["203.0.113.7, garbage"], "10.1.2.3"),  # unreadable next to the proxy: stop there
        ("10.1.2.3", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),  # only proxies: the leftmost
        ("10.1.2.3", ["[2001:db8::1]:4711"], "2001:db8::1"),
        ("10.1.2.3", ["203.0.113.7:5555"], "203.0.113.7"),
        ("::ffff:10.1.2.3", ["203.0.113.7"], "203.0.113.7"),  # an IPv4 proxy seen on a dual-stack socket
        (None, ["203.0.113.7"], None),
    ],
)
def test_the_client_is_the_rightmost_address_not_of_a_trusted_proxy(
    peer: str | None, headers: list[str], client: str | None
) -> None:
    """Walk X-Forwarded-For from the right past trusted proxies."""
    assert PROXIES.client(peer, headers) == client


def test_no_trusted_proxies_believes_nothing() -> None:
    """Without trusted proxies the peer is the client whatever the header says."""
    assert TrustedProxies([]).client("127.0.0.1", ["203.0.113.7"]) == "127.0.0.1"
    assert not TrustedProxies([])
    with pytest.raises(ValueError):
        TrustedProxies(["nginx"])


async def open_socket(nursery: trio.Nursery, server: RelayServer, forwarded: str | None) -> trio_websocket.WebSocketConnection:
    headers = [("X-Forwarded-For", forwarded)] if forwarded else []
    return await trio_websocket.connect_websocket_url(
        nursery, f"ws://127.0.0.1:{server.port}/app/{APP_KEY}?protocol=7", extra_headers=headers
    )


def addresses(server: RelayServer) -> list[str | None]:
    return sorted(str(s.details.remote_addr) for s in server.relay._core.sockets.values() if s.details is not None)


async def test_sockets_through_a_trusted_proxy_have_the_forwarded_address_and_its_limit(nursery: trio.Nursery) -> None:
    """From a trusted proxy, sockets get the forwarded address, and the per-address limit counts it, not the proxy."""
    server = await start_relay(nursery, trusted_proxies=["127.0.0.1"], max_connections_per_ip=1)
    with trio.fail_after(20):
        first = await open_socket(nursery, server, "203.0.113.7")
        second = await open_socket(nursery, server, "203.0.113.8")
        await first.get_message()
        await second.get_message()
        assert addresses(server) == ["203.0.113.7", "203.0.113.8"]
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(
                f"GET /app/{APP_KEY}?protocol=7 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                "sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "x-forwarded-for: 203.0.113.7\r\n\r\n".encode()
            )
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 429 ")
        await first.aclose()
        await second.aclose()
        await server.shutdown(5)


async def test_the_header_of_an_untrusted_peer_is_ignored(nursery: trio.Nursery) -> None:
    """A client that writes X-Forwarded-For itself, not through a trusted proxy, keeps its own address."""
    server = await start_relay(nursery, trusted_proxies=["10.0.0.0/8"])
    with trio.fail_after(20):
        sock = await open_socket(nursery, server, "203.0.113.7")
        await sock.get_message()
        assert addresses(server) == ["127.0.0.1"]
        await sock.aclose()
        await server.shutdown(5)
