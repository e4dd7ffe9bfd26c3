"""Smart execution: throttler budgets, VWAP slicing, liquidity sizing, brackets, square-off,
exit/child order builders. Reference values are computed independently (numpy, zoneinfo)."""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from chimera_core.config import SlicingConfig, ThrottleConfig
from chimera_core.contracts import Level, OrderRequest, OrderType, Position, Purpose, Side, Tick
from chimera_core.errors import ChimeraError, ConfigError
from chimera_execution.smart_execution import (
    DEFAULT_NSE_CURVE,
    Bracket,
    LiquidityAdjuster,
    Throttler,
    VolumeCurve,
    VwapSlicer,
    child_request,
    exit_request,
    ist_seconds,
    parse_clock,
    square_off_due,
)

IST = ZoneInfo("Asia/Kolkata")
WINDOWS = (1.0, 60.0, 3600.0)


def max_in_any_window(stamps: list[float], span: float) -> int:
    """Most timestamps inside any half-open window [t, t + span) — it is enough to start
    windows at the timestamps themselves."""
    s = sorted(stamps)
    return max((bisect.bisect_left(s, t + span) - i for i, t in enumerate(s)), default=0)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- throttler --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    limits=st.tuples(
        st.integers(1, 6), st.integers(1, 30), st.integers(1, 60)
    ),  # per second/minute/hour
    guard=st.sampled_from([0.0, 0.001, 0.05]),
    steps=st.lists(
        st.one_of(
            st.floats(0, 0.3),  # bursts inside one second
            st.floats(0, 5),
            st.sampled_from([0.0, 1.0, 60.0, 3600.0]),  # exactly on window edges
            st.floats(0, 400),
        ),
        min_size=1,
        max_size=300,
    ),
)
def test_throttler_never_exceeds_any_rolling_window(limits, guard, steps):
    clock = FakeClock()
    th = Throttler(*limits, clock=clock, guard_s=guard)
    granted: list[float] = []
    for dt in steps:
        clock.t += dt
        # Several tries per instant: a burst is the worst case.
        for _ in range(3):
            d = th.delay()
            ok = th.try_acquire()
            assert ok == (d == 0.0)
            if ok:
                granted.append(clock.t)
    for span, n in zip(WINDOWS, limits, strict=True):
        assert max_in_any_window(granted, span) <= n
    assert th.calls == len(granted)
    assert th.refused == 3 * len(steps) - len(granted)


@settings(max_examples=50, deadline=None)
@given(limits=st.tuples(st.integers(1, 6), st.integers(1, 30), st.integers(1, 60)))
def test_throttler_delay_is_exact_when_followed(limits):
    """Calling at exactly delay() is always allowed, and the windows still hold: the
    throttler is tight, not just safe."""
    clock = FakeClock()
    th = Throttler(*limits, clock=clock, guard_s=0.0)
    granted = []
    for _ in range(3 * limits[2]):
        clock.t += th.delay()
        assert th.try_acquire()
        granted.append(clock.t)
    for span, n in zip(WINDOWS, limits, strict=True):
        assert max_in_any_window(granted, span) <= n


async def test_throttler_acquire_burst_is_spaced_and_fifo():
    th = Throttler(per_second=20, per_minute=500, per_hour=1000)
    stamps: list[float] = []
    order: list[int] = []

    async def call(i: int) -> None:
        await th.acquire()
        stamps.append(time.monotonic())  # when the "broker call" would go out
        order.append(i)

    await asyncio.gather(*(call(i) for i in range(60)))
    assert order == list(range(60))  # first come, first served
    assert max_in_any_window(stamps, 1.0) <= 20
    assert th.calls == 60
    assert th.waited_s > 0
    assert th.delay() > 0  # the last second is full


async def test_throttler_try_acquire_does_not_jump_the_queue_and_cancel_takes_nothing():
    clock = FakeClock()
    th = Throttler(per_second=1, clock=clock)
    assert th.try_acquire()
    waiter = asyncio.create_task(th.acquire())
    await asyncio.sleep(0)  # the waiter is now queued, sleeping on the full window
    clock.t += 10  # the budget is free again, but someone is waiting
    assert not th.try_acquire()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert th.calls == 1
    assert th.try_acquire()  # queue empty again


