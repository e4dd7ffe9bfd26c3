"""Promotion gates: what a shadow candidate must show against the active genome.

Both ran on the same ticks, so their equity is sampled at the same bar closes and the
comparison is paired: per-bar returns of the candidate against the active's.

- ``min_days`` distinct trading days and ``min_trades`` closed round trips in shadow;
- Sharpe (per bar: mean / std of returns, ddof=1; 0 when flat) above the active's by at
  least ``min_sharpe_edge``;
- max drawdown (``tools.backtest.metrics.drawdown``) at most ``max_drawdown_excess``
  above the active's;
- a one-sided paired t-test (``scipy.stats.ttest_rel``, candidate greater) of the per-bar
  returns with p at most ``significance`` (no p without at least two paired returns
  whose differences vary: the gate fails);
- at most ``max_violations`` governance violations (kill switches the candidate tripped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from scipy import stats

from chimera_core.config import ShadowGatesConfig
from tools.backtest.metrics import drawdown


class GateCheck(msgspec.Struct, frozen=True):
    name: str
    ok: bool
    detail: str


class GateVerdict(msgspec.Struct, frozen=True, kw_only=True):
    passed: bool
    checks: tuple[GateCheck, ...]
    sharpe: float
    active_sharpe: float
    max_drawdown: float
    active_max_drawdown: float
    p_value: float | None
    samples: int

    def summary(self) -> str:
        return "; ".join(f"{c.name} {'ok' if c.ok else 'FAIL'} ({c.detail})" for c in self.checks)


# Per-bar returns that spread less than this are constant up to rounding: their Sharpe is
# undefined (0 here), not the 1e14 a division by rounding noise gives.
MIN_RETURN_SD = 1e-12


def sharpe(returns: np.ndarray) -> float:
    if returns.size < 2:
        return 0.0
    sd = float(np.std(returns, ddof=1))
    return float(np.mean(returns)) / sd if sd > MIN_RETURN_SD else 0.0


def _returns(equity: np.ndarray, start: float) -> np.ndarray:
    prev = np.concatenate(([start], equity[:-1]))
    return np.asarray(equity / prev - 1.0, dtype=np.float64)


def _paper_live(bound: float, twin: dict[str, Any] | None) -> GateCheck:
    if twin is None:
        return GateCheck("paper_live", True, "no paper twin: the engine trades on paper")
    if bound <= 0:
        return GateCheck("paper_live", True, "not judged (max_paper_live_bps = 0)")
    diff = twin.get("price_diff_bps") or {}
    p50, n = diff.get("p50"), int(diff.get("n") or 0)
    if p50 is None:
        return GateCheck("paper_live", False, "no order filled on both sides yet")
    return GateCheck(
        "paper_live",
        abs(float(p50)) <= bound,
        f"median live-paper fill {float(p50):+.2f} bps over {n} orders, allowed ±{bound:g}",
    )


def judge(
    gates: ShadowGatesConfig,
    equity: Sequence[float],
    active_equity: Sequence[float],
    start: float,
    trades: int,
    days: int,
    violations: int,
    twin: dict[str, Any] | None = None,
) -> GateVerdict:
    """The verdict on one candidate; ``equity`` and ``active_equity`` are sampled at the
    same bar closes, ``start`` is the equity both started with. ``twin``: the paper twin's
    figures (``tools.shadow.twin.aggregate``) where one runs, else None (the engine is on
    the paper broker: paper is what it trades, nothing to compare)."""
    n = min(len(equity), len(active_equity))
    mine = np.asarray(equity[:n], dtype=np.float64)
    theirs = np.asarray(active_equity[:n], dtype=np.float64)
    r_mine, r_theirs = _returns(mine, start), _returns(theirs, start)
    s_mine, s_theirs = sharpe(r_mine), sharpe(r_theirs)
    dd_mine = drawdown(mine, start)[0] if n else 0.0
    dd_theirs = drawdown(theirs, start)[0] if n else 0.0
    p: float | None = None
    diff = r_mine - r_theirs
    if n >= 2 and float(np.std(diff)) > 0:
        p = float(stats.ttest_rel(r_mine, r_theirs, alternative="greater").pvalue)
        p = p if math.isfinite(p) else None
    checks = (
        GateCheck("days", days >= gates.min_days, f"{days} of {gates.min_days}"),
        GateCheck("trades", trades >= gates.min_trades, f"{trades} of {gates.min_trades}"),
        GateCheck(
            "sharpe",
            s_mine - s_theirs >= gates.min_sharpe_edge,
            f"{s_mine:.4f} vs active {s_theirs:.4f}, edge needed {gates.min_sharpe_edge}",
        ),
        GateCheck(
            "drawdown",
            dd_mine <= dd_theirs + gates.max_drawdown_excess,
            f"{dd_mine:.4%} vs active {dd_theirs:.4%}, excess allowed "
            f"{gates.max_drawdown_excess:.4%}",
        ),
        GateCheck(
            "significance",
            p is not None and p <= gates.significance,
            f"p={'n/a' if p is None else f'{p:.4g}'} over {n} bars, needed <= {gates.significance}",
        ),
        GateCheck(
            "governance",
            violations <= gates.max_violations,
            f"{violations} violation(s), allowed {gates.max_violations}",
        ),
        _paper_live(gates.max_paper_live_bps, twin),
    )
    return GateVerdict(
        passed=all(c.ok for c in checks),
        checks=checks,
        sharpe=s_mine,
        active_sharpe=s_theirs,
        max_drawdown=dd_mine,
        active_max_drawdown=dd_theirs,
        p_value=p,
        samples=n,
    )
