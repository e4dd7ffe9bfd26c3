"""Charges: a hand-worked contract note, and an independent per-leg recomputation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import ChargesConfig
from chimera_core.contracts import Side
from chimera_core.errors import ChimeraError
from chimera_execution.charges import Charges, compute_charges

DEFAULT = ChargesConfig()


def test_worked_examples_by_hand() -> None:
    # BUY 100 @ 500 intraday: turnover 50,000.
    # brokerage min(20, 0.03% = 15.00); STT none on a buy; exchange 1.485 -> 1.49;
    # SEBI 0.05; GST 18% of 16.54 = 2.9772 -> 2.98; stamp 0.003% = 1.50.
    assert compute_charges(Side.BUY, 100, 500.0, "INTRADAY", DEFAULT) == Charges(
        brokerage=15.0, stt=0.0, exchange_txn=1.49, sebi=0.05, gst=2.98, stamp=1.5, total=21.02
    )
    # SELL 100 @ 510 intraday: turnover 51,000. brokerage 15.30; STT 0.025% = 12.75;
    # exchange 1.5147 -> 1.51; SEBI 0.051 -> 0.05; GST 18% of 16.86 = 3.0348 -> 3.03.
    assert compute_charges(Side.SELL, 100, 510.0, "INTRADAY", DEFAULT) == Charges(
        brokerage=15.3, stt=12.75, exchange_txn=1.51, sebi=0.05, gst=3.03, stamp=0.0, total=32.64
    )
    # BUY 10 @ 2500 delivery: turnover 25,000. brokerage min(20, 0.1% = 25) = 20;
    # STT 0.1% = 25; exchange 0.7425 -> 0.74; SEBI 0.025 -> 0.03 (half-up);
    # GST 18% of 20.77 = 3.7386 -> 3.74; stamp 0.015% = 3.75.
    assert compute_charges(Side.BUY, 10, 2500.0, "DELIVERY", DEFAULT) == Charges(
        brokerage=20.0, stt=25.0, exchange_txn=0.74, sebi=0.03, gst=3.74, stamp=3.75, total=53.26
    )


# The same schedule written as a table of per-leg rates, as a contract note reads.
def leg_table(s: ChargesConfig) -> dict[tuple[str, str], dict[str, float]]:
    return {
        ("INTRADAY", "BUY"): {"brok": s.brokerage_pct_intraday, "stt": 0.0,
                              "stamp": s.stamp_intraday_buy},
        ("INTRADAY", "SELL"): {"brok": s.brokerage_pct_intraday, "stt": s.stt_intraday_sell,
                               "stamp": 0.0},
        ("DELIVERY", "BUY"): {"brok": s.brokerage_pct_delivery, "stt": s.stt_delivery,
                              "stamp": s.stamp_delivery_buy},
        ("DELIVERY", "SELL"): {"brok": s.brokerage_pct_delivery, "stt": s.stt_delivery,
                               "stamp": 0.0},
    }  # fmt: skip


def reference(side: str, qty: int, price: float, product: str, s: ChargesConfig) -> list[float]:
    rates = leg_table(s)[(product, side)]
    value = price * qty

    def paise(x: float) -> float:
        return math.floor(x * 100 + 0.5) / 100

    brokerage = paise(min(s.brokerage_flat, value * rates["brok"]))
    stt = paise(value * rates["stt"])
    exch = paise(value * s.exchange_txn)
    sebi = paise(value / 1e7 * s.sebi_per_crore)
    gst = paise((brokerage + exch + sebi) * s.gst)
    stamp = paise(value * rates["stamp"])
    return [brokerage, stt, exch, sebi, gst, stamp]


schedules = st.builds(
    ChargesConfig,
    brokerage_flat=st.sampled_from([0.0, 20.0, 25.0]),
    brokerage_pct_intraday=st.sampled_from([0.0, 0.0003, 0.0025]),
    stt_intraday_sell=st.sampled_from([0.00025, 0.0002]),
    exchange_txn=st.sampled_from([0.0000297, 0.0000325]),
) | st.just(DEFAULT)


@given(
    side=st.sampled_from(["BUY", "SELL"]),
    qty=st.integers(1, 100_000),
    price=st.floats(0.05, 50_000, allow_nan=False, allow_infinity=False),
    product=st.sampled_from(["INTRADAY", "DELIVERY"]),
    schedule=schedules,
)
def test_matches_independent_per_leg_table(
    side: str, qty: int, price: float, product: str, schedule: ChargesConfig
) -> None:
    got = compute_charges(Side(side), qty, price, product, schedule)
    want = reference(side, qty, price, product, schedule)
    parts = [got.brokerage, got.stt, got.exchange_txn, got.sebi, got.gst, got.stamp]
    # Two float computations can land on opposite sides of a half-paisa: allow one paisa
    # per component (GST can inherit it from its base).
    for name, g, w in zip(("brokerage", "stt", "exch", "sebi", "gst", "stamp"), parts, want,
                          strict=True):  # fmt: skip
        assert abs(g - w) <= 0.0100001 + (0.0054 if name == "gst" else 0.0), (name, g, w)
        assert g >= 0
    assert got.total == pytest.approx(sum(parts), abs=0.0050001)
    # The side/product rules themselves.
    if product == "INTRADAY" and side == "BUY":
        assert got.stt == 0.0
    if side == "SELL":
        assert got.stamp == 0.0


@pytest.mark.parametrize(
    ("qty", "price", "product"),
    [(0, 100.0, "INTRADAY"), (-5, 100.0, "INTRADAY"), (1, float("nan"), "INTRADAY"),
     (1, 0.0, "INTRADAY"), (1, 100.0, "MTF")],
)  # fmt: skip
def test_bad_input_is_refused(qty: int, price: float, product: str) -> None:
    with pytest.raises(ChimeraError):
        compute_charges(Side.BUY, qty, price, product, DEFAULT)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(1, 5_000), min_size=1, max_size=6),
    st.floats(1.0, 50_000.0, allow_nan=False),
    st.sampled_from(["INTRADAY", "DELIVERY"]),
)
def test_brokerage_is_charged_once_per_order_however_it_fills(
    pieces: list[int], price: float, product: str
) -> None:
    """An order filled in pieces pays the brokerage of the whole order (to a paisa per
    piece of rounding), never one fee per piece."""
    schedule = ChargesConfig()
    pct = (
        schedule.brokerage_pct_intraday
        if product == "INTRADAY"
        else schedule.brokerage_pct_delivery
    )
    paid, prior = 0.0, 0.0
    for qty in pieces:
        paid += compute_charges(Side.BUY, qty, price, product, schedule, prior).brokerage
        prior += qty * price
    whole = min(schedule.brokerage_flat, pct * prior)
    assert paid == pytest.approx(whole, abs=0.01 * len(pieces) + 1e-9)
    assert paid <= schedule.brokerage_flat + 0.01