def test_throttler_from_config_and_bad_limits():
    clock = FakeClock()
    th = Throttler.from_config(ThrottleConfig(per_second=2), clock=clock)
    assert th.try_acquire() and th.try_acquire() and not th.try_acquire()
    assert th.delay() == pytest.approx(1.05)
    with pytest.raises(ConfigError, match="per_minute"):
        Throttler(per_minute=0)


# ---- VWAP slicer ------------------------------------------------------------------------

# 2026-03-02 09:15:00 IST (a Monday), in epoch ms.
OPEN_MS = int(datetime(2026, 3, 2, 9, 15, tzinfo=IST).timestamp() * 1000)


def tick(ts_ms: int, ltp: float, volume: int, bids=(), asks=()) -> Tick:
    return Tick(
        token="3045",
        exchange_type=1,
        mode=3,
        sequence=0,
        exchange_ts_ms=ts_ms,
        ltp=ltp,
        volume=volume,
        bids=tuple(bids),
        asks=tuple(asks),
    )


@settings(max_examples=200, deadline=None)
@given(
    lot=st.integers(1, 100),
    lots=st.integers(1, 500),
    window_s=st.floats(1, 6 * 3600),
    slices=st.integers(1, 30),
    start_ms=st.integers(1_600_000_000_000, 1_900_000_000_000),
    side=st.sampled_from(Side),
)
def test_vwap_children_sum_to_parent_in_lots(lot, lots, window_s, slices, start_ms, side):
    parent = lot * lots
    s = VwapSlicer(parent, side, start_ms, window_s, participation=1.0, lot_size=lot, slices=slices)
    assert all(q % lot == 0 for q in s.schedule)
    assert list(s.schedule) == sorted(s.schedule) and s.schedule[-1] == parent
    w = round(window_s * 1000)
    vol = 1
    s.on_tick(tick(start_ms - 1, 100.0, vol))
    children = []
    for i in range(slices):
        now = start_ms + -(-i * w // slices)  # ceil: the first ms of slot i
        vol += 10**9  # the market trades far more than we need
        s.on_tick(tick(now, 100.0, vol))
        q = s.next_child(now)
        assert q >= 0 and q % lot == 0
        assert s.next_child(now) == 0  # one child per slot
        if q:
            children.append(q)
    assert sum(children) == parent and s.unsent == 0
    assert s.next_child(start_ms + w) == 0  # nothing after the window
    assert s.report().actual[-1] == parent


@settings(max_examples=150, deadline=None)
@given(
    participation=st.floats(0.01, 1.0),
    lot=st.integers(1, 10),
    lots=st.integers(1, 200),
    steps=st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 400)), min_size=1, max_size=200
    ),  # (ms to the next tick, volume traded in between)
    pre_start=st.booleans(),
)
def test_vwap_participation_never_exceeded(participation, lot, lots, steps, pre_start):
    start = OPEN_MS + 3_600_000
    s = VwapSlicer(lot * lots, Side.BUY, start, 120.0, participation, lot_size=lot, slices=12)
    now, vol = start, 10_000
    baseline = None
    if pre_start:
        s.on_tick(tick(start - 500, 100.0, vol))
        baseline = vol
    total = 0
    for dt, dv in steps:
        now += dt
        vol += dv
        s.on_tick(tick(now, 100.0, vol))
        if baseline is None:
            baseline = vol  # the first tick is the baseline: the volume before it is unknown
        q = s.next_child(now)
        # Independent check: never more than participation x volume since the last child.
        assert q <= participation * (vol - baseline) + 1e-9
        if q:
            baseline = vol
            total += q
    assert total <= lot * lots
    assert total == s.report().sent_qty


