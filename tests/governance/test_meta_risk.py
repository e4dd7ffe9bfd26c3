"""Meta risk: the veto always wins, kill switches halt and persist, IST trading days, and
equity is the account's: a profitable day never trips a loss rule."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_governance.meta_risk import MetaRisk, MetaRiskError, MetaRiskLimits

KOLKATA = ZoneInfo("Asia/Kolkata")
START = 1_000_000.0


def ist_ms(day: int, hour: int, minute: int, second: int = 0, month: int = 1) -> int:
    """Epoch ms of an IST wall-clock time in 2024 (computed independently of the module)."""
    t = dt.datetime(2024, month, day, hour, minute, second, tzinfo=KOLKATA)
    return int(t.timestamp() * 1000)


def safe_inputs(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        token="2885",
        exchange_ts_ms=ist_ms(2, 10, 0),
        confidence=0.8,
        spread_pct=0.05,
        feed_stale=False,
        open_positions=0,
        position_value=50_000.0,
        trades_today_symbol=0,
        equity=START,
    )
    base.update(over)
    return base


def rules(out: Any) -> dict[str, Any]:
    return {v.rule: v for v in out.vetoes}


# ---- the veto always wins --------------------------------------------------------------

LIMITS = MetaRiskLimits(max_trades_per_day=35)


# each input: a range inside every limit, and a range that breaches its rule(s)
SAFE: dict[str, st.SearchStrategy[Any]] = {
    "pnls": st.lists(st.floats(-150.0, 50.0), max_size=19),
    "minute_of_day": st.integers(9 * 60 + 15, 14 * 60 + 59),
    "confidence": st.floats(0.3, 1.0),
    "spread_pct": st.floats(0.0, 0.5),
    "feed_stale": st.just(False),
    "open_positions": st.integers(0, 4),
    "position_value": st.floats(0.0, 200_000.0),
    "trades_today_symbol": st.integers(0, 9),
    "equity": st.floats(START * 0.99, START * 1.2),
}
BREACH: dict[str, st.SearchStrategy[Any]] = {
    "pnls": st.lists(st.floats(-150.0, -20.0), min_size=20, max_size=30),  # Sharpe < -1
    "minute_of_day": st.one_of(st.integers(0, 9 * 60 + 14), st.integers(15 * 60, 1439)),
    "confidence": st.floats(0.0, 0.3, exclude_max=True),
    "spread_pct": st.floats(0.5, 5.0, exclude_min=True),
    "feed_stale": st.just(True),
    "open_positions": st.integers(5, 30),
    "position_value": st.floats(200_000.01, 1e7),
    "trades_today_symbol": st.integers(10, 40),
    "equity": st.floats(START * 0.8, START * 0.98),  # daily loss, and drawdown below 0.9
}
inputs = st.fixed_dictionaries({k: st.one_of(SAFE[k], BREACH[k]) for k in SAFE})


def expected_breaches(x: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Independent statement of the rules for a fresh MetaRisk that saw the account at
    START when the session opened, then trades closing, then equity ``x["equity"]``."""
    out: dict[str, tuple[float, float]] = {}
    pnls = np.asarray(x["pnls"], dtype=float)
    eq = x["equity"]
    loss = START - eq
    if loss > 0 and loss >= 0.02 * START:
        out["daily_loss"] = (loss, 0.02 * START)
    peak = max(START, eq)
    dd = (peak - eq) / peak
    if dd >= 0.10:
        out["max_drawdown"] = (dd, 0.10)
    if x["trades_today_symbol"] >= 10:
        out["trades_per_symbol"] = (x["trades_today_symbol"], 10)
    trades = len(pnls) + x["open_positions"]
    if trades >= 35:
        out["trades_per_day"] = (trades, 35)
    if x["open_positions"] >= 5:
        out["open_positions"] = (x["open_positions"], 5)
    if x["position_value"] > 200_000.0:
        out["position_value"] = (x["position_value"], 200_000.0)
    if x["feed_stale"]:
        out["stale_feed"] = (1.0, 0.0)
    if x["spread_pct"] > 0.5:
        out["spread"] = (x["spread_pct"], 0.5)
    if x["confidence"] < 0.3:
        out["confidence"] = (x["confidence"], 0.3)
    hh, mm = divmod(x["minute_of_day"], 60)
    hhmm = hh * 100 + mm
    if hhmm < 915 or hhmm >= 1530:  # the market is closed: the edge named is the next open
        out["trading_hours"] = (hhmm, 915)
    elif hhmm >= 1500:  # open, past NSE's entry cut-off (chimera_core.markets)
        out["trading_hours"] = (hhmm, 1500)
    if len(pnls) >= 20:
        mean, std = pnls.mean(), pnls.std(ddof=1)
        # identical losing trades: no dispersion, Sharpe is -inf (documented)
        sharpe = mean / std if std > 1e-9 else (0.0 if mean == 0 else np.copysign(np.inf, mean))
        if sharpe < -1.0:
            out["rolling_sharpe"] = (sharpe, -1.0)
    return out


