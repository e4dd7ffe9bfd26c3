"""The simulator's market model: determinism, tick grid, book shape, session clock."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.contracts import ExchangeType, Mode, Tick
from chimera_core.feed.smartapi_v2 import decode, encode
from chimera_core.tickfile import TickFileReader
from tools.sim.market import Market, Regime
from tools.sim.master import SAMPLE_MASTER
from tools.sim.sample import SAMPLE_PATH, sample_frames

KOLKATA = ZoneInfo("Asia/Kolkata")
ALL_MODES = (Mode.LTP, Mode.QUOTE, Mode.SNAP_QUOTE, Mode.DEPTH)


def _mixed_frames(market: Market, n: int) -> list[bytes]:
    return [encode(market.next_tick(ALL_MODES[i % 4])) for i in range(n)]


def test_same_seed_same_market_byte_for_byte() -> None:
    assert _mixed_frames(Market(seed=11), 3000) == _mixed_frames(Market(seed=11), 3000)


def test_different_seed_different_market() -> None:
    assert _mixed_frames(Market(seed=11), 300) != _mixed_frames(Market(seed=12), 300)


def test_snapshot_does_not_disturb_the_walk() -> None:
    # Looking at the book in any mode must not change what comes next.
    quiet, busy = Market(seed=3), Market(seed=3)
    for _ in range(500):
        token = busy.advance()
        for mode in ALL_MODES:
            busy.snapshot(token, mode)
        quiet.advance()
    assert [encode(quiet.next_tick(Mode.SNAP_QUOTE)) for _ in range(50)] == [
        encode(busy.next_tick(Mode.SNAP_QUOTE)) for _ in range(50)
    ]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_snapshots_carry_only_what_the_wire_carries(mode: Mode) -> None:
    market = Market(seed=5)
    for _ in range(300):
        tick = market.next_tick(mode)
        assert decode(encode(tick)) == tick


def test_start_prices_are_realistic() -> None:
    market = Market(seed=7)
    expected = {"2885": 1300.0, "1594": 1900.0, "3045": 800.0}
    for token, rupees in expected.items():
        first = market.snapshot(token, Mode.QUOTE).prev_close
        assert abs(first - rupees) / rupees < 0.03, (token, first)


def _paise(rupees: float) -> int:
    paise = round(rupees * 100)
    assert abs(rupees * 100 - paise) < 1e-6, rupees
    return paise


def _on_grid(rupees: float) -> bool:
    return _paise(rupees) % 5 == 0


def test_every_price_is_on_the_tick_grid_and_the_book_is_ordered() -> None:
    market = Market(seed=9)
    for _ in range(3000):
        token = market.advance()
        snap = market.snapshot(token, Mode.SNAP_QUOTE)
        depth = market.snapshot(token, Mode.DEPTH)
        prices = [
            snap.ltp, snap.open, snap.high, snap.low, snap.prev_close, snap.upper_circuit,
            snap.lower_circuit, snap.week52_high, snap.week52_low,
            *(lvl.price for lvl in snap.bids + snap.asks + depth.bids + depth.asks),
        ]  # fmt: skip
        assert all(_on_grid(p) for p in prices), prices
        for tick, levels in ((snap, 5), (depth, 20)):
            assert len(tick.bids) == len(tick.asks) == levels
            bid, ask = tick.best_bid, tick.best_ask
            assert _paise(ask) - _paise(bid) >= 5  # spread of at least one tick
            assert [lvl.price for lvl in tick.bids] == sorted(
                {lvl.price for lvl in tick.bids}, reverse=True
            )
            assert [lvl.price for lvl in tick.asks] == sorted({lvl.price for lvl in tick.asks})
            assert all(0 < lvl.orders <= lvl.qty for lvl in tick.bids + tick.asks)
        assert snap.best_bid <= snap.ltp <= snap.best_ask
        assert snap.lower_circuit <= snap.low <= snap.ltp <= snap.high <= snap.upper_circuit
        assert snap.low <= snap.avg_price <= snap.high  # VWAP of the day's trades
        assert snap.week52_low <= snap.low and snap.high <= snap.week52_high
        assert snap.total_buy_qty == int(snap.total_buy_qty) > 0
        assert snap.total_sell_qty == int(snap.total_sell_qty) > 0
        assert depth.packet_received_ms > depth.exchange_ts_ms


def test_sequence_rises_by_exactly_one_per_token_tick() -> None:
    market = Market(seed=4)
    last: dict[str, int] = {}
    for i in range(3000):
        tick = market.next_tick((Mode.LTP, Mode.QUOTE, Mode.SNAP_QUOTE)[i % 3])
        if tick.token in last:
            assert tick.sequence == last[tick.token] + 1
        last[tick.token] = tick.sequence
    assert set(last) == set(market.tokens)


def _ist(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, KOLKATA)


def test_exchange_time_starts_at_the_open_and_stays_in_market_hours() -> None:
    market = Market(seed=7)
    first = _ist(market.next_tick(Mode.LTP).exchange_ts_ms)
    assert first.time() == time(9, 15) and first.weekday() < 5
    previous = first
    steps = []
    for _ in range(5000):
        now = _ist(market.next_tick(Mode.LTP).exchange_ts_ms)
        steps.append((now - previous) / timedelta(milliseconds=1))
        assert time(9, 15) <= now.time() <= time(15, 30) and now.weekday() < 5
        previous = now
    assert min(steps) >= 20 and max(steps) <= 400


def test_session_rolls_to_the_next_weekday_with_a_fresh_day() -> None:
    # Minutes per tick: a few hundred ticks make a session, a few thousand a fortnight.
    market = Market(seed=21, tick_interval_ms=(60_000, 120_000))
    last_of_day: dict[str, Tick] = {}
    day_of: dict[str, object] = {}
    sessions = []
    weekend_crossed = False
    for _ in range(4000):
        tick = market.next_tick(Mode.QUOTE)
        now = _ist(tick.exchange_ts_ms)
        assert time(9, 15) <= now.time() <= time(15, 30) and now.weekday() < 5
        if not sessions or sessions[-1] != now.date():
            if sessions:
                gap = (now.date() - sessions[-1]).days
                expected_gap = 3 if sessions[-1].weekday() == 4 else 1
                assert gap == expected_gap, (sessions[-1], now.date())
                weekend_crossed |= gap == 3
                assert now.time() == time(9, 15)
            sessions.append(now.date())
        previous = last_of_day.get(tick.token)
        if previous is not None and day_of[tick.token] != now.date():
            # First tick of the day for this token: volume and OHLC start over.
            assert tick.prev_close == previous.ltp
            assert tick.volume == tick.ltq > 0
            assert tick.open == tick.high == tick.low == tick.ltp
        elif previous is not None:
            assert tick.prev_close == previous.prev_close
            assert tick.volume >= previous.volume
        last_of_day[tick.token] = tick
        day_of[tick.token] = now.date()
    assert len(sessions) >= 8 and weekend_crossed


def test_regimes_switch_over_a_session() -> None:
    market = Market(seed=7)
    seen = set()
    for _ in range(60_000):
        seen.add(market.regime(market.advance()))
    assert seen == set(Regime)


def test_open_interest_only_for_derivatives() -> None:
    cash = Market(("2885",), seed=1)
    futures = Market(("35001",), seed=1, exchange_type=ExchangeType.NSE_FO)
    cash_ticks = [cash.next_tick(Mode.SNAP_QUOTE) for _ in range(300)]
    fo_ticks = [futures.next_tick(Mode.SNAP_QUOTE) for _ in range(300)]
    assert all(t.open_interest == 0 and t.oi_change_pct == 0.0 for t in cash_ticks)
    assert all(t.open_interest > 0 for t in fo_ticks)
    assert any(t.oi_change_pct != 0.0 for t in fo_ticks)
    assert all(t.exchange_type == ExchangeType.NSE_FO for t in fo_ticks)


def test_per_token_volume_is_cumulative_within_the_day() -> None:
    market = Market(seed=2)
    volume: dict[str, int] = defaultdict(int)
    for _ in range(2000):
        tick = market.next_tick(Mode.QUOTE)
        assert tick.volume >= volume[tick.token]
        assert tick.volume - volume[tick.token] in (0, tick.ltq)  # a trade adds its quantity
        volume[tick.token] = tick.volume


def test_shipped_sample_is_the_seeded_market_and_small() -> None:
    assert SAMPLE_PATH.stat().st_size < 400_000
    shipped = list(TickFileReader(SAMPLE_PATH))
    assert shipped == sample_frames()
    ticks = [decode(frame) for _, frame in shipped]
    assert {t.token for t in ticks} == {"2885", "1594", "3045"}
    assert {t.mode for t in ticks} == {Mode.QUOTE}


# -- several segments in one market ----------------------------------------------------

NIFTY_FUT = "35006"  # NIFTY26DEC24FUT in tools/sim/master.py: lot 75, tick ₹0.10
MIXED = ("2885", "1594", (ExchangeType.NSE_FO, NIFTY_FUT))


def _master_row(token: str) -> dict[str, str]:
    return next(r for r in SAMPLE_MASTER if r["token"] == token and r["exch_seg"] == "NFO")


def test_one_market_ticks_cash_and_fo_each_with_its_own_exchange_type() -> None:
    market = Market(MIXED, seed=7)
    assert market.instruments == ((1, "2885"), (1, "1594"), (2, NIFTY_FUT))
    assert market.exchange_types == {ExchangeType.NSE_CM, ExchangeType.NSE_FO}
    ticks = [market.next_tick(ALL_MODES[i % 4]) for i in range(3000)]
    segment = {t.token: t.exchange_type for t in ticks}
    assert segment == {"2885": ExchangeType.NSE_CM, "1594": ExchangeType.NSE_CM,
                       NIFTY_FUT: ExchangeType.NSE_FO}  # fmt: skip
    for tick in ticks:
        frame = encode(tick)
        assert frame[1] == tick.exchange_type
        assert decode(frame) == tick
    snaps = [t for t in ticks if t.mode == Mode.SNAP_QUOTE]
    assert all(t.open_interest > 0 for t in snaps if t.token == NIFTY_FUT)
    assert all(t.open_interest == 0 for t in snaps if t.token != NIFTY_FUT)


def test_the_fo_contract_trades_at_its_master_lot_tick_and_price_level() -> None:
    row = _master_row(NIFTY_FUT)
    market = Market(MIXED, seed=3)
    lot, tick_paise = int(row["lotsize"]), round(float(row["tick_size"]))
    assert (lot, tick_paise) == (75, 10)
    assert market.lot_size(NIFTY_FUT) == lot
    assert market.tick_size(NIFTY_FUT, ExchangeType.NSE_FO) == tick_paise / 100
    assert market.lot_size("2885") == 1 and market.tick_size("2885") == 0.05
    for _ in range(6000):
        exchange_type, token = market.advance_key()
        if token != NIFTY_FUT:
            continue
        snap = market.snapshot(token, Mode.SNAP_QUOTE, exchange_type)
        depth = market.snapshot(token, Mode.DEPTH, exchange_type)
        # A NIFTY future trades near the index, not in the equity range.
        assert 20_000 < snap.ltp < 30_000, snap.ltp
        prices = [snap.ltp, snap.open, snap.high, snap.low, snap.prev_close, snap.upper_circuit,
                  snap.lower_circuit, *(lvl.price for lvl in snap.bids + snap.asks),
                  *(lvl.price for lvl in depth.bids + depth.asks)]  # fmt: skip
        assert all(_paise(p) % tick_paise == 0 for p in prices), prices
        assert snap.ltq % lot == 0 and snap.volume % lot == 0 and snap.open_interest % lot == 0
        assert _paise(snap.best_ask) - _paise(snap.best_bid) >= tick_paise


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), order=st.permutations(MIXED))
def test_a_mixed_market_is_seeded_and_counts_sequence_per_instrument(
    seed: int, order: list[str | tuple[int, str]]
) -> None:
    def frames(market: Market) -> list[bytes]:
        # No DEPTH: its packets carry no sequence.
        return [encode(market.next_tick(ALL_MODES[i % 3])) for i in range(600)]

    first = frames(Market(order, seed=seed))
    assert first == frames(Market(order, seed=seed))
    last: dict[tuple[int, str], int] = {}
    for tick in map(decode, first):
        key = (tick.exchange_type, tick.token)
        if key in last:
            assert tick.sequence == last[key] + 1
        last[key] = tick.sequence
    assert set(last) == {(1, "2885"), (1, "1594"), (2, NIFTY_FUT)}


def test_the_same_token_on_two_segments_is_two_instruments() -> None:
    market = Market(["1594", (ExchangeType.BSE_CM, "1594")], seed=1)
    ticks = [market.next_tick(Mode.QUOTE) for _ in range(20)]
    assert {(t.exchange_type, t.token) for t in ticks} == {(1, "1594"), (3, "1594")}
    assert market.knows(ExchangeType.BSE_CM, "1594") and not market.knows(2, "1594")
    with pytest.raises(ValueError, match=r"'1594' is on several segments \(NSE_CM, BSE_CM\)"):
        market.snapshot("1594", Mode.LTP)
    assert market.snapshot("1594", Mode.LTP, ExchangeType.BSE_CM).exchange_type == 3


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (["2885", (1, "2885")], "duplicate"),
        ([(6, "2885")], "unknown exchange type 6 for token '2885'"),
        ([(2, "")], "non-empty"),
    ],
)
def test_bad_instruments_are_refused_by_name(tokens: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Market(tokens)