@settings(max_examples=100, deadline=None)
@given(
    side=st.sampled_from(Side),
    ticks=st.lists(
        st.tuples(
            st.integers(-20_000, 80_000),  # ms from start (window is 60 s)
            st.floats(50, 150),
            st.integers(0, 1000),
        ),
        min_size=2,
        max_size=80,
    ),
    fills=st.lists(st.tuples(st.integers(1, 50), st.floats(50, 150)), min_size=1, max_size=10),
)
def test_vwap_tracking_error_matches_numpy(side, ticks, fills):
    start = OPEN_MS + 7_200_000
    parent = sum(q for q, _ in fills)
    # One tick late in the window trades enough for the single child to cover the parent
    # at 100% participation; it is part of the market like any other tick. A baseline tick
    # before all of them (the first tick only sets the volume baseline) keeps it counted.
    ticks = sorted([(-30_000, 100.0, 0), *ticks, (59_999, 100.0, parent)], key=lambda t: t[0])
    s = VwapSlicer(parent, side, start, 60.0, participation=1.0, slices=1)
    ts = np.array([start + t for t, _, _ in ticks])
    px = np.array([p for _, p, _ in ticks])
    vol = 1000 + np.cumsum([dv for _, _, dv in ticks])
    for t, p, v in zip(ts, px, vol, strict=True):
        s.on_tick(tick(int(t), float(p), int(v)))
    # Market VWAP: each volume increase traded at the price of the tick that reported it,
    # counted for ticks inside [start, end); the first tick only sets the baseline.
    dv = np.diff(vol)
    inside = (ts[1:] >= start) & (ts[1:] < start + 60_000) & (dv > 0)
    vw = dv[inside]
    assert s.next_child(start + 59_999) == parent
    for q, p in fills:
        s.on_fill(q, p)
    r = s.report()
    qs = np.array([q for q, _ in fills])
    ps = np.array([p for _, p in fills])
    avg = float((qs * ps).sum() / qs.sum())
    assert r.avg_fill_price == pytest.approx(avg)
    if vw.sum() == 0:
        assert r.market_vwap is None and r.tracking_error_bps is None
        return
    mvwap = float((px[1:][inside] * vw).sum() / vw.sum())
    sign = 1 if side is Side.BUY else -1
    assert r.market_vwap == pytest.approx(mvwap)
    assert r.market_volume == int(vw.sum())
    assert r.tracking_error_bps == pytest.approx(sign * (avg - mvwap) / mvwap * 1e4, abs=1e-6)


def _run_flat(side: Side, fill_price: float) -> float | None:
    start = OPEN_MS + 3_600_000
    s = VwapSlicer(1000, side, start, 300.0, participation=0.5, lot_size=10, slices=10)
    vol = 50_000
    s.on_tick(tick(start - 1000, 100.0, vol))
    for k in range(300):
        now = start + k * 1000
        vol += 200
        s.on_tick(tick(now, 100.0, vol))
        q = s.next_child(now)
        if q:
            s.on_fill(q, fill_price)
    rep = s.report()
    assert rep.market_vwap == pytest.approx(100.0)
    assert s.done and rep.filled_qty == 1000 and rep.children == 10
    return rep.tracking_error_bps


def test_vwap_flat_market_has_zero_tracking_error_and_sign_is_adverse_positive():
    assert _run_flat(Side.BUY, 100.0) == pytest.approx(0.0, abs=1e-9)
    assert _run_flat(Side.SELL, 100.0) == pytest.approx(0.0, abs=1e-9)
    assert _run_flat(Side.BUY, 100.5) == pytest.approx(50.0)  # paid above VWAP: adverse
    assert _run_flat(Side.SELL, 100.5) == pytest.approx(-50.0)  # sold above VWAP: favourable


def test_vwap_schedule_follows_the_u_curve():
    w = DEFAULT_NSE_CURVE.weights
    s = VwapSlicer(100_000, Side.BUY, OPEN_MS, 6.25 * 3600, 0.1, slices=25)  # the whole day
    expected = np.cumsum(w) / sum(w) * 100_000
    assert np.abs(np.array(s.schedule) - expected).max() < 1  # floored to whole units
    got = np.diff((0, *s.schedule))
    assert got[0] > got[12] < got[-1]  # heavy open, midday trough, heavy close
    # Outside market hours there is no curve: even slices by time.
    night = OPEN_MS + 14 * 3600 * 1000
    s = VwapSlicer(1000, Side.SELL, night, 100.0, 0.1, slices=4)
    assert s.schedule == (250, 500, 750, 1000)


