"""SymbolPhysics: per-tick states agree with the batch kernels; warm-up; bar closes."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core import physics
from chimera_core.contracts import Band, PhysicsState, Structure
from chimera_core.symbol_physics import SymbolPhysics

MINUTE = 60_000


def random_walk(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2000.0 + np.cumsum(rng.normal(0.0, 0.8, size))


def one_tick_per_bar(physics_: SymbolPhysics, closes: np.ndarray) -> list[PhysicsState]:
    """Tick i opens bar i, so it closes bar i - 1 (whose close is value i - 1) and is
    evaluated live with i closed bars, exactly like index i of the batch series."""
    states = []
    for i, price in enumerate(closes.tolist()):
        state, closed = physics_.on_trade(i * MINUTE, price, 0, 10)
        assert (closed is None) == (i == 0)
        assert state.closed_bars == i
        states.append(state)
    return states


def test_per_tick_states_match_batch_series() -> None:
    closes = random_walk(20_000, 11)
    symbol = SymbolPhysics("2885")
    states = one_tick_per_bar(symbol, closes)
    energy = np.array([s.energy for s in states])
    z = np.array([s.z for s in states])
    np.testing.assert_allclose(energy, physics.energy_series(closes, 20), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(z, physics.zscore_series(closes, 60), rtol=1e-9, atol=1e-9)
    mean, std, code = physics.gaussian_bands(closes, 140, 2.0)
    np.testing.assert_allclose([s.band_mean for s in states], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose([s.band_std for s in states], std, rtol=1e-9, atol=1e-9)
    by_code = {1: Band.BREAKOUT, -1: Band.BREAKDOWN, 0: Band.NEUTRAL}
    assert [s.band for s in states[139:]] == [by_code[int(c)] for c in code[139:]]
    assert {s.band for s in states[:139]} == {Band.WARMUP}
    # closed-bar statistics: state i has seen closes[:i]
    volatility = physics.volatility_series(closes, 60)
    np.testing.assert_allclose([s.volatility for s in states[1:]], volatility[:-1], rtol=1e-12)
    # every bar has one tick: high = low = close, so TR is |close - prev close|
    atr = physics.atr_series(closes, closes, closes, 14)
    np.testing.assert_allclose([s.atr for s in states[1:]], atr[:-1], rtol=1e-12)
    structures = [s.structure for s in states]
    assert set(structures[:60]) == {Structure.WARMUP}
    expected = [Structure.VACUUM if abs(v) >= 1.0 else Structure.TRAPPED for v in z[60:]]
    assert structures[60:] == expected
    assert Structure.VACUUM in expected and Structure.TRAPPED in expected


@settings(max_examples=30, deadline=None)
@given(
    closes=st.lists(st.floats(1.0, 1e5), min_size=1, max_size=120).map(np.array),
    energy_n=st.integers(2, 10),
    z_n=st.integers(2, 10),
    band_n=st.integers(2, 10),
    slack=st.integers(0, 4),
)
def test_per_tick_parity_with_small_rings(
    closes: np.ndarray, energy_n: int, z_n: int, band_n: int, slack: int
) -> None:
    capacity = max(energy_n, z_n, band_n, 3) + 2 + slack
    symbol = SymbolPhysics(
        "T", energy_n=energy_n, z_n=z_n, band_n=band_n, atr_n=3, capacity=capacity
    )
    states = one_tick_per_bar(symbol, closes)
    np.testing.assert_allclose(
        [s.energy for s in states], physics.energy_series(closes, energy_n), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        [s.z for s in states], physics.zscore_series(closes, z_n), rtol=1e-9, atol=1e-9
    )
    mean, _, _ = physics.gaussian_bands(closes, band_n, 2.0)
    np.testing.assert_allclose([s.band_mean for s in states], mean, rtol=1e-9, atol=1e-9)


def test_live_price_inside_a_bar_is_the_provisional_close() -> None:
    closes = random_walk(200, 3)
    symbol = SymbolPhysics("2885")
    for i, price in enumerate(closes[:150].tolist()):
        symbol.on_trade(i * MINUTE, price, 0, 1)
    # Three more ticks inside bar 149: each is evaluated as that bar's close.
    for offset, price in ((10_000, 1990.0), (20_000, 2010.0), (59_999, 2003.5)):
        state, closed = symbol.on_trade(149 * MINUTE + offset, price, 0, 1)
        assert closed is None
        assert state.close == price
        series = np.append(closes[:149], price)
        assert state.energy == pytest.approx(physics.energy_series(series, 20)[-1], rel=1e-12)
        assert state.z == pytest.approx(physics.zscore_series(series, 60)[-1], rel=1e-12)
    # The closing tick pushes the bar first, then evaluates itself on the new bar.
    state, closed = symbol.on_trade(150 * MINUTE, 2001.0, 0, 1)
    assert closed is not None and closed.close == 2003.5 and closed.high == 2010.0
    assert state.closed_bars == 150
    assert symbol.ring.closes_view(1)[0] == 2003.5
    assert symbol.bar_start_ms == 150 * MINUTE


def test_warm_up_states_and_warm_flag() -> None:
    symbol = SymbolPhysics("2885", energy_n=5, z_n=8, band_n=10, atr_n=3, capacity=16)
    assert symbol.bar_start_ms is None
    closes = random_walk(12, 5)
    for i, price in enumerate(closes.tolist()):
        state, _ = symbol.on_trade(i * MINUTE, price, 0, 1)
        assert math.isnan(state.energy) == (i < 4)
        assert (state.structure is Structure.WARMUP) == (i < 8)
        assert math.isnan(state.z) == (i < 8)
        assert (state.band is Band.WARMUP) == (i < 9)
        assert math.isnan(state.band_std) == (i < 9)
        assert math.isnan(state.volatility) == (i < 3)  # needs 3 closed bars
        assert math.isnan(state.atr) == (i < 4)  # needs atr_n + 1 closed bars
        # warm: this tick (and every later one) has all three windows full
        assert symbol.warm == (i >= 9)
        assert symbol.warm == (
            state.structure is not Structure.WARMUP
            and state.band is not Band.WARMUP
            and not math.isnan(state.energy)
        )


def test_flat_market_is_trapped_not_vacuum() -> None:
    symbol = SymbolPhysics("2885", energy_n=5, z_n=8, band_n=10, atr_n=3, capacity=16)
    for i in range(30):
        state, _ = symbol.on_trade(i * MINUTE, 0.1, 1_000 + i, 1)
    assert state.z == 0.0
    assert state.structure is Structure.TRAPPED
    assert state.band is Band.NEUTRAL and state.band_std == 0.0
    assert state.energy == 0.0
    assert state.volatility == 0.0


def test_volume_profile_is_computed_at_bar_close_from_closed_bars() -> None:
    symbol = SymbolPhysics("2885", z_n=4, energy_n=3, band_n=4, atr_n=3, capacity=8)
    # cumulative volume: the first reading counts 0, then deltas
    ticks = [
        (0, 100.0, 1_000),
        (MINUTE, 100.5, 1_300),  # closes bar 0 with volume 0 -> still no profile
        (2 * MINUTE, 101.0, 1_400),  # closes bar 1: 100.5 x 300
        (2 * MINUTE + 1, 101.0, 1_600),  # same bar, +200
        (3 * MINUTE, 99.0, 1_650),  # closes bar 2: 101.0 x 300
    ]
    profiles = []
    for ts, price, cum in ticks:
        state, _ = symbol.on_trade(ts, price, cum, 1)
        profiles.append(state.profile)
    assert profiles[:2] == [None, None]
    assert profiles[2] is not None and profiles[2].poc == 100.5
    assert profiles[2].total_volume == 300
    # tie 300 / 300 -> lower price is the POC; unchanged by the forming bar's ticks
    assert profiles[3] == profiles[2]
    last = profiles[4]
    assert last is not None
    assert (last.poc, last.value_area_low, last.value_area_high, last.total_volume) == (
        100.5,
        100.5,
        101.0,
        600,
    )
    closed_volumes = symbol.ring.volumes_view(3).tolist()
    assert closed_volumes == [0.0, 300.0, 300.0]


def test_late_tick_changes_nothing() -> None:
    symbol = SymbolPhysics("2885", energy_n=3, z_n=3, band_n=3, atr_n=3, capacity=8)
    symbol.on_trade(0, 100.0, 1_000, 1)
    symbol.on_trade(MINUTE, 101.0, 1_100, 1)
    before, _ = symbol.on_trade(MINUTE + 5, 102.0, 1_200, 1)
    late, closed = symbol.on_trade(30_000, 50.0, 900, 1)  # from the closed minute
    assert closed is None
    assert symbol.late_ticks == 1
    # NaN != NaN, so compare the encoded states byte for byte
    assert msgspec.msgpack.encode(late) == msgspec.msgpack.encode(before)
    # the cumulative baseline ignored the late reading (900 would look like a reset)
    _, bar = symbol.on_trade(2 * MINUTE, 103.0, 1_250, 1)
    assert bar is not None and (bar.close, bar.volume, bar.ticks) == (102.0, 200, 2)
    _, bar = symbol.on_trade(3 * MINUTE, 104.0, 1_260, 1)
    assert bar is not None and bar.volume == 50  # 1_250 - 1_200, not 1_250 - 900


def test_rejects_capacity_too_small_for_the_lookbacks() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SymbolPhysics("2885", capacity=141)
    SymbolPhysics("2885", capacity=142)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"energy_n": 1},
        {"z_n": 0},
        {"band_n": 1.5},
        {"atr_n": 0},
        {"k": -1.0},
        {"k": math.nan},
        {"profile_bucket": 0.0},
        {"value_area": 1.5},
        {"interval_ms": 0},
    ],
)
def test_rejects_bad_parameters(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SymbolPhysics("2885", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("price", [0.0, -1.0, math.nan, math.inf])
def test_rejects_bad_prices(price: float) -> None:
    symbol = SymbolPhysics("2885")
    with pytest.raises(ValueError, match="price"):
        symbol.on_trade(0, price, 0, 1)
    assert symbol.bar_start_ms is None


@pytest.mark.parametrize(
    ("price", "structure"),
    [(3.0, Structure.VACUUM), (1.0, Structure.VACUUM), (2.5, Structure.TRAPPED)],
)
def test_vacuum_starts_at_exactly_one_sigma(price: float, structure: Structure) -> None:
    symbol = SymbolPhysics("2885", energy_n=2, z_n=3, band_n=2, atr_n=2, capacity=8)
    for i, close in enumerate([1.0, 2.0, 3.0]):
        symbol.on_trade(i * MINUTE, close, 0, 1)
    # previous closes 1, 2, 3: mean 2, sample std 1
    state, _ = symbol.on_trade(3 * MINUTE, price, 0, 1)
    assert abs(state.z) == abs(price - 2.0)
    assert state.structure is structure