def evaluate(x: dict[str, Any]) -> Any:
    with tempfile.TemporaryDirectory() as d, MetaRisk(Path(d) / "risk.db", LIMITS) as risk:
        risk.observe(START, ist_ms(2, 9, 15, 0))  # the account when the session opened
        for i, pnl in enumerate(x["pnls"]):
            risk.on_trade_closed(pnl, ist_ms(2, 9, 15, 1) + i)
        hh, mm = divmod(x["minute_of_day"], 60)
        return risk.update(
            token="2885",
            exchange_ts_ms=ist_ms(2, hh, mm, 30),
            confidence=x["confidence"],
            spread_pct=x["spread_pct"],
            feed_stale=x["feed_stale"],
            open_positions=x["open_positions"],
            position_value=x["position_value"],
            trades_today_symbol=x["trades_today_symbol"],
            equity=x["equity"],
        )


def assert_vetoes_match(out: Any, want: dict[str, tuple[float, float]]) -> None:
    got = rules(out)
    assert set(got) == set(want)
    for rule, (value, limit) in want.items():
        assert got[rule].value == pytest.approx(value, rel=1e-9, abs=1e-9), rule
        assert got[rule].limit == pytest.approx(limit), rule
    assert out.allowed is (not want)
    assert out.halt is bool({"daily_loss", "max_drawdown"} & set(want))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), breached=st.sampled_from(sorted(SAFE)))
def test_a_single_breach_is_vetoed_by_name(data: st.DataObject, breached: str) -> None:
    x = {k: data.draw(BREACH[k] if k == breached else SAFE[k], label=k) for k in SAFE}
    want = expected_breaches(x)
    assert want  # the generator really breached something
    out = evaluate(x)
    assert not out.allowed
    assert_vetoes_match(out, want)


@settings(max_examples=150, deadline=None)
@given(x=inputs)
def test_the_veto_always_wins(x: dict[str, Any]) -> None:
    assert_vetoes_match(evaluate(x), expected_breaches(x))


# ---- rolling Sharpe and drawdown vs numpy ------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(pnls=st.lists(st.floats(-5_000.0, 5_000.0), min_size=2, max_size=120))
def test_sharpe_and_drawdown_match_numpy(pnls: list[float]) -> None:
    arr = np.asarray(pnls)
    window = arr[-50:]
    std = window.std(ddof=1)
    curve = START + np.concatenate([[0.0], np.cumsum(arr)])
    with tempfile.TemporaryDirectory() as d, MetaRisk(Path(d) / "r.db") as risk:
        risk.observe(START, ist_ms(2, 9, 15))
        for i, pnl in enumerate(pnls):
            risk.on_trade_closed(pnl, ist_ms(2, 9, 30) + i * 1000)
            risk.observe(float(curve[i + 1]), ist_ms(2, 9, 30) + i * 1000)
        out = risk.update(**safe_inputs(equity=float(curve[-1])))
    peak = np.maximum.accumulate(curve)[-1]
    assert out.drawdown == pytest.approx((peak - curve[-1]) / peak, abs=1e-12)
    assert out.daily_pnl == pytest.approx(arr.sum(), abs=1e-6)
    assert out.high_water_mark == pytest.approx(peak) and out.session_open_equity == START
    if std > 1e-6:
        assert out.rolling_sharpe == pytest.approx(window.mean() / std, rel=1e-9, abs=1e-9)


