"""Monte Carlo on a backtest: a stationary block bootstrap of its daily returns (arch's
``StationaryBootstrap``, block length from arch's ``optimal_block_length`` unless given)
and a resampling of its trade order. Every path is judged against the governance rules:
a trading day losing ``daily_loss_pct`` of its opening equity, a drawdown from the
high-water mark reaching ``max_drawdown``, and ruin (equity down ``ruin_loss`` from the
start, at any time).

The path statistics are plain numpy over an (N, T) equity matrix, so 1,000 paths of ten
years of daily bars take well under a second (benchmarks/stress_mc.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
TRADE_MODES = ("shuffle", "replace")


class StressError(ChimeraError):
    """A stress run that cannot go as asked (too little history, a bad setting)."""


@dataclass(frozen=True)
class Limits:
    """The rules a path is judged by (``[governance]`` daily_loss_pct, max_drawdown)."""

    daily_loss_pct: float
    max_drawdown: float
    ruin_loss: float = 0.5

    def check(self) -> None:
        for name in ("daily_loss_pct", "max_drawdown", "ruin_loss"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise StressError(f"{name} = {value!r}: a fraction strictly between 0 and 1")


@dataclass(frozen=True)
class PathStats:
    """Per-path numbers, each an array of N."""

    final_return: FloatArray
    max_drawdown: FloatArray
    drawdown_duration: IntArray  # longest underwater run, in steps (days or trades)
    worst_day: FloatArray  # the worst day's return on its opening equity (negative = loss)
    min_equity_ratio: FloatArray  # lowest equity / starting equity


def daily_returns(
    ts_ms: npt.NDArray[np.int64], equity: FloatArray, start_equity: float, tz: str = "UTC"
) -> tuple[FloatArray, npt.NDArray[np.datetime64]]:
    """Each trading day's return on its opening equity (the previous day's close, the
    starting equity on the first day), from a per-bar equity curve; and the days."""
    from zoneinfo import ZoneInfo

    import pandas as pd

    if len(ts_ms) != len(equity) or len(ts_ms) == 0:
        raise StressError(
            f"equity curve: {len(ts_ms)} timestamps and {len(equity)} values; expected the "
            "same, non-zero number (equity.csv of a chimera backtest)"
        )
    if not np.all(np.isfinite(equity)) or np.any(equity <= 0):
        raise StressError("equity curve: every value must be a finite positive number")
    when = pd.to_datetime(np.asarray(ts_ms, dtype=np.int64), unit="ms", utc=True)
    days = when.tz_convert(ZoneInfo(tz)).normalize().tz_localize(None).to_numpy()
    last = np.r_[days[1:] != days[:-1], True]  # each day's last bar
    closes = np.asarray(equity, dtype=np.float64)[last]
    opens = np.r_[start_equity, closes[:-1]]
    return closes / opens - 1.0, days[last]


def block_length(returns: FloatArray) -> float:
    """arch's optimal expected block length for the stationary bootstrap (Politis and
    White 2004, Patton et al. 2009), at least 1."""
    from arch.bootstrap import optimal_block_length

    if returns.size < 10 or not np.any(returns != returns[0]):
        return 1.0
    value = float(optimal_block_length(returns)["stationary"].iloc[0])
    return max(1.0, value) if np.isfinite(value) else 1.0


def bootstrap_indices(n_obs: int, n_paths: int, block: float, seed: int) -> IntArray:
    """(n_paths, n_obs) indices into the return series from arch's stationary bootstrap,
    seeded: the same seed gives the same indices."""
    from arch.bootstrap import StationaryBootstrap

    if n_obs < 2:
        raise StressError(f"{n_obs} return(s): the bootstrap needs at least 2 days of history")
    if n_paths < 1:
        raise StressError(f"paths = {n_paths}: at least 1")
    if not block >= 1.0:
        raise StressError(f"block length {block!r}: at least 1 (expected block length, days)")
    # arch takes the expected block length as a float, though its stub says int.
    bs = StationaryBootstrap(block, np.arange(n_obs), seed=np.random.default_rng(seed))  # type: ignore[arg-type]
    out = np.empty((n_paths, n_obs), dtype=np.int64)
    for i, _ in enumerate(bs.bootstrap(n_paths)):
        out[i] = np.asarray(bs.index, dtype=np.int64)
    return out


def trade_orders(n_trades: int, n_paths: int, seed: int, mode: str = "shuffle") -> IntArray:
    """(n_paths, n_trades) trade indices: each row a permutation ("shuffle": the same
    trades in another order) or a draw with replacement ("replace")."""
    if mode not in TRADE_MODES:
        raise StressError(f"trade resampling {mode!r}: one of {', '.join(TRADE_MODES)}")
    if n_trades < 1:
        raise StressError("no trades to resample: the backtest made none")
    rng = np.random.default_rng(seed)
    if mode == "replace":
        return rng.integers(0, n_trades, size=(n_paths, n_trades), dtype=np.int64)
    base = np.broadcast_to(np.arange(n_trades, dtype=np.int64), (n_paths, n_trades))
    return rng.permuted(base, axis=1)


def path_stats(equity: FloatArray, start_equity: float, day_returns: FloatArray) -> PathStats:
    """The statistics of each row of ``equity`` (N, T), the equity after each step, with
    ``day_returns`` (N, D) each day's return on its opening equity."""
    n, t = equity.shape
    full = np.empty((n, t + 1))
    full[:, 0] = start_equity
    full[:, 1:] = equity
    peak = np.maximum.accumulate(full, axis=1)
    drawdown = 1.0 - full / peak
    # Underwater runs: steps since the last one at the high-water mark.
    steps = np.arange(t + 1, dtype=np.int64)
    at_peak = np.where(full >= peak, steps, 0)
    since = steps - np.maximum.accumulate(at_peak, axis=1)
    worst = day_returns.min(axis=1) if day_returns.shape[1] else np.zeros(n)
    return PathStats(
        final_return=equity[:, -1] / start_equity - 1.0,
        max_drawdown=drawdown.max(axis=1),
        drawdown_duration=since.max(axis=1),
        worst_day=worst,
        min_equity_ratio=full.min(axis=1) / start_equity,
    )


