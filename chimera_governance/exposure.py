"""Exposure caps on the position and the book, not on the order.

An entry is sized down to what every cap leaves room for, counting what is held, what is
still working at the broker and the entry itself, all at the same price (the intent's
reference price for its own token, the marks for the rest). If no whole lot fits, the
entry is refused and the cap that bound is named with its numbers.

=================== ============================================ ===========================
rule                value                                        limit
=================== ============================================ ===========================
position_value      |held + working + entry| x price, rupees     max_position_value
position_qty        |held + working + entry|, units              max_position_qty
gross_exposure      sum |qty| x mark over the book, with entry   max_gross_exposure x equity
net_exposure        |sum qty x mark| over the book, with entry    max_net_exposure x equity
open_positions      positions held or being opened, with this    max_open_positions
pyramiding          entries already made into this position      max_entries_per_position
opposite_position   the position's signed qty                    0 (exit it first)
=================== ============================================ ===========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chimera_core.contracts import AccountSnapshot, Side, Veto


@dataclass(frozen=True, slots=True)
class ExposureLimits:
    max_position_value: float = 200_000.0
    max_position_qty: int = 1_000_000
    max_gross_exposure: float = 2.0  # x equity
    max_net_exposure: float = 1.0  # x equity
    max_open_positions: int = 5
    max_entries_per_position: int = 1


def fit(
    account: AccountSnapshot,
    token: str,
    side: Side,
    qty: int,
    price: float,
    limits: ExposureLimits,
    lot_size: int = 1,
) -> tuple[int, Veto | None]:
    """The largest quantity (whole lots, at most ``qty``) every cap leaves room for, and the
    veto of the cap that bound when that is zero (None when something fits)."""
    if qty <= 0 or not (math.isfinite(price) and price > 0):
        return 0, Veto("price", price, 0.0, "no positive price to size at")
    sign = 1 if side is Side.BUY else -1
    held = account.positions.get(token, 0)
    working = account.working.get(token, 0)
    current = held + working
    if held * sign < 0:
        return 0, Veto("opposite_position", float(held), 0.0, "exit the position first")
    if held != 0 and account.entries.get(token, 0) >= limits.max_entries_per_position:
        n = float(account.entries.get(token, 0))
        return 0, Veto("pyramiding", n, float(limits.max_entries_per_position), token)
    # Positions held, and entries still working that would open one, count alike.
    busy = len({t for t, q in account.positions.items() if q} | set(account.working))
    if current == 0 and held == 0 and busy >= limits.max_open_positions:
        return 0, Veto("open_positions", float(busy + 1), float(limits.max_open_positions))
    equity = account.equity
    mark = account.marks.get(token, price)
    # Room, in units of this token, under each cap (the entry adds |qty| x price).
    others_gross = account.gross_exposure - abs(current) * mark
    others_net = account.net_exposure - current * mark
    rooms = [
        ("position_value", limits.max_position_value / price - abs(current)),
        ("position_qty", float(limits.max_position_qty - abs(current))),
    ]
    if math.isfinite(equity) and equity > 0:
        gross_cap = limits.max_gross_exposure * equity
        net_cap = limits.max_net_exposure * equity
        rooms.append(("gross_exposure", (gross_cap - others_gross) / price - abs(current)))
        # Net exposure moves by sign x qty x price; the room is up to the cap on that side.
        net_now = others_net + current * price
        rooms.append(("net_exposure", (net_cap - sign * net_now) / price))
    else:
        rooms.append(("equity", 0.0))
    rule, room = min(rooms, key=lambda r: r[1])
    fitted = min(qty, int(max(0.0, room)))
    fitted -= fitted % max(1, lot_size)
    if fitted > 0:
        return fitted, None
    return 0, _veto(rule, account, token, sign, current, price, limits, equity, lot_size)


def _veto(
    rule: str,
    account: AccountSnapshot,
    token: str,
    sign: int,
    current: int,
    price: float,
    limits: ExposureLimits,
    equity: float,
    lot: int,
) -> Veto:
    """The bound cap with what one more lot would make it and its limit."""
    after = abs(current) + lot
    if rule == "position_value":
        return Veto(rule, after * price, limits.max_position_value, token)
    if rule == "position_qty":
        return Veto(rule, float(after), float(limits.max_position_qty), token)
    if rule == "gross_exposure":
        gross = account.gross_exposure + lot * price
        return Veto(rule, gross, limits.max_gross_exposure * equity, "x equity")
    if rule == "net_exposure":
        net = abs(account.net_exposure + sign * lot * price)
        return Veto(rule, net, limits.max_net_exposure * equity, "x equity")
    return Veto("equity", equity, 0.0, "no positive account equity")
