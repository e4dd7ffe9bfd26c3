"""Capital brain: hard cap as a property, hand-computed sizing, regime and volatility caps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.contracts import Regime
from chimera_core.errors import ConfigError
from chimera_governance.capital_brain import CapitalBrain


def pos(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


brains = st.builds(
    CapitalBrain,
    max_leverage=pos(0.01, 10.0),
    chaos_leverage=pos(0.0, 20.0),
    stable_leverage=pos(0.0, 20.0),
    trending_leverage=pos(0.0, 20.0),  # above max_leverage on purpose: the cap must hold
    warmup_leverage=pos(0.0, 20.0),
    high_vol_leverage=pos(0.0, 20.0),
    risk_per_trade=pos(1e-4, 1.0),
    stop_atr_multiple=pos(0.1, 10.0),
    lot_size=st.integers(1, 1000),
)


@settings(max_examples=300, deadline=None)
@given(
    brains,
    st.sampled_from(list(Regime)),
    st.one_of(pos(-1.0, 2.0), st.just(math.nan)),
    st.one_of(pos(0.0, 0.2), st.just(math.nan)),
    pos(1e-4, 1e4),
    pos(0.01, 1e6),
    pos(1.0, 1e9),
)
def test_hard_cap_and_lot_multiple_always_hold(
    brain: CapitalBrain,
    regime: Regime,
    drift: float,
    vol: float,
    atr: float,
    price: float,
    equity: float,
) -> None:
    out = brain.update(regime, drift, vol, atr, price, equity)
    assert 0.0 <= out.target_leverage <= brain.max_leverage
    assert 0.0 <= out.drift_scale <= 1.0
    assert out.qty >= 0
    assert out.qty % brain.lot_size == 0
    assert out.qty * price <= equity * brain.max_leverage + brain.lot_size * price
    # Tighter: the size never spends more than the target leverage (float slack only).
    assert out.qty * price <= equity * out.target_leverage * (1 + 1e-12)
    assert out.qty * atr * brain.stop_atr_multiple <= equity * brain.risk_per_trade * (1 + 1e-12)


def test_hand_computed_sizing_bound_by_risk() -> None:
    # STABLE 1.0x, drift 0.2 → 0.8x. Risk 1% of 100_000 = 1_000; stop 2 × 5 = 10 → 100 units.
    # Leverage: 100_000 × 0.8 / 500 = 160 units. min = 100, lot 1 → 100.
    out = CapitalBrain().update(Regime.STABLE, 0.2, 0.01, 5.0, 500.0, 100_000.0)
    assert out.regime_leverage == 1.0
    assert out.drift_scale == pytest.approx(0.8)
    assert out.target_leverage == pytest.approx(0.8)
    assert out.stop_distance == 10.0
    assert out.qty == 100
    assert not out.high_volatility
    assert "risk" in out.reason


def test_hand_computed_sizing_bound_by_leverage_and_lot() -> None:
    # TRENDING 1.5x, drift 0 → 1.5x. Leverage: 100_000 × 1.5 / 2_000 = 75 units.
    # Risk: 1_000 / (2 × 1.0) = 500 units. min = 75 → lots of 25 → 75; lots of 50 → 50.
    assert (
        CapitalBrain(lot_size=25).update(Regime.TRENDING, 0.0, 0.01, 1.0, 2_000.0, 100_000.0).qty
        == 75
    )
    out = CapitalBrain(lot_size=50).update(Regime.TRENDING, 0.0, 0.01, 1.0, 2_000.0, 100_000.0)
    assert out.qty == 50
    assert out.target_leverage == 1.5
    assert "leverage" in out.reason


def test_less_than_one_lot_gives_zero() -> None:
    # 100 units fit by risk, 200 by leverage: a lot of 101 does not fit.
    out = CapitalBrain(lot_size=101).update(Regime.STABLE, 0.0, 0.01, 5.0, 500.0, 100_000.0)
    assert out.qty == 0
    assert "less than one lot" in out.reason


def test_exactly_one_lot() -> None:
    out = CapitalBrain(lot_size=100).update(Regime.STABLE, 0.0, 0.01, 5.0, 500.0, 100_000.0)
    assert out.qty == 100


def test_high_volatility_caps_at_half() -> None:
    brain = CapitalBrain()
    out = brain.update(Regime.TRENDING, 0.0, 0.03, 5.0, 100.0, 100_000.0)
    assert out.high_volatility
    assert out.target_leverage == 0.5
    assert brain.update(Regime.TRENDING, 0.0, 0.02, 5.0, 100.0, 1e5).target_leverage == 1.5
    assert brain.update(Regime.STABLE, 0.0, math.nan, 5.0, 100.0, 1e5).high_volatility


@pytest.mark.parametrize("drift", [0.0, 0.3, 0.7, 1.0, 1.5])
def test_chaos_is_half_times_drift_scale(drift: float) -> None:
    out = CapitalBrain().update(Regime.CHAOS, drift, 0.01, 5.0, 100.0, 100_000.0)
    assert out.drift_scale == pytest.approx(max(0.0, 1.0 - drift))
    assert out.target_leverage == pytest.approx(0.5 * max(0.0, 1.0 - drift))


def test_warmup_does_not_trade() -> None:
    out = CapitalBrain().update(Regime.WARMUP, 0.0, 0.01, 5.0, 100.0, 100_000.0)
    assert out.target_leverage == 0.0
    assert out.qty == 0
    assert "target leverage is 0" in out.reason


def test_regime_leverage_above_cap_is_capped() -> None:
    out = CapitalBrain(max_leverage=2.0, trending_leverage=5.0).update(
        Regime.TRENDING, 0.0, 0.01, 0.01, 100.0, 100_000.0
    )
    assert out.regime_leverage == 5.0
    assert out.target_leverage == 2.0
    assert out.qty == 2_000  # 100_000 × 2 / 100; risk allows 50_000


@pytest.mark.parametrize(
    ("atr", "price", "word"),
    [
        (0.0, 100.0, "atr"),
        (math.nan, 100.0, "atr"),
        (-1.0, 100.0, "atr"),
        (5.0, 0.0, "price"),
        (5.0, math.inf, "price"),
    ],
)
def test_bad_atr_or_price_gives_zero_with_reason(atr: float, price: float, word: str) -> None:
    out = CapitalBrain().update(Regime.STABLE, 0.0, 0.01, atr, price, 100_000.0)
    assert out.qty == 0
    assert word in out.reason
    assert math.isfinite(out.stop_distance)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_leverage": 0.0},
        {"max_leverage": math.inf},
        {"chaos_leverage": -0.1},
        {"stable_leverage": math.nan},
        {"lot_size": 0},
        {"lot_size": 1.5},
        {"risk_per_trade": 0.0},
        {"stop_atr_multiple": 0.0},
        {"high_vol_threshold": -1.0},
    ],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        CapitalBrain(**kwargs)