def test_sharpe_hand_computed(tmp_path: Path) -> None:
    # pnls 100, -50, 25: mean 25, sample var (75² + 75² + 0²) / 2 = 5625, std 75
    with MetaRisk(tmp_path / "r.db") as risk:
        risk.observe(START, ist_ms(2, 9, 15))
        equity = START
        for i, pnl in enumerate([100.0, -50.0, 25.0]):
            risk.on_trade_closed(pnl, ist_ms(2, 9, 30) + i)
            equity += pnl
            risk.observe(equity, ist_ms(2, 9, 30) + i)
        out = risk.update(**safe_inputs(equity=START + 75.0))
    assert out.rolling_sharpe == pytest.approx(25.0 / 75.0)
    assert out.drawdown == pytest.approx(25.0 / (START + 100.0))


def test_sharpe_floor_needs_twenty_trades(tmp_path: Path) -> None:
    losses = [-100.0, -40.0] * 10  # Sharpe about -2.3
    with MetaRisk(tmp_path / "r.db") as risk:
        for i, pnl in enumerate(losses[:19]):
            risk.on_trade_closed(pnl, ist_ms(2, 9, 20) + i)
        assert "rolling_sharpe" not in rules(risk.update(**safe_inputs()))
        risk.on_trade_closed(losses[19], ist_ms(2, 9, 21))
        out = risk.update(**safe_inputs())
    v = rules(out)["rolling_sharpe"]
    assert v.value < -1.0 and v.limit == -1.0 and not out.allowed


# ---- kill switches and persistence -----------------------------------------------------


def test_daily_loss_halts_persists_and_clears_next_ist_day(tmp_path: Path) -> None:
    path = tmp_path / "risk.db"
    with MetaRisk(path) as risk:
        risk.observe(START, ist_ms(1, 9, 15))  # the session opens at 1,000,000
        risk.on_trade_closed(-15_000.0, ist_ms(1, 10, 0))
        risk.observe(START - 15_000.0, ist_ms(1, 10, 0))
        assert not risk.halted
        risk.on_trade_closed(-6_000.0, ist_ms(1, 10, 5))  # 21,000 >= 2% of 1,000,000
        risk.observe(START - 21_000.0, ist_ms(1, 10, 5))
        assert risk.halts == {"daily_loss": dt.date(2024, 1, 1)}
        out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(1, 11, 0), equity=START - 21_000))
        assert out.halt and not out.allowed
        v = rules(out)["daily_loss"]
        assert (v.value, v.limit) == (pytest.approx(21_000.0), pytest.approx(20_000.0))

    # a restart the same day is still halted, with the numbers and the day's opening equity
    with MetaRisk(path) as risk:
        assert risk.halted and risk.kill_switch == "daily_loss"
        # 23:30 IST on Jan 1 is 18:00 UTC: same trading day, still halted
        out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(1, 23, 30)))
        assert out.halt and not out.allowed
        assert rules(out)["daily_loss"].value == pytest.approx(21_000.0)

    # 00:30 IST on Jan 2: a new calendar day, but the next session has not opened: the
    # switch holds through the night and lifts at the 09:15 open.
    with MetaRisk(path) as risk:
        risk.update(**safe_inputs(exchange_ts_ms=ist_ms(2, 0, 30)))
        assert risk.halted
        risk.update(**safe_inputs(exchange_ts_ms=ist_ms(2, 9, 15)))
        assert not risk.halted
        out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(2, 10, 0)))
        assert out.allowed and not out.halt and out.vetoes == ()
    with MetaRisk(path) as risk:  # the clearing was persisted too
        assert not risk.halted


def test_daily_loss_from_mark_to_market_equity(tmp_path: Path) -> None:
    with MetaRisk(tmp_path / "r.db") as risk:
        risk.observe(START, ist_ms(2, 9, 15))
        out = risk.update(**safe_inputs(equity=START - 20_000.0))
    assert out.halt and rules(out)["daily_loss"].value == pytest.approx(20_000.0)


