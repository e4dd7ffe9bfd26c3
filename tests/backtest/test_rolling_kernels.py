"""The O(1) rolling kernels against scipy / numpy / pandas references and against
chimera_core.physics' per-bar recompute, to 1e-9 (relative and absolute)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from chimera_core import physics
from tools.backtest import rolling
from tools.backtest.rolling import BacktestInputError

TOL = {"rtol": 1e-9, "atol": 1e-9}

# --- series: independent prints, random walks (long enough to pass several re-anchors),
# flat stretches and wild bars inside quiet ones --------------------------------------


@st.composite
def series(draw: st.DrawFn, min_size: int = 3, max_size: int = 3000) -> np.ndarray:
    kind = draw(st.sampled_from(["prints", "walk", "walk_flat", "spiky", "grid"]))
    if kind == "prints":
        xs = draw(st.lists(st.floats(1.0, 1e5), min_size=min_size, max_size=200))
        return np.array(xs, dtype=np.float64)
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vol = draw(st.sampled_from([1e-5, 1e-3, 1e-2, 5e-2]))
    start = draw(st.sampled_from([0.5, 100.0, 25_000.0, 1e6]))
    x = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    if kind == "walk_flat" and n > 10:
        for _ in range(draw(st.integers(1, 4))):
            a = int(rng.integers(0, n - 1))
            x[a : a + int(rng.integers(2, 400))] = x[a]
    if kind == "spiky" and n > 10:
        spikes = rng.integers(0, n, max(1, n // 200))
        x[spikes] *= rng.choice([1e-3, 1e3], spikes.size)
    if kind == "grid":
        x = np.maximum(np.round(x / 0.05) * 0.05, 0.05)
    return x


lookbacks = st.integers(2, 250)


def reference_energy(close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    x = np.arange(n, dtype=np.float64)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for end in range(n - 1, close.size):
            y = close[end - n + 1 : end + 1]
            out[end] = stats.linregress(x, y).slope / np.mean(y) * 100.0
    return out


def reference_zscore(close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    for end in range(n, close.size):
        window = close[end - n : end]
        sd = np.std(window, ddof=1)
        out[end] = 0.0 if np.all(window == window[0]) else (close[end] - window.mean()) / sd
    return out


def reference_band(close: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass numpy mean and std over every window (pandas' rolling std keeps running
    sums itself, and drifts by more than 1e-9 on prices near 1e6)."""
    mean = np.full(close.size, np.nan)
    std = np.full(close.size, np.nan)
    if close.size >= n:
        windows = np.lib.stride_tricks.sliding_window_view(close, n)
        mean[n - 1 :] = windows.mean(axis=1)
        std[n - 1 :] = windows.std(axis=1, ddof=1)
    return mean, std


def reference_volatility(close: np.ndarray, n: int) -> np.ndarray:
    out = np.full(close.size, np.nan)
    logs = np.diff(np.log(close))
    for end in range(2, close.size):
        w = min(end + 1, n)
        out[end] = np.std(logs[end - w + 1 : end], ddof=1)
    return out


def reference_atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int) -> np.ndarray:
    prev = np.concatenate(([np.nan], close[:-1]))
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev), np.abs(low - prev)))
    out = pd.Series(tr).rolling(n).mean().to_numpy().copy()
    out[:n] = np.nan
    return out


def close_enough(got: np.ndarray, want: np.ndarray) -> None:
    """allclose at 1e-9, and NaN exactly where the reference has NaN."""
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, **TOL)


@settings(max_examples=120, deadline=None)
@given(close=series(), n=lookbacks)
def test_energy_matches_scipy_and_physics(close: np.ndarray, n: int) -> None:
    got = rolling.rolling_energy(close, n)
    close_enough(got, physics.energy_series(close, n))
    if close.size <= 400:  # linregress per window is slow
        close_enough(got, reference_energy(close, n))


@settings(max_examples=120, deadline=None)
@given(close=series(), n=lookbacks)
def test_zscore_matches_numpy_and_physics(close: np.ndarray, n: int) -> None:
    got = rolling.rolling_zscore(close, n)
    want = physics.zscore_series(close, n)
    # z divides a displacement by the window's std: any float evaluation of it (physics'
    # two-pass sums as much as the rolling ones) carries an error of about n x eps x
    # (price / std). On a near-flat window of a 0.5 price that is above 1e-9, so the bound
    # is 1e-9 plus that forward error, which is 1e-11 or less on ordinary windows.
    assert np.array_equal(np.isnan(got), np.isnan(want))
    cond = np.zeros(close.size)
    for end in range(n, close.size):
        window = close[end - n : end]
        std = window.std(ddof=1)
        cond[end] = np.abs(window).max() / std if std > 0 else 0.0
    tol = 1e-9 + 1e-9 * np.abs(want) + 4.0 * n * np.finfo(np.float64).eps * cond
    ok = np.isnan(want) | (np.abs(got - want) <= tol)
    assert ok.all(), (np.flatnonzero(~ok)[:5], got[~ok][:5], want[~ok][:5], tol[~ok][:5])
    flat = np.array(
        [
            end >= n and bool(np.all(close[end - n : end] == close[end - n]))
            for end in range(close.size)
        ]
    )
    assert (got[flat] == 0.0).all()  # a flat window is exactly z = 0 (TRAPPED), as physics
    if close.size <= 600:  # the plain numpy reference carries the same forward error
        ref = reference_zscore(close, n)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        tol = 1e-9 + 1e-9 * np.abs(ref) + 4.0 * n * np.finfo(np.float64).eps * cond
        ok = np.isnan(ref) | (np.abs(got - ref) <= tol)
        assert ok.all(), (np.flatnonzero(~ok)[:5], got[~ok][:5], ref[~ok][:5], tol[~ok][:5])


