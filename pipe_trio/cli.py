"""``pipe-relay``: the command line.

``pipe-relay serve`` runs a relay. Its options, and its apps, come from the
command line, the environment (``PIPE_RELAY_...``) and the configuration
file, in that order of precedence (:mod:`.settings`); with no app anywhere it
runs a demo app and prints its credentials and a pusher-js snippet, on a
loopback address only unless ``--demo`` is given (its secret is public).
SIGINT and SIGTERM stop it gracefully: no new connections, every client told
to reconnect (4200), done within ``--shutdown-timeout`` seconds. SIGHUP
re-reads the configuration file: apps added, removed or changed
(:meth:`pipe_proto.Relay.reconfigure`), and the TLS certificate.

``pipe-relay check-config FILE`` checks a configuration without starting;
``pipe-relay new-app`` prints fresh credentials.

Mistakes found at start are one line on stderr, never a traceback: status 2
for the configuration (apps, options, TLS files), 1 when the relay cannot
listen (the port is in use, ...).
"""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from pipe_proto import App, ConfigError, Relay, __version__, app_changes, apps_from_config
from pipe_proto.cluster import ClusterDirectory

from . import conformance
from .cluster_settings import ClusterSettings, cluster_settings
from .logs import fields, setup_logging
from .metrics import serve_probes
from .server import RelayServer, open_listeners
from .settings import add_options, apps_from_environment, merge_apps, parse_app_option, read_config, resolve
from .workers import WORKER_FLAG, supervise

__all__ = ["build_parser", "check_config", "load_apps", "main", "new_app"]

DEMO_APP = App(id="1", key="demo-key", secret="demo-secret", name="demo")

log = logging.getLogger("pipe_trio")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pipe-relay``."""
    parser = argparse.ArgumentParser(prog="pipe-relay", description="A Pusher-compatible realtime relay with a Pipe.")
    parser.add_argument("--version", action="version", version=f"pipe-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay. Every option can also come from the environment or the configuration "
        "file, as shown in brackets; the command line wins over the environment, which wins over the file.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="ID:KEY:SECRET",
        help="an app with client events and user sign-in on and the default limits (repeatable)",
    )
    add_options(run)
    run.add_argument(WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    check = commands.add_parser(
        "check-config",
        help="check a configuration file (with the environment) without starting; exit 0 or 2",
        description="Read FILE and the PIPE_RELAY_* environment as `serve --config FILE` would, check every "
        "setting, app and TLS file, and say what is wrong (exit status 2) or what would be served (0).",
    )
    check.add_argument("file", metavar="FILE", help="the TOML configuration file")
    new = commands.add_parser(
        "new-app",
        help="print fresh credentials for an app (id, key, secret) and how to configure them",
        description="Print a new app's id, key and secret (random), as a [[apps]] table and as environment variables.",
    )
    new.add_argument("--id", metavar="DIGITS", help="the app's id (default: random digits)")
    new.add_argument("--name", default="", help="the app's name")
    conformance.add_parser(commands)
    return parser


SERVE_EPILOG = """\
apps (every source adds its apps; an id given twice is taken from the command line,
then the environment, then the file):
  --app ID:KEY:SECRET                 on the command line (repeatable)
  PIPE_RELAY_APPS='[{"id": "1", "key": "...", "secret": "...", "limits": {...}}]'
                                      JSON array of app tables, shaped as [[apps]] in the file
  PIPE_RELAY_APP_<N>_ID, _KEY, _SECRET (and _NAME, _ENABLED), N = 1, 2, ...
  PIPE_RELAY_APP_ID, PIPE_RELAY_APP_KEY, PIPE_RELAY_APP_SECRET   one app (id 1 by default)
  [[apps]] tables in the file (with [defaults.limits], [defaults.features], [defaults.pipe])