def test_vwap_caps_hold_back_and_catch_up_and_window_end_returns_remainder():
    start = OPEN_MS + 3_600_000
    cfg = SlicingConfig(window_s=40.0, participation=0.1)
    s = VwapSlicer.from_config(cfg, 1000, Side.BUY, start, slices=4)
    s.on_tick(tick(start - 1, 100.0, 1000))
    s.on_tick(tick(start, 100.0, 2000))
    assert s.next_child(start) == 100  # due 250, capped at 10% of 1000 traded
    s.on_tick(tick(start + 10_000, 100.0, 12_000))
    assert s.next_child(start + 10_000) == 400  # catches up to the 500 target
    s.on_unfilled(100)  # that first child was cancelled: it goes back into the schedule
    assert s.unsent == 600
    assert s.next_child(start + 39_999) == 0  # no volume since the last child
    assert s.next_child(start + 40_000) == 0  # the window is over
    assert s.stop() == 600 and s.remaining == 1000 and not s.done
    with pytest.raises(ChimeraError, match="counted twice"):
        s.on_fill(500, 100.0)


def test_vwap_refuses_bad_parents():
    with pytest.raises(ChimeraError, match="multiple of lot_size"):
        VwapSlicer(1001, Side.BUY, OPEN_MS, 60.0, 0.1, lot_size=50)
    with pytest.raises(ChimeraError, match="participation"):
        VwapSlicer(100, Side.BUY, OPEN_MS, 60.0, 0.0)
    with pytest.raises(ChimeraError, match="weights"):
        VolumeCurve(open_s=0, bucket_s=60, weights=(0.0, 0.0))


# ---- liquidity adjuster -----------------------------------------------------------------

levels = st.lists(
    st.tuples(st.integers(1, 200), st.integers(0, 5000)), min_size=0, max_size=5
)  # (ticks away from the touch, qty)


def book(bid: float, ask: float, bid_levels, ask_levels):
    bids = [Level(round(bid - 0.05 * k, 2), q, 1) for k, q in sorted(bid_levels)]
    asks = [Level(round(ask + 0.05 * k, 2), q, 1) for k, q in sorted(ask_levels)]
    return bids, asks


@settings(max_examples=300, deadline=None)
@given(
    side=st.sampled_from(Side),
    lots=st.integers(1, 2000),
    bid=st.floats(10, 1000),
    spread_ticks=st.integers(1, 100),
    bid_levels=levels,
    ask_levels=levels,
    fraction=st.floats(0.05, 1.0),
    max_spread=st.floats(0.01, 1.0),
    waited=st.floats(0, 100),
    lot=st.integers(1, 50),
)
def test_liquidity_never_above_depth_fraction(
    side, lots, bid, spread_ticks, bid_levels, ask_levels, fraction, max_spread, waited, lot
):
    qty = lots * lot
    bid = round(bid, 2)
    ask = round(bid + 0.05 * spread_ticks, 2)
    bids, asks = book(bid, ask, bid_levels, ask_levels)
    la = LiquidityAdjuster(fraction, max_spread, 30.0)
    adj = la.adjust(side, qty, tick(OPEN_MS, bid, 0, bids, asks), waited, lot_size=lot)
    if not bids and not asks:
        assert (adj.action, adj.qty) == ("send", qty)
        return
    opposite = asks if side is Side.BUY else bids
    displayed = sum(lv.qty for lv in opposite)
    assert adj.displayed_qty == displayed
    assert 0 <= adj.qty <= min(qty, fraction * displayed)
    assert adj.qty % lot == 0
    if adj.action == "wait":
        assert adj.qty == 0
        return
    assert adj.qty > 0
    # The limit reaches deep enough into the displayed book to fill what is sent.
    if side is Side.BUY:
        assert sum(lv.qty for lv in asks if lv.price <= adj.limit_price) >= adj.qty
    else:
        assert sum(lv.qty for lv in bids if lv.price >= adj.limit_price) >= adj.qty
    if bids and asks:
        b, a = bids[0].price, asks[0].price
        spread = (a - b) / ((a + b) / 2) * 100
        wide = spread > max_spread
        assert adj.action == ("cross_after_wait" if wide else "send")
        assert not wide or waited >= 30.0


