"""Several runs of one scenario on one server, read as one result (``bench/run.py --repeat N``).

This machine's speed drifts by tens of percent within minutes (other
guests share it), so one run can favour whichever server ran while it was
fast. ``--repeat`` runs the servers of a scenario in turn, N rounds, and the
printed tables show, per figure:

* the median of the N runs for a measurement (a rate, a CPU figure, a
  latency);
* the worst run for a count of what must not happen (connections failed,
  deliveries lost, ...), so one bad run is never hidden by good ones;
* "missing" (``None``) if any run had no value where others had one (the
  storm's ``all_subscribed_s`` is ``None`` when not every socket subscribed).

Every run's own figures stay in the JSON, under ``runs``.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["combine"]

#: Counts of failures: the largest of the runs is reported.
WORST_HIGH = frozenset((
    "lost", "failed", "duplicates", "errors", "subscribers_closed", "subscribers_short", "triggers_failed",
    "unanswered", "webhooks_refused",
))
#: Counts of successes out of a fixed number: the smallest of the runs is reported.
WORST_LOW = frozenset(("established", "subscribed"))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _one(key: str, values: list[Any]) -> Any:
    if all(_number(v) for v in values):
        if key in WORST_HIGH:
            return max(values)
        if key in WORST_LOW:
            return min(values)
        return statistics.median(values)
    if all(isinstance(v, bool) for v in values):
        return any(values)  # a publisher stalled in any run stalled
    if any(v is None for v in values) and any(_number(v) for v in values):
        return None
    return values[0]  # text, lists, samples: the first run's


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the results of several runs (see the module's docstring).

    A run that failed makes the result an error naming it; one run is
    returned as it is.
    """
    if len(runs) == 1:
        return runs[0]
    for index, run in enumerate(runs, 1):
        if "error" in run:
            return {"error": f"run {index} of {len(runs)}: {run['error']}", "runs": runs}
    keys = [key for key in runs[0] if all(key in run for run in runs)]
    combined = {key: _one(key, [run[key] for run in runs]) for key in keys}
    combined["runs"] = runs
    return combined
