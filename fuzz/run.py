"""Run fuzz targets as long campaigns: ``python fuzz/run.py [--minutes N] [target ...]``.

Each target's properties run round-robin, in chunks of random Hypothesis
examples with no deadline, until the target's share of the time is used up
(the time is split evenly between the targets). Every distinct failure is
shrunk by Hypothesis, written to ``fuzz/corpus/<target>/crash-<hash>.json``
(the input plus a note saying what failed) and printed; the target's replay
test runs it from then on. The exit status is 1 when anything failed.

``--engine atheris`` drives the byte-level properties with atheris's
coverage-guided mutator instead, through Hypothesis's ``fuzz_one_input``
(``pip install atheris`` first; the state-machine target stays on Hypothesis).

Targets: pusher_codec, pipe_codec, relay, rest, signatures (default: all).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("FUZZ_PROFILE", "long")

from fuzz._support import PROPERTIES, RECORDER, campaign_settings, save_entry  # noqa: E402

TARGETS = ["pusher_codec", "pipe_codec", "relay", "rest", "signatures", "wsframes", "upgrade"]

Runnable = tuple[str, Callable[[Any], None], int]


def runnables(target: str) -> list[Runnable]:
    """``(name, run(settings), first chunk size)`` for every property of ``target``."""
    module = importlib.import_module(f"fuzz.fuzz_{target}")
    found: list[Runnable] = [(p.name, lambda chosen, p=p: p.build(chosen)(), 200) for p in PROPERTIES.get(target, [])]
    found.extend(getattr(module, "CAMPAIGN", []))
    return found


def save_failures(target: str, seen: set[str]) -> list[Path]:
    """Write every new distinct failure of ``target`` as a corpus file and print it."""
    saved = []
    for key, (found, exc) in RECORDER.failures.get(target, {}).items():
        if key in seen:
            continue
        seen.add(key)
        entry = {**copy.deepcopy(found), "note": f"found by fuzz/run.py: {key}: {str(exc)[:300]}"}
        path = save_entry(target, entry, "crash")
        saved.append(path)
        print(f"\n*** {target}: {key}\n    {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        print(f"    input saved to {path.relative_to(ROOT)}:")
        text = json.dumps({k: v for k, v in entry.items() if k != "note"}, ensure_ascii=True)
        print("    " + (text if len(text) < 2000 else text[:2000] + " ..."))
    return saved


def campaign(target: str, seconds: float, chunk_seconds: float) -> dict[str, Any]:
    """Run ``target`` for ``seconds``; returns its report."""
    items = runnables(target)
    sizes = {name: size for name, _, size in items}
    disabled: set[str] = set()
    seen: set[str] = set()
    saved: list[Path] = []
    chunks = 0
    start = time.monotonic()
    before = dict(RECORDER.counts)
    while time.monotonic() - start < seconds and len(disabled) < len(items):
        for name, run, _ in items:
            left = seconds - (time.monotonic() - start)
            if name in disabled or left <= 0:
                continue
            began = time.monotonic()
            try:
                run(campaign_settings(sizes[name]))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                new = save_failures(target, seen)
                saved += new
                if not new:
                    print(f"\n*** {target}.{name} failed without a recorded input:")
                    traceback.print_exception(exc, limit=-4)
                # A property that keeps failing the same way would only find its bug again.
                disabled.add(name)
                print(f"    ({target}.{name} stops here; fix and rerun to search further)")
            chunks += 1
            took = max(time.monotonic() - began, 1e-3)
            # Aim each chunk at chunk_seconds, and never far past the target's time.
            wanted = min(chunk_seconds, max(1.0, seconds - (time.monotonic() - start)))
            sizes[name] = max(5, min(20_000, int(sizes[name] * wanted / took)))
    elapsed = time.monotonic() - start
    counts = {k: v - before.get(k, 0) for k, v in RECORDER.counts.items() if v != before.get(k, 0)}
    return {"target": target, "seconds": round(elapsed, 1), "chunks": chunks, "checked": counts,
            "crashes": [str(p.relative_to(ROOT)) for p in saved]}


# ------------------------------------------------------------------ atheris


def atheris_child(spec: str, seconds: int) -> None:
    """Run one property under atheris (in its own process: atheris exits when done)."""
    import atheris

    target, name = spec.split(":")
    with atheris.instrument_imports(include=["pipe_proto"]):
        importlib.import_module(f"fuzz.fuzz_{target}")
    prop = next(p for p in PROPERTIES[target] if p.name == name)
    test = prop.build(campaign_settings(1))
    seen: set[str] = set()

    def one_input(data: bytes) -> None:
        try:
            test.hypothesis.fuzz_one_input(data)  # type: ignore[attr-defined]
        except BaseException as exc:
            RECORDER.failed(target, exc)
            save_failures(target, seen)
            raise

    atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-print_final_stats=1"], one_input)
    atheris.Fuzz()


def atheris_campaign(target: str, seconds: float) -> dict[str, Any]:
    names = [p.name for p in (importlib.import_module(f"fuzz.fuzz_{target}") and PROPERTIES.get(target, []))]
    if not names:
        return {"target": target, "skipped": "no byte-level property (state machines run on Hypothesis)"}
    each = max(5, int(seconds / len(names)))
    report: dict[str, Any] = {"target": target, "engine": "atheris", "runs": {}}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--atheris-child", f"{target}:{name}", "--seconds", str(each)],
            capture_output=True, text=True, cwd=ROOT, check=False,
        )
        stats = [line for line in proc.stderr.splitlines() if line.startswith("stat::")]
        runs = next((line.split(":")[-1].strip() for line in stats if "number_of_executed_units" in line), "?")
        report["runs"][name] = {"executions": runs, "exit": proc.returncode}
        if proc.stdout.strip():
            print(proc.stdout)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help=f"targets to run (default: all of {', '.join(TARGETS)})")
    parser.add_argument("--minutes", type=float, default=5.0, help="total time for all targets (default 5)")
    parser.add_argument("--chunk-seconds", type=float, default=30.0, help="length of one Hypothesis run")
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--report", type=Path, help="also write the campaign report as JSON here")
    parser.add_argument("--atheris-child", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=60, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.atheris_child:
        atheris_child(args.atheris_child, args.seconds)
        return 0
    targets = args.targets or TARGETS
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    share = args.minutes * 60 / len(targets)
    reports = []
    for target in targets:
        print(f"=== {target}: {share:.0f} s ({args.engine})", flush=True)
        if args.engine == "atheris":
            report = atheris_campaign(target, share)
        else:
            report = campaign(target, share, args.chunk_seconds)
        print(json.dumps(report), flush=True)
        reports.append(report)
    if args.report:
        args.report.write_text(json.dumps(reports, indent=1) + "\n")
    return 1 if any(r.get("crashes") for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