def test_liquidity_waits_on_a_wide_spread_then_crosses():
    la = LiquidityAdjuster.from_config(SlicingConfig(max_spread_pct=0.3, max_wait_s=30.0))
    bids = [Level(99.0, 500, 3)]
    asks = [Level(100.0, 300, 2), Level(100.05, 700, 4)]  # spread ~1% of mid
    t = tick(OPEN_MS, 99.5, 0, bids, asks)
    a = la.adjust(Side.BUY, 800, t, waited_s=10.0)
    assert (a.action, a.qty, a.limit_price) == ("wait", 0, 99.0)
    assert "waited 10.0s of 30.0s" in a.reason
    a = la.adjust(Side.BUY, 800, t, waited_s=30.0)
    assert a.action == "cross_after_wait" and "crossing anyway" in a.reason
    assert a.qty == 500 and a.limit_price == 100.05  # 0.5 x 1000 displayed, two levels deep
    tight = tick(OPEN_MS, 100.0, 0, [Level(99.95, 500, 3)], asks)
    a = la.adjust(Side.BUY, 200, tight, waited_s=0.0)
    assert (a.action, a.qty, a.limit_price) == ("send", 200, 100.0)


def test_liquidity_no_book_passes_through_and_empty_side_waits():
    la = LiquidityAdjuster(0.5, 0.3, 30.0)
    a = la.adjust(Side.SELL, 1234, tick(OPEN_MS, 101.0, 0), waited_s=0.0)
    assert (a.action, a.qty, a.limit_price) == ("send", 1234, 101.0)
    assert "no depth" in a.reason and a.displayed_qty is None
    circuit = tick(OPEN_MS, 110.0, 0, bids=[Level(110.0, 90_000, 400)], asks=[])
    a = la.adjust(Side.BUY, 100, circuit, waited_s=1e6)
    assert (a.action, a.qty) == ("wait", 0) and "no asks" in a.reason


# ---- brackets ---------------------------------------------------------------------------

TICK_SIZES = [0.05, 0.01, 0.1, 1.0, 0.0025]


def on_grid(price: float, tick_size: float) -> bool:
    x = price / tick_size
    return abs(x - round(x)) < 1e-6


@settings(max_examples=500, deadline=None)
@given(
    entry=st.floats(0.5, 100_000),
    atr=st.floats(1e-4, 1e4),
    stop_m=st.floats(0.1, 10),
    take_m=st.floats(0.1, 10),
    tick_size=st.sampled_from(TICK_SIZES),
    side=st.sampled_from(Side),
)
def test_bracket_legs_on_the_right_sides_and_on_the_grid(
    entry, atr, stop_m, take_m, tick_size, side
):
    assume(entry >= 2 * tick_size)
    b = Bracket.from_entry(side, entry, atr, stop_m, take_m, tick_size)
    assert on_grid(b.stop, tick_size) and on_grid(b.target, tick_size)
    assert b.stop > 0 and b.target > 0
    sign = 1 if side is Side.BUY else -1
    loss_side, win_side = entry - sign * atr * stop_m, entry + sign * atr * take_m
    if side is Side.BUY:
        assert b.stop < entry < b.target
    else:
        assert b.target < entry < b.stop
    # Within one tick of the exact ATR levels (unless a price floor at one tick applies).
    if loss_side > tick_size:
        assert abs(b.stop - loss_side) < tick_size + 1e-6
    if win_side > tick_size:
        assert abs(b.target - win_side) < tick_size + 1e-6
    assert b.check(entry) is None
    assert b.check(b.stop) is Purpose.STOP_LOSS
    assert b.check(b.target) is Purpose.TAKE_PROFIT
    assert b.check(b.stop - sign * tick_size) is Purpose.STOP_LOSS
    assert b.check(b.target + sign * tick_size) is Purpose.TAKE_PROFIT
    assert b.check(math.nan) is None


def test_bracket_rounds_toward_entry():
    b = Bracket.from_entry(Side.BUY, 100.0, 1.03, 2.0, 3.0)  # 97.94 / 103.09
    assert (b.stop, b.target) == (97.95, 103.05)
    b = Bracket.from_entry(Side.SELL, 100.0, 1.03, 2.0, 3.0)  # 102.06 / 96.91
    assert (b.stop, b.target) == (102.05, 96.95)
    b = Bracket.from_entry(Side.BUY, 100.0, 0.001, 2.0, 3.0)  # under a tick: one tick away
    assert (b.stop, b.target) == (99.95, 100.05)
    assert b.check(99.96) is None and b.check(99.95) is Purpose.STOP_LOSS


