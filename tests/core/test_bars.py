"""Bars by exchange time, late ticks, and cumulative-volume deltas."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.bars import BarBuilder, VolumeDelta
from chimera_core.contracts import Bar

MINUTE = 60_000

trades = st.lists(
    st.tuples(
        st.integers(0, 30 * MINUTE),  # exchange time offset, sorted below
        st.floats(1.0, 1e5, allow_nan=False),
        st.integers(0, 5_000),
    ),
    min_size=1,
    max_size=200,
)


def reference_bars(
    ticks: list[tuple[int, float, int]], interval_ms: int
) -> list[tuple[int, float, float, float, float, int, int]]:
    """(start, open, high, low, close, volume, ticks) per bucket, by grouping."""
    rows = []
    for start, group in itertools.groupby(ticks, key=lambda t: t[0] - t[0] % interval_ms):
        members = list(group)
        prices = [p for _, p, _ in members]
        rows.append(
            (
                start,
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                sum(v for _, _, v in members),
                len(members),
            )
        )
    return rows


@settings(max_examples=150, deadline=None)
@given(raw=trades, interval_ms=st.sampled_from([1_000, 15_000, MINUTE, 5 * MINUTE]))
def test_bars_partition_increasing_ticks(
    raw: list[tuple[int, float, int]], interval_ms: int
) -> None:
    ticks = sorted(raw, key=lambda t: t[0])  # increasing (ties allowed) exchange times
    builder = BarBuilder("2885", interval_ms)
    closed: list[Bar] = []
    for ts, price, volume in ticks:
        bar = builder.on_trade(1_700_000_000_000 + ts, price, volume)
        if bar is not None:
            closed.append(bar)
    # A trade in a later bucket closes the last forming bar.
    flush = builder.on_trade(1_700_000_000_000 + 10**9, 1.0, 0)
    assert flush is not None
    closed.append(flush)

    expected = reference_bars([(1_700_000_000_000 + t, p, v) for t, p, v in ticks], interval_ms)
    got = [(b.start_ms, b.open, b.high, b.low, b.close, b.volume, b.ticks) for b in closed]
    assert got == expected
    assert sum(b.ticks for b in closed) == len(ticks)
    for b in closed:
        assert b.token == "2885"
        assert b.start_ms % interval_ms == 0
        assert b.end_ms == b.start_ms + interval_ms
    assert builder.late_ticks == 0


def test_bar_closes_on_the_first_tick_of_the_next_bucket() -> None:
    builder = BarBuilder("2885")
    assert builder.on_trade(MINUTE + 5, 100.0, 10) is None
    assert builder.on_trade(2 * MINUTE - 1, 101.0, 5) is None  # still the same minute
    assert builder.start_ms == MINUTE
    bar = builder.on_trade(2 * MINUTE, 102.0, 1)
    assert bar == Bar("2885", MINUTE, 2 * MINUTE, 100.0, 101.0, 100.0, 101.0, 15, 2)
    assert builder.start_ms == 2 * MINUTE
    assert builder.close == 102.0


def test_bars_never_read_the_local_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock() -> float:
        raise AssertionError("bars must use exchange time only")

    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter"):
        monkeypatch.setattr(time, name, no_clock)
    builder = BarBuilder("2885")
    builder.on_trade(0, 1.0, 1)
    assert builder.on_trade(MINUTE, 2.0, 1) is not None


def test_late_tick_is_refused_and_counted() -> None:
    builder = BarBuilder("2885")
    builder.on_trade(MINUTE, 100.0, 10)
    closed = builder.on_trade(2 * MINUTE + 1, 105.0, 10)
    assert closed is not None and closed.close == 100.0
    # A tick from the closed minute: refused, the closed bar stays closed,
    # and the forming bar is untouched.
    assert builder.on_trade(MINUTE + 30_000, 1.0, 999) is None
    assert builder.late_ticks == 1
    assert not builder.accepts(MINUTE + 30_000)
    assert builder.accepts(2 * MINUTE)
    nxt = builder.on_trade(3 * MINUTE, 106.0, 1)
    assert nxt == Bar("2885", 2 * MINUTE, 3 * MINUTE, 105.0, 105.0, 105.0, 105.0, 10, 1)


def test_older_tick_inside_the_forming_bar_keeps_the_latest_close() -> None:
    builder = BarBuilder("2885")
    builder.on_trade(10_000, 100.0, 1)
    builder.on_trade(30_000, 101.0, 1)
    builder.on_trade(20_000, 95.0, 1)  # arrives late but inside the same minute
    assert builder.late_ticks == 0
    bar = builder.on_trade(MINUTE, 102.0, 1)
    assert bar is not None
    assert (bar.low, bar.close, bar.volume, bar.ticks) == (95.0, 101.0, 3, 3)


def test_no_bar_before_the_first_trade() -> None:
    builder = BarBuilder("2885")
    assert not builder.forming
    assert builder.close != builder.close  # NaN
    assert builder.on_trade(5 * MINUTE, 10.0, 0) is None
    assert builder.forming


@pytest.mark.parametrize("interval", [0, -1, True, 1.5])
def test_rejects_bad_interval(interval: object) -> None:
    with pytest.raises(ValueError, match="interval_ms"):
        BarBuilder("2885", interval)  # type: ignore[arg-type]


# --- VolumeDelta ------------------------------------------------------------------------


def test_volume_delta_from_cumulative_volume() -> None:
    volume = VolumeDelta()
    assert volume.update(10_000, 50) == 0  # first reading is the day so far, not this tick
    assert volume.update(10_050, 50) == 50
    assert volume.update(10_050, 7) == 0
    assert volume.update(10_300, 100) == 250


def test_volume_delta_day_reset() -> None:
    volume = VolumeDelta()
    volume.update(5_000_000, 10)
    volume.update(5_000_100, 10)
    # next session: the counter restarts below the last reading
    assert volume.update(300, 300) == 300
    assert volume.update(450, 150) == 150


def test_volume_delta_falls_back_to_ltq_without_cumulative_volume() -> None:
    volume = VolumeDelta()
    assert volume.update(0, 25) == 25
    assert volume.update(0, 40) == 40
    # once cumulative volume is known, a tick without it adds nothing: the next
    # cumulative reading already includes that trade
    assert volume.update(1_000, 5) == 0
    assert volume.update(0, 5) == 0
    assert volume.update(1_010, 5) == 10


@settings(max_examples=100, deadline=None)
@given(steps=st.lists(st.integers(0, 10_000), min_size=1, max_size=100))
def test_volume_deltas_sum_to_cumulative_growth(steps: list[int]) -> None:
    volume = VolumeDelta()
    cum = 1_000
    assert volume.update(cum, 1) == 0
    total = 0
    for step in steps:
        cum += step
        total += volume.update(cum, 1)
    assert total == cum - 1_000
