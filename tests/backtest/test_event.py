"""Event mode: bars through the node ``chimera live`` runs, on a simulated clock."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimera_core.config import ThrottleConfig, parse_config
from chimera_core.contracts import Mode
from chimera_core.feed.smartapi_v2 import decode, encode
from chimera_core.strategy import ma_cross_factory
from chimera_execution.smart_execution import Throttler
from tools.backtest.event import (
    ALWAYS_OPEN_MARKET,
    PRINTS_PER_BAR,
    BacktestError,
    SimClock,
    bar_ticks,
    intrabar_path,
    run_event,
)

T0 = 1_735_689_600_000  # 2025-01-01 00:00 UTC


@dataclass
class Bars:
    ts_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    interval_ms: int
    tz: str = "UTC"


def walk(n: int, seed: int = 1, interval_ms: int = 300_000, vol: float = 0.004) -> Bars:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.r_[100.0, close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, vol / 2, n)))
    ts = T0 + np.arange(n, dtype=np.int64) * interval_ms
    return Bars(ts, open_, high, low, close, rng.integers(1_000, 5_000, n).astype(float),
                interval_ms)  # fmt: skip


# Every hour of every day, so the calendar does not decide what is tested.
ALWAYS_OPEN = (
    """
"""
    + ALWAYS_OPEN_MARKET
    + """[logging]
