"""Results that come later: a pipe request answered once other nodes have.

On one relay every pipe request is answered at once. In a cluster some need
other nodes first (``send_to_socket`` to a socket elsewhere, an
``auth_response`` for a socket elsewhere, ``subscribe`` checked against the
cluster's groups): the method returns a :class:`Later`, and the reply goes
out when it settles, in whatever call brings the last answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..pipe.codec import PipeFrameError

__all__ = ["Later", "gather"]


class Later:
    """A value, or a :class:`~pipe_proto.pipe.codec.PipeFrameError`, not known yet."""

    __slots__ = ("_callbacks", "_error", "_settled", "_value")

    def __init__(self) -> None:
        self._settled = False
        self._value: Any = None
        self._error: PipeFrameError | None = None
        self._callbacks: list[Callable[[Any, PipeFrameError | None], None]] = []

    @property
    def settled(self) -> bool:
        """Whether the value (or error) is known."""
        return self._settled

    def resolve(self, value: Any) -> None:
        """Settle with ``value`` (once; later calls are ignored)."""
        self._settle(value, None)

    def fail(self, error: PipeFrameError) -> None:
        """Settle with an error (once)."""
        self._settle(None, error)

    def _settle(self, value: Any, error: PipeFrameError | None) -> None:
        if self._settled:
            return
        self._settled, self._value, self._error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(value, error)

    def then(self, callback: Callable[[Any, PipeFrameError | None], None]) -> None:
        """Call ``callback(value, error)`` when settled (at once if it is)."""
        if self._settled:
            callback(self._value, self._error)
        else:
            self._callbacks.append(callback)


def gather(items: Sequence[Any], combine: Callable[[list[Any]], Any]) -> Any:
    """``combine(values)`` once every :class:`Later` among ``items`` settled (others are values).

    Returns the combined value at once when nothing is later, else a
    :class:`Later` of it. An error in an item is kept as that item's value
    (a batch reports each call's outcome).
    """
    pending = [i for i, item in enumerate(items) if isinstance(item, Later)]
    if not pending:
        return combine(list(items))
    values = list(items)
    result = Later()
    left = len(pending)

    def settled(index: int) -> Callable[[Any, PipeFrameError | None], None]:
        def done(value: Any, error: PipeFrameError | None) -> None:
            nonlocal left
            values[index] = error if error is not None else value
            left -= 1
            if not left:
                result.resolve(combine(values))

        return done

    for index in pending:
        items[index].then(settled(index))
    return result
