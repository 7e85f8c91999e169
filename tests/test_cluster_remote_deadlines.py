"""Requests between nodes time out in the order they were made, whatever answers meanwhile."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from pipe_proto.cluster.remote import REMOTE_TIMEOUT, RemoteRequests


class _Directory:
    """What RemoteRequests uses of a ClusterDirectory: tokens, calls, its node's name."""

    node = "node-a"

    def __init__(self) -> None:
        self.tokens = 0
        self.calls: list[tuple[Any, ...]] = []

    def expect_many(self) -> str:
        self.tokens += 1
        return str(self.tokens)

    def call(self, *args: Any) -> None:
        self.calls.append(args)


def _requests() -> RemoteRequests:
    return RemoteRequests(_Directory())  # type: ignore[arg-type]


def _settled(later: Any) -> list[Any]:
    seen: list[Any] = []
    later.then(lambda value, error: seen.append(error if error is not None else value))
    return seen


STATE: Any = SimpleNamespace(app=SimpleNamespace(id="1"))


def test_the_next_deadline_is_the_oldest_request_still_waiting() -> None:
    remote = _requests()
    assert remote.next_deadline() == math.inf
    first, count = remote.count(0.0)
    asked = remote.ask("node-b", STATE, "ss", ([], "{}"), 1.0, 0)
    _, later_count = remote.count(2.0)
    assert remote.next_deadline() == REMOTE_TIMEOUT
    # The oldest is answered: the next one's deadline comes first.
    remote.expecting(first, 1)
    assert remote.answered(first, "3")
    assert _settled(count.later) == [3]
    assert remote.next_deadline() == 1.0 + REMOTE_TIMEOUT
    # The ask times out with its default; the last count still waits.
    remote.tick(1.5 + REMOTE_TIMEOUT)
    assert _settled(asked) == [0]
    assert not later_count.later.settled
    assert remote.next_deadline() == 2.0 + REMOTE_TIMEOUT
    remote.tick(2.0 + REMOTE_TIMEOUT)
    assert _settled(later_count.later) == [0]
    assert remote.next_deadline() == math.inf


def test_a_request_made_with_an_earlier_clock_waits_as_long_as_the_last_one() -> None:
    remote = _requests()
    remote.count(10.0)
    _, late = remote.count(3.0)  # a caller whose clock went back
    remote.tick(9.0 + REMOTE_TIMEOUT)
    assert not late.later.settled
    assert remote.next_deadline() == 10.0 + REMOTE_TIMEOUT


def test_many_answered_requests_leave_the_deadline_of_the_one_still_waiting() -> None:
    remote = _requests()
    tokens = [remote.count(float(i))[0] for i in range(1000)]
    for token in tokens[:-1]:
        remote.expecting(token, 0)
    assert remote.next_deadline() == 999.0 + REMOTE_TIMEOUT