decisions = "none"
level = "WARNING"
"""
)


@given(o=st.floats(1, 1e5), a=st.floats(1, 1e5), b=st.floats(1, 1e5), c=st.floats(1, 1e5))
def test_the_intrabar_path_visits_every_price_low_first_on_up_bars(o, a, b, c):
    high, low = max(o, a, b, c), min(o, a, b, c)
    path = intrabar_path(o, high, low, c)
    assert path[0] == o and path[-1] == c and sorted(path[1:3]) == [low, high]
    assert path[1] == (low if c >= o else high)


def test_bar_ticks_go_through_the_real_codec_in_time_order():
    bars = walk(50, interval_ms=60_000)
    ticks = list(bar_ticks(bars, "2885", 1, latency_ms=50))
    assert len(ticks) == PRINTS_PER_BAR * 50
    for i, tick in enumerate(ticks):
        got = decode(encode(tick), 0)
        assert got.mode == Mode.QUOTE and got.sequence == i + 1
        bar = i // PRINTS_PER_BAR
        assert bars.ts_ms[bar] <= got.exchange_ts_ms < bars.ts_ms[bar] + 60_000
        path = intrabar_path(bars.open[bar], bars.high[bar], bars.low[bar], bars.close[bar])
        assert min(abs(got.ltp - p) for p in path) <= 0.006  # the codec keeps paise
    assert all(b.exchange_ts_ms > a.exchange_ts_ms for a, b in itertools.pairwise(ticks))
    first = ticks[:PRINTS_PER_BAR]
    assert [t.ltp for t in first[:3]] == [bars.open[0]] * 3  # arm, fire, fill at the open
    assert first[1].exchange_ts_ms - first[0].exchange_ts_ms == 51  # latency + 1 ms apart
    assert sum(t.ltq for t in first) == 4 * (int(bars.volume[0]) // 4)
    with pytest.raises(BacktestError, match="too short"):
        list(bar_ticks(walk(2, interval_ms=1_000), "2885", 1, latency_ms=200))


async def test_a_throttled_order_waits_for_simulated_time_not_wall_time():
    clock = SimClock(0)
    throttle = Throttler.from_config(
        ThrottleConfig(per_second=2, per_minute=500, per_hour=1000),
        clock=clock.seconds, guard_s=0.0, sleep=clock.sleep,
    )  # fmt: skip
    done: list[float] = []

    async def take() -> None:
        await throttle.acquire()
        done.append(clock.seconds())

    tasks = [asyncio.ensure_future(take()) for _ in range(3)]
    for _ in range(20):
        await asyncio.sleep(0)
    assert done == [0.0, 0.0] and clock.sleeping == 1  # the third waits, in simulated time
    clock.advance(500_000_000)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(done) == 2
    clock.advance(1_000_000_000)
    await asyncio.gather(*tasks)
    assert done == [0.0, 0.0, 1.0]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    cfg = parse_config("[strategy]\nenergy_threshold = 0.05\n" + ALWAYS_OPEN)
    bars = walk(2_500, seed=7)
    return bars, asyncio.run(run_event(cfg, bars, work_dir=tmp_path_factory.mktemp("bt")))


def test_the_default_strategy_trades_and_the_books_agree(default_run):
    bars, r = default_run
    assert r.bars == 2_500 and r.ticks >= 2_500 * PRINTS_PER_BAR  # + bracket-level prints
    assert len(r.trades) >= 5, "the run must trade for its books to be checked"
    # The account's equity (cash and marks, from the engine's book) against the round
    # trips paired from the fills the paper broker reported: one accounting each.
    assert r.equity[-1] == pytest.approx(r.starting_equity + sum(t.pnl for t in r.trades),
                                         abs=1e-6)  # fmt: skip
    assert r.charges > 0 and r.charges == pytest.approx(sum(t.charges for t in r.trades))
    slip = 1.0 / 10_000  # the paper broker's default slippage, bps
    stops = {t.exit_ts_ms: t for t in r.trades if t.exit_purpose in ("STOP_LOSS", "TAKE_PROFIT")}
    for fill in r.fills:  # every fill inside its bar's range, moved by the slippage only
        i = int(np.searchsorted(bars.ts_ms, fill["ts_ms"], side="right")) - 1
        lo, hi = bars.low[i] * (1 - slip) - 0.006, bars.high[i] * (1 + slip) + 0.006
        assert lo <= fill["price"] <= hi, fill
    assert stops, "brackets must be hit for their fills to be checked"
    for t in r.trades:
        assert t.entry_bar <= t.exit_bar and t.qty > 0 and t.side in ("LONG", "SHORT")
    assert r.transitions.get("FILLED", 0) > 0


def test_the_same_bars_give_the_same_trades(default_run, tmp_path):
    bars, first = default_run
    cfg = parse_config("[strategy]\nenergy_threshold = 0.05\n" + ALWAYS_OPEN)
    again = asyncio.run(run_event(cfg, bars, work_dir=tmp_path))
    assert again.trades == first.trades
    assert np.array_equal(again.equity, first.equity)


def test_ma_cross_enters_at_the_open_after_a_cross_on_closed_bars(tmp_path):
    cfg = parse_config("[governance]\nenabled = false\n" + ALWAYS_OPEN)
    bars = walk(600, seed=3, vol=0.006)
    r = asyncio.run(run_event(cfg, bars, work_dir=tmp_path, strategy=ma_cross_factory(5, 20)))
    assert len(r.trades) >= 3
    close = bars.close
    fast = np.convolve(close, np.ones(5) / 5)[4 : len(close)]  # fast[j]: closes j-4..j
    slow = np.convolve(close, np.ones(20) / 20)[19 : len(close)]
    above = fast[15:] > slow  # above[j - 19]: at close j
    for t in r.trades:
        i = t.entry_bar  # decided on the close before it: a cross there, none after
        j = i - 1 - 19
        crossed_up = above[j] and not above[j - 1]
        crossed_down = not above[j] and above[j - 1]
        assert (crossed_up, crossed_down) == (t.side == "LONG", t.side == "SHORT"), t
        assert t.entry_price == pytest.approx(bars.open[i], rel=2e-4)  # at that bar's open


def test_a_bracket_fills_at_its_level_not_at_the_bars_extreme(default_run):
    """A stop or target crossed inside a bar fills where the path passed it: on the
    bracket's 0.05 grid (before slippage), strictly inside the bar's range, unless the bar
    opened beyond it (a gap: at the open)."""
    bars, r = default_run
    slip = 1.0 / 10_000
    checked = 0
    for t in r.trades:
        if t.exit_purpose not in ("STOP_LOSS", "TAKE_PROFIT"):
            continue
        j = t.exit_bar
        selling = t.side == "LONG"
        level = t.exit_price / (1 - slip if selling else 1 + slip)
        if abs(level - round(bars.open[j], 2)) < 1e-6:
            continue  # gapped through it: filled at the open
        assert abs(level / 0.05 - round(level / 0.05)) < 1e-6, (t, level)
        assert bars.low[j] < level < bars.high[j], (t, level)
        checked += 1
    assert checked >= 3
