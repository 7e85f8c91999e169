"""``pipe-relay serve``'s settings: the command line, the environment and the configuration file.

Every option of ``serve`` can be given three ways, and the first found wins:

1. the command line (``--max-socket-buffer 65536``);
2. the environment (``PIPE_RELAY_MAX_SOCKET_BUFFER=65536``): ``PIPE_RELAY_``
   and the option's name in capitals, dashes as underscores;
3. the configuration file (``--config FILE`` or ``PIPE_RELAY_CONFIG``): its
   ``[server]`` table (``max_socket_buffer = 65536``), or ``[cluster]`` for
   ``redis`` and ``prefix`` (``--redis``, ``--redis-prefix``);

then the option's default. Switches take ``true``/``false`` (or ``1``/``0``,
``yes``/``no``, ``on``/``off``) in the environment, and ``--x``/``--no-x`` on
the command line. Lists (``--trusted-proxies``) are comma-separated outside
the file.

Apps come from every source at once: ``--app ID:KEY:SECRET`` (repeatable),
the environment (``PIPE_RELAY_APPS``: a JSON array of app tables shaped as in
the file; ``PIPE_RELAY_APP_<N>_ID``, ``_KEY``, ``_SECRET`` and optionally
``_NAME`` and ``_ENABLED`` for N = 1, 2, ...; or ``PIPE_RELAY_APP_ID``,
``_KEY``, ``_SECRET`` for one app, whose id defaults to 1) and the file's
``[[apps]]``. An app id given by several sources is taken whole from the one
that wins, in the same order.

Everything here is checked without starting anything (``pipe-relay
check-config``): a wrong value is a :class:`~pipe_proto.ConfigError` naming
where it came from.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipe_proto import App, AppRegistry, ConfigError, apps_from_config

__all__ = [
    "ENV_PREFIX",
    "OPTIONS",
    "Option",
    "add_options",
    "apps_from_environment",
    "merge_apps",
    "parse_app_option",
    "read_config",
    "resolve",
]

ENV_PREFIX = "PIPE_RELAY_"
#: Tables a configuration file may have.
FILE_TABLES = frozenset({"apps", "defaults", "server", "cluster"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


# ----------------------------------------------------------------- value types


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum}, not {value}")
        return value

    return parse


def _port(text: str) -> int:
    value = _integer(-(10**9))(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"a port is 0 to 65535, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"must be a number of seconds, not {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"must be 0 or more, not {text}")
    return value


def _text(text: str) -> str:
    if not text:
        raise ValueError("must not be empty")
    return text


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {text!r}")
        return text.lower()

    return parse


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"must be true or false, not {text!r}")


def parse_networks(text: str) -> tuple[str, ...]:
    """Comma-separated addresses or networks (``10.0.0.0/8``, ``::1``), checked; empty: none."""
    networks = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _transport(text: str) -> str:
    if text not in ("auto", "portable"):
        raise ValueError(f"must be auto or portable, not {text!r}")
    return text


@dataclass(frozen=True)
class Option:
    """One option of ``serve``: its flag, type, default, and where else it may come from."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str | None = None
    switch: bool = False
    #: The file's table and key (``None``: not in the file).
    table: str | None = "server"
    key: str | None = None

    @property
    def flag(self) -> str:
        """``--max-socket-buffer``."""
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        """``PIPE_RELAY_MAX_SOCKET_BUFFER``."""
        return ENV_PREFIX + self.name.upper()

    @property
    def file_key(self) -> str | None:
        """``[server] max_socket_buffer``, or None."""
        return None if self.table is None else f"[{self.table}] {self.key or self.name}"


MIB = 1024 * 1024

