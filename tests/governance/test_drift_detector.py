"""Drift detector against independent references (scipy, np.histogram) and regime scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from chimera_core.contracts import Regime
from chimera_core.errors import ConfigError
from chimera_governance.drift_detector import DriftDetector, ks_statistic, normalised_entropy

returns_ = st.floats(min_value=-0.05, max_value=0.05, allow_nan=False, allow_infinity=False)
# Few distinct values too, so ties (the tricky case for KS) are common.
tied = st.sampled_from([-0.01, -0.005, 0.0, 0.005, 0.01])


# scipy's asymptotic p-value divides by zero for one-element samples; only D is compared.
scipy_p_value_noise = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")


def window(size: tuple[int, int], values: st.SearchStrategy[float]) -> st.SearchStrategy:
    return st.lists(values, min_size=size[0], max_size=size[1]).map(np.array)


def feed(detector: DriftDetector, log_returns: np.ndarray, start: float = 100.0) -> list:
    closes = start * np.exp(np.concatenate(([0.0], np.cumsum(log_returns))))
    return [detector.update(float(c)) for c in closes]


def reference_entropy(recent: np.ndarray, reference: np.ndarray, k: int) -> float:
    lo, hi = reference.min(), reference.max()
    counts, _ = np.histogram(np.clip(recent, lo, hi), bins=k, range=(lo, hi))
    p = counts / counts.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(k))


@scipy_p_value_noise
@settings(max_examples=150, deadline=None)
@given(
    st.one_of(window((1, 40), returns_), window((1, 40), tied)),
    st.one_of(window((1, 130), returns_), window((1, 130), tied)),
)
def test_ks_equals_scipy(recent: np.ndarray, reference: np.ndarray) -> None:
    expected = stats.ks_2samp(recent, reference, method="asymp").statistic
    assert ks_statistic(recent, reference) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(window((2, 40), returns_), window((2, 40), tied)),
    st.one_of(window((2, 130), returns_), window((2, 130), tied)),
    st.integers(2, 16),
)
def test_entropy_matches_np_histogram(recent: np.ndarray, reference: np.ndarray, k: int) -> None:
    if reference.max() == reference.min():  # np.histogram widens a zero range; we use one bin
        assert normalised_entropy(recent, reference, k) == 0.0
        return
    got = normalised_entropy(recent, reference, k)
    assert 0.0 <= got <= 1.0
    try:
        expected = reference_entropy(recent, reference, k)
    except ValueError:
        # A range of a few ulps: numpy cannot make k finite-sized bins; nothing to compare.
        return
    assert got == pytest.approx(expected, abs=1e-12)


@scipy_p_value_noise
@settings(max_examples=40, deadline=None)
@given(window((31, 160), returns_))
def test_update_reports_the_window_statistics(log_returns: np.ndarray) -> None:
    """The detector's numbers are the reference functions applied to its own windows."""
    out = feed(DriftDetector(), log_returns)[-1]
    # Recompute returns from the closes exactly as the detector saw them.
    closes = 100.0 * np.exp(np.concatenate(([0.0], np.cumsum(log_returns))))
    r = np.log(closes[1:] / closes[:-1])[-150:]
    recent, reference = r[-30:], r[:-30]
    if reference.size < 30:
        assert out.regime is Regime.WARMUP
        return
    assert out.returns == 30
    assert out.shift == out.drift_score
    assert out.shift == pytest.approx(
        stats.ks_2samp(recent, reference, method="asymp").statistic, abs=1e-12
    )
    if reference.max() > reference.min():
        assert out.entropy == pytest.approx(reference_entropy(recent, reference, 8), abs=1e-12)
    std = np.std(recent, ddof=1)
    assert out.volatility == pytest.approx(std, rel=1e-9, abs=1e-15)
    if std > 0:
        assert out.trend == pytest.approx(abs(recent.mean()) / std, rel=1e-6)


def test_warmup_until_recent_full_and_reference_has_min_returns() -> None:
    d = DriftDetector(reference=120, recent=30, min_reference=30)
    rng = np.random.default_rng(1)
    outs = feed(d, rng.normal(0, 0.001, 80))
    # 60 returns (61 closes) are the first judged bar: 30 recent + 30 reference.
    assert all(o.regime is Regime.WARMUP for o in outs[:60])
    assert outs[60].regime is not Regime.WARMUP
    assert [o.returns for o in outs[:3]] == [0, 1, 2]
    assert outs[45].returns == 30  # recent window full, reference still short


