"""Smart execution: the pieces the router composes around a broker call.

- ``Throttler`` keeps order calls inside the broker's per-second/minute/hour budgets.
- ``VwapSlicer`` cuts a large parent into children that follow the intraday volume curve,
  never taking more than a set share of the volume the market actually traded.
- ``LiquidityAdjuster`` sizes a child to the displayed depth and waits out wide spreads.
- ``Bracket`` holds the ATR stop loss / take profit of an open position.
- ``parse_clock`` / ``ist_seconds`` / ``square_off_due`` decide the intraday cut-off.
- ``exit_request`` / ``child_request`` build orders with deterministic client order ids.

Time is always an input (exchange milliseconds or an injected clock), so replay is exact.
Nothing here does I/O; these run on order events, except ``Bracket.check`` and
``square_off_due``, which may run on every tick of a symbol with a position and are kept to
a few comparisons.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec

from chimera_core.config import SlicingConfig, ThrottleConfig
from chimera_core.contracts import (
    Level,
    OrderRequest,
    OrderType,
    Position,
    Purpose,
    Side,
    Tick,
)
from chimera_core.errors import ChimeraError, ConfigError

__all__ = [
    "DEFAULT_NSE_CURVE",
    "IST_OFFSET_S",
    "PURPOSE_CODES",
    "Adjustment",
    "Bracket",
    "LiquidityAdjuster",
    "Throttler",
    "VolumeCurve",
    "VwapReport",
    "VwapSlicer",
    "child_request",
    "exit_request",
    "ist_seconds",
    "parse_clock",
    "square_off_due",
]

IST_OFFSET_S = 5 * 3600 + 30 * 60  # India has one zone and no DST: UTC+05:30 all year
_DAY_S = 86_400
_IST_OFFSET_MS = IST_OFFSET_S * 1000
_DAY_MS = _DAY_S * 1000


# ---- throttler --------------------------------------------------------------------------


class Throttler:
    """Order-call rate limiter over exact sliding windows of 1 s, 60 s and 3600 s.

    Why not token buckets: a bucket of capacity N refilling at N/L lets N calls through at
    once and then keeps refilling, so a window of length L can see up to ~2N calls. Angel
    One counts calls per rolling second/minute/hour, so we keep the timestamps of the last
    N calls per window instead (a ``deque(maxlen=N)``, O(1) per call) and allow a call only
    when the N-th most recent one is at least ``L + guard_s`` old. Any N + 1 consecutive
    calls then span more than L, i.e. no window of length L ever holds more than N calls.

    ``guard_s`` is extra spacing because the broker counts arrivals, not our send times:
    a call delayed by network jitter can land closer to the next one than we sent them.
    Jitter up to ``guard_s`` cannot push the broker's count over the limit.

    ``acquire()`` waiters are served first come, first served (``asyncio.Lock`` is fair);
    ``try_acquire()`` refuses while anyone is queued so a synchronous caller cannot jump
    the queue.
    """

    __slots__ = ("_calls", "_clock", "_lock", "_refused", "_sleep", "_waited_s", "_windows")

    def __init__(
        self,
        per_second: int = 20,
        per_minute: int = 500,
        per_hour: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        guard_s: float = 0.05,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        for name, n in (
            ("per_second", per_second),
            ("per_minute", per_minute),
            ("per_hour", per_hour),
        ):
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"Throttler {name} must be a positive integer, got {n!r}")
        if not (math.isfinite(guard_s) and guard_s >= 0):
            raise ConfigError(f"Throttler guard_s must be a finite number >= 0, got {guard_s!r}")
        self._clock = clock
        self._sleep = sleep
        self._windows: tuple[tuple[float, deque[float]], ...] = tuple(
            (span + guard_s, deque(maxlen=n))
            for span, n in ((1.0, per_second), (60.0, per_minute), (3600.0, per_hour))
        )
        self._lock = asyncio.Lock()
        self._calls = 0
        self._refused = 0
        self._waited_s = 0.0

    @classmethod
    def from_config(
        cls,
        cfg: ThrottleConfig,
        clock: Callable[[], float] = time.monotonic,
        guard_s: float = 0.05,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> Throttler:
        """``clock`` and ``sleep`` are the loop's (live) or a simulated clock's (a backtest:
        a wait then lasts until simulated time has moved on, never wall time)."""
        return cls(
            cfg.per_second, cfg.per_minute, cfg.per_hour, clock=clock, guard_s=guard_s, sleep=sleep
        )

    def _delay_at(self, now: float) -> float:
        wait = 0.0
        for span, stamps in self._windows:
            if len(stamps) == stamps.maxlen:
                wait = max(wait, stamps[0] + span - now)
        return wait

    def _record(self, now: float) -> None:
        for _, stamps in self._windows:
            stamps.append(now)  # maxlen drops the oldest: only the last N matter
        self._calls += 1

    def delay(self) -> float:
        """Seconds until one call would be allowed by the windows (0.0 = now). Callers
        already queued in ``acquire()`` go first, so this is a lower bound for a newcomer."""
        return max(0.0, self._delay_at(self._clock()))

    def try_acquire(self) -> bool:
        """Take one call now if the budgets allow it and no one is queued; never waits."""
        if self._lock.locked():
            self._refused += 1
            return False
        now = self._clock()
        if self._delay_at(now) > 0.0:
            self._refused += 1
            return False
        self._record(now)
        return True

    async def acquire(self) -> None:
        """Wait (asyncio sleep) until one call is allowed, then take it. FIFO among waiters.
        Cancelling a waiter takes nothing."""
        started = self._clock()
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._delay_at(now)
                if wait <= 0.0:
                    break
                # Loop rather than trust one sleep: asyncio may wake a timer up to its clock
                # resolution early, and the injected clock may not be the loop's clock.
                await self._sleep(wait)
            self._record(now)
        self._waited_s += now - started

    @property
    def calls(self) -> int:
        """Calls granted (try_acquire True + acquire returned)."""
        return self._calls

    @property
    def refused(self) -> int:
        """try_acquire calls that returned False."""
        return self._refused

    @property
    def waited_s(self) -> float:
        """Total seconds acquire() callers spent waiting (queue + budget)."""
        return self._waited_s


# ---- intraday volume curve --------------------------------------------------------------


class VolumeCurve(msgspec.Struct, frozen=True):
    """Share of the day's volume per bucket, from ``open_s`` (seconds after IST midnight).

    Weights need not sum to 1 (they are normalised). Volume is taken as spread evenly
    inside a bucket; before the first bucket nothing trades, after the last everything has.
    """

    open_s: int
    bucket_s: int
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.bucket_s <= 0 or not self.weights:
            raise ChimeraError(
                f"VolumeCurve needs bucket_s > 0 and at least one weight, got bucket_s="
                f"{self.bucket_s}, {len(self.weights)} weights"
            )
        if any(not (math.isfinite(w) and w >= 0) for w in self.weights) or sum(self.weights) <= 0:
            raise ChimeraError(
                f"VolumeCurve weights must be finite, >= 0 and not all zero, got {self.weights}"
            )

    def traded_fraction(self, second_of_day: float) -> float:
        """Fraction of the day's volume traded by ``second_of_day`` (IST), 0..1."""
        x = (second_of_day - self.open_s) / self.bucket_s
        if x <= 0:
            return 0.0
        n = len(self.weights)
        if x >= n:
            return 1.0
        i = int(x)
        done = sum(self.weights[:i]) + self.weights[i] * (x - i)
        return done / sum(self.weights)


