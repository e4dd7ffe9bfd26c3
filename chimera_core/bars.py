"""Time bars closed by exchange time, and per-tick volume from cumulative day volume.

A bar covers [start_ms, start_ms + interval_ms) of exchange time, with
start_ms = ts - ts % interval_ms. A bar closes when the first tick of a later bucket
arrives; the local clock is never consulted, so live and replay build the same bars.
Intervals without trades produce no bar: windows count bars, not minutes.
"""

from __future__ import annotations

from chimera_core.contracts import Bar


class BarBuilder:
    """Builds one symbol's time bars from its trades."""

    __slots__ = (
        "_high",
        "_last_ts_ms",
        "_low",
        "_open",
        "_ticks",
        "_volume",
        "close",
        "interval_ms",
        "late_ticks",
        "start_ms",
        "token",
    )

    def __init__(self, token: str, interval_ms: int = 60_000) -> None:
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms <= 0:
            raise ValueError(f"interval_ms must be a positive int, got {interval_ms!r}")
        self.token = token
        self.interval_ms = interval_ms
        # Start of the forming bar; -1 until the first trade (exchange times are >= 0).
        self.start_ms = -1
        self.late_ticks = 0
        self._open = self._high = self._low = 0.0
        # Last price of the forming bar by exchange time; NaN before the first trade.
        self.close = float("nan")
        self._volume = 0
        self._ticks = 0
        self._last_ts_ms = -1

    @property
    def forming(self) -> bool:
        return self.start_ms >= 0

    @property
    def ticks(self) -> int:
        return self._ticks if self.start_ms >= 0 else 0

    def discard_forming(self) -> None:
        """Drop the forming bar (its first tick came from a bad clock); the next trade
        starts a new one. Closed bars are untouched."""
        self.start_ms = -1
        self._open = self._high = self._low = 0.0
        self.close = float("nan")
        self._volume = 0
        self._ticks = 0
        self._last_ts_ms = -1

    def accepts(self, exchange_ts_ms: int) -> bool:
        """False for a tick that belongs to a bar already closed (it would be refused)."""
        return exchange_ts_ms >= self.start_ms

    def on_trade(self, exchange_ts_ms: int, price: float, volume_delta: int) -> Bar | None:
        """Add a trade; return the bar it closes, if it is the first of a later bucket.

        A tick from an earlier bucket than the forming bar is refused and counted in
        ``late_ticks``: a closed bar is never reopened.
        """
        start = exchange_ts_ms - exchange_ts_ms % self.interval_ms
        if start == self.start_ms:
            if price > self._high:
                self._high = price
            if price < self._low:
                self._low = price
            # An older tick inside the bar still counts for range and volume, but the
            # close stays the price of the latest trade by exchange time.
            if exchange_ts_ms >= self._last_ts_ms:
                self.close = price
                self._last_ts_ms = exchange_ts_ms
            self._volume += volume_delta
            self._ticks += 1
            return None
        if start < self.start_ms:
            self.late_ticks += 1
            return None
        closed = None
        if self.start_ms >= 0:
            closed = Bar(
                token=self.token,
                start_ms=self.start_ms,
                end_ms=self.start_ms + self.interval_ms,
                open=self._open,
                high=self._high,
                low=self._low,
                close=self.close,
                volume=self._volume,
                ticks=self._ticks,
            )
        self.start_ms = start
        self._open = self._high = self._low = self.close = price
        self._volume = volume_delta
        self._ticks = 1
        self._last_ts_ms = exchange_ts_ms
        return closed


class VolumeDelta:
    """Turns the feed's cumulative day volume (``Tick.volume``) into volume per tick.

    - first known cumulative volume: delta 0 (it is the whole day so far, not this tick);
    - cum >= last: delta = cum - last;
    - cum < last: the counter was reset (new day / reconnect to a fresh session),
      delta = cum;
    - no cumulative volume on the tick (0, e.g. LTP mode): delta = last traded qty if no
      cumulative volume has ever been seen, else 0, because the next cumulative reading
      will include this trade and counting ltq too would count it twice.
    """

    __slots__ = ("last_cum",)

    def __init__(self) -> None:
        self.last_cum = -1  # -1: no cumulative volume seen yet

    def update(self, cum_volume: int, ltq: int) -> int:
        last = self.last_cum
        if cum_volume <= 0:
            return ltq if last < 0 and ltq > 0 else 0
        self.last_cum = cum_volume
        if last < 0:
            return 0
        if cum_volume < last:
            return cum_volume
        return cum_volume - last