@settings(max_examples=120, deadline=None)
@given(close=series(), n=lookbacks, k=st.sampled_from([0.0, 1.0, 2.0, 2.5]))
def test_band_matches_pandas_and_physics(close: np.ndarray, n: int, k: float) -> None:
    mean, std, code = rolling.rolling_band(close, n, k)
    p_mean, p_std, p_code = physics.gaussian_bands(close, n, k)
    close_enough(mean, p_mean)
    close_enough(std, p_std)
    r_mean, r_std = reference_band(close, n)
    close_enough(mean, r_mean)
    close_enough(std, r_std)
    # Codes are decided on values 1e-11 apart: they differ only where the displacement is
    # within that of k x std (never on these series).
    assert np.array_equal(code, p_code)


@settings(max_examples=120, deadline=None)
@given(close=series(), n=st.integers(3, 250))
def test_volatility_matches_numpy_and_physics(close: np.ndarray, n: int) -> None:
    got = rolling.rolling_volatility(close, n)
    close_enough(got, physics.volatility_series(close, n))
    if close.size <= 800:
        close_enough(got, reference_volatility(close, n))


@settings(max_examples=120, deadline=None)
@given(close=series(min_size=2), n=st.integers(1, 250), seed=st.integers(0, 2**32 - 1))
def test_atr_matches_pandas_and_physics(close: np.ndarray, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    high = close * (1 + np.abs(rng.normal(0, 0.01, close.size)))
    low = close * (1 - np.abs(rng.normal(0, 0.01, close.size)))
    got = rolling.rolling_atr(high, low, close, n)
    close_enough(got, physics.atr_series(high, low, close, n))
    close_enough(got, reference_atr(high, low, close, n))


@settings(max_examples=120, deadline=None)
@given(close=series(min_size=1), n=st.integers(1, 250))
def test_sma_matches_pandas(close: np.ndarray, n: int) -> None:
    got = rolling.rolling_sma(close, n)
    want = pd.Series(close).rolling(n).mean().to_numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    # pandas sums in running totals as well; the exact mean is the reference.
    exact = np.array(
        [
            np.nan if i < n - 1 else math.fsum(close[i - n + 1 : i + 1]) / n
            for i in range(close.size)
        ]
    )
    close_enough(got, exact)


def test_wild_bar_leaving_a_quiet_window_does_not_leave_noise() -> None:
    """The case running sums get wrong: a 1e6 print, then a window of 1e-6 moves."""
    quiet = 100.0 + 1e-6 * np.sin(np.arange(2000))
    close = quiet.copy()
    close[500] = 1e6
    for n in (5, 60, 140):
        close_enough(rolling.rolling_zscore(close, n), physics.zscore_series(close, n))
        close_enough(rolling.rolling_energy(close, n), physics.energy_series(close, n))
        close_enough(rolling.rolling_band(close, n)[1], physics.gaussian_bands(close, n)[1])
        close_enough(rolling.rolling_volatility(close, n), physics.volatility_series(close, n))


def test_flat_windows_are_exact_like_physics() -> None:
    close = np.concatenate((np.linspace(100, 120, 300), np.full(400, 120.05), [120.1]))
    z = rolling.rolling_zscore(close, 60)
    _, std, code = rolling.rolling_band(close, 140)
    assert (z[361:700] == 0.0).all()
    assert (std[439:700] == 0.0).all() and (code[439:700] == 0).all()
    assert (rolling.rolling_volatility(close, 60)[360:700] == 0.0).all()


@settings(max_examples=60, deadline=None)
@given(close=series(min_size=30, max_size=1500), n=st.integers(2, 25), data=st.data())
def test_a_fresh_state_at_any_bar_gives_the_same_value(close, n, data) -> None:
    """The step API: a state started anywhere agrees with the one carried from the start."""
    end = data.draw(st.integers(n, close.size - 1))
    carried = rolling.rolling_energy(close, n)[end]
    fresh, _ = rolling.energy_step(close, end, n, rolling.energy_state())
    assert fresh == pytest.approx(carried, **{"rel": 1e-9, "abs": 1e-9})
    var, anchor, shift, _ = rolling.moments_step(close, end, n, rolling.moments_state())
    assert math.sqrt(var) == pytest.approx(rolling.rolling_band(close, n)[1][end], rel=1e-9,
                                           abs=1e-9)  # fmt: skip
    assert anchor + shift == pytest.approx(float(np.mean(close[end - n + 1 : end + 1])), rel=1e-9)


def test_bad_input_is_refused_with_its_name() -> None:
    with pytest.raises(BacktestInputError, match="close must be a 1-D float64"):
        rolling.rolling_energy([1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(BacktestInputError, match=r"close\[2\]"):
        rolling.rolling_zscore(np.array([1.0, 2.0, np.nan, 4.0]))
    with pytest.raises(BacktestInputError, match="lookback must be >= 2"):
        rolling.rolling_band(np.ones(10), 1)
    with pytest.raises(BacktestInputError, match="same length"):
        rolling.rolling_atr(np.ones(3), np.ones(4), np.ones(3))
    with pytest.raises(ValueError):  # also a ValueError, like physics' own
        rolling.rolling_volatility(np.ones(5), 2)
