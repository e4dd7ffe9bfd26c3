"""One symbol's trading step on each accepted tick, beside the state machine it drives:
a signal ARMs, a confirmed one FIREs an order intent (vetted by governance under its final
id), one that went away DISARMs, an EXECUTE without a report EXPIREs, a COOLDOWN ends.

The step reads the engine's trading state (paused, exits only, reconciled) and queues
what the router must do (a cancel when an intent expires) on the engine's command list;
a governance halt goes through the engine's kill switch. It is called by
``Engine.on_frame`` once per tick, between governance and publishing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from chimera_core.config import Config
from chimera_core.contracts import (
    AccountSnapshot,
    CancelIntent,
    OrderIntent,
    PhysicsState,
    RouterCommand,
    Side,
    Tick,
    Transition,
)
from chimera_core.errors import IllegalTransition
from chimera_core.governance import GateVerdict, Governance
from chimera_core.state_machine import Event, State

if TYPE_CHECKING:
    from chimera_core.event_loop import EngineStats, SymbolContext


class EntryPermissions(Protocol):
    """The engine's trading state as the step reads it before an entry."""

    paused: bool  # no new entries (operator)
    exits_only: str  # why only exits are made ("" = not reducing)
    reconciled: bool  # the broker has been reconciled: entries may be made


