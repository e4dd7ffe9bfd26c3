"""A seeded random universe of correlated instruments, as long-format bars (``chimera
backtest synth``): simulated, never market data.

A one-factor model: instrument i's log return in bar t is
``sigma_i * (beta_i * f_t + sqrt(1 - beta_i^2) * e_it)`` with ``f``, ``e`` independent
standard normals, so the correlation of i and j is ``beta_i * beta_j``. The betas are
drawn uniformly in ``[sqrt(lo), sqrt(hi)]``, which puts every pairwise correlation in
``[lo, hi]``. Closes follow the exponential of the summed returns (GBM with a drift
making the expected price flat); each bar opens at the previous close, its high and low
reach beyond the open and close by half-normal excursions of the bar's volatility, and its
volume is lognormal. Bars are five-minute (or ``interval``) bars of the NSE session,
09:15-15:30 IST on weekdays, from ``start``. One ``numpy.random.Generator(PCG64(seed))``
draws everything, in a fixed order: the same arguments give the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from chimera_core.errors import ChimeraError
from tools.backtest.data import parse_interval

IST_OFFSET_MS = 19_800_000  # +05:30
SESSION_OPEN_MS = (9 * 60 + 15) * 60_000  # 09:15 local
SESSION_MS = (6 * 60 + 15) * 60_000  # to 15:30


@dataclass(frozen=True)
class SynthUniverse:
    """What was generated: the long-format table and the model behind it."""

    table: pa.Table
    symbols: tuple[str, ...]
    beta: np.ndarray  # loading on the common factor, per instrument
    sigma: np.ndarray  # per-bar log-return volatility, per instrument
    corr: np.ndarray  # the model's correlation of log returns, beta_i * beta_j off the diagonal


def _session_opens(start: date, n_bars: int, interval_ms: int) -> np.ndarray:
    """Bar opens (UTC epoch ms) of ``n_bars`` bars of the NSE session, weekdays from ``start``."""
    per_day = SESSION_MS // interval_ms
    if per_day <= 0:
        raise ChimeraError(f"interval {interval_ms} ms is longer than the 6h15 session")
    days: list[date] = []
    d = start
    while len(days) * per_day < n_bars:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    epoch = date(1970, 1, 1)
    midnights = np.array([(x - epoch).days for x in days], dtype=np.int64) * 86_400_000
    local = midnights[:, None] + SESSION_OPEN_MS + np.arange(per_day, dtype=np.int64) * interval_ms
    return (local.ravel() - IST_OFFSET_MS)[:n_bars]


def synth_universe(
    n_instruments: int = 20,
    n_bars: int = 1500,
    seed: int = 0,
    rho: tuple[float, float] = (0.3, 0.8),
    interval: str | int = "5m",
    vol: tuple[float, float] = (0.0015, 0.003),
    start: date = date(2024, 1, 1),
    price: tuple[float, float] = (200.0, 2000.0),
) -> SynthUniverse:
    """``n_instruments`` instruments of ``n_bars`` bars each (see the module docstring):
    pairwise correlations of bar log returns in ``rho`` = (lo, hi), per-bar volatilities
    drawn in ``vol``, first prices in ``price``."""
    lo, hi = rho
    if not (0.0 <= lo <= hi < 1.0):
        raise ChimeraError(f"rho range {rho}: need 0 <= lo <= hi < 1, e.g. 0.3:0.8")
    if n_instruments < 1 or n_bars < 2:
        raise ChimeraError("a universe needs at least one instrument and two bars")
    if not (0 < vol[0] <= vol[1] < 0.2):
        raise ChimeraError(f"vol range {vol}: per-bar volatilities in (0, 0.2)")
    interval_ms = parse_interval(interval)
    rng = np.random.Generator(np.random.PCG64(seed))
    beta = rng.uniform(math.sqrt(lo), math.sqrt(hi), n_instruments)
    sigma = rng.uniform(vol[0], vol[1], n_instruments)
    first = rng.uniform(price[0], price[1], n_instruments)
    factor = rng.standard_normal(n_bars - 1)
    own = rng.standard_normal((n_bars - 1, n_instruments))
    z = factor[:, None] * beta + own * np.sqrt(1.0 - beta**2)
    logret = z * sigma - 0.5 * sigma**2  # E[exp(r)] = 1: no drift in price
    close = first * np.exp(np.vstack([np.zeros(n_instruments), np.cumsum(logret, axis=0)]))
    opens = np.vstack([first, close[:-1]])
    up = np.abs(rng.standard_normal((n_bars, n_instruments))) * sigma * 0.5
    down = np.abs(rng.standard_normal((n_bars, n_instruments))) * sigma * 0.5
    high = np.maximum(opens, close) * np.exp(up)
    low = np.minimum(opens, close) * np.exp(-down)
    volume = np.round(rng.lognormal(math.log(20_000), 0.5, (n_bars, n_instruments)))
    ts = _session_opens(start, n_bars, interval_ms)
    width = len(str(n_instruments - 1))
    symbols = tuple(f"SYN{i:0{width}d}" for i in range(n_instruments))
    # Two decimals (a paise tick, roughly): what a price file holds.
    o, h, lo_, c = (np.round(a, 2) for a in (opens, high, low, close))
    h = np.maximum(h, np.maximum(o, c))
    lo_ = np.minimum(lo_, np.minimum(o, c))
    table = pa.table(
        {
            "timestamp": pa.array(np.tile(ts, n_instruments), pa.int64()).cast(
                pa.timestamp("ms", tz="Asia/Kolkata")
            ),
            "symbol": pa.array(np.repeat(np.array(symbols), n_bars)),
            "open": o.T.ravel(),
            "high": h.T.ravel(),
            "low": lo_.T.ravel(),
            "close": c.T.ravel(),
            "volume": volume.T.ravel(),
        }
    )
    corr = np.outer(beta, beta)
    np.fill_diagonal(corr, 1.0)
    return SynthUniverse(table, symbols, beta, sigma, corr)


def write_universe(u: SynthUniverse, path: str | Path) -> Path:
    """The long-format Parquet (with what generated it in the file's metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        b"chimera.synth": b"one-factor GBM (tools/backtest/synth.py)",
        b"chimera.beta": ",".join(f"{b:.12g}" for b in u.beta).encode(),
        b"chimera.sigma": ",".join(f"{s:.12g}" for s in u.sigma).encode(),
    }
    table = u.table.replace_schema_metadata({**(u.table.schema.metadata or {}), **meta})
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path, compression="zstd")
    return path
