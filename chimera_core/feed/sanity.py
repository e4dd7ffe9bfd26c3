"""Per-token feed hygiene: sequence numbers and bad prints, decided before any kernel runs."""

from __future__ import annotations

import enum
import math


class Seq(enum.Enum):
    OK = "OK"
    FIRST = "FIRST"
    GAP = "GAP"  # accepted; some packets were missed
    DUPLICATE = "DUPLICATE"  # dropped
    OUT_OF_ORDER = "OUT_OF_ORDER"  # dropped
    JUMP = "JUMP"  # dropped: implausibly far ahead (a corrupt field, not a new baseline)
    REBASELINE = "REBASELINE"  # accepted as the new baseline after refusals in a row


class SequenceTracker:
    """Classifies each sequence number against the last accepted one for a token.

    One corrupt number must not become the baseline every later frame is judged by: a
    jump beyond ``max_jump`` is dropped, and ``rebaseline_after`` refusals in a row (the
    feed really did move, or the baseline itself was bad) make the next number the new
    baseline. A reconnect calls ``reset``: a new connection may number afresh.
    """

    def __init__(self, max_jump: int = 1 << 62, rebaseline_after: int = 1 << 62) -> None:
        self.last = -1
        # The baseline before the last big gap: if the next number lies between it and the
        # gap, the gap was one corrupt number (a flipped bit), not the feed moving on.
        self.before_gap = -1
        self.max_jump = max_jump
        self.rebaseline_after = rebaseline_after
        self.refused_in_row = 0
        self.gaps = 0
        self.missed = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.jumps = 0
        self.outliers = 0
        self.rebaselines = 0

    def reset(self) -> None:
        self.last = -1
        self.before_gap = -1
        self.refused_in_row = 0

    def check(self, seq: int) -> Seq:
        last = self.last
        if last < 0 or seq < 0:
            if seq < 0:  # never a baseline; the codec reads int64, so a sign bit can come
                self.jumps += 1
                return Seq.JUMP
            self.last = seq
            return Seq.FIRST
        if seq == last + 1:
            self.last = seq
            self.before_gap = -1
            self.refused_in_row = 0
            return Seq.OK
        if last < seq <= last + self.max_jump:
            self.gaps += 1
            self.missed += seq - last - 1
            self.before_gap = last if seq - last > BIG_GAP else -1
            self.last = seq
            self.refused_in_row = 0
            return Seq.GAP
        if seq == last:
            self.duplicates += 1
            return Seq.DUPLICATE
        if 0 <= self.before_gap < seq < last:
            # The frame before this one carried a corrupt, too-high number: it was a real
            # tick all the same, but its number is not the baseline.
            self.outliers += 1
            self.last = seq
            self.before_gap = -1
            self.refused_in_row = 0
            return Seq.GAP
        self.refused_in_row += 1
        if self.refused_in_row > self.rebaseline_after:
            self.rebaselines += 1
            self.refused_in_row = 0
            self.last = seq
            return Seq.REBASELINE
        if seq > last:
            self.jumps += 1
            return Seq.JUMP
        self.out_of_order += 1
        return Seq.OUT_OF_ORDER


# A gap wider than this is remembered, so that one corrupt sequence number can be undone
# by the next frame; reordered frames (a few numbers apart) stay out of order.
BIG_GAP = 1_000

# Exchange times outside this window are corrupt whatever the feed's clock says
# (2000-01-01 .. 2200-01-01 UTC, in ms): no calendar or bar arithmetic ever sees them.
MIN_EXCHANGE_MS = 946_684_800_000
MAX_EXCHANGE_MS = 7_258_118_400_000


class FeedClock:
    """The feed's exchange clock: the latest exchange time accepted from any token.

    A frame far ahead of it (``max_ahead_ms``) is a corrupt time, not a new bar, unless a
    second frame confirms the new time (a real jump: the next session's open, or a feed
    that was dark): a lone bad frame is dropped and the clock stays where the stream is.
    A clock that is itself wrong (its first frame was the bad one) heals when
    ``rebaseline_after`` frames in a row lie far behind it.
    """

    def __init__(self, max_ahead_ms: int, rebaseline_after: int) -> None:
        self.now_ms = -1
        self.max_ahead_ms = max_ahead_ms
        self.rebaseline_after = rebaseline_after
        self._pending_ms = -1
        self._behind_in_row = 0
        self.refused = 0
        self.rebaselines = 0

    def accept(self, ts_ms: int) -> bool:
        if not MIN_EXCHANGE_MS <= ts_ms <= MAX_EXCHANGE_MS:
            self.refused += 1
            return False
        now = self.now_ms
        if now < 0 or ts_ms <= now + self.max_ahead_ms:
            if now >= 0 and ts_ms < now - self.max_ahead_ms:
                self._behind_in_row += 1
                if self._behind_in_row > self.rebaseline_after:
                    self.rebaselines += 1
                    self._behind_in_row = 0
                    self.now_ms = ts_ms
            else:
                self._behind_in_row = 0
                if ts_ms > now:
                    self.now_ms = ts_ms
            return True
        pending = self._pending_ms
        if pending >= 0 and pending <= ts_ms <= pending + self.max_ahead_ms:
            self._pending_ms = -1
            self.now_ms = ts_ms
            self._behind_in_row = 0
            return True
        self._pending_ms = ts_ms
        self.refused += 1
        return False


class PriceFilter:
    """Drops non-finite, non-positive and absurd prints.

    A jump beyond ``max_jump_pct`` from the last accepted price is held back; if
    ``confirm`` consecutive prints agree with the new level it is accepted (a real gap,
    e.g. at the open), otherwise each is dropped as a bad print. The limit widens with the
    bar interval (x sqrt(interval / 1 min), at most x3: a daily bar moves further than a
    minute does), and a print inside the exchange's circuit band (SNAP_QUOTE carries it)
    is real whatever its jump: the exchange would not have traded outside it.
    """

    def __init__(
        self, max_jump_pct: float = 10.0, confirm: int = 3, bar_interval_s: float = 60.0
    ) -> None:
        scale = min(3.0, max(1.0, math.sqrt(bar_interval_s / 60.0)))
        self.max_jump = max_jump_pct / 100.0 * scale
        self.confirm = confirm
        self.last = math.nan
        self._pending = math.nan
        self._pending_count = 0
        self.bad = 0
        self.jumps = 0

    def accept(self, price: float, upper: float = 0.0, lower: float = 0.0) -> bool:
        """``upper``/``lower``: the circuit band when the feed carries it (0 = unknown)."""
        if not (math.isfinite(price) and price > 0.0):
            self.bad += 1
            return False
        last = self.last
        if (
            last != last  # the first price
            or abs(price / last - 1.0) <= self.max_jump
            # Inside the circuit band, it traded there; a band is trusted only if it holds
            # the last price and is as narrow as exchange bands are (at most +-20 %, so
            # upper/lower <= 1.5): a corrupt band must not let any print through.
            or (0.0 < lower <= price <= upper <= 1.5 * lower and lower <= last <= upper)
        ):
            self.last = price
            self._pending_count = 0
            return True
        pending = self._pending
        if self._pending_count and abs(price / pending - 1.0) <= self.max_jump:
            # Each confirming print must agree with the one before it (no slow drift).
            self._pending, self._pending_count = price, self._pending_count + 1
        else:
            self._pending, self._pending_count = price, 1
        if self._pending_count >= self.confirm:
            self.last = price
            self._pending_count = 0
            return True
        self.jumps += 1
        return False
