"""Portfolio rules (chimera_governance/portfolio.py): VaR, CVaR, covariance, correlation and
clusters against independent numpy/scipy computations on the same window; one test per
rule that fails without it; the kill switch and the genome rollback through the pipeline."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats as sstats
from scipy.sparse.csgraph import connected_components

from chimera_core.config import ChargesConfig, PortfolioConfig, parse_config
from chimera_core.contracts import AccountSnapshot, Bar, Side
from chimera_execution.charges import compute_charges
from chimera_governance.meta_risk import MetaRisk
from chimera_governance.portfolio import PortfolioRisk, cost_bound, horizon_bars

T0 = 1_764_000_000_000  # an exchange time in ms
BAR_MS = 60_000


def account(
    positions: dict[str, int], marks: dict[str, float], cash: float = 1_000_000.0
) -> AccountSnapshot:
    held = sum(q * marks[t] for t, q in positions.items())
    gross = sum(abs(q) * marks[t] for t, q in positions.items())
    return AccountSnapshot(
        cash=cash - held,
        equity=cash,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        charges=0.0,
        gross_exposure=gross,
        net_exposure=held,
        open_positions=sum(1 for q in positions.values() if q),
        positions=dict(positions),
        working={},
        entries={t: 1 for t, q in positions.items() if q},
        marks=dict(marks),
    )


def closes_for(seed: int, n_bars: int, n_sym: int, common: float = 0.0) -> np.ndarray:
    """Random-walk closes, n_bars x n_sym; ``common`` loads every symbol on one factor."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(0, 0.01, size=(n_bars, 1))
    own = rng.normal(0, 0.01, size=(n_bars, n_sym))
    rets = common * factor + math.sqrt(max(0.0, 1 - common**2)) * own
    return 100.0 * np.cumprod(1.0 + rets, axis=0)


def feed(risk: PortfolioRisk, tokens: list[str], closes: np.ndarray) -> None:
    for i in range(closes.shape[0]):
        for j, t in enumerate(tokens):
            risk.on_bar(t, T0 + i * BAR_MS, float(closes[i, j]))


