"""Promotion gates against plain-Python references: Sharpe (statistics.stdev), drawdown (a
running-peak loop) and the paired one-sided t-test (t by hand, its tail from the t
distribution), on random equity curves (hypothesis)."""

from __future__ import annotations

import math
import statistics

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import t as t_dist

from chimera_core.config import ShadowGatesConfig
from tools.shadow.gates import MIN_RETURN_SD, judge

START = 1_000_000.0
LAX = ShadowGatesConfig(
    min_days=0, min_trades=0, min_sharpe_edge=-100.0, max_drawdown_excess=1.0, significance=1.0
)


def _returns(equity: list[float]) -> list[float]:
    prev = [START, *equity[:-1]][: len(equity)]
    return [e / p - 1.0 for e, p in zip(equity, prev, strict=True)]


def _sharpe(r: list[float]) -> float:
    if len(r) < 2:
        return 0.0
    sd = statistics.stdev(r)
    return statistics.fmean(r) / sd if sd > MIN_RETURN_SD else 0.0


def _max_dd(equity: list[float]) -> float:
    peak, worst = START, 0.0
    for e in equity:
        peak = max(peak, e)
        worst = max(worst, 1.0 - e / peak)
    return worst


def _p_greater(a: list[float], b: list[float]) -> float | None:
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    if n < 2 or statistics.pstdev(d) == 0:
        return None
    tval = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(n))
    return float(t_dist.sf(tval, n - 1))


curves = st.lists(st.floats(-0.02, 0.02), min_size=0, max_size=60).map(
    lambda steps: [START * math.prod(1 + s for s in steps[: i + 1]) for i in range(len(steps))]
)


CONSTANT = [START * 1.01 ** (i + 1) for i in range(30)]  # returns equal up to rounding


@settings(max_examples=150, deadline=None)
@given(curves, curves)
@example(CONSTANT, CONSTANT)
def test_figures_match_the_references(mine, theirs):
    n = min(len(mine), len(theirs))
    mine, theirs = mine[:n], theirs[:n]
    v = judge(LAX, mine, theirs, START, trades=0, days=0, violations=0)
    assert v.samples == n
    assert v.sharpe == pytest.approx(_sharpe(_returns(mine)), rel=1e-9, abs=1e-12)
    assert v.active_sharpe == pytest.approx(_sharpe(_returns(theirs)), rel=1e-9, abs=1e-12)
    assert v.max_drawdown == pytest.approx(_max_dd(mine), abs=1e-12)
    p = _p_greater(_returns(mine), _returns(theirs))
    if p is None:
        # Nothing to test on: the gate fails, whatever else passes.
        assert v.p_value is None and not v.passed
    else:
        assert v.p_value == pytest.approx(p, rel=1e-6, abs=1e-12)
        # Every other gate is lax and significance = 1; only a Sharpe 100 below the
        # active's (near-constant returns) still fails.
        assert v.passed == (v.sharpe - v.active_sharpe >= -100.0)


def test_each_gate_fails_on_its_own_and_says_why():
    up = [START * (1 + 0.001 * i + 0.0005 * (i % 3)) for i in range(1, 40)]
    flat = [START] * 39
    strict = ShadowGatesConfig(min_days=5, min_trades=10, max_violations=0, significance=0.05)
    v = judge(strict, up, flat, START, trades=3, days=2, violations=1)
    failed = {c.name: c.detail for c in v.checks if not c.ok}
    assert set(failed) == {"days", "trades", "governance"}
    assert failed["days"] == "2 of 5" and failed["trades"] == "3 of 10"
    assert not v.passed
    ok = judge(strict, up, flat, START, trades=10, days=5, violations=0)
    assert ok.passed, ok.summary()
    # The active's curve beating the candidate's: Sharpe and significance fail.
    worse = judge(strict, flat, up, START, trades=10, days=5, violations=0)
    assert {c.name for c in worse.checks if not c.ok} == {"sharpe", "significance"}
    # A deeper drawdown than the active's, beyond the allowance.
    dip = [*up[:10], up[9] * 0.8, *up[11:]]
    deep = judge(strict, dip, up, START, trades=10, days=5, violations=0)
    assert "drawdown" in {c.name for c in deep.checks if not c.ok}


def _twin(p50: float | None, n: int) -> dict:
    return {"price_diff_bps": {"n": n, "p50": p50, "mean": p50, "p90": p50, "p99": p50}}


def test_paper_must_fill_like_live_where_a_twin_runs():
    up = [START * (1 + 0.001 * i + 0.0005 * (i % 3)) for i in range(1, 40)]
    flat = [START] * 39
    gates = ShadowGatesConfig(min_days=0, min_trades=0, significance=0.05, max_paper_live_bps=10)

    def check(twin: dict | None, cfg: ShadowGatesConfig = gates):
        v = judge(cfg, up, flat, START, trades=10, days=5, violations=0, twin=twin)
        (c,) = [c for c in v.checks if c.name == "paper_live"]
        return v.passed, c.ok, c.detail

    assert check(None) == (True, True, "no paper twin: the engine trades on paper")
    assert check(_twin(-9.5, 4))[:2] == (True, True)
    passed, ok, detail = check(_twin(12.0, 4))
    assert (passed, ok) == (False, False) and "+12.00 bps over 4 orders" in detail
    assert check(_twin(None, 0)) == (False, False, "no order filled on both sides yet")
    off = ShadowGatesConfig(min_days=0, min_trades=0, significance=0.05, max_paper_live_bps=0)
    assert check(_twin(500.0, 4), off)[:2] == (True, True)
