#!/usr/bin/env python3
"""Benchmarks of the relay beside Soketi 1.6.1 (and a plain asyncio + `websockets` baseline).

    python bench/run.py --relay CMD     # full suite (tens of minutes)
    python bench/run.py --quick ...     # tiny sizes, ~1 s phases: checks that the code works
    python bench/run.py --relay '.venv/bin/pipe-relay serve --host {host} --port {port} --config {config}'
    python bench/run.py --repeat 3 --only "S1 idle 10000,S1 reconnect" --relay ...   # medians of 3 runs

Every scenario runs against a freshly started server: Soketi (bench/soketi,
when installed) where it can run the scenario, the baseline where Soketi
cannot (or everywhere with --baseline), then the relay if --relay is given,
then the relay's cluster set-ups (--redis, --workers 2, two nodes; each with
a redis-server of its own) for the scenarios that have them. In the relay's
command, {host} and {port} are replaced by the listening address; {api_port},
if present, gets a second port for the REST API (otherwise REST is expected
on {port}); {config} by a copy of bench/relay.toml with the run's webhook
receiver added (the webhook scenario needs it). Prints the tables and writes
everything to bench/results/<timestamp>.json. Exit status 1 if a scenario
failed for any server; timings are never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# So that `harness` is importable when this file is loaded from elsewhere (tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import repeat, report, scenarios
from harness.loadgen import LOADGEN_DIR, ensure_installed
from harness.servers import RunningServer, ServerSpec, baseline_spec, cluster_variants, relay_spec, soketi_spec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes and durations (for the test suite)")
    p.add_argument("--relay", metavar="CMD", help="command line starting the relay ({host}, {port}, {api_port})")
    p.add_argument("--relay-publish", choices=["rest", "pipe"], default="rest", help="how events reach the relay")
    p.add_argument("--relay-app", default="1:key:secret", metavar="ID:KEY:SECRET", help="the app the relay serves")
    p.add_argument("--no-soketi", action="store_true", help="leave Soketi out (the baseline takes its place)")
    p.add_argument("--baseline", action="store_true", help="run the baseline in every scenario it can run")
    p.add_argument("--no-cluster", action="store_true", help="leave the relay's cluster set-ups out")
    p.add_argument("--only", metavar="S2,S3", help="comma-separated scenario prefixes to run")
    p.add_argument("--workers", type=int, help="load generator processes (default: 2, 1 with --quick)")
    p.add_argument("--no-selftest", action="store_true", help="skip measuring the load generator's own ceiling")
    p.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="run every scenario's servers in turn, N rounds; tables show medians (harness/repeat.py)",
    )
    p.add_argument("--results-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def raise_fd_limit() -> int:
    # 10k client sockets in the load generator and 10k in the server: children inherit this.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine() -> dict[str, Any]:
    node = ensure_installed()
    return {
        "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
        "node": subprocess.run([node, "--version"], check=False, capture_output=True, text=True).stdout.strip(),
        "websockets": importlib.metadata.version("websockets"), "nofile": raise_fd_limit(),
    }


def loadgen_selftest() -> list[dict[str, Any]]:
    """The load generator's own receive ceiling (see loadgen/selftest.js)."""
    out = subprocess.run(
        [ensure_installed(), str(LOADGEN_DIR / "selftest.js"), "--seconds", "3", "--workers", "1,2"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def run_one(spec: ServerSpec, step: scenarios.Step, cfg: scenarios.Config) -> dict[str, Any]:
    server = RunningServer(spec)
    try:
        await server.start()
        result: dict[str, Any] = await step(server, cfg)
        return result
    except Exception as exc:  # one failure must not hide the other servers' and scenarios' figures
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}".strip()}
    finally:
        server.stop()


def servers(args: argparse.Namespace) -> tuple[list[ServerSpec], dict[str, ServerSpec]]:
    """The compared servers (columns of the first table), and the relay's cluster set-ups by name."""
    soketi = None if args.no_soketi else soketi_spec(args.relay_app)
    specs = [spec for spec in (soketi, baseline_spec()) if spec is not None]
    cluster: dict[str, ServerSpec] = {}
    if args.relay:
        relay = relay_spec(args.relay, args.relay_publish, args.relay_app)
        specs.append(relay)
        if not args.no_cluster:
            cluster = cluster_variants(relay)
    return specs, cluster


def runs(scenario: scenarios.Scenario, specs: list[ServerSpec], args: argparse.Namespace) -> list[ServerSpec]:
    """The servers that run a scenario: the baseline only where Soketi cannot (or with --baseline)."""
    kinds = {s.kind for s in specs}
    chosen = []
    for spec in specs:
        if spec.kind not in scenario.kinds:
            continue
        if spec.kind == "baseline" and not args.baseline and "soketi" in kinds & scenario.kinds:
            continue
        chosen.append(spec)
    return chosen


async def run(args: argparse.Namespace) -> int:
    cfg = scenarios.QUICK if args.quick else scenarios.FULL
    if args.workers:
        cfg = dataclasses.replace(cfg, workers=args.workers)
    specs, cluster = servers(args)
    only = args.only.split(",") if args.only else None
    doc: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "machine": machine(),
        "config": dataclasses.asdict(cfg), "repeat": args.repeat,
        "servers": {s.name: {"command": s.command, "publish": s.publish} for s in [*specs, *cluster.values()]},
        "results": {},
    }
    if not args.quick and not args.no_selftest:
        print("# load generator selftest", file=sys.stderr, flush=True)
        doc["loadgen_selftest"] = loadgen_selftest()

    planned = []
    for scenario in scenarios.plan(cfg):
        if only and not any(scenario.name.startswith(prefix) for prefix in only):
            continue
        chosen = runs(scenario, specs, args) + [cluster[key] for key in scenario.cluster if key in cluster]
        if chosen:
            planned.append((scenario, chosen))
    # Round after round, each a whole pass over the scenarios, every server
    # once a scenario, each round starting one server further on: a machine
    # slowing down or speeding up meanwhile, or a server coming right after
    # another's teardown, weighs on every server and every scenario alike
    # (the Pipe's round trip is read against the webhook path's, another
    # scenario, so they too take turns).
    runs_of: dict[str, dict[str, list[dict[str, Any]]]] = {
        scenario.name: {spec.name: [] for spec in chosen} for scenario, chosen in planned
    }
    for round_ in range(1, args.repeat + 1):
        for scenario, chosen in planned:
            turn = (round_ - 1) % len(chosen)
            for spec in chosen[turn:] + chosen[:turn]:
                of = f" (round {round_} of {args.repeat})" if args.repeat > 1 else ""
                print(f"# {scenario.name}: {spec.name}{of}", file=sys.stderr, flush=True)
                runs_of[scenario.name][spec.name].append(await run_one(spec, scenario.step, cfg))
    for name, by_server in runs_of.items():
        doc["results"][name] = {server: repeat.combine(found) for server, found in by_server.items()}

    names = [s.name for s in specs if any(s.name in by for by in doc["results"].values())]
    ratios = [("relay", other) for other in names if other != "relay"] if "relay" in names else []
    if args.repeat > 1:
        print(
            f"Each figure: the median of {args.repeat} runs; maxima, failures, losses and the like: the"
            " worst run's (bench/harness/repeat.py).\n"
        )
    print(report.table(doc["results"], names, ratios))
    variants = [s.name for s in cluster.values() if any(s.name in by for by in doc["results"].values())]
    if variants:
        print("\nThe relay's cluster set-ups beside one process (the relay column above):")
        shown = {k: v for k, v in doc["results"].items() if set(v) & set(variants)}
        print(report.table(shown, ["relay", *variants], [(c, "relay") for c in variants]))
    for st in doc.get("loadgen_selftest", []):
        print(
            f"load generator ceiling ({st['eventsPerWrite']} event(s) per server write, {st['workers']} worker(s)):"
            f" {st['rate']:,} msg/s at {st['loadgenCpuPct']}% CPU, fake server at {st['blasterCpuPct']}%"
        )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {path}")
    return 1 if any("error" in r for by in doc["results"].values() for r in by.values()) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
