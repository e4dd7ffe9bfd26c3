"""Monte Carlo on prices, re-run through fast mode: each path is the data's bars
rebuilt from a stationary block bootstrap (arch) of their moves relative to the previous
close (open, high, low and close together, so every bar stays a bar), and the strategy
trades each path afresh in fast mode (``tools/backtest/fast.py``) on the same calendar.
Where returns and trade-order Monte Carlo ask how bad the realised P&L could have been
in another order, this asks how the strategy fares on other price histories like the
one it was tested on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from chimera_core.config import Config
from tools.stress.montecarlo import (
    FloatArray,
    IntArray,
    Limits,
    StressError,
    block_length,
    bootstrap_indices,
    path_stats,
    summary,
)

log = structlog.get_logger(__name__)


def bar_relatives(bars: Any) -> FloatArray:
    """(4, n-1): each bar's open, high, low and close over the previous bar's close."""
    o, h, lo, c = (
        np.asarray(getattr(bars, k), dtype=np.float64) for k in ("open", "high", "low", "close")
    )
    if o.size < 3:
        raise StressError(f"{o.size} bar(s): price Monte Carlo needs at least 3")
    prev = c[:-1]
    return np.vstack([o[1:] / prev, h[1:] / prev, lo[1:] / prev, c[1:] / prev])


def rebuild(bars: Any, rel: FloatArray, idx: IntArray) -> tuple[FloatArray, ...]:
    """(open, high, low, close, volume), each (N, n): bar 0 as it was, bar k ≥ 1 the
    resampled move ``idx[:, k-1]`` applied to the path's previous close, to the cent."""
    first = [float(np.asarray(getattr(bars, k))[0]) for k in ("open", "high", "low", "close")]
    n_paths = idx.shape[0]
    close = np.empty((n_paths, idx.shape[1] + 1))
    close[:, 0] = first[3]
    close[:, 1:] = first[3] * np.cumprod(rel[3][idx], axis=1)
    prev = close[:, :-1]
    out = []
    for k in range(3):
        a = np.empty_like(close)
        a[:, 0] = first[k]
        a[:, 1:] = prev * rel[k][idx]
        out.append(a)
    # The feed's price unit is 1/100; rounding may cross a bar's own extremes by a cent.
    o, h, lo, c = (np.round(a, 2).astype(np.float64) for a in (out[0], out[1], out[2], close))
    h = np.maximum(h, np.maximum(o, c))
    lo = np.minimum(lo, np.minimum(o, c))
    vol = np.asarray(bars.volume, dtype=np.float64)
    volume = np.empty_like(close)
    volume[:, 0] = vol[0]
    volume[:, 1:] = vol[1:][idx]
    return o, h, lo, c, volume


def reprice_monte_carlo(
    cfg: Config,
    bars: Any,
    strategy: str,
    params: Mapping[str, float] | None,
    limits: Limits,
    paths: int = 1000,
    seed: int = 0,
    block: float | None = None,
    token: str = "BT",
    exchange_type: int = 1,
    long_only: bool = False,
    tz: str = "UTC",
    fast_settings: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], FloatArray]:
    """The JSON block and the (N, n) equity paths."""
    from tools.backtest.event import backtest_config
    from tools.backtest.run import _checked, fast_inputs
    from tools.backtest.strategies import get

    limits.check()
    spec = get(strategy)
    checked = _checked(spec, params)
    bt = backtest_config(cfg, bars, token, exchange_type, Path("."))
    ts = np.asarray(bars.ts_ms, dtype=np.int64)
    settings, entries, square_off, open_delay = fast_inputs(
        bt, bars, token, exchange_type, long_only, fast_settings
    )
    rel = bar_relatives(bars)
    chosen = block_length(np.log(rel[3])) if block is None else float(block)
    idx = bootstrap_indices(rel.shape[1], paths, chosen, seed)
    o, h, lo, c, v = rebuild(bars, rel, idx)
    equity = np.empty_like(c)
    trades = np.empty(paths, dtype=np.int64)
    for i in range(paths):
        out = spec.run_fast(
            o[i],
            h[i],
            lo[i],
            c[i],
            v[i],
            settings=settings,
            params=checked,
            ts_ms=ts,
            entries_allowed=entries,
            square_off=square_off,
            open_delay=open_delay,
        )
        equity[i] = out.equity
        trades[i] = len(out.trades.as_records())
    start = float(settings.initial_equity)
    stats = path_stats(equity, start, _day_returns(ts, equity, start, tz))
    block_out = {
        "bars": int(ts.size),
        "strategy": strategy,
        "params": checked,
        "fast_settings": dict(fast_settings or {}),
        "block_length": chosen,
        "block_length_from": "given" if block is not None else "arch.optimal_block_length",
        "trades": {
            "p5": float(np.percentile(trades, 5)),
            "p50": float(np.median(trades)),
            "p95": float(np.percentile(trades, 95)),
        },
        **summary(stats, limits),
    }
    log.info("stress_reprice", paths=paths, bars=int(ts.size), block=chosen)
    return block_out, equity


def _day_returns(
    ts_ms: npt.NDArray[np.int64], equity: FloatArray, start: float, tz: str
) -> FloatArray:
    """(N, D): each trading day's return on its opening equity, for every path."""
    import pandas as pd

    days = pd.to_datetime(ts_ms, unit="ms", utc=True).tz_convert(tz).normalize().to_numpy()
    last = np.r_[days[1:] != days[:-1], True]
    closes = equity[:, last]
    opens = np.hstack([np.full((equity.shape[0], 1), start), closes[:, :-1]])
    return np.asarray(closes / opens - 1.0, dtype=np.float64)
