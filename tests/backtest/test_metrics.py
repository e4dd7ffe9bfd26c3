"""Every metric against an independent computation: pandas / plain-Python formulas written
differently, brute force, hand-worked cases, and empyrical where it is installed (a
dev-only reference, never a dependency)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.backtest import metrics
from tools.backtest.metrics import Trades
from tools.backtest.rolling import BacktestInputError

REL = {"rel": 1e-9, "abs": 1e-12}


@st.composite
def equity_curves(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    n = draw(st.integers(2, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vol = draw(st.sampled_from([0.0, 1e-4, 1e-2, 5e-2]))
    drift = draw(st.sampled_from([-1e-3, 0.0, 1e-3]))
    start = draw(st.sampled_from([1_000.0, 1_000_000.0]))
    r = rng.normal(drift, vol, n)
    if draw(st.booleans()):
        r[rng.random(n) < 0.5] = 0.0  # flat stretches (a strategy out of the market)
    return start * np.cumprod(1 + r), start


@st.composite
def trade_lists(draw: st.DrawFn, n_bars: int) -> Trades:
    k = draw(st.integers(0, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    entry = np.sort(rng.integers(0, n_bars, k)).astype(np.int64)
    exit_ = np.minimum(entry + rng.integers(0, 20, k), n_bars - 1).astype(np.int64)
    if k and draw(st.booleans()):
        exit_[-1] = -1  # the last one still open
    side = rng.choice([-1, 1], k).astype(np.int8)
    qty = rng.integers(1, 100, k).astype(np.int64)
    entry_px = rng.uniform(50, 150, k)
    exit_px = np.where(exit_ >= 0, entry_px * (1 + rng.normal(0, 0.02, k)), np.nan)
    charges = rng.uniform(0, 5, k)
    pnl = np.where(exit_ >= 0, side * qty * (exit_px - entry_px) - charges, np.nan)
    if k and draw(st.booleans()):
        pnl[exit_ >= 0] = np.round(pnl[exit_ >= 0])  # ties at exactly zero pnl
        pnl[(exit_ >= 0) & (rng.random(k) < 0.2)] = 0.0
    reason = np.where(exit_ >= 0, 1, 0).astype(np.int8)
    return Trades(entry, exit_, side, qty, entry_px, exit_px, charges, pnl, reason)


def brute_drawdown(equity: np.ndarray, start: float) -> tuple[float, int]:
    """O(n^2): the deepest fall from any earlier peak, and the longest stretch of bars
    each strictly below the highest equity seen before it."""
    values = [start, *equity.tolist()]
    deepest = 0.0
    for t in range(1, len(values)):
        peak = max(values[:t])
        deepest = max(deepest, 1 - values[t] / peak)
    longest = run = 0
    for t in range(1, len(values)):
        if values[t] < max(values[:t]):
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return deepest, longest


@settings(max_examples=150, deadline=None)
@given(curve=equity_curves(), data=st.data(), ppy=st.sampled_from([252.0, 94_500.0]))
def test_every_metric_against_an_independent_formula(curve, data, ppy) -> None:
    equity, start = curve
    n = equity.size
    trades = data.draw(trade_lists(n))
    m = metrics.compute(equity, trades=trades, periods=ppy, initial_equity=start)

    returns = pd.Series(np.concatenate(([start], equity))).pct_change().dropna()
    total = equity[-1] / start - 1
    assert m.total_return == pytest.approx(total, **REL)
    with np.errstate(over="ignore"):
        annual: float | None = float((equity[-1] / start) ** (ppy / n) - 1)
    if not math.isfinite(annual):
        annual = None  # two minute bars up 2 % "annualise" past any float
    if annual is None:
        assert m.annual_return is None
    else:
        assert m.annual_return == pytest.approx(annual, rel=1e-9, abs=1e-11)
    sd = returns.std(ddof=1)
    mean = returns.mean()
    if sd > 1e-9 * abs(mean) and sd > 0:
        assert m.sharpe == pytest.approx(mean / sd * math.sqrt(ppy), rel=1e-8)
    else:  # a constant return: no spread to measure it against
        assert m.sharpe is None
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    if downside > 1e-9 * abs(mean) and downside > 0:
        assert m.sortino == pytest.approx(returns.mean() / downside * math.sqrt(ppy), rel=1e-8)
    else:
        assert m.sortino is None
    deepest, longest = brute_drawdown(equity, start)
    assert m.max_drawdown == pytest.approx(deepest, rel=1e-9, abs=1e-12)
    assert m.max_drawdown_bars == longest
    if deepest > 0 and annual is not None:
        assert m.calmar == pytest.approx(annual / deepest, rel=1e-8)
    else:
        assert m.calmar is None

    closed = [i for i in range(len(trades)) if trades.exit_bar[i] >= 0]
    pnls = [float(trades.pnl[i]) for i in closed]
    assert m.trades == len(closed)
    assert m.open_trades == len(trades) - len(closed)
    if pnls:
        assert m.win_rate == pytest.approx(sum(p > 0 for p in pnls) / len(pnls), **REL)
    else:
        assert m.win_rate is None
    gains = sum(p for p in pnls if p > 0)
    losses = -sum(p for p in pnls if p < 0)
    if losses > 0:
        assert m.profit_factor == pytest.approx(gains / losses, **REL)
    else:
        assert m.profit_factor is None
    traded = sum(
        trades.qty[i] * trades.entry_price[i]
        + (trades.qty[i] * trades.exit_price[i] if trades.exit_bar[i] >= 0 else 0.0)
        for i in range(len(trades))
    )
    assert m.traded_value == pytest.approx(traded, **REL)
    assert m.turnover == pytest.approx(traded / equity.mean(), **REL)
    assert m.charges == pytest.approx(float(sum(trades.charges)), **REL)
    held = sum(
        (trades.exit_bar[i] if trades.exit_bar[i] >= 0 else n) - trades.entry_bar[i]
        for i in range(len(trades))
    )
    assert m.exposure == pytest.approx(held / n, **REL)


def test_a_hand_worked_curve() -> None:
    # 100 → 110 → 99 → 120 → 108, daily bars: returns +10 %, -10 %, +21.21 %, -10 %.
    equity = np.array([110.0, 99.0, 120.0, 108.0])
    m = metrics.compute(equity, periods=252, initial_equity=100.0)
    assert m.total_return == pytest.approx(0.08)
    assert m.max_drawdown == pytest.approx(0.10)  # 110 → 99 (and 120 → 108)
    assert m.max_drawdown_bars == 1  # each dip lasts one bar
    r = np.array([0.1, -0.1, 120 / 99 - 1, -0.1])
    assert m.sharpe == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert m.sortino == pytest.approx(r.mean() / math.sqrt((0.01 + 0.01) / 4) * math.sqrt(252))
    assert m.annual_return == pytest.approx(1.08 ** (252 / 4) - 1)
    assert m.trades == 0 and m.win_rate is None and m.exposure is None


def test_drawdown_duration_in_bars_and_seconds() -> None:
    # Peak at bar 1 (105), under water bars 2-5, recovered at bar 6; minute bars.
    equity = np.array([100.0, 105.0, 101.0, 99.0, 100.0, 104.0, 106.0, 103.0])
    ts = 1_700_000_000_000 + np.arange(8, dtype=np.int64) * 60_000
    m = metrics.compute(equity, ts_ms=ts)
    assert m.max_drawdown_bars == 4
    assert m.max_drawdown_s == 5 * 60.0  # from the peak bar to the recovery bar
    assert m.max_drawdown == pytest.approx(1 - 99 / 105)
    assert m.periods_per_year == 252 * 375


def test_positions_give_the_exposure() -> None:
    equity = np.full(10, 100.0)
    m = metrics.compute(equity, periods=252, position=np.array([0, 5, 5, 0, -3, 0, 0, 0, 0, 0]))
    assert m.exposure == pytest.approx(0.3)
    assert m.sharpe is None and m.max_drawdown == 0.0 and m.max_drawdown_bars == 0


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (60, 252 * 375),
        (300, 252 * 75),
        (420, 252 * 54),  # 53.6 seven-minute bars: the last one is short
        (3_600, 252 * 7),
        (22_500, 252),  # one bar per session
        (86_400, 252),
        (7 * 86_400, 365.25 / 7),
    ],
)
def test_periods_per_year_rule(interval: int, expected: float) -> None:
    assert metrics.periods_per_year(interval) == pytest.approx(expected)


def test_bar_interval_ignores_overnight_gaps() -> None:
    day = np.arange(375, dtype=np.int64) * 60_000
    ts = np.concatenate([day + d * 86_400_000 for d in range(5)])
    assert metrics.bar_interval_s(ts) == 60.0


@settings(max_examples=50, deadline=None)
@given(curve=equity_curves(), data=st.data())
def test_json_is_byte_identical_for_the_same_inputs(curve, data) -> None:
    equity, start = curve
    trades = data.draw(trade_lists(equity.size))
    a = metrics.compute(equity, trades=trades, periods=94_500, initial_equity=start)
    b = metrics.compute(equity.copy(), trades=trades, periods=94_500, initial_equity=start)
    assert a.to_json() == b.to_json() == metrics.to_json(a)
    text = a.to_json().decode()
    assert "NaN" not in text and "Infinity" not in text
    assert list(a.to_dict()) == list(metrics.Metrics.__struct_fields__)


def test_against_empyrical_when_installed() -> None:
    ep = pytest.importorskip("empyrical")
    rng = np.random.default_rng(5)
    r = rng.normal(0.0005, 0.01, 500)
    equity = 1e6 * np.cumprod(1 + r)
    m = metrics.compute(equity, periods=252, initial_equity=1e6)
    assert m.sharpe == pytest.approx(ep.sharpe_ratio(r, annualization=252), rel=1e-9)
    assert m.sortino == pytest.approx(ep.sortino_ratio(r, annualization=252), rel=1e-9)
    assert m.max_drawdown == pytest.approx(-ep.max_drawdown(r), rel=1e-9)
    assert m.annual_return == pytest.approx(ep.annual_return(r, annualization=252), rel=1e-9)
    assert m.calmar == pytest.approx(ep.calmar_ratio(r, annualization=252), rel=1e-9)


def test_bad_input_names_what_is_wrong() -> None:
    with pytest.raises(BacktestInputError, match=r"equity\[2\]"):
        metrics.compute(np.array([1.0, 2.0, np.nan]), periods=252)
    with pytest.raises(BacktestInputError, match="needs ts_ms"):
        metrics.compute(np.array([1.0, 2.0]))
    with pytest.raises(BacktestInputError, match="2 equity values"):
        metrics.compute(np.array([1.0, 2.0]), ts_ms=np.array([1, 2, 3], dtype=np.int64))
    with pytest.raises(BacktestInputError, match=r"ts_ms\[2\] is earlier"):
        metrics.compute(np.ones(3), ts_ms=np.array([1, 5, 3], dtype=np.int64))
    with pytest.raises(BacktestInputError, match="bar_interval_s"):
        metrics.periods_per_year(0)
