"""Departures that wait, so that a quick return cancels both.

A channel vacated and occupied again within a moment, or a presence member
who leaves and comes back, is one change too many to report: Pusher holds
``channel_vacated`` and ``member_removed`` webhooks for a few seconds and
drops them, with the arrival that follows, when the channel or member comes
back in time (pusher-channels.md 10). :class:`Departures` is that rule, for
webhooks (:mod:`pipe_proto.webhooks`) and for pipe notifications
(:mod:`pipe_proto.relay.pipes`) alike. It holds items, not events of a
particular kind; the caller decides what a departure and an arrival are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["LEAVE_DELAY", "Departures"]

#: Seconds a departure waits before it is reported.
LEAVE_DELAY = 3.0

_T = TypeVar("_T")


class Departures(Generic[_T]):
    """Held departures, by key, in the order they happened.

    Args:
        delay: seconds each departure is held.
    """

    def __init__(self, delay: float = LEAVE_DELAY) -> None:
        self.delay = delay
        #: key -> (due time, item, match); insertion order is due order (the delay is constant).
        self._held: dict[Hashable, tuple[float, _T, Any]] = {}

    def hold(self, key: Hashable, item: _T, now: float, match: Any = None) -> None:
        """Hold the departure ``item`` of ``key`` until ``now + delay``.

        ``match`` is what an arrival must bring to cancel it (for a presence
        member, its ``user_info``: a member back with other info is news).
        """
        # Removed first so that it goes last: the dict's order stays due order.
        self._held.pop(key, None)
        self._held[key] = (now + self.delay, item, match)

    def arrive(self, key: Hashable, match: Any = None) -> tuple[bool, _T | None]:
        """``key`` arrived: ``(True, None)`` when that cancelled its held departure.

        Otherwise ``(False, item)``: ``item`` is a held departure of ``key``
        that the arrival does not cancel (its ``match`` differs), to report
        before the arrival; ``None`` when nothing was held. Call
        :meth:`due` first: a departure already due is not cancelled.
        """
        held = self._held.pop(key, None)
        if held is None:
            return False, None
        _, item, expected = held
        if expected == match:
            return True, None
        return False, item

    def due(self, now: float) -> Iterator[_T]:
        """Take the departures due at ``now``, oldest first."""
        held = self._held
        while held:
            key, (due, item, _) = next(iter(held.items()))
            if due > now:
                return
            del held[key]
            yield item

    def oldest(self) -> _T:
        """Take the oldest departure, due or not (to keep the number held bounded)."""
        key = next(iter(self._held))
        return self._held.pop(key)[1]

    def discard(self, unwanted: Callable[[_T], bool]) -> None:
        """Forget the held departures for which ``unwanted(item)`` is true."""
        self._held = {k: v for k, v in self._held.items() if not unwanted(v[1])}

    def next_deadline(self) -> float:
        """When :meth:`due` next has something."""
        for due, _, _ in self._held.values():
            return due
        return math.inf

    def __len__(self) -> int:
        return len(self._held)
