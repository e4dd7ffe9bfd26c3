"""The engine's view of positions, built only from execution reports (fills).

Live and replay apply the same reports in the same places, so this book, the
``ExecutionOutput`` on every decision and the closed trades fed to governance come out
identical. The journal (chimera_execution) is the durable copy; at start-up the engine is
seeded from the reconciled journal (a recorded event, so replay seeds the same way).
"""

from __future__ import annotations

import math

from chimera_core.contracts import Fill, Position, Side


class ClosedTrade:
    """A round trip that went flat (or flipped): net P&L after every fill's charges."""

    __slots__ = ("entry_features", "exchange_ts_ms", "pnl", "token")

    def __init__(
        self, token: str, pnl: float, exchange_ts_ms: int, entry_features: dict[str, float]
    ) -> None:
        self.token = token
        self.pnl = pnl
        self.exchange_ts_ms = exchange_ts_ms
        self.entry_features = entry_features


class SymbolPosition:
    __slots__ = (
        "avg_price", "charges", "entries", "features", "last_entry", "qty", "realized",
        "trip_pnl",
    )  # fmt: skip

    def __init__(self) -> None:
        self.qty = 0  # signed
        self.avg_price = 0.0
        self.realized = 0.0  # net of charges, whole session
        self.charges = 0.0
        self.trip_pnl = 0.0  # net P&L of the round trip in progress
        self.features: dict[str, float] = {}  # what the signal looked like at entry
        self.entries = 0  # entry intents that built the position now open
        self.last_entry = ""


class PositionBook:
    def __init__(self) -> None:
        self._by_token: dict[str, SymbolPosition] = {}

    def get(self, token: str) -> SymbolPosition:
        pos = self._by_token.get(token)
        if pos is None:
            pos = self._by_token[token] = SymbolPosition()
        return pos

    def seed(self, positions: tuple[Position, ...] | list[Position]) -> None:
        """Start from reconciled positions (their past P&L is history, not this session's)."""
        self._by_token.clear()
        for p in positions:
            pos = self.get(p.token)
            pos.qty = p.qty
            pos.avg_price = p.avg_price if p.qty else 0.0
            pos.entries = 1 if p.qty else 0  # restored: counts as one entry

    def by_token(self) -> dict[str, SymbolPosition]:
        """Every symbol the book has seen (a copy of the mapping; the entries are live)."""
        return dict(self._by_token)

    def open_positions(self) -> int:
        return sum(1 for p in self._by_token.values() if p.qty != 0)

    def positions(self) -> list[Position]:
        return [
            Position(t, p.qty, p.avg_price, p.realized, p.charges)
            for t, p in self._by_token.items()
            if p.qty != 0 or p.realized != 0.0
        ]

    def apply(
        self, fill: Fill, entry_features: dict[str, float] | None = None, entry_id: str = ""
    ) -> ClosedTrade | None:
        """Book one fill. Returns the round trip it closed, if it brought the position to
        zero or through it (a flip closes one trip and opens the next). ``entry_id``: the
        entry intent the fill belongs to ("" for an exit), counted in ``entries``."""
        pos = self.get(fill.token)
        signed = fill.qty if fill.side is Side.BUY else -fill.qty
        price = fill.price
        pos.charges += fill.charges
        pos.realized -= fill.charges
        pos.trip_pnl -= fill.charges
        closed: ClosedTrade | None = None
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            # Opening or adding: average price moves, nothing realised.
            if pos.qty == 0:
                pos.features = dict(entry_features or {})
                pos.entries = 0
                pos.last_entry = ""
            if entry_id and entry_id != pos.last_entry:
                pos.entries += 1
                pos.last_entry = entry_id
            total = pos.qty + signed
            pos.avg_price = (pos.avg_price * abs(pos.qty) + price * abs(signed)) / abs(total)
            pos.qty = total
            return None
        # Reducing, closing or flipping.
        closing = min(abs(signed), abs(pos.qty))
        direction = 1.0 if pos.qty > 0 else -1.0
        gross = (price - pos.avg_price) * closing * direction
        pos.realized += gross
        pos.trip_pnl += gross
        remaining = pos.qty + signed
        if remaining == 0 or (remaining > 0) != (pos.qty > 0):
            closed = ClosedTrade(fill.token, pos.trip_pnl, fill.exchange_ts_ms, pos.features)
            pos.trip_pnl = 0.0
            pos.features = dict(entry_features or {}) if remaining else {}
            pos.avg_price = price if remaining else 0.0
            pos.entries = 1 if remaining and entry_id else 0
            pos.last_entry = entry_id if remaining else ""
        pos.qty = remaining
        if not math.isfinite(pos.avg_price):
            pos.avg_price = 0.0
        return closed
