"""``serve``'s settings from the command line, the environment and the file; check-config and new-app."""

from __future__ import annotations

import io
import json
import re
import tomllib
from pathlib import Path

import pytest

from pipe_proto import App, ConfigError, Limits, apps_from_config
from pipe_trio.cli import build_parser, check_config, load_apps, main, new_app
from pipe_trio.settings import OPTIONS, apps_from_environment, environment_names, merge_apps, resolve

DOCS = Path(__file__).resolve().parents[1] / "docs" / "relay.md"


def parsed(*argv: str) -> object:
    return build_parser().parse_args(["serve", *argv])


def settle(argv: list[str], environ: dict[str, str], config: dict[str, object] | None = None) -> tuple[object, dict[str, str]]:
    args = build_parser().parse_args(["serve", *argv])
    _, sources = resolve(args, environ, config or {})
    return args, sources


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file() -> None:
    """Each option is taken from the first source that has it, else its default."""
    config = {"server": {"port": 7000, "max_socket_buffer": 1000, "log_format": "json", "console": True,
                         "shutdown_timeout": 3}}
    environ = {"PIPE_RELAY_PORT": "7001", "PIPE_RELAY_MAX_SOCKET_BUFFER": "2000"}
    args, sources = settle(["--port", "7002"], environ, config)
    assert (args.port, sources["port"]) == (7002, "command line")  # type: ignore[attr-defined]
    assert (args.max_socket_buffer, sources["max_socket_buffer"]) == (2000, "PIPE_RELAY_MAX_SOCKET_BUFFER")  # type: ignore[attr-defined]
    assert (args.log_format, sources["log_format"]) == ("json", "[server] log_format")  # type: ignore[attr-defined]
    assert args.console is True and args.shutdown_timeout == 3.0  # type: ignore[attr-defined]
    assert (args.host, sources["host"]) == ("127.0.0.1", "default")  # type: ignore[attr-defined]
    args, _ = settle(["--no-console"], {"PIPE_RELAY_CONSOLE": "true"}, config)
    assert args.console is False  # type: ignore[attr-defined]
    args, _ = settle([], {"PIPE_RELAY_CONSOLE": "yes", "PIPE_RELAY_METRICS": "0"}, {})
    assert (args.console, args.metrics) == (True, False)  # type: ignore[attr-defined]


def test_lists_redis_and_every_option_from_the_environment() -> None:
    """Trusted proxies are comma-separated (a list in the file); Redis comes from [cluster]; every option has a variable."""
    args, _ = settle([], {"PIPE_RELAY_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}, {})
    assert args.trusted_proxies == ("10.0.0.0/8", "127.0.0.1/32")  # type: ignore[attr-defined]
    args, _ = settle([], {}, {"server": {"trusted_proxies": ["::1"]}, "cluster": {"redis": "redis://r:6379/0", "prefix": "eu"}})
    assert args.trusted_proxies == ("::1/128",)  # type: ignore[attr-defined]
    assert (args.redis, args.redis_prefix) == ("redis://r:6379/0", "eu")  # type: ignore[attr-defined]
    values = {"config": None, "port": "1", "metrics_port": "2", "max_socket_buffer": "3", "max_pipe_buffer": "4",
              "max_connections_per_ip": "5", "workers": "2", "shutdown_timeout": "1.5", "log_level": "debug",
              "log_format": "json", "redis": "redis://x/0", "trusted_proxies": "1.2.3.4", "transport": "portable"}
    for option in OPTIONS:
        if option.name == "config":
            continue
        text = values.get(option.name, "true" if option.switch else "something")
        args, sources = settle([], {option.env: text}, {})
        assert sources[option.name] == option.env, option.name


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"PIPE_RELAY_PORT": "http"}, {}, "PIPE_RELAY_PORT must be a whole number"),
        ({"PIPE_RELAY_PORT": "70000"}, {}, "PIPE_RELAY_PORT a port is 0 to 65535"),
        ({"PIPE_RELAY_CONSOLE": "maybe"}, {}, "PIPE_RELAY_CONSOLE must be true or false"),
        ({"PIPE_RELAY_LOG_FORMAT": "xml"}, {}, "PIPE_RELAY_LOG_FORMAT must be one of text, json"),
        ({"PIPE_RELAY_TRUSTED_PROXIES": "10.0.0.0/8,nginx"}, {}, "'nginx' is not an IP address"),
        ({"PIPE_RELAY_TRANSPORT": "quick"}, {}, "PIPE_RELAY_TRANSPORT must be auto or portable"),
        ({}, {"server": {"port": "x"}}, "[server] port must be a whole number"),
        ({}, {"server": {"console": "yes"}}, "[server] console must be true or false"),
        ({}, {"server": {"colour": "red"}}, "unknown setting(s) in [server]: colour"),
        ({}, {"server": 3}, "server must be a table"),
    ],
)
def test_invalid_values_name_where_they_came_from(environ: dict[str, str], config: dict[str, object], message: str) -> None:
    """A bad value is a ConfigError naming its variable or its file key."""
    with pytest.raises(ConfigError) as raised:
        settle([], environ, config)
    assert message in str(raised.value)