TOKENS = [f"T{i}" for i in range(6)]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_bars=st.integers(3, 120),
    window=st.integers(20, 80),
    horizon=st.integers(1, 400),
    qty=st.integers(-500, 500),
)
def test_var_cvar_cov_and_correlation_match_numpy_and_scipy(seed, n_bars, window, horizon, qty):
    cfg = PortfolioConfig(var_limit=0.5, returns_window=window, cluster_rho=0.3)
    risk = PortfolioRisk(cfg, tokens=TOKENS, stop_atr_multiple=2.0, horizon=horizon)
    closes = closes_for(seed, n_bars, len(TOKENS), common=0.6)
    feed(risk, TOKENS, closes)
    rng = np.random.default_rng(seed + 1)
    pos = {t: int(q) for t, q in zip(TOKENS, rng.integers(-300, 300, len(TOKENS)), strict=True)}
    marks = {t: float(closes[-1, j]) for j, t in enumerate(TOKENS)}
    acct = account(pos, marks)
    side = Side.BUY if qty >= 0 else Side.SELL
    got = risk.book_risk(acct, "T2", side, abs(qty), 101.0)

    # The reference: returns straight from the closes, the last `window` rows.
    rets = (closes[1:] / closes[:-1] - 1.0)[-window:]
    w = np.array([pos[t] * marks[t] for t in TOKENS])
    w[2] += qty * 101.0
    losses = -(rets @ w)
    for level in (0.95, 0.99):
        var = np.quantile(losses, level, method="inverted_cdf") * math.sqrt(horizon)
        tail = int(len(losses) - math.ceil(level * len(losses)) + 1)
        cvar = np.sort(losses)[::-1][:tail].mean() * math.sqrt(horizon)
        assert got[level][0] == pytest.approx(var, rel=1e-9, abs=1e-9)
        assert got[level][1] == pytest.approx(cvar, rel=1e-9, abs=1e-9)
    s = risk.stats()
    np.testing.assert_allclose(s.cov, np.cov(rets.T), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(s.corr, np.corrcoef(rets.T), rtol=1e-9, atol=1e-9)
    if len(rets) >= 3:
        r01 = sstats.pearsonr(rets[:, 0], rets[:, 1]).statistic
        assert s.corr[0, 1] == pytest.approx(r01, abs=1e-9)
    # Clusters are scipy's connected components of the graph corr > rho.
    adj = (np.corrcoef(rets.T) > 0.3) & ~np.eye(len(TOKENS), dtype=bool)
    _, labels = connected_components(adj, directed=False)
    for i in range(len(TOKENS)):
        for j in range(len(TOKENS)):
            assert (s.cluster[i] == s.cluster[j]) == (labels[i] == labels[j])


def test_returns_are_kept_per_closed_bar_not_per_tick_and_a_missing_bar_counts_zero():
    risk = PortfolioRisk(PortfolioConfig(var_limit=0.1), tokens=["A", "B"], stop_atr_multiple=2)
    risk.on_bar("A", T0, 100.0)
    risk.on_bar("B", T0, 50.0)
    risk.on_bar("A", T0 + BAR_MS, 101.0)
    risk.on_bar("B", T0 + BAR_MS, 49.0)
    risk.on_bar("A", T0 + 2 * BAR_MS, 99.99)  # B had no ticks in this bar
    r = risk.stats().returns
    np.testing.assert_allclose(r, [[0.01, -0.02], [99.99 / 101.0 - 1.0, 0.0]], rtol=1e-12)


def _sizing(cfg: PortfolioConfig, **kw) -> PortfolioRisk:
    return PortfolioRisk(cfg, tokens=TOKENS, stop_atr_multiple=2.0, **kw)


@given(
    price=st.floats(10, 5_000),
    atr=st.floats(0.05, 50),
    stop_risk=st.floats(0.001, 0.05),
    lot=st.sampled_from([1, 15, 75]),
    product=st.sampled_from(["INTRADAY", "DELIVERY"]),
    side=st.sampled_from([Side.BUY, Side.SELL]),
)
@settings(max_examples=200, deadline=None)
def test_risk_sizing_loses_at_most_r_at_the_stop_charges_included(
    price, atr, stop_risk, lot, product, side
):
    assume(2.0 * atr < 0.5 * price)  # a stop above zero
    cfg = parse_config(f'[execution]\nproduct = "{product}"\n')
    risk = _sizing(PortfolioConfig(risk_sizing=True, stop_risk=stop_risk), costs=cost_bound(cfg))
    acct = account({}, {})
    qty, vetoes = risk.size(acct, "T0", side, 10**9, price, atr, lot)
    budget = stop_risk * acct.equity
    stop = 2.0 * atr

    def loss(q: int) -> float:  # the real charges of the entry and of the exit at the stop
        c = ChargesConfig()
        exit_side = Side.SELL if side is Side.BUY else Side.BUY
        exit_price = price - stop if side is Side.BUY else price + stop
        entry = compute_charges(side, q, price, product, c).total
        leave = compute_charges(exit_side, q, exit_price, product, c).total
        return q * stop + float(entry) + float(leave)

    assert qty % lot == 0
    if qty:
        assert not vetoes and loss(qty) <= budget
        # Not wasteful: one more lot would lose more than the budget less the flat
        # brokerage the bound allows for (the real fee may be the lower percentage).
        assert loss(qty + lot) > budget - risk.fixed_cost
    else:
        assert vetoes[0].rule == "stop_risk" and vetoes[0].value > budget
    wanted = 10**9 // lot * lot  # the capital brain sizes in whole lots
    off = _sizing(PortfolioConfig()).size(acct, "T0", side, wanted, price, atr, lot)
    assert off == (wanted, [])  # the rule off: nothing sized down


def test_order_value_cap():
    risk = _sizing(PortfolioConfig(max_order_fraction=0.1))
    qty, vetoes = risk.size(account({}, {}), "T0", Side.BUY, 5_000, 333.0, 1.0, 1)
    assert qty == 300 and qty * 333.0 <= 100_000.0 < (qty + 1) * 333.0 and not vetoes
    qty, vetoes = risk.size(account({}, {}), "T0", Side.BUY, 5_000, 333.0, 1.0, 1000)
    assert qty == 0 and vetoes[0].rule == "order_value" and vetoes[0].value == 333_000.0


def test_vol_target_sizes_the_entry_under_the_bound():
    closes = closes_for(7, 100, len(TOKENS), common=0.5)
    risk = _sizing(PortfolioConfig(vol_target=0.01), horizon=375)
    feed(risk, TOKENS, closes)
    marks = {t: float(closes[-1, j]) for j, t in enumerate(TOKENS)}
    pos = {"T0": 300, "T1": -200}
    acct = account(pos, marks)
    qty, vetoes = risk.size(acct, "T3", Side.BUY, 10**6, marks["T3"], 1.0, 1)
    rets = closes[1:] / closes[:-1] - 1.0
    cov = np.cov(rets.T) * 375

    def vol(q: int) -> float:
        w = np.array([pos.get(t, 0) * marks[t] for t in TOKENS])
        w[3] += q * marks["T3"]
        return float(np.sqrt(w @ cov @ w))

    assert 0 < qty < 10**6 and not vetoes
    assert vol(qty) <= 0.01 * acct.equity < vol(qty + 1)
    risk_off = _sizing(PortfolioConfig(), horizon=375)
    feed(risk_off, TOKENS, closes)
    assert risk_off.size(acct, "T3", Side.BUY, 10**6, marks["T3"], 1.0, 1)[0] == 10**6


def test_correlated_symbols_share_one_exposure_cap():
    closes = closes_for(3, 120, len(TOKENS), common=0.0)
    closes[:, 1] = closes[:, 0] * 1.5  # T1 moves with T0 exactly
    risk = _sizing(PortfolioConfig(cluster_rho=0.8, cluster_max_exposure=0.3))
    feed(risk, TOKENS, closes)
    marks = {t: float(closes[-1, j]) for j, t in enumerate(TOKENS)}
    acct = account({"T0": 2_000}, marks)
    held = 2_000 * marks["T0"]
    qty, _ = risk.size(acct, "T1", Side.BUY, 10**6, marks["T1"], 1.0, 1)
    assert held + qty * marks["T1"] <= 0.3 * acct.equity < held + (qty + 1) * marks["T1"]
    # An uncorrelated symbol is not in the cluster: not sized by it.
    assert risk.size(acct, "T4", Side.BUY, 10**6, marks["T4"], 1.0, 1)[0] == 10**6
    full = account({"T0": 3_000}, marks)  # already over the cluster's cap
    qty, vetoes = risk.size(full, "T1", Side.BUY, 10**6, marks["T1"], 1.0, 1)
    assert qty == 0 and vetoes[0].rule == "cluster_exposure"
    assert vetoes[0].limit == pytest.approx(0.3 * full.equity) and "T0,T1" in vetoes[0].detail


def test_var_limit_vetoes_with_both_levels_on_the_record():
    closes = closes_for(11, 200, len(TOKENS), common=0.7)
    risk = _sizing(PortfolioConfig(var_limit=0.02, var_confidence="95"), horizon=375)
    feed(risk, TOKENS, closes)
    marks = {t: float(closes[-1, j]) for j, t in enumerate(TOKENS)}
    acct = account({}, marks)
    small = risk.vetoes(acct, "T0", Side.BUY, 10, marks["T0"], T0, "d1")
    big = risk.vetoes(acct, "T0", Side.BUY, 20_000, marks["T0"], T0, "d1")
    assert small == []
    (v,) = big
    var95 = risk.book_risk(acct, "T0", Side.BUY, 20_000, marks["T0"])[0.95][0]
    assert v.rule == "var" and v.value == var95 > v.limit == pytest.approx(20_000.0)
    assert "95%: VaR" in v.detail and "99%: VaR" in v.detail
    cv = _sizing(PortfolioConfig(cvar_limit=0.02), horizon=375)
    feed(cv, TOKENS, closes)
    assert [x.rule for x in cv.vetoes(acct, "T0", Side.BUY, 20_000, marks["T0"], T0, "d")] == [
        "cvar"
    ]


def test_entries_per_session_and_per_minute_budgets():
    risk = _sizing(PortfolioConfig(max_entries_per_session=3, max_orders_per_minute=2))
    acct = account({}, {})

    def rules(ts: int, day: str) -> list[str]:
        return [v.rule for v in risk.vetoes(acct, "T0", Side.BUY, 1, 100.0, ts, day)]

    assert rules(T0, "d1") == []
    risk.record_entry(T0, "d1")
    risk.record_entry(T0 + 1_000, "d1")
    assert rules(T0 + 59_999, "d1") == ["order_rate"]  # a third within 60 s
    assert rules(T0 + 60_000, "d1") == []  # the first has left the minute
    risk.record_entry(T0 + 60_000, "d1")
    assert rules(T0 + 200_000, "d1") == ["entries_per_session"]
    assert rules(T0 + 86_400_000, "d2") == []  # a new session


def test_order_rate_trips_reducing_for_the_session_and_survives_a_restart(tmp_path):
    with MetaRisk(tmp_path / "m.db") as m:
        m.trip("order_rate", 3.0, 2.0, T0)
        assert m.kill_switch == "order_rate" and m.halted
    with MetaRisk(tmp_path / "m.db") as m:
        assert m.kill_switch == "order_rate"
        out = m.update(
            token="T0", exchange_ts_ms=T0 + 1, confidence=1.0, spread_pct=0.0,
            feed_stale=False, open_positions=0, position_value=0.0,
            trades_today_symbol=0, equity=1e6,
        )  # fmt: skip
        assert not out.allowed and ("order_rate", 3.0, 2.0) in [
            (v.rule, v.value, v.limit) for v in out.vetoes
        ]
        m.observe(1e6, T0 + 3 * 86_400_000)  # sessions later
        assert m.kill_switch == ""


def test_horizon_is_the_markets_session_over_the_bar_interval():
    assert horizon_bars(parse_config("")) == 375  # NSE 09:15-15:30, 60 s bars
    cfg = parse_config("[strategy]\nbar_interval_s = 300\n")
    assert horizon_bars(cfg) == 75
    cfg = parse_config("[governance.portfolio]\nvar_horizon_bars = 10\n")
    assert horizon_bars(cfg) == 10


def test_defaults_are_off():
    risk = _sizing(PortfolioConfig())
    assert not risk.active and not risk.needs_book
    cfg = parse_config("")
    assert cfg.governance.portfolio == PortfolioConfig()
    assert msgspec.structs.asdict(cfg.governance.portfolio)["rollback_session_loss"] == 0.0


def test_a_bar_close_is_what_feeds_returns():
    risk = PortfolioRisk(PortfolioConfig(var_limit=0.1), tokens=["A"], stop_atr_multiple=2)
    bar = Bar("A", T0, T0 + BAR_MS, 1.0, 1.0, 1.0, 100.0, 10, 5)
    risk.on_bar(bar.token, bar.end_ms, bar.close)
    risk.on_bar("A", T0 + 2 * BAR_MS, 110.0)
    assert risk.stats().returns.tolist() == [[pytest.approx(0.1)]]
