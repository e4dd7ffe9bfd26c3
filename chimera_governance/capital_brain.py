"""Capital allocation brain: target leverage from the regime, and the position size it implies.

Leverage, in order:

1. the regime's base leverage (defaults CHAOS 0.5, STABLE 1.0, TRENDING 1.5, WARMUP 0.0 —
   no trading while the drift detector is still warming up);
2. scaled by the drift: ``drift_scale = max(0, 1 - drift_score)`` — a recent window that no
   longer looks like the reference earns proportionally less leverage (a NaN drift score
   counts as complete drift, scale 0);
3. capped at ``high_vol_leverage`` (0.5) when the per-bar volatility exceeds
   ``high_vol_threshold`` (0.02; a non-finite volatility counts as high);
4. capped at the hard ``max_leverage`` (2.0). Nothing above it is ever returned, even if a
   regime's base leverage is configured higher.

Size: the smaller of what the risk budget and the leverage allow, rounded down to a lot::

    stop_distance   = atr × stop_atr_multiple
    qty_by_risk     = equity × risk_per_trade / stop_distance
    qty_by_leverage = equity × target_leverage / price
    qty             = floor(min(qty_by_risk, qty_by_leverage) / lot_size) × lot_size

so ``qty × price <= equity × target_leverage <= equity × max_leverage``. The size is 0 (and
``reason`` says why) when atr, price or equity is not finite or not > 0, when the target
leverage is 0, or when less than one lot fits.
"""

from __future__ import annotations

import math

from chimera_core.contracts import CapitalOutput, Regime
from chimera_core.errors import ConfigError


class CapitalBrain:
    """Target leverage and position size inside the hard leverage cap. Stateless per call."""

    def __init__(
        self,
        *,
        max_leverage: float = 2.0,
        chaos_leverage: float = 0.5,
        stable_leverage: float = 1.0,
        trending_leverage: float = 1.5,
        warmup_leverage: float = 0.0,
        high_vol_threshold: float = 0.02,
        high_vol_leverage: float = 0.5,
        risk_per_trade: float = 0.01,
        stop_atr_multiple: float = 2.0,
        lot_size: int = 1,
    ) -> None:
        if not (math.isfinite(max_leverage) and max_leverage > 0.0):
            raise ConfigError(f"capital.max_leverage must be finite and > 0, got {max_leverage}")
        for name, value in (
            ("chaos_leverage", chaos_leverage),
            ("stable_leverage", stable_leverage),
            ("trending_leverage", trending_leverage),
            ("warmup_leverage", warmup_leverage),
            ("high_vol_leverage", high_vol_leverage),
        ):
            # Above max_leverage is allowed: the hard cap clips it in update().
            if not (math.isfinite(value) and value >= 0.0):
                raise ConfigError(f"capital.{name} must be finite and >= 0, got {value}")
        if not (math.isfinite(high_vol_threshold) and high_vol_threshold > 0.0):
            raise ConfigError(
                f"capital.high_vol_threshold must be finite and > 0 (per-bar std of log "
                f"returns, e.g. 0.02), got {high_vol_threshold}"
            )
        if not (math.isfinite(risk_per_trade) and 0.0 < risk_per_trade <= 1.0):
            raise ConfigError(
                f"capital.risk_per_trade must be in (0, 1] (fraction of equity, e.g. 0.01), "
                f"got {risk_per_trade}"
            )
        if not (math.isfinite(stop_atr_multiple) and stop_atr_multiple > 0.0):
            raise ConfigError(
                f"capital.stop_atr_multiple must be finite and > 0, got {stop_atr_multiple}"
            )
        if isinstance(lot_size, bool) or not isinstance(lot_size, int) or lot_size < 1:
            raise ConfigError(f"capital.lot_size must be an integer >= 1, got {lot_size!r}")
        self.max_leverage = float(max_leverage)
        self.regime_leverage = {
            Regime.CHAOS: float(chaos_leverage),
            Regime.STABLE: float(stable_leverage),
            Regime.TRENDING: float(trending_leverage),
            Regime.WARMUP: float(warmup_leverage),
        }
        self.high_vol_threshold = float(high_vol_threshold)
        self.high_vol_leverage = float(high_vol_leverage)
        self.risk_per_trade = float(risk_per_trade)
        self.stop_atr_multiple = float(stop_atr_multiple)
        self.lot_size = lot_size

    def update(
        self,
        regime: Regime,
        drift_score: float,
        volatility: float,
        atr: float,
        price: float,
        equity: float,
        lot_size: int | None = None,
    ) -> CapitalOutput:
        """Target leverage for ``regime`` and the quantity it allows at ``price``, in whole
        lots of ``lot_size`` (the instrument's; default the configured one)."""
        lot = self.lot_size if lot_size is None else max(1, int(lot_size))
        base = self.regime_leverage[regime]
        drift_scale = max(0.0, 1.0 - drift_score) if not math.isnan(drift_score) else 0.0
        drift_scale = min(drift_scale, 1.0)  # a negative score must not raise leverage
        high_vol = not (math.isfinite(volatility) and volatility <= self.high_vol_threshold)
        target = min(self.max_leverage, base * drift_scale)
        if high_vol:
            target = min(target, self.high_vol_leverage)
        why = f"{regime.value} {base:g}x × drift_scale {drift_scale:.3f}"
        if high_vol:
            why += f", high volatility {volatility:.4g} > {self.high_vol_threshold:g}"
        why += f" → {target:.3f}x (cap {self.max_leverage:g}x)"

        stop_distance = atr * self.stop_atr_multiple
        qty, sizing = self._size(target, stop_distance, atr, price, equity, lot)
        return CapitalOutput(
            target_leverage=target,
            regime_leverage=base,
            max_leverage=self.max_leverage,
            high_volatility=high_vol,
            drift_scale=drift_scale,
            equity=equity,
            stop_distance=stop_distance if math.isfinite(stop_distance) else 0.0,
            qty=qty,
            lot_size=lot,
            reason=f"{why}; {sizing}",
        )

    def _size(
        self,
        target: float,
        stop_distance: float,
        atr: float,
        price: float,
        equity: float,
        lot_size: int,
    ) -> tuple[int, str]:
        if not (math.isfinite(atr) and atr > 0.0):
            return 0, f"qty 0: atr {atr!r} is not a finite number > 0"
        if not (math.isfinite(price) and price > 0.0):
            return 0, f"qty 0: price {price!r} is not a finite number > 0"
        if not (math.isfinite(equity) and equity > 0.0):
            return 0, f"qty 0: equity {equity!r} is not a finite number > 0"
        if target <= 0.0:
            return 0, "qty 0: target leverage is 0"
        qty_by_risk = equity * self.risk_per_trade / stop_distance
        qty_by_leverage = equity * target / price
        raw = min(qty_by_risk, qty_by_leverage)
        if not math.isfinite(raw):
            return 0, f"qty 0: size {raw!r} is not finite (atr {atr!r} too small?)"
        lots = math.floor(raw / lot_size)
        qty = lots * lot_size
        bound = "risk" if qty_by_risk <= qty_by_leverage else "leverage"
        if qty == 0:
            return 0, f"qty 0: less than one lot of {lot_size} fits ({raw:.3f} by {bound})"
        return (
            qty,
            f"qty {qty} bound by {bound} ({qty_by_risk:.3f} risk, {qty_by_leverage:.3f} lev)",
        )
