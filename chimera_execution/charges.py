"""Transaction charges for NSE cash equity, per executed order (or per fill in paper).

Default rates live in ``chimera_core.config.ChargesConfig``; where each comes from, and
as of when. This machine had no internet when they were written: every line is marked
*verify before live* and must be checked against the current circulars/pages.

- Brokerage (Angel One pricing page, "Angel iTrade Prime", as of late 2024):
  intraday ₹20 or 0.03 % of turnover per executed order, whichever is lower; delivery
  ₹20 or 0.1 % per executed order, whichever is lower (Angel One also states a ₹2
  minimum on delivery, not modelled). *Verify before live.*
- STT (Securities Transaction Tax, Finance (No. 2) Act 2004, Chapter VII, rates as
  amended; the Finance (No. 2) Act 2024 changed F&O rates only): delivery 0.1 % on buy
  and sell; intraday (non-delivery) 0.025 % on the sell side only. *Verify before live.*
- Exchange transaction charge (NSE circular of 27 Sep 2024, flat uniform fee after
  SEBI's MII circular of 1 Jul 2024, effective 1 Oct 2024): cash market ₹2.97 per lakh
  of traded value = 0.00297 %, each side. *Verify before live.*
- SEBI turnover fee: ₹10 per crore of turnover (SEBI fee regulations, in force since
  1 Jun 2020), each side. *Verify before live.*
- GST: 18 % on brokerage + exchange transaction charge + SEBI fee (IGST on services).
  *Verify before live.*
- Stamp duty (Indian Stamp Act 1899 as amended by the Finance Act 2019, uniform rates in
  force from 1 Jul 2020): delivery 0.015 %, intraday 0.003 %, buy side only.
  *Verify before live.*

Rounding: contract notes round STT and stamp duty to the rupee, but on the *aggregate
per scrip per contract note* (a day's trades), which a per-fill computation cannot
reproduce: rounding a ₹0.30 STT on one small fill to ₹0 would be plainly wrong. So
every component is kept to paise (rounded half-up to 2 decimals) and ``total`` is the
sum of the rounded components. GST is computed on the rounded components it taxes, as
contract notes show it. Expect the day's total to differ from the broker's contract
note by a few rupees at most.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import msgspec

from chimera_core.config import ChargesConfig
from chimera_core.contracts import Side
from chimera_core.errors import ChimeraError

PRODUCTS = ("INTRADAY", "DELIVERY")
_CRORE = 10_000_000.0
_PAISA = Decimal("0.01")


class Charges(msgspec.Struct, frozen=True):
    """Rupees, each component rounded to paise; ``total`` is their sum."""

    brokerage: float
    stt: float
    exchange_txn: float
    sebi: float
    gst: float
    stamp: float
    total: float


def _paise(x: float) -> float:
    # Half-up like a contract note, through the shortest repr so 0.125 → 0.13 (not the
    # binary 0.12499… that round() would see).
    return float(Decimal(repr(x)).quantize(_PAISA, rounding=ROUND_HALF_UP))


def compute_charges(
    side: Side,
    qty: int,
    price: float,
    product: str,
    schedule: ChargesConfig,
    prior_turnover: float = 0.0,
) -> Charges:
    """Charges for one executed order (or fill) of ``qty`` at ``price`` on NSE cash.

    Brokerage is per executed order: for a later fill of an order that already traded
    ``prior_turnover`` rupees, only the increase of min(flat, pct × order turnover) is
    charged, so an order filled in three pieces pays one fee, as on a contract note.
    """
    if qty <= 0:
        raise ChimeraError(f"charges: expected qty > 0, got {qty}; pass the executed quantity")
    if not (math.isfinite(price) and price > 0):
        raise ChimeraError(f"charges: expected a finite price > 0, got {price!r}")
    if product not in PRODUCTS:
        raise ChimeraError(
            f"charges: expected product in {PRODUCTS}, got {product!r}; fix execution.product"
        )
    turnover = qty * price
    intraday = product == "INTRADAY"
    buy = side is Side.BUY

    pct = schedule.brokerage_pct_intraday if intraday else schedule.brokerage_pct_delivery
    if not (math.isfinite(prior_turnover) and prior_turnover >= 0):
        raise ChimeraError(f"charges: expected prior_turnover >= 0, got {prior_turnover!r}")
    brokerage = _paise(min(schedule.brokerage_flat, pct * (prior_turnover + turnover))) - _paise(
        min(schedule.brokerage_flat, pct * prior_turnover)
    )
    if intraday:
        stt = 0.0 if buy else _paise(schedule.stt_intraday_sell * turnover)
        stamp = _paise(schedule.stamp_intraday_buy * turnover) if buy else 0.0
    else:
        stt = _paise(schedule.stt_delivery * turnover)
        stamp = _paise(schedule.stamp_delivery_buy * turnover) if buy else 0.0
    exchange_txn = _paise(schedule.exchange_txn * turnover)
    sebi = _paise(schedule.sebi_per_crore * turnover / _CRORE)
    gst = _paise(schedule.gst * (brokerage + exchange_txn + sebi))
    total = _paise(brokerage + stt + exchange_txn + sebi + gst + stamp)
    return Charges(
        brokerage=brokerage,
        stt=stt,
        exchange_txn=exchange_txn,
        sebi=sebi,
        gst=gst,
        stamp=stamp,
        total=total,
    )
