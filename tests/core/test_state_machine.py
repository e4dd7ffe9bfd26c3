"""The execution state machine: only the documented transitions, never a duplicate order id."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from chimera_core.errors import IllegalTransition
from chimera_core.state_machine import (
    TRANSITIONS,
    Event,
    ExecutionStateMachine,
    State,
    client_order_id,
)

# The lifecycle, written out independently of the table under test.
EXPECTED = {
    State.IDLE: {Event.ARM: State.READY, Event.HALT: State.HALT},
    State.READY: {Event.DISARM: State.IDLE, Event.FIRE: State.EXECUTE, Event.HALT: State.HALT},
    State.EXECUTE: {
        Event.FILLED: State.COOLDOWN,
        Event.REJECTED: State.COOLDOWN,
        Event.EXPIRED: State.COOLDOWN,
        Event.HALT: State.HALT,
    },
    State.COOLDOWN: {Event.COOLED: State.IDLE, Event.HALT: State.HALT},
    State.HALT: {Event.RESUME: State.IDLE},
}


def test_transition_table_matches_the_lifecycle():
    flat = {(s, e): t for s, row in EXPECTED.items() for e, t in row.items()}
    assert flat == TRANSITIONS


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("event", list(Event))
def test_every_pair_is_accepted_or_refused_as_documented(state, event):
    m = ExecutionStateMachine("2885", 1)
    m.state = state
    expected = EXPECTED[state].get(event)
    if expected is None:
        with pytest.raises(IllegalTransition, match=event.value):
            m.apply(event, 1_000)
        assert m.state is state
        assert m.refused == 1
    else:
        t = m.apply(event, 1_000)
        assert (t.from_state, t.to_state, t.accepted) == (state.value, expected.value, True)
        assert m.state is expected


def test_fire_ids_are_deterministic_and_sequence_within_a_bar():
    a, b = ExecutionStateMachine("1594", 1), ExecutionStateMachine("1594", 1)
    ids = []
    for m in (a, b):
        run = []
        for bar in (60_000, 60_000, 120_000):
            m.apply(Event.ARM, bar)
            _, coid, _ = m.fire(bar, bar + 1)
            run.append(coid)
            m.apply(Event.EXPIRED, bar + 2)
            m.apply(Event.COOLED, bar + 3)
        ids.append(run)
    assert ids[0] == ids[1]  # a restart firing on the same bars gives the same ids
    assert ids[0] == [
        client_order_id(1, "1594", 60_000, 0),
        client_order_id(1, "1594", 60_000, 1),
        client_order_id(1, "1594", 120_000, 0),
    ]


def test_fire_refuses_a_bar_from_the_past():
    m = ExecutionStateMachine("3045", 1)
    m.apply(Event.ARM, 0)
    m.fire(120_000, 120_001)
    m.apply(Event.EXPIRED, 120_002)
    m.apply(Event.COOLED, 120_003)
    m.apply(Event.ARM, 120_004)
    with pytest.raises(IllegalTransition, match="backwards"):
        m.fire(60_000, 120_005)
    assert m.state is State.READY


@given(
    st.text(alphabet="0123456789", min_size=1, max_size=10),
    st.integers(0, 2**45),
    st.integers(0, 99),
)
def test_client_order_id_is_injective(token, bar, seq):
    assert client_order_id(1, token, bar, seq) != client_order_id(1, token, bar, seq + 1)
    assert client_order_id(1, token, bar, seq) != client_order_id(1, token, bar + 1, seq)


class LifecycleMachine(RuleBasedStateMachine):
    """Random event sequences: illegal events are refused without effect, ids never repeat."""

    def __init__(self):
        super().__init__()
        self.m = ExecutionStateMachine("2885", 1)
        self.model = State.IDLE
        self.ids: set[str] = set()
        self.bar = 0
        self.now = 0

    @rule(event=st.sampled_from([e for e in Event if e is not Event.FIRE]))
    def send(self, event):
        self.now += 1
        expected = EXPECTED[self.model].get(event)
        if expected is None:
            with pytest.raises(IllegalTransition):
                self.m.apply(event, self.now)
        else:
            self.m.apply(event, self.now)
            self.model = expected

    @rule(advance=st.integers(0, 2))
    def fire(self, advance):
        self.now += 1
        self.bar += advance * 60_000
        if self.model is State.READY:
            _, coid, _ = self.m.fire(self.bar, self.now)
            assert coid not in self.ids
            self.ids.add(coid)
            self.model = State.EXECUTE
        else:
            with pytest.raises(IllegalTransition):
                self.m.fire(self.bar, self.now)

    @invariant()
    def state_matches_model(self):
        assert self.m.state is self.model


TestLifecycle = LifecycleMachine.TestCase
TestLifecycle.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
