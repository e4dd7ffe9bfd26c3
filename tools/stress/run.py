"""A Monte Carlo run on a ``chimera backtest`` result directory (result.json, trades.csv,
equity.csv: tools/backtest/report.py), as the JSON block and the arrays to plot."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog

from tools.stress.montecarlo import (
    FloatArray,
    Limits,
    StressError,
    block_length,
    bootstrap_indices,
    daily_returns,
    fan_bands,
    returns_paths,
    summary,
    trade_orders,
    trade_paths,
)

log = structlog.get_logger(__name__)

FAN_LEVELS = (5.0, 25.0, 50.0, 75.0, 95.0)


@dataclass(frozen=True)
class Backtest:
    """What Monte Carlo reads from a result directory."""

    start_equity: float
    ts_ms: np.ndarray
    equity: FloatArray
    trade_pnl: FloatArray
    trade_exit_ts_ms: np.ndarray
    source: str


def load_backtest(out_dir: Path) -> Backtest:
    """result.json, equity.csv and trades.csv of a ``chimera backtest --report DIR``."""
    need = [out_dir / n for n in ("result.json", "equity.csv", "trades.csv")]
    missing = [p.name for p in need if not p.is_file()]
    if missing:
        raise StressError(
            f"{out_dir}: no {', '.join(missing)}; give the directory a `chimera backtest "
            "--report DIR` wrote (result.json, trades.csv, equity.csv)"
        )
    result = orjson.loads(need[0].read_bytes())
    start = result.get("starting_equity")
    if not isinstance(start, (int, float)) or start <= 0:
        raise StressError(f"{need[0]}: starting_equity = {start!r}, expected a positive number")
    eq = np.loadtxt(need[1], delimiter=",", skiprows=1, usecols=(0, 2), ndmin=2)
    pnl: list[float] = []
    exits: list[int] = []
    with need[2].open(newline="", encoding="utf-8") as fh:
        first = fh.readline()
        if first.strip() != "no trades":
            fh.seek(0)
            for row in csv.DictReader(fh):
                pnl.append(float(row["pnl"]))
                exits.append(int(row["exit_ts_ms"]))
    order = np.argsort(np.asarray(exits, dtype=np.int64), kind="stable")
    return Backtest(
        start_equity=float(start),
        ts_ms=eq[:, 0].astype(np.int64),
        equity=eq[:, 1].astype(np.float64),
        trade_pnl=np.asarray(pnl, dtype=np.float64)[order],
        trade_exit_ts_ms=np.asarray(exits, dtype=np.int64)[order],
        source=str(out_dir),
    )


def monte_carlo(
    bt: Backtest,
    limits: Limits,
    paths: int = 1000,
    seed: int = 0,
    block: float | None = None,
    trade_mode: str = "shuffle",
    tz: str = "UTC",
) -> tuple[dict[str, Any], dict[str, FloatArray]]:
    """Both kinds of Monte Carlo on ``bt``; the JSON block and the fan/histogram arrays."""
    limits.check()
    returns, _days = daily_returns(bt.ts_ms, bt.equity, bt.start_equity, tz)
    chosen = block_length(returns) if block is None else float(block)
    idx = bootstrap_indices(returns.size, paths, chosen, seed)
    equity, stats = returns_paths(returns, bt.start_equity, idx)
    out: dict[str, Any] = {
        "source": bt.source,
        "seed": seed,
        "paths": paths,
        "limits": {
            "daily_loss_pct": limits.daily_loss_pct,
            "max_drawdown": limits.max_drawdown,
            "ruin_loss": limits.ruin_loss,
        },
        "returns_bootstrap": {
            "days": int(returns.size),
            "block_length": chosen,
            "block_length_from": "given" if block is not None else "arch.optimal_block_length",
            **summary(stats, limits),
        },
    }
    arrays: dict[str, FloatArray] = {
        "fan": fan_bands(equity, FAN_LEVELS),
        "fan_sample": equity[: min(paths, 30)],
        "drawdowns": stats.max_drawdown,
    }
    if bt.trade_pnl.size:
        trade_days, _ = _trade_days(bt.trade_exit_ts_ms, tz)
        orders = trade_orders(bt.trade_pnl.size, paths, seed + 1, trade_mode)
        _, tstats = trade_paths(bt.trade_pnl, trade_days, bt.start_equity, orders)
        out["trade_order"] = {
            "trades": int(bt.trade_pnl.size),
            "mode": trade_mode,
            **summary(tstats, limits),
        }
        arrays["trade_drawdowns"] = tstats.max_drawdown
    else:
        out["trade_order"] = None
    log.info("stress_montecarlo", paths=paths, days=int(returns.size), block=chosen)
    return out, arrays


def _trade_days(exit_ts_ms: np.ndarray, tz: str) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    when = pd.to_datetime(exit_ts_ms, unit="ms", utc=True).tz_convert(tz).normalize()
    days = when.tz_localize(None).to_numpy()
    _, number = np.unique(days, return_inverse=True)
    return number.astype(np.int64), days
