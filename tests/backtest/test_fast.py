"""Fast mode against the live code it mirrors.

The reference here is a plain-Python bar loop written from the bar-step rules in
tools/backtest/fast.py's docstring, that takes every rule from the live components
themselves: DefaultStrategy.evaluate / exit_reason on PhysicsState built from
chimera_core.physics' series, Bracket.from_entry / check, ChargeCalculator.charges and
chimera_governance.exposure.fit. Fast mode must give the same trades and equity.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core import physics
from chimera_core.config import ChargesConfig, Config, parse_config
from chimera_core.contracts import (
    AccountSnapshot,
    Band,
    ExchangeType,
    Mode,
    PhysicsState,
    Side,
    Signal,
    Structure,
    Tick,
)
from chimera_core.feed.smartapi_v2 import decode, encode
from chimera_core.markets import MarketConfig, calendar_for
from chimera_core.strategy import DefaultStrategy, MovingAverageCross
from chimera_execution.charges import ChargeCalculator
from chimera_execution.smart_execution import Bracket
from chimera_governance.exposure import ExposureLimits, fit
from tools.backtest import fast, strategies
from tools.backtest.fast import FastSettings
from tools.backtest.metrics import EXIT_REASONS
from tools.backtest.rolling import BacktestInputError

MS_2024 = int(datetime(2024, 6, 3, 4, 0, tzinfo=UTC).timestamp() * 1000)  # 2023-04 schedule
MS_2025 = int(datetime(2025, 6, 2, 4, 0, tzinfo=UTC).timestamp() * 1000)  # 2024-10 schedule
MINUTE = 60_000


def bars(seed: int, n: int, vol: float = 0.004, tick: float | None = 0.05, start: float = 500.0):
    """A random-walk OHLC series; on the tick grid (as exchange prints are) unless tick None."""
    rng = np.random.default_rng(seed)
    close = start * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    open_ = np.concatenate(([start], close[:-1])) * np.exp(rng.normal(0.0, vol / 4, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, vol / 2, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, vol / 2, n)))
    if tick is not None:

        def grid(x: np.ndarray) -> np.ndarray:
            return np.round(np.round(x / tick) * tick, 8)

        open_, close = grid(open_), grid(close)
        high = np.maximum(grid(high), np.maximum(open_, close))
        low = np.minimum(grid(low), np.minimum(open_, close))
    volume = rng.integers(1, 1000, n).astype(np.float64)
    return open_, high, low, close, volume


# ---------------------------------------------------------------------------------------
# Charges: the njit schedule against ChargeCalculator
# ---------------------------------------------------------------------------------------

SEGMENT_CASES = [
    ("NSE_CM", "INTRADAY", None),
    ("NSE_CM", "DELIVERY", None),
    ("BSE_CM", "INTRADAY", None),
    ("BSE_CM", "DELIVERY", None),
    ("NSE_FO", "INTRADAY", "FUT"),
    ("NSE_FO", "CARRYFORWARD", "OPT"),
    ("BSE_FO", "INTRADAY", "OPT"),
    ("CDE_FO", "INTRADAY", "FUT"),
    ("CDE_FO", "INTRADAY", "OPT"),
    ("MCX_FO", "INTRADAY", "FUT"),
    ("MCX_FO", "DELIVERY", "OPT"),
]

grid_prices = st.integers(1, 2_000_000).map(lambda t: t / 100.0)  # paise: exchange prints
any_prices = st.floats(0.01, 1e5, allow_nan=False, allow_infinity=False)
quantities = st.integers(1, 100_000)


@settings(max_examples=400, deadline=None)
@given(
    case=st.sampled_from(SEGMENT_CASES),
    equity_cfg=st.booleans(),
    buy=st.booleans(),
    qty=quantities,
    price=st.one_of(grid_prices, any_prices),
    slip_bps=st.sampled_from([0.0, 1.0, 2.5, 10.0]),
    ts=st.sampled_from([MS_2024, MS_2025, 0]),
)
def test_schedule_charges_equal_charge_calculator(
    case, equity_cfg, buy, qty, price, slip_bps, ts
) -> None:
    market, product, kind = case
    s = FastSettings(
        market=market,
        product=product,
        kind=kind,
        equity_charges=ChargesConfig() if equity_cfg else None,
    )
    px = price * (1 + slip_bps / 1e4) if buy else price * (1 - slip_bps / 1e4)
    starts, table = fast.charge_table(s)
    version = int(fast.charge_versions(starts, np.array([ts], dtype=np.int64), 1)[0])
    got = fast.fill_charges(table, version, buy, qty, px)
    calc = ChargeCalculator(equity=s.equity_charges)
    want = calc.charges(
        Side.BUY if buy else Side.SELL, qty, px, market=market, product=product, ts_ms=ts, kind=kind
    ).total
    assert got == pytest.approx(want, abs=1e-9), (market, product, kind, buy, qty, px)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(["percent", "fixed", "none"]),
    rate=st.floats(0.0, 2.0, allow_nan=False),
    amount=st.floats(0.0, 100.0, allow_nan=False),
    buy=st.booleans(),
    qty=quantities,
    price=st.one_of(grid_prices, any_prices),
)
def test_simple_charge_models_equal_charge_calculator(model, rate, amount, buy, qty, price) -> None:
    s = FastSettings(commission=model, commission_pct=rate, commission_fixed=amount)
    _, table = fast.charge_table(s)
    got = fast.fill_charges(table, 0, buy, qty, price)
    calc = ChargeCalculator(
        markets={"X": MarketConfig(charges=model, charges_pct=rate, charges_fixed=amount)}
    )
    want = calc.charges(
        Side.BUY if buy else Side.SELL, qty, price, market="X", product="INTRADAY", ts_ms=MS_2025
    ).total
    assert got == pytest.approx(want, abs=1e-9)


def test_exact_half_paisa_ties_round_up_as_the_calculator() -> None:
    # 0.0000375 x 50,000 = 1.875 rupees exactly (BSE's exchange charge): float says 1.8749...
    s = FastSettings(market="BSE_CM", equity_charges=None)
    starts, table = fast.charge_table(s)
    v = int(fast.charge_versions(starts, np.array([MS_2025]), 1)[0])
    got = fast.fill_charges(table, v, False, 500, 100.0)
    want = ChargeCalculator().charges(
        Side.SELL, 500, 100.0, market="BSE_CM", product="INTRADAY", ts_ms=MS_2025
    )
    assert want.exchange_txn == 1.88
    assert got == want.total


# ---------------------------------------------------------------------------------------
# Brackets: the njit levels against Bracket.from_entry
# ---------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    long=st.booleans(),
    entry_ticks=st.integers(2, 400_000),
    off=st.floats(-0.49, 0.49),
    atr=st.floats(1e-4, 500.0),
    stop=st.floats(0.1, 10.0),
    take=st.floats(0.1, 10.0),
    tick=st.sampled_from([0.05, 0.01, 0.0025, 0.1, 1.0]),
)
def test_bracket_levels_equal_bracket_from_entry(long, entry_ticks, off, atr, stop, take, tick):
    entry = (entry_ticks + off) * tick
    side = Side.BUY if long else Side.SELL
    try:
        want = Bracket.from_entry(side, entry, atr, stop, take, tick_size=tick)
    except Exception:
        want = None
    ok, got_stop, got_target = fast.bracket_levels(1 if long else -1, entry, atr, stop, take, tick)
    if want is None:
        assert not ok
    else:
        assert ok
        assert (got_stop, got_target) == (want.stop, want.target)


# ---------------------------------------------------------------------------------------
# Signals: the default strategy's direction against DefaultStrategy.evaluate
# ---------------------------------------------------------------------------------------


def live_physics(close, high, low, energy_n, z_n, band_n, k, atr_n):
    """PhysicsState at each bar's last tick, from chimera_core.physics' series."""
    energy = physics.energy_series(close, energy_n)
    z = physics.zscore_series(close, z_n)
    mean, std, code = physics.gaussian_bands(close, band_n, k)
    atr = physics.atr_series(high, low, close, atr_n)
    by_code = {0: Band.NEUTRAL, 1: Band.BREAKOUT, -1: Band.BREAKDOWN}
    states = []
    for i in range(close.size):
        zi = z[i]
        structure = (
            Structure.WARMUP
            if zi != zi
            else Structure.VACUUM
            if abs(zi) >= 1
            else Structure.TRAPPED
        )
        band = Band.WARMUP if i + 1 < band_n else by_code[int(code[i])]
        states.append(
            PhysicsState(
                float(close[i]),
                i,
                float(energy[i]),
                float(zi),
                structure,
                band,
                float(mean[i]),
                float(std[i]),
                math.nan,
                float(atr[i - 1]) if i else math.nan,
            )
        )
    return states


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    energy_n=st.integers(2, 40),
    z_n=st.integers(2, 80),
    band_n=st.integers(2, 160),
    k=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]),
    threshold=st.sampled_from([0.01, 0.05, 0.1, 0.2]),
    flat=st.booleans(),
)
def test_default_signals_equal_default_strategy_evaluate(
    seed, energy_n, z_n, band_n, k, threshold, flat
) -> None:
    _, h, lo, c, _ = bars(seed, 600)
    if flat:
        c[200:320] = c[200]  # a frozen quote: z = 0, NEUTRAL band, exactly
    direction = np.empty(c.size, dtype=np.int8)
    energy = np.empty(c.size)
    fast.default_signals(
        c, energy_n, z_n, band_n, k, threshold, 0.25 * threshold, direction, energy
    )
    strategy = DefaultStrategy(threshold)
    want = [
        strategy.evaluate(p)[0].direction
        for p in live_physics(c, h, lo, energy_n, z_n, band_n, k, 14)
    ]
    assert direction.tolist() == want
    assert (direction != 0).any() or threshold >= 0.1  # the series does trade at low thresholds


# ---------------------------------------------------------------------------------------
# The reference bar loop (live components, plain Python)
# ---------------------------------------------------------------------------------------


def on_feed_grid(s: FastSettings, *arrays):
    """The prices as the feed's codec carries them: round(price x divisor) / divisor
    (smartapi_v2's encode / decode), element by element in Python."""
    d = s.price_divisor
    if not d:
        return arrays
    return tuple(np.array([round(x * d) / d for x in a.tolist()]) for a in arrays)


def path_prints(o, first, second, c, levels):
    """A bar's prints as event mode replays it: the open three times, then each leg's end
    twice, with every level (``levels()``, asked before each leg) the leg passes strictly
    through printed twice on the way."""
    yield from (o, o, o)
    prev = o
    for b in (first, second, c):
        inside = sorted(x for x in levels() if min(prev, b) < x < max(prev, b))
        for x in inside if b > prev else inside[::-1]:
            yield from (x, x)
        yield from (b, b)
        prev = b


def reference_run(
    o,
    h,
    lo,
    c,
    s: FastSettings,
    decide,
    ts_ms=None,
    entries_ok=None,
    square=None,
    delays=None,
    reverse=False,
    closed_bar_signal=False,
):
    """``decide(i, sign, held_bars)`` -> (entry direction, exit reason name or "").

    A print-by-print replay of each bar (``path_prints``): an order decided on a print
    fills at the next one — a bracket the print reaches (``Bracket.check``), the exit
    decided at the previous close (on the open's first print; the bracket goes first) —
    and the entry decided there fills on the open's third print, or ``delays[j]`` prints
    later."""
    up = (c >= o).tolist()  # the path is chosen on the prices as given
    o, h, lo, c = on_feed_grid(s, o, h, lo, c)
    arrays = (h, lo, c)
    o, h, lo, c = (x.tolist() for x in (o, h, lo, c))  # Python floats (Decimal reads repr)
    n = len(c)
    slip = s.slippage_bps / 10_000.0
    if s.commission == "schedule":
        calc = ChargeCalculator(equity=s.equity_charges)
        market = s.market
    else:
        calc = ChargeCalculator(
            markets={
                "X": MarketConfig(
                    charges=s.commission,
                    charges_pct=s.commission_pct,
                    charges_fixed=s.commission_fixed,
                )
            }
        )
        market = "X"

    def charge(buy: bool, qty: int, px: float, j: int) -> float:
        ts = int(ts_ms[j]) if ts_ms is not None else 4_102_444_800_000  # 2100: newest schedule
        return calc.charges(
            Side.BUY if buy else Side.SELL,
            qty,
            px,
            market=market,
            product=s.product,
            ts_ms=ts,
            kind=s.kind,
        ).total

    limits = ExposureLimits(
        s.max_position_value, s.max_position_qty, s.max_gross_exposure, s.max_net_exposure
    )
    cash = s.initial_equity
    sign = held = 0
    fill_bar = -1
    last_entry = -(10**9)
    bracket = None
    pending_exit = None  # reason of the exit decided at the previous close
    pending_entry = None  # (side, qty, atr) decided there
    trades: list[dict] = []
    equity, position = [], []

    def open_trade(j, d, qty, level, atr):
        nonlocal cash, sign, held, fill_bar, last_entry, bracket
        px = level * (1 + slip) if d > 0 else level * (1 - slip)
        ch = charge(d > 0, qty, px, j)
        cash -= d * qty * px + ch
        sign, held, fill_bar, last_entry = d, qty, j, j
        trades.append(
            {
                "entry_bar": j,
                "exit_bar": -1,
                "side": d,
                "qty": qty,
                "entry_price": px,
                "exit_price": math.nan,
                "charges": ch,
                "exit_reason": "open",
            }
        )
        bracket = None
        if s.brackets:
            try:
                bracket = Bracket.from_entry(
                    Side.BUY if d > 0 else Side.SELL,
                    px,
                    atr,
                    s.stop_atr_multiple,
                    s.take_profit_atr_multiple,
                    tick_size=s.tick_size,
                )
            except Exception:
                bracket = None

    def close_trade(j, level, why):
        nonlocal cash, sign, held, bracket
        buy = sign < 0
        px = level * (1 + slip) if buy else level * (1 - slip)
        ch = charge(buy, held, px, j)
        cash += sign * held * px - ch
        t = trades[-1]
        t.update(exit_bar=j, exit_price=px, charges=t["charges"] + ch, exit_reason=why)
        sign = held = 0
        bracket = None

    for j in range(n):
        first, second = (lo[j], h[j]) if up[j] else (h[j], lo[j])
        working = None  # the exit order decided on the last print: fills on this one
        entry_at = 2 + (int(delays[j]) if delays is not None else 0)

        def levels():  # asked by this bar's prints only, as they are replayed
            if sign and bracket is not None and working is None:  # noqa: B023
                return (bracket.stop, bracket.target)
            return ()

        for k, price in enumerate(path_prints(o[j], first, second, c[j], levels)):
            if working is not None:
                close_trade(j, price, working)
                working = None
            if pending_entry is not None and k == entry_at:
                open_trade(j, *pending_entry[:2], price, pending_entry[2])
                pending_entry = None
            if sign and bracket is not None and working is None:
                hit = bracket.check(price)
                if hit is not None:
                    working = hit.value.lower()
            if k == 0 and sign and working is None and pending_exit is not None:
                working = pending_exit
            if k == 0:
                pending_exit = None
        assert working is None and pending_entry is None, "every order fills inside its bar"

        d, why = decide(j, sign, j - fill_bar)
        was_flat = not sign
        exiting = False
        if sign:
            if square is not None and square[j]:
                why = "square_off"
            if why:
                exiting = True
                if s.fill == "next_open":
                    pending_exit = why
                else:
                    close_trade(j, c[j], why)
        fill_at = j + 1 if s.fill == "next_open" else j
        if (
            d
            and (was_flat or (reverse and exiting))
            and not (s.long_only and d < 0)
            and (entries_ok is None or entries_ok[j])
            and (square is None or not square[j])
            and fill_at - last_entry >= s.cooldown_bars
            and fill_at < n
        ):
            ref = c[j]
            px = ref * (1 + slip) if d > 0 else ref * (1 - slip)
            lot = 1 if s.sizing == "fixed" else s.lot_size
            mark = cash + sign * held * ref
            if s.sizing == "fixed":
                qty = s.qty
            elif s.sizing == "lots":
                qty = s.lots * s.lot_size
            else:
                budget = s.equity_fraction * mark
                qty = math.floor(budget / px / lot) * lot
                while qty > 0 and qty * px + charge(d > 0, qty, px, j) > budget:
                    qty -= lot
            account = AccountSnapshot(mark, mark, 0.0, 0.0, 0.0, 0.0, 0.0, 0, {}, {}, {}, {})
            qty, _ = fit(account, "T", Side.BUY if d > 0 else Side.SELL, qty, ref, limits, lot)
            if qty > 0:
                # The ATR the node has when the entry is decided: through the last closed
                # bar (the decision bar itself when the signal is read at the next open).
                end = j if (closed_bar_signal and s.fill == "next_open") else j - 1
                atr = (
                    physics.atr_at(*arrays, end, s.atr_lookback)
                    if end >= s.atr_lookback
                    else math.nan
                )
                if s.fill == "next_open":
                    pending_entry = (d, qty, atr)
                else:
                    open_trade(j, d, qty, c[j], atr)
        equity.append(cash + sign * held * c[j])
        position.append(sign * held)
    return trades, np.array(equity), np.array(position)


def default_decider(c, h, lo, energy_n, z_n, band_n, k, threshold, s: FastSettings):
    c, h, lo = on_feed_grid(s, c, h, lo)
    states = live_physics(c, h, lo, energy_n, z_n, band_n, k, s.atr_lookback)
    strategy = DefaultStrategy(
        threshold, s.exit_energy_ratio, s.exit_on_reversal, s.max_hold_bars * MINUTE
    )
    signals = [strategy.evaluate(p)[0] for p in states]

    def decide(i, sign, held_bars):
        why = strategy.exit_reason(states[i], signals[i], sign, held_bars * MINUTE) if sign else ""
        return signals[i].direction, why

    return decide


def ma_decider(c, fast_n, slow_n, s: FastSettings):
    (c,) = on_feed_grid(s, c)
    closes = pd.Series(c)
    f = closes.rolling(fast_n).mean().to_numpy()
    sl = closes.rolling(slow_n).mean().to_numpy()
    # Means closer than 1e-10 of the slow one are equal (no signal), MovingAverageCross's
    # rule; an entry only on a cross: both directions non-zero and different.
    tie = 1e-10 * np.abs(sl)
    direction = np.where(f - sl > tie, 1, np.where(f - sl < -tie, -1, 0))
    strategy = DefaultStrategy(1.0, 0.0, s.exit_on_reversal, s.max_hold_bars * MINUTE)

    def decide(i, sign, held_bars):
        d = int(direction[i])
        before = int(direction[i - 1]) if i else 0
        cross = d if (before and d and d != before) else 0
        why = (
            strategy.exit_reason(
                PhysicsState(
                    0.0, 0, math.nan, 0.0, Structure.TRAPPED, Band.NEUTRAL, 0.0, 0.0, 0.0, 0.0
                ),
                Signal(d, ""),
                sign,
                held_bars * MINUTE,
            )
            if sign
            else ""
        )
        return cross, why

    return decide


def assert_same_run(result: fast.FastResult, trades: list[dict], equity, position) -> None:
    got = result.trades
    assert len(got) == len(trades)
    for i, t in enumerate(trades):
        row = {
            "entry_bar": int(got.entry_bar[i]),
            "exit_bar": int(got.exit_bar[i]),
            "side": int(got.side[i]),
            "qty": int(got.qty[i]),
            "exit_reason": EXIT_REASONS[int(got.exit_reason[i])],
        }
        want = {k: t[k] for k in row}
        assert row == want, (i, row, want)
        assert got.entry_price[i] == pytest.approx(t["entry_price"], rel=1e-12)
        if t["exit_bar"] >= 0:
            assert got.exit_price[i] == pytest.approx(t["exit_price"], rel=1e-12)
            pnl = t["side"] * t["qty"] * (t["exit_price"] - t["entry_price"]) - t["charges"]
            assert got.pnl[i] == pytest.approx(pnl, rel=1e-9, abs=1e-6)
        assert got.charges[i] == pytest.approx(t["charges"], abs=1e-9)
    np.testing.assert_allclose(result.equity, equity, rtol=1e-12, atol=1e-6)
    assert result.position.tolist() == position.tolist()


run_settings = st.builds(
    FastSettings,
    fill=st.sampled_from(["close", "next_open"]),
    commission=st.sampled_from(["schedule", "percent", "fixed", "none"]),
    commission_pct=st.sampled_from([0.0, 0.03, 0.1]),
    commission_fixed=st.sampled_from([0.0, 20.0]),
    product=st.sampled_from(["INTRADAY", "DELIVERY"]),
    slippage_bps=st.sampled_from([0.0, 1.0, 5.0]),
    price_divisor=st.sampled_from([0.0, 100.0]),
    sizing=st.sampled_from(["fixed", "lots", "equity_fraction"]),
    qty=st.integers(1, 500),
    lots=st.integers(1, 5),
    lot_size=st.sampled_from([1, 25, 75]),
    equity_fraction=st.sampled_from([0.1, 0.5, 1.0]),
    long_only=st.booleans(),
    brackets=st.booleans(),
    stop_atr_multiple=st.sampled_from([0.5, 1.0, 2.0]),
    take_profit_atr_multiple=st.sampled_from([0.5, 1.5, 3.0]),
    exit_on_reversal=st.booleans(),
    exit_energy_ratio=st.sampled_from([0.0, 0.25, 0.5]),
    max_hold_bars=st.sampled_from([0, 5, 30]),
    cooldown_bars=st.sampled_from([0, 1, 3]),
    max_position_value=st.sampled_from([50_000.0, 200_000.0, 1e9]),
    max_gross_exposure=st.sampled_from([0.5, 2.0]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    s=run_settings,
    seed=st.integers(0, 10_000),
    with_ts=st.booleans(),
    masks=st.booleans(),
    on_grid=st.booleans(),
)
def test_default_strategy_equals_reference_loop(s, seed, with_ts, masks, on_grid) -> None:
    o, h, lo, c, v = bars(seed, 500, tick=0.05 if on_grid else None)
    ts = (
        (MS_2024 + 40 * 86_400_000 * 3 + np.arange(c.size) * MINUTE * 60 * 24 // 2).astype(np.int64)
        if with_ts
        else None
    )  # crosses 1 Oct 2024: two schedule versions
    rng = np.random.default_rng(seed)
    ok = rng.random(c.size) > 0.1 if masks else None
    sq = rng.random(c.size) > 0.97 if masks else None
    delays = rng.choice(np.array([0, 0, 0, 1, 2], dtype=np.int8), c.size) if masks else None
    args = (20, 30, 40, 1.0, 0.05)
    result = fast.default_strategy(
        o,
        h,
        lo,
        c,
        v,
        settings=s,
        energy_lookback=args[0],
        z_lookback=args[1],
        band_lookback=args[2],
        band_k=args[3],
        energy_threshold=args[4],
        ts_ms=ts,
        entries_allowed=ok,
        square_off=sq,
        open_delay=delays,
    )
    decide = default_decider(c, h, lo, *args, s)
    trades, equity, position = reference_run(o, h, lo, c, s, decide, ts, ok, sq, delays)
    assert_same_run(result, trades, equity, position)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    s=run_settings,
    seed=st.integers(0, 10_000),
    fast_n=st.integers(1, 10),
    slow_n=st.integers(11, 40),
    on_grid=st.booleans(),
    with_delays=st.booleans(),
    vol=st.sampled_from([0.00002, 0.004]),
)
def test_ma_cross_equals_reference_loop(s, seed, fast_n, slow_n, on_grid, with_delays, vol) -> None:
    # vol 2e-5: an ATR under a tick, so stops sit at the entry's own print.
    o, h, lo, c, v = bars(seed, 500, vol=vol, tick=0.05 if on_grid else None)
    rng = np.random.default_rng(seed)
    delays = rng.choice(np.array([0, 0, 0, 1, 2], dtype=np.int8), c.size) if with_delays else None
    result = fast.ma_cross(o, h, lo, c, v, settings=s, fast=fast_n, slow=slow_n, open_delay=delays)
    decide = ma_decider(c, fast_n, slow_n, s)
    trades, equity, position = reference_run(
        o, h, lo, c, s, decide, delays=delays, reverse=True, closed_bar_signal=True
    )
    assert_same_run(result, trades, equity, position)


def test_the_reference_run_exercises_every_exit() -> None:
    """The property tests above are only as good as the paths they reach."""
    seen: set[str] = set()
    for seed in range(6):
        o, h, lo, c, v = bars(seed, 2000)
        for s in (
            FastSettings(brackets=True, stop_atr_multiple=1.0, take_profit_atr_multiple=1.0),
            FastSettings(brackets=False, max_hold_bars=5),
            FastSettings(brackets=False, exit_energy_ratio=0.0),
            FastSettings(
                brackets=False, exit_on_reversal=False, exit_energy_ratio=0.0, max_hold_bars=0
            ),
        ):
            sq = np.zeros(c.size, dtype=bool)
            sq[::97] = True
            r = fast.default_strategy(
                o,
                h,
                lo,
                c,
                v,
                settings=s,
                z_lookback=30,
                band_lookback=40,
                energy_threshold=0.05,
                square_off=sq,
            )
            seen |= {EXIT_REASONS[x] for x in r.trades.exit_reason}
    assert seen == set(EXIT_REASONS)


# ---------------------------------------------------------------------------------------
# No look-ahead
# ---------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cut=st.integers(50, 398),
    fill=st.sampled_from(["close", "next_open"]),
    strategy=st.sampled_from(["default", "ma_cross"]),
    brackets=st.booleans(),
)
def test_bars_after_i_never_change_decisions_at_or_before_i(
    seed, cut, fill, strategy, brackets
) -> None:
    o, h, lo, c, v = bars(seed, 400)
    o2, h2, lo2, c2, v2 = (x.copy() for x in (o, h, lo, c, v))
    # Replace everything after bar `cut` with an unrelated series.
    po, ph, plo, pc, pv = bars(seed + 1, 400, start=float(c[cut]) * 1.3)
    for a, b in ((o2, po), (h2, ph), (lo2, plo), (c2, pc), (v2, pv)):
        a[cut + 1 :] = b[cut + 1 :]
    s = FastSettings(
        fill=fill,
        brackets=brackets,
        sizing="equity_fraction",
        equity_fraction=0.1,
        stop_atr_multiple=1.0,
        max_hold_bars=7,
    )

    def run(*arrays):
        if strategy == "default":
            return fast.default_strategy(
                *arrays, settings=s, z_lookback=30, band_lookback=40, energy_threshold=0.05
            )
        return fast.ma_cross(*arrays, settings=s, fast=5, slow=20)

    a, b = run(o, h, lo, c, v), run(o2, h2, lo2, c2, v2)
    # Everything marked at or before bar `cut` is the same...
    assert a.equity[: cut + 1].tolist() == b.equity[: cut + 1].tolist()
    assert a.position[: cut + 1].tolist() == b.position[: cut + 1].tolist()

    # ... and so is every fill at or before it, and every decision at it (a next-open
    # order decided at `cut` fills after it: its side and quantity are decided already).
    def events(r):
        t = r.trades
        out = []
        for i in range(len(t)):
            if t.entry_bar[i] <= cut:
                out.append(
                    (
                        "entry",
                        int(t.entry_bar[i]),
                        int(t.side[i]),
                        int(t.qty[i]),
                        float(t.entry_price[i]),
                    )
                )
            if 0 <= t.exit_bar[i] <= cut:
                out.append(
                    ("exit", int(t.exit_bar[i]), int(t.exit_reason[i]), float(t.exit_price[i]))
                )
        return out

    assert events(a) == events(b)
    if fill == "next_open":

        def decided_at_cut(r):
            t = r.trades
            return [
                (int(t.side[i]), int(t.qty[i])) for i in range(len(t)) if t.entry_bar[i] == cut + 1
            ]

        assert decided_at_cut(a) == decided_at_cut(b)


@settings(max_examples=200, deadline=None)
@given(
    prices=st.lists(st.floats(0.006, 2e5, allow_nan=False), min_size=4, max_size=4),
    segment=st.sampled_from([ExchangeType.NSE_CM, ExchangeType.NSE_FO, ExchangeType.CDE_FO]),
)
def test_bars_are_rounded_as_the_feed_codec_carries_prices(prices, segment) -> None:
    o, c = prices[:2]  # the other two are the bar's other extremes
    h, lo = max(prices), min(prices)
    divisor = 1e7 if segment is ExchangeType.CDE_FO else 100.0
    if segment is ExchangeType.CDE_FO and h > 200.0:
        return  # int32 price field: currencies trade far below this
    arrays = [np.array([x]) for x in (o, h, lo, c)]
    row, *rounded, up = fast._feed_prices(*arrays, divisor)
    assert row == -1 and up[0] == (c >= o)

    def through_codec(price: float) -> float:
        tick = Tick("T", int(segment), int(Mode.QUOTE), 1, 1_735_689_600_000, price,
                    open=price, high=price, low=price)  # fmt: skip
        return decode(encode(tick)).ltp

    assert [r[0] for r in rounded] == [through_codec(x) for x in (o, h, lo, c)]


def test_a_bar_that_rounds_to_zero_is_refused() -> None:
    o, h, lo, c, v = bars(2, 50)
    lo2 = lo.copy()
    lo2[7] = 0.004  # half a paisa and less: 0.00 on the feed
    with pytest.raises(BacktestInputError, match="bar 7"):
        fast.ma_cross(o, h, lo2, c, v)
    fast.ma_cross(o, h, lo2, c, v, settings=FastSettings(price_divisor=0.0))  # as given


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    fast_n=st.integers(1, 8),
    slow_extra=st.integers(1, 20),
    long_only=st.booleans(),
    flat=st.booleans(),
)
def test_ma_cross_signals_are_movingaveragecross_signals(
    seed, fast_n, slow_extra, long_only, flat
) -> None:
    """The crosses fast mode enters on against the live strategy's signal, fed one print
    per bar: it reads a bar's close at the next bar's first print."""
    slow_n = fast_n + slow_extra
    c = bars(seed, 300, vol=0.002)[3]
    if flat:
        c[100:160] = c[100]  # equal averages: no direction, and no cross through them
    direction = np.empty(c.size, dtype=np.int8)
    entry = np.empty(c.size, dtype=np.int8)
    fast.ma_cross_signals(c, fast_n, slow_n, direction)
    fast.ma_cross_entries(direction, entry)
    live = MovingAverageCross(fast_n, slow_n, long_only)
    want = []
    for j in range(c.size):  # a print at bar j's close; the next one closes bar j
        state = PhysicsState(
            float(c[j]), j, math.nan, math.nan, Structure.WARMUP, Band.WARMUP,
            math.nan, math.nan, math.nan, math.nan,
        )  # fmt: skip
        signal = live.evaluate(state)[0].direction
        if j:
            want.append(signal)  # the cross at close j - 1
    got = [0 if (long_only and e < 0) else int(e) for e in entry[:-1]]
    assert got == want
    assert (entry != 0).sum() >= 2 or slow_n > 20  # the series does cross


