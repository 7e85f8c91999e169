"""The benchmark suite, tiny: keeps bench/ working (figures are printed, never asserted).

Not part of the unit run (``testpaths`` leaves bench/ out): ``tests/run`` runs it
as a step of its own after the test suite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness.repeat import combine
from harness.servers import MAX_BATCH

ROOT = Path(__file__).resolve().parents[1]
SOKETI = ROOT / "bench" / "soketi" / "node_modules" / "@soketi" / "soketi" / "bin" / "server.js"

pytestmark = pytest.mark.slow

#: The relay, as bench/run.py --relay takes it.
RELAY = (
    f"{sys.executable} -m pipe_trio.cli serve --host {{host}} --port {{port}} --config {{config}}"
    " --log-level warning"
)


def test_quick_benchmark_runs_every_scenario_on_every_server(tmp_path: Path) -> None:
    """bench/run.py --quick runs every scenario against Soketi (or the baseline), the relay and
    the relay's cluster set-ups, and writes their results."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (tests/run installs it)")
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--relay", RELAY, "--results-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())["results"]
    assert {name.split()[0] for name in results} == {"S1", "S2", "S3", "S4", "S5"}
    other = "soketi" if SOKETI.exists() else "baseline"
    for name, by_server in results.items():
        for server, result in by_server.items():
            assert "error" not in result, (name, server, result)
        assert "relay" in by_server, name
        relay_only = name.startswith("S4") or "via the Pipe" in name
        no_baseline = "storm" in name or "batches of" in name  # the baseline has neither storm nor REST batches
        if not relay_only and (other == "soketi" or not no_baseline):
            assert other in by_server, (name, by_server)
    storm = next(by for name, by in results.items() if "storm" in name)
    assert storm["relay"]["subscribed"] == storm["relay"]["connections"]
    for server in ("relay", "relay --redis", "relay --workers 2", "relay, 2 nodes"):
        assert results["S2 fan-out"][server]["lost"] == 0, server
    assert results["S2 fan-out, relay via the Pipe"]["relay"]["lost"] == 0
    # Every publish carries a whole batch: 100 events per REST request here, 10 in S2.
    big = results[f"S2 fan-out, batches of {MAX_BATCH}"]
    for server in big if other == "soketi" else ["relay"]:
        assert (big[server]["events_per_publish"], big[server]["lost"], big[server]["publisher_stalled"]) == (
            MAX_BATCH, 0, False,
        ), server
    assert results["S2 fan-out"]["relay"]["events_per_publish"] == 10
    assert results["S3 latency under S2 load"]["relay"]["background_events"] > 0
    assert results["S3 latency, idle between events"]["relay, 2 nodes"]["lost"] == 0
    assert results["S4 pipe round trip, 1 backend"]["relay"]["round_trips"] > 0
    assert results["S4 pipe round trip, 1 backend"]["relay, 2 nodes"]["round_trips"] > 0
    assert results["S4 busy backend, 3 backends"]["relay"]["round_trips"] > 0
    if other == "soketi":
        today = results["S4 today's path: client event, webhook, REST"]
        assert today["soketi"]["round_trips"] > 0
        assert today["relay"]["round_trips"] > 0
    for name, by_server in results.items():
        if name.startswith("S4"):
            for server, result in by_server.items():
                # A closed loop that gets an error (a rate limit, say) or no answer stalls its socket.
                assert (result["errors"], result["unanswered"]) == (0, 0), (name, server)
    assert f"relay/{other}" in completed.stdout
    assert "relay --workers 2/relay" in completed.stdout


def test_repeated_runs_read_as_medians_and_the_worst_failure() -> None:
    """--repeat: a measurement is the runs' median; a maximum or a failure count the worst run's."""
    runs = [
        {"connect_rate": 3000.0, "failed": 0, "subscribed": 10, "publisher_stalled": False, "all_subscribed_s": 2.5,
         "latency_max_ms": 9.0, "close_codes": {"4100": 1}, "slow_close_code": 4100, "triggers_failed": 3},
        {"connect_rate": 4000.0, "failed": 2, "subscribed": 8, "publisher_stalled": True, "all_subscribed_s": None,
         "latency_max_ms": 40.0, "close_codes": {}, "slow_close_code": 1006, "triggers_failed": None},
        {"connect_rate": 3500.0, "failed": 0, "subscribed": 10, "publisher_stalled": False, "all_subscribed_s": 2.0,
         "latency_max_ms": 7.0, "close_codes": {"4100": 2, "1006": 1}, "slow_close_code": 4100, "extra": 1.0},
    ]
    combined = combine(runs)
    assert combined["connect_rate"] == 3500.0
    assert (combined["failed"], combined["subscribed"], combined["publisher_stalled"]) == (2, 8, True)
    assert combined["triggers_failed"] == 3  # a run that could not count hides no other run's failures
    assert combined["latency_max_ms"] == 40.0
    assert combined["close_codes"] == {"4100": 2, "1006": 1}
    assert combined["slow_close_code"] == [4100, 1006, 4100]  # codes differ: every run's, not a median
    assert combined["all_subscribed_s"] is None  # one run never had every socket subscribed
    assert combined["extra"] is None  # measured by one run only
    assert combined["runs"] == runs
    assert combine(runs[:1]) is runs[0]
    assert combine(runs[:2])["connect_rate"] == 3000.0  # even N: a figure a run measured, not a mean of two
    failed = combine([runs[0], {"error": "RuntimeError: boom"}])
    assert failed["error"] == "run 2 of 2: RuntimeError: boom"


def test_repeat_runs_rounds_over_every_scenario_and_server(tmp_path: Path) -> None:
    """bench/run.py --repeat 2: two rounds, each a pass over the scenarios with their servers taking
    turns in another order; both runs' figures kept, the lower middle one shown."""
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--repeat", "2", "--only", "S1 idle", "--no-cluster",
         "--relay", RELAY, "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "the median of 2 runs" in completed.stdout
    order = [line[2:] for line in completed.stderr.splitlines() if line.startswith("# S1 idle")]
    servers = [line.split(": ")[1].split(" (")[0] for line in order[:2]]
    assert len(servers) == 2, order
    first, second = servers
    assert order == [
        f"S1 idle 20: {first} (round 1 of 2)", f"S1 idle 20: {second} (round 1 of 2)",
        f"S1 idle 50: {first} (round 1 of 2)", f"S1 idle 50: {second} (round 1 of 2)",
        f"S1 idle 20: {second} (round 2 of 2)", f"S1 idle 20: {first} (round 2 of 2)",
        f"S1 idle 50: {second} (round 2 of 2)", f"S1 idle 50: {first} (round 2 of 2)",
    ]
    (path,) = tmp_path.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["repeat"] == 2
    for name in ("S1 idle 20", "S1 idle 50"):
        for result in doc["results"][name].values():
            assert len(result["runs"]) == 2
            assert result["connect_rate"] == min(run["connect_rate"] for run in result["runs"])
