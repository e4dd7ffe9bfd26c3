"""A trial scored on ONE account (``--account shared``): the window's bars of every
instrument through event mode's node, the same run `chimera backtest` makes of those bars
(tools/backtest/multi.py), with the portfolio rules at work."""

from __future__ import annotations

import pytest

from chimera_core.config import parse_config
from chimera_core.errors import ChimeraError
from chimera_core.logging import configure_logging
from tests.loopback import REPO
from tools.backtest.data import bars_from_arrays
from tools.backtest.multi import run_universe
from tools.backtest.universe import Universe
from tools.optimize.evaluate import Task, evaluate
from tools.optimize.folds import FoldSpec
from tools.optimize.inputs import build_workload, load_instruments

pytestmark = pytest.mark.timeout(600)
MULTI = REPO / "data" / "samples" / "synth_4x5m.csv"
RULES = """
[governance.portfolio]
cluster_rho = 0.3
cluster_max_exposure = 0.3
"""
PARAMS = {"fast": 5, "slow": 20}


def _cut(bars, t0, t1):
    keep = (bars.ts_ms >= t0) & (bars.ts_ms < t1)
    return bars_from_arrays(
        bars.ts_ms[keep], bars.open[keep], bars.high[keep], bars.low[keep], bars.close[keep],
        bars.volume[keep], symbol=bars.symbol, interval_ms=bars.interval_ms, tz=bars.tz,
    )  # fmt: skip


def test_a_shared_account_trial_is_the_backtest_of_that_windows_universe():
    configure_logging("ERROR")
    cfg = parse_config(RULES)
    loaded = load_instruments([MULTI], "NSE_CM")
    folds = FoldSpec(scheme="rolling", unit="days", train=3, test=2)
    w, sha = build_workload(cfg, loaded, "ma_cross", folds, account="shared")
    _, sha_separate = build_workload(cfg, loaded, "ma_cross", folds)
    assert sha != sha_separate  # a rerun tells the two apart
    assert w.initial_equity() == cfg.execution.paper.starting_cash
    fold = w.folds[0]
    out = evaluate(w, Task((0, 0), PARAMS, 0, "train"))
    assert out.error is None and out.metrics is not None

    a, b = fold.train
    t0, t1 = int(w.grid_ts_ms[a]), int(w.grid_ts_ms[b])
    cut = tuple(_cut(bars, t0, t1) for _, bars in loaded)
    u = Universe(tokens=tuple(r.token for r, _ in loaded), bars=cut,
                 interval_ms=cut[0].interval_ms, ts_ms=w.grid_ts_ms[a:b], sha256="",
                 sources=())  # fmt: skip
    result, _ = run_universe(cfg, u, "ma_cross", PARAMS)
    for name in ("final_equity", "total_return", "max_drawdown", "trades", "charges"):
        assert out.metrics[name] == result["metrics"][name], name
    assert result["portfolio_vetoes"].get("cluster_exposure", 0) > 0  # the rules at work

    test = evaluate(w, Task((0, 0), PARAMS, 0, "test"))  # train's run, scored on test
    assert test.error is None and test.metrics is not None and test.returns.size > 0

    bad = evaluate(w, Task((0, 1), {"fast": 30, "slow": 10}, 0, "train"))
    assert bad.metrics is None and "shorter than slow" in (bad.error or "")


def test_fast_mode_settings_do_not_apply_to_a_shared_account():
    loaded = load_instruments([MULTI], "NSE_CM")
    with pytest.raises(ChimeraError, match="drop it with --account shared"):
        build_workload(parse_config(""), loaded, "ma_cross", FoldSpec(unit="days", train=3,
                       test=2), fast_settings={"slippage_bps": 2}, account="shared")  # fmt: skip