def test_open_delays_count_the_prints_a_gap_costs_an_entry() -> None:
    """Five-minute bars, the node's defaults (stale after four bars, the feed clock
    allowing two): after a gap of 3 or more bars the first print is dropped, after 5 or
    more the next one is stale as well."""
    steps = [1, 1, 2, 3, 4, 5, 6, 213, 1]
    ts = 1_735_689_600_000 + np.cumsum([0, *steps]).astype(np.int64) * 300_000
    cfg = parse_config("")
    got = fast.event_open_delays(cfg, ts, 300_000)
    assert got.tolist() == [1, 0, 0, 0, 1, 1, 2, 2, 2, 0]
    explicit = fast.open_delays(ts, 300_000, stale_after_s=1200.0, max_ahead_s=600.0,
                                latency_ms=cfg.execution.paper.latency_ms)  # fmt: skip
    assert explicit.tolist() == got.tolist()
    o, h, lo, c, v = bars(3, 10)
    with pytest.raises(BacktestInputError, match="open_delay values"):
        fast.ma_cross(o, h, lo, c, v, fast=2, slow=3, open_delay=np.full(10, 3, dtype=np.int8))


def test_a_flat_market_never_crosses() -> None:
    close = np.concatenate((np.linspace(100.0, 110.0, 300), np.full(3000, 110.05)))
    direction = np.empty(close.size, dtype=np.int8)
    fast.ma_cross_signals(close, 7, 50, direction)
    assert (direction[400:] == 0).all()


