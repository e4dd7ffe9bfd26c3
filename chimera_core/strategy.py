"""The default strategy: trade energy out of a vacuum, unless the gaussian band disagrees."""

from __future__ import annotations

import math

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
