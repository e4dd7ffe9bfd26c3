"""Fast mode's default strategy per print: the prints event mode replays, stepped through
the node's per-print rules in one Numba loop.

Event mode (``tools.backtest.event``) turns each bar into feed prints (``bar_ticks``:
O→L→H→C on an up bar, O→H→L→C on a down bar, the open printed three times and each
other price twice, ``latency_ms + 1`` apart at 0, ¼, ½, ¾ of the interval, and the
position's stop / target printed twice where a leg passes through them) and the live node
evaluates the default strategy on every one. ``default_prints_kernel`` walks the same
prints and applies, on each, what the node does on it (``chimera_core.node``'s order),
with governance off:

1. **Feed hygiene** (``Engine.on_frame``): the feed clock (``FeedClock.accept``) drops a
   print more than ``max_ahead_ms`` after the last accepted one until a second print
   confirms the new time; a print more than ``stale_ns`` after the last accepted one is
   stale (no ARM, a READY disarms).
2. **The paper broker matches** (``PaperBroker.on_tick``, before the engine steps): an
   order placed on an earlier print whose ``exchange_ts + latency_ms`` has come fills
   whole at this print's price moved by the slippage, with the segment's charges; orders
   fill in the order they were placed. Each report is applied as ``Engine.on_report``
   (position, average price, ``entry_ts``, the exit re-armed, EXECUTE → COOLDOWN when the
   entry's intent is done) and the router follows it (``Exits.follow_fill``: flat drops the
   bracket; an entry fill with its intent's ATR > 0 moves the bracket to the position's
   average price; a bracket it cannot make keeps the one held).
3. **Physics** (``SymbolPhysics.on_trade``): the first print of a bar closes the bar before
   (ring push; the ATR over the closed bars refreshed), then energy, z and the band are
   ``physics.evaluate_live``'s, over the closed closes and this print's price, computed by
   the same window kernels on the same values (so bit for bit).
4. **The strategy** (``DefaultStrategy.evaluate`` and, holding a position with no exit
   asked for, ``exit_reason`` with ``held_ms`` = print time - the fill that opened it).
5. **The trading step** (``TradingStep.step``): IDLE arms on a direction (not stale);
   READY fires on the next print if the direction holds (not stale), else disarms; an
   EXECUTE older than ``execute_timeout_ms`` expires to COOLDOWN; COOLDOWN ends on the
   first print ``cooldown_ms`` after it began. One transition per print. A fire is an
   entry of ``qty`` units in the armed direction whatever is held (with governance off
   nothing vetoes an add or an entry against the position).
6. **The router** (``Router.submit`` then ``on_tick`` then ``apply``): the intent's order is
   placed at this print's time; holding a position with no exit working, the bracket is
   checked at this print's price (``Bracket.check``) and an exit placed; then the
   strategy's exit, if asked for and none is working. Every exit closes the position as
   held when it is placed and cancels an entry still working (``_stop_entries``: its
   intent ends REJECTED → COOLDOWN at this print).

Trades are the journal's round trips (``event._RoundTrips``): from the fill that opens a
position (adds move its average price and add to its quantity) to the fill that flattens
it; ``exit_reason`` is the bracket leg, or the strategy's rule for an EXIT. Equity is cash
plus the position at each bar's last price.

The market calendar (``calendar``: a ``MarketCalendar``) is read at each print's time: no
ARM or FIRE outside entry hours, and past the square-off a held position exits
(SQUARE_OFF) before its bracket is looked at.

What it leaves out (event mode has them): VWAP slicing (an intent of at least
``[execution.slicing] min_qty`` units), depth, the price filter's jump hold (a print more
than ``[sanity] max_jump_pct`` from the last), governance (the exposure caps included:
run it with ``[governance] enabled = false`` to compare), and the journal's refusal of an
intent id fired twice (a bar's ids are numbered per bar, so it does not arise here).
"""