def test_signals_never_read_ahead() -> None:
    c = bars(3, 500)[3]
    full = np.empty(c.size, dtype=np.int8)
    fast.default_signals(c, 20, 30, 40, 1.0, 0.05, 0.0125, full, np.empty(c.size))
    for cut in (45, 100, 250, 499):
        part = np.empty(cut + 1, dtype=np.int8)
        fast.default_signals(
            c[: cut + 1].copy(), 20, 30, 40, 1.0, 0.05, 0.0125, part, np.empty(cut + 1)
        )
        assert part.tolist() == full[: cut + 1].tolist()
        m_full = np.empty(c.size, dtype=np.int8)
        m_part = np.empty(cut + 1, dtype=np.int8)
        fast.ma_cross_signals(c, 5, 20, m_full)
        fast.ma_cross_signals(c[: cut + 1].copy(), 5, 20, m_part)
        assert m_part.tolist() == m_full[: cut + 1].tolist()


# ---------------------------------------------------------------------------------------
# Sizing, settings, bad input
# ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    equity=st.floats(1_000.0, 1e8),
    price=st.floats(1.0, 50_000.0),
    fraction=st.floats(0.05, 1.0),
    lot=st.sampled_from([1, 15, 50, 75]),
    commission=st.sampled_from(["schedule", "percent", "fixed"]),
)
def test_equity_fraction_is_the_largest_whole_lot_that_fits(
    equity, price, fraction, lot, commission
) -> None:
    s = FastSettings(
        sizing="equity_fraction",
        equity_fraction=fraction,
        lot_size=lot,
        commission=commission,
        commission_pct=0.1,
        commission_fixed=20.0,
        slippage_bps=2.0,
        max_position_value=1e12,
        max_position_qty=10**12,
        max_gross_exposure=100.0,
        max_net_exposure=100.0,
    )
    _, table = fast.charge_table(s)
    p = fast._params(s, 0.0)
    q = fast._fit_qty(p, table, table.shape[0] - 1, 1, price, equity)
    px = price * (1 + 2.0 / 1e4)
    budget = fraction * equity
    cost = lambda k: k * px + fast.fill_charges(table, table.shape[0] - 1, True, k, px)  # noqa: E731
    assert q % lot == 0 and q >= 0
    if q:
        assert cost(q) <= budget
    assert cost(q + lot) > budget


