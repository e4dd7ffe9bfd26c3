"""The moving-average crossover plug-in against an independent numpy computation."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.contracts import Band, PhysicsState, Structure
from chimera_core.strategy import MovingAverageCross


def _physics(close: float, closed_bars: int) -> PhysicsState:
    return PhysicsState(close, closed_bars, math.nan, math.nan, Structure.WARMUP, Band.WARMUP,
                        math.nan, math.nan, math.nan, math.nan, None)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    closes=st.lists(st.floats(50, 150), min_size=2, max_size=120),
    fast=st.integers(1, 6),
    extra=st.integers(1, 10),
    long_only=st.booleans(),
    prints=st.integers(1, 3),
)
def test_signals_are_the_crosses_of_the_closed_bars(closes, fast, extra, long_only, prints):
    slow = fast + extra
    strategy = MovingAverageCross(fast, slow, long_only)
    c = np.asarray(closes)
    got = []
    for bar, close in enumerate(closes):  # `prints` prints per bar, the last is the close
        for k in range(prints):
            price = close if k == prints - 1 else close * 1.01
            signal, _ = strategy.evaluate(_physics(price, bar))
        got.append(signal.direction)  # during bar `bar`: decided on closes before it
    # Independently: sign(fast SMA - slow SMA) at each close, and the crosses.
    want = [0] * len(closes)
    for j in range(slow, len(closes)):  # a signal in bar j needs closes j-slow-1 .. j-1
        if j - 1 - slow < 0:
            continue
        now = np.sign(c[j - fast : j].mean() - c[j - slow : j].mean())
        before = np.sign(c[j - 1 - fast : j - 1].mean() - c[j - 1 - slow : j - 1].mean())
        if now and before and now != before and not (long_only and now < 0):
            want[j] = int(now)
    assert got == want


def test_one_entry_per_cross_and_the_exit_when_they_cross_back():
    s = MovingAverageCross(2, 3)
    for bar, close in enumerate([10, 10, 10, 9, 8, 12, 14]):
        signal, _ = s.evaluate(_physics(close, bar))
    # After closes 10,10,10,9,8 the fast average is below; 12 crossed it above.
    assert signal.direction == 1 and signal.reason == "crossed_above"
    assert s.exit_reason(_physics(14, 6), signal, 1, 0) == ""  # held long: consumed
    assert s.evaluate(_physics(14, 6))[0].direction == 0  # no second entry on this cross
    for bar, close in enumerate([5, 4], start=7):
        s.evaluate(_physics(close, bar))
    assert s.exit_reason(_physics(4, 8), s.evaluate(_physics(4, 8))[0], 1, 0) == "ma_cross"