signals: SIGINT and SIGTERM stop gracefully (4200 to every client); SIGHUP re-reads the
configuration file (apps, TLS certificate) without dropping other connections.
See docs/relay.md and docs/deploy.md.
"""


def load_apps(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None
) -> tuple[list[App], bool]:
    """The apps to serve, and whether they are the demo default.

    ``config``: the parsed file (read from ``args.config`` when not given).

    Raises:
        ConfigError: an app specification or the configuration file is invalid.
    """
    environ = os.environ if environ is None else environ
    if config is None:
        config = read_config(args.config) if args.config else {}
    apps = merge_apps(
        [parse_app_option(spec) for spec in args.app],
        apps_from_environment(environ),
        apps_from_config(config),
    )
    if apps:
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
    _load_certificate(context, args)
    return context


def _load_certificate(context: ssl.SSLContext, args: argparse.Namespace) -> None:
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"cannot use --tls-cert {args.tls_cert} with --tls-key {args.tls_key}: {reason} "
            "(PEM files: the certificate chain, and its private key without a passphrase)"
        ) from None


def reload_certificate(context: ssl.SSLContext, args: argparse.Namespace) -> None:
    """Re-read the certificate and key into the listeners' ``context``: new handshakes use them.

    They are first loaded into a context of their own, so a broken pair
    (a certificate renewed before its key was) leaves ``context`` as it was.

    Raises:
        ConfigError: the files cannot be read or do not go together.
    """
    checked = _tls_context(args)
    assert checked is not None
    _load_certificate(context, args)


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


def reload(
    server: RelayServer,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
) -> bool:
    """SIGHUP: re-read the configuration file and the TLS certificate; False (and nothing changed) if invalid.

    Apps come from the same sources as at the start (the command line and
    the environment are the process's own, so only the file can change);
    the relay serves the new apps at once (:meth:`pipe_proto.Relay.reconfigure`).
    Other ``[server]`` settings need a restart: a change is logged.
    """
    relay = server.relay
    try:
        config = read_config(args.config) if args.config else {}
        fresh = build_parser().parse_args(["serve", *args.given])
        resolve(fresh, environ, config)
        apps, demo = load_apps(fresh, environ, config)
        if ssl_context is not None:
            reload_certificate(ssl_context, args)
    except ConfigError as exc:
        log.error("reload refused, nothing changed: %s", exc, extra=fields("reload_refused", reason=str(exc)))
        return False
    if demo and not args.demo_served:
        log.error("reload refused, nothing changed: the new configuration has no app",
                  extra=fields("reload_refused", reason="no app"))
        return False
    changes = app_changes(relay.apps, apps)
    server.execute(relay.reconfigure(apps, server.now()))
    restart = sorted(
        option for option in ("host", "port", "max_socket_buffer", "max_pipe_buffer", "redis", "workers", "transport",
                              "metrics", "metrics_port", "console", "trusted_proxies", "max_connections_per_ip")
        if getattr(fresh, option) != getattr(args, option)
    )
    if restart:
        log.warning("reload: %s changed and take effect at the next restart", ", ".join(restart),
                    extra=fields("reload_needs_restart", settings=restart))
    log.info(
        "reloaded %s: apps added %s, removed %s, changed %s%s",
        args.config or "the configuration",
        [a.id for a in changes.added], [a.id for a in changes.removed], [a.id for a in changes.changed],
        "; TLS certificate re-read" if ssl_context is not None else "",
        extra=fields("reloaded", added=[a.id for a in changes.added], removed=[a.id for a in changes.removed],
                     changed=[a.id for a in changes.changed]),
    )
    return True


async def _run(
    args: argparse.Namespace, apps: list[App], demo: bool, ssl_context: ssl.SSLContext | None,
    environ: Mapping[str, str],
) -> None:
    try:
        listeners = await open_listeners(args.host, args.port, ssl_context, reuse_port=args.worker)
    except OSError as exc:
        raise StartError(_listen_problem(args.host, args.port, exc)) from None
    probes = None
    if args.metrics_port is not None:
        host = args.metrics_host or args.host
        try:
            probes = await open_listeners(host, args.metrics_port)
        except OSError as exc:
            for listener in listeners:
                await listener.aclose()
            raise StartError("--metrics-port: " + _listen_problem(host, args.metrics_port, exc)) from None
    directory = None
    cluster: ClusterSettings = args.cluster
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
        transport=args.transport,
        trusted_proxies=args.trusted_proxies,
        metrics=args.metrics,
        metrics_here=args.metrics_port is None,
        console=args.console,
    )
    args.demo_served = demo
    tune_collector()  # everything above is built: it stays for the process's life
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners)
        if probes is not None:
            await nursery.start(serve_probes, server, probes)
        scheme = "wss" if ssl_context else "ws"
        port = server.port  # the bound port, also when --port 0 asked for any free one
        if demo and not args.worker:
            print(_banner(apps[0], args.host, port, scheme), flush=True)
            _warn_if_public_demo(args.host, port)
        log.info(
            "pipe-relay %s listening on %s:%d (%s), %d app(s)",
            __version__, args.host, port, scheme, len(apps),
            extra=fields("listening", host=args.host, port=port, scheme=scheme, apps=len(apps)),
        )
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    reload(server, args, environ, ssl_context)
                    continue
                log.info("%s: shutting down", signal.Signals(signum).name, extra=fields("shutting_down"))
                await server.shutdown(args.shutdown_timeout)
                break
        nursery.cancel_scope.cancel()


def _supervise(args: argparse.Namespace, apps: list[App], demo: bool) -> int:
    if not args.redis:
        print("pipe-relay: --workers needs --redis: the workers share their state through Redis", file=sys.stderr)
        return 2
    port = args.port or _free_port(args.host)
    # The workers get the same options, one process each, on one known port.
    worker_argv = [*_without(_without(args.given, "--workers"), "--metrics-port"), "--port", str(port)]

    def argv_of(index: int) -> list[str]:
        # Each worker's metrics on a port of its own: a scrape must see one process.
        if args.metrics_port is None:
            return worker_argv
        return [*worker_argv, "--metrics-port", str(args.metrics_port + index if args.metrics_port else 0)]

    if demo:
        print(_banner(apps[0], args.host, port, "wss" if args.tls_cert else "ws"), flush=True)
        _warn_if_public_demo(args.host, port)
    log.info("pipe-relay %s: %d workers on %s:%d", __version__, args.workers, args.host, port)
    try:
        return trio.run(supervise, argv_of, args.workers, args.shutdown_timeout)
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


def _serve_settings(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[list[App], bool, ssl.SSLContext | None, dict[str, str]]:
    """Everything ``serve`` needs checked before it starts: apps, whether the demo, TLS, and each setting's source.

    Raises:
        ConfigError: anything invalid.
    """
    config, sources = resolve(args, environ)
    apps, demo = load_apps(args, environ, config)
    # The [cluster] table's own checks (beat, dead_after, the Redis URL), with what resolve found.
    args.cluster = cluster_settings(config, redis=args.redis, prefix=args.redis_prefix, environ=environ)
    if demo and not _is_loopback(args.host) and not args.demo:
        raise ConfigError(
            f"no app configured, and the demo app's secret is public: it is served on a loopback "
            f"--host only, not on {args.host}. Configure an app (--app, --config or "
            "PIPE_RELAY_APP_KEY and PIPE_RELAY_APP_SECRET), or pass --demo to serve it anyway"
        )
    return apps, demo, _tls_context(args), sources


def check_config(path: str, environ: Mapping[str, str] | None = None, out: Any = None) -> int:
    """``pipe-relay check-config FILE``: 0 and a summary if ``serve --config FILE`` would start, else 2 and why."""
    environ = os.environ if environ is None else environ
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(["serve", "--config", path])
    try:
        apps, demo, _, sources = _serve_settings(args, environ)
    except ConfigError as exc:
        print(f"pipe-relay: {path}: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if args.tls_cert else "http"
    what = "the demo app" if demo else f"{len(apps)} app(s): " + ", ".join(
        f"{app.id}{'' if app.enabled else ' (disabled)'}" for app in apps
    )
    print(f"{path}: ok; {what}; {scheme}://{args.host}:{args.port}", file=out)
    for name, source in sources.items():
        if source not in ("default", "command line"):
            print(f"  {name} = {getattr(args, name)!r}  ({source})", file=out)
    return 0


def new_app(app_id: str | None = None, name: str = "") -> tuple[App, str]:
    """Fresh random credentials, and how to configure them (a TOML table and environment variables).

    Raises:
        ConfigError: ``app_id`` is not digits.
    """
    app = App(
        id=app_id or str(secrets.randbelow(9 * 10**6) + 10**6),
        key=secrets.token_hex(10),
        secret=secrets.token_hex(16),
        name=name,
    )
    named = f'name = "{name}"\n' if name else ""
    env_name = f"PIPE_RELAY_APP_1_NAME={name}\n" if name else ""
    text = f"""app_id: {app.id}
key:    {app.key}
secret: {app.secret}

In the configuration file (--config):

[[apps]]
id = "{app.id}"
key = "{app.key}"
secret = "{app.secret}"
{named}
Or in the environment (number the apps 1, 2, ...):

PIPE_RELAY_APP_1_ID={app.id}
PIPE_RELAY_APP_1_KEY={app.key}
PIPE_RELAY_APP_1_SECRET={app.secret}
{env_name}"""
    return app, text


#: Allocations between two collections of the youngest generation while
#: serving (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_collector() -> None:
    """Set Python's cyclic garbage collector for a long-running server (``serve`` calls it once started).

    What starting made (modules, settings, the apps) is moved out of the
    collector's reach (``gc.freeze``), so a full collection no longer walks
    it each time; and the youngest generation is collected every
    ``GC_YOUNG_THRESHOLD`` allocations instead of 700, so a burst of
    connections (each a few dozen objects that all stay) is not walked
    again and again while it arrives. Garbage without cycles is freed at
    once either way; the rest waits at most a little longer.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pipe-relay``; returns the exit status."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(given)
    if args.command == "conformance":
        return conformance.command(args)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "new-app":
        try:
            print(new_app(args.id, args.name)[1], end="")
        except ConfigError as exc:
            print(f"pipe-relay: {exc}", file=sys.stderr)
            return 2
        return 0
    environ = dict(os.environ)
    args.given = given[1:]  # serve's own arguments: a reload and the workers parse them again
    try:
        apps, demo, ssl_context, _ = _serve_settings(args, environ)
    except ConfigError as exc:
        print(f"pipe-relay: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    if args.worker:
        args.workers = 1  # a worker of a supervisor (PIPE_RELAY_WORKERS reaches it too)
    if args.workers > 1:
        return _supervise(args, apps, demo)
    try:
        trio.run(_run, args, apps, demo, ssl_context, environ)
    except StartError as exc:
        print(f"pipe-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
