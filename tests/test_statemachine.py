"""The table-driven machine helper: legal moves, their actions, and the final state after an illegal one."""

from __future__ import annotations

from enum import Enum

import pytest

from pipe_proto import LocalProtocolError
from pipe_proto.statemachine import Transitions


class Door(Enum):
    SHUT = "shut"
    AJAR = "ajar"
    GONE = "gone"


class Push(Enum):
    OPEN = "open"
    SLAM = "slam"


TABLE = Transitions[Door, Push, str](
    {(Door.SHUT, Push.OPEN): ("creak", Door.AJAR), (Door.AJAR, Push.SLAM): (None, Door.SHUT)},
    final=Door.GONE,
)


class Owner:
    def __init__(self, state: Door) -> None:
        self.state = state


def test_a_legal_move_sets_the_next_state_and_returns_its_action() -> None:
    """move() follows the table: the owner's state changes and the action comes back."""
    owner = Owner(Door.SHUT)
    assert TABLE.move(owner, Push.OPEN) == "creak"
    assert owner.state is Door.AJAR
    assert TABLE.move(owner, Push.SLAM) is None
    assert owner.state is Door.SHUT


def test_an_illegal_move_raises_and_leaves_the_final_state() -> None:
    """A pair missing from the table raises LocalProtocolError naming it, and the owner is left final."""
    owner = Owner(Door.SHUT)
    with pytest.raises(LocalProtocolError, match="cannot slam when shut"):
        TABLE.move(owner, Push.SLAM)
    assert owner.state is Door.GONE
    with pytest.raises(LocalProtocolError):
        TABLE.move(owner, Push.OPEN)
    assert owner.state is Door.GONE