from __future__ import annotations

import math

import msgspec
import numba
import numpy as np
import numpy.typing as npt

from chimera_core import physics
from chimera_core.config import Config
from tools.backtest import fast
from tools.backtest.fast import GUARD, FastResult, FastSettings, bracket_levels, fill_charges
from tools.backtest.metrics import (
    EXIT_ENERGY_DECAY,
    EXIT_MAX_HOLD,
    EXIT_OPEN,
    EXIT_SIGNAL_REVERSAL,
    EXIT_SQUARE_OFF,
    EXIT_STOP_LOSS,
    EXIT_TAKE_PROFIT,
)
from tools.backtest.rolling import (
    BacktestInputError,
    checked_lookback,
    moments_state,
    moments_step,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

# Slots of the params array ``default_prints_kernel`` reads.
Q_INTERVAL = 0  # bar interval, ms
Q_GAP = 1  # latency_ms + 1: a price's repeats are this far apart
Q_LATENCY = 2  # ms an order takes to reach the paper book
Q_MAX_AHEAD = 3  # feed clock: ms ahead of the last accepted print refused unconfirmed
Q_STALE_NS = 4  # a print this long (ns) after the last accepted one is stale
Q_THRESHOLD = 5  # energy_threshold
Q_EXIT_ENERGY = 6  # exit_energy_ratio x threshold (<= 0: none)
Q_EXIT_ON_REVERSAL = 7
Q_MAX_HOLD_MS = 8  # 0: none
Q_COOLDOWN_MS = 9
Q_TIMEOUT_MS = 10  # execute_timeout_s
Q_QTY = 11  # units per intent (order_qty x lot)
Q_SLIPPAGE = 12  # fraction
Q_BRACKETS = 13
Q_STOP_MULT = 14
Q_TAKE_MULT = 15
Q_TICK = 16
Q_ATR_N = 17
Q_EQUITY = 18
Q_DIVISOR = 19  # the feed's price unit (1 / divisor rupee); 0: prices as given
Q_K = 20
Q_SIZE = 21

# Machine states (chimera_core.state_machine.State).
_IDLE, _READY, _EXECUTE, _COOLDOWN = 0, 1, 2, 3
_REPEATS = (3, 2, 2, 2)

PrintsResult = tuple[
    int,
    IntArray,
    IntArray,
    Int8Array,
    IntArray,
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    Int8Array,
    FloatArray,
    IntArray,
]


@numba.njit(cache=True, error_model="numpy", inline="always")
def _feed_round(price: float, divisor: float) -> float:
    return np.rint(price * divisor) / divisor if divisor > 0.0 else price


@numba.njit(cache=True, error_model="numpy", inline="always")
def _vacuum(
    buf: FloatArray, end: int, n: int, price: float, var: float, anchor: float, shift: float
) -> bool:
    """|z| >= 1 (VACUUM) for the live ``price`` at ``end``, from the rolling moments of the
    n closed bars before it (``rolling.moments_step``), compared on squares; within GUARD
    of the edge ``physics.zscore_at`` decides. A flat window (variance exactly 0) has
    z = 0: TRAPPED."""
    if var == 0.0:
        return False
    d = (price - anchor) - shift
    d2 = d * d
    if abs(d2 - var) <= GUARD * max(d2, var):
        return abs(physics.zscore_at(buf, end, n)) >= 1.0
    return d2 >= var


@numba.njit(cache=True, error_model="numpy", inline="always")
def _energy_window(close: FloatArray, end: int, n: int) -> tuple[float, float, float]:
    """(origin, A, B) of the energy window ending at ``end`` with its last close left out
    (the live price goes there): origin = its first close, A = sum of (j - x_mean) x
    (close - origin), B = sum of (close - origin) over the n - 1 closed values. The slope
    of the window with the live price x is (A + (n - 1 - x_mean)(x - origin)) / sxx (the
    sum of j - x_mean is 0), its mean origin + (B + x - origin) / n."""
    start = end - n + 1
    origin: float = close[start]
    x_mean = (n - 1) / 2.0
    a = 0.0
    b = 0.0
    for j in range(n - 1):
        d = close[start + j] - origin
        a += (j - x_mean) * d
        b += d
    return origin, a, b


@numba.njit(cache=True, error_model="numpy")
def default_prints_kernel(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    up: BoolArray,
    raw: FloatArray,
    ts_ms: IntArray,
    entries_ok: BoolArray,
    square_off: BoolArray,
    energy_n: int,
    z_n: int,
    band_n: int,
    versions: Int8Array,
    table: FloatArray,
    q: FloatArray,
) -> PrintsResult:
    n = close.size
    entry_bar = np.empty(4 * n + 4, dtype=np.int64)
    exit_bar = np.empty(4 * n + 4, dtype=np.int64)
    side_out = np.empty(4 * n + 4, dtype=np.int8)
    qty_out = np.empty(4 * n + 4, dtype=np.int64)
    entry_px = np.empty(4 * n + 4)
    exit_px = np.empty(4 * n + 4)
    charges_out = np.empty(4 * n + 4)
    pnl_out = np.empty(4 * n + 4)
    reason_out = np.empty(4 * n + 4, dtype=np.int8)
    equity = np.empty(n)
    position = np.empty(n, dtype=np.int64)

    interval = int(q[Q_INTERVAL])
    step = interval // 4
    gap = int(q[Q_GAP])
    latency = int(q[Q_LATENCY])
    max_ahead = int(q[Q_MAX_AHEAD])
    stale_ns = int(q[Q_STALE_NS])
    threshold = q[Q_THRESHOLD]
    exit_energy = q[Q_EXIT_ENERGY]
    exit_on_reversal = q[Q_EXIT_ON_REVERSAL] != 0.0
    max_hold_ms = int(q[Q_MAX_HOLD_MS])
    cooldown_ms = int(q[Q_COOLDOWN_MS])
    timeout_ms = int(q[Q_TIMEOUT_MS])
    order_qty = int(q[Q_QTY])
    slip = q[Q_SLIPPAGE]
    use_brackets = q[Q_BRACKETS] != 0.0
    stop_mult = q[Q_STOP_MULT]
    take_mult = q[Q_TAKE_MULT]
    tick = q[Q_TICK]
    atr_n = int(q[Q_ATR_N])
    divisor = q[Q_DIVISOR]
    k_band = q[Q_K]

    buf = close.copy()  # closes, the forming bar's slot holding the live price
    # feed
    clock_now = -1
    clock_pending = -1
    last_ts = -1  # the last accepted print (receive time = exchange time)
    # physics
    forming = -1
    atr = math.nan
    # machine
    state = _IDLE
    entered = 0
    armed = 0
    # engine's view of the position
    pos = 0
    avg = 0.0
    pos_sign = 0
    entry_ts = -1
    exit_requested = False
    # orders: the entry intent's (one at a time) and the exit's
    e_live = False
    e_side = 0
    e_qty = 0
    e_eligible = 0
    e_seq = 0
    e_atr = math.nan
    intent_live = False  # EXECUTE waits for this intent
    x_live = False
    x_side = 0
    x_qty = 0
    x_eligible = 0
    x_seq = 0
    x_why = 0
    seq = 0
    # bracket
    has_br = False
    stop = math.nan
    target = math.nan
    # the open round trip
    cash = q[Q_EQUITY]
    count = 0
    t_open = False
    t_sign = 0
    t_qty = 0
    t_avg = 0.0
    t_exit_value = 0.0
    t_exit_qty = 0

    evaluated = math.nan  # the price the physics below were evaluated at (this bar)
    energy = math.nan
    code = 0
    code_known = False
    z_state = moments_state()
    z_var = 0.0
    z_anchor = 0.0
    z_shift = 0.0
    e_origin = 0.0
    e_a = 0.0
    e_b = 0.0
    e_xm = (energy_n - 1) / 2.0
    e_sxx = energy_n * (energy_n * energy_n - 1) / 12.0

    leg_ts = np.empty(8, dtype=np.int64)
    leg_px = np.empty(8)
    leg_slot = np.empty(8, dtype=np.int64)
    always_open = entries_ok.shape[1] == 0
    path = np.empty(4)
    raw_path = np.empty(4)

    for i in range(n):
        t0 = ts_ms[i]
        v = versions[i]
        if up[i]:
            path[0], path[1], path[2], path[3] = open_[i], low[i], high[i], close[i]
            raw_path[0], raw_path[1], raw_path[2], raw_path[3] = (
                raw[0, i],
                raw[2, i],
                raw[1, i],
                raw[3, i],
            )
        else:
            path[0], path[1], path[2], path[3] = open_[i], high[i], low[i], close[i]
            raw_path[0], raw_path[1], raw_path[2], raw_path[3] = (
                raw[0, i],
                raw[1, i],
                raw[2, i],
                raw[3, i],
            )
        for kk in range(4):
            # This leg's prints: the levels it passes through, then its end's repeats.
            m = 0
            if kk > 0 and has_br and not x_live and pos != 0:
                # Judged on the bar's prices as given (event.bar_ticks), printed as the
                # feed's codec carries them.
                a = raw_path[kk - 1]
                b = raw_path[kk]
                lo = min(a, b)
                hi = max(a, b)
                lv1 = min(stop, target)
                lv2 = max(stop, target)
                first = lv1 if b > a else lv2
                second = lv2 if b > a else lv1
                base = t0 + (kk - 1) * step + step // 2
                for lv in (first, second):
                    if lo < lv < hi:
                        for r in range(2):
                            leg_ts[m] = base + r * gap
                            leg_px[m] = _feed_round(lv, divisor)
                            leg_slot[m] = 2 * (kk - 1) + 1
                            m += 1
            for r in range(_REPEATS[kk]):
                leg_ts[m] = t0 + kk * step + r * gap
                leg_px[m] = path[kk]
                leg_slot[m] = 2 * kk
                m += 1
            for pi in range(m):
                ts = leg_ts[pi]
                price = leg_px[pi]
                slot = leg_slot[pi]
                # the market calendar at this print (entry hours, past the square-off)
                entries_open = always_open or entries_ok[slot, i]
                squaring = not always_open and square_off[slot, i]
                # 1. the feed clock, then staleness
                if clock_now < 0 or ts <= clock_now + max_ahead:
                    if ts > clock_now:
                        clock_now = ts
                elif clock_pending >= 0 and clock_pending <= ts <= clock_pending + max_ahead:
                    clock_pending = -1
                    clock_now = ts
                else:
                    clock_pending = ts
                    continue
                stale = last_ts < 0 or (ts - last_ts) * 1_000_000 > stale_ns
                last_ts = ts
                # 2. the paper broker fills what is due, in the order it was placed
                for _turn in range(2):
                    e_due = e_live and ts >= e_eligible
                    x_due = x_live and ts >= x_eligible
                    if e_due and (not x_due or e_seq < x_seq):
                        is_entry = True
                    elif x_due:
                        is_entry = False
                    else:
                        break
                    if is_entry:
                        fside = e_side
                        fqty = e_qty
                        e_live = False
                    else:
                        fside = x_side
                        fqty = x_qty
                        x_live = False
                    buy = fside > 0
                    px = price * (1.0 + slip) if buy else price * (1.0 - slip)
                    ch = fill_charges(table, v, buy, fqty, px)
                    cash -= fside * fqty * px + ch
                    # the round trip (event._RoundTrips)
                    rest = fqty
                    rest_ch = ch
                    while rest > 0:
                        if not t_open:
                            t_open = True
                            t_sign = fside
                            t_qty = rest
                            t_avg = px
                            t_exit_value = 0.0
                            t_exit_qty = 0
                            entry_bar[count] = i
                            side_out[count] = fside
                            qty_out[count] = rest
                            entry_px[count] = px
                            charges_out[count] = rest_ch
                            reason_out[count] = EXIT_OPEN
                            exit_bar[count] = -1
                            exit_px[count] = math.nan
                            pnl_out[count] = math.nan
                            count += 1
                            rest = 0
                        elif fside == t_sign:
                            t_avg = (t_avg * t_qty + px * rest) / (t_qty + rest)
                            t_qty += rest
                            qty_out[count - 1] += rest
                            entry_px[count - 1] = t_avg
                            charges_out[count - 1] += rest_ch
                            rest = 0
                        else:
                            closing = min(rest, t_qty)
                            share = rest_ch * closing / rest
                            charges_out[count - 1] += share
                            t_exit_value += px * closing
                            t_exit_qty += closing
                            t_qty -= closing
                            exit_bar[count - 1] = i
                            reason_out[count - 1] = EXIT_SIGNAL_REVERSAL if is_entry else x_why
                            if t_qty == 0:
                                t_open = False
                                xp = t_exit_value / t_exit_qty
                                exit_px[count - 1] = xp
                                gross = (xp - t_avg) * t_exit_qty * t_sign
                                pnl_out[count - 1] = gross - charges_out[count - 1]
                            rest -= closing
                            rest_ch -= share
                    # the engine's position book
                    signed = fside * fqty
                    if pos == 0 or (pos > 0) == (signed > 0):
                        total = pos + signed
                        avg = (avg * abs(pos) + px * abs(signed)) / abs(total)
                        pos = total
                    else:
                        remaining = pos + signed
                        if remaining == 0 or (remaining > 0) != (pos > 0):
                            avg = px if remaining else 0.0
                        pos = remaining
                    sign = (pos > 0) - (pos < 0)
                    if sign != pos_sign:
                        entry_ts = ts if sign else -1
                        pos_sign = sign
                        exit_requested = False
                    elif not is_entry:
                        exit_requested = False
                    if is_entry and intent_live and state == _EXECUTE:
                        intent_live = False
                        state = _COOLDOWN
                        entered = ts
                    # the router follows the fill
                    if pos == 0:
                        has_br = False
                    elif is_entry and e_atr > 0.0 and use_brackets:
                        ok, s_, t_ = bracket_levels(
                            1 if pos > 0 else -1, avg, e_atr, stop_mult, take_mult, tick
                        )
                        if ok:
                            has_br = True
                            stop = s_
                            target = t_
                # 3. physics
                if forming != i:
                    if forming >= 0:
                        buf[forming] = close[forming]
                        if forming + 1 >= atr_n + 1:
                            atr = physics.atr_at(high, low, close, forming, atr_n)
                    forming = i
                    evaluated = math.nan  # nothing evaluated on this bar yet
                    if i >= z_n:  # the z window (closed bars only) slides once a bar
                        z_var, z_anchor, z_shift, z_state = moments_step(close, i - 1, z_n, z_state)
                    if i + 1 >= energy_n:
                        e_origin, e_a, e_b = _energy_window(close, i, energy_n)
                if price != evaluated:  # a repeat of the last price has the same physics
                    evaluated = price
                    buf[i] = price
                    energy = math.nan
                    if i + 1 >= energy_n:  # closed bars (i) plus the live price
                        # O(1) from the closed part's sums; within GUARD of a threshold
                        # energy_at's own value decides (as fast.default_signals).
                        d = price - e_origin
                        energy = (
                            ((e_a + (energy_n - 1 - e_xm) * d) / e_sxx)
                            / (e_origin + (e_b + d) / energy_n)
                            * 100.0
                        )
                        scale = GUARD * max(1.0, abs(energy))
                        if abs(abs(energy) - threshold) <= scale or (
                            exit_energy > 0.0 and abs(abs(energy) - exit_energy) <= scale
                        ):
                            energy = physics.energy_at(buf, i, energy_n)
                    code_known = False
                # 4. the strategy: WARMUP (z or the band not warm), energy below the
                # threshold, TRAPPED (|z| < 1), or the band contradicting the direction
                # gives no signal. The band is only computed when it can decide.
                direction = 0
                if (
                    i >= z_n
                    and i + 1 >= band_n
                    and math.isfinite(energy)
                    and abs(energy) > threshold
                    and _vacuum(buf, i, z_n, price, z_var, z_anchor, z_shift)
                ):
                    if not code_known:
                        _, _, code = physics.band_at(buf, i, band_n, k_band)
                        code_known = True
                    direction = 1 if energy > 0 else -1
                    if (direction > 0 and code == -1) or (direction < 0 and code == 1):
                        direction = 0
                want_exit = 0
                if pos_sign != 0 and not exit_requested:
                    if entry_ts < 0:
                        entry_ts = ts
                    if exit_on_reversal and direction == -pos_sign:
                        want_exit = EXIT_SIGNAL_REVERSAL
                    elif (
                        exit_energy > 0.0
                        and math.isfinite(energy)
                        and energy * pos_sign < exit_energy
                    ):
                        want_exit = EXIT_ENERGY_DECAY
                    elif max_hold_ms > 0 and ts - entry_ts >= max_hold_ms:
                        want_exit = EXIT_MAX_HOLD
                    if want_exit != 0:
                        exit_requested = True
                # 5. the trading step
                fired = False
                if state == _IDLE:
                    if direction != 0 and not stale and entries_open:
                        armed = direction
                        state = _READY
                        entered = ts
                elif state == _READY:
                    if direction == armed and not stale and entries_open:
                        fired = True
                        state = _EXECUTE
                        entered = ts
                    else:
                        armed = 0
                        state = _IDLE
                        entered = ts
                elif state == _EXECUTE:
                    if ts - entered >= timeout_ms:
                        e_live = False  # cancelled at the broker
                        intent_live = False
                        state = _COOLDOWN
                        entered = ts
                elif state == _COOLDOWN and ts - entered >= cooldown_ms:
                    state = _IDLE
                    entered = ts
                # 6. the router: the intent, the bracket, then the strategy's exit
                if fired:
                    side = armed
                    armed = 0
                    seq += 1
                    e_live = True
                    intent_live = True
                    e_side = side
                    e_qty = order_qty
                    e_eligible = ts + latency
                    e_seq = seq
                    e_atr = atr
                if pos != 0 and not x_live and (has_br or squaring):
                    hit = 0
                    if squaring:
                        hit = EXIT_SQUARE_OFF
                    elif pos > 0:
                        if price <= stop:
                            hit = EXIT_STOP_LOSS
                        elif price >= target:
                            hit = EXIT_TAKE_PROFIT
                    else:
                        if price >= stop:
                            hit = EXIT_STOP_LOSS
                        elif price <= target:
                            hit = EXIT_TAKE_PROFIT
                    if hit != 0:
                        seq += 1
                        x_live = True
                        x_side = -1 if pos > 0 else 1
                        x_qty = abs(pos)
                        x_eligible = ts + latency
                        x_seq = seq
                        x_why = hit
                        if e_live:  # the entry still working is cancelled
                            e_live = False
                            if intent_live and state == _EXECUTE:
                                intent_live = False
                                state = _COOLDOWN
                                entered = ts
                if want_exit != 0 and pos != 0 and not x_live:
                    seq += 1
                    x_live = True
                    x_side = -1 if pos > 0 else 1
                    x_qty = abs(pos)
                    x_eligible = ts + latency
                    x_seq = seq
                    x_why = want_exit
                    if e_live:
                        e_live = False
                        if intent_live and state == _EXECUTE:
                            intent_live = False
                            state = _COOLDOWN
                            entered = ts
        # the mark after the bar's last print
        equity[i] = cash + pos * buf[i]
        position[i] = pos

    return (
        count,
        entry_bar,
        exit_bar,
        side_out,
        qty_out,
        entry_px,
        exit_px,
        charges_out,
        pnl_out,
        reason_out,
        equity,
        position,
    )


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------


class PrintTiming(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The node's clocks a per-print run needs besides ``FastSettings`` (event mode's:
    ``timing_from_config``)."""

    latency_ms: int = 50  # [execution.paper] latency_ms
    stale_after_s: float = 1_200.0  # [feed] stale_after_s as event mode raises it
    max_ahead_s: float = 600.0  # the engine's feed clock: max(max_clock_ahead_s, 2 bars)
    cooldown_s: float = 60.0  # [strategy] cooldown_s
    max_hold_s: float = 0.0  # [strategy] max_hold_s (0: none)
    execute_timeout_s: float = 30.0  # [strategy] execute_timeout_s


def timing_from_config(cfg: Config, interval_ms: int) -> PrintTiming:
    """The clocks event mode runs the node with on bars of ``interval_ms``
    (``event.backtest_config``: ``stale_after_s`` raised to four bars, at most a week; the
    feed clock allows ``max_clock_ahead_s`` or two bars, whichever is longer)."""
    from tools.backtest.event import stale_after_s_for

    interval_s = interval_ms / 1000
    s = cfg.strategy
    return PrintTiming(
        latency_ms=int(cfg.execution.paper.latency_ms),
        stale_after_s=stale_after_s_for(cfg.feed.stale_after_s, interval_s),
        max_ahead_s=max(cfg.sanity.max_clock_ahead_s, 2 * (interval_ms // 1000)),
        cooldown_s=float(s.cooldown_s),
        max_hold_s=float(s.max_hold_s),
        execute_timeout_s=float(s.execute_timeout_s),
    )


def prints_params(
    settings: FastSettings, timing: PrintTiming, interval_ms: int, k: float, threshold: float
) -> FloatArray:
    """The ``q`` array ``default_prints_kernel`` reads."""
    s = settings
    gap = timing.latency_ms + 1
    step = interval_ms // 4
    if step <= 0 or 2 * gap * 4 > step:
        raise BacktestInputError(
            f"bar interval {interval_ms} ms is too short to replay per print with "
            f"latency_ms = {timing.latency_ms}: each quarter of a bar must hold 8 steps of "
            f"{gap} ms (as event mode)"
        )
    if s.sizing == "equity_fraction":
        raise BacktestInputError(
            'per-print fills size as the node does (order_qty lots): sizing "fixed" or "lots"'
        )
    q = np.zeros(Q_SIZE)
    q[Q_INTERVAL] = interval_ms
    q[Q_GAP] = gap
    q[Q_LATENCY] = timing.latency_ms
    q[Q_MAX_AHEAD] = int(timing.max_ahead_s * 1000)
    q[Q_STALE_NS] = int(timing.stale_after_s * 1e9)
    q[Q_THRESHOLD] = threshold
    q[Q_EXIT_ENERGY] = s.exit_energy_ratio * threshold  # DefaultStrategy.exit_energy
    q[Q_EXIT_ON_REVERSAL] = 1.0 if s.exit_on_reversal else 0.0
    q[Q_MAX_HOLD_MS] = int(timing.max_hold_s * 1000)
    q[Q_COOLDOWN_MS] = int(timing.cooldown_s * 1000)
    q[Q_TIMEOUT_MS] = int(timing.execute_timeout_s * 1000)
    q[Q_QTY] = s.qty if s.sizing == "fixed" else s.lots * s.lot_size
    q[Q_SLIPPAGE] = s.slippage_bps / 10_000.0
    q[Q_BRACKETS] = 1.0 if s.brackets else 0.0
    q[Q_STOP_MULT] = s.stop_atr_multiple
    q[Q_TAKE_MULT] = s.take_profit_atr_multiple
    q[Q_TICK] = s.tick_size
    q[Q_ATR_N] = s.atr_lookback
    q[Q_EQUITY] = s.initial_equity
    q[Q_DIVISOR] = s.price_divisor
    q[Q_K] = k
    return q


def default_prints(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    volume: FloatArray | None = None,
    *,
    ts_ms: IntArray,
    interval_ms: int,
    settings: FastSettings | None = None,
    timing: PrintTiming | None = None,
    energy_lookback: int = 20,
    z_lookback: int = 60,
    band_lookback: int = 140,
    band_k: float = 2.0,
    energy_threshold: float = 0.2,
    calendar: object = None,
) -> FastResult:
    """The default strategy decided on every print event mode replays (module docstring).
    ``ts_ms`` are the bars' open times (UTC ms, on the ``interval_ms`` grid); ``calendar``
    a ``MarketCalendar`` (``calendar_for``) read at each print (None: open around the
    clock)."""
    s = settings or FastSettings()
    if s.fill != "next_open" or s.long_only:
        raise BacktestInputError(
            "per print, fills and sides are the node's: an order fills at the next print and "
            'the default strategy trades both ways (fill = "next_open", long_only = false)'
        )
    t = timing or PrintTiming()
    en = checked_lookback("energy_lookback", energy_lookback)
    zn = checked_lookback("z_lookback", z_lookback)
    bn = checked_lookback("band_lookback", band_lookback)
    k = float(band_k)
    if not (math.isfinite(k) and k >= 0):
        raise BacktestInputError(f"band_k must be a finite number >= 0, got {band_k!r}")
    thr = float(energy_threshold)
    if not (math.isfinite(thr) and thr > 0):
        raise BacktestInputError(
            f"energy_threshold must be a finite number > 0, got {energy_threshold!r}"
        )
    if not isinstance(ts_ms, np.ndarray) or ts_ms.shape != np.shape(close):
        raise BacktestInputError("ts_ms must be a numpy int64 array of the bars' open times (ms)")
    if isinstance(interval_ms, bool) or not isinstance(interval_ms, int | np.integer):
        raise BacktestInputError(f"interval_ms must be an int of ms, got {interval_ms!r}")
    ts = np.ascontiguousarray(ts_ms, dtype=np.int64)
    if ts.size > 1 and (np.any(np.diff(ts) < interval_ms) or np.any(ts % interval_ms)):
        raise BacktestInputError(
            f"ts_ms must be increasing bar open times on the {interval_ms} ms grid"
        )
    o, h, lo, c, up, _, _, _, versions, table = fast._inputs(
        (open_, high, low, close, volume), s, ts, None, None, None
    )
    q = prints_params(s, t, int(interval_ms), k, thr)
    entries = np.empty((8, 0), dtype=np.bool_)
    square = np.empty((8, 0), dtype=np.bool_)
    if calendar is not None:
        # Each print's time class: 2k a quarter's prints, 2k + 1 the levels inside leg k + 1.
        step = int(interval_ms) // 4
        offsets = np.array([(j // 2) * step + (step // 2 if j % 2 else 0) for j in range(8)])
        at = ts[None, :] + offsets[:, None]
        allowed, past = fast.session_masks(at.ravel(), calendar)
        entries = allowed.reshape(8, -1)
        square = past.reshape(8, -1)
    given = np.vstack([fast._float_bars(name, x) for name, x in (
        ("open", open_), ("high", high), ("low", low), ("close", close))])  # fmt: skip
    out = default_prints_kernel(
        o, h, lo, c, up, given, ts, entries, square, en, zn, bn, versions, table, q
    )
    return fast._result(out, s)
