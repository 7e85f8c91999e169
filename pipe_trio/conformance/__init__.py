"""A conformance kit for Pusher-protocol servers (and the Pipe).

``pipe-relay conformance ws://HOST:PORT --app ID:KEY:SECRET`` runs black-box
cases against any running server, with ``pipe_proto``'s client-side
machines as the oracle (the Pusher codec and connection state, the REST and
webhook signers, the Pipe codec and handshake), and prints one line per case,
a table per group and ``N passed, M failed, K skipped``. The catalogue is in
:mod:`.cases` (one id per case, ``group.what``), the runner in
:mod:`.runner`, the report in :mod:`.report`; docs/conformance.md lists the
cases and the reports against this relay and against Soketi.

From Python::

    results = await run_conformance(Target(url="ws://127.0.0.1:6001", app=Credentials("1", "key", "secret")))
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

import trio

from . import cases as _cases  # noqa: F401  (registers the catalogue)
from .report import case_line, closing_line, dumps, group_table, to_json
from .runner import (
    CASES,
    Case,
    Context,
    Credentials,
    Failed,
    Level,
    Result,
    Skipped,
    Status,
    Target,
    case,
    run_cases,
    select_cases,
)

__all__ = [
    "CASES",
    "Case",
    "Context",
    "Credentials",
    "Failed",
    "Level",
    "Result",
    "Skipped",
    "Status",
    "Target",
    "add_parser",
    "case",
    "case_line",
    "closing_line",
    "command",
    "group_table",
    "run_cases",
    "run_conformance",
    "select_cases",
    "to_json",
]


async def run_conformance(
    target: Target, *, only: Iterable[str] = (), on_result: object = None
) -> list[Result]:
    """Run the catalogue (the groups or ids in ``only``, if given) against ``target``."""
    chosen = select_cases(CASES, only, pipe=target.pipe)
    callback = on_result if callable(on_result) else None
    return await run_cases(target, chosen, on_result=callback)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``conformance`` subcommand to ``pipe-relay``'s parser."""
    parser = commands.add_parser(
        "conformance",
        help="test a running Pusher-protocol (and Pipe) server",
        description="Run black-box conformance cases against a running server and report each.",
    )
    parser.add_argument("url", help="the server, ws://HOST:PORT (or wss://)")
    parser.add_argument("--app", required=True, metavar="ID:KEY:SECRET", help="the app the cases use")
    parser.add_argument("--app2", metavar="ID:KEY:SECRET", help="a second app of the server (isolation, foreign keys)")
    parser.add_argument("--only", metavar="GROUPS", default="",
                        help="comma-separated groups or case ids to run (default: all)")
    parser.add_argument("--pipe", action="store_true", help="the server speaks the Pipe: run the pipe group")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--webhook-url", metavar="URL",
                        help="where the server sends the app's webhooks; the kit listens there")
    parser.add_argument("--disabled-key", metavar="KEY", help="the key of a disabled app (case 4003)")
    parser.add_argument("--max-wait", type=float, default=5.0, metavar="SECONDS",
                        help="longest activity_timeout a heartbeat case waits out (default 5)")
    parser.add_argument("--pong-wait", type=float, metavar="SECONDS",
                        help="the server's wait for a pong before closing with 4201, if short")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")


def _target(args: argparse.Namespace) -> Target:
    return Target(
        url=args.url,
        app=Credentials.parse(args.app),
        app2=Credentials.parse(args.app2) if args.app2 else None,
        pipe=args.pipe,
        webhook_url=args.webhook_url,
        disabled_key=args.disabled_key,
        max_wait=args.max_wait,
        pong_wait=args.pong_wait,
    )


def command(args: argparse.Namespace, out: object = None) -> int:
    """Run ``pipe-relay conformance``; returns the exit status (0: nothing failed, 1: failures, 2: usage)."""
    stream = out if out is not None else sys.stdout
    write = getattr(stream, "write")  # noqa: B009
    only = [part for part in args.only.split(",") if part.strip()]
    if args.list:
        for item in select_cases(CASES, only, pipe=True):
            write(f"{item.id}  [{item.level.value}; {item.ref}] {item.title}\n")
        return 0
    try:
        target = _target(args)
    except ValueError as exc:
        write(f"pipe-relay conformance: {exc}\n")
        return 2
    unknown = [w for w in only if not any(c.group == w.strip() or c.id == w.strip() for c in CASES)]
    if unknown:
        write(f"pipe-relay conformance: no group or case called {', '.join(unknown)}\n")
        return 2

    def printed(result: Result) -> None:
        if not args.json:
            write(case_line(result) + "\n")
            flush = getattr(stream, "flush", None)
            if flush is not None:
                flush()

    try:
        results = trio.run(lambda: run_conformance(target, only=only, on_result=printed))
    except OSError as exc:
        write(f"pipe-relay conformance: {exc}\n")
        return 2
    if args.json:
        write(dumps(results, target=target.url) + "\n")
    else:
        write("\n" + group_table(results) + "\n\n" + closing_line(results) + "\n")
    return 1 if any(r.status is Status.FAIL for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipe_trio.conformance``: the same as ``pipe-relay conformance``."""
    parser = argparse.ArgumentParser(prog="pipe-relay")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return command(parser.parse_args(["conformance", *(argv if argv is not None else sys.argv[1:])]))
