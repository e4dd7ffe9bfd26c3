"""One trial on one window against ``chimera backtest``'s own path (run_backtest --fast on
the window's bars), and the test window as the continuation of the train window."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest

from tests.optimize.conftest import workload_of
from tools.backtest.data import bars_from_arrays
from tools.backtest.run import run_backtest
from tools.optimize.evaluate import Task, Workload, evaluate

PARAMS = {"energy_lookback": 10, "z_lookback": 30, "band_lookback": 60, "band_k": 2.0,
          "energy_threshold": 0.05}  # fmt: skip


def _window(bars, a, b):
    return bars_from_arrays(
        bars.ts_ms[a:b], bars.open[a:b], bars.high[a:b], bars.low[a:b], bars.close[a:b],
        bars.volume[a:b], symbol=bars.symbol, interval_ms=bars.interval_ms, tz="Asia/Kolkata",
    )  # fmt: skip


@pytest.mark.parametrize("fold", [0, 2])
def test_a_train_window_is_the_backtest_of_that_windows_bars(cfg, loaded, fold):
    ref, bars = loaded[0]
    w = workload_of(cfg, loaded)
    f = w.folds[fold]
    got = evaluate(w, Task((fold, 0), PARAMS, fold, "train"))
    assert got.error is None and got.metrics is not None
    assert got.metrics["trades"] > 0  # the comparison below is about something
    window = _window(bars, f.train_start, f.test_start)
    # The per-close kernel the optimizer sweeps with (chimera backtest --fast decides per
    # print by default; docs/OPTIMIZE.md, "What a trial runs").
    result, series = run_backtest(
        cfg, window, "default", PARAMS, fast=True, token=ref.token, decide="close"
    )
    # Same trades, same equity; metrics differ only in annualisation source (bars/yr).
    want = result["metrics"]
    for key in ("final_equity", "total_return", "max_drawdown", "trades", "charges",
                "traded_value", "win_rate", "exposure"):  # fmt: skip
        assert got.metrics[key] == want[key], key
    eq = np.asarray(series["equity"])
    prev = np.concatenate(([result["starting_equity"]], eq[:-1]))
    per_bar = eq / prev - 1.0
    assert got.bar_sharpe == pytest.approx(per_bar.mean() / per_bar.std(ddof=1), rel=1e-9)
    # The PBO matrix's periods: the bars' returns compounded per IST trading day.
    zone = ZoneInfo("Asia/Kolkata")
    days: dict[dt.date, float] = {}
    for t, r in zip(window.ts_ms, per_bar, strict=True):
        d = dt.datetime.fromtimestamp(int(t) / 1000, zone).date()
        days[d] = (1.0 + days.get(d, 0.0)) * (1.0 + r) - 1.0
    np.testing.assert_allclose(got.returns, list(days.values()), rtol=1e-9, atol=1e-15)
    assert len(days) == 10


def test_the_test_window_continues_the_train_run_and_reads_no_later_bar(cfg, loaded):
    ref, bars = loaded[0]
    w = workload_of(cfg, loaded)
    f = w.folds[1]
    got = evaluate(w, Task((1, 0), PARAMS, 1, "test"))
    assert got.metrics is not None
    # The reference: one backtest over train + test, its equity rebased at the last train bar.
    _result, series = run_backtest(
        cfg, _window(bars, f.train_start, f.test_end), "default", PARAMS, fast=True,
        token=ref.token, decide="close",
    )  # fmt: skip
    eq = np.asarray(series["equity"])
    k = f.test_start - f.train_start
    part = eq[k:]
    np.testing.assert_array_equal(got.returns, part / np.concatenate(([eq[k - 1]], part[:-1])) - 1)
    assert got.metrics["total_return"] == pytest.approx(part[-1] / eq[k - 1] - 1, abs=1e-12)
    # Changing every bar after the test window changes nothing in it.
    cut = bars_from_arrays(
        bars.ts_ms[: f.test_end], bars.open[: f.test_end], bars.high[: f.test_end],
        bars.low[: f.test_end], bars.close[: f.test_end], bars.volume[: f.test_end],
        symbol=bars.symbol, interval_ms=bars.interval_ms, tz="Asia/Kolkata",
    )  # fmt: skip
    w2 = workload_of(cfg, [(ref, cut)])
    assert w2.folds[1] == f
    again = evaluate(w2, Task((1, 0), PARAMS, 1, "test"))
    assert again.metrics == got.metrics


def test_two_instruments_are_one_book_of_two_accounts(cfg, loaded):
    ref, bars = loaded[0]
    twin = msgspec.structs.replace(ref, token="TWIN", path=ref.path + "#twin")
    w1 = workload_of(cfg, loaded)
    w2 = workload_of(cfg, [(ref, bars), (twin, bars)])
    assert isinstance(w2, Workload) and len(w2.instruments) == 2
    one = evaluate(w1, Task((0, 0), PARAMS, 0, "train"))
    two = evaluate(w2, Task((0, 0), PARAMS, 0, "train"))
    assert one.metrics is not None and two.metrics is not None
    assert two.metrics["initial_equity"] == 2 * one.metrics["initial_equity"]
    assert two.metrics["final_equity"] == pytest.approx(2 * one.metrics["final_equity"])
    assert two.metrics["trades"] == 2 * one.metrics["trades"]
    np.testing.assert_allclose(two.returns, one.returns, rtol=1e-9, atol=1e-15)
    assert two.bar_sharpe == pytest.approx(one.bar_sharpe, rel=1e-9)


def test_parameters_the_strategy_refuses_are_an_error_not_a_crash(cfg, loaded):
    w = workload_of(cfg, loaded, "ma_cross")
    got = evaluate(w, Task((0, 3), {"fast": 30, "slow": 10}, 0))
    assert got.metrics is None and "must be shorter than slow" in (got.error or "")