@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_caps_bind_as_the_exposure_rules(fill) -> None:
    o, h, lo, c, v = bars(1, 300, start=1000.0)
    s = FastSettings(
        fill=fill, sizing="fixed", qty=10_000, max_position_value=50_000.0, brackets=False
    )
    r = fast.ma_cross(o, h, lo, c, v, settings=s, fast=3, slow=10)
    assert len(r.trades)
    # Sized at the decision's close: the entry bar's (close fills) or the one before.
    ref = c[r.trades.entry_bar - (fill == "next_open")]
    assert (r.trades.qty == np.floor(50_000.0 / ref)).all()


def test_settings_refuse_bad_values_by_name() -> None:
    with pytest.raises(BacktestInputError, match="slippage_bps"):
        FastSettings(slippage_bps=-1.0)
    with pytest.raises(BacktestInputError, match="market"):
        FastSettings(market="NCX_FO")
    with pytest.raises(BacktestInputError, match="kind"):
        FastSettings(market="NSE_FO")
    with pytest.raises(BacktestInputError, match="lot_size"):
        FastSettings(lot_size=0)
    FastSettings(market="NCX_FO", commission="percent", commission_pct=0.05)  # no schedule needed


def test_bad_bars_are_refused_naming_the_bar() -> None:
    o, h, lo, c, v = bars(2, 100)
    c2 = c.copy()
    c2[37] = math.nan
    with pytest.raises(BacktestInputError, match="bar 37"):
        fast.ma_cross(o, h, lo, c2, v)
    h2 = h.copy()
    h2[12] = lo[12] / 2
    with pytest.raises(BacktestInputError, match="bar 12"):
        fast.default_strategy(o, h2, lo, c, v)
    with pytest.raises(BacktestInputError, match="float64"):
        fast.ma_cross(o, h, lo, c.astype(np.float32), v)
    with pytest.raises(BacktestInputError, match="shorter"):
        fast.ma_cross(o, h, lo, c, v, fast=30, slow=10)
    with pytest.raises(BacktestInputError, match="square_off"):
        fast.ma_cross(o, h, lo, c, v, square_off=np.zeros(5, dtype=bool))


