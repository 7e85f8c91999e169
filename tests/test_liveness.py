"""The heartbeat machine: every (state, input) pair of its table, and the timing it produces."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipe_proto.errors import LocalProtocolError
from pipe_proto.liveness import _TRANSITIONS, Liveness, LivenessAction, LivenessState, _Input

ACTIVE, PROBING, EXPIRED = LivenessState.ACTIVE, LivenessState.PROBING, LivenessState.EXPIRED
PROBE, EXPIRE = LivenessAction.PROBE, LivenessAction.EXPIRE

# The whole table as the spec (section 2) describes it; None marks an illegal pair.
EXPECTED: dict[tuple[LivenessState, _Input], tuple[LivenessAction | None, LivenessState] | None] = {
    (ACTIVE, _Input.HEARD): (None, ACTIVE),
    (ACTIVE, _Input.IDLE_DEADLINE): (PROBE, PROBING),
    (ACTIVE, _Input.GRACE_DEADLINE): None,
    (PROBING, _Input.HEARD): (None, ACTIVE),
    (PROBING, _Input.IDLE_DEADLINE): None,
    (PROBING, _Input.GRACE_DEADLINE): (EXPIRE, EXPIRED),
    (EXPIRED, _Input.HEARD): (None, EXPIRED),
    (EXPIRED, _Input.IDLE_DEADLINE): None,
    (EXPIRED, _Input.GRACE_DEADLINE): None,
}


def test_expected_table_covers_every_pair() -> None:
    """The table above names every (state, input) pair, and the legal ones are exactly _TRANSITIONS."""
    assert set(EXPECTED) == set(itertools.product(LivenessState, _Input))
    assert {k: v for k, v in EXPECTED.items() if v is not None} == _TRANSITIONS.moves
    assert _TRANSITIONS.final is EXPIRED


@pytest.mark.parametrize(("state", "event"), list(EXPECTED), ids=[f"{s.name}-{i.name}" for s, i in EXPECTED])
def test_every_state_input_pair(state: LivenessState, event: _Input) -> None:
    """A legal pair returns its action and moves on; an illegal one raises LocalProtocolError and expires."""
    machine = Liveness(0.0, 10.0, 5.0)
    machine.state = state
    outcome = EXPECTED[(state, event)]
    if outcome is None:
        with pytest.raises(LocalProtocolError):
            _TRANSITIONS.move(machine, event)
        assert machine.state is EXPIRED
        assert machine.deadline() == math.inf
        assert machine.poll(1e9) is None
    else:
        assert _TRANSITIONS.move(machine, event) is outcome[0]
        assert machine.state is outcome[1]


def test_probe_after_idle_then_expire_after_grace() -> None:
    """Silent for idle seconds: PROBE; silent grace more seconds: EXPIRE; then nothing more."""
    machine = Liveness(100.0, 120.0, 30.0)
    assert machine.deadline() == 220.0
    assert machine.poll(219.999) is None
    assert machine.state is ACTIVE
    assert machine.poll(220.0) is PROBE
    assert machine.state is PROBING
    assert machine.deadline() == 250.0
    assert machine.poll(249.9) is None
    assert machine.poll(250.0) is EXPIRE
    assert machine.state is EXPIRED
    assert machine.deadline() == math.inf
    assert machine.poll(10_000.0) is None


def test_late_poll_measures_grace_from_the_probe() -> None:
    """A poll that comes late probes at that time, and the grace counts from the probe actually sent."""
    machine = Liveness(0.0, 10.0, 5.0)
    assert machine.poll(50.0) is PROBE
    assert machine.poll(54.0) is None
    assert machine.poll(55.0) is EXPIRE


def test_hearing_resets_the_idle_timer() -> None:
    """Anything heard moves the idle deadline to idle seconds after it."""
    machine = Liveness(0.0, 10.0, 5.0)
    machine.heard(8.0)
    assert machine.poll(10.0) is None
    assert machine.deadline() == 18.0
    assert machine.poll(18.0) is PROBE


def test_hearing_answers_a_probe() -> None:
    """Hearing from the peer while probing makes it active again, with a fresh idle period."""
    machine = Liveness(0.0, 10.0, 5.0)
    assert machine.poll(10.0) is PROBE
    machine.heard(12.0)
    assert machine.state is ACTIVE
    assert machine.poll(15.0) is None
    assert machine.poll(21.9) is None
    assert machine.poll(22.0) is PROBE


def test_heard_after_expiry_changes_nothing() -> None:
    """Frames still in flight after expiry leave the machine expired."""
    machine = Liveness(0.0, 1.0, 1.0)
    machine.poll(1.0)
    machine.poll(2.0)
    machine.heard(2.5)
    assert machine.state is EXPIRED
    assert machine.poll(100.0) is None


@pytest.mark.parametrize(("idle", "grace"), [(0, 1), (1, 0), (-1, 1), (1, -5)])
def test_idle_and_grace_must_be_positive(idle: float, grace: float) -> None:
    """A zero or negative idle or grace period is refused."""
    with pytest.raises(LocalProtocolError):
        Liveness(0.0, idle, grace)


@given(
    idle=st.floats(min_value=0.5, max_value=200),
    grace=st.floats(min_value=0.5, max_value=60),
    gaps=st.lists(st.floats(min_value=0, max_value=0.99), max_size=30),
    poll_first=st.booleans(),
)
def test_never_probed_while_heard_within_idle(idle: float, grace: float, gaps: list[float], poll_first: bool) -> None:
    """A peer heard more often than every idle seconds is never probed; once silent it is probed, then expired."""
    machine = Liveness(0.0, idle, grace)
    now = 0.0
    for gap in gaps:
        now += gap * idle
        if poll_first:
            assert machine.poll(now) is None
        machine.heard(now)
        assert machine.poll(now) is None
    assert machine.poll(now + idle) is PROBE
    assert machine.poll(now + idle + grace) is EXPIRE