def test_unknown_tables_of_the_file_are_refused(tmp_path: Path) -> None:
    """A misspelt table ([sever]) is refused, naming the known ones."""
    path = tmp_path / "relay.toml"
    path.write_text("[sever]\nport = 1\n")
    with pytest.raises(ConfigError, match=r"unknown table\(s\) in .*: sever"):
        resolve(build_parser().parse_args(["serve", "--config", str(path)]), {})


def test_the_config_file_may_be_named_in_the_environment(tmp_path: Path) -> None:
    """PIPE_RELAY_CONFIG names the file when --config is not given."""
    path = tmp_path / "relay.toml"
    path.write_text("[server]\nport = 7123\n[[apps]]\nid = '5'\nkey = 'k5'\nsecret = 's5'\n")
    args = build_parser().parse_args(["serve"])
    config, _ = resolve(args, {"PIPE_RELAY_CONFIG": str(path)})
    assert args.port == 7123
    apps, demo = load_apps(args, {}, config)
    assert [a.id for a in apps] == ["5"] and not demo


def test_apps_from_the_environment_as_json_and_numbered() -> None:
    """PIPE_RELAY_APPS holds app tables as JSON; PIPE_RELAY_APP_<N>_* one app each; both add up."""
    environ = {
        "PIPE_RELAY_APPS": json.dumps([{"id": "10", "key": "k10", "secret": "s10", "limits": {"max_connections": 3}}]),
        "PIPE_RELAY_APP_1_ID": "11",
        "PIPE_RELAY_APP_1_KEY": "k11",
        "PIPE_RELAY_APP_1_SECRET": "s11",
        "PIPE_RELAY_APP_2_ID": "12",
        "PIPE_RELAY_APP_2_KEY": "k12",
        "PIPE_RELAY_APP_2_SECRET": "s12",
        "PIPE_RELAY_APP_2_NAME": "Twelve",
        "PIPE_RELAY_APP_2_ENABLED": "false",
    }
    apps = apps_from_environment(environ)
    assert [a.id for a in apps] == ["10", "11", "12"]
    assert apps[0].limits == Limits(max_connections=3)
    assert (apps[2].name, apps[2].enabled) == ("Twelve", False)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PIPE_RELAY_APPS": "[{"}, "PIPE_RELAY_APPS is not JSON"),
        ({"PIPE_RELAY_APPS": "{}"}, "must be a JSON array"),
        ({"PIPE_RELAY_APPS": '[{"id": "1", "key": "k", "secret": "s", "colour": 1}]'}, "PIPE_RELAY_APPS: unknown setting"),
        ({"PIPE_RELAY_APP_3_ID": "3", "PIPE_RELAY_APP_3_KEY": "k"}, "PIPE_RELAY_APP_3_* is missing PIPE_RELAY_APP_3_SECRET"),
        ({"PIPE_RELAY_APP_3_COLOUR": "red"}, "unknown field COLOUR"),
    ],
)
def test_bad_apps_in_the_environment_are_refused(environ: dict[str, str], message: str) -> None:
    """A malformed or partial app in the environment is a ConfigError saying which."""
    with pytest.raises(ConfigError) as raised:
        apps_from_environment(environ)
    assert message in str(raised.value)


