"""``pipe-relay``: the command line.

``pipe-relay serve`` runs a relay. Apps come from ``--app ID:KEY:SECRET``
(repeatable), ``--config FILE`` (TOML, see :func:`pipe_proto.apps_from_config`),
or the environment (``PIPE_RELAY_APP_KEY`` and ``PIPE_RELAY_APP_SECRET``, with
``PIPE_RELAY_APP_ID``, 1 when unset; a partial set is refused); with none of
these it runs a demo app and prints its credentials and a pusher-js snippet,
on a loopback address only unless ``--demo`` is given (its secret is public).
SIGINT and SIGTERM stop it gracefully: no new connections, every client told
to reconnect (4200), done within ``--shutdown-timeout`` seconds.

Mistakes found at start are one line on stderr, never a traceback: status 2
for the configuration (apps, options, TLS files), 1 when the relay cannot
listen (the port is in use, ...).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import tomllib
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

from pipe_proto import App, AppRegistry, ConfigError, Relay, __version__, apps_from_config
from pipe_proto.cluster import ClusterDirectory

from . import conformance
from ._websocket import transport_name
from .cluster_settings import ClusterSettings, cluster_settings
from .server import RelayServer, open_listeners
from .workers import WORKER_FLAG, supervise

__all__ = ["build_parser", "load_apps", "main"]

DEMO_APP = App(id="1", key="demo-key", secret="demo-secret", name="demo")
ENVIRONMENT = ("PIPE_RELAY_APP_ID", "PIPE_RELAY_APP_KEY", "PIPE_RELAY_APP_SECRET")

log = logging.getLogger("pipe_trio")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pipe-relay``."""
    parser = argparse.ArgumentParser(prog="pipe-relay", description="A Pusher-compatible realtime relay with a Pipe.")
    parser.add_argument("--version", action="version", version=f"pipe-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the relay")
    run.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=_port, default=6001, help="port for HTTP and WebSocket (default 6001)")
    run.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="ID:KEY:SECRET",
        help="an app with client events and user sign-in on and the default limits (repeatable)",
    )
    run.add_argument("--config", metavar="FILE", help="TOML file with [[apps]] tables")
    run.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM) to serve TLS")
    run.add_argument("--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert")
    run.add_argument(
        "--demo",
        action="store_true",
        help="serve the demo app (whose secret is public) even on an address other than loopback",
    )
    run.add_argument(
        "--max-socket-buffer",
        type=int,
        default=256 * 1024,
        metavar="BYTES",
        help="bytes a socket may leave unread for more than 5 s (or 4 times this at any time) "
        "before it is closed as too slow (4101; default 262144)",
    )
    run.add_argument(
        "--max-pipe-buffer",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="the same for a pipe (default 16 MiB)",
    )
    run.add_argument(
        "--max-connections-per-ip",
        type=_positive_int,
        default=None,
        metavar="N",
        help="most connections open at once from one IP address; more are answered 429 and closed "
        "(default: no limit, as a load balancer or a benchmark may connect many from one address)",
    )
    run.add_argument(
        "--redis",
        metavar="URL",
        help="join a cluster through this Redis (redis://HOST:PORT/DB; also PIPE_RELAY_REDIS, [cluster] redis)",
    )
    run.add_argument(
        "--redis-prefix",
        metavar="NAME",
        help="the cluster's name: every Redis key and channel starts with it (default pipe-relay;"
        " also PIPE_RELAY_REDIS_PREFIX, [cluster] prefix)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PIPE_RELAY_WORKERS", "1")),
        metavar="N",
        help="run N relay processes on the port, one per core (needs --redis; also PIPE_RELAY_WORKERS)",
    )
    run.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="SECONDS")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    conformance.add_parser(commands)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def _parse_app(spec: str) -> App:
    parts = spec.split(":")
    if len(parts) != 3:
        raise ConfigError(f"--app wants ID:KEY:SECRET, not {spec!r}")
    return App(id=parts[0], key=parts[1], secret=parts[2])


def load_apps(args: argparse.Namespace, environ: dict[str, str] | None = None) -> tuple[list[App], bool]:
    """The apps to serve, and whether they are the demo default.

    Raises:
        ConfigError: an app specification or the configuration file is invalid.
    """
    environ = dict(os.environ) if environ is None else environ
    apps = [_parse_app(spec) for spec in args.app]
    if args.config:
        apps.extend(apps_from_config(_read_config(args.config)))
    if not apps:
        given = [name for name in ENVIRONMENT if environ.get(name)]
        if given:
            # A typo or a forgotten export must not fall back to the demo app.
            missing = [name for name in ENVIRONMENT[1:] if name not in given]
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
    if apps:
        AppRegistry(apps)  # refuses two apps with the same id or key
        return apps, False
    return [DEMO_APP], True


def _banner(app: App, host: str, port: int, scheme: str) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"""
pipe-relay {__version__} is serving the demo app on {scheme}://{host}:{port}

  app_id: {app.id}
  key:    {app.key}
  secret: {app.secret}

Connect from a page with pusher-js 8:

  <script src="https://js.pusher.com/8.4.0/pusher.min.js"></script>
  <script src="{"https" if scheme == "wss" else "http"}://{shown}:{port}/pipe-client.js"></script>
  <script>
    const pusher = new Pusher("{app.key}", {{
      cluster: "mt1", wsHost: "{shown}", wsPort: {port}, wssPort: {port},
      forceTLS: {"true" if scheme == "wss" else "false"}, enabledTransports: ["ws", "wss"],
    }});
    pusher.subscribe("my-channel").bind("my-event", (data) => console.log(data));
  </script>

Publish with any Pusher server SDK (host {shown}, port {port}) or from a backend
on the Pipe (examples/quickstart/). Stop with Ctrl-C.
"""


