"""The simulator's market: a seeded, regime-switching random walk with a best-20 book.

One ``Market`` owns one exchange clock and a set of instruments, which may sit on
several segments at once (cash and F&O, as one SmartAPI feed serves them): an
instrument is an ``(exchange_type, token)`` pair and its ticks carry its own exchange
type. Each ``advance()`` moves the clock by a small random step and updates one
instrument (round robin), so per-instrument sequence numbers rise by exactly one per
tick. ``snapshot(token, mode)`` then shows that instrument as the exchange would send
it in a subscription mode: only the fields the mode carries on the wire (so
``decode(encode(t)) == t`` for every snapshot).

Exchange time is simulated, never wall clock: it starts at 09:15:00 IST on a
seed-chosen weekday, stays inside the 09:15-15:30 session and rolls to the next
weekday's open at the close (day volume and OHLC reset, the close carried as the
previous close). A demo therefore warms hours of 1-minute bars in seconds. A market
given ``resume_after_ms`` (the clock a previous run stopped at) opens on the next weekday
after that day instead, so a restarted simulator never repeats exchange times.

Prices are kept as integer paise on the instrument's tick grid (5 paise, or the
instrument master's tick for a known F&O contract) and converted to rupees exactly as
the decoder does (``paise / 100.0``), so values compare equal after a round trip.
The average traded price is a volume-weighted mean and, like the real feed's, is
integer paise but not on the tick grid.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timedelta, timezone

import msgspec

from chimera_core.contracts import ExchangeType, Level, Mode, Tick
from tools.sim.master import SAMPLE_MASTER

# IST has had no daylight saving since 1945: a fixed offset is exact.
IST = timezone(timedelta(hours=5, minutes=30), "IST")
TICK_PAISE = 5  # NSE cash tick size, ₹0.05
SESSION_OPEN = (9, 15)
SESSION_MS = (6 * 60 + 15) * 60 * 1000  # 09:15 -> 15:30
BEST5_LEVELS = 5
DEPTH_LEVELS = 20
CIRCUIT_BAND = 0.10  # ±10 % of the previous close
DEFAULT_TOKENS: tuple[str, ...] = ("2885", "1594", "3045")

# Realistic start prices (₹) for well-known NSE_CM tokens; others get a seeded price.
START_PRICES: Mapping[str, float] = {
    "2885": 1300.0,  # RELIANCE-EQ
    "1594": 1900.0,  # INFY-EQ
    "3045": 800.0,  # SBIN-EQ
    "11536": 3500.0,  # TCS-EQ
    "1333": 1700.0,  # HDFCBANK-EQ
    "1660": 480.0,  # ITC-EQ
}

# Start prices (₹) for F&O contracts in the simulator's instrument master
# (tools/sim/master.py): a NIFTY future trades near the index, its options near their
# premium, not in the equity range the seeded price would give.
FO_START_PRICES: Mapping[str, float] = {
    "35006": 24500.0,  # NIFTY26DEC24FUT
    "43650": 250.0,  # NIFTY26DEC2425000CE
    "43651": 450.0,  # NIFTY26DEC2425000PE
}
DEFAULT_LOT_DERIVATIVE = 25  # an F&O token the master does not list


def _master_contracts() -> dict[str, tuple[int, int]]:
    """NSE F&O token -> (lot size, tick in paise) from the simulator's instrument master."""
    contracts = {}
    for row in SAMPLE_MASTER:
        if row["exch_seg"] == "NFO":
            contracts[row["token"]] = (int(row["lotsize"]), round(float(row["tick_size"])))
    return contracts


# Only NSE_FO: its ticks are whole paise. CDE_FO ticks are fractions of a paise, which
# this paise-based walk cannot place on their grid.
_NSE_FO_CONTRACTS = _master_contracts()

_DERIVATIVE_EXCHANGES = frozenset(
    {ExchangeType.NSE_FO, ExchangeType.BSE_FO, ExchangeType.MCX_FO, ExchangeType.NCX_FO,
     ExchangeType.CDE_FO}
)  # fmt: skip
_BOOK_SHAPES = 512  # pre-drawn book shapes; a tick picks one with a single draw


class Regime(enum.IntEnum):
    """Market regime of one instrument: sets drift, volatility, spread and trade size."""

    CALM = 0
    TRENDING = 1
    VOLATILE = 2


