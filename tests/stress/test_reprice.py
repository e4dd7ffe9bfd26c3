"""Price Monte Carlo: bars rebuilt from resampled moves against a plain loop; with the
identity resample the rebuilt bars are the data and the fast-mode equity is the one
``chimera backtest --fast`` gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chimera_core.config import load_config
from tools.backtest.run import run_backtest
from tools.stress.montecarlo import Limits
from tools.stress.reprice import bar_relatives, rebuild, reprice_monte_carlo
from tools.stress.scenarios import StressBars

ROOT = Path(__file__).resolve().parents[2]
DAY = 86_400_000


def _bars(n: int = 300, seed: int = 0) -> StressBars:
    rng = np.random.default_rng(seed)
    ts = (np.arange(n, dtype=np.int64) + 19_000) * DAY + 4 * 3_600_000
    c = np.round(100 * np.cumprod(1 + rng.normal(0.0005, 0.02, n)), 2)
    o = np.round(np.r_[100.0, c[:-1]] * (1 + rng.normal(0, 0.004, n)), 2)
    h = np.round(np.maximum(o, c) * (1 + rng.uniform(0, 0.01, n)), 2)
    lo = np.round(np.minimum(o, c) * (1 - rng.uniform(0, 0.01, n)), 2)
    return StressBars(ts, o, h, lo, c, rng.uniform(1e4, 1e5, n).round(), DAY, "UTC")


def test_rebuilt_bars_match_a_plain_loop_and_stay_bars():
    bars = _bars(60)
    rel = bar_relatives(bars)
    idx = np.random.default_rng(1).integers(0, rel.shape[1], size=(5, rel.shape[1]))
    o, h, lo, c, v = rebuild(bars, rel, idx)
    for i in range(5):
        prev = float(bars.close[0])  # the path's unrounded close, carried bar to bar
        for k, j in enumerate(idx[i], start=1):
            base = float(bars.close[j])  # bar j+1 moved from bar j's close
            want_o = prev * float(bars.open[j + 1]) / base
            prev = prev * float(bars.close[j + 1]) / base
            # To the cent; a float a hair either side of a half cent may round the other way.
            assert abs(c[i, k] - round(prev, 2)) <= 0.010001
            assert abs(o[i, k] - round(want_o, 2)) <= 0.010001
            assert v[i, k] == bars.volume[j + 1]
    assert np.all(lo <= np.minimum(o, c)) and np.all(h >= np.maximum(o, c))
    assert np.allclose(c * 100, np.round(c * 100), atol=1e-6)


def test_identity_resample_is_the_data_and_the_fast_backtest():
    bars = _bars()
    rel = bar_relatives(bars)
    o, h, lo, c, v = rebuild(bars, rel, np.arange(rel.shape[1])[None, :])
    for got, want in ((o, bars.open), (h, bars.high), (lo, bars.low), (c, bars.close)):
        np.testing.assert_allclose(got[0], want, rtol=0, atol=1e-9)
    cfg = load_config(ROOT / "chimera.example.toml")
    path = StressBars(bars.ts_ms, o[0], h[0], lo[0], c[0], v[0], DAY, "UTC")
    got_result, _ = run_backtest(cfg, path, "ma_cross", fast=True)
    ref, _ = run_backtest(cfg, bars, "ma_cross", fast=True)
    assert got_result["metrics"]["trades"] > 0
    assert got_result["final_equity"] == pytest.approx(ref["final_equity"], rel=1e-12)


def test_reprice_is_seeded_and_judged():
    cfg = load_config(ROOT / "chimera.example.toml")
    bars = _bars()
    lim = Limits(0.02, 0.10, 0.5)
    kw = {"paths": 40, "fast_settings": {"sizing": "equity_fraction", "equity_fraction": 1.0}}
    a, eq_a = reprice_monte_carlo(cfg, bars, "ma_cross", None, lim, seed=3, **kw)
    b, eq_b = reprice_monte_carlo(cfg, bars, "ma_cross", None, lim, seed=3, **kw)
    c, _ = reprice_monte_carlo(cfg, bars, "ma_cross", None, lim, seed=4, **kw)
    np.testing.assert_array_equal(eq_a, eq_b)
    assert a == b and a != c
    assert eq_a.shape == (40, len(bars.ts_ms))
    fr = eq_a[:, -1] / eq_a[0, 0] - 1.0
    assert a["final_return"]["p50"] == pytest.approx(np.median(fr), rel=1e-9, abs=1e-12)
    assert a["trades"]["p50"] > 0
