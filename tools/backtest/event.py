"""Event mode: history through the same node as ``chimera live`` — engine, governance,
router, paper broker, journal — built by the composition root (``tools/node.py``) and
wired frame by frame by ``chimera_core.node.Node``, on a simulated clock.

What is simulated, and how:

- **Ticks from bars.** Each bar becomes prints through the real SmartAPI codec
  (``encode`` → the engine's ``decode``) along its path, at the bar's open time plus 0,
  ¼, ½ and ¾ of the interval: O→L→H→C on an up bar (close ≥ open), O→H→L→C on a down bar
  (an up bar visits its low first, so a long's stop is tested before its target). The
  open is printed three times and each other price twice, ``latency_ms + 1`` apart: the
  state machine arms on one print and fires on the next, so an entry decided at a bar's
  open fills at that open; a bracket or an exit triggered by a print fills on its repeat,
  at the price that triggered it. When a leg of the path passes through the position's
  stop or target, the market is printed at that level on the way (twice), so a bracket
  fills at its level (an open beyond it, a gap, fills at the open). Each price's first
  print carries a quarter of the bar's volume (cumulative for the trading day, as the
  feed's is).
- **One clock.** Exchange time is the bar's; the engine's clock, the router's report
  stamps, the order throttle and its waits all run on it (``SimClock``), so results never
  depend on how fast the machine replays. A throttled order waits for simulated time to
  pass, not wall time.
- **Receive time** is the exchange time: the feed is stale only when the data has a gap
  longer than ``feed.stale_after_s``, which a backtest raises to four bar intervals (a
  weekend on daily bars, an overnight on minute bars re-confirms like a live restart).
- **Fills.** The paper broker matches each print before the engine steps on it (as live
  paper does), so an order decided on one print fills at the next print's price plus the
  configured slippage, with the segment's charges. On bars of a day or longer the market
  runs positional: no entry cut-off, no square-off, DELIVERY product.
- **The journal** is a throwaway file in the work directory with ``synchronous=NORMAL``.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import math
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import numpy.typing as npt
import structlog

from chimera_core.config import Config
from chimera_core.contracts import (
    Decision,
    ExchangeType,
    ExecutionReport,
    Mode,
    Side,
    Tick,
    Transition,
)
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.feed.smartapi_v2 import decode, encode
from chimera_core.markets import MarketConfig, calendar_for
from chimera_core.strategy import StrategyFactory, default_factory
from chimera_core.telemetry import TOPIC_EXEC
from tools.node import build_node, build_parts

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
_SETTLE_ROUNDS = 10_000  # event-loop turns a tick may take for the broker calls it caused


# A cash market open around the clock, every day (no entry cut-off, no square-off): TOML
# for tests and benchmarks that must not depend on the calendar.
ALWAYS_OPEN_MARKET = """\
[markets.NSE_CM]
timezone = "UTC"
open = "00:00"
close = "00:00"
entry_cutoff = "none"
square_off = "none"
weekdays = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
"""


class BarSeries(Protocol):
    """What event mode reads from a bar series (``tools.backtest.data.Bars``; read only, so
    a frozen dataclass is one too)."""

    @property
    def ts_ms(self) -> npt.NDArray[np.int64]: ...  # bar open, UTC epoch ms
    @property
    def open(self) -> npt.NDArray[np.float64]: ...
    @property
    def high(self) -> npt.NDArray[np.float64]: ...
    @property
    def low(self) -> npt.NDArray[np.float64]: ...
    @property
    def close(self) -> npt.NDArray[np.float64]: ...
    @property
    def volume(self) -> npt.NDArray[np.float64]: ...
    @property
    def interval_ms(self) -> int: ...
    @property
    def tz(self) -> str: ...


class BacktestError(ChimeraError):
    """A backtest that cannot run as asked (bad settings, a node that does not settle)."""


class SimClock:
    """Simulated time for everything in the node that reads a clock or waits."""

    def __init__(self, start_ns: int = 0) -> None:
        self.now_ns = start_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._n = 0

    def ns(self) -> int:
        return self.now_ns

    def seconds(self) -> float:
        return self.now_ns / 1e9

    async def sleep(self, seconds: float) -> None:
        """Wait until simulated time has moved ``seconds`` on (the driver moves it)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self.now_ns + int(seconds * 1e9), self._n, fut))
        await fut

    @property
    def sleeping(self) -> int:
        return sum(not f.done() for _, _, f in self._sleepers)

    def advance(self, to_ns: int) -> None:
        """Move to ``to_ns`` (never back) and wake every wait that has run out."""
        self.now_ns = max(self.now_ns, to_ns)
        sleepers = self._sleepers
        while sleepers and sleepers[0][0] <= self.now_ns:
            _, _, fut = heapq.heappop(sleepers)
            if not fut.done():
                fut.set_result(None)


