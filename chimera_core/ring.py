"""Per-symbol fixed-size ring buffer of closed bars, laid out for the Numba kernels.

Each series (close, high, low, volume) is a float64 array of length 2 * capacity, and
every value is written twice, at slot p and p + capacity. The newest value is then
always at index p + capacity and the last n values are the contiguous slice ending
there, so kernels read a plain window without wrap-around arithmetic or copies.

The slot after the newest closed bar holds the live (forming) price while a bar forms
(see ``physics.evaluate_live``); that overwrites the oldest closed bar's copy, which is
why at most capacity - 1 closed bars are readable.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from chimera_core.contracts import Bar

FloatArray = npt.NDArray[np.float64]


class BarRing:
    """The last ``capacity - 1`` closed bars of one symbol."""

    __slots__ = ("_capacity", "_count", "close", "high", "low", "volume")

    def __init__(self, capacity: int = 256, *, max_lookback: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 3:
            raise ValueError(f"capacity must be an int >= 3, got {capacity!r}")
        # Windows end at the live slot: a lookback of L needs L + 1 slots beside the one
        # the live price overwrites.
        if capacity <= max_lookback + 1:
            raise ValueError(
                f"capacity {capacity} is too small for a lookback of {max_lookback}: "
                f"it must exceed lookback + 1 (use at least {max_lookback + 2})"
            )
        self._capacity = capacity
        self._count = 0
        self.close: FloatArray = np.zeros(2 * capacity)
        self.high: FloatArray = np.zeros(2 * capacity)
        self.low: FloatArray = np.zeros(2 * capacity)
        self.volume: FloatArray = np.zeros(2 * capacity)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def count(self) -> int:
        """Closed bars pushed since creation (not capped at capacity)."""
        return self._count

    @property
    def readable(self) -> int:
        """How many of the newest closed bars a view can return."""
        return min(self._count, self._capacity - 1)

    def push(self, bar: Bar) -> None:
        """Append a closed bar (overwrites the live slot, then advances count)."""
        lower = self._count % self._capacity
        upper = lower + self._capacity
        self.close[lower] = self.close[upper] = bar.close
        self.high[lower] = self.high[upper] = bar.high
        self.low[lower] = self.low[upper] = bar.low
        self.volume[lower] = self.volume[upper] = bar.volume
        self._count += 1

    @property
    def last_index(self) -> int:
        """Index (in the upper copy) of the newest closed bar; -1 when empty."""
        if self._count == 0:
            return -1
        return (self._count - 1) % self._capacity + self._capacity

    def _window(self, series: FloatArray, n: int) -> FloatArray:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.readable:
            raise ValueError(
                f"window of {n!r} closed bars is not available: {self._count} pushed, "
                f"at most {self._capacity - 1} readable with capacity {self._capacity}"
            )
        end = self.last_index
        return series[end - n + 1 : end + 1]

    # Views share memory with the ring: valid until the next push or live write.
    def closes_view(self, n: int) -> FloatArray:
        """The last n closes, oldest first."""
        return self._window(self.close, n)

    def highs_view(self, n: int) -> FloatArray:
        return self._window(self.high, n)

    def lows_view(self, n: int) -> FloatArray:
        return self._window(self.low, n)

    def volumes_view(self, n: int) -> FloatArray:
        return self._window(self.volume, n)
