"""The default strategy: trade energy out of a vacuum, unless the gaussian band disagrees."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Protocol

from chimera_core.config import StrategyConfig
from chimera_core.contracts import Band, PhysicsState, Signal, Structure

# Shared no-signal answers: Signal is frozen, and building one per tick costs time.
_WARMUP = (Signal(0, "warmup"), 0.0)
_WEAK = (Signal(0, "energy_below_threshold"), 0.0)
_TRAPPED = (Signal(0, "trapped"), 0.0)
_NO_LONG = (Signal(0, "band_contradicts_long"), 0.0)
_NO_SHORT = (Signal(0, "band_contradicts_short"), 0.0)
_S_WARMUP, _VACUUM = Structure.WARMUP, Structure.VACUUM
_B_WARMUP, _BREAKOUT, _BREAKDOWN = Band.WARMUP, Band.BREAKOUT, Band.BREAKDOWN


class Strategy(Protocol):
    """What the engine asks of a strategy, per tick, for one instrument (a plug-in for event
    mode and live: see docs/BACKTEST.md). ``physics`` carries the live close and the number
    of closed bars, so a strategy on bar closes sees each bar close once, at the first print
    of the next bar. Keep it cheap: it runs on every tick."""

    def evaluate(self, physics: PhysicsState) -> tuple[Signal, float]:
        """The signal (direction -1/0/+1 and a reason) and a confidence in [0, 1]."""
        ...

    def exit_reason(
        self, physics: PhysicsState, signal: Signal, position_sign: int, held_ms: int
    ) -> str:
        """Why a position of sign ``position_sign`` held ``held_ms`` should close now, or ""."""
        ...


# Builds one instrument's strategy from [strategy] and the genome's genes in force (empty
# before a genome is known); called again when a new genome version takes effect.
StrategyFactory = Callable[[StrategyConfig, Mapping[str, float]], Strategy]


def default_factory(cfg: StrategyConfig, params: Mapping[str, float]) -> Strategy:
    """The default econophysics strategy, its threshold from the genome when it has one."""
    return strategy_for(cfg, float(params.get("energy_threshold", cfg.energy_threshold)))


def strategy_for(cfg: StrategyConfig, energy_threshold: float) -> DefaultStrategy:
    """The default strategy with ``energy_threshold`` (the genome's) and the configured
    exit rules."""
    return DefaultStrategy(
        energy_threshold,
        cfg.exit_energy_ratio,
        cfg.exit_on_reversal,
        int(cfg.max_hold_s * 1000),
    )


class DefaultStrategy:
    """Enter when |energy| > threshold and structure is VACUUM, in the direction of energy,
    unless the gaussian band contradicts it (long into BREAKDOWN, short into BREAKOUT).
    Nothing trades until every window is warm."""

    def __init__(
        self,
        energy_threshold: float = 0.2,
        exit_energy_ratio: float = 0.25,
        exit_on_reversal: bool = True,
        max_hold_ms: int = 0,
    ) -> None:
        self.energy_threshold = energy_threshold
        self.exit_energy = exit_energy_ratio * energy_threshold
        self.exit_on_reversal = exit_on_reversal
        self.max_hold_ms = max_hold_ms

    def exit_reason(
        self, physics: PhysicsState, signal: Signal, position_sign: int, held_ms: int
    ) -> str:
        """Why a position of sign ``position_sign`` held ``held_ms`` should close now ("" if
        it should not): the signal reversed, the energy that carried it decayed below
        ``exit_energy_ratio`` x the entry threshold (in the position's direction), or it
        was held too long."""
        if self.exit_on_reversal and signal.direction == -position_sign:
            return "signal_reversal"
        energy = physics.energy
        if (
            self.exit_energy > 0
            and math.isfinite(energy)
            and energy * position_sign < self.exit_energy
        ):
            return "energy_decay"
        if self.max_hold_ms > 0 and held_ms >= self.max_hold_ms:
            return "max_hold"
        return ""

    def evaluate(self, physics: PhysicsState) -> tuple[Signal, float]:
        """The signal and a confidence in [0, 1] (0 when there is no signal)."""
        structure, band = physics.structure, physics.band
        if structure is _S_WARMUP or band is _B_WARMUP:
            return _WARMUP
        energy = physics.energy
        if not math.isfinite(energy) or abs(energy) <= self.energy_threshold:
            return _WEAK
        if structure is not _VACUUM:
            return _TRAPPED
        direction = 1 if energy > 0 else -1
        if direction > 0 and band is _BREAKDOWN:
            return _NO_LONG
        if direction < 0 and band is _BREAKOUT:
            return _NO_SHORT
        # Confidence grows with how far energy and displacement clear their thresholds.
        energy_part = min(1.0, abs(energy) / (2.0 * self.energy_threshold))
        z_part = min(1.0, abs(physics.z) / 2.0) if math.isfinite(physics.z) else 0.0
        agree = 1.0 if band is not Band.NEUTRAL else 0.8
        return Signal(direction, "long" if direction > 0 else "short"), round(
            agree * 0.5 * (energy_part + z_part), 6
        )


_MA_WARMUP = (Signal(0, "warmup"), 0.0)
_MA_NO_CROSS = (Signal(0, "no_cross"), 0.0)
_MA_BELOW = (Signal(0, "crossed_below_long_only"), 0.0)
_MA_UP = (Signal(1, "crossed_above"), 1.0)
_MA_DOWN = (Signal(-1, "crossed_below"), 1.0)


class MovingAverageCross:
    """The worked example: enter long when the fast simple moving average of bar closes
    crosses above the slow one, short when it crosses below (``long_only``: no shorts);
    exit when they cross back (or at the bracket). The signal stands for the one bar after
    the cross (the state machine confirms it on two prints and enters at that bar's open);
    there is no re-entry until the next cross. Each bar close is taken once, at the first
    print of the next bar (the engine closes bars by exchange time): only closed bars count.
    """

    def __init__(self, fast: int = 10, slow: int = 30, long_only: bool = False) -> None:
        if not (isinstance(fast, int) and isinstance(slow, int) and 1 <= fast < slow):
            raise ValueError(f"ma_cross needs whole windows 1 <= fast < slow, got {fast}, {slow}")
        self.fast, self.slow, self.long_only = fast, slow, long_only
        self._closes: list[float] = []
        self._seen_bars = 0
        self._last_close = math.nan
        self._direction = 0  # sign(fast - slow) at the last close (0 until warm)
        self._signal = _MA_WARMUP

    def _on_bar_close(self, close: float) -> None:
        closes = self._closes
        closes.append(close)
        if len(closes) > self.slow:
            del closes[0]
        if len(closes) < self.slow:
            return
        fast = sum(closes[-self.fast :]) / self.fast
        slow = sum(closes) / self.slow
        # Averages within 1e-10 (relative) are equal: summation order must not make a flat
        # market cross (fast mode sums in another order and must agree).
        direction = 0 if abs(fast - slow) <= 1e-10 * abs(slow) else 1 if fast > slow else -1
        before, self._direction = self._direction, direction
        if before and direction and direction != before:
            if direction < 0 and self.long_only:
                self._signal = _MA_BELOW
            else:
                self._signal = _MA_UP if direction > 0 else _MA_DOWN
        else:
            self._signal = _MA_NO_CROSS

    def evaluate(self, physics: PhysicsState) -> tuple[Signal, float]:
        if physics.closed_bars > self._seen_bars:
            # The first print of a new bar: the last print before it closed the bar.
            if math.isfinite(self._last_close):
                self._on_bar_close(self._last_close)
            self._seen_bars = physics.closed_bars
        self._last_close = physics.close
        return self._signal

    def exit_reason(
        self, physics: PhysicsState, signal: Signal, position_sign: int, held_ms: int
    ) -> str:
        if self._signal[0].direction == position_sign:
            self._signal = _MA_NO_CROSS  # this cross is taken: one entry per cross
        if self._direction == -position_sign:
            return "ma_cross"
        return ""


def ma_cross_factory(fast: int = 10, slow: int = 30, long_only: bool = False) -> StrategyFactory:
    """A StrategyFactory for MovingAverageCross; the genome's ``fast``/``slow``/``long_only``
    genes (when it has them) win over these."""

    def make(cfg: StrategyConfig, params: Mapping[str, float]) -> Strategy:
        return MovingAverageCross(
            int(params.get("fast", fast)),
            int(params.get("slow", slow)),
            bool(params.get("long_only", long_only)),
        )

    return make