class TradingStep:
    """The per-symbol step for an engine. ``gate`` is governance's verdict on the intent
    of the last step (``None`` when none was asked for)."""

    def __init__(
        self,
        cfg: Config,
        permissions: EntryPermissions,
        governance: Governance | None,
        stats: EngineStats,
        actions: list[RouterCommand],
        account: Callable[[], AccountSnapshot],
        kill_switch: Callable[[str, int | None], list[Transition]],
    ) -> None:
        self._permissions = permissions
        self.governance = governance
        self._stats = stats
        self._actions = actions
        self._account = account
        self._kill_switch = kill_switch
        self.execution_enabled = cfg.execution.enabled
        self._execute_timeout_ms = int(cfg.strategy.execute_timeout_s * 1000)
        # A parent the router works as VWAP children over the slicing window is given that
        # window on top: the timeout must not cancel an entry that is being worked.
        slicing = cfg.execution.slicing
        self._slice_min_qty = slicing.min_qty
        self._slice_extra_ms = int((slicing.window_s + slicing.max_wait_s) * 1000)
        self._cooldown_ms = int(cfg.strategy.cooldown_s * 1000)
        self._order_qty = cfg.strategy.order_qty
        self.gate: GateVerdict | None = None

    def step(
        self,
        sym: SymbolContext,
        tick: Tick,
        direction: int,
        stale: bool,
        physics: PhysicsState,
        confidence: float,
    ) -> tuple[tuple[Transition, ...], OrderIntent | None]:
        self.gate = None
        machine = sym.machine
        state = machine.state
        ts = tick.exchange_ts_ms
        try:
            if state is State.IDLE:
                permissions = self._permissions
                if (
                    direction
                    and not stale
                    and not permissions.paused
                    and not permissions.exits_only
                    and permissions.reconciled
                    and sym.vetoed_bar_ms != sym.physics.bar_start_ms
                    and not self.entries_closed(sym, ts)
                ):
                    sym.armed_direction = direction
                    return (
                        machine.apply(Event.ARM, ts, "long" if direction > 0 else "short"),
                    ), None
            elif state is State.READY:
                blocked = self.entry_blocked(sym, ts)
                if direction == sym.armed_direction and not stale and not blocked:
                    return self._fire(sym, tick, physics, confidence, stale)
                reason = "feed_stale" if stale else blocked or "signal_gone"
                sym.armed_direction = 0
                return (machine.apply(Event.DISARM, ts, reason),), None
            elif state is State.EXECUTE and ts - machine.entered_ms >= sym.pending_timeout_ms:
                if sym.pending_intent and self.execution_enabled:
                    # Whatever is still working at the broker is cancelled; fills that
                    # already happened stay booked.
                    self._actions.append(CancelIntent(sym.pending_intent))
                sym.expired_intent = sym.pending_intent
                sym.pending_intent = ""
                return (machine.apply(Event.EXPIRED, ts, "no_execution_report"),), None
            elif state is State.COOLDOWN and ts - machine.entered_ms >= self._cooldown_ms:
                return (machine.apply(Event.COOLED, ts),), None
        except IllegalTransition as exc:
            self._stats.illegal_transitions += 1
            return (Transition("?", state.value, state.value, False, str(exc)),), None
        return (), None

    def _fire(
        self, sym: SymbolContext, tick: Tick, physics: PhysicsState, confidence: float, stale: bool
    ) -> tuple[tuple[Transition, ...], OrderIntent | None]:
        bar_start = sym.physics.bar_start_ms or 0
        coid, signal_seq = sym.machine.next_fire(bar_start)
        direction = sym.armed_direction
        intent = OrderIntent(
            client_order_id=coid,
            token=sym.token,
            exchange_type=sym.exchange_type,
            side=Side.BUY if direction > 0 else Side.SELL,
            qty=self._order_qty * sym.lot_size,  # order_qty lots (units where no lots)
            ref_price=tick.ltp,
            bar_start_ms=bar_start,
            signal_seq=signal_seq,
            exchange_ts_ms=tick.exchange_ts_ms,
        )
        governance = self.governance
        stats = self._stats
        if governance is not None:
            gate = governance.gate(
                intent, physics, confidence, spread_pct(sym.book), stale, self._account()
            )
            self.gate = gate
            if gate.halt_reason:
                stats.vetoes += 1
                sym.armed_direction = 0
                rule = gate.halt_reason.partition(":")[2].split(",")[0]
                rule = governance.kill_switch or rule
                moved = self._kill_switch(rule, tick.exchange_ts_ms)
                if sym.machine.state is State.READY:
                    sym.vetoed_bar_ms = bar_start
                    moved.append(sym.machine.apply(Event.DISARM, tick.exchange_ts_ms, gate.reason))
                return tuple(moved), None
            if not gate.allowed:
                stats.vetoes += 1
                sym.armed_direction = 0
                sym.vetoed_bar_ms = bar_start
                return (sym.machine.apply(Event.DISARM, tick.exchange_ts_ms, gate.reason),), None
            intent = msgspec.structs.replace(intent, qty=gate.qty)
        transition, fired_id, _ = sym.machine.fire(bar_start, tick.exchange_ts_ms, "confirmed")
        assert fired_id == coid  # next_fire and fire agree by construction
        sym.armed_direction = 0
        sym.pending_intent = coid
        sym.pending_qty = intent.qty if direction > 0 else -intent.qty
        sym.pending_timeout_ms = self._execute_timeout_ms + (
            self._slice_extra_ms if intent.qty >= self._slice_min_qty else 0
        )
        sym.intent_filled = 0
        # What the signal looked like, named after the genome's genes it speaks to.
        band_dist = (
            abs(physics.close - physics.band_mean) / physics.band_std
            if physics.band_std > 0
            else 0.0
        )
        sym.entry_features = {"energy_threshold": abs(physics.energy), "band_k": band_dist}
        stats.intents += 1
        return (transition,), intent

    def entry_blocked(self, sym: SymbolContext, exchange_ts_ms: int) -> str:
        """Why no entry may fire now ("" when it may): checked again at FIRE, since a
        pause, exits-only or the entry cut-off can come between ARM and FIRE."""
        permissions = self._permissions
        if permissions.paused:
            return "paused"
        if permissions.exits_only:
            return "exits_only"
        if self.entries_closed(sym, exchange_ts_ms):
            return "past_entry_cutoff"
        return ""

    def entries_closed(self, sym: SymbolContext, exchange_ts_ms: int) -> bool:
        """Outside the market's entry hours (closed, a holiday, past the cut-off)."""
        if not self.execution_enabled:
            return False
        return not sym.calendar.entries_allowed(exchange_ts_ms)


def spread_pct(book: Tick | None) -> float:
    """Best bid/ask spread in percent of mid; 0.0 when the feed mode carries no book."""
    if book is None or not book.bids or not book.asks:
        return 0.0
    bid, ask = book.bids[0].price, book.asks[0].price
    return (ask - bid) / ((ask + bid) / 2.0) * 100.0 if ask > 0 and bid > 0 else 0.0