def returns_paths(
    returns: FloatArray, start_equity: float, indices: IntArray
) -> tuple[FloatArray, PathStats]:
    """Equity paths from resampled daily returns: ``start · Π (1 + r[idx])``."""
    sampled = np.asarray(returns[indices], dtype=np.float64)
    equity = start_equity * np.cumprod(1.0 + sampled, axis=1, dtype=np.float64)
    return equity, path_stats(equity, start_equity, sampled)


def trade_paths(
    pnl: FloatArray, trade_day: IntArray, start_equity: float, orders: IntArray
) -> tuple[FloatArray, PathStats]:
    """Equity paths from reordered trades. The calendar stays: the k-th trade of a path
    closes on the day the k-th trade of the backtest closed (``trade_day``, ascending
    day numbers), so the daily-loss rule is judged on the same trading days."""
    if np.any(np.diff(trade_day) < 0):
        raise StressError("trade days must be in closing order (ascending)")
    sampled = pnl[orders]
    equity = start_equity + np.cumsum(sampled, axis=1)
    # Each day's P&L on that day's opening equity.
    starts = np.r_[0, np.flatnonzero(np.diff(trade_day)) + 1]
    day_pnl = np.add.reduceat(sampled, starts, axis=1)
    day_close = equity[:, np.r_[starts[1:] - 1, sampled.shape[1] - 1]]
    day_open = day_close - day_pnl
    return equity, path_stats(equity, start_equity, day_pnl / day_open)


def summary(stats: PathStats, limits: Limits) -> dict[str, object]:
    """Percentiles and rule-trip probabilities over the paths (the JSON report's block)."""
    limits.check()
    q = list(PERCENTILES)

    def pct(a: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> dict[str, float]:
        return {f"p{p:g}": float(v) for p, v in zip(q, np.percentile(a, q), strict=True)}

    return {
        "paths": int(stats.final_return.size),
        "final_return": pct(stats.final_return),
        "max_drawdown": pct(stats.max_drawdown),
        "drawdown_duration": pct(stats.drawdown_duration),
        "mean_final_return": float(stats.final_return.mean()),
        "p_daily_loss_trip": float(np.mean(stats.worst_day <= -limits.daily_loss_pct)),
        "p_drawdown_trip": float(np.mean(stats.max_drawdown >= limits.max_drawdown)),
        "p_ruin": float(np.mean(stats.min_equity_ratio <= 1.0 - limits.ruin_loss)),
    }


def fan_bands(equity: FloatArray, levels: Sequence[float] = (5, 25, 50, 75, 95)) -> FloatArray:
    """Percentile bands of the equity paths at each step, (len(levels), T)."""
    return np.percentile(equity, list(levels), axis=0)