def intrabar_path(o: float, h: float, low: float, c: float) -> tuple[float, float, float, float]:
    """The four prices a bar is replayed as: O→L→H→C up (c ≥ o), O→H→L→C down."""
    return (o, low, h, c) if c >= o else (o, h, low, c)


# How often each price of the path is printed: the open three times (the state machine
# arms on one print and fires on the next; the order fills on the third, at the open),
# the others twice (a bracket or an exit triggered by a print fills on its repeat, at the
# price that triggered it, not at the bar's next extreme).
REPEATS = (3, 2, 2, 2)
PRINTS_PER_BAR = sum(REPEATS)


def bar_ticks(
    bars: BarSeries,
    token: str,
    exchange_type: int,
    latency_ms: int = 0,
    timezone: str = "UTC",
    levels: Callable[[], Sequence[float]] | None = None,
) -> Iterator[Tick]:
    """Every bar as QUOTE prints along its path (see the module docstring), in time order.
    A price's repeats are ``latency_ms + 1`` apart, so an order decided on one reaches the
    paper book by the next. ``timezone`` (the market's) says where a trading day starts.

    ``levels`` (asked before each leg of the path, so it sees what the previous prints
    did) gives prices the market must be seen at when a leg passes through them — the
    position's stop and target: a print at the level, midway along the leg, so a bracket
    fills at its level, not at the bar's extreme."""
    step = bars.interval_ms // len(REPEATS)
    gap = latency_ms + 1
    if step <= 0 or 2 * gap * (max(REPEATS) + 1) > step:
        raise BacktestError(
            f"bar interval {bars.interval_ms} ms is too short to replay with "
            f"execution.paper.latency_ms = {latency_ms}: each quarter of a bar must hold "
            f"{2 * (max(REPEATS) + 1)} steps of {gap} ms"
        )
    zone = ZoneInfo(timezone)
    seq = 0
    day = None
    cum = 0
    for i in range(len(bars.ts_ms)):
        t0 = int(bars.ts_ms[i])
        local_day = datetime.fromtimestamp(t0 / 1000, zone).date()
        if local_day != day:
            day, cum = local_day, 0  # the feed's volume is cumulative for the day
        prices = intrabar_path(
            float(bars.open[i]), float(bars.high[i]), float(bars.low[i]), float(bars.close[i])
        )
        vol = float(bars.volume[i])
        share = int(vol // len(REPEATS)) if math.isfinite(vol) and vol > 0 else 0
        high = low = prices[0]
        for k, (price, repeats) in enumerate(zip(prices, REPEATS, strict=True)):
            if k and levels is not None:
                start = prices[k - 1]
                lo, hi = min(start, price), max(start, price)
                # Passed through on the way (strictly inside the leg; at its end the leg's
                # own print shows it). At most one: stop and target sit on either side.
                inside = sorted(lv for lv in levels() if lo < lv < hi)
                for lv in inside if price > start else inside[::-1]:
                    high, low = max(high, lv), min(low, lv)
                    for r in range(2):
                        seq += 1
                        yield Tick(
                            token=token, exchange_type=exchange_type, mode=int(Mode.QUOTE),
                            sequence=seq, exchange_ts_ms=t0 + (k - 1) * step + step // 2
                            + r * gap, ltp=lv, ltq=0, volume=cum, open=prices[0], high=high,
                            low=low,
                        )  # fmt: skip
            high, low = max(high, price), min(low, price)
            for r in range(repeats):
                seq += 1
                traded = share if r == 0 else 0  # a repeat trades nothing new
                cum += traded
                yield Tick(
                    token=token,
                    exchange_type=exchange_type,
                    mode=int(Mode.QUOTE),
                    sequence=seq,
                    exchange_ts_ms=t0 + k * step + r * gap,
                    ltp=price,
                    ltq=traded,
                    volume=cum,
                    open=prices[0],
                    high=high,
                    low=low,
                )


@dataclass
class Trade:
    """One round trip, from the journal's fills: entry to the fill that flattened it."""

    token: str
    side: str  # "LONG" | "SHORT"
    qty: int
    entry_ts_ms: int
    entry_price: float
    exit_ts_ms: int
    exit_price: float
    exit_purpose: str  # STOP | TARGET | EXIT | SQUARE_OFF | END (open at the end)
    charges: float
    pnl: float  # net of charges
    entry_bar: int = -1
    exit_bar: int = -1


@dataclass
class EventResult:
    bars: int
    ticks: int
    ts_ms: npt.NDArray[np.int64]  # each bar's open
    equity: npt.NDArray[np.float64]  # the account's equity after each bar's last print
    # The kernels at each bar's last print (what the strategy saw): energy, z, band.
    energy: npt.NDArray[np.float64]
    z: npt.NDArray[np.float64]
    band_mean: npt.NDArray[np.float64]
    band_std: npt.NDArray[np.float64]
    trades: list[Trade]
    fills: list[dict[str, Any]]
    charges: float
    starting_equity: float
    final_state: str
    stats: dict[str, int]
    transitions: dict[str, int] = field(default_factory=dict)
    # Entry attempts meta-risk said no to, by rule (one decision can name several rules).
    vetoes: dict[str, int] = field(default_factory=dict)


@dataclass
class _Open:
    sign: int  # +1 long, -1 short
    qty: int  # still held
    entered: int  # entered in all
    avg: float
    ts_ms: int
    charges: float
    exit_value: float = 0.0
    exit_qty: int = 0
    exit_ts_ms: int = 0
    purpose: str = ""


class _RoundTrips:
    """Pairs fills into round trips per token: entry (average price over adds) to the fill
    that flattens it; a fill through zero closes one trip and opens the next."""

    def __init__(self) -> None:
        self.open: dict[str, _Open] = {}
        self.trades: list[Trade] = []

    def on_fill(
        self,
        token: str,
        side: Side,
        qty: int,
        price: float,
        charges: float,
        ts_ms: int,
        purpose: str,
    ) -> None:
        sign = 1 if side is Side.BUY else -1
        pos = self.open.get(token)
        if pos is None:
            self.open[token] = _Open(sign, qty, qty, price, ts_ms, charges)
            return
        if sign == pos.sign:  # adds to the position
            pos.avg = (pos.avg * pos.qty + price * qty) / (pos.qty + qty)
            pos.qty += qty
            pos.entered += qty
            pos.charges += charges
            return
        closing = min(qty, pos.qty)
        share = charges * closing / qty
        pos.charges += share
        pos.exit_value += price * closing
        pos.exit_qty += closing
        pos.exit_ts_ms = ts_ms
        pos.purpose = purpose
        pos.qty -= closing
        if pos.qty == 0:
            del self.open[token]
            self.trades.append(_trade(token, pos))
        if qty > closing:  # reversed through zero: the rest opens the other way
            self.on_fill(token, side, qty - closing, price, charges - share, ts_ms, purpose)

    def close_open(self, token: str, mark: float, ts_ms: int) -> None:
        """A position still open at the end: a trip marked at the last price, no charges."""
        pos = self.open.pop(token, None)
        if pos is None or not math.isfinite(mark):
            return
        pos.exit_value += mark * pos.qty
        pos.exit_qty += pos.qty
        pos.exit_ts_ms, pos.purpose, pos.qty = ts_ms, "END", 0
        self.trades.append(_trade(token, pos))


def _trade(token: str, pos: _Open) -> Trade:
    exit_price = pos.exit_value / pos.exit_qty
    gross = (exit_price - pos.avg) * pos.exit_qty * pos.sign
    return Trade(
        token,
        "LONG" if pos.sign > 0 else "SHORT",
        pos.entered,
        pos.ts_ms,
        pos.avg,
        pos.exit_ts_ms,
        exit_price,
        pos.purpose,
        pos.charges,
        gross - pos.charges,
    )


class SimNode:
    """A node (``tools/node.py``) on a simulated clock: every frame moves the clock to its
    exchange time, then runs through ``Node.on_frame``, and the broker calls it caused
    (place, cancel: the paper broker answers at once) finish before the next frame. Calls
    held by the order throttle wait for simulated time, never wall time. Event mode and
    the in-process tests drive the live node through this."""

    def __init__(
        self,
        cfg: Config,
        start_ns: int = 0,
        strategy: StrategyFactory = default_factory,
        publish: Callable[[bytes, Any], object] | None = None,
        on_transitions: Callable[[ExecutionReport, tuple[Transition, ...]], object] | None = None,
    ) -> None:
        self.clock = clock = SimClock(start_ns)
        self.parts = build_parts(
            cfg, {}, clock=clock.ns, throttle_clock=clock.seconds, sleep=clock.sleep
        )
        router = self.parts.router
        if router is None:
            self.parts.close()
            raise BacktestError("a simulated node needs execution enabled (the paper broker)")
        self.router = router
        self.node = build_node(
            cfg,
            self.parts,
            clock=clock.ns,
            publish=publish,
            on_transitions=on_transitions,
            strategy=strategy,
        )
        self.engine = self.node.engine

    async def start(self) -> None:
        await self.node.connect()
        self.node.restore_halts()

    async def frame(
        self, frame: bytes, exchange_ts_ms: int, recv_ns: int | None = None
    ) -> Decision | None:
        """One feed frame at ``exchange_ts_ms``; received then unless ``recv_ns`` says."""
        ns = exchange_ts_ms * 1_000_000
        self.clock.advance(ns)
        await self.settle()  # throttled orders whose wait ran out go now
        decision = self.node.on_frame(frame, ns if recv_ns is None else recv_ns)
        await self.settle()
        return decision

    async def settle(self) -> None:
        """Let the broker calls in flight finish; those waiting on the throttle stay."""
        router, clock = self.router, self.clock
        for _ in range(_SETTLE_ROUNDS):
            if router.tasks_in_flight <= clock.sleeping:
                return
            await asyncio.sleep(0)
        raise BacktestError(
            f"the router still has {router.tasks_in_flight} broker call(s) running after "
            f"{_SETTLE_ROUNDS} event-loop turns: a broker that does not answer in simulated time"
        )

    async def close(self) -> None:
        try:
            await self.router.stop(timeout_s=0.0)
        finally:
            self.parts.close()


def stale_after_s_for(stale_after_s: float, interval_s: float) -> float:
    """The feed's ``stale_after_s`` a backtest runs with: at least four bar intervals (a
    bar's prints are spread over its interval), at most a week."""
    return min(604_800.0, max(stale_after_s, 4.0 * interval_s))


def backtest_config(
    cfg: Config,
    bars: BarSeries,
    token: str | Sequence[str],
    exchange_type: int,
    work_dir: Path,
) -> Config:
    """The trader's configuration made fit for a replay of ``bars``: its instrument (or the
    instruments ``token`` lists, on ``bars``' interval), bars of the data's interval, a
    throwaway journal, no telemetry wait; positional on daily bars."""
    tokens = [token] if isinstance(token, str) else list(token)
    for one in tokens:
        try:  # the token travels in every frame: the codec must take it
            probe = Tick(one, exchange_type, int(Mode.QUOTE), 1, 0, 1.0)
            decode(encode(probe), 0)
        except (ProtocolError, ValueError, struct.error) as exc:
            raise BacktestError(
                f"token {one!r} cannot travel in a SmartAPI frame ({exc}): use ASCII "
                "letters and digits, e.g. --token 2885"
            ) from None
    interval_s = bars.interval_ms // 1000
    if interval_s <= 0 or interval_s > 86_400 or bars.interval_ms % 1000:
        raise BacktestError(
            f"bar interval {bars.interval_ms} ms: event mode replays whole-second bars of "
            "1 s to 1 day"
        )
    segment = ExchangeType(exchange_type).name
    entries = [f"{segment}:{t}" if segment != cfg.feed.exchange_type else t for t in tokens]
    feed = msgspec.structs.replace(
        cfg.feed,
        tokens=entries,
        mode="QUOTE",
        stale_after_s=stale_after_s_for(cfg.feed.stale_after_s, interval_s),
    )
    strategy = msgspec.structs.replace(cfg.strategy, bar_interval_s=interval_s)
    execution = msgspec.structs.replace(
        cfg.execution, enabled=True, broker="paper", journal_sync="NORMAL"
    )
    markets = dict(cfg.markets)
    if interval_s >= 86_400:
        base = markets.get(segment, MarketConfig())
        markets[segment] = msgspec.structs.replace(
            base,
            open="00:00",
            close="00:00",
            entry_cutoff="none",
            square_off="none",
            weekdays=["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
        )
        execution = msgspec.structs.replace(execution, product="DELIVERY")
    telemetry = msgspec.structs.replace(cfg.telemetry, wait_for_subscriber_s=0.0)
    return msgspec.structs.replace(
        cfg,
        mode="paper",
        data_dir=str(work_dir),
        feed=feed,
        strategy=strategy,
        execution=execution,
        markets=markets,
        telemetry=telemetry,
    )


async def run_event(
    cfg: Config,
    bars: BarSeries,
    token: str = "BT",
    exchange_type: int = int(ExchangeType.NSE_CM),
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    strategy: StrategyFactory = default_factory,
    faults: Callable[[SimNode], Callable[[Tick], bool]] | None = None,
) -> EventResult:
    """Replay ``bars`` through a fresh node built from ``cfg`` running ``strategy`` (see the
    module docstring). ``faults`` (``chimera stress``) is called with the started node (it
    may arm the paper broker's ``fault``) and returns a filter: a print it says False to
    never reaches the feed (an outage)."""
    return await run_instruments(
        cfg, [(token, bars)], exchange_type, work_dir, progress, strategy, faults
    )


def calendar_of(instruments: Sequence[tuple[str, BarSeries]]) -> npt.NDArray[np.int64]:
    """The one calendar N instruments run on: every bar open any of them has, in order."""
    return np.unique(np.concatenate([np.asarray(b.ts_ms, dtype=np.int64) for _, b in instruments]))


def merged_ticks(
    streams: Sequence[Iterator[Tick]],
) -> Iterator[Tick]:
    """The prints of several instruments in exchange-time order; prints at the same
    millisecond in the order of ``streams`` (event mode passes them sorted by token), so
    the order never depends on anything but the data."""
    return heapq.merge(*streams, key=lambda t: t.exchange_ts_ms)


async def run_instruments(
    cfg: Config,
    instruments: Sequence[tuple[str, BarSeries]],
    exchange_type: int = int(ExchangeType.NSE_CM),
    work_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    strategy: StrategyFactory = default_factory,
    faults: Callable[[SimNode], Callable[[Tick], bool]] | None = None,
) -> EventResult:
    """Replay N instruments ``(token, bars)`` on ONE node, one account: each instrument's
    prints at its bars' times, all merged in time order (ties by token), through one
    engine, governance (the portfolio rules see the whole book), router and paper broker.
    The result is the account's: equity per bar of the joint calendar (``calendar_of``),
    every instrument's round trips with bar indices into that calendar. The panel
    (energy, z, band) is the first instrument's. One instrument is ``run_event``."""
    if not instruments:
        raise BacktestError("no instruments to replay")
    tokens = [t for t, _ in instruments]
    if len(set(tokens)) != len(tokens):
        raise BacktestError(f"instruments with the same token: {sorted(tokens)}")
    intervals = {int(b.interval_ms) for _, b in instruments}
    if len(intervals) > 1:
        raise BacktestError(
            f"instruments with different bar intervals ({sorted(intervals)} ms): "
            "resample them to one interval"
        )
    for t, b in instruments:
        if len(b.ts_ms) == 0:
            raise BacktestError(f"no bars to replay for {t}")
    ordered = sorted(instruments, key=lambda tb: tb[0]) if len(instruments) > 1 else instruments
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="chimera-backtest-")
        work_dir = Path(tmp.name)
    try:
        return await _run(
            cfg, ordered, exchange_type, Path(work_dir), progress, strategy, faults,
            panel_token=instruments[0][0],
        )  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()


async def _run(
    cfg: Config,
    instruments: Sequence[tuple[str, BarSeries]],
    exchange_type: int,
    work_dir: Path,
    progress: Callable[[int], None] | None,
    strategy: StrategyFactory,
    faults: Callable[[SimNode], Callable[[Tick], bool]] | None = None,
    panel_token: str = "",
) -> EventResult:
    first = instruments[0][1]
    calendar = calendar_of(instruments) if len(instruments) > 1 else first.ts_ms
    n = len(calendar)
    bt = backtest_config(cfg, first, [t for t, _ in instruments], exchange_type, work_dir)
    trips = _RoundTrips()
    fills: list[dict[str, Any]] = []
    moves: dict[str, int] = {}
    vetoes: dict[str, int] = {}

    def published(topic: bytes, obj: Any) -> None:
        if topic != TOPIC_EXEC:
            return
        report: ExecutionReport = obj
        fill = report.fill
        if fill is None:
            return
        fills.append(
            {
                "ts_ms": fill.exchange_ts_ms,
                "token": report.token,
                "side": fill.side.value,
                "qty": fill.qty,
                "price": fill.price,
                "charges": fill.charges,
                "purpose": report.purpose.value,
                "client_order_id": report.client_order_id,
            }
        )
        trips.on_fill(
            report.token,
            fill.side,
            fill.qty,
            fill.price,
            fill.charges,
            fill.exchange_ts_ms,
            report.purpose.value,
        )

    def moved(_report: ExecutionReport, ts: tuple[Transition, ...]) -> None:
        for t in ts:
            moves[t.event] = moves.get(t.event, 0) + 1

    sim = SimNode(
        bt, int(calendar[0]) * 1_000_000, strategy, publish=published, on_transitions=moved
    )
    engine = sim.engine
    try:
        await sim.start()
        deliver = faults(sim) if faults is not None else None
        equity = np.empty(n, dtype=np.float64)
        panel = np.full((4, n), np.nan)
        frame = sim.frame
        ticks = 0
        bar = 0

        def close_bar(index: int, last: Decision | None) -> None:
            equity[index] = engine.account_snapshot().equity
            if last is not None:
                ph = last.physics
                panel[:, index] = (ph.energy, ph.z, ph.band_mean, ph.band_std)
            if progress is not None:
                progress(index + 1)

        latency = bt.execution.paper.latency_ms
        zone = calendar_for(bt.markets, exchange_type).timezone
        router = sim.router
        streams = [
            bar_ticks(bars, token, exchange_type, latency, zone,
                      levels=functools.partial(router.bracket_levels, token))
            for token, bars in instruments
        ]  # fmt: skip
        prints = streams[0] if len(streams) == 1 else merged_ticks(streams)
        ends = np.asarray(calendar, dtype=np.int64)
        next_start = int(ends[1]) if n > 1 else None
        decision = None
        for tick in prints:
            if next_start is not None and tick.exchange_ts_ms >= next_start:
                close_bar(bar, decision)  # the previous bar's last print is done
                bar = int(np.searchsorted(ends, tick.exchange_ts_ms, side="right")) - 1
                next_start = int(ends[bar + 1]) if bar + 1 < n else None
            if deliver is not None and not deliver(tick):
                continue
            made = await frame(encode(tick), tick.exchange_ts_ms)
            ticks += 1
            if tick.token == panel_token:
                decision = made
            if made is not None:
                for t in made.transitions:
                    moves[t.event] = moves.get(t.event, 0) + 1
                meta = made.meta_risk
                if meta is not None and not meta.allowed:
                    for v in meta.vetoes:
                        vetoes[v.rule] = vetoes.get(v.rule, 0) + 1
        close_bar(bar, decision)
        for token, bars in instruments:
            trips.close_open(token, float(bars.close[-1]), int(bars.ts_ms[-1]))
    finally:
        await sim.close()
    bar_of = _bar_index(calendar)
    for trip in trips.trades:
        trip.entry_bar, trip.exit_bar = bar_of(trip.entry_ts_ms), bar_of(trip.exit_ts_ms)
    return EventResult(
        bars=n,
        ticks=ticks,
        ts_ms=np.asarray(calendar, dtype=np.int64),
        equity=equity,
        energy=panel[0],
        z=panel[1],
        band_mean=panel[2],
        band_std=panel[3],
        trades=trips.trades,
        fills=fills,
        charges=float(sum(f["charges"] for f in fills)),
        starting_equity=bt.execution.paper.starting_cash,
        final_state=engine.trading_state.value,
        stats=engine.stats.as_dict(),
        transitions=dict(sorted(moves.items())),
        vetoes=dict(sorted(vetoes.items())),
    )


def _bar_index(calendar: npt.NDArray[np.int64]) -> Callable[[int], int]:
    starts = np.asarray(calendar, dtype=np.int64)

    def index(ts_ms: int) -> int:
        return int(np.searchsorted(starts, ts_ms, side="right")) - 1

    return index