def test_buffer_keeps_only_reference_plus_recent() -> None:
    d = DriftDetector(reference=40, recent=10, min_reference=10)
    rng = np.random.default_rng(2)
    r = rng.normal(0, 0.001, 200)
    out = feed(d, r)[-1]
    assert d.returns_seen == 50
    closes = 100.0 * np.exp(np.concatenate(([0.0], np.cumsum(r))))
    rr = np.log(closes[1:] / closes[:-1])
    assert out.shift == pytest.approx(
        stats.ks_2samp(rr[-10:], rr[-50:-10], method="asymp").statistic
    )


def test_constant_returns_give_zero_entropy_and_trend() -> None:
    d = DriftDetector()
    outs = [d.update(100.0) for _ in range(200)]
    last = outs[-1]
    assert last.entropy == 0.0
    assert last.trend == 0.0
    assert last.volatility == 0.0
    assert last.drift_score == 0.0
    assert last.regime is Regime.STABLE


def test_calm_walk_then_strong_trend_flips_stable_to_trending() -> None:
    rng = np.random.default_rng(7)
    sigma = 0.001
    calm = rng.normal(0.0, sigma, 150)
    trend = rng.normal(0.8 * sigma, sigma, 30)  # mean/std ≈ 0.8 > 0.35
    outs = feed(DriftDetector(), np.concatenate((calm, trend)))
    assert outs[150].regime is Regime.STABLE  # last calm bar
    assert outs[150].trend < 0.35
    assert outs[-1].regime is Regime.TRENDING
    assert outs[-1].trend >= 0.35


def test_variance_explosion_flips_to_chaos() -> None:
    rng = np.random.default_rng(11)
    sigma = 0.001
    outs = feed(
        DriftDetector(),
        np.concatenate((rng.normal(0, sigma, 150), rng.normal(0, 5 * sigma, 30))),
    )
    assert outs[150].regime is Regime.STABLE
    assert outs[-1].regime is Regime.CHAOS
    assert outs[-1].volatility > 3 * sigma


def test_variance_explosion_is_chaos_across_seeds() -> None:
    """Not one lucky seed: a 5x volatility burst reads CHAOS on every one of 20 paths."""
    sigma = 0.001
    for seed in range(20):
        rng = np.random.default_rng(seed)
        r = np.concatenate((rng.normal(0, sigma, 150), rng.normal(0, 5 * sigma, 30)))
        assert feed(DriftDetector(), r)[-1].regime is Regime.CHAOS, seed


def test_shift_alone_gives_chaos() -> None:
    """Recent returns all above the reference: D = 1 → CHAOS whatever the trend."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(-0.001, 0.001, 120)
    recent = rng.uniform(0.002, 0.003, 30)
    out = feed(DriftDetector(chaos_vol_ratio=math.inf), np.concatenate((ref, recent)))[-1]
    assert out.drift_score == 1.0
    assert out.regime is Regime.CHAOS


def test_high_entropy_alone_gives_chaos() -> None:
    """Recent returns spread evenly over the reference range: entropy 1 → CHAOS."""
    ref = np.tile(np.linspace(-0.001, 0.001, 8), 15)  # 120, same distribution as recent
    recent = np.linspace(-0.001, 0.001, 8)
    recent = np.concatenate((recent, recent, recent, recent[:6]))  # 30 spread over 8 bins
    res = feed(DriftDetector(chaos_vol_ratio=math.inf), np.concatenate((ref, recent)))[-1]
    assert res.entropy >= 0.9
    assert res.drift_score < 0.5
    assert res.regime is Regime.CHAOS


@pytest.mark.parametrize("close", [0.0, -1.0, math.nan, math.inf])
def test_bad_close_raises(close: float) -> None:
    d = DriftDetector()
    d.update(100.0)
    with pytest.raises(ValueError, match="finite close > 0"):
        d.update(close)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recent": 1},
        {"bins": 1},
        {"min_reference": 0},
        {"min_reference": 200},
        {"reference": 0},
        {"chaos_drift": math.nan},
        {"chaos_vol_ratio": 1.0},
    ],
)
def test_bad_config_raises(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        DriftDetector(**kwargs)
