"""Charges: a hand-worked contract note, and an independent per-leg recomputation."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import ChargesConfig
from chimera_core.contracts import OrderRequest, Side
from chimera_core.errors import ChimeraError, ConfigError
from chimera_core.markets import MarketConfig
from chimera_execution.charges import (
    SCHEDULES,
    ChargeCalculator,
    Charges,
    compute_charges,
    schedule_on,
)

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


# ---- segments, products, dated schedules, simple models ---------------------------------
IST = timezone(timedelta(hours=5, minutes=30))


def ist_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=IST).timestamp() * 1000)


DEC_2024 = ist_ms(2024, 12, 26, 11, 0)


def parts(c: Charges) -> tuple[float, ...]:
    return (c.brokerage, c.stt, c.exchange_txn, c.sebi, c.gst, c.stamp, c.total)


@pytest.mark.parametrize("equity", [None, DEFAULT])
def test_contract_note_5000_shares_at_1000_nse_delivery(equity: ChargesConfig | None) -> None:
    """The published example: buy and sell 5,000 shares at ₹1,000 on NSE, delivery. Each
    side's turnover is ₹50,00,000 (50 lakh); both sides one crore.

    Per side, by hand from the documented rates (schedule of 1 Oct 2024):
      brokerage  min(₹20, 0.1 % of 50,00,000 = ₹5,000)         = ₹20.00
      STT        0.1 % of 50,00,000, buy and sell              = ₹5,000.00
      exchange   NSE 0.00297 % of 50,00,000                    = ₹148.50
      SEBI       ₹10 per crore x 0.5 crore                     = ₹5.00
      GST        18 % of (20 + 148.50 + 5 = 173.50)            = ₹31.23
      stamp      0.015 % of 50,00,000, buy only                = ₹750.00
    Buy ₹5,954.73, sell ₹5,204.73: the round trip costs ₹11,159.46.
    """
    calc = ChargeCalculator(equity=equity)
    buy = calc.charges(Side.BUY, 5000, 1000.0, market="NSE_CM", product="DELIVERY",
                       ts_ms=DEC_2024)  # fmt: skip
    sell = calc.charges(Side.SELL, 5000, 1000.0, market="NSE_CM", product="DELIVERY",
                        ts_ms=DEC_2024)  # fmt: skip
    assert parts(buy) == (20.0, 5000.0, 148.5, 5.0, 31.23, 750.0, 5954.73)
    assert parts(sell) == (20.0, 5000.0, 148.5, 5.0, 31.23, 0.0, 5204.73)
    assert round(buy.total + sell.total, 2) == 11159.46


@pytest.mark.parametrize(
    ("market", "kind", "side", "qty", "price", "want"),
    [
        # NIFTY option, sell 75 @ ₹100 premium: turnover 7,500. Flat ₹20; STT 0.1 % = 7.50;
        # NSE 0.03503 % = 2.62725 -> 2.63; SEBI 0.0075 -> 0.01; GST 18 % of 22.64 = 4.0752
        # -> 4.08; no stamp on a sell.
        ("NSE_FO", "OPT", Side.SELL, 75, 100.0, (20.0, 7.5, 2.63, 0.01, 4.08, 0.0, 34.22)),
        # NIFTY future, buy 75 @ ₹24,000: turnover 18,00,000. min(20, 0.03 % = 540) = 20;
        # no STT on a buy; NSE 0.00173 % = 31.14; SEBI 1.80; GST 18 % of 52.94 = 9.5292 ->
        # 9.53; stamp 0.002 % = 36.00.
        ("NSE_FO", "FUT", Side.BUY, 75, 24000.0, (20.0, 0.0, 31.14, 1.8, 9.53, 36.0, 98.47)),
        # USDINR future, buy 1,000 @ ₹84: turnover 84,000. min(20, 25.20) = 20; no STT;
        # NSE 0.00035 % = 0.294 -> 0.29; SEBI 0.084 -> 0.08; GST 18 % of 20.37 = 3.6666 ->
        # 3.67; stamp 0.0001 % = 0.084 -> 0.08.
        ("CDE_FO", "FUT", Side.BUY, 1000, 84.0, (20.0, 0.0, 0.29, 0.08, 3.67, 0.08, 24.12)),
        # CRUDEOIL future, sell 100 @ ₹6,000: turnover 6,00,000. min(20, 180) = 20; CTT
        # 0.01 % = 60; MCX 0.0021 % = 12.60; SEBI 0.60; GST 18 % of 33.20 = 5.976 -> 5.98.
        ("MCX_FO", "FUT", Side.SELL, 100, 6000.0, (20.0, 60.0, 12.6, 0.6, 5.98, 0.0, 99.18)),
        # Same trade on BSE cash, intraday sell 100 @ ₹500: BSE's 0.00375 % = 1.875 -> 1.88;
        # brokerage min(20, 15) = 15; STT 0.025 % = 12.50; SEBI 0.05; GST 18 % of 16.93 =
        # 3.0474 -> 3.05.
        ("BSE_CM", None, Side.SELL, 100, 500.0, (15.0, 12.5, 1.88, 0.05, 3.05, 0.0, 32.48)),
    ],
)  # fmt: skip
def test_each_segment_by_hand(
    market: str, kind: str | None, side: Side, qty: int, price: float, want: tuple[float, ...]
) -> None:
    product = "INTRADAY" if market.endswith("CM") else "CARRYFORWARD"
    got = ChargeCalculator().charges(side, qty, price, market=market, product=product,
                                     ts_ms=DEC_2024, kind=kind)  # fmt: skip
    assert parts(got) == want


def test_schedule_is_chosen_by_the_fills_date() -> None:
    # A NIFTY future sold for ₹18,00,000: STT 0.0125 % (₹225) until 30 Sep 2024, 0.02 %
    # (₹360) from 1 Oct 2024 00:00 IST.
    calc = ChargeCalculator()
    before = ist_ms(2024, 10, 1, 0, 0) - 1
    after = ist_ms(2024, 10, 1, 0, 0)

    def stt(ts: int) -> float:
        return calc.charges(Side.SELL, 75, 24000.0, market="NSE_FO", product="INTRADAY",
                            ts_ms=ts, kind="FUT").stt  # fmt: skip

    assert (stt(before), stt(after)) == (225.0, 360.0)
    assert schedule_on(before)[0] == "2023-04-01" and schedule_on(after)[0] == "2024-10-01"
    for version in SCHEDULES:
        datetime.strptime(version, "%Y-%m-%d")  # every version is a date


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**63), 2**63 - 1))
def test_any_exchange_time_picks_a_schedule(ts: int) -> None:
    version, lines = schedule_on(ts)
    assert version in SCHEDULES and "FUT" in lines
    c = ChargeCalculator().charges(Side.BUY, 1, 100.0, market="NSE_FO", product="INTRADAY",
                                   ts_ms=ts, kind="OPT")  # fmt: skip
    assert c.total > 0


def test_percent_fixed_and_none_models_for_other_markets() -> None:
    calc = ChargeCalculator(markets={
        "US": MarketConfig(timezone="America/New_York", charges="percent", charges_pct=0.01),
        "EU": MarketConfig(charges="fixed", charges_fixed=4.5),
    })  # fmt: skip
    # 0.01 % of 200 x 150 = 30,000 -> 3.00, all in brokerage.
    us = calc.charges(Side.BUY, 200, 150.0, market="US", product="INTRADAY", ts_ms=0)
    assert (us.brokerage, us.total, us.stt, us.gst) == (3.0, 3.0, 0.0, 0.0)
    # Fixed: 4.50 per executed order, once however it fills.
    first = calc.charges(Side.SELL, 10, 99.0, market="EU", product="INTRADAY", ts_ms=0)
    later = calc.charges(Side.SELL, 10, 99.0, market="EU", product="INTRADAY", ts_ms=0,
                         prior_turnover=990.0)  # fmt: skip
    assert (first.total, later.total) == (4.5, 0.0)
    # A market of your own starts from "generic": no charges unless you say so.
    assert calc.charges(Side.BUY, 1, 1.0, market="generic", product="INTRADAY", ts_ms=0).total == 0
    with pytest.raises(ChimeraError):
        calc.charges(Side.BUY, 0, 1.0, market="generic", product="INTRADAY", ts_ms=0)


def test_a_market_without_a_schedule_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"markets\.NCX_FO\.charges"):
        ChargeCalculator().check_markets(["NSE_CM", "NCX_FO"])
    ok = ChargeCalculator(markets={"NCX_FO": MarketConfig(charges="fixed", charges_fixed=20.0)})
    ok.check_markets(["NSE_CM", "NCX_FO", "MCX_FO"])
    with pytest.raises(ChimeraError, match="kind"):
        ChargeCalculator().charges(Side.BUY, 1, 1.0, market="NSE_FO", product="INTRADAY",
                                   ts_ms=DEC_2024)  # fmt: skip


def test_for_request_reads_segment_product_and_kind() -> None:
    def req(token: str, exchange_type: int, product: str = "INTRADAY") -> OrderRequest:
        return OrderRequest(client_order_id="c1", intent_id="i1", token=token,
                            exchange_type=exchange_type, side=Side.SELL, qty=75,
                            product=product)  # fmt: skip

    calc = ChargeCalculator(equity=DEFAULT, kinds={"43650": "OPT"})
    opt = calc.for_request(req("43650", 2), 75, 100.0, DEC_2024)
    assert opt.stt == 7.5 and opt.brokerage == 20.0  # the options line
    fut = calc.for_request(req("99999", 2), 75, 100.0, DEC_2024)  # no kind: a future
    assert fut.stt == 1.5  # 0.02 % of 7,500
    # NSE cash through the calculator is compute_charges from the same config.
    cash = calc.for_request(req("2885", 1), 75, 100.0, 1_000)
    assert cash == compute_charges(Side.SELL, 75, 100.0, "INTRADAY", DEFAULT)
    with pytest.raises(ConfigError):
        ChargeCalculator(kinds={"1": "CE"})


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 2**63 - 1),
    st.floats(min_value=5e-324, allow_nan=False, allow_infinity=False),
    st.sampled_from(["NSE_CM", "NSE_FO", "CDE_FO", "MCX_FO", "BSE_CM"]),
    st.sampled_from([Side.BUY, Side.SELL]),
)
def test_extreme_fills_are_charged_without_an_exception(
    qty: int, price: float, market: str, side: Side
) -> None:
    c = ChargeCalculator().charges(side, qty, price, market=market, product="INTRADAY",
                                   ts_ms=DEC_2024, kind="OPT")  # fmt: skip
    assert c.total >= 0 and c.brokerage <= 20.0


def test_numpy_prices_charge_the_same_as_python_floats() -> None:
    """A price straight out of a numpy array (a backtest's) is a price like any other:
    numpy 2's repr is "np.float64(...)", which once made the Decimal arithmetic refuse it."""
    import numpy as np

    calc = ChargeCalculator()
    kw = {"market": "NSE_CM", "product": "DELIVERY", "ts_ms": DEC_2024}
    want = calc.charges(Side.BUY, 5000, 1000.0, **kw)
    got = calc.charges(Side.BUY, np.int64(5000), np.float64(1000.0), **kw)
    assert parts(got) == parts(want)
