"""Per-symbol execution state machine: IDLE → READY → EXECUTE → COOLDOWN → IDLE, plus HALT.

Any other transition raises IllegalTransition and leaves the state untouched. FIRE is the
only event that creates an order, and its client_order_id is derived from (exchange type,
token, bar start, signal sequence within that bar): a replay or a restart that fires on
the same bar produces the same id, which the journal refuses to place twice.
``chimera_core.trading_step`` drives it on every tick.
"""

from __future__ import annotations

import enum

import structlog

from chimera_core.contracts import Transition
from chimera_core.errors import IllegalTransition

log = structlog.get_logger(__name__)


class State(enum.Enum):
    IDLE = "IDLE"
    READY = "READY"
    EXECUTE = "EXECUTE"
    COOLDOWN = "COOLDOWN"
    HALT = "HALT"


class Event(enum.Enum):
    ARM = "ARM"  # a signal appeared
    DISARM = "DISARM"  # the signal went away before confirmation
    FIRE = "FIRE"  # the signal was confirmed: an order intent leaves
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"  # no execution report within the timeout
    COOLED = "COOLED"  # cooldown elapsed
    HALT = "HALT"  # kill switch (global)
    RESUME = "RESUME"  # operator lifted the halt


TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.IDLE, Event.ARM): State.READY,
    (State.READY, Event.DISARM): State.IDLE,
    (State.READY, Event.FIRE): State.EXECUTE,
    (State.EXECUTE, Event.FILLED): State.COOLDOWN,
    (State.EXECUTE, Event.REJECTED): State.COOLDOWN,
    (State.EXECUTE, Event.EXPIRED): State.COOLDOWN,
    (State.COOLDOWN, Event.COOLED): State.IDLE,
    (State.HALT, Event.RESUME): State.IDLE,
    **{(s, Event.HALT): State.HALT for s in State if s is not State.HALT},
}


def client_order_id(exchange_type: int, token: str, bar_start_ms: int, signal_seq: int) -> str:
    """Deterministic order id: same bar and signal sequence, same id, on any run."""
    return f"CH-{exchange_type}-{token}-{bar_start_ms}-{signal_seq}"


class ExecutionStateMachine:
    """One symbol's trading state. ``apply`` moves it or raises IllegalTransition."""

    def __init__(self, token: str, exchange_type: int) -> None:
        self.token = token
        self.exchange_type = exchange_type
        self.state = State.IDLE
        self.entered_ms = 0  # exchange time the current state was entered
        self._fire_bar_ms = -1
        self._fire_seq = -1
        self.refused = 0

    def apply(self, event: Event, exchange_ts_ms: int, reason: str = "") -> Transition:
        target = TRANSITIONS.get((self.state, event))
        if target is None:
            self.refused += 1
            log.warning(
                "illegal_transition", token=self.token, state=self.state.value, trigger=event.value
            )
            raise IllegalTransition(
                f"{self.token}: event {event.value} is not allowed in state {self.state.value} "
                f"(allowed: {self.allowed_events()})"
            )
        before = self.state
        self.state = target
        self.entered_ms = exchange_ts_ms
        return Transition(event.value, before.value, target.value, True, reason)

    def allowed_events(self) -> list[str]:
        return [e.value for (s, e) in TRANSITIONS if s is self.state]

    def next_fire(self, bar_start_ms: int) -> tuple[str, int]:
        """The client_order_id and signal sequence a FIRE in this bar would use now
        (governance vets the intent under its final id before the machine moves)."""
        seq = self._fire_seq + 1 if bar_start_ms == self._fire_bar_ms else 0
        return client_order_id(self.exchange_type, self.token, bar_start_ms, seq), seq

    def fire(
        self, bar_start_ms: int, exchange_ts_ms: int, reason: str = ""
    ) -> tuple[Transition, str, int]:
        """READY → EXECUTE, returning the transition, the client_order_id and signal sequence."""
        if bar_start_ms < self._fire_bar_ms:
            self.refused += 1
            raise IllegalTransition(
                f"{self.token}: FIRE for bar {bar_start_ms} after a fire in later bar "
                f"{self._fire_bar_ms}; bar time must not go backwards"
            )
        transition = self.apply(Event.FIRE, exchange_ts_ms, reason)
        seq = self._fire_seq + 1 if bar_start_ms == self._fire_bar_ms else 0
        self._fire_bar_ms, self._fire_seq = bar_start_ms, seq
        return transition, client_order_id(self.exchange_type, self.token, bar_start_ms, seq), seq
