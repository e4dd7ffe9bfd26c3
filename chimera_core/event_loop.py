"""The hot path, in order: decode → feed hygiene → bars + physics → strategy →
governance → state machine → route → publish. ``Engine.on_frame`` is that path for one
frame; ``run_live`` wires it to the feed on a uvloop event loop. Logic lives in the layers.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time
from collections.abc import Callable
from typing import Any

import structlog

from chimera_core.config import Config, Credentials
from chimera_core.contracts import Decision, ExchangeType, Mode, OrderIntent, Side, Tick, Transition
from chimera_core.errors import IllegalTransition, ProtocolError
from chimera_core.feed.client import FeedClient
from chimera_core.feed.sanity import PriceFilter, Seq, SequenceTracker
from chimera_core.feed.smartapi_v2 import decode
from chimera_core.physics import warm_up_kernels
from chimera_core.state_machine import Event, ExecutionStateMachine, State
from chimera_core.strategy import DefaultStrategy
from chimera_core.symbol_physics import SymbolPhysics

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
        self.depth_updates = 0
        self.illegal_transitions = 0
        self.intents = 0
        self.bars_closed = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class SymbolContext:
    """Everything the hot path keeps for one instrument."""

    def __init__(self, token: str, exchange_type: int, cfg: Config) -> None:
        s = cfg.strategy
        self.token = token
        self.exchange_type = exchange_type
        self.physics = SymbolPhysics(
            token,
            interval_ms=s.bar_interval_s * 1000,
            energy_n=s.energy_lookback,
            z_n=s.z_lookback,
            band_n=s.band_lookback,
            k=s.band_k,
        )
        self.sequence = SequenceTracker()
        self.prices = PriceFilter(cfg.sanity.max_jump_pct)
        self.machine = ExecutionStateMachine(token, exchange_type)
        self.armed_direction = 0
        self.last_recv_ns = 0
        self.last_epoch = 0
        self.book: Tick | None = None  # latest depth/best-5 snapshot


class Engine:
    """Turns raw feed frames into Decisions. Synchronous, allocation-light, never raises
    on bad input. Time comes from the tick (exchange ms) and the injected ``clock``."""

    def __init__(
        self,
        cfg: Config,
        clock: Callable[[], int] = time.monotonic_ns,
        sinks: list[DecisionSink] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.sinks: list[DecisionSink] = list(sinks or [])
        exchange_type = int(ExchangeType[cfg.feed.exchange_type])
        self.symbols = {t: SymbolContext(t, exchange_type, cfg) for t in cfg.feed.tokens}
        self.strategy = DefaultStrategy(cfg.strategy.energy_threshold)
        self.stats = EngineStats()
        self.halted = False
        self.feed_epoch = 0  # set by the feed on every (re)connect
        self._stale_ns = int(cfg.feed.stale_after_s * 1e9)
        self._execute_timeout_ms = int(cfg.strategy.execute_timeout_s * 1000)
        self._cooldown_ms = int(cfg.strategy.cooldown_s * 1000)
        self._order_qty = cfg.strategy.order_qty
        self._seq = 0

    # ---- the hot path --------------------------------------------------------------
    def on_frame(self, frame: bytes, recv_ns: int) -> Decision | None:
        stats = self.stats
        stats.frames += 1
        # 1. decode
        try:
            tick = decode(frame, recv_ns)
        except ProtocolError as exc:
            stats.malformed += 1
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
        verdict = sym.sequence.check(tick.sequence)
        if verdict is Seq.DUPLICATE or verdict is Seq.OUT_OF_ORDER:
            if verdict is Seq.DUPLICATE:
                stats.duplicates += 1
            else:
                stats.out_of_order += 1
            return None
        if verdict is Seq.GAP:
            stats.gaps += 1
        if not sym.prices.accept(tick.ltp):
            stats.bad_price += 1
            return None
        bar_start = sym.physics.bar_start_ms
        if bar_start is not None and tick.exchange_ts_ms < bar_start:
            stats.late += 1  # never reopen a closed bar
            return None
        if tick.mode == Mode.SNAP_QUOTE:
            sym.book = tick
        stale = (
            sym.last_recv_ns == 0
            or recv_ns - sym.last_recv_ns > self._stale_ns
            or sym.last_epoch != self.feed_epoch
        )
        sym.last_recv_ns = recv_ns
        sym.last_epoch = self.feed_epoch
        # 3. bars + physics
        physics, closed = sym.physics.on_trade(tick.exchange_ts_ms, tick.ltp, tick.volume, tick.ltq)
        if closed is not None:
            stats.bars_closed += 1
        # 4. strategy
        signal_, confidence = self.strategy.evaluate(physics)
        # 5. governance: the layers arrive with their own issue; nothing is invented here.
        # 6. state machine
        transitions, intent = self._step(sym, tick, signal_.direction, stale)
        # 7. route: no broker is wired in this build; EXECUTE expires after its timeout.
        # 8. publish
        self._seq += 1
        # Positional construction: keywords cost ~0.5 µs per Decision on this path.
        decision = Decision(
            self._seq, tick.token, tick.exchange_type, tick.exchange_ts_ms, tick.sequence,
            sym.physics.bar_start_ms or 0, physics, signal_, _STATE_NAME[sym.machine.state],
            transitions, intent, confidence, _PHYSICS_ONLY, stale, recv_ns, self.clock(),
        )  # fmt: skip
        stats.decisions += 1
        for sink in self.sinks:
            sink(decision)
        return decision

    def _step(
        self, sym: SymbolContext, tick: Tick, direction: int, stale: bool
    ) -> tuple[tuple[Transition, ...], OrderIntent | None]:
        machine = sym.machine
        state = machine.state
        ts = tick.exchange_ts_ms
        try:
            if state is State.IDLE:
                if direction and not stale:
                    sym.armed_direction = direction
                    return (
                        machine.apply(Event.ARM, ts, "long" if direction > 0 else "short"),
                    ), None
            elif state is State.READY:
                if direction == sym.armed_direction and not stale:
                    return self._fire(sym, tick)
                reason = "feed_stale" if stale else "signal_gone"
                sym.armed_direction = 0
                return (machine.apply(Event.DISARM, ts, reason),), None
            elif state is State.EXECUTE and ts - machine.entered_ms >= self._execute_timeout_ms:
                return (machine.apply(Event.EXPIRED, ts, "no_execution_report"),), None
            elif state is State.COOLDOWN and ts - machine.entered_ms >= self._cooldown_ms:
                return (machine.apply(Event.COOLED, ts),), None
        except IllegalTransition as exc:
            self.stats.illegal_transitions += 1
            return (Transition("?", state.value, state.value, False, str(exc)),), None
        return (), None

    def _fire(self, sym: SymbolContext, tick: Tick) -> tuple[tuple[Transition, ...], OrderIntent]:
        bar_start = sym.physics.bar_start_ms or 0
        transition, coid, signal_seq = sym.machine.fire(bar_start, tick.exchange_ts_ms, "confirmed")
        direction = sym.armed_direction
        sym.armed_direction = 0
        intent = OrderIntent(
            client_order_id=coid,
            token=sym.token,
            exchange_type=sym.exchange_type,
            side=Side.BUY if direction > 0 else Side.SELL,
            qty=self._order_qty,
            ref_price=tick.ltp,
            bar_start_ms=bar_start,
            signal_seq=signal_seq,
            exchange_ts_ms=tick.exchange_ts_ms,
        )
        self.stats.intents += 1
        return (transition,), intent

    # ---- operator actions ----------------------------------------------------------
    def halt(self, reason: str) -> list[Transition]:
        """Kill switch: every symbol to HALT. Idempotent."""
        self.halted = True
        out = []
        for sym in self.symbols.values():
            if sym.machine.state is not State.HALT:
                out.append(sym.machine.apply(Event.HALT, sym.machine.entered_ms, reason))
        log.warning("engine_halted", reason=reason, symbols=len(out))
        return out

    def resume(self, reason: str) -> list[Transition]:
        self.halted = False
        out = []
        for sym in self.symbols.values():
            if sym.machine.state is State.HALT:
                sym.armed_direction = 0
                out.append(sym.machine.apply(Event.RESUME, sym.machine.entered_ms, reason))
        log.warning("engine_resumed", reason=reason, symbols=len(out))
        return out

    def on_feed_state(self, connected: bool) -> None:
        if connected:
            self.feed_epoch += 1


_PHYSICS_ONLY = {"physics": 1.0}
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
            transitions=[f"{t.from_state}->{t.to_state}:{t.event}" for t in d.transitions],
            intent=d.intent.client_order_id if d.intent else None,
            side=d.intent.side.value if d.intent else None,
            confidence=d.confidence,
        )


async def run_live(
    cfg: Config, credentials: Credentials, stop: asyncio.Event | None = None
) -> Engine:
    """Run the engine on the configured feed until ``stop`` is set (or SIGINT/SIGTERM)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    warm_up_kernels()  # compile/load the numba cache now, never on the first tick
    engine = Engine(cfg, sinks=[DecisionLog(cfg.logging.decisions)])
    # Start-up objects go to the permanent generation: full collections stay short.
    gc.freeze()
    feed = FeedClient(
        cfg.feed.url,
        credentials.headers(),
        engine.on_frame,
        reconnect_initial_s=cfg.feed.reconnect_initial_s,
        reconnect_max_s=cfg.feed.reconnect_max_s,
        ping_interval_s=cfg.feed.ping_interval_s,
        ping_timeout_s=cfg.feed.ping_timeout_s,
        on_state=engine.on_feed_state,
    )
    await feed.subscribe(
        int(Mode[cfg.feed.mode]), int(ExchangeType[cfg.feed.exchange_type]), list(cfg.feed.tokens)
    )
    log.info("engine_started", mode=cfg.mode, feed=cfg.feed.url, tokens=cfg.feed.tokens)
    stats_task = asyncio.ensure_future(
        _report_stats(engine, feed, cfg.logging.stats_interval_s, cfg.feed.stale_after_s, stop)
    )
    try:
        await feed.run(stop)
    finally:
        stop.set()
        await stats_task
        log.info("engine_stopped", **engine.stats.as_dict(), feed_connects=feed.stats.connects)
    return engine


async def _report_stats(
    engine: Engine, feed: FeedClient, interval_s: float, stale_after_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
        states: dict[str, int] = {}
        for sym in engine.symbols.values():
            states[sym.machine.state.value] = states.get(sym.machine.state.value, 0) + 1
        silent_s = (engine.clock() - feed.stats.last_frame_ns) / 1e9 if feed.stats.frames else None
        stale = not feed.stats.connected or (silent_s is not None and silent_s > stale_after_s)
        if stale:
            # No trading happens on it: each token re-confirms its signal after a silence.
            log.warning(
                "feed_stale",
                connected=feed.stats.connected,
                silent_s=None if silent_s is None else round(silent_s, 3),
            )
        log.info(
            "engine_stats",
            **engine.stats.as_dict(),
            feed_connected=feed.stats.connected,
            feed_connects=feed.stats.connects,
            feed_stale=stale,
            states=states,
        )
