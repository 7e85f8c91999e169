"""The ``pipe-relay`` command line: app loading, configuration errors, and a real process."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio

from pipe_proto import App, ConfigError, Features, Limits, WebhookTarget
from pipe_trio.cli import DEMO_APP, _is_loopback, build_parser, load_apps, main
from tests.processes import background
from tests.support import read_until

PIPE_RELAY = Path(sys.executable).with_name("pipe-relay")

CONFIG = """
[defaults.limits]
max_presence_members = 200

[[apps]]
id = "7"
key = "seven-key"
secret = "seven-secret"
name = "Seven"

[apps.limits]
max_connections = 5
activity_timeout = 60

[apps.features]
client_events = false
subscription_count = true

[[apps.webhooks]]
url = "http://localhost:8000/pusher/webhooks"
kinds = ["channel_occupied", "channel_vacated"]

[[apps]]
id = "8"
key = "eight-key"
secret = "eight-secret"
enabled = false

[apps.limits]
max_presence_members = 50
"""

#: A valid app table, for configuration files with one thing wrong added.
ONE_APP = "[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n"


def serve_args(*argv: str) -> argparse.Namespace:
    """``pipe-relay serve`` parsed with extra arguments."""
    return build_parser().parse_args(["serve", *argv])


def test_app_options() -> None:
    """Each --app ID:KEY:SECRET becomes an app with the default limits and features."""
    apps, demo = load_apps(serve_args("--app", "1:k1:s1", "--app", "2:k2:s2"), environ={})
    assert not demo
    assert apps == [App(id="1", key="k1", secret="s1"), App(id="2", key="k2", secret="s2")]
    assert apps[0].limits == Limits()
    assert apps[0].features == Features()


def test_config_file(tmp_path: Path) -> None:
    """A TOML file gives apps with their limits, features, webhooks and shared defaults, after any --app."""
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG)
    args = serve_args("--app", "1:k1:s1", "--config", str(config))
    apps, demo = load_apps(args, environ={})
    assert not demo
    assert [app.id for app in apps] == ["1", "7", "8"]
    seven, eight = apps[1], apps[2]
    assert seven.name == "Seven"
    assert seven.limits == Limits(max_connections=5, activity_timeout=60, max_presence_members=200)
    assert seven.features == Features(client_events=False, subscription_count=True)
    hook = WebhookTarget(url="http://localhost:8000/pusher/webhooks", kinds={"channel_occupied", "channel_vacated"})
    assert seven.webhooks == (hook,)
    assert not eight.enabled
    assert eight.limits.max_presence_members == 50  # the app's own setting wins over the defaults
    assert apps[0].limits.max_presence_members == 100  # --app apps do not take the file's defaults


def test_environment_app() -> None:
    """Without --app or --config, PIPE_RELAY_APP_* define the app (id defaulting to 1)."""
    environ = {"PIPE_RELAY_APP_KEY": "env-key", "PIPE_RELAY_APP_SECRET": "env-secret"}
    apps, demo = load_apps(serve_args(), environ=environ)
    assert (apps, demo) == ([App(id="1", key="env-key", secret="env-secret")], False)
    environ["PIPE_RELAY_APP_ID"] = "99"
    apps, _ = load_apps(serve_args(), environ=environ)
    assert apps[0].id == "99"
    apps, _ = load_apps(serve_args("--app", "99:k:s", "--app", "2:k2:s2"), environ=environ)
    assert [(app.id, app.key) for app in apps] == [("99", "k"), ("2", "k2")]  # --app wins over the environment, by id


def test_demo_default() -> None:
    """With no apps configured anywhere, the demo app is served and flagged as such."""
    assert load_apps(serve_args(), environ={}) == ([DEMO_APP], True)
    assert load_apps(serve_args(), environ={"PIPE_RELAY_APP_KEY": ""}) == ([DEMO_APP], True)


@pytest.mark.parametrize(
    ("argv", "config", "environ", "message"),
    [
        (["--app", "1:key"], None, {}, "--app wants ID:KEY:SECRET"),
        (["--app", "x:key:secret"], None, {}, "app id must be digits"),
        (["--app", "1:bad key:secret"], None, {}, "app key must be"),
        (["--app", "1:a:b", "--app", "1:c:d"], None, {}, "two apps have the id 1"),
        (["--app", "1:a:b", "--app", "2:a:d"], None, {}, "two apps have the key a"),
        ([], "[[apps]]\nid = 1\nkey = 'k'\n", {}, "app secret is missing (app 1)"),
        (["--app", "1:k:"], None, {}, "app secret is missing"),
        ([], "[[apps", {}, "cannot read"),
        ([], ONE_APP + "colour = 'red'\n", {}, "unknown setting(s) in apps[0]: colour"),
        ([], ONE_APP + "[apps.limits]\nmax_connections = -1\n", {}, "max_connections must be a positive number"),
        ([], ONE_APP + "[apps.features]\nteleport = true\n", {}, "teleport"),
        ([], ONE_APP + "[[apps.webhooks]]\nurl = 'ftp://x'\n", {}, "apps[0].webhooks"),
        ([], ONE_APP + "[[apps.webhooks]]\nurl = 'http://x'\nkinds = ['bogus']\n", {}, "unknown webhook kinds: bogus"),
        ([], "apps = 3\n", {}, "apps must be an array"),
        ([], None, {"PIPE_RELAY_APP_KEY": "env-key"}, "PIPE_RELAY_APP_KEY set without PIPE_RELAY_APP_SECRET"),
        ([], None, {"PIPE_RELAY_APP_ID": "5"}, "PIPE_RELAY_APP_ID set without PIPE_RELAY_APP_KEY and PIPE_RELAY_APP_SECRET"),
        ([], None, {"PIPE_RELAY_APP_SECRET": "s"}, "PIPE_RELAY_APP_SECRET set without PIPE_RELAY_APP_KEY"),
        (["--tls-cert", "cert.pem"], None, {}, "--tls-cert and --tls-key go together"),
        (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], None, {},
         "cannot read --tls-cert /nonexistent/cert.pem: No such file or directory"),
        (["--tls-cert", __file__, "--tls-key", "/nonexistent/key.pem"], None, {},
         "cannot read --tls-key /nonexistent/key.pem"),
        (["--tls-cert", __file__, "--tls-key", __file__], None, {}, f"cannot use --tls-cert {__file__}"),
        (["--app", "1:k:s"], None, {"PIPE_RELAY_TRANSPORT": "quick"}, "PIPE_RELAY_TRANSPORT must be auto or portable"),
        (["--host", "0.0.0.0"], None, {}, "pass --demo to serve it anyway"),
        (["--host", "example.org"], None, {}, "not on example.org"),
    ],
)
def test_bad_configuration_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    config: str | None,
    environ: dict[str, str],
    message: str,
) -> None:
    """Invalid apps, configuration files or options end ``main`` with status 2 and a one-line message."""
    for name in ("PIPE_RELAY_APP_ID", "PIPE_RELAY_APP_KEY", "PIPE_RELAY_APP_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if config is not None:
        path = tmp_path / "relay.toml"
        path.write_text(config)
        argv = [*argv, "--config", str(path)]
    assert main(["serve", "--port", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipe-relay: ")
    assert message in err
    assert err.count("\n") == 1  # one line


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --config file that does not exist is a configuration error naming the file."""
    missing = tmp_path / "nope.toml"
    assert main(["serve", "--config", str(missing)]) == 2
    assert f"cannot read {missing}" in capsys.readouterr().err