@pytest.mark.parametrize("atr", [math.nan, 0.0, -1.0, math.inf])
def test_bracket_refuses_a_missing_atr(atr):
    with pytest.raises(ChimeraError, match="ATR"):
        Bracket.from_entry(Side.BUY, 100.0, atr, 2.0, 3.0)


# ---- square-off -------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(ts_ms=st.integers(int(datetime(1950, 1, 1).timestamp() * 1000), 4_102_444_800_000))
def test_ist_seconds_matches_zoneinfo(ts_ms):
    # Asia/Kolkata has been UTC+05:30 without DST since 1945 (before that: LMT, WWII +06:30).
    d = datetime.fromtimestamp(ts_ms // 1000, IST)
    assert ist_seconds(ts_ms) == d.hour * 3600 + d.minute * 60 + d.second


@given(h=st.integers(0, 23), m=st.integers(0, 59))
def test_parse_clock(h, m):
    assert parse_clock(f"{h:02d}:{m:02d}") == h * 3600 + m * 60


@pytest.mark.parametrize("bad", ["15:15:00", "3:15", "24:00", "12:60", "ab:cd", "", "１２:００"])
def test_parse_clock_refuses(bad):
    with pytest.raises(ConfigError, match="HH:MM"):
        parse_clock(bad)


def test_square_off_due_at_the_ist_cutoff():
    cutoff = parse_clock("15:15")
    at = int(datetime(2026, 3, 2, 15, 15, tzinfo=IST).timestamp() * 1000)
    assert not square_off_due(at - 1, cutoff)
    assert square_off_due(at, cutoff)
    assert square_off_due(at + 3_600_000, cutoff)
    next_morning = int(datetime(2026, 3, 3, 9, 15, tzinfo=IST).timestamp() * 1000)
    assert not square_off_due(next_morning, cutoff)


# ---- order builders ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "code"),
    [
        (Purpose.STOP_LOSS, "SL"),
        (Purpose.TAKE_PROFIT, "TP"),
        (Purpose.SQUARE_OFF, "SQ"),
        (Purpose.FLATTEN, "FL"),
    ],
)
def test_exit_request_closes_the_position_with_a_deterministic_id(purpose, code):
    long = exit_request(Position("3045", 150, 100.0), purpose, "CH-1", 1, OPEN_MS, 0)
    assert (long.side, long.qty, long.order_type) == (Side.SELL, 150, OrderType.MARKET)
    assert long.client_order_id == f"CH-1-{code}0" and long.intent_id == "CH-1"
    assert (long.purpose, long.token, long.exchange_ts_ms) == (purpose, "3045", OPEN_MS)
    short = exit_request(Position("3045", -75, 100.0), purpose, "CH-1", 1, OPEN_MS, 2)
    assert (short.side, short.qty, short.client_order_id) == (Side.BUY, 75, f"CH-1-{code}2")
    assert exit_request(Position("3045", 150, 99.0), purpose, "CH-1", 1, OPEN_MS + 5, 0) == (
        msgspec_replace(long, exchange_ts_ms=OPEN_MS + 5)
    )


def msgspec_replace(req: OrderRequest, **kw) -> OrderRequest:
    import msgspec

    return msgspec.structs.replace(req, **kw)


def test_exit_request_refuses_nonsense():
    with pytest.raises(ChimeraError, match="no position"):
        exit_request(Position("3045", 0, 0.0), Purpose.FLATTEN, "CH-1", 1, OPEN_MS, 0)
    with pytest.raises(ChimeraError, match="exit purpose"):
        exit_request(Position("3045", 5, 1.0), Purpose.ENTRY, "CH-1", 1, OPEN_MS, 0)


def test_child_request():
    parent = OrderRequest("CH-1", "CH-1", "3045", 1, Side.BUY, 1000, purpose=Purpose.ENTRY)
    c = child_request(parent, 3, 250)
    assert (c.client_order_id, c.intent_id, c.qty, c.side) == ("CH-1-c3", "CH-1", 250, Side.BUY)
    assert c.order_type is OrderType.MARKET
    c = child_request(parent, 4, 100, limit_price=100.05)
    assert (c.order_type, c.limit_price, c.client_order_id) == (OrderType.LIMIT, 100.05, "CH-1-c4")
    with pytest.raises(ChimeraError):
        child_request(parent, 0, 0)