# NSE cash market, 09:15-15:30 IST, 25 buckets of 15 minutes (percent of the day's volume).
# A stylised U shape — heavy open as overnight news and orders clear, a midday trough,
# and a climb into the close (index rebalancing, square-offs, the 15:00-15:30 closing-
# price window) — in line with published NSE intraday volume profiles, not measured from
# any one symbol. Replace it with a curve measured from your own recordings per symbol.
DEFAULT_NSE_CURVE = VolumeCurve(
    open_s=9 * 3600 + 15 * 60,
    bucket_s=15 * 60,
    weights=(
        8.6, 6.2, 5.1, 4.6, 4.1, 3.8, 3.5, 3.3, 3.1, 3.0,  # 09:15 .. 11:30
        2.9, 2.8, 2.7, 2.7, 2.8, 2.9, 3.0, 3.2, 3.3, 3.5,  # 11:45 .. 14:00
        3.8, 4.2, 4.7, 5.4, 6.8,  # 14:15 .. 15:15 (last bucket ends 15:30); sums to 100
    ),
)  # fmt: skip


# ---- VWAP slicer ------------------------------------------------------------------------


class VwapReport(msgspec.Struct, frozen=True):
    """How a sliced parent went. Prices are None when there was nothing to average (no
    fills, or no traded volume observed in the window): never invented."""

    parent_qty: int
    side: Side
    filled_qty: int
    sent_qty: int  # children sent, net of cancelled/unfilled returns
    unsent_qty: int  # never sent: the caller decides what to do with it
    avg_fill_price: float | None
    market_vwap: float | None  # sum(ltp * volume delta) / sum(volume delta) over the window
    market_volume: int  # volume observed in the window
    # (avg fill - market VWAP) / market VWAP * 1e4, positive = worse than VWAP for our side
    tracking_error_bps: float | None
    children: int
    schedule: tuple[int, ...]  # cumulative target qty at each slot
    actual: tuple[int, ...]  # cumulative qty sent by the end of each slot