class StartError(Exception):
    """The relay cannot start; the message is the one line shown (status 1)."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may well resolve to a public address


def _warn_if_public_demo(host: str, port: int) -> None:
    """Say loudly that the demo app (allowed off loopback by --demo) is open to anyone."""
    if not _is_loopback(host):
        log.warning(
            "THE DEMO APP IS SERVED ON %s, NOT ONLY TO THIS MACHINE: its secret is public, so anyone "
            "who reaches port %d can publish, sign users in and open a pipe. Configure an app.",
            host, port,
        )


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context of --tls-cert/--tls-key (None without them).

    Raises:
        ConfigError: a file cannot be read, or they are not a certificate and its key.
    """
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"cannot use --tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {reason} "
            "(PEM files: the certificate chain, and its private key without a passphrase)"
        ) from None
    return context


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    """One line saying why the relay cannot listen on ``host:port``."""
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host} (another pipe-relay running?); stop it or choose another --port"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need privileges); choose another --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine (see --host)"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: unknown host ({exc.strerror}; see --host)"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


async def _run(
    args: argparse.Namespace, apps: list[App], demo: bool, ssl_context: ssl.SSLContext | None, cluster: ClusterSettings
) -> None:
    try:
        listeners = await open_listeners(args.host, args.port, ssl_context, reuse_port=args.worker)
    except OSError as exc:
        raise StartError(_listen_problem(args.host, args.port, exc)) from None
    directory = None
    if cluster.redis:
        # Digits: socket ids start with the node's id (pipes find a socket's node by it).
        node = str(secrets.randbelow(9 * 10**8) + 10**8)
        directory = partial(
            ClusterDirectory, node=node, prefix=cluster.prefix, beat=cluster.beat, dead_after=cluster.dead_after
        )
        log.info("node %s joins the cluster %r through %s", node, cluster.prefix, cluster.redis.rpartition("@")[2])
    relay = Relay(apps, id_base=secrets.randbelow(10**6) * 1000, directory=directory)
    server = RelayServer(
        relay,
        secure=ssl_context is not None,
        max_socket_buffer=args.max_socket_buffer,
        max_pipe_buffer=args.max_pipe_buffer,
        max_connections_per_ip=args.max_connections_per_ip,
        redis=cluster.redis,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        scheme = "wss" if ssl_context else "ws"
        port = server.port  # the bound port, also when --port 0 asked for any free one
        if demo and not args.worker:
            print(_banner(apps[0], args.host, port, scheme), flush=True)
            _warn_if_public_demo(args.host, port)
        log.info(
            "pipe-relay %s listening on %s:%d (%s), %d app(s)",
            __version__, args.host, port, scheme, len(apps),
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                await server.shutdown(args.shutdown_timeout)
                break
        nursery.cancel_scope.cancel()


def _supervise(
    args: argparse.Namespace, apps: list[App], demo: bool, argv: Sequence[str] | None, cluster: ClusterSettings
) -> int:
    if not cluster.redis:
        print("pipe-relay: --workers needs --redis: the workers share their state through Redis", file=sys.stderr)
        return 2
    given = list(sys.argv[2:] if argv is None else argv[1:])
    port = args.port or _free_port(args.host)
    # The workers get the same options, one process each, on one known port.
    worker_argv = [*_without(given, "--workers"), "--port", str(port)]
    if demo:
        print(_banner(apps[0], args.host, port, "wss" if args.tls_cert else "ws"), flush=True)
        _warn_if_public_demo(args.host, port)
    log.info("pipe-relay %s: %d workers on %s:%d", __version__, args.workers, args.host, port)
    try:
        return trio.run(supervise, worker_argv, args.workers, args.shutdown_timeout)
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        return 130


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt V`` or ``--opt=V``)."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            kept.append(item)
    return kept


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pipe-relay``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "conformance":
        return conformance.command(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        apps, demo = load_apps(args)
        if demo and not _is_loopback(args.host) and not args.demo:
            raise ConfigError(
                f"no app configured, and the demo app's secret is public: it is served on a loopback "
                f"--host only, not on {args.host}. Configure an app (--app, --config or "
                "PIPE_RELAY_APP_KEY and PIPE_RELAY_APP_SECRET), or pass --demo to serve it anyway"
            )
        ssl_context = _tls_context(args)
        config = _read_config(args.config) if args.config else {}
        cluster = cluster_settings(config, redis=args.redis, prefix=args.redis_prefix)
        try:
            transport_name()  # PIPE_RELAY_TRANSPORT, checked before anything starts
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        print(f"pipe-relay: {exc}", file=sys.stderr)
        return 2
    if args.worker:
        args.workers = 1  # a worker of a supervisor (PIPE_RELAY_WORKERS reaches it too)
    if args.workers < 1:
        print("pipe-relay: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1:
        return _supervise(args, apps, demo, argv, cluster)
    try:
        trio.run(_run, args, apps, demo, ssl_context, cluster)
    except StartError as exc:
        print(f"pipe-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
