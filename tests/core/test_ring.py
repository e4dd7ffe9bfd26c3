"""BarRing: capacity rules and the contiguous double-written window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core import physics
from chimera_core.contracts import Bar
from chimera_core.ring import BarRing


def bar(i: int, close: float, volume: int = 0) -> Bar:
    return Bar("T", i * 60_000, (i + 1) * 60_000, close, close + 1.0, close - 1.0, close, volume, 1)


@pytest.mark.parametrize("capacity", [0, 2, -5, True, 16.0])
def test_rejects_unusable_capacity(capacity: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        BarRing(capacity)  # type: ignore[arg-type]


def test_capacity_must_exceed_largest_lookback_plus_one() -> None:
    with pytest.raises(ValueError, match="exceed lookback"):
        BarRing(141, max_lookback=140)
    with pytest.raises(ValueError, match="at least 142"):
        BarRing(100, max_lookback=140)
    assert BarRing(142, max_lookback=140).capacity == 142


def test_storage_is_twice_capacity() -> None:
    ring = BarRing(16)
    for series in (ring.close, ring.high, ring.low, ring.volume):
        assert series.shape == (32,) and series.dtype == np.float64


@settings(max_examples=100, deadline=None)
@given(
    closes=st.lists(st.floats(1.0, 1e5), min_size=1, max_size=300),
    capacity=st.integers(3, 40),
)
def test_window_is_the_last_n_pushed(closes: list[float], capacity: int) -> None:
    ring = BarRing(capacity)
    for i, close in enumerate(closes):
        ring.push(bar(i, close, volume=i))
        assert ring.count == i + 1
    readable = min(len(closes), capacity - 1)
    assert ring.readable == readable
    for n in range(1, readable + 1):
        expected = np.array(closes[-n:])
        np.testing.assert_array_equal(ring.closes_view(n), expected)
        np.testing.assert_array_equal(ring.highs_view(n), expected + 1.0)
        np.testing.assert_array_equal(ring.lows_view(n), expected - 1.0)
        np.testing.assert_array_equal(
            ring.volumes_view(n), np.arange(len(closes) - n, len(closes), dtype=np.float64)
        )
        # a view is a slice of the storage, not a copy
        assert np.shares_memory(ring.closes_view(n), ring.close)


@settings(max_examples=50, deadline=None)
@given(
    closes=st.lists(st.floats(1.0, 1e5), min_size=1, max_size=100),
    capacity=st.integers(3, 20),
    live=st.floats(1.0, 1e5),
)
def test_live_write_never_touches_readable_closed_bars(
    closes: list[float], capacity: int, live: float
) -> None:
    ring = BarRing(capacity)
    for i, close in enumerate(closes):
        ring.push(bar(i, close))
    physics.evaluate_live(ring.close, ring.count, live, 2, 2, 2, 2.0, np.empty(physics.LIVE_SIZE))
    readable = ring.readable
    np.testing.assert_array_equal(ring.closes_view(readable), np.array(closes[-readable:]))
    # and the next push replaces the live price
    ring.push(bar(len(closes), 7.0))
    assert ring.closes_view(1)[0] == 7.0


def test_window_beyond_what_is_readable_is_refused() -> None:
    ring = BarRing(4)
    with pytest.raises(ValueError, match="0 pushed"):
        ring.closes_view(1)
    for i in range(10):
        ring.push(bar(i, float(i)))
    assert ring.count == 10
    np.testing.assert_array_equal(ring.closes_view(3), [7.0, 8.0, 9.0])
    with pytest.raises(ValueError, match="at most 3 readable"):
        ring.closes_view(4)
    with pytest.raises(ValueError):
        ring.closes_view(0)


def test_last_index_points_at_the_upper_copy() -> None:
    ring = BarRing(4)
    assert ring.last_index == -1
    for i in range(6):
        ring.push(bar(i, float(i)))
        assert ring.close[ring.last_index] == float(i)
        assert 4 <= ring.last_index < 8