# Parameters by regime, per unit of exchange time so volatility per hour does not
# depend on the tick step: (volatility as a fraction of price per sqrt-second, drift as
# a fraction of price per second, max spread in ticks, mean trade size). Calm comes out
# near 1 % a day.
_REGIME_PARAMS = {
    Regime.CALM: (0.00006, 0.0, 2, 40.0),
    Regime.TRENDING: (0.00007, 0.00002, 2, 80.0),
    Regime.VOLATILE: (0.0002, 0.0, 4, 150.0),
}
# Mean time spent in each regime before switching, in seconds of exchange time.
_REGIME_MEAN_S = {Regime.CALM: 600.0, Regime.TRENDING: 180.0, Regime.VOLATILE: 120.0}
_OPENING_GAP = 0.004  # sigma of the overnight gap, as a fraction of the previous close
_TRADE_P = 0.8  # the rest are book-only updates (no new trade, same LTP and volume)


class _BookShape:
    """Quantities, order counts and price gaps of 20 levels per side, drawn once."""

    __slots__ = ("ask_gap", "ask_orders", "ask_qty", "bid_gap", "bid_orders", "bid_qty")

    def __init__(self, rng: random.Random) -> None:
        self.bid_qty, self.bid_orders, self.bid_gap = self._side(rng)
        self.ask_qty, self.ask_orders, self.ask_gap = self._side(rng)

    @staticmethod
    def _side(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        qty, orders, gap = [], [], []
        for i in range(DEPTH_LEVELS):
            q = int(rng.lognormvariate(math.log(150 + 40 * i), 0.9)) + 1
            qty.append(q)
            # Orders stay within int16 on the wire and never exceed the quantity.
            orders.append(max(1, min(q, 9999, int(q / rng.uniform(15.0, 150.0)) + 1)))
            # Deeper in the book price levels are sometimes skipped.
            gap.append(0 if rng.random() < 0.8 else rng.randint(1, 2))
        return tuple(qty), tuple(orders), tuple(gap)


class _Instrument:
    """Mutable state of one token. Prices are integer paise on the tick grid."""

    __slots__ = (
        "aggressor_buy", "day_high", "day_low", "day_open", "derivative", "exchange_type",
        "last_trade_ms", "lot_size", "lower_circuit", "ltp", "ltq", "oi", "oi_prev_close",
        "open_pending", "prev_close", "received_lag_ms", "regime", "sequence", "shape",
        "spread", "tick", "tick_ms", "token", "total_buy_qty", "total_sell_qty", "trend",
        "turnover", "upper_circuit", "volume", "week52_high", "week52_low",
    )  # fmt: skip

    def __init__(self, token: str, exchange_type: int, rng: random.Random) -> None:
        self.token = token
        self.exchange_type = exchange_type
        self.derivative = exchange_type in _DERIVATIVE_EXCHANGES
        lot, tick = (DEFAULT_LOT_DERIVATIVE if self.derivative else 1), TICK_PAISE
        known = START_PRICES.get(token)
        if exchange_type == ExchangeType.NSE_FO:
            lot, tick = _NSE_FO_CONTRACTS.get(token, (lot, tick))
            known = FO_START_PRICES.get(token)
        self.tick = tick
        # Draw order as before for cash tokens, so existing seeds give the same market.
        base = known or rng.uniform(100.0, 3000.0)
        start = self._grid(base * 100 * rng.uniform(0.98, 1.02))
        self.prev_close = start
        self.ltp = start
        self.ltq = 0
        self.sequence = rng.randrange(1_000_000, 20_000_000)
        self.tick_ms = 0
        self.last_trade_ms = 0
        self.regime = Regime.CALM
        self.trend = 1
        self.aggressor_buy = True
        self.spread = 1
        self.shape = 0
        self.received_lag_ms = 1
        self.lot_size = lot
        self.total_buy_qty = float(rng.randrange(50_000, 500_000))
        self.total_sell_qty = float(rng.randrange(50_000, 500_000))
        self.week52_high = self._grid(start * rng.uniform(1.1, 1.4))
        self.week52_low = self._grid(start * rng.uniform(0.65, 0.9))
        # Open interest only exists for derivatives; cash equities report 0.
        self.oi = rng.randrange(100_000, 5_000_000) * self.lot_size if self.derivative else 0
        self.oi_prev_close = self.oi
        self.new_session()

    def new_session(self) -> None:
        """Reset the day: volume and OHLC start over, the last price becomes the close."""
        self.prev_close = self.ltp
        self.upper_circuit = self._grid(self.prev_close * (1 + CIRCUIT_BAND), math.floor)
        self.lower_circuit = self._grid(self.prev_close * (1 - CIRCUIT_BAND), math.ceil)
        self.day_open = self.day_high = self.day_low = 0
        self.volume = 0
        self.turnover = 0
        self.oi_prev_close = self.oi
        self.open_pending = True  # the first tick of the day is a trade that sets the open

    def _grid(self, paise: float, rounding: Callable[[float], int] = round) -> int:
        """Snap a paise value to this instrument's tick grid (at least one tick)."""
        return max(self.tick, rounding(paise / self.tick) * self.tick)


def session_open_ms(day: date) -> int:
    """Epoch milliseconds of 09:15:00 IST on ``day``."""
    opened = datetime(day.year, day.month, day.day, *SESSION_OPEN, tzinfo=IST)
    return int(opened.timestamp()) * 1000


def _next_weekday(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


Instrument = tuple[int, str]  # (exchange type, token)


def _instrument_key(entry: str | tuple[int, str], default_exchange_type: int) -> Instrument:
    if isinstance(entry, str):
        return (default_exchange_type, entry)
    exchange_type, token = entry
    if not isinstance(token, str) or not token:
        raise ValueError(f"token must be a non-empty string, got {token!r} in {entry!r}")
    try:
        return (int(ExchangeType(exchange_type)), token)
    except ValueError:
        names = ", ".join(f"{e.name}={int(e)}" for e in ExchangeType)
        raise ValueError(
            f"unknown exchange type {exchange_type!r} for token {token!r} (one of {names})"
        ) from None


class Market:
    """Seeded market for ``tokens``, on one or several segments; deterministic per seed.

    ``tokens`` holds bare tokens, which are on ``exchange_type``, and/or
    ``(exchange_type, token)`` pairs, e.g. ``["2885", (ExchangeType.NSE_FO, "35006")]``;
    they tick round robin in that order. ``tick_interval_ms`` bounds the random
    exchange-time step between two ticks. ``resume_after_ms``: open on the next weekday
    after that exchange time's day, not on the seed's.
    """

    def __init__(
        self,
        tokens: Iterable[str | tuple[int, str]] = DEFAULT_TOKENS,
        seed: int = 7,
        exchange_type: int = ExchangeType.NSE_CM,
        tick_interval_ms: tuple[int, int] = (20, 400),
        resume_after_ms: int | None = None,
    ) -> None:
        # The segment of bare tokens (the only one when every token is bare).
        self.exchange_type = int(ExchangeType(exchange_type))
        self.instruments: tuple[Instrument, ...] = tuple(
            _instrument_key(entry, self.exchange_type) for entry in tokens
        )
        if not self.instruments:
            raise ValueError("Market needs at least one token")
        if len(set(self.instruments)) != len(self.instruments):
            raise ValueError(f"duplicate (exchange_type, token) in {self.instruments}")
        self.tokens: tuple[str, ...] = tuple(token for _, token in self.instruments)
        self.exchange_types: frozenset[int] = frozenset(e for e, _ in self.instruments)
        low, high = tick_interval_ms
        if not 0 < low <= high:
            raise ValueError(f"tick_interval_ms must be 0 < low <= high, got {tick_interval_ms}")
        self.seed = seed
        self._step_ms = (low, high)
        self._rng = random.Random(seed)
        shapes_rng = random.Random(seed * 7919 + 1)
        self._shapes = tuple(_BookShape(shapes_rng) for _ in range(_BOOK_SHAPES))
        self._instruments = {
            key: _Instrument(key[1], key[0], self._rng) for key in self.instruments
        }
        self._by_token: dict[str, list[_Instrument]] = {}
        for inst in self._instruments.values():
            self._by_token.setdefault(inst.token, []).append(inst)
        self._order = tuple(self._instruments[key] for key in self.instruments)
        self._next = 0
        # Drawn even when resuming, so a seed's prices are the same either way.
        first = date(2024, 1, 1) + timedelta(days=self._rng.randrange(730))
        if resume_after_ms is not None:
            stopped = datetime.fromtimestamp(resume_after_ms / 1000, IST).date()
            first = _next_weekday(stopped)
        while first.weekday() >= 5:
            first += timedelta(days=1)
        self.session_date: date = first
        self._session_open_ms = session_open_ms(first)
        self.now_ms: int = self._session_open_ms  # exchange time of the latest tick
        self._session_started = False
        self.ticks = 0

    @property
    def session_close_ms(self) -> int:
        return self._session_open_ms + SESSION_MS

    def knows(self, exchange_type: int, token: str) -> bool:
        return (exchange_type, token) in self._instruments

    def _instrument(self, token: str, exchange_type: int | None) -> _Instrument:
        if exchange_type is not None:
            return self._instruments[(int(exchange_type), token)]
        found = self._by_token[token]
        if len(found) > 1:
            segments = ", ".join(ExchangeType(i.exchange_type).name for i in found)
            raise ValueError(
                f"token {token!r} is on several segments ({segments}): pass exchange_type"
            )
        return found[0]

    def regime(self, token: str, exchange_type: int | None = None) -> Regime:
        """The regime ``token`` is in now (``exchange_type`` needed only if ambiguous)."""
        return self._instrument(token, exchange_type).regime

    def lot_size(self, token: str, exchange_type: int | None = None) -> int:
        """Units per lot of ``token``: traded quantities and open interest are multiples."""
        return self._instrument(token, exchange_type).lot_size

    def tick_size(self, token: str, exchange_type: int | None = None) -> float:
        """Price tick of ``token`` in rupees."""
        return self._instrument(token, exchange_type).tick / 100.0

    def advance(self) -> str:
        """Move the market one tick forward and return the token that ticked."""
        return self.advance_key()[1]

    def advance_key(self) -> Instrument:
        """Move the market one tick forward; return ``(exchange_type, token)`` that ticked."""
        rng = self._rng
        if self._session_started:
            now = self.now_ms + rng.randint(*self._step_ms)
            if now > self.session_close_ms:
                self._roll_session()
                now = self._session_open_ms
        else:
            now = self._session_open_ms
            self._session_started = True
        self.now_ms = now

        inst = self._order[self._next]
        self._next = (self._next + 1) % len(self._order)
        self._step(inst, now, rng)
        self.ticks += 1
        return (inst.exchange_type, inst.token)

    def next_tick(self, mode: int = Mode.QUOTE) -> Tick:
        """Advance one tick and return it as seen in ``mode``."""
        exchange_type, token = self.advance_key()
        return self.snapshot(token, mode, exchange_type)

    def _roll_session(self) -> None:
        self.session_date = _next_weekday(self.session_date)
        self._session_open_ms = session_open_ms(self.session_date)
        for inst in self._order:
            inst.new_session()

    def _step(self, inst: _Instrument, now: int, rng: random.Random) -> None:
        # Seconds since this token last ticked: volatility, drift and regime changes
        # scale with exchange time, not with the number of ticks.
        dt_s = max(0.001, (now - inst.tick_ms) / 1000.0)
        switch_p = 0.0 if inst.open_pending else min(1.0, dt_s / _REGIME_MEAN_S[inst.regime])
        if rng.random() < switch_p:
            inst.regime = Regime((inst.regime + rng.randint(1, 2)) % 3)
            inst.trend = 1 if rng.random() < 0.5 else -1
        sigma_rel, drift_rel, max_spread, mean_size = _REGIME_PARAMS[inst.regime]
        inst.sequence += 1
        inst.tick_ms = now
        inst.received_lag_ms = rng.randint(1, 40)
        inst.shape = rng.randrange(_BOOK_SHAPES)
        inst.spread = rng.randint(1, max_spread)
        # Resting interest drifts whether or not there is a trade.
        inst.total_buy_qty = float(max(1_000, int(inst.total_buy_qty + rng.gauss(0.0, 1500.0))))
        inst.total_sell_qty = float(max(1_000, int(inst.total_sell_qty + rng.gauss(0.0, 1500.0))))

        if not inst.open_pending and rng.random() >= _TRADE_P:
            return  # book-only update: price, volume and last trade stay as they were

        price_ticks = inst.ltp / inst.tick
        if inst.open_pending:
            mean, sigma = 0.0, price_ticks * _OPENING_GAP  # overnight gap at the open
        else:
            mean = price_ticks * drift_rel * dt_s * inst.trend
            sigma = price_ticks * sigma_rel * math.sqrt(dt_s)
        move = round(rng.gauss(mean, sigma))
        ltp = inst.ltp + move * inst.tick
        inst.ltp = min(inst.upper_circuit, max(inst.lower_circuit, ltp))
        inst.aggressor_buy = move > 0 or (move == 0 and rng.random() < 0.5)
        inst.ltq = (int(rng.expovariate(1.0 / mean_size)) + 1) * inst.lot_size
        inst.volume += inst.ltq
        inst.turnover += inst.ltq * inst.ltp
        inst.last_trade_ms = now
        if inst.open_pending:
            inst.day_open = inst.day_high = inst.day_low = inst.ltp
            inst.open_pending = False
        else:
            inst.day_high = max(inst.day_high, inst.ltp)
            inst.day_low = min(inst.day_low, inst.ltp)
        inst.week52_high = max(inst.week52_high, inst.ltp)
        inst.week52_low = min(inst.week52_low, inst.ltp)
        if inst.derivative:
            inst.oi = max(inst.lot_size, inst.oi + rng.randint(-4, 4) * inst.lot_size)

    def snapshot(self, token: str, mode: int, exchange_type: int | None = None) -> Tick:
        """The latest state of ``token`` with exactly the fields ``mode`` carries.

        ``exchange_type`` is needed only when the token is on several segments.
        """
        inst = self._instrument(token, exchange_type)
        mode = int(mode)
        if mode == Mode.DEPTH:
            # DEPTH packets carry no sequence and no LTP: exchange time at offset 27,
            # the packet time at offset 35.
            bids, asks = self._book(inst, DEPTH_LEVELS)
            return Tick(
                token, inst.exchange_type, mode, 0, inst.tick_ms, 0.0,
                bids=bids, asks=asks, packet_received_ms=inst.tick_ms + inst.received_lag_ms,
            )  # fmt: skip
        ltp = inst.ltp / 100.0
        if mode == Mode.LTP:
            return Tick(token, inst.exchange_type, mode, inst.sequence, inst.tick_ms, ltp)
        if mode not in (Mode.QUOTE, Mode.SNAP_QUOTE):
            raise ValueError(f"unknown subscription mode {mode} (expected 1, 2, 3 or 4)")
        avg = inst.turnover // inst.volume if inst.volume else 0
        quote = Tick(
            token, inst.exchange_type, mode, inst.sequence, inst.tick_ms, ltp,
            ltq=inst.ltq, avg_price=avg / 100.0, volume=inst.volume,
            total_buy_qty=inst.total_buy_qty, total_sell_qty=inst.total_sell_qty,
            open=inst.day_open / 100.0, high=inst.day_high / 100.0, low=inst.day_low / 100.0,
            prev_close=inst.prev_close / 100.0,
        )  # fmt: skip
        if mode == Mode.QUOTE:
            return quote
        bids, asks = self._book(inst, BEST5_LEVELS)
        oi_change = (
            (inst.oi - inst.oi_prev_close) * 100.0 / inst.oi_prev_close
            if inst.oi_prev_close
            else 0.0
        )
        return msgspec.structs.replace(
            quote,
            last_traded_ts_s=inst.last_trade_ms // 1000,
            open_interest=inst.oi, oi_change_pct=oi_change,
            upper_circuit=inst.upper_circuit / 100.0, lower_circuit=inst.lower_circuit / 100.0,
            week52_high=inst.week52_high / 100.0, week52_low=inst.week52_low / 100.0,
            bids=bids, asks=asks,
        )  # fmt: skip

    def _book(self, inst: _Instrument, depth: int) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        """Bids descending and asks ascending around the last trade, spread >= 1 tick."""
        shape = self._shapes[inst.shape]
        # The last trade hit the best ask (buyer aggressor) or the best bid (seller).
        if inst.aggressor_buy:
            best_ask = inst.ltp
            best_bid = inst.ltp - inst.spread * inst.tick
        else:
            best_bid = inst.ltp
            best_ask = inst.ltp + inst.spread * inst.tick
        bids = []
        price = best_bid
        for i in range(depth):
            if price <= 0:
                break  # a penny stock's book cannot go below one tick
            bids.append(Level(price / 100.0, shape.bid_qty[i], shape.bid_orders[i]))
            price -= (1 + shape.bid_gap[i]) * inst.tick
        asks = []
        price = best_ask
        for i in range(depth):
            asks.append(Level(price / 100.0, shape.ask_qty[i], shape.ask_orders[i]))
            price += (1 + shape.ask_gap[i]) * inst.tick
        return tuple(bids), tuple(asks)