def test_an_app_id_in_several_sources_is_taken_from_the_first() -> None:
    """The command line's app 1 replaces the environment's and the file's; other ids add up; one key twice is refused."""
    cli = [App(id="1", key="cli", secret="s")]
    env = [App(id="1", key="env", secret="s"), App(id="2", key="two", secret="s")]
    file = [App(id="1", key="file", secret="s"), App(id="3", key="three", secret="s")]
    assert [(a.id, a.key) for a in merge_apps(cli, env, file)] == [("1", "cli"), ("2", "two"), ("3", "three")]
    with pytest.raises(ConfigError, match="two apps have the key two"):
        merge_apps(cli, env, [App(id="4", key="two", secret="s")])


def test_serve_help_lists_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    """`pipe-relay serve --help` names each PIPE_RELAY_ variable and the precedence."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for name in environment_names():
        assert name.replace("<N>", "<N>") in text or name.split("<N>")[0] in text, name
    assert "command line wins over the environment, which wins over the file" in text


def test_the_docs_list_every_environment_variable() -> None:
    """docs/relay.md names every variable serve reads."""
    text = DOCS.read_text()
    for name in environment_names():
        assert name in text, name


# ---------------------------------------------------------- check-config


def test_check_config_says_ok_and_what_would_be_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: status 0 and a summary; its settings listed with their source."""
    path = tmp_path / "relay.toml"
    path.write_text("[server]\nport = 7100\n[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n")
    out = io.StringIO()
    assert check_config(str(path), {"PIPE_RELAY_HOST": "0.0.0.0"}, out) == 0
    text = out.getvalue()
    assert text.startswith(f"{path}: ok; 1 app(s): 1; http://0.0.0.0:7100")
    assert "port = 7100  ([server] port)" in text
    assert "host = '0.0.0.0'  (PIPE_RELAY_HOST)" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[[apps]]\nid = '1'\nkey = 'k'\n", "app secret is missing"),
        ("[server]\nport = 'x'\n[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n", "[server] port must be a whole number"),
        ("[server]\ntls_cert = '/nonexistent.pem'\ntls_key = '/nonexistent.key'\n[[apps]]\nid = '1'\nkey = 'k'\nsecret = 's'\n",
         "cannot read --tls-cert /nonexistent.pem"),
        ("[server]\nhost = '0.0.0.0'\n", "pass --demo to serve it anyway"),
        ("not toml at all [", "cannot read"),
    ],
)
def test_check_config_refuses_with_status_2_and_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    """An invalid file: status 2 and one line on stderr naming the file and the problem."""
    path = tmp_path / "relay.toml"
    path.write_text(content)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipe-relay: {path}: ") and message in err and err.count("\n") == 1


def test_check_config_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist: status 2, named."""
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


# ---------------------------------------------------------------- new-app


def test_new_app_prints_fresh_credentials_that_configure_as_printed(capsys: pytest.CaptureFixture[str]) -> None:
    """Both snippets define the same valid app; two calls give different credentials."""
    assert main(["new-app", "--name", "Shop"]) == 0
    text = capsys.readouterr().out
    app_id = re.search(r"app_id: (\d+)", text).group(1)  # type: ignore[union-attr]
    table = text[text.index("[[apps]]"):text.index("Or in the environment")]
    (from_file,) = apps_from_config(tomllib.loads(table))
    environ = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("PIPE_RELAY_APP_1_"))
    (from_env,) = apps_from_environment(environ)
    assert from_file == from_env
    assert (from_file.id, from_file.name) == (app_id, "Shop")
    assert len(from_file.key) == 20 and len(from_file.secret) == 32
    assert new_app()[0].secret != new_app()[0].secret


def test_new_app_with_a_bad_id_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--id must be digits (status 2)."""
    assert main(["new-app", "--id", "abc"]) == 2
    assert "app id must be digits" in capsys.readouterr().err


def test_a_busy_metrics_port_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    """--metrics-port on a port in use: the relay does not start, and says which port in one line."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", "0", "--metrics-port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pipe-relay: --metrics-port: port {port} is in use") and err.count("\n") == 1
