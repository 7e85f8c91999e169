"""Table-driven state machines: the legal moves of a machine as one table.

Theory of operation. A machine's states and inputs are Enums, and its legal
moves are one table, ``{(state, input): (action, next_state)}`` (the action
is what the owner must do, or ``None``). :meth:`Transitions.move` looks the
pair up, moves the owner to the next state and returns the action. A pair
missing from the table is a misuse of the API: the owner moves to the
table's *final* state (CLOSED, EXPIRED) and :class:`LocalProtocolError` is
raised, so a misused object refuses further calls instead of carrying on in
a state nobody designed.

The table lives once per class, not per object: the owner keeps its state in
a plain ``state`` attribute (read on hot paths without a call) and passes
itself to :meth:`~Transitions.move`. The Pusher connection
(:mod:`pipe_proto.pusher.connection`), the Pipe client
(:mod:`pipe_proto.pipe.client`) and the heartbeat (:mod:`pipe_proto.liveness`)
are built on it; :attr:`Transitions.moves` is there for tests and diagrams.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Generic, Protocol, TypeVar

from .errors import LocalProtocolError

__all__ = ["Stateful", "Transitions"]

_S = TypeVar("_S", bound=Enum)
_I = TypeVar("_I", bound=Enum)
_A = TypeVar("_A")


class Stateful(Protocol[_S]):
    """Anything with a ``state`` attribute a table moves."""

    state: _S


class Transitions(Generic[_S, _I, _A]):
    """The legal moves of one kind of machine.

    Args:
        moves: ``{(state, input): (action, next_state)}``, every legal move.
        final: where an illegal move leaves the machine.
    """

    __slots__ = ("final", "moves")

    def __init__(self, moves: Mapping[tuple[_S, _I], tuple[_A | None, _S]], *, final: _S) -> None:
        self.moves = dict(moves)
        self.final = final

    def move(self, owner: Stateful[_S], event: _I) -> _A | None:
        """Apply ``event`` to ``owner``: set its next state and return the move's action.

        Raises:
            LocalProtocolError: the move is not in the table; ``owner`` is
                left in the final state.
        """
        try:
            action, owner.state = self.moves[(owner.state, event)]
        except KeyError:
            state, owner.state = owner.state, self.final
            raise LocalProtocolError(f"cannot {event.value} when {state.value}") from None
        return action
