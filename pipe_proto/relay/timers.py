"""Deadlines: a heap of ``(when, key)`` that tolerates moved and dead entries.

A connection's deadline moves on every frame it sends; re-pushing it each
time would cost a heap operation per message. Instead an entry stays in the
heap with the deadline it had when pushed, and whoever pops it checks the
key's current deadline: still in the future, it is pushed again; the key is
gone (a closed connection), it is skipped. The owner rebuilds the heap when
dead entries outnumber live ones (:meth:`reset`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator

__all__ = ["Deadlines"]


class Deadlines:
    """A min-heap of deadlines keyed by strings."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, key: str) -> None:
        """Remember that ``key`` has something to do at ``when``."""
        heapq.heappush(self._heap, (when, key))

    def next(self) -> float:
        """The earliest deadline (``inf`` when there is none)."""
        return self._heap[0][0] if self._heap else math.inf

    def due(self, now: float) -> Iterator[str]:
        """Pop and yield the keys whose entries are due at ``now``.

        Entries pushed while iterating are seen too if they are due.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)[1]

    def reset(self, entries: Iterable[tuple[float, str]]) -> None:
        """Replace every entry."""
        self._heap = list(entries)
        heapq.heapify(self._heap)
