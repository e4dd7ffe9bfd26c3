"""Walk-forward folds against a plain re-implementation, and their errors."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.optimize.folds import FoldError, FoldSpec, make_folds


def _reference(n_units: int, train: int, test: int, anchored: bool) -> list[tuple[int, int, int]]:
    """(train start, test start, test end) in units, written as a plain loop."""
    out = []
    k = 0
    while True:
        test_start = train + k * test
        test_end = test_start + test
        if test_end > n_units:
            return out
        out.append((0 if anchored else k * test, test_start, test_end))
        k += 1


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(2, 400), train=st.integers(1, 120), test=st.integers(1, 60),
    anchored=st.booleans(), cap=st.integers(0, 5),
)  # fmt: skip
def test_bar_folds_match_a_plain_loop(n, train, test, anchored, cap):
    ts = np.arange(n, dtype=np.int64) * 60_000
    spec = FoldSpec(scheme="anchored" if anchored else "rolling", unit="bars", train=train,
                    test=test, folds=cap)  # fmt: skip
    want = _reference(n, train, test, anchored)
    if not want:
        with pytest.raises(FoldError, match="one fold needs train"):
            make_folds(ts, spec)
        return
    if cap:
        want = want[-cap:]
    got = make_folds(ts, spec)
    assert [(f.train_start, f.test_start, f.test_end) for f in got] == want
    assert [f.index for f in got] == list(range(len(want)))
    for a, b in itertools.pairwise(got):
        assert b.test_start == a.test_end  # test windows tile: the OOS curve stitches


def test_day_folds_start_at_each_days_first_bar_in_the_exchange_zone():
    zone = ZoneInfo("Asia/Kolkata")
    ts = []
    for day in range(1, 15):  # two weeks of 09:15..15:25 IST, weekdays only
        d = dt.date(2024, 1, day)
        if d.weekday() >= 5:
            continue
        start = dt.datetime(2024, 1, day, 9, 15, tzinfo=zone)
        ts += [int((start + dt.timedelta(minutes=5 * i)).timestamp() * 1000) for i in range(75)]
    arr = np.asarray(ts, dtype=np.int64)
    folds = make_folds(arr, FoldSpec(unit="days", train=3, test=2, tz="Asia/Kolkata"))
    dates = [dt.datetime.fromtimestamp(t / 1000, zone).date() for t in arr]
    days = sorted(set(dates))
    assert len(days) == 10
    assert len(folds) == 3  # days 0-2 | 3-4, 2-4 | 5-6, 4-6 | 7-8 (day 9 left over)
    for f in folds:
        for edge in (f.train_start, f.test_start, f.test_end):
            if edge < arr.size:
                assert edge == 0 or dates[edge] != dates[edge - 1]  # a day's first bar
        assert len(set(dates[f.test_start : f.test_end])) == 2
        assert len(set(dates[f.train_start : f.test_start])) == 3


def test_a_bad_fold_spec_says_what_to_change():
    ts = np.arange(100, dtype=np.int64)
    with pytest.raises(FoldError, match="must be >= 1"):
        make_folds(ts, FoldSpec(train=0, test=5))
    with pytest.raises(FoldError, match="100 bars of data"):
        make_folds(ts, FoldSpec(train=90, test=20))
    with pytest.raises(FoldError, match="not a time zone"):
        make_folds(ts, FoldSpec(unit="days", train=1, test=1, tz="Mars/Olympus"))