def test_settings_from_config_carry_the_toml_values() -> None:
    cfg = Config()
    s = fast.settings_from_config(cfg, fill="close")
    assert s.fill == "close" and fast.settings_from_config(cfg).fill == "next_open"
    assert s.commission == "schedule" and s.market == "NSE_CM"
    assert s.slippage_bps == cfg.execution.paper.slippage_bps
    assert s.stop_atr_multiple == cfg.execution.stop_atr_multiple
    assert s.max_position_value == cfg.governance.max_position_value
    assert s.cooldown_bars == 1  # 60 s cooldown on 60 s bars
    assert s.price_divisor == 100.0
    # The data's interval turns seconds into bars; without governance there are no caps.
    off = parse_config("[governance]\nenabled = false\n[strategy]\nmax_hold_s = 3600\n")
    s5 = fast.settings_from_config(off, "2885", bar_interval_s=300)
    assert (s5.max_hold_bars, s5.cooldown_bars) == (12, 1)
    assert s5.max_position_value == math.inf and s5.max_net_exposure == math.inf
    assert s5.max_position_qty >= 10**18
    currency = fast.settings_from_config(cfg, "CDE_FO:1234", kind="FUT")
    assert currency.price_divisor == 1e7


def test_result_metrics_and_records() -> None:
    o, h, lo, c, v = bars(4, 2000)
    r = fast.ma_cross(o, h, lo, c, v, settings=FastSettings(brackets=False), fast=5, slow=20)
    m = r.metrics(periods=252 * 375)
    assert m.trades == int(r.trades.closed.sum())
    assert m.charges == pytest.approx(r.charges_paid, rel=1e-9)
    assert m.final_equity == pytest.approx(r.final_equity, rel=1e-11)
    rows = r.trades.as_records()
    assert rows[0]["exit_reason"] in EXIT_REASONS


