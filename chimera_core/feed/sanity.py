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


class SequenceTracker:
    """Classifies each sequence number against the last accepted one for a token."""

    def __init__(self) -> None:
        self.last = -1
        self.gaps = 0
        self.missed = 0
        self.duplicates = 0
        self.out_of_order = 0

    def check(self, seq: int) -> Seq:
        last = self.last
        if last < 0:
            self.last = seq
            return Seq.FIRST
        if seq == last + 1:
            self.last = seq
            return Seq.OK
        if seq > last:
            self.gaps += 1
            self.missed += seq - last - 1
            self.last = seq
            return Seq.GAP
        if seq == last:
            self.duplicates += 1
            return Seq.DUPLICATE
        self.out_of_order += 1
        return Seq.OUT_OF_ORDER


class PriceFilter:
    """Drops non-finite, non-positive and absurd prints.

    A jump beyond ``max_jump_pct`` from the last accepted price is held back; if
    ``confirm`` consecutive prints agree with the new level it is accepted (a real gap,
    e.g. at the open), otherwise each is dropped as a bad print.
    """

    def __init__(self, max_jump_pct: float = 10.0, confirm: int = 3) -> None:
        self.max_jump = max_jump_pct / 100.0
        self.confirm = confirm
        self.last = math.nan
        self._pending = math.nan
        self._pending_count = 0
        self.bad = 0
        self.jumps = 0

    def accept(self, price: float) -> bool:
        if not (math.isfinite(price) and price > 0.0):
            self.bad += 1
            return False
        last = self.last
        if last != last or abs(price / last - 1.0) <= self.max_jump:  # first price, or sane
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
