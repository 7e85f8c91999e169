"""Later and gather: results that settle once, combined in order, errors kept per item."""

from __future__ import annotations

from typing import Any

from pipe_proto.pipe.codec import PipeFrameError
from pipe_proto.relay.later import Later, gather


def test_a_later_settles_once_and_tells_every_callback() -> None:
    """Callbacks registered before and after settling see the first value; later settlements are ignored."""
    later = Later()
    seen: list[Any] = []
    later.then(lambda value, error: seen.append((value, error)))
    later.resolve(1)
    later.resolve(2)
    later.fail(PipeFrameError(4222, "no"))
    later.then(lambda value, error: seen.append((value, error)))
    assert seen == [(1, None), (1, None)]


def test_gather_combines_values_at_once_and_laters_when_all_settled() -> None:
    """Plain values combine at once; with Laters, once the last settles, in the items' order, errors as values."""
    assert gather([1, 2], sum) == 3
    first, second = Later(), Later()
    combined = gather([first, 10, second], list)
    assert isinstance(combined, Later)
    seen: list[Any] = []
    combined.then(lambda value, error: seen.append(value))
    error = PipeFrameError(4212, "bad")
    second.fail(error)
    assert seen == []
    first.resolve(1)
    assert seen == [[1, 10, error]]