class VwapSlicer:
    """Slices ``parent_qty`` over ``[start_ms, start_ms + window_s)`` into ``slices`` slots.

    At the start of slot i the cumulative target is the parent times the share of the
    window's expected volume (from ``curve``) traded by the END of slot i, floored to the
    lot size; the last slot's target is the whole parent, so children sum to it exactly.
    ``next_child(now)`` returns at most one child per slot: the shortfall against the
    target, capped by ``participation`` times the cumulative volume the market traded
    since the previous child (from ``Tick.volume`` differences fed through ``on_tick``).
    What the cap holds back is caught up in later slots; after the window nothing is
    scheduled and ``unsent`` (also returned by ``stop()``) is left for the caller.

    A window outside market hours (or a curve with no volume in it) is sliced evenly by
    time. Our own fills count in the market volume, as exchanges report it.
    """

    def __init__(
        self,
        parent_qty: int,
        side: Side,
        start_ms: int,
        window_s: float,
        participation: float,
        curve: VolumeCurve | None = None,
        lot_size: int = 1,
        slices: int = 10,
    ) -> None:
        if lot_size < 1:
            raise ChimeraError(f"VwapSlicer lot_size must be >= 1, got {lot_size}")
        if parent_qty <= 0 or parent_qty % lot_size:
            raise ChimeraError(
                f"VwapSlicer parent_qty must be a positive multiple of lot_size {lot_size}, "
                f"got {parent_qty}"
            )
        if not (0.0 < participation <= 1.0):
            raise ChimeraError(f"VwapSlicer participation must be in (0, 1], got {participation}")
        window_ms = round(window_s * 1000) if math.isfinite(window_s) else 0
        if slices < 1 or window_ms < slices:
            raise ChimeraError(
                f"VwapSlicer needs slices >= 1 and a window of at least one ms per slice, got "
                f"window_s={window_s}, slices={slices}"
            )
        self.parent_qty = parent_qty
        self.side = side
        self.start_ms = start_ms
        self.end_ms = start_ms + window_ms
        self.participation = participation
        self.lot_size = lot_size
        self.slices = slices
        self._window_ms = window_ms
        self._schedule = self._build_schedule(curve or DEFAULT_NSE_CURVE)
        self._sent_by_slot = [0] * slices
        self._last_slot = -1
        self._sent = 0
        self._children = 0
        self._filled = 0
        self._fill_notional = 0.0
        self._stopped = False
        self._vol: int | None = None  # last cumulative volume seen
        self._vol_at_child: int | None = None  # cumulative volume when the last child went
        self._mkt_notional = 0.0
        self._mkt_volume = 0

    @classmethod
    def from_config(
        cls,
        cfg: SlicingConfig,
        parent_qty: int,
        side: Side,
        start_ms: int,
        curve: VolumeCurve | None = None,
        lot_size: int = 1,
        slices: int = 10,
    ) -> VwapSlicer:
        return cls(
            parent_qty, side, start_ms, cfg.window_s, cfg.participation, curve, lot_size, slices
        )

    def _build_schedule(self, curve: VolumeCurve) -> tuple[int, ...]:
        start_day = (self.start_ms + _IST_OFFSET_MS) // _DAY_MS

        def cum(ts_ms: int) -> float:
            # Days since the start day + fraction traded that day: monotone across IST
            # midnight. The integer part stays small so the fraction keeps its precision.
            day, ms_of_day = divmod(ts_ms + _IST_OFFSET_MS, _DAY_MS)
            return (day - start_day) + curve.traded_fraction(ms_of_day / 1000.0)

        c0 = cum(self.start_ms)
        total = cum(self.end_ms) - c0
        lot = self.lot_size
        targets = []
        for i in range(1, self.slices):
            t = self.start_ms + self._window_ms * i // self.slices
            frac = (cum(t) - c0) / total if total > 1e-12 else i / self.slices
            # The epsilon keeps binary noise (0.0859999...) from costing a whole unit.
            targets.append(int(self.parent_qty * min(frac, 1.0) + 1e-9) // lot * lot)
        targets.append(self.parent_qty)
        return tuple(targets)

    def on_tick(self, tick: Tick) -> None:
        """Observe the market: cumulative volume (participation) and window VWAP."""
        v = tick.volume
        if v <= 0:  # LTP-mode ticks carry no volume
            return
        if self._vol is None or tick.exchange_ts_ms < self.start_ms:
            self._vol = v
            self._vol_at_child = v
            return
        dv = v - self._vol
        if dv < 0:
            # Cumulative volume went backwards (session reset or bad data): rebase, and
            # count nothing before it towards participation.
            self._vol = v
            self._vol_at_child = v
            return
        if dv and tick.exchange_ts_ms < self.end_ms:
            self._mkt_notional += tick.ltp * dv
            self._mkt_volume += dv
        self._vol = v

    def _slot(self, now_ms: int) -> int:
        return min((now_ms - self.start_ms) * self.slices // self._window_ms, self.slices - 1)

    def next_child(self, now_ms: int) -> int:
        """Quantity to send as a child now (a lot multiple), 0 when nothing is due."""
        if self._stopped or now_ms < self.start_ms or now_ms >= self.end_ms:
            return 0
        slot = self._slot(now_ms)
        if slot == self._last_slot:
            return 0
        due = self._schedule[slot] - self._sent
        if due <= 0 or self._vol is None or self._vol_at_child is None:
            return 0
        cap = int(self.participation * (self._vol - self._vol_at_child))
        qty = min(due, cap) // self.lot_size * self.lot_size
        if qty <= 0:
            return 0
        self._last_slot = slot
        self._sent += qty
        self._sent_by_slot[slot] += qty
        self._children += 1
        self._vol_at_child = self._vol
        return qty

    def on_fill(self, qty: int, price: float) -> None:
        """A child (partly) filled."""
        if qty <= 0 or not (math.isfinite(price) and price > 0):
            raise ChimeraError(
                f"VwapSlicer fill needs qty > 0 and a price > 0, got {qty} @ {price}"
            )
        if self._filled + qty > self._sent:
            raise ChimeraError(
                f"VwapSlicer fill of {qty} takes filled to {self._filled + qty}, above the "
                f"{self._sent} sent (parent {self.parent_qty}): a fill was counted twice"
            )
        self._filled += qty
        self._fill_notional += qty * price

    def on_unfilled(self, qty: int) -> None:
        """Child quantity that will never fill (cancelled, rejected, expired): it goes back
        into the schedule and is caught up in a later slot, if any is left."""
        if qty <= 0 or qty > self._sent - self._filled:
            raise ChimeraError(
                f"VwapSlicer unfilled qty must be in 1..{self._sent - self._filled} "
                f"(sent {self._sent} - filled {self._filled}), got {qty}"
            )
        self._sent -= qty

    def stop(self) -> int:
        """Schedule nothing more (window over, kill switch); returns the unsent quantity."""
        self._stopped = True
        return self.unsent

    @property
    def done(self) -> bool:
        return self._filled == self.parent_qty

    @property
    def remaining(self) -> int:
        """Parent quantity not yet filled (working children included)."""
        return self.parent_qty - self._filled

    @property
    def unsent(self) -> int:
        """Parent quantity not in any live or filled child."""
        return self.parent_qty - self._sent

    @property
    def filled(self) -> int:
        return self._filled

    @property
    def children(self) -> int:
        return self._children

    @property
    def schedule(self) -> tuple[int, ...]:
        return self._schedule

    def report(self) -> VwapReport:
        avg = self._fill_notional / self._filled if self._filled else None
        vwap = self._mkt_notional / self._mkt_volume if self._mkt_volume else None
        te = None
        if avg is not None and vwap is not None:
            sign = 1.0 if self.side is Side.BUY else -1.0
            te = sign * (avg - vwap) / vwap * 1e4
        actual, acc = [], 0
        for q in self._sent_by_slot:
            acc += q
            actual.append(acc)
        return VwapReport(
            parent_qty=self.parent_qty,
            side=self.side,
            filled_qty=self._filled,
            sent_qty=self._sent,
            unsent_qty=self.unsent,
            avg_fill_price=avg,
            market_vwap=vwap,
            market_volume=self._mkt_volume,
            tracking_error_bps=te,
            children=self._children,
            schedule=self._schedule,
            actual=tuple(actual),
        )


# ---- liquidity adjuster -----------------------------------------------------------------

Action = Literal["send", "wait", "cross_after_wait"]


class Adjustment(msgspec.Struct, frozen=True):
    """What to do with a child now. ``qty`` is what to send now (0 when waiting);
    ``limit_price`` is a suggestion: the deepest displayed opposite level needed to fill
    ``qty`` when sending, our own best price when waiting, the LTP without a book."""

    qty: int
    action: Action
    limit_price: float
    reason: str
    spread_pct: float | None = None  # percent of mid; None without a two-sided book
    displayed_qty: int | None = None  # opposite side, best 5; None without a book


class LiquidityAdjuster:
    """Fits a child to the displayed book: at most ``depth_fraction`` of the opposite side's
    best-5 quantity, and no crossing a spread wider than ``max_spread_pct`` of mid until
    the caller has waited ``max_wait_s`` for it to narrow."""

    __slots__ = ("depth_fraction", "max_spread_pct", "max_wait_s")

    def __init__(self, depth_fraction: float, max_spread_pct: float, max_wait_s: float) -> None:
        if not (0.0 < depth_fraction <= 1.0):
            raise ConfigError(f"depth_fraction must be in (0, 1], got {depth_fraction}")
        if not (max_spread_pct > 0 and math.isfinite(max_spread_pct)):
            raise ConfigError(f"max_spread_pct must be > 0, got {max_spread_pct}")
        if not (max_wait_s >= 0 and math.isfinite(max_wait_s)):
            raise ConfigError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.depth_fraction = depth_fraction
        self.max_spread_pct = max_spread_pct
        self.max_wait_s = max_wait_s

    @classmethod
    def from_config(cls, cfg: SlicingConfig) -> LiquidityAdjuster:
        return cls(cfg.depth_fraction, cfg.max_spread_pct, cfg.max_wait_s)

    def adjust(
        self, side: Side, qty: int, tick: Tick, waited_s: float, lot_size: int = 1
    ) -> Adjustment:
        if qty <= 0 or lot_size < 1 or qty % lot_size:
            raise ChimeraError(
                f"LiquidityAdjuster qty must be a positive multiple of lot_size {lot_size}, "
                f"got {qty}"
            )
        own, opposite = (tick.bids, tick.asks) if side is Side.BUY else (tick.asks, tick.bids)
        if not tick.bids and not tick.asks:
            return Adjustment(
                qty=qty,
                action="send",
                limit_price=tick.ltp,
                reason="no depth in the tick (LTP/QUOTE feed): qty passed through unadjusted",
            )
        opposite_name = "asks" if side is Side.BUY else "bids"
        displayed = sum(level.qty for level in opposite[:5])
        if not opposite:
            # Nothing to trade against (a circuit limit, or a one-sided book): crossing
            # would only rest at a made-up price, so wait whatever the wait so far.
            return Adjustment(
                qty=0,
                action="wait",
                limit_price=own[0].price,
                reason=f"no {opposite_name} displayed: nothing to trade against",
                displayed_qty=0,
            )
        cap = int(self.depth_fraction * displayed) // lot_size * lot_size
        send_qty = min(qty, cap)
        if send_qty <= 0:
            return Adjustment(
                qty=0,
                action="wait",
                limit_price=own[0].price if own else opposite[0].price,
                reason=(
                    f"displayed depth {displayed} x {self.depth_fraction} is under one lot "
                    f"of {lot_size}: wait for depth"
                ),
                displayed_qty=displayed,
            )
        limit = _sweep_price(opposite, send_qty)
        if own:
            bid, ask = tick.bids[0].price, tick.asks[0].price
            mid = (bid + ask) / 2.0
            spread_pct: float | None = (ask - bid) / mid * 100.0 if mid > 0 else None
        else:
            spread_pct = None
        capped = f" (capped from {qty} at {self.depth_fraction} x {displayed} displayed)"
        capped = capped if send_qty < qty else ""
        if spread_pct is not None and spread_pct <= self.max_spread_pct:
            return Adjustment(
                qty=send_qty,
                action="send",
                limit_price=limit,
                reason=f"spread {spread_pct:.3f}% within {self.max_spread_pct}%{capped}",
                spread_pct=spread_pct,
                displayed_qty=displayed,
            )
        what = (
            f"spread {spread_pct:.3f}% above {self.max_spread_pct}%"
            if spread_pct is not None
            else f"no {'bids' if side is Side.BUY else 'asks'} displayed: spread unknown"
        )
        if waited_s >= self.max_wait_s:
            return Adjustment(
                qty=send_qty,
                action="cross_after_wait",
                limit_price=limit,
                reason=(
                    f"{what}; waited {waited_s:.1f}s >= {self.max_wait_s}s, crossing anyway{capped}"
                ),
                spread_pct=spread_pct,
                displayed_qty=displayed,
            )
        return Adjustment(
            qty=0,
            action="wait",
            limit_price=own[0].price if own else limit,
            reason=f"{what}; waited {waited_s:.1f}s of {self.max_wait_s}s",
            spread_pct=spread_pct,
            displayed_qty=displayed,
        )


def _sweep_price(levels: Sequence[Level], qty: int) -> float:
    """Price of the deepest displayed level needed to fill ``qty`` (``qty`` <= displayed)."""
    acc = 0
    price = 0.0
    for level in levels[:5]:
        price = level.price
        acc += level.qty
        if acc >= qty:
            break
    return price


# ---- brackets ---------------------------------------------------------------------------


def _grid(ticks: int, tick_size: float) -> float:
    # Round away binary noise (7 * 0.05 = 0.35000000000000003) so prices print and compare
    # as the exchange's grid.
    return round(ticks * tick_size, 8)


class Bracket(msgspec.Struct, frozen=True):
    """Stop loss and take profit around an entry, on the exchange's tick grid.

    Both prices are rounded TOWARD the entry: the stop so the loss at the stop never
    exceeds ``stop_multiple`` x ATR, the risk the capital brain sized the position for;
    the target so it never asks for more than the designed move. Each is at least one
    tick from the entry, on the correct side, even when the ATR distance is under a tick.
    """

    side: Side  # side of the position's entry: BUY = long
    entry_price: float
    stop: float
    target: float
    atr: float
    tick_size: float

    @classmethod
    def from_entry(
        cls,
        side: Side,
        entry_price: float,
        atr: float,
        stop_multiple: float,
        take_multiple: float,
        tick_size: float = 0.05,
    ) -> Bracket:
        if not (math.isfinite(atr) and atr > 0):
            raise ChimeraError(
                f"bracket needs a finite ATR > 0, got {atr!r}: without a distance there is no "
                "stop; wait for the ATR to warm up before entering"
            )
        for name, m in (("stop_multiple", stop_multiple), ("take_multiple", take_multiple)):
            if not (math.isfinite(m) and m > 0):
                raise ChimeraError(f"bracket {name} must be a finite number > 0, got {m!r}")
        if not (math.isfinite(tick_size) and tick_size > 0):
            raise ChimeraError(f"bracket tick_size must be > 0, got {tick_size!r}")
        if not (math.isfinite(entry_price) and entry_price >= 2 * tick_size):
            raise ChimeraError(
                f"bracket entry_price must be a finite price of at least two ticks "
                f"({2 * tick_size}) so a stop fits below it, "
                f"got {entry_price!r}"
            )

        # Work in whole ticks. Snap values within 1e-9 tick of the grid onto it so that
        # 100.0 / 0.05 = 1999.9999999999998 is tick 2000, not 1999.
        def ticks(price: float, up: bool) -> int:
            x = price / tick_size
            r = round(x)
            if abs(x - r) < 1e-9:
                return r
            return math.ceil(x) if up else math.floor(x)

        below_entry = ticks(entry_price, up=True) - 1  # highest grid price strictly below
        above_entry = ticks(entry_price, up=False) + 1  # lowest grid price strictly above
        d_stop, d_take = atr * stop_multiple, atr * take_multiple
        if side is Side.BUY:
            stop_t = min(ticks(entry_price - d_stop, up=True), below_entry)
            take_t = max(ticks(entry_price + d_take, up=False), above_entry)
            stop_t = max(stop_t, 1)  # a stop at or below zero can never trigger
        else:
            stop_t = max(ticks(entry_price + d_stop, up=False), above_entry)
            take_t = min(ticks(entry_price - d_take, up=True), below_entry)
            take_t = max(take_t, 1)
        return cls(
            side=side,
            entry_price=entry_price,
            stop=_grid(stop_t, tick_size),
            target=_grid(take_t, tick_size),
            atr=atr,
            tick_size=tick_size,
        )

    def check(self, ltp: float) -> Purpose | None:
        """STOP_LOSS / TAKE_PROFIT when ``ltp`` reaches a leg, else None (NaN never fires)."""
        if self.side is Side.BUY:
            if ltp <= self.stop:
                return Purpose.STOP_LOSS
            if ltp >= self.target:
                return Purpose.TAKE_PROFIT
        else:
            if ltp >= self.stop:
                return Purpose.STOP_LOSS
            if ltp <= self.target:
                return Purpose.TAKE_PROFIT
        return None


# ---- intraday square-off ----------------------------------------------------------------


def parse_clock(hhmm: str) -> int:
    """``"15:15"`` → seconds after IST midnight (54900)."""
    parts = hhmm.split(":") if isinstance(hhmm, str) else []
    if (
        len(parts) != 2
        or not all(len(p) == 2 and p.isascii() and p.isdigit() for p in parts)
        or int(parts[0]) > 23
        or int(parts[1]) > 59
    ):
        raise ConfigError(f"expected a clock time 'HH:MM' (00:00-23:59, IST), got {hhmm!r}")
    return int(parts[0]) * 3600 + int(parts[1]) * 60


def ist_seconds(exchange_ts_ms: int) -> int:
    """Seconds after IST midnight of an exchange timestamp (epoch ms, UTC)."""
    return (exchange_ts_ms // 1000 + IST_OFFSET_S) % _DAY_S


def square_off_due(exchange_ts_ms: int, cutoff_s: int) -> bool:
    """True from the cut-off until IST midnight (positions must be closed, no entries)."""
    return (exchange_ts_ms // 1000 + IST_OFFSET_S) % _DAY_S >= cutoff_s


# ---- order builders ---------------------------------------------------------------------

PURPOSE_CODES: dict[Purpose, str] = {
    Purpose.EXIT: "EX",
    Purpose.STOP_LOSS: "SL",
    Purpose.TAKE_PROFIT: "TP",
    Purpose.SQUARE_OFF: "SQ",
    Purpose.FLATTEN: "FL",
}


def exit_request(
    position: Position,
    purpose: Purpose,
    intent_id: str,
    exchange_type: int,
    exchange_ts_ms: int,
    seq: int,
    *,
    product: str = "INTRADAY",
    symbol: str = "",
) -> OrderRequest:
    """A MARKET order that closes ``position``. The id ``{intent_id}-{code}{seq}`` is a pure
    function of its inputs, so a replay or restart rebuilds the same id and the journal
    refuses a second send."""
    code = PURPOSE_CODES.get(purpose)
    if code is None:
        raise ChimeraError(
            f"exit purpose must be one of {', '.join(p.value for p in PURPOSE_CODES)}, "
            f"got {purpose.value}"
        )
    if position.qty == 0:
        raise ChimeraError(f"no position to exit on token {position.token} (qty 0)")
    if seq < 0:
        raise ChimeraError(f"exit seq must be >= 0, got {seq}")
    return OrderRequest(
        client_order_id=f"{intent_id}-{code}{seq}",
        intent_id=intent_id,
        token=position.token,
        exchange_type=exchange_type,
        side=Side.SELL if position.qty > 0 else Side.BUY,
        qty=abs(position.qty),
        order_type=OrderType.MARKET,
        purpose=purpose,
        product=product,
        symbol=symbol,
        exchange_ts_ms=exchange_ts_ms,
    )


def child_request(
    parent: OrderRequest, n: int, qty: int, *, limit_price: float | None = None
) -> OrderRequest:
    """Child ``n`` of a sliced parent: id ``{parent id}-c{n}``, same intent, side, purpose.
    ``limit_price`` (e.g. the liquidity adjuster's suggestion) makes it a LIMIT order."""
    if n < 0 or qty <= 0:
        raise ChimeraError(f"child order needs n >= 0 and qty > 0, got n={n}, qty={qty}")
    if limit_price is not None and not (math.isfinite(limit_price) and limit_price > 0):
        raise ChimeraError(f"child limit_price must be a price > 0, got {limit_price!r}")
    changes: dict[str, object] = {"client_order_id": f"{parent.client_order_id}-c{n}", "qty": qty}
    if limit_price is not None:
        changes.update(order_type=OrderType.LIMIT, limit_price=limit_price)
    return msgspec.structs.replace(parent, **changes)
