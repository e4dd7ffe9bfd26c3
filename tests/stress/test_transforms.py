"""Scenario data transforms, property by property, against what each kind promises
(docs/STRESS.md), on random bars over several sessions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.stress.montecarlo import StressError
from tools.stress.scenarios import (
    CircuitFreeze,
    Depth,
    Gap,
    StressBars,
    Volatility,
    anchor_bar,
    session_numbers,
    transform,
)

HOUR = 3_600_000


def _bars(seed: int, days: int = 4, per_day: int = 6) -> StressBars:
    rng = np.random.default_rng(seed)
    ts = np.array([d * 24 * HOUR + 4 * HOUR + k * HOUR for d in range(days)
                   for k in range(per_day)], dtype=np.int64) + 1_700_000_000_000  # fmt: skip
    n = ts.size
    c = 100 * np.cumprod(1 + rng.normal(0, 0.01, n))
    o = np.r_[100.0, c[:-1]] * (1 + rng.normal(0, 0.002, n))
    h = np.maximum(o, c) * (1 + rng.uniform(0, 0.005, n))
    lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.005, n))
    return StressBars(ts, o, h, lo, c, rng.integers(1, 10_000, n).astype(float), HOUR, "UTC")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 23), st.floats(-0.5, 0.5))
def test_gap_scales_everything_from_the_anchor_on(seed, anchor, pct):
    b = _bars(seed)
    s = session_numbers(b.ts_ms, "UTC")
    out = transform(Gap(name="g", pct=pct), b, anchor, s)
    for k in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(out, k)[:anchor], getattr(b, k)[:anchor])
        np.testing.assert_allclose(getattr(out, k)[anchor:], getattr(b, k)[anchor:] * (1 + pct))
    np.testing.assert_array_equal(out.volume, b.volume)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 23), st.floats(0.2, 3.0))
def test_volatility_spreads_one_session_and_carries_the_rest_on(seed, anchor, factor):
    b = _bars(seed)
    s = session_numbers(b.ts_ms, "UTC")
    out = transform(Volatility(name="v", factor=factor), b, anchor, s)
    day = s == s[anchor]
    start = int(np.flatnonzero(day)[0])
    base = b.open[start]
    for k in ("open", "high", "low", "close"):
        a, x = getattr(out, k), getattr(b, k)
        np.testing.assert_allclose(a[day] - base, factor * (x[day] - base), atol=1e-9)
        np.testing.assert_array_equal(a[s < s[anchor]], x[s < s[anchor]])
    later = np.flatnonzero(s > s[anchor])
    if later.size:  # every later move is the data's own, from the new close
        np.testing.assert_allclose(out.close[later] / out.close[later - 1],
                                   b.close[later] / b.close[later - 1], rtol=1e-12)  # fmt: skip


def test_volatility_that_drives_the_price_below_zero_is_refused():
    b = _bars(1)
    s = session_numbers(b.ts_ms, "UTC")
    b.low[3] = b.open[0] * 0.5
    with pytest.raises(StressError, match="smaller factor"):
        transform(Volatility(name="v", factor=20.0), b, 3, s)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 23), st.floats(0.01, 0.3), st.booleans())
def test_circuit_freeze_pins_the_rest_of_the_session_at_the_limit(seed, anchor, pct, up):
    b = _bars(seed)
    s = session_numbers(b.ts_ms, "UTC")
    sc = CircuitFreeze(name="c", pct=pct, direction="up" if up else "down")
    out = transform(sc, b, anchor, s)
    limit = b.close[anchor - 1] * (1 + pct if up else 1 - pct)
    assert out.close[anchor] == pytest.approx(limit)
    frozen = (s == s[anchor]) & (np.arange(s.size) > anchor)
    for k in ("open", "high", "low", "close"):
        np.testing.assert_allclose(getattr(out, k)[frozen], limit)
    assert np.all(out.volume[frozen] == 0)
    assert np.all(out.low <= np.minimum(out.open, out.close))
    assert np.all(out.high >= np.maximum(out.open, out.close))


def test_depth_divides_volume_only():
    b = _bars(2)
    s = session_numbers(b.ts_ms, "UTC")
    out = transform(Depth(name="d", divisor=10.0), b, 0, s)
    np.testing.assert_array_equal(out.volume, np.floor(b.volume / 10.0))
    np.testing.assert_array_equal(out.close, b.close)


def test_anchor_is_the_first_bar_with_a_position_from_the_session_on():
    b = _bars(3)
    s = session_numbers(b.ts_ms, "UTC")
    held = np.zeros(s.size, dtype=bool)
    held[[2, 9, 15]] = True
    assert anchor_bar(Gap(name="g", pct=0.1, session=2), s, held) == 9
    assert anchor_bar(Gap(name="g", pct=0.1, session=2, at="open"), s, held) == 6
    with pytest.raises(StressError, match="no bar with a position open"):
        anchor_bar(Gap(name="g", pct=0.1, session=4), s, held)
