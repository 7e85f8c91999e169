"""Several runs of one scenario on one server, read as one result (``bench/run.py --repeat N``).

This machine's speed drifts by tens of percent within minutes (other
guests share it), so one run can favour whichever server ran while it was
fast. ``--repeat`` runs N rounds, each a whole pass over the scenarios in
which a scenario's servers take turns (each round in another order), and
the printed tables show, per figure:

* the median of the N runs for a measurement (a rate, a CPU figure, a
  percentile); with an even N, the lower of the middle two, so that every
  figure shown is one a run measured;
* the largest of the runs for a maximum (the latency max, peak RSS, RSS
  growth, the slow consumer's largest queues) and for how busy the machine's
  other processes kept it;
* the worst run for a count of what must not happen (connections failed,
  deliveries lost, ...), so one bad run is never hidden by good ones, and a
  stall in any run; close codes seen are counted per code as in the run that
  saw the most of each;
* for a value that is not a measurement (a close code, a reason), the value
  if every run had it, else every run's value in order;
* "missing" (``None``) for a measurement some run lacks while others have
  it (the storm's ``all_subscribed_s`` is ``None`` when not every socket
  subscribed).

Every run's own figures stay in the JSON, under ``runs``.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["combine"]

#: Counts of failures: the largest of the runs is reported.
WORST_HIGH = frozenset((
    "lost", "failed", "duplicates", "errors", "subscribers_closed", "subscribers_short", "triggers_failed",
    "unanswered", "webhooks_refused", "sockets_closed", "malformed_frames",
))
#: Counts of successes out of a fixed number: the smallest of the runs is reported.
WORST_LOW = frozenset(("established", "subscribed"))
#: Maxima within a run (and the share of the machine others took): the largest of the runs.
LARGEST = frozenset((
    "latency_max_ms", "rss_peak_mib", "rss_max_growth_mib", "slow_server_send_queue_max_bytes",
    "slow_client_recv_queue_max_bytes", "others_cpu_pct",
))
#: Values that are not measurements: kept as they are, or every run's when they differ.
AS_SEEN = frozenset(("slow_close_code", "slow_close_reason", "type"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _worst_counts(tables: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        for code, count in table.items():
            out[code] = max(out.get(code, 0), count)
    return out


def _one(key: str, values: list[Any]) -> Any:
    if key in AS_SEEN:
        return values[0] if all(v == values[0] for v in values) else values
    if key in WORST_HIGH | WORST_LOW:
        known = [v for v in values if _number(v)]
        if not known:
            return values[0]
        return max(known) if key in WORST_HIGH else min(known)
    if all(isinstance(v, bool) for v in values):
        return any(values)  # a publisher stalled in any run stalled
    if all(isinstance(v, dict) for v in values) and all(_number(c) for v in values for c in v.values()):
        return _worst_counts(values)  # close codes and their counts
    if all(_number(v) for v in values):
        return max(values) if key in LARGEST else statistics.median_low(values)
    if any(v is None for v in values) and any(_number(v) for v in values):
        return None
    return values[0]  # lists of samples and the like: the first run's


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the results of several runs (see the module's docstring).

    A run that failed makes the result an error naming it; one run is
    returned as it is. A figure some runs lack counts as ``None`` in those.
    """
    if len(runs) == 1:
        return runs[0]
    for index, run in enumerate(runs, 1):
        if "error" in run:
            return {"error": f"run {index} of {len(runs)}: {run['error']}", "runs": runs}
    keys = list(dict.fromkeys(key for run in runs for key in run))
    combined = {key: _one(key, [run.get(key) for run in runs]) for key in keys}
    combined["runs"] = runs
    return combined