# ---------------------------------------------------------------------------------------
# The strategy registry
# ---------------------------------------------------------------------------------------


def test_registry_runs_each_strategy_by_name_and_by_module_attr() -> None:
    o, h, lo, c, v = bars(6, 800)
    s = FastSettings(brackets=False)
    by_name = strategies.get("ma_cross").run_fast(
        o, h, lo, c, v, settings=s, params={"fast": 4, "slow": 12}
    )
    direct = fast.ma_cross(o, h, lo, c, v, settings=s, fast=4, slow=12)
    assert by_name.equity.tolist() == direct.equity.tolist()
    assert strategies.get("tools.backtest.strategies:MA_CROSS") is strategies.get("ma_cross")
    spec = strategies.get("default")
    assert spec.event is None and spec.kernel is fast.default_strategy_kernel
    assert spec.defaults == {
        "energy_lookback": 20,
        "z_lookback": 60,
        "band_lookback": 140,
        "band_k": 2.0,
        "energy_threshold": 0.2,
    }
    run = spec.run_fast(o, h, lo, c, v, params={"z_lookback": 30, "energy_threshold": 0.05})
    assert run.equity.size == c.size


def test_registry_refuses_what_it_cannot_run() -> None:
    with pytest.raises(BacktestInputError, match="unknown strategy 'nope'"):
        strategies.get("nope")
    with pytest.raises(BacktestInputError, match="cannot import"):
        strategies.get("no_such_module_xyz:thing")
    with pytest.raises(BacktestInputError, match="no attribute"):
        strategies.get("tools.backtest.strategies:NOPE")
    with pytest.raises(BacktestInputError, match="not a"):
        strategies.get("tools.backtest.strategies:register")
    spec = strategies.get("ma_cross")
    with pytest.raises(BacktestInputError, match="no parameter 'window'"):
        spec.check_params({"window": 3})
    with pytest.raises(BacktestInputError, match=r"'slow' = 1 is outside \[2, 10000\]"):
        spec.check_params({"slow": 1})
    with pytest.raises(BacktestInputError, match="must be shorter"):
        spec.check_params({"fast": 40, "slow": 30})
    with pytest.raises(BacktestInputError, match="must be an int"):
        spec.check_params({"fast": 2.5})
    with pytest.raises(BacktestInputError, match="registered already"):
        strategies.register(strategies.MA_CROSS)


