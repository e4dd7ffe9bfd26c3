"""The account as risk reads it: cash from fills, positions marked to market.

One view for the capital brain, meta-risk and the exposure caps: equity is cash plus every
position at its mark (the symbol's last accepted price), never a configured number. Cash
starts from the reconciled journal (paper: the paper account's starting cash and every
movement since) and moves with each fill and its charges, so live and replay, applying
the same reports at the same places, see the same account.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from chimera_core.contracts import AccountSnapshot, Fill, Side
from chimera_core.position_book import PositionBook


class Account:
    __slots__ = ("cash", "charges", "start_cash")

    def __init__(self, cash: float) -> None:
        self.cash = cash
        self.start_cash = cash
        self.charges = 0.0

    def seed(self, cash: float) -> None:
        """Start from the reconciled cash (the session's P&L counts from here)."""
        self.cash = cash
        self.start_cash = cash
        self.charges = 0.0

    def on_fill(self, fill: Fill) -> None:
        value = fill.qty * fill.price
        self.cash += -value if fill.side is Side.BUY else value
        self.cash -= fill.charges
        self.charges += fill.charges

    def snapshot(
        self,
        book: PositionBook,
        marks: Mapping[str, float],
        working: Mapping[str, int],
    ) -> AccountSnapshot:
        """The account now: ``marks`` are last prices (a position without one is valued at
        its average price), ``working`` the signed entry quantity still at the broker."""
        positions: dict[str, int] = {}
        entries: dict[str, int] = {}
        used: dict[str, float] = {}
        held_value = gross = net = unrealized = realized = 0.0
        for token, pos in book.by_token().items():
            realized += pos.realized
            if pos.qty == 0:
                continue
            mark = marks.get(token, math.nan)
            if not (math.isfinite(mark) and mark > 0):
                mark = pos.avg_price
            used[token] = mark
            positions[token] = pos.qty
            entries[token] = pos.entries
            value = pos.qty * mark
            held_value += value
            gross += abs(value)
            net += value
            unrealized += (mark - pos.avg_price) * pos.qty
        for token, qty in working.items():
            if qty:
                mark = marks.get(token, math.nan)
                if not (math.isfinite(mark) and mark > 0):
                    mark = used.get(token, 0.0)
                used.setdefault(token, mark)
                gross += abs(qty) * mark
                net += qty * mark
        return AccountSnapshot(
            cash=self.cash,
            equity=self.cash + held_value,
            realized_pnl=realized,
            unrealized_pnl=unrealized,
            charges=self.charges,
            gross_exposure=gross,
            net_exposure=net,
            open_positions=len(positions),
            positions=positions,
            working={t: q for t, q in working.items() if q},
            entries=entries,
            marks=used,
        )
