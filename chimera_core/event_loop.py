"""The hot path, in order: decode → feed hygiene → bars + physics → strategy →
governance → state machine (the per-symbol trading step, ``chimera_core.trading_step``) →
route → publish. ``Engine.on_frame`` is that path for one frame; ``chimera_core.node`` wires
it to a router and telemetry, ``chimera_core.live`` to the feed on a uvloop event loop.
Logic lives in the layers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.account import Account
from chimera_core.config import Config, feed_symbols
from chimera_core.contracts import (
    AccountSnapshot,
    Bar,
    CancelAll,
    CancelEntries,
    Decision,
    ExecKind,
    ExecutionOutput,
    ExecutionReport,
    ExitPosition,
    Flatten,
    GenomeOutput,
    Mode,
    PhysicsState,
    Purpose,
    Reconciliation,
    ResumeRouting,
    RouterCommand,
    SessionInfo,
    Signal,
    Tick,
    TradingState,
    Transition,
)
from chimera_core.errors import IllegalTransition, ProtocolError
from chimera_core.feed.sanity import FeedClock, PriceFilter, Seq, SequenceTracker
from chimera_core.feed.smartapi_v2 import decode
from chimera_core.governance import Governance
from chimera_core.logging import RateLimiter
from chimera_core.markets import MarketCalendar, calendar_for
from chimera_core.position_book import PositionBook
from chimera_core.state_machine import Event, ExecutionStateMachine, State
from chimera_core.strategy import StrategyFactory, default_factory
from chimera_core.symbol_physics import SymbolPhysics
from chimera_core.trading_step import TradingStep

log = structlog.get_logger(__name__)

DecisionSink = Callable[[Decision], Any]


class EngineStats:
    """What the engine dropped and why; every drop is counted, none is silent."""

    def __init__(self) -> None:
        self.frames = 0
        self.decisions = 0
        self.malformed = 0
        self.unknown_token = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.gaps = 0
        self.bad_price = 0
        self.late = 0
        self.seq_jumps = 0  # sequence implausibly far ahead: a corrupt frame
        self.bad_time = 0  # exchange time outside the plausible window or far ahead
        self.rebaselines = 0  # tokens that took a new sequence/bar baseline after refusals
        self.time_outliers = 0  # a forming bar opened by one tick from ahead, undone
        self.depth_updates = 0
        self.illegal_transitions = 0
        self.vetoes = 0
        self.intents = 0
        self.bars_closed = 0
        self.reports = 0
        self.fills = 0
        self.late_fills = 0  # entry fills booked after their intent's EXECUTE timed out
        self.rejects = 0
        self.trades_closed = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class SymbolContext:
    """Everything the hot path keeps for one instrument."""

    def __init__(
        self,
        token: str,
        exchange_type: int,
        cfg: Config,
        calendar: MarketCalendar,
        strategy: StrategyFactory = default_factory,
    ) -> None:
        s = cfg.strategy
        self.token = token
        self.exchange_type = exchange_type
        self.calendar = calendar
        self.lot_size = cfg.feed.lots.get(token, 1)  # intents are whole lots
        self.physics = SymbolPhysics(
            token,
            interval_ms=s.bar_interval_s * 1000,
            energy_n=s.energy_lookback,
            z_n=s.z_lookback,
            band_n=s.band_lookback,
            k=s.band_k,
        )
        self.sequence = SequenceTracker(cfg.sanity.max_seq_jump, cfg.sanity.rebaseline_after)
        self.seq_epoch = 0  # the feed connection the sequence baseline belongs to
        self.late_in_row = 0  # frames refused in a row as older than the forming bar
        self.last_ts = -1  # exchange time of the last accepted trade, and of the one before
        self.prev_ts = -1
        self.prices = PriceFilter(cfg.sanity.max_jump_pct, bar_interval_s=s.bar_interval_s)
        # The strategy's parameters: [strategy] until the genome in force says otherwise.
        self.strategy = strategy(s, {})
        self.position_sign = 0  # -1, 0, 1: the position held (exits are watched while != 0)
        self.entry_ts_ms = -1  # exchange time the position was opened (-1: not known yet)
        self.exit_requested = False  # an exit order was asked for and has not ended
        self.genome: GenomeOutput | None = None  # the version the strategy runs on
        self.machine = ExecutionStateMachine(token, exchange_type)
        self.armed_direction = 0
        self.vetoed_bar_ms = -1  # a vetoed signal does not re-arm within the same bar
        self.last_recv_ns = 0
        self.last_epoch = 0
        self.book: Tick | None = None  # latest depth/best-5 snapshot
        self.pending_intent = ""  # the intent this symbol's EXECUTE waits for
        self.expired_intent = ""  # the last intent whose EXECUTE timed out (fills still book)
        self.pending_qty = 0  # its signed quantity (the exposure caps count what may fill)
        self.pending_timeout_ms = 0  # how long EXECUTE waits for it (longer when sliced)
        self.intent_filled = 0  # quantity filled for it so far (over all its child orders)
        self.entry_features: dict[str, float] = {}  # the signal at the last fire
        self.working: set[str] = set()  # orders the broker holds open
        self.last_report = ""
        self.execution: ExecutionOutput | None = None  # rebuilt when a report arrives


class Engine:
    """Turns raw feed frames into Decisions. Synchronous, allocation-light, never raises
    on bad input. Time comes from the tick (exchange ms) and the injected ``clock``."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], int] = time.monotonic_ns,
        sinks: list[DecisionSink] | None = None,
        governance: Governance | None = None,
        strategy: StrategyFactory = default_factory,
    ) -> None:
        self.cfg = cfg
        self.governance = governance
        self._strategy_factory = strategy
        self.clock = clock
        self.sinks: list[DecisionSink] = list(sinks or [])
        # One context per instrument, each on its own segment (cash and F&O side by side)
        # with that segment's market calendar (entry hours, cut-off, square-off, holidays).
        calendars: dict[int, MarketCalendar] = {}
        self.symbols: dict[str, SymbolContext] = {}
        for et, t in feed_symbols(cfg):
            if et not in calendars:
                calendars[et] = calendar_for(cfg.markets, et, cfg.execution.square_off_at)
            self.symbols[t] = SymbolContext(t, et, cfg, calendars[et], strategy)
        self.stats = EngineStats()
        # A flood of bad frames costs a counter, not a log line each (the summary says how
        # many were not logged). Logs only: nothing the engine decides depends on it.
        self.log_limiter = RateLimiter(log, burst=10, interval_s=60.0)
        self.halted = False
        self.paused = False  # no new entries; positions and pending intents carry on
        # Exits only (a journal that cannot write, a position whose feed is dark): no new
        # entries, protective exits keep working; the reason says why ("" = not reducing).
        self.exits_only = ""
        self._reducing: dict[str, str] = {}  # cause ("journal_write_failed", ...) → reason
        self.feed_epoch = 0  # set by the feed on every (re)connect
        sanity = cfg.sanity
        ahead_ms = int(max(sanity.max_clock_ahead_s, 2 * cfg.strategy.bar_interval_s) * 1000)
        self.feed_clock = FeedClock(ahead_ms, sanity.rebaseline_after)
        self._rebaseline_after = sanity.rebaseline_after
        self._stale_ns = int(cfg.feed.stale_after_s * 1e9)
        self._seq = 0
        self._bar_work: list[tuple[str, Bar, PhysicsState]] = []
        # Execution: positions from reports, and what the router must do next (drained by
        # the wiring after each frame/report/command; replay drains and drops them, because
        # their outcomes are recorded as reports).
        ex = cfg.execution
        self.execution_enabled = ex.enabled
        self.positions = PositionBook()
        # Cash and marks: the account risk reads (seeded from the reconciled journal).
        self.account = Account(
            ex.paper.starting_cash if ex.enabled and ex.broker == "paper" else cfg.governance.equity
        )
        self.actions: list[RouterCommand] = []  # typed commands for the router, in order
        # Set by the composition when the broker is a simulated exchange (paper): sees each
        # accepted tick before the step; the reports it triggers come back via on_report.
        self.on_market: Callable[[Tick], None] | None = None
        self._flatten_on_halt = ex.flatten_on_halt
        # No entries while False: run_live clears it until the broker is reconciled.
        self.reconciled = True
        self.last_tick: Tick | None = None
        # The per-symbol trading step (ARM / FIRE / EXPIRE / COOLED), beside the machine.
        self.trading_step = TradingStep(
            cfg, self, governance, self.stats, self.actions, self.account_snapshot,
            self._kill_switch,
        )  # fmt: skip
        if ex.enabled:
            empty = ExecutionOutput(0, 0.0, 0.0, 0.0, 0, "")
            for sym in self.symbols.values():
                sym.execution = empty
        if governance is not None:
            for token, sym in self.symbols.items():  # the genome in force at start
                self._take_genome(sym, governance.layers(token)[2])

    # ---- the hot path --------------------------------------------------------------
    def on_frame(self, frame: bytes, recv_ns: int) -> Decision | None:
        if self._bar_work:
            self.after_publish()  # the caller did not; keep the order exact either way
        stats = self.stats
        stats.frames += 1
        # 1. decode
        try:
            tick = decode(frame, recv_ns)
        except ProtocolError as exc:
            stats.malformed += 1
            if self.log_limiter.allow("frame_malformed"):
                log.warning("frame_malformed", size=len(frame), error=str(exc))
            return None
        sym = self.symbols.get(tick.token)
        if sym is None:
            stats.unknown_token += 1
            return None
        # 2. feed hygiene
        if tick.mode == Mode.DEPTH:
            sym.book = tick
            stats.depth_updates += 1
            return None
        # A corrupt time is refused before the frame's sequence number can count.
        if not self.feed_clock.accept(tick.exchange_ts_ms):
            stats.bad_time += 1  # corrupt or implausibly far ahead: never a bar or a day
            return None
        if sym.seq_epoch != self.feed_epoch:
            sym.seq_epoch = self.feed_epoch  # a new connection may number afresh
            sym.sequence.reset()
        verdict = sym.sequence.check(tick.sequence)
        if verdict is not Seq.OK:
            if verdict is Seq.DUPLICATE:
                stats.duplicates += 1
                return None
            if verdict is Seq.OUT_OF_ORDER:
                stats.out_of_order += 1
                return None
            if verdict is Seq.JUMP:
                stats.seq_jumps += 1
                return None
            if verdict is Seq.GAP:
                stats.gaps += 1
            elif verdict is Seq.REBASELINE:
                self._rebaselined(sym, "sequence", tick)
        if not sym.prices.accept(tick.ltp, tick.upper_circuit, tick.lower_circuit):
            stats.bad_price += 1
            return None
        bar_start = sym.physics.bar_start_ms
        ts = tick.exchange_ts_ms
        if bar_start is not None and ts < bar_start:
            if sym.physics.forming_ticks == 1 and ts >= sym.prev_ts:
                # One tick opened the forming bar ahead of the stream and the stream goes
                # on from before it: that tick's time was the corrupt one. Its bar goes.
                stats.time_outliers += 1
                sym.physics.discard_forming_bar()
                sym.last_ts = sym.prev_ts
            else:
                sym.late_in_row += 1
                if sym.late_in_row <= self._rebaseline_after:
                    stats.late += 1  # never reopen a closed bar
                    return None
                # The forming bar itself is the outlier (its first tick came from the future).
                sym.physics.discard_forming_bar()
                self._rebaselined(sym, "bar", tick)
        sym.late_in_row = 0
        sym.prev_ts = sym.last_ts
        sym.last_ts = ts
        if tick.mode == Mode.SNAP_QUOTE:
            sym.book = tick
        self.last_tick = tick
        on_market = self.on_market
        if on_market is not None:
            # A simulated exchange matches on this tick before the engine steps on it, so
            # its reports arrive first, as a real exchange's fills precede the next print
            # (on bar data an intent would otherwise time out before its fill every bar).
            on_market(tick)
        stale = (
            sym.last_recv_ns == 0
            or recv_ns - sym.last_recv_ns > self._stale_ns
            or sym.last_epoch != self.feed_epoch
        )
        sym.last_recv_ns = recv_ns
        sym.last_epoch = self.feed_epoch
        # 3. bars + physics
        physics, closed = sym.physics.on_trade(tick.exchange_ts_ms, tick.ltp, tick.volume, tick.ltq)
        governance = self.governance
        if closed is not None:
            stats.bars_closed += 1
            if governance is not None:
                # Per-bar layers (drift ~10 µs) run after this decision is published, so the
                # ~1% of ticks that close a bar do not carry them; this tick's decision shows
                # the layers as of the previous bar close.
                self._bar_work.append((tick.token, closed, physics))
        # 4. strategy
        signal_, confidence = sym.strategy.evaluate(physics)
        if sym.position_sign and not sym.exit_requested:
            self._watch_exit(sym, physics, signal_, tick.exchange_ts_ms)
        # 5. governance: per-bar layers (drift, capital); meta-risk and approvals are asked
        #    inside the state machine step, only when a signal is about to fire. The genome
        #    named is the one the strategy ran on (a new version takes effect at a bar).
        genome = sym.genome
        if governance is not None:
            drift, capital, _ = governance.layers(tick.token)
            confidence, influence = governance.weigh(tick.token, confidence)
        else:
            drift = capital = None
            influence = _PHYSICS_ONLY
        # 6. state machine
        trading = self.trading_step
        transitions, intent = trading.step(sym, tick, signal_.direction, stale, physics, confidence)
        gate = trading.gate
        if gate is not None and not gate.allowed:
            # The layer that refused the intent decided this evaluation outright.
            influence = _REFUSED_BY.get(gate.reason.partition(":")[0], influence)
        # 7. route: intents go to the router after this decision is published (run_live).
        # 8. publish
        self._seq += 1
        # Positional construction: keywords cost ~0.5 µs per Decision on this path.
        decision = Decision(
            self._seq, tick.token, tick.exchange_type, tick.exchange_ts_ms, tick.sequence,
            sym.physics.bar_start_ms or 0, physics, signal_, _STATE_NAME[sym.machine.state],
            transitions, intent, confidence, influence,
            stale, recv_ns, self.clock(), drift, capital,
            gate.meta_risk if gate is not None else None, genome,
            gate.approval if gate is not None else None, sym.execution,
        )  # fmt: skip
        stats.decisions += 1
        for sink in self.sinks:
            sink(decision)
        return decision

    def _rebaselined(self, sym: SymbolContext, what: str, tick: Tick) -> None:
        self.stats.rebaselines += 1
        sym.late_in_row = 0
        if not self.log_limiter.allow("feed_rebaselined"):
            return
        log.warning(
            "feed_rebaselined",
            token=sym.token,
            what=what,
            after=self._rebaseline_after,
            sequence=tick.sequence,
            exchange_ts_ms=tick.exchange_ts_ms,
        )

    def after_publish(self) -> None:
        """Run the per-bar governance work deferred by on_frame. Callers that time the hot
        path call it after publishing; otherwise the next on_frame runs it first, so the
        order of evaluation is the same in live and replay."""
        governance = self.governance
        work = self._bar_work
        if governance is not None and work:
            equity = self.account_snapshot().equity
            for token, bar, physics in work:
                governance.on_bar(token, bar, physics, equity)
                self._take_genome(self.symbols[token], governance.layers(token)[2])
            # The account is judged at every bar close, not only when an entry is asked
            # for: a loss on open positions trips the daily-loss switch on its own, and a
            # new session lifts a daily-loss REDUCING at its first bar.
            self._kill_switch(governance.observe(equity, work[-1][1].end_ms))
        work.clear()

    def _watch_exit(
        self, sym: SymbolContext, physics: PhysicsState, signal_: Signal, ts: int
    ) -> None:
        """The strategy's own exits (beside the router's brackets): asked for once, carried
        out by the router after this decision is published, re-armed if the order ends
        without closing the position."""
        if sym.entry_ts_ms < 0:
            sym.entry_ts_ms = ts  # restored at start: held from the first tick seen
        why = sym.strategy.exit_reason(physics, signal_, sym.position_sign, ts - sym.entry_ts_ms)
        if why and self.execution_enabled:
            sym.exit_requested = True
            self.actions.append(ExitPosition(sym.token, why))
            log.info("exit_signal", token=sym.token, reason=why, exchange_ts_ms=ts)

    def _take_genome(self, sym: SymbolContext, genome: GenomeOutput | None) -> None:
        """Run the strategy on ``genome``'s genes from the next tick on (at a bar close, or
        at start): a learning step, rollback or promotion takes effect here, the same way
        in live and replay, and every later decision names the version."""
        current = sym.genome
        if genome is None or (
            current is not None
            and (genome.family, genome.version) == (current.family, current.version)
        ):
            return
        p = genome.params
        try:
            sym.physics.set_params(
                int(p.get("energy_lookback", sym.physics.energy_n)),
                int(p.get("z_lookback", sym.physics.z_n)),
                int(p.get("band_lookback", sym.physics.band_n)),
                float(p.get("band_k", sym.physics.k)),
            )
            sym.strategy = self._strategy_factory(self.cfg.strategy, p)
        except (ValueError, TypeError) as exc:
            log.error("genome_refused", token=sym.token, version=genome.version, error=str(exc))
            return
        previous = current.version if current is not None else None
        sym.genome = genome
        log.info(
            "genome_applied",
            token=sym.token,
            family=genome.family,
            version=genome.version,
            previous=previous,
            params=p,
        )

    def account_snapshot(self) -> AccountSnapshot:
        """The account now, every position at its symbol's last price."""
        marks = {}
        working = {}
        for token, sym in self.symbols.items():
            close = sym.physics.last_price
            if close == close:
                marks[token] = close
            if sym.pending_intent:
                remaining = abs(sym.pending_qty) - sym.intent_filled
                if remaining > 0:
                    working[token] = remaining if sym.pending_qty > 0 else -remaining
        return self.account.snapshot(self.positions, marks, working)

    @property
    def trading_state(self) -> TradingState:
        if self.halted:
            return TradingState.HALTED
        if self.paused:
            return TradingState.PAUSED
        if self.exits_only:
            return TradingState.REDUCING
        return TradingState.ACTIVE

    def _kill_switch(self, rule: str, exchange_ts_ms: int | None = None) -> list[Transition]:
        """Follow meta-risk's kill switch: the max drawdown halts (an operator resets it);
        the daily loss (or the order-rate guard) makes the engine REDUCING (working entries
        cancelled, exits go on)
        until meta-risk's next session clears it, and then the engine trades again."""
        if rule == "max_drawdown":
            return self.halt("meta_risk:max_drawdown", exchange_ts_ms) if not self.halted else []
        if rule in ("daily_loss", "order_rate"):  # session kill switches: REDUCING
            if "meta_risk" not in self._reducing:
                self.control("reduce", f"meta_risk:{rule}")
                if self.execution_enabled:
                    self.actions.append(CancelEntries(f"meta_risk:{rule}"))
        elif "meta_risk" in self._reducing:
            self.control("reduce_clear", "meta_risk")
            log.warning("daily_loss_cleared", state=self.trading_state.value)
        return []

    # ---- execution reports (between frames, in arrival order; replay re-applies them) ----
    def on_report(self, report: ExecutionReport) -> tuple[Transition, ...]:
        """Apply one execution report: book its fill, update the symbol's execution output,
        move the state machine when its intent is done, feed closed trades to governance."""
        self.stats.reports += 1
        sym = self.symbols.get(report.token)
        if sym is None:
            log.warning("report_unknown_token", token=report.token, coid=report.client_order_id)
            if report.fill is not None:
                # A position reconciled in a token no longer traded (a flatten closes it):
                # the book the router reads must see it go, or the next flatten sends again.
                self.account.on_fill(report.fill)
                self.positions.apply(report.fill)
            return ()
        kind = report.kind
        coid = report.client_order_id
        if kind is ExecKind.ACK or kind is ExecKind.PARTIAL:
            sym.working.add(coid)
        else:
            sym.working.discard(coid)
        transitions: list[Transition] = []
        fill = report.fill
        ts = report.exchange_ts_ms or sym.machine.entered_ms
        if fill is not None:
            self.stats.fills += 1
            if report.intent_id == sym.pending_intent:
                sym.intent_filled += fill.qty
            elif report.intent_id and report.intent_id == sym.expired_intent:
                # Its EXECUTE timed out first (the cancel may have crossed the fill): the
                # fill is a position all the same, booked and managed like any other.
                self.stats.late_fills += 1
                log.warning(
                    "late_fill_booked",
                    token=report.token,
                    intent_id=report.intent_id,
                    qty=fill.qty,
                    price=fill.price,
                )
            entry = report.purpose is Purpose.ENTRY
            features = sym.entry_features if entry else {}
            self.account.on_fill(fill)
            closed = self.positions.apply(fill, features, report.intent_id if entry else "")
            if closed is not None:
                self.stats.trades_closed += 1
                governance = self.governance
                if governance is not None:
                    governance.on_trade_closed(
                        closed.token, closed.pnl, closed.exchange_ts_ms, closed.entry_features
                    )
                    equity = self.account_snapshot().equity
                    transitions.extend(self._kill_switch(governance.observe(equity, ts), ts))
        if kind is ExecKind.REJECTED:
            self.stats.rejects += 1
        held = self.positions.get(report.token).qty
        sign = (held > 0) - (held < 0)
        if sign != sym.position_sign:
            sym.entry_ts_ms = ts if sign else -1
            sym.position_sign = sign
            sym.exit_requested = False
        elif report.purpose is Purpose.EXIT and kind in _TERMINAL:
            sym.exit_requested = False  # it ended without closing: the rule may ask again
        if (
            report.final
            and report.purpose is Purpose.ENTRY
            and report.intent_id == sym.pending_intent
            and sym.machine.state is State.EXECUTE
        ):
            sym.pending_intent = ""
            try:
                if sym.intent_filled > 0:
                    why = f"filled {sym.intent_filled}"
                    transitions.append(sym.machine.apply(Event.FILLED, ts, why))
                else:
                    why = report.reason or kind.value.lower()
                    transitions.append(sym.machine.apply(Event.REJECTED, ts, why))
            except IllegalTransition:
                self.stats.illegal_transitions += 1
        pos = self.positions.get(report.token)
        sym.last_report = f"{kind.value} {coid}"
        sym.execution = ExecutionOutput(
            pos.qty, pos.avg_price, pos.realized, pos.charges, len(sym.working), sym.last_report
        )
        return tuple(transitions)

    def on_reconciled(self, recon: Reconciliation) -> None:
        """Seed positions and working orders from the start-up reconciliation; entries are
        allowed from here on only if it found nothing it could not make agree."""
        self.positions.seed(recon.positions)
        self.account.seed(recon.cash)
        for sym in self.symbols.values():
            sym.working = {o.client_order_id for o in recon.open_orders if o.token == sym.token}
            pos = self.positions.get(sym.token)
            sym.position_sign = (pos.qty > 0) - (pos.qty < 0)
            sym.entry_ts_ms = -1
            sym.execution = ExecutionOutput(
                pos.qty, pos.avg_price, 0.0, 0.0, len(sym.working), sym.last_report
            )
        self.reconciled = recon.ok
        log.info(
            "engine_reconciled",
            ok=recon.ok,
            positions=len(recon.positions),
            open_orders=len(recon.open_orders),
            mismatches=list(recon.mismatches),
        )

    # ---- operator actions ----------------------------------------------------------
    def halt(self, reason: str, exchange_ts_ms: int | None = None) -> list[Transition]:
        """Kill switch: every symbol to HALT, every open order cancelled (and positions
        closed when configured). Idempotent."""
        if not self.halted and self.execution_enabled:
            self.actions.append(CancelAll(reason))
            if self._flatten_on_halt:
                self.actions.append(Flatten(reason))
        self.halted = True
        out = []
        for sym in self.symbols.values():
            if sym.machine.state is not State.HALT:
                ts = sym.machine.entered_ms if exchange_ts_ms is None else exchange_ts_ms
                out.append(sym.machine.apply(Event.HALT, ts, reason))
        log.warning("engine_halted", reason=reason, symbols=len(out))
        return out

    def resume(self, reason: str) -> list[Transition]:
        if self.halted and self.execution_enabled:
            self.actions.append(ResumeRouting(reason))
        self.halted = False
        out = []
        for sym in self.symbols.values():
            if sym.machine.state is State.HALT:
                sym.armed_direction = 0
                out.append(sym.machine.apply(Event.RESUME, sym.machine.entered_ms, reason))
        log.warning("engine_resumed", reason=reason, symbols=len(out))
        return out

    def control(self, command: str, arg: str = "", by: str = "") -> tuple[bool, dict[str, Any]]:
        """Apply an operator command (``by``: who asked); the reply says what happened (and
        what did not)."""
        if command == "status":
            return True, self.status()
        if command == "halt":
            moved = self.halt(arg or "operator")
            return True, {"halted": True, "symbols_moved": len(moved)}
        if command == "pause":
            self.paused = True
            log.warning("engine_paused", reason=arg or "operator")
            return True, {"paused": True}
        if command == "resume":
            moved = self.resume(arg or "operator") if self.halted else []
            self.paused = False
            cleared = self.exits_only
            self._reducing.clear()
            self.exits_only = ""
            return True, {
                "paused": False,
                "halted": False,
                "exits_only_cleared": cleared,
                "symbols_moved": len(moved),
            }
        if command == "reduce":
            # Exits only: from the journal's failure or a dark position (recorded like any
            # command, so replay reduces at the same frame); an operator may ask for it too.
            reason = arg or "operator"
            cause = reason.partition(":")[0]
            if self._reducing.get(cause) != reason:
                log.error("engine_exits_only", reason=reason)
            self._reducing[cause] = reason
            self.exits_only = "; ".join(self._reducing.values())
            return True, {"exits_only": self.exits_only}
        if command == "reduce_clear":
            # A cause that has gone (a dark feed that came back) lifts its own exits-only;
            # the others stay until they go too or the operator resumes.
            if self._reducing.pop(arg, None) is not None:
                log.warning("engine_exits_only_cleared", cause=arg)
            self.exits_only = "; ".join(self._reducing.values())
            return True, {"exits_only": self.exits_only}
        if command == "flatten_token":
            if not self.execution_enabled:
                return False, {"error": "no broker is wired (execution.enabled = false)"}
            self.actions.append(Flatten(f"flatten_token:{arg}", token=arg))
            return True, {"flattening": arg}
        if command == "flatten":
            if not self.execution_enabled:
                return False, {"error": "no broker is wired (execution.enabled = false)"}
            open_ = self.positions.open_positions()
            self.actions.append(CancelAll(arg or "operator_flatten"))
            self.actions.append(Flatten(arg or "operator_flatten"))
            return True, {"flattening": open_}
        if self.governance is not None:
            handled = self.governance.control(command, arg, by)
            if handled is not None:
                return handled
        if command in ("approve", "reject"):
            return False, {"error": f"no approval queue without governance; cannot {command} {arg}"}
        return False, {"error": f"unknown command {command!r}"}

    def status(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for sym in self.symbols.values():
            name = _STATE_NAME[sym.machine.state]
            states[name] = states.get(name, 0) + 1
        return {
            "trading_state": self.trading_state.value,
            "halted": self.halted,
            "paused": self.paused,
            "exits_only": self.exits_only,
            "states": states,
            "symbols": {t: _STATE_NAME[s.machine.state] for t, s in self.symbols.items()},
            "stats": self.stats.as_dict(),
            "feed_epoch": self.feed_epoch,
            "reconciled": self.reconciled,
            "positions": {p.token: p.qty for p in self.positions.positions() if p.qty},
            "realized_pnl": round(sum(p.realized_pnl for p in self.positions.positions()), 2),
        }

    def on_feed_state(self, connected: bool) -> None:
        if connected:
            self.feed_epoch += 1

    def unprotected(self, now_ns: int, dark_after_ns: int, since_ns: int) -> list[str]:
        """Tokens holding a position whose feed has accepted no frame for ``dark_after_ns``
        (counted from ``since_ns`` for a token never heard from): their stop, target and
        square-off cannot be watched. Local time, by the health loop, never per tick."""
        out = []
        for pos in self.positions.positions():
            sym = self.symbols.get(pos.token)
            if (
                pos.qty
                and sym is not None
                and now_ns - max(sym.last_recv_ns, since_ns) > dark_after_ns
            ):
                out.append(pos.token)
        return out


_PHYSICS_ONLY = {"physics": 1.0}
_TERMINAL = (ExecKind.FILLED, ExecKind.REJECTED, ExecKind.CANCELLED)
_REFUSED_BY = {"veto": {"meta_risk": 1.0}, "capital": {"capital": 1.0}}
_STATE_NAME = {s: s.value for s in State}  # Enum.value is a slow property in 3.11


class DecisionLog:
    """Decision sink that logs decisions (all, or only those that move a state machine)."""

    def __init__(self, which: str) -> None:
        self.which = which

    def __call__(self, d: Decision) -> None:
        if self.which == "none" or (self.which == "transitions" and not d.transitions):
            return
        log.info(
            "decision",
            seq=d.seq,
            token=d.token,
            exchange_ts_ms=d.exchange_ts_ms,
            price=d.physics.close,
            energy=round(d.physics.energy, 4) if d.physics.energy == d.physics.energy else None,
            z=round(d.physics.z, 4) if d.physics.z == d.physics.z else None,
            structure=d.physics.structure.value,
            band=d.physics.band.value,
            signal=d.signal.reason,
            state=d.state,
            transitions=[
                f"{t.from_state}->{t.to_state}:{t.event}" + (f" ({t.reason})" if t.reason else "")
                for t in d.transitions
            ],
            intent=d.intent.client_order_id if d.intent else None,
            side=d.intent.side.value if d.intent else None,
            qty=d.intent.qty if d.intent else None,
            regime=d.drift.regime.value if d.drift else None,
            leverage=round(d.capital.target_leverage, 3) if d.capital else None,
            confidence=d.confidence,
        )


def session_info(cfg: Config) -> SessionInfo:
    """What produced this session: config (exactly, for replay), code version, start."""
    config_json = msgspec.json.encode(cfg)
    session_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
    return SessionInfo(
        session_id=session_id,
        started_ns=time.time_ns(),  # metadata only; the engine's logic never reads it
        mode=cfg.mode,
        config_json=config_json,
        config_sha256=hashlib.sha256(config_json).hexdigest(),
        code_version=code_version(),
    )


def code_version() -> str:
    """The package version and the git commit this code came from (metadata only)."""
    try:
        version = importlib.metadata.version("chimera")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=2,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version