#: Every option of ``serve`` but ``--app`` (docs/relay.md lists them).
OPTIONS: tuple[Option, ...] = (
    Option("config", _text, None, "TOML file with [server], [cluster], [defaults] and [[apps]] tables",
           "FILE", table=None),
    Option("host", _text, "127.0.0.1", "address to listen on (default 127.0.0.1)", "ADDRESS"),
    Option("port", _port, 6001, "port for HTTP and WebSocket (default 6001; 0: any free port)",
           "PORT"),
    Option("tls_cert", _text, None, "certificate chain (PEM) to serve TLS; re-read on SIGHUP", "FILE"),
    Option("tls_key", _text, None, "private key (PEM) of --tls-cert", "FILE"),
    Option("demo", _switch, False,
           "serve the demo app (whose secret is public) even on an address other than loopback", switch=True),
    Option("max_socket_buffer", _integer(1), 256 * 1024,
           "bytes a socket may leave unread for more than 5 s (or 4 times this at any time) "
           "before it is closed as too slow (4101; default 262144)", "BYTES"),
    Option("max_pipe_buffer", _integer(1), 16 * MIB, "the same for a pipe (default 16 MiB)", "BYTES"),
    Option("max_connections_per_ip", _integer(1), None,
           "most connections open at once from one IP address; more are answered 429 and closed "
           "(default: no limit, as a load balancer or a benchmark may connect many from one address)", "N"),
    Option("trusted_proxies", parse_networks, (),
           "addresses or networks (comma-separated) of proxies whose X-Forwarded-For is believed: the "
           "client's address is then the last one not of a trusted proxy (logs, limits, pipes' "
           "remote_addr); default none", "CIDRS"),
    # Checked with the rest of the [cluster] table (pipe_trio.cluster_settings).
    Option("redis", _text, None, "join a cluster through this Redis (redis://HOST:PORT/DB)", "URL",
           table="cluster"),
    Option("redis_prefix", _text, "pipe-relay",
           "the cluster's name: every Redis key and channel starts with it (default pipe-relay)", "NAME",
           table="cluster", key="prefix"),
    Option("workers", _integer(1), 1, "run N relay processes on the port, one per core (needs --redis)", "N"),
    Option("transport", _transport, "auto",
           "how WebSockets are served: auto (the fast transport for plain TCP on Linux, the portable one "
           "under TLS and elsewhere) or portable (a task per connection, wsproto's framing)", "NAME"),
    Option("shutdown_timeout", _seconds, 10.0,
           "seconds a graceful stop (SIGINT, SIGTERM) may take (default 10)", "SECONDS"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "info",
           "debug, info (default: connections and errors, nothing per message), warning or error", "LEVEL"),
    Option("log_format", _choice("text", "json"), "text",
           "text (default) or json: one JSON object per line", "FORMAT"),
    Option("metrics", _switch, True, "serve GET /metrics and count for it (default on)", switch=True),
    Option("metrics_port", _port, None,
           "serve /metrics, /health and /ready on this port (and /metrics no longer on --port); "
           "with --workers N, worker i listens on this port + i", "PORT"),
    Option("metrics_host", _text, None, "address of --metrics-port (default: --host)", "ADDRESS"),
    Option("console", _switch, False,
           "serve the debug console at /console (signed in with an app's key and secret; default off)",
           switch=True),
)
_BY_NAME = {option.name: option for option in OPTIONS}


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add every option of :data:`OPTIONS` to ``parser``, each defaulting to None (not given)."""
    for option in OPTIONS:
        where = [option.env]
        if option.file_key:
            where.append(option.file_key)
        also = f" [{'; '.join(where)}]"
        if option.switch:
            parser.add_argument(
                option.flag, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                help=option.help + also,
            )
        else:
            parser.add_argument(
                option.flag, dest=option.name, type=_argument_type(option.parse), default=None,
                metavar=option.metavar, help=option.help + also,
            )


def read_config(path: str) -> dict[str, Any]:
    """The parsed configuration file, its tables checked by name.

    Raises:
        ConfigError: it cannot be read or parsed, or has an unknown table.
    """
    try:
        with open(path, "rb") as file:
            config = tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown = set(config) - FILE_TABLES
    if unknown:
        raise ConfigError(
            f"unknown table(s) in {path}: {', '.join(sorted(unknown))} (known: {', '.join(sorted(FILE_TABLES))})"
        )
    return config


def _from_file(option: Option, value: Any) -> Any:
    where = option.file_key
    if option.switch:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if option.name == "trusted_proxies":
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of addresses or networks")
        text = ",".join(value)
    elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{where} must be a string or a number, not {value!r}")
    else:
        text = str(value)
    try:
        return option.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where} {exc}") from None


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str], config: Mapping[str, Any] | None = None
) -> tuple[Mapping[str, Any], dict[str, str]]:
    """Fill every option of ``args`` not given on the command line from the environment, the file or its default.

    ``config``: the parsed file (read from ``args.config``, or
    ``PIPE_RELAY_CONFIG``, when not given). Returns the parsed file ({}
    without one) and where each option came from: ``"command line"``, its
    variable, its file key or ``"default"``.

    Raises:
        ConfigError: a value of the environment or the file is invalid, or
            the file has an unknown setting in ``[server]``.
    """
    sources: dict[str, str] = {}
    for option in OPTIONS:
        if option.name == "config":
            _resolve_one(option, args, environ, {}, sources)
            if config is None:
                config = read_config(args.config) if args.config else {}
            break
    assert config is not None
    server = config.get("server", {})
    if not isinstance(server, Mapping):
        raise ConfigError("server must be a table ([server])")
    known = {o.key or o.name for o in OPTIONS if o.table == "server"}
    unknown = set(server) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) in [server]: {', '.join(sorted(unknown))}")
    cluster = config.get("cluster", {})
    if not isinstance(cluster, Mapping):
        raise ConfigError("cluster must be a table ([cluster])")
    tables = {"server": server, "cluster": cluster}
    for option in OPTIONS:
        if option.name != "config":
            _resolve_one(option, args, environ, tables, sources)
    return config, sources


def _resolve_one(
    option: Option,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    tables: Mapping[str, Mapping[str, Any]],
    sources: dict[str, str],
) -> None:
    if getattr(args, option.name, None) is not None:
        sources[option.name] = "command line"
        return
    text = environ.get(option.env)
    if text is not None and text != "":
        try:
            setattr(args, option.name, option.parse(text))
        except ValueError as exc:
            raise ConfigError(f"{option.env} {exc}") from None
        sources[option.name] = option.env
        return
    table = tables.get(option.table or "", {})
    key = option.key or option.name
    if key in table:
        setattr(args, option.name, _from_file(option, table[key]))
        sources[option.name] = option.file_key or ""
        return
    setattr(args, option.name, option.default)
    sources[option.name] = "default"


# ------------------------------------------------------------------------ apps


def parse_app_option(spec: str) -> App:
    """An app of ``--app ID:KEY:SECRET``.

    Raises:
        ConfigError: not three parts, or an invalid id, key or secret.
    """
    parts = spec.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--app wants ID:KEY:SECRET, not {spec!r}")
    return App(id=parts[0], key=parts[1], secret=parts[2])


_SINGLE = ("PIPE_RELAY_APP_ID", "PIPE_RELAY_APP_KEY", "PIPE_RELAY_APP_SECRET")
_NUMBERED = re.compile(r"PIPE_RELAY_APP_([0-9]+)_([A-Z]+)")
_NUMBERED_FIELDS = ("ID", "KEY", "SECRET", "NAME", "ENABLED")


def apps_from_environment(environ: Mapping[str, str]) -> list[App]:
    """The apps the environment defines (see the module's docstring).

    Raises:
        ConfigError: ``PIPE_RELAY_APPS`` is not a JSON array of valid app
            tables, or a numbered or single app lacks its key or secret.
    """
    apps: list[App] = []
    raw = environ.get("PIPE_RELAY_APPS")
    if raw:
        try:
            tables = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"PIPE_RELAY_APPS is not JSON: {exc}") from None
        if not isinstance(tables, list):
            raise ConfigError("PIPE_RELAY_APPS must be a JSON array of app objects")
        try:
            apps.extend(apps_from_config({"apps": tables}))
        except ConfigError as exc:
            raise ConfigError(f"PIPE_RELAY_APPS: {exc}") from None
    numbered: dict[int, dict[str, str]] = {}
    for name, value in environ.items():
        match = _NUMBERED.fullmatch(name)
        if match is None or value == "":
            continue
        number, field = int(match.group(1)), match.group(2)
        if field not in _NUMBERED_FIELDS:
            raise ConfigError(f"{name}: unknown field {field} (known: {', '.join(_NUMBERED_FIELDS)})")
        numbered.setdefault(number, {})[field] = value
    for number, fields in sorted(numbered.items()):
        missing = [f"PIPE_RELAY_APP_{number}_{f}" for f in ("ID", "KEY", "SECRET") if f not in fields]
        if missing:
            raise ConfigError(f"PIPE_RELAY_APP_{number}_* is missing {' and '.join(missing)}")
        try:
            enabled = _switch(fields.get("ENABLED", "true"))
        except ValueError as exc:
            raise ConfigError(f"PIPE_RELAY_APP_{number}_ENABLED {exc}") from None
        apps.append(
            App(id=fields["ID"], key=fields["KEY"], secret=fields["SECRET"], name=fields.get("NAME", ""),
                enabled=enabled)
        )
    given = [name for name in _SINGLE if environ.get(name)]
    if given:
        # A typo or a forgotten export must not fall back to the demo app.
        missing = [name for name in _SINGLE[1:] if name not in given]
        if missing:
            raise ConfigError(
                f"{' and '.join(given)} set without {' and '.join(missing)}: "
                "an app from the environment needs PIPE_RELAY_APP_KEY and PIPE_RELAY_APP_SECRET"
            )
        apps.append(
            App(
                id=environ.get("PIPE_RELAY_APP_ID") or "1",
                key=environ["PIPE_RELAY_APP_KEY"],
                secret=environ["PIPE_RELAY_APP_SECRET"],
            )
        )
    return apps


def merge_apps(*sources: Sequence[App]) -> list[App]:
    """The apps of every source, an id given by several taken from the first source that has it.

    Raises:
        ConfigError: one source gives an id twice, or two apps end up with one key.
    """
    merged: dict[str, App] = {}
    for source in sources:
        AppRegistry(source)  # refuses an id or key twice within one source
        for app in source:
            merged.setdefault(app.id, app)
    apps = list(merged.values())
    AppRegistry(apps)
    return apps


def environment_names() -> list[str]:
    """Every environment variable ``serve`` reads (for the help and the docs)."""
    return [
        *(option.env for option in OPTIONS),
        "PIPE_RELAY_APPS",
        "PIPE_RELAY_APP_<N>_ID",
        "PIPE_RELAY_APP_<N>_KEY",
        "PIPE_RELAY_APP_<N>_SECRET",
        "PIPE_RELAY_APP_<N>_NAME",
        "PIPE_RELAY_APP_<N>_ENABLED",
        *_SINGLE,
    ]