def test_load_apps_raises_config_error() -> None:
    """load_apps itself reports bad input as ConfigError (main turns it into status 2)."""
    with pytest.raises(ConfigError, match="ID:KEY:SECRET"):
        load_apps(serve_args("--app", "nonsense"), environ={})


def test_bad_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An option of the wrong type is refused by argparse with status 2 and the usage."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "not-a-number"])
    assert exited.value.code == 2
    assert "usage: pipe-relay" in capsys.readouterr().err


# ------------------------------------------------------------ real process


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get_status(port: int) -> dict[str, object]:
    """GET / on 127.0.0.1:port, decoded."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/", headers=[("host", "127.0.0.1")])
        await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return dict(json.loads(body))


async def run_relay(*argv: str) -> tuple[bytes, trio.Process]:
    """Start ``pipe-relay serve`` with ``argv``; returns its output up to the banner's end, and the process."""
    assert PIPE_RELAY.exists(), PIPE_RELAY
    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    if "PYTHONPATH" in os.environ:  # the compiled core's pass of tests/run
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    process = await trio.lowlevel.open_process(
        [str(PIPE_RELAY), "serve", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    )
    assert process.stdout is not None
    return await read_until(process.stdout, b"Stop with Ctrl-C."), process


async def stop(process: trio.Process) -> int:
    """SIGTERM the process and wait for it to exit; returns its status."""
    process.send_signal(signal.SIGTERM)
    return await process.wait()


async def test_serve_demo_process() -> None:
    """``pipe-relay serve --port P`` prints the demo banner, answers GET / and exits 0 on SIGTERM."""
    port = free_port()
    with trio.fail_after(30):
        banner, process = await run_relay("--port", str(port))
        try:
            text = banner.decode()
            assert f"serving the demo app on ws://127.0.0.1:{port}" in text
            assert "key:    demo-key" in text
            assert "secret: demo-secret" in text
            assert f'wsPort: {port}' in text
            status = await get_status(port)
            assert status["status"] == "ok"
            assert status["sockets"] == 0
        finally:
            with trio.fail_after(5):
                code = await stop(process)
        assert code == 0


async def test_serve_on_any_free_port() -> None:
    """With --port 0 the banner names the port actually bound, and that port answers."""
    with trio.fail_after(30):
        banner, process = await run_relay("--port", "0")
        try:
            line = next(line for line in banner.decode().splitlines() if "serving the demo app" in line)
            port = int(line.rsplit(":", 1)[1])
            assert port != 0
            assert (await get_status(port))["name"] == "pipe-relay"
        finally:
            with trio.fail_after(5):
                code = await stop(process)
        assert code == 0


def test_max_connections_per_ip_option(capsys: pytest.CaptureFixture[str]) -> None:
    """--max-connections-per-ip is off by default and takes a positive number."""
    assert serve_args().max_connections_per_ip is None
    assert serve_args("--max-connections-per-ip", "3").max_connections_per_ip == 3
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--max-connections-per-ip", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


async def test_serve_enforces_max_connections_per_ip() -> None:
    """A relay started with --max-connections-per-ip 1 answers a second connection from the address with 429."""
    port = free_port()
    with trio.fail_after(30):
        _, process = await run_relay("--port", str(port), "--max-connections-per-ip", "1")
        try:
            held = await trio.open_tcp_stream("127.0.0.1", port)
            async with held:
                await held.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert (await held.receive_some(65536)).startswith(b"HTTP/1.1 200")  # kept alive, still counted
                second = await trio.open_tcp_stream("127.0.0.1", port)
                async with second:
                    assert (await read_until(second, b"\r\n\r\n")).startswith(b"HTTP/1.1 429")
        finally:
            with trio.fail_after(5):
                code = await stop(process)
        assert code == 0


def test_a_busy_port_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A port another process listens on ends ``main`` with status 1 and one line naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--app", "1:k:s"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"pipe-relay: port {port} is in use on 127.0.0.1 (another pipe-relay running?); "
        "stop it or choose another --port\n"
    )


