"""Feed hygiene: sequence classification and bad-print filtering."""

from __future__ import annotations

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from chimera_core.feed.sanity import PriceFilter, Seq, SequenceTracker


@given(st.lists(st.integers(0, 500), min_size=1, max_size=200))
def test_sequence_tracker_accepts_exactly_the_strictly_increasing_subsequence(seqs):
    tracker = SequenceTracker()
    accepted = []
    for s in seqs:
        verdict = tracker.check(s)
        if verdict in (Seq.FIRST, Seq.OK, Seq.GAP):
            accepted.append(s)
    # reference: keep a number iff it is above everything accepted before it
    expected, best = [], -1
    for s in seqs:
        if s > best:
            expected.append(s)
            best = s
    assert accepted == expected
    assert tracker.duplicates + tracker.out_of_order == len(seqs) - len(expected)
    assert tracker.missed == sum(b - a - 1 for a, b in itertools.pairwise(expected))


def test_sequence_tracker_names_each_case():
    t = SequenceTracker()
    assert [t.check(s) for s in (10, 11, 11, 9, 15, 16)] == [
        Seq.FIRST, Seq.OK, Seq.DUPLICATE, Seq.OUT_OF_ORDER, Seq.GAP, Seq.OK,
    ]  # fmt: skip
    assert (t.gaps, t.missed, t.duplicates, t.out_of_order) == (1, 3, 1, 1)


def test_price_filter_drops_nan_zero_and_negative():
    f = PriceFilter()
    assert [f.accept(p) for p in (math.nan, math.inf, 0.0, -1.0, 100.0)] == [
        False, False, False, False, True,
    ]  # fmt: skip
    assert f.bad == 4


def test_a_lone_absurd_print_is_dropped_but_a_real_gap_is_accepted_after_confirmation():
    f = PriceFilter(max_jump_pct=10.0, confirm=3)
    assert f.accept(100.0)
    assert not f.accept(1000.0)  # fat finger
    assert f.accept(101.0)  # back to normal, the spike never counted
    assert [f.accept(p) for p in (130.0, 130.5, 131.0)] == [False, False, True]  # gap confirmed
    assert f.accept(131.5)
    assert f.last == 131.5


@given(st.lists(st.floats(1.0, 1e5), min_size=1, max_size=100))
def test_a_jump_is_only_accepted_after_two_rejected_prints_that_agree_with_it(prices):
    f = PriceFilter(max_jump_pct=10.0, confirm=3)
    history: list[tuple[float, bool]] = []
    for p in prices:
        before = f.last
        ok = f.accept(p)
        if ok and not math.isnan(before) and abs(p / before - 1) > 0.1:
            prev = history[-2:]
            assert len(prev) == 2
            assert all(not accepted for _, accepted in prev)
            assert abs(prev[1][0] / prev[0][0] - 1) <= 0.1
            assert abs(p / prev[1][0] - 1) <= 0.1
        history.append((p, ok))


def test_a_daily_bar_moves_further_than_a_minute_bar():
    """15 % between two prints is a fat finger on minute bars, a real day on daily bars."""
    minute = PriceFilter(max_jump_pct=10.0, bar_interval_s=60)
    daily = PriceFilter(max_jump_pct=10.0, bar_interval_s=86_400)
    for f in (minute, daily):
        assert f.accept(100.0)
    assert not minute.accept(115.0)
    assert daily.accept(115.0)
    assert not daily.accept(115.0 * 1.35)  # still at most 3 x the limit: 35 % is held back


@given(
    move=st.floats(-0.19, 0.19).filter(lambda m: abs(m) > 0.11),
    band=st.floats(0.19, 0.2),
)
def test_a_print_inside_the_circuit_band_is_real(move, band):
    """With SNAP_QUOTE's circuit limits the exchange says what could trade: a print inside
    the band is accepted at once; the same print with no band known needs confirming."""
    with_band, without = PriceFilter(max_jump_pct=10.0), PriceFilter(max_jump_pct=10.0)
    assert with_band.accept(100.0) and without.accept(100.0)
    price = 100.0 * (1.0 + move)
    assert with_band.accept(price, 100.0 * (1 + band), 100.0 * (1 - band))
    assert not without.accept(price)
    assert not with_band.accept(100.0 * (1 + band) * 1.2, 100.0 * (1 + band), 100.0 * (1 - band))


def test_a_corrupt_circuit_band_lets_no_absurd_print_through():
    """The fuzz found it: a flipped bit in the circuit fields made a band wide enough for
    any print, and a price of 10^12 reached the kernels. A band is trusted only if it holds
    the last price and is as narrow as an exchange's (upper <= 1.5 x lower)."""
    f = PriceFilter(max_jump_pct=10.0)
    assert f.accept(100.0)
    assert not f.accept(1e12, 1e13, 1.0)  # absurdly wide
    assert not f.accept(150.0, 160.0, 140.0)  # does not hold the last price
    assert f.accept(115.0, 120.0, 80.0 * 1.01)  # a real +-20 % band
