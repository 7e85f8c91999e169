"""A real ``pipe-relay serve`` process: SIGHUP reloads apps and the TLS certificate; JSON logs; no log line per message."""

from __future__ import annotations

import json
import logging
import signal
import ssl
import sys
from pathlib import Path

import pytest
import trio
import trustme

from pipe_proto import App, RemoteProtocolError
from pipe_proto.pusher.events import Pong
from pipe_trio import connect
from tests.processes import background
from tests.redis_server import free_port
from tests.support import start_relay, url_of

PIPE_RELAY = str(Path(sys.executable).with_name("pipe-relay"))


def app_table(app_id: str, key: str, secret: str, extra: str = "") -> str:
    return f"[[apps]]\nid = '{app_id}'\nkey = '{key}'\nsecret = '{secret}'\n{extra}"


async def test_sighup_adds_removes_and_changes_apps_without_dropping_others(tmp_path: Path) -> None:
    """After SIGHUP a removed app's socket is closed with 4200, a kept app's stays, an added app connects."""
    config = tmp_path / "relay.toml"
    config.write_text(app_table("1", "gone-key", "s1") + app_table("2", "kept-key", "s2"))
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    with trio.fail_after(40):
        async with background([PIPE_RELAY, "serve", "--config", str(config), "--port", str(port)]) as relay:
            await relay.expect("listening")
            async with connect(url, "gone-key") as gone, connect(url, "kept-key", secret="s2") as kept:
                await kept.subscribe("private-room")
                config.write_text(
                    app_table("2", "kept-key", "s2", "[apps.limits]\nmax_channels_per_socket = 1\n")
                    + app_table("3", "new-key", "s3")
                )
                relay.process.send_signal(signal.SIGHUP)
                await relay.expect("reloaded")
                closed = []
                async for event in gone:
                    closed.append(event)
                assert any(getattr(e, "code", None) == 4200 for e in closed), closed
                # The kept socket is still connected and under the new limit.
                failed = None
                try:
                    await kept.subscribe("second")
                except Exception as exc:  # the SubscriptionFailed of the new limit
                    failed = exc
                assert failed is not None and "413" in str(failed)
                async with connect(url, "new-key") as added:
                    assert added.socket_id
                with pytest.raises(RemoteProtocolError) as refused:
                    async with connect(url, "gone-key"):
                        pass
                assert refused.value.code == 4001
            line = await relay.expect("reloaded")
            assert "added ['3'], removed ['1'], changed ['2']" in line


async def test_sighup_with_a_broken_file_changes_nothing(tmp_path: Path) -> None:
    """An invalid file on SIGHUP is logged and refused; every app and connection stays."""
    config = tmp_path / "relay.toml"
    config.write_text(app_table("1", "k1", "s1"))
    port = free_port()
    with trio.fail_after(30):
        async with background([PIPE_RELAY, "serve", "--config", str(config), "--port", str(port)]) as relay:
            await relay.expect("listening")
            async with connect(f"ws://127.0.0.1:{port}", "k1") as sock:
                config.write_text("[[apps]]\nid = 'x'\n")
                relay.process.send_signal(signal.SIGHUP)
                line = await relay.expect("reload refused")
                assert "app id must be digits" in line
                await sock.ping()
                await sock.next_event(Pong)


def write_certificate(ca: trustme.CA, cert: Path, key: Path) -> None:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    issued.private_key_pem.write_to_path(str(key))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        with cert.open("ab") as file:
            file.write(extra.bytes())


async def handshake(port: int, ca: trustme.CA) -> None:
    """A TLS handshake with the relay, trusting only ``ca`` (raises if the certificate is not of it)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        await stream.do_handshake()
    finally:
        await trio.aclose_forcefully(stream)


async def test_sighup_re_reads_the_tls_certificate(tmp_path: Path) -> None:
    """A certificate renewed on disk is served to new connections after SIGHUP; the open socket stays."""
    first, second = trustme.CA(), trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_certificate(first, cert, key)
    port = free_port()
    argv = [PIPE_RELAY, "serve", "--app", "1:k:s", "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)]
    with trio.fail_after(30):
        async with background(argv) as relay:
            await relay.expect("listening")
            await handshake(port, first)
            context = ssl.create_default_context()
            first.configure_trust(context)
            async with connect(f"wss://127.0.0.1:{port}", "k", ssl_context=context) as sock:
                write_certificate(second, cert, key)
                relay.process.send_signal(signal.SIGHUP)
                await relay.expect("TLS certificate re-read")
                await handshake(port, second)
                with pytest.raises(trio.BrokenResourceError) as refused:
                    await handshake(port, first)
                assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
                await sock.ping()
                await sock.next_event(Pong)


async def test_json_logs_are_one_object_per_line_with_event_app_and_socket(tmp_path: Path) -> None:
    """--log-format json: each line is a JSON object; a socket's connection names its event, app and socket."""
    port = free_port()
    argv = [PIPE_RELAY, "serve", "--app", "7:k7:s7", "--port", str(port), "--log-format", "json"]
    with trio.fail_after(30):
        async with background(argv) as relay:
            await relay.expect('"listening"')
            async with connect(f"ws://127.0.0.1:{port}", "k7") as sock:
                socket_id = sock.socket_id
                line = await relay.expect("socket_connected")
            await relay.expect("socket_disconnected")
            entries = [json.loads(line) for line in relay.lines if line.strip()]
    connected = json.loads(line)
    assert connected["event"] == "socket_connected"
    assert (connected["app"], connected["socket"], connected["level"]) == ("7", socket_id, "info")
    assert connected["fields"]["remote_addr"] == "127.0.0.1"
    assert connected["time"].endswith("Z") and "T" in connected["time"]
    assert all({"time", "level", "event", "message"} <= set(entry) for entry in entries)


async def test_no_log_line_per_message_at_info(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    """At info, 300 messages and a REST publish add no log line; only the connection's open and close do."""
    server = await start_relay(nursery, [App(id="1", key="k", secret="s")])
    caplog.set_level(logging.INFO)
    with trio.fail_after(20):
        async with connect(url_of(server), "k") as sock:
            await sock.subscribe("news")
            before = len(caplog.records)
            for n in range(300):
                await sock.send_event("to-backend", {"n": n})
                await sock.ping()
            for _ in range(300):
                await sock.next_event(Pong)
            during = len(caplog.records) - before
        await server.shutdown(5)  # every connection closed before the test ends
    assert during == 0, [r.getMessage() for r in caplog.records[before:]]
