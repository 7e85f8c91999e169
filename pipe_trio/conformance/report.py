"""The conformance report: one line per case, a table per group, a closing count; or JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .runner import Level, Result, Status

__all__ = ["case_line", "closing_line", "group_table", "to_json"]


def _clip(text: str, width: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def case_line(result: Result) -> str:
    """``PASS|FAIL|SKIP id expected=... got=...``."""
    if result.status is Status.SKIP:
        return f"SKIP {result.case.id} expected={_clip(result.case.title)} got=skipped: {_clip(result.got)}"
    expected = result.expected or result.case.title
    return f"{result.status.value} {result.case.id} expected={_clip(expected)} got={_clip(result.got)}"


def _counts(results: Sequence[Result]) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "failed_decisions": 0}
    for result in results:
        key = {Status.PASS: "passed", Status.FAIL: "failed", Status.SKIP: "skipped"}[result.status]
        counts[key] += 1
        if result.status is Status.FAIL and result.case.level is Level.DECISION:
            counts["failed_decisions"] += 1
    return counts


def group_table(results: Sequence[Result]) -> str:
    """A table of passed, failed (of which relay decisions) and skipped cases per group."""
    groups: dict[str, list[Result]] = {}
    for result in results:
        groups.setdefault(result.case.group, []).append(result)
    rows = [("group", "passed", "failed", "of which decisions", "skipped")]
    for name, members in groups.items():
        c = _counts(members)
        rows.append((name, str(c["passed"]), str(c["failed"]), str(c["failed_decisions"]), str(c["skipped"])))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def closing_line(results: Sequence[Result]) -> str:
    """``N passed, M failed, K skipped``."""
    c = _counts(results)
    return f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"


def to_json(results: Sequence[Result], *, target: str) -> dict[str, Any]:
    """The report as JSON-ready data."""
    c = _counts(results)
    return {
        "target": target,
        "passed": c["passed"],
        "failed": c["failed"],
        "skipped": c["skipped"],
        "results": [
            {
                "id": r.case.id,
                "group": r.case.group,
                "status": r.status.value,
                "level": r.case.level.value,
                "ref": r.case.ref,
                "title": r.case.title,
                "expected": r.expected,
                "got": r.got,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }


def dumps(results: Sequence[Result], *, target: str) -> str:
    """:func:`to_json` as indented text."""
    return json.dumps(to_json(results, target=target), indent=2)