@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_session_masks_follow_the_market_calendar(fill) -> None:
    cal = calendar_for({}, 1)  # NSE cash: 09:15-15:30 IST, square-off 15:15
    day = int(datetime(2025, 6, 2, 3, 45, tzinfo=UTC).timestamp() * 1000)  # 09:15 IST, Monday
    decision = day + np.arange(375, dtype=np.int64) * MINUTE + MINUTE - 1
    entries, square = fast.session_masks(decision, cal)
    assert entries[0] and not square[0]
    assert square[-1] and not entries[-1]
    assert [entries[i] for i in range(375)] == [cal.entries_allowed(int(t)) for t in decision]
    o, h, lo, c, v = bars(16, 375)  # a series whose last cross is before the cut-off
    r = fast.ma_cross(
        o,
        h,
        lo,
        c,
        v,
        settings=FastSettings(fill=fill, brackets=False),
        fast=3,
        slow=10,
        entries_allowed=entries,
        square_off=square,
    )
    first = int(np.argmax(square))
    assert r.position[first - 1] != 0  # held into the square-off: it has work to do
    # Flat from the square-off: at its bar's close, or at the next bar's open.
    after = first if fill == "close" else first + 1
    assert r.position[after:].tolist() == [0] * (375 - after)
    assert EXIT_REASONS[int(r.trades.exit_reason[-1])] == "square_off"
    decided = r.trades.entry_bar - (fill == "next_open")
    assert not np.isin(decided, np.flatnonzero(~entries)).any()
