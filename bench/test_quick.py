"""The benchmark suite, tiny: keeps bench/ working (figures are printed, never asserted).

Not part of the unit run (``testpaths`` leaves bench/ out): ``tests/run`` runs it
as a step of its own after the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_quick_benchmark_runs_every_scenario_on_both_servers(tmp_path: Path) -> None:
    """bench/run.py --quick runs S1-S5 against the baseline and the relay and writes their results."""
    relay = (
        f"{sys.executable} -m pipe_trio.cli serve --host {{host}} --port {{port}}"
        " --config bench/relay.toml --log-level warning"
    )
    args = ["--quick", "--relay", relay, "--relay-publish", "pipe", "--results-dir", str(tmp_path)]
    completed = subprocess.run(
        [sys.executable, "bench/run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())["results"]
    assert {name.split()[0] for name in results} == {"S1", "S2", "S3", "S4", "S5"}
    for name, by_server in results.items():
        assert "error" not in by_server["relay"], (name, by_server["relay"])
        if not name.startswith("S4"):
            assert "error" not in by_server["baseline"], (name, by_server["baseline"])
    assert results["S2 fan-out"]["relay"]["lost"] == 0
    assert results["S2 fan-out, relay via REST"]["relay"]["lost"] == 0
    assert results["S4 pipe round trip, 1 backend"]["relay"]["round_trips"] > 0
    assert results["S4 busy backend, 3 backends"]["relay"]["round_trips"] > 0
    assert "relay/baseline" in completed.stdout
