"""Monte Carlo path statistics against independent computations: the same arch bootstrap
indices applied by plain Python loops, percentiles by numpy.percentile, drawdowns by the
backtest metrics module; same seed, same JSON."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from arch.bootstrap import StationaryBootstrap
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.backtest.metrics import drawdown
from tools.backtest.report import result_json
from tools.stress.montecarlo import (
    Limits,
    StressError,
    bootstrap_indices,
    daily_returns,
    returns_paths,
    summary,
    trade_orders,
    trade_paths,
)
from tools.stress.run import load_backtest, monte_carlo

DAY = 86_400_000


def _loop_stats(equity_row: list[float], start: float) -> tuple[float, float, int]:
    """Final return, max drawdown, longest underwater run: one path, plain Python."""
    peak, worst, run, longest = start, 0.0, 0, 0
    for e in equity_row:
        if e >= peak:
            peak, run = e, 0
        else:
            run += 1
            longest = max(longest, run)
        worst = max(worst, 1.0 - e / peak)
    return equity_row[-1] / start - 1.0, worst, longest


def test_bootstrap_indices_are_arch_own_and_seeded():
    idx = bootstrap_indices(50, 20, 4.0, seed=11)
    bs = StationaryBootstrap(4.0, np.arange(50), seed=np.random.default_rng(11))
    expect = np.array([pos[0] for pos, _ in bs.bootstrap(20)])  # arange data: values = indices
    np.testing.assert_array_equal(idx, expect)
    np.testing.assert_array_equal(idx, bootstrap_indices(50, 20, 4.0, seed=11))
    assert not np.array_equal(idx, bootstrap_indices(50, 20, 4.0, seed=12))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-0.08, 0.08), min_size=3, max_size=60),
    st.integers(1, 12),
    st.integers(0, 2**31),
    st.floats(1.0, 8.0),
)
def test_returns_paths_match_a_plain_loop(rets, n_paths, seed, block):
    returns = np.asarray(rets)
    start = 1_000_000.0
    idx = bootstrap_indices(returns.size, n_paths, block, seed)
    equity, stats = returns_paths(returns, start, idx)
    for i in range(n_paths):
        e, row = start, []
        for j in idx[i]:
            e = e * (1.0 + rets[j])
            row.append(e)
        fr, dd, dur = _loop_stats(row, start)
        assert equity[i, -1] == pytest.approx(row[-1], rel=1e-12)
        assert stats.final_return[i] == pytest.approx(fr, rel=1e-9, abs=1e-12)
        assert stats.max_drawdown[i] == pytest.approx(dd, rel=1e-9, abs=1e-12)
        assert stats.drawdown_duration[i] == dur
        assert stats.worst_day[i] == pytest.approx(min(rets[j] for j in idx[i]), abs=1e-15)
        # The backtest metrics module's drawdown agrees too.
        m_dd, _, _, _ = drawdown(np.asarray(row), start)
        assert stats.max_drawdown[i] == pytest.approx(m_dd, rel=1e-9, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-5_000, 5_000), st.integers(0, 3)), min_size=1, max_size=40),
    st.integers(1, 8),
    st.integers(0, 2**31),
    st.sampled_from(["shuffle", "replace"]),
)
def test_trade_paths_match_a_plain_loop(trades, n_paths, seed, mode):
    pnl = np.asarray([p for p, _ in trades])
    gaps = np.cumsum([g for _, g in trades])  # ascending day numbers
    start = 100_000.0
    orders = trade_orders(pnl.size, n_paths, seed, mode)
    if mode == "shuffle":
        for row in orders:
            assert sorted(row.tolist()) == list(range(pnl.size))
    _, stats = trade_paths(pnl, gaps.astype(np.int64), start, orders)
    for i in range(n_paths):
        e, row, day_open, by_day = start, [], {}, {}
        for k, j in enumerate(orders[i]):
            d = int(gaps[k])
            day_open.setdefault(d, e)
            e += pnl[j]
            by_day[d] = e
            row.append(e)
        fr, dd, dur = _loop_stats(row, start)
        worst = min(by_day[d] / day_open[d] - 1.0 for d in by_day)
        assert stats.final_return[i] == pytest.approx(fr, rel=1e-9, abs=1e-12)
        assert stats.max_drawdown[i] == pytest.approx(dd, rel=1e-9, abs=1e-12)
        assert stats.drawdown_duration[i] == dur
        assert stats.worst_day[i] == pytest.approx(worst, rel=1e-9, abs=1e-12)


def test_summary_percentiles_and_probabilities_against_numpy():
    rng = np.random.default_rng(3)
    returns = rng.normal(0.0003, 0.015, 500)
    idx = bootstrap_indices(returns.size, 400, 5.0, seed=1)
    equity, stats = returns_paths(returns, 1e6, idx)
    lim = Limits(daily_loss_pct=0.045, max_drawdown=0.2, ruin_loss=0.3)
    out = summary(stats, lim)
    fr = equity[:, -1] / 1e6 - 1.0
    assert out["final_return"]["p5"] == pytest.approx(np.percentile(fr, 5), rel=1e-12)
    assert out["final_return"]["p50"] == pytest.approx(np.median(fr), rel=1e-12)
    sampled = returns[idx]
    assert out["p_daily_loss_trip"] == np.mean((sampled <= -0.045).any(axis=1))
    full = np.hstack([np.full((400, 1), 1e6), equity])
    dd = (1 - full / np.maximum.accumulate(full, axis=1)).max(axis=1)
    assert out["p_drawdown_trip"] == np.mean(dd >= 0.2)
    assert out["p_ruin"] == np.mean(full.min(axis=1) <= 0.7e6)
    assert 0.0 < out["p_daily_loss_trip"] < 1.0  # the test data exercises the rule


def test_daily_returns_group_bars_by_market_day():
    ts = np.array([0, 3_600_000, DAY, DAY + 60_000, 3 * DAY], dtype=np.int64)
    eq = np.array([101.0, 99.0, 110.0, 88.0, 88.0])
    r, days = daily_returns(ts, eq, 100.0, "UTC")
    np.testing.assert_allclose(r, [99 / 100 - 1, 88 / 99 - 1, 0.0])
    assert len(days) == 3
    with pytest.raises(StressError, match="finite positive"):
        daily_returns(ts, np.array([1.0, 0.0, 1.0, 1.0, 1.0]), 100.0)


def test_bad_settings_name_what_is_allowed():
    with pytest.raises(StressError, match="ruin_loss"):
        Limits(0.02, 0.1, ruin_loss=1.5).check()
    with pytest.raises(StressError, match="shuffle, replace"):
        trade_orders(3, 2, 0, "sorted")
    with pytest.raises(StressError, match="at least 2 days"):
        bootstrap_indices(1, 2, 1.0, 0)
    with pytest.raises(StressError, match="block length"):
        bootstrap_indices(10, 2, 0.5, 0)


def _result_dir(tmp: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = 400
    ts = (np.arange(n, dtype=np.int64) + 19_000) * DAY
    equity = 1e6 * np.cumprod(1 + rng.normal(0.0004, 0.012, n))
    (tmp / "result.json").write_bytes(result_json({"starting_equity": 1e6}))
    with (tmp / "equity.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts_ms", "close", "equity"])
        w.writerows([[int(t), 100.0, float(e)] for t, e in zip(ts, equity, strict=True)])
    with (tmp / "trades.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["token", "exit_ts_ms", "pnl"])
        w.writerows([["X", int(ts[i]) + 1000, float(rng.normal(50, 900))] for i in range(0, n, 5)])
    return tmp


def test_same_seed_same_json_and_another_seed_differs(tmp_path):
    bt = load_backtest(_result_dir(tmp_path))
    lim = Limits(0.02, 0.1)
    a, _ = monte_carlo(bt, lim, paths=200, seed=5)
    b, _ = monte_carlo(bt, lim, paths=200, seed=5)
    c, _ = monte_carlo(bt, lim, paths=200, seed=6)
    assert result_json(a) == result_json(b)
    assert result_json(a) != result_json(c)
    assert a["trade_order"]["trades"] == 80
    assert a["returns_bootstrap"]["block_length_from"] == "arch.optimal_block_length"


def test_a_directory_that_is_no_backtest_is_refused(tmp_path):
    with pytest.raises(StressError, match=r"equity\.csv"):
        load_backtest(tmp_path)
