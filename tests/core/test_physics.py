"""Kernels against independent references (scipy, numpy, plain loops) and live/batch parity."""

from __future__ import annotations

import itertools
import math
import warnings
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from chimera_core import physics
from chimera_core.contracts import Bar
from chimera_core.ring import BarRing

EPS = np.finfo(np.float64).eps

prices = st.floats(min_value=1.0, max_value=1e5, allow_nan=False, allow_infinity=False)


def price_series(min_size: int = 2, max_size: int = 120) -> st.SearchStrategy[np.ndarray]:
    return st.lists(prices, min_size=min_size, max_size=max_size).map(
        lambda xs: np.array(xs, dtype=np.float64)
    )


# --- independent references ------------------------------------------------------------


def reference_energy(close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    x = np.arange(n, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # linregress warns about r on a flat window
        for end in range(n - 1, close.size):
            y = close[end - n + 1 : end + 1]
            out[end] = stats.linregress(x, y).slope / np.mean(y) * 100.0
    return out


def reference_volatility(close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    for end in range(close.size):
        window = close[max(0, end - n + 1) : end + 1]
        if window.size >= 3:
            returns = np.array([math.log(b / a) for a, b in itertools.pairwise(window)])
            out[end] = np.std(returns, ddof=1)
    return out


def reference_atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    for end in range(n, close.size):
        ranges = []
        for i in range(end - n + 1, end + 1):
            prev = close[i - 1]
            ranges.append(max(high[i] - low[i], abs(high[i] - prev), abs(low[i] - prev)))
        out[end] = sum(ranges) / n
    return out


def reference_profile(
    closes: list[float], volumes: list[int], bucket: float
) -> tuple[float, float, float, int] | None:
    """Dict-based value area at exactly 70% (integer comparison, no float ratio)."""
    by_bucket: dict[int, int] = defaultdict(int)
    for close, volume in zip(closes, volumes, strict=True):
        if volume > 0:
            by_bucket[math.floor(close / bucket + 0.5)] += volume
    if not by_bucket:
        return None
    total = sum(by_bucket.values())
    poc = min(by_bucket, key=lambda b: (-by_bucket[b], b))
    lowest, highest = min(by_bucket), max(by_bucket)
    low = high = poc
    held = by_bucket[poc]
    while held * 10 < 7 * total:
        below = by_bucket.get(low - 1, 0) if low > lowest else None
        above = by_bucket.get(high + 1, 0) if high < highest else None
        if below is None or (above is not None and above > below):
            high += 1
            held += above or 0
        else:
            low -= 1
            held += below
    return poc * bucket, low * bucket, high * bucket, total


def z_tolerance(window: np.ndarray, z_ref: float, std_ref: float) -> float:
    """Forward-error bound: both sides round the mean at ~n ulps of the largest price, and
    that error is divided by std (large when the window is nearly flat)."""
    return (
        1e-9 * (1.0 + abs(z_ref)) + 8 * window.size * EPS * float(np.max(np.abs(window))) / std_ref
    )


# --- energy -----------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(close=price_series(), lookback=st.integers(2, 40))
def test_energy_matches_linregress(close: np.ndarray, lookback: int) -> None:
    got = physics.energy_series(close, lookback)
    np.testing.assert_allclose(got, reference_energy(close, lookback), rtol=1e-9, atol=1e-9)


def test_energy_of_a_straight_line() -> None:
    close = 100.0 + np.arange(30, dtype=np.float64)
    got = physics.energy_series(close, 20)
    assert np.isnan(got[:19]).all()
    # slope 1 over a window whose mean is its first value + 9.5
    expected = 1.0 / (close[19:] - 19 + 9.5) * 100.0
    np.testing.assert_allclose(got[19:], expected, rtol=1e-12)


# --- z / structure ----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(close=price_series(), lookback=st.integers(2, 40))
def test_zscore_matches_numpy(close: np.ndarray, lookback: int) -> None:
    got = physics.zscore_series(close, lookback)
    assert np.isnan(got[: min(lookback, close.size)]).all()
    for end in range(lookback, close.size):
        window = close[end - lookback : end]
        if np.ptp(window) == 0.0:
            assert got[end] == 0.0  # flat window rule
            continue
        std = float(np.std(window, ddof=1))
        expected = (close[end] - np.mean(window)) / std
        assert abs(got[end] - expected) <= z_tolerance(window, expected, std), (end, got[end])


def test_zscore_hand_computed() -> None:
    # previous closes 1, 2, 3: mean 2, sample std 1 -> close 4.5 sits at z = 2.5
    got = physics.zscore_series(np.array([1.0, 2.0, 3.0, 4.5]), 3)
    assert np.isnan(got[:3]).all()
    assert got[3] == pytest.approx(2.5, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    value=prices,
    size=st.integers(5, 200),
    lookback=st.integers(2, 5),
)
def test_flat_series_reads_zero_everywhere(value: float, size: int, lookback: int) -> None:
    """std == 0 rule: a flat window gives z = 0 exactly (TRAPPED), never rounding noise."""
    close = np.full(size, value)
    assert (physics.zscore_series(close, lookback)[lookback:] == 0.0).all()
    assert (physics.energy_series(close, lookback)[lookback - 1 :] == 0.0).all()
    mean, std, code = physics.gaussian_bands(close, lookback, 2.0)
    assert (std[lookback - 1 :] == 0.0).all()
    assert (mean[lookback - 1 :] == value).all()
    assert (code == 0).all()


@pytest.mark.parametrize("value", [0.1, 1.0 / 3.0, 2885.05, 99999.95])
def test_flat_window_then_a_jump_is_zero_not_infinite(value: float) -> None:
    close = np.append(np.full(60, value), value * 1.01)
    z = physics.zscore_series(close, 60)
    assert z[60] == 0.0


# --- gaussian band ----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(close=price_series(), lookback=st.integers(2, 40), k=st.floats(0.0, 3.0))
def test_band_matches_numpy(close: np.ndarray, lookback: int, k: float) -> None:
    mean, std, code = physics.gaussian_bands(close, lookback, k)
    assert np.array_equal(code, physics.gaussian_series(close, lookback, k))
    assert (code[: lookback - 1] == 0).all()
    assert np.isnan(mean[: lookback - 1]).all()
    for end in range(lookback - 1, close.size):
        window = close[end - lookback + 1 : end + 1]
        m = float(np.mean(window))
        s = float(np.std(window, ddof=1))
        assert mean[end] == pytest.approx(m, rel=1e-9, abs=1e-9)
        assert std[end] == pytest.approx(s, rel=1e-9, abs=1e-9)
        c = close[end]
        # Compare the code only where rounding cannot decide which side the close is on.
        margin = 1e-9 * (abs(c) + k * s + 1.0)
        if c - (m + k * s) > margin:
            assert code[end] == 1
        elif (m - k * s) - c > margin:
            assert code[end] == -1
        elif c - (m + k * s) < -margin and (m - k * s) - c < -margin:
            assert code[end] == 0


def test_band_hand_computed() -> None:
    close = np.array([10.0, 10.0, 10.0, 10.0, 20.0])
    mean, std, code = physics.gaussian_bands(close, 5, 1.5)
    assert mean[4] == 12.0
    assert std[4] == pytest.approx(math.sqrt(20.0), rel=1e-12)
    assert code[4] == 1  # 20 - 12 = 8 > 1.5 * 4.47
    _, _, code_k2 = physics.gaussian_bands(close, 5, 2.0)
    assert code_k2[4] == 0  # 8 < 2 * 4.47
    _, _, down = physics.gaussian_bands(np.array([10.0, 10.0, 10.0, 10.0, 0.5]), 5, 1.5)
    assert down[4] == -1


# --- volatility and ATR -----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(close=price_series(max_size=100), lookback=st.integers(3, 40))
def test_volatility_matches_loop(close: np.ndarray, lookback: int) -> None:
    got = physics.volatility_series(close, lookback)
    np.testing.assert_allclose(got, reference_volatility(close, lookback), rtol=1e-9, atol=1e-12)
    assert np.isnan(got[:2]).all()


@settings(max_examples=60, deadline=None)
@given(
    bars=st.lists(
        st.tuples(prices, st.floats(0.0, 50.0), st.floats(0.0, 50.0)), min_size=1, max_size=80
    ),
    lookback=st.integers(1, 20),
)
def test_atr_matches_loop(bars: list[tuple[float, float, float]], lookback: int) -> None:
    close = np.array([c for c, _, _ in bars])
    high = close + np.array([up for _, up, _ in bars])
    low = close - np.array([down for _, _, down in bars])
    got = physics.atr_series(high, low, close, lookback)
    np.testing.assert_allclose(got, reference_atr(high, low, close, lookback), rtol=1e-9, atol=1e-9)
    assert np.isnan(got[: min(lookback, close.size)]).all()


def test_atr_uses_the_gap_from_previous_close() -> None:
    close = np.array([100.0, 110.0, 111.0])
    high = np.array([101.0, 111.0, 112.0])
    low = np.array([99.0, 109.0, 110.0])
    # TR: bar1 = max(2, 11, 9) = 11, bar2 = max(2, 2, 0) = 2
    got = physics.atr_series(high, low, close, 2)
    assert np.isnan(got[:2]).all()
    assert got[2] == 6.5


# --- volume profile ---------------------------------------------------------------------


def test_volume_profile_hand_computed() -> None:
    # bucket 0.5: 100.2 -> 100.0, 100.26 and 100.74 -> 100.5, 101.1 -> 101.0, ...
    closes = [100.2, 100.26, 100.74, 101.1, 99.6, 101.4, 99.1]
    volumes = [100, 100, 200, 200, 150, 50, 200]
    # by bucket: 99.0:200 99.5:150 100.0:100 100.5:300 101.0:200 101.5:50, total 1000.
    # POC 100.5; add 101.0 (200 > 100) -> 500; add 100.0 (100 > 50) -> 600;
    # add 99.5 (150 > 50) -> 750 >= 700.
    got = physics.volume_profile(np.array(closes), np.array(volumes, dtype=np.float64), 0.5)
    assert got == (100.5, 99.5, 101.0, 1000.0)


@pytest.mark.parametrize(
    ("value_area", "closes", "volumes", "expected"),
    [
        # 3 / 4 / 3 of 10: POC 4, tie -> lower side, 7 of 10 is exactly 70%: stop.
        (0.70, [10.0, 10.5, 11.0], [3.0, 4.0, 3.0], (10.5, 10.0, 10.5, 10.0)),
        # 55 of 100 is exactly 55%, although 0.55 * 100 is 55.00000000000001.
        (0.55, [10.0, 10.5, 11.0, 11.5], [25.0, 30.0, 25.0, 20.0], (10.5, 10.0, 10.5, 100.0)),
    ],
)
def test_value_area_stops_at_exactly_the_threshold(
    value_area: float,
    closes: list[float],
    volumes: list[float],
    expected: tuple[float, float, float, float],
) -> None:
    got = physics.volume_profile(np.array(closes), np.array(volumes), 0.5, value_area)
    assert got == expected


def test_poc_tie_goes_to_the_lower_price() -> None:
    got = physics.volume_profile(np.array([10.0, 12.0]), np.array([5.0, 5.0]), 0.5)
    assert got[0] == 10.0
    # the empty buckets between 10 and 12 are part of the contiguous value area
    assert got[1:] == (10.0, 12.0, 10.0)


def test_volume_profile_without_volume_is_nan() -> None:
    poc, low, high, total = physics.volume_profile(np.array([10.0, 11.0]), np.zeros(2), 0.5)
    assert total == 0.0 and math.isnan(poc) and math.isnan(low) and math.isnan(high)


@settings(max_examples=100, deadline=None)
@given(
    bars=st.lists(
        st.tuples(st.floats(90.0, 110.0), st.integers(0, 10_000)), min_size=1, max_size=60
    ),
    bucket=st.sampled_from([0.05, 0.25, 0.5, 1.0]),
)
def test_volume_profile_properties(bars: list[tuple[float, int]], bucket: float) -> None:
    closes = [c for c, _ in bars]
    volumes = [v for _, v in bars]
    poc, low, high, total = physics.volume_profile(
        np.array(closes), np.array(volumes, dtype=np.float64), bucket
    )
    expected = reference_profile(closes, volumes, bucket)
    if expected is None:
        assert total == 0.0
        return
    assert (poc, low, high, total) == pytest.approx(expected, rel=1e-12)
    assert low <= poc <= high
    low_idx, high_idx = round(low / bucket), round(high / bucket)
    in_area = sum(v for c, v in bars if low_idx <= math.floor(c / bucket + 0.5) <= high_idx)
    assert in_area * 10 >= 7 * total
    assert total == sum(volumes)


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        [1.0, 2.0, 3.0],
        np.arange(5),
        np.ones((3, 3)),
        np.ones(5, dtype=np.float32),
    ],
)
def test_batch_rejects_anything_but_1d_float64(bad: object) -> None:
    with pytest.raises(ValueError, match="1-D float64"):
        physics.energy_series(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("lookback", [1, 0, -3, True, 2.5])
def test_batch_rejects_short_lookback(lookback: object) -> None:
    with pytest.raises(ValueError, match="lookback"):
        physics.zscore_series(np.ones(10), lookback)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [-1.0, math.nan, math.inf])
def test_band_rejects_bad_k(k: float) -> None:
    with pytest.raises(ValueError, match="k must be"):
        physics.gaussian_series(np.ones(10), 5, k)


def test_non_contiguous_input_is_accepted() -> None:
    close = (100.0 + np.arange(60, dtype=np.float64))[::2]
    np.testing.assert_array_equal(
        physics.energy_series(close, 5), physics.energy_series(close.copy(), 5)
    )


def test_warm_up_kernels_runs() -> None:
    physics.warm_up_kernels()


# --- live path parity -------------------------------------------------------------------


def replay_live(
    close: np.ndarray, energy_n: int, z_n: int, band_n: int, k: float, capacity: int
) -> np.ndarray:
    """Each value evaluated live first (provisional close), then pushed as a closed bar."""
    ring = BarRing(capacity, max_lookback=max(energy_n, z_n, band_n))
    out = np.empty(physics.LIVE_SIZE)
    rows = np.empty((close.size, physics.LIVE_SIZE))
    for i, value in enumerate(close.tolist()):
        physics.evaluate_live(ring.close, ring.count, value, energy_n, z_n, band_n, k, out)
        rows[i] = out
        ring.push(Bar("T", i, i + 1, value, value, value, value, 0, 1))
    return rows


def assert_live_matches_batch(
    close: np.ndarray, energy_n: int, z_n: int, band_n: int, k: float, capacity: int
) -> None:
    rows = replay_live(close, energy_n, z_n, band_n, k, capacity)
    mean, std, code = physics.gaussian_bands(close, band_n, k)
    np.testing.assert_allclose(
        rows[:, physics.LIVE_ENERGY], physics.energy_series(close, energy_n), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        rows[:, physics.LIVE_Z], physics.zscore_series(close, z_n), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(rows[:, physics.LIVE_BAND_MEAN], mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rows[:, physics.LIVE_BAND_STD], std, rtol=1e-9, atol=1e-9)
    live_code = rows[:, physics.LIVE_BAND]
    assert np.isnan(live_code[: band_n - 1]).all()
    np.testing.assert_array_equal(live_code[band_n - 1 :], code[band_n - 1 :])


def test_live_path_matches_batch_on_100k_random_walk() -> None:
    rng = np.random.default_rng(20240501)
    close = 1000.0 + np.cumsum(rng.normal(0.0, 0.5, 100_000))
    assert close.min() > 0
    assert_live_matches_batch(close, 20, 60, 140, 2.0, 256)


@settings(max_examples=40, deadline=None)
@given(
    close=price_series(min_size=1, max_size=150),
    energy_n=st.integers(2, 12),
    z_n=st.integers(2, 12),
    band_n=st.integers(2, 12),
    k=st.floats(0.0, 3.0),
    slack=st.integers(0, 6),
)
def test_live_path_matches_batch_with_small_rings(
    close: np.ndarray, energy_n: int, z_n: int, band_n: int, k: float, slack: int
) -> None:
    # The smallest legal capacity wraps the ring many times over 150 values.
    capacity = max(energy_n, z_n, band_n, 1) + 2 + slack
    assert_live_matches_batch(close, energy_n, z_n, band_n, k, capacity)


def test_evaluate_live_writes_both_copies_and_keeps_count() -> None:
    ring = BarRing(8)
    for i in range(11):
        ring.push(Bar("T", i, i + 1, 1.0, 1.0, 1.0, float(i + 1), 0, 1))
    out = np.empty(physics.LIVE_SIZE)
    physics.evaluate_live(ring.close, ring.count, 42.0, 3, 3, 3, 2.0, out)
    slot = 11 % 8
    assert ring.close[slot] == ring.close[slot + 8] == 42.0
    assert ring.count == 11
    np.testing.assert_array_equal(ring.closes_view(7), np.arange(5.0, 12.0))


def test_evaluate_bar_close_matches_batch() -> None:
    rng = np.random.default_rng(7)
    size = 400
    close = 500.0 + np.cumsum(rng.normal(0.0, 1.0, size))
    high = close + rng.uniform(0.0, 2.0, size)
    low = close - rng.uniform(0.0, 2.0, size)
    volume = rng.integers(0, 1000, size)
    ring = BarRing(64, max_lookback=60)
    out = np.empty(physics.CLOSED_SIZE)
    volatility = physics.volatility_series(close, 60)
    atr = physics.atr_series(high, low, close, 14)
    for i in range(size):
        ring.push(Bar("T", i, i + 1, close[i], high[i], low[i], close[i], int(volume[i]), 1))
        physics.evaluate_bar_close(
            ring.close, ring.high, ring.low, ring.volume, ring.count, 60, 14, 0.5, 0.7, out
        )
        np.testing.assert_allclose(out[physics.CLOSED_VOLATILITY], volatility[i], rtol=1e-12)
        np.testing.assert_allclose(out[physics.CLOSED_ATR], atr[i], rtol=1e-12)
        start = max(0, i - 59)
        expected = reference_profile(
            close[start : i + 1].tolist(), volume[start : i + 1].tolist(), 0.5
        )
        if expected is None:
            assert out[physics.CLOSED_VOLUME] == 0.0
        else:
            assert tuple(out[physics.CLOSED_POC :]) == pytest.approx(expected, rel=1e-12)


def test_the_volume_profile_refuses_a_price_range_too_wide_to_bucket():
    """Closes 0.5 and 10^9 apart by a 0.5 bucket would need 2e9 buckets: no profile."""
    from chimera_core.physics import volume_profile_at

    close = np.array([100.0, 1e9, 100.5])
    volume = np.array([10.0, 10.0, 10.0])
    poc, low, high, total = volume_profile_at(close, volume, 2, 3, 0.5, 0.7)
    assert total == 0.0 and math.isnan(poc) and math.isnan(low) and math.isnan(high)