def test_an_address_not_of_this_machine_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A --host that is no address of this machine ends ``main`` with status 1 and one line."""
    assert main(["serve", "--host", "192.0.2.1", "--port", "0", "--app", "1:k:s"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pipe-relay: cannot listen on 192.0.2.1") and err.count("\n") == 1


def test_a_port_out_of_range_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--port 70000 is refused by the parser with status 2."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "70000"])
    assert exited.value.code == 2
    assert "a port is 0 to 65535" in capsys.readouterr().err


def test_the_demo_app_needs_demo_off_loopback_only() -> None:
    """Loopback hosts serve the demo app without --demo; every other address, or a name, needs it."""
    assert all(_is_loopback(host) for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(host) for host in ("0.0.0.0", "::", "", "192.168.1.2", "example.org"))


async def test_serve_demo_on_every_address_with_demo_warns() -> None:
    """``--host 0.0.0.0 --demo`` serves the demo app and warns that its secret is public."""
    port = free_port()
    argv = [str(PIPE_RELAY), "serve", "--host", "0.0.0.0", "--port", str(port), "--demo"]
    with trio.fail_after(30):
        async with background(argv, env={"PYTHONUNBUFFERED": "1"}) as output:
            await output.expect("THE DEMO APP IS SERVED ON 0.0.0.0")
            assert (await get_status(port))["status"] == "ok"


def test_tune_collector_freezes_what_exists_and_collects_the_young_less_often() -> None:
    """Run in a process of its own: it changes the collector for the rest of the process's life."""
    code = (
        "import gc; from pipe_trio.cli import GC_YOUNG_THRESHOLD, tune_collector\n"
        "before = gc.get_threshold(); tune_collector()\n"
        "assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:]), gc.get_threshold()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == "ok", done.stderr