@settings(max_examples=100, deadline=None)
@given(
    opening=st.floats(1e4, 1e9),
    days=st.lists(st.lists(st.floats(0.0, 1e6), max_size=30), min_size=1, max_size=5),
)
def test_winning_trades_never_trip_a_loss_rule(opening: float, days: list[list[float]]) -> None:
    """The bug this replaces: the configured equity was the yardstick, so a +213k day read
    as a 213k loss. Equity that only rises, over days, can trip neither kill switch."""
    with tempfile.TemporaryDirectory() as d, MetaRisk(Path(d) / "r.db") as risk:
        equity = opening
        for day, wins in enumerate(days, start=2):
            risk.observe(equity, ist_ms(day, 9, 15))
            for i, pnl in enumerate(wins):
                risk.on_trade_closed(pnl, ist_ms(day, 10, 0) + i)
                equity += pnl
                assert risk.observe(equity, ist_ms(day, 10, 0) + i) == []
            out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(day, 15, 0), equity=equity))
            assert not out.halt and out.daily_pnl >= 0 and out.drawdown == 0.0
        assert not risk.halted


@settings(max_examples=100, deadline=None)
@given(
    opening=st.floats(1e5, 1e8),
    moves=st.lists(st.floats(-0.05, 0.05), min_size=1, max_size=60),
)
def test_the_daily_loss_trips_exactly_when_equity_falls_two_percent_below_the_open(
    opening: float, moves: list[float]
) -> None:
    """Any equity path within one session: the daily-loss switch trips at the first
    observation 2 % or more below the session's opening equity, and never before."""
    path = [opening]
    for m in moves:
        path.append(path[-1] * (1.0 + m))
    first_breach = next(
        (i for i, e in enumerate(path) if opening - e > 0 and opening - e >= 0.02 * opening), None
    )
    limits = MetaRiskLimits(max_drawdown=0.99)  # isolate the daily loss
    with tempfile.TemporaryDirectory() as d, MetaRisk(Path(d) / "r.db", limits) as risk:
        tripped = None
        for i, equity in enumerate(path):
            fired = risk.observe(equity, ist_ms(2, 9, 15) + i)
            if fired and tripped is None:
                tripped = i
                assert [v.rule for v in fired] == ["daily_loss"]
    assert tripped == first_breach


def test_drawdown_halt_survives_day_change_until_reset(tmp_path: Path) -> None:
    path = tmp_path / "risk.db"
    limits = MetaRiskLimits(daily_loss_pct=0.5)  # isolate drawdown
    with MetaRisk(path, limits) as risk:
        risk.observe(START, ist_ms(1, 9, 15))
        risk.observe(START + 100_000.0, ist_ms(1, 10, 0))  # peak 1,100,000
        risk.observe(START - 15_000.0, ist_ms(1, 11, 0))  # 985,000: dd 10.45 %
        assert risk.halts == {"max_drawdown": dt.date(2024, 1, 1)}
        assert risk.kill_switch == "max_drawdown"
    with MetaRisk(path, limits) as risk:
        for day in (2, 3):
            out = risk.update(
                **safe_inputs(exchange_ts_ms=ist_ms(day, 10, 0), equity=START - 15_000.0)
            )
            assert out.halt and not out.allowed
            v = rules(out)["max_drawdown"]
            assert v.value == pytest.approx(115_000 / 1_100_000) and v.limit == 0.10
        assert risk.reset_halt("max_drawdown") is True
        out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(3, 10, 1), equity=START - 15_000.0))
        assert out.allowed and not out.halt
    with MetaRisk(path, limits) as risk:
        assert not risk.halted
        with pytest.raises(MetaRiskError, match="unknown halt rule"):
            risk.reset_halt("bad_mood")


@pytest.mark.parametrize(
    ("hour", "minute", "allowed", "value", "limit"),
    [
        (9, 14, False, 914.0, 915.0),
        (15, 21, False, 1521.0, 1500.0),
        (15, 0, False, 1500.0, 1500.0),
        (14, 59, True, None, None),
        (10, 0, True, None, None),
        (9, 15, True, None, None),
    ],
)
def test_trading_hours(
    tmp_path: Path, hour: int, minute: int, allowed: bool, value: float, limit: float
) -> None:
    with MetaRisk(tmp_path / "r.db") as risk:
        out = risk.update(**safe_inputs(exchange_ts_ms=ist_ms(2, hour, minute)))
    assert out.allowed is allowed
    if not allowed:
        v = rules(out)["trading_hours"]
        assert (v.value, v.limit) == (value, limit)
        assert [x.rule for x in out.vetoes] == ["trading_hours"]
