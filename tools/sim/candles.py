"""The simulator's historical candles: SmartConnect ``getCandleData`` from the seeded market.

``CandleBook`` derives candles for any instrument of a ``Market`` and any date, as a pure
function of (seed, instrument list, exchange type, token, interval, date), so the same
request always gets the same answer, whatever the live market is doing and in whatever
chunks it is asked. ``CandleDesk`` serves them on ``/rest/secure/angelbroking/historical/
v1/getCandleData`` with Angel One's limits, so a history fetcher's chunking and pacing are
tested for real. Not real market data.

The model (simple on purpose): a daily random walk of log closes anchored so that the day
before the market's first live session closes at the instrument's start price (the
history leads into the session ``chimera sim`` streams), each weekday drawing an opening
gap, a regime (calm / trending / volatile, as ``tools/sim/market.py``) and a close. Inside
the day a Brownian bridge runs from the open to the close over the 375 minutes of
09:15-15:30 IST; minute bars take their open and close from it, wicks from a small extra
draw, volume from a U-shaped intraday profile. Prices sit on the instrument's tick grid.
Longer intervals aggregate the minute bars from 09:15 (the last bar of a day may be
shorter, as Angel One's 15:15 hourly bar is); a daily bar is the whole session, stamped
00:00 IST. Only weekdays trade (no exchange holidays), as in the live market.

Angel One's rules, and what is ours (assumptions are marked):
- route and body: POST ``{exchange, symboltoken, interval, fromdate, todate}``, dates
  ``"YYYY-MM-DD HH:MM"`` IST (SmartConnect.getCandleData, smartapi-python 1.5.5);
  response ``{"status": true, "message": "SUCCESS", "errorcode": "", "data": [[
  "2024-01-02T09:15:00+05:30", open, high, low, close, volume], ...]}``; intraday candles
  whose open time is in [fromdate, todate], daily candles whose date is in that range;
- the most days one request may span, per interval (SmartAPI docs, Historical API, "Max
  Days in one Request"; every third-party client we read uses the same table): ONE_MINUTE
  30, THREE_MINUTE 60, FIVE_MINUTE 100, TEN_MINUTE 100, FIFTEEN_MINUTE 200,
  THIRTY_MINUTE 200, ONE_HOUR 400, ONE_DAY 2000;
- rate limit: 3 requests/s, 500/min, 5000/h (SmartAPI forum topic 4387, "Changes in API
  Rate Limit"), counted over sliding windows; a refused call does not use budget; refusal
  is the plain-text HTTP 403 ``Access denied because of exceeding access rate``, as for
  order calls (shared/reference/smartapi-v2-protocol.md §10);
- errors: AB1004 "Something Went Wrong, Please Try After Sometime" for a malformed
  request: from after to (SmartAPI forum topic 4801), and (assumption: Angel One does not
  publish it) a bad date format, an unknown interval or a range over the interval's
  maximum; AB1009 for a token the market does not trade (the simulator's placeOrder
  convention; assumption).
"""

from __future__ import annotations

import argparse
import functools
import math
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from aiohttp import web

from chimera_core.contracts import ExchangeType, Mode
from tools.sim.market import DEFAULT_TOKENS, IST, SESSION_OPEN, Market

log = structlog.get_logger(__name__)

CANDLE_PATH = "/rest/secure/angelbroking/historical/v1/getCandleData"
RATE_LIMIT_TEXT = "Access denied because of exceeding access rate"  # = orders.RATE_LIMIT_TEXT
CANDLE_RATE_LIMITS: tuple[tuple[float, int], ...] = ((1.0, 3), (60.0, 500), (3600.0, 5000))
# Minutes per bar (0 = one bar per session) and the most days one request may span.
INTERVALS: dict[str, tuple[int, int]] = {
    "ONE_MINUTE": (1, 30),
    "THREE_MINUTE": (3, 60),
    "FIVE_MINUTE": (5, 100),
    "TEN_MINUTE": (10, 100),
    "FIFTEEN_MINUTE": (15, 200),
    "THIRTY_MINUTE": (30, 200),
    "ONE_HOUR": (60, 400),
    "ONE_DAY": (0, 2000),
}
DATE_FORMAT = "%Y-%m-%d %H:%M"
SESSION_MINUTES = 375  # 09:15 -> 15:30
BAD_REQUEST = ("AB1004", "Something Went Wrong, Please Try After Sometime")
# Angel One segment names → the feed's exchange types.
EXCHANGES: dict[str, int] = {
    "NSE": ExchangeType.NSE_CM,
    "NFO": ExchangeType.NSE_FO,
    "BSE": ExchangeType.BSE_CM,
    "BFO": ExchangeType.BSE_FO,
    "MCX": ExchangeType.MCX_FO,
    "NCDEX": ExchangeType.NCX_FO,
    "CDS": ExchangeType.CDE_FO,
}

# The daily walk covers this many weekdays each side of the anchor (~57 years).
_SPAN_DAYS = 15_000
_GAP_SIGMA = 0.004  # overnight gap, as market.py's _OPENING_GAP
# (threshold on a uniform draw, daily volatility, daily drift) for calm/trending/volatile.
_REGIMES = ((0.60, 0.010, 0.0), (0.85, 0.012, 0.002), (1.01, 0.025, 0.0))
_WICK = 0.35  # wick size in units of the minute's volatility
_TURNOVER = 2e9  # ₹ traded per day by a cash instrument, on average
_MONDAY = date(1970, 1, 5)
_CACHED_DAYS = 4096


def _weekday_index(day: date) -> int:
    """Weekdays from 1970-01-05 (a Monday) to ``day`` (a weekday): a trading-day counter."""
    days = (day - _MONDAY).days
    return (days // 7) * 5 + min(days % 7, 5)


def _token_key(token: str) -> int:
    return int(token) if token.isdigit() and len(token) < 18 else zlib.crc32(token.encode())


@dataclass(frozen=True)
class DayBars:
    """One session's minute bars: open times (UTC ms) and prices in paise, volume units."""

    ts_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


class _Instrument:
    """The daily skeleton of one instrument: log closes over the whole span."""

    def __init__(
        self,
        seed: int,
        exchange_type: int,
        token: str,
        start_paise: int,
        tick: int,
        lot: int,
        anchor: date,
    ) -> None:
        self.key = (seed, exchange_type, _token_key(token))
        self.tick, self.lot = tick, lot
        self.anchor = _weekday_index(anchor)
        rng = np.random.default_rng([*self.key, 1])
        draws = rng.standard_normal((2 * _SPAN_DAYS, 4))
        regime = rng.random(2 * _SPAN_DAYS)
        pick = np.searchsorted(np.array([r[0] for r in _REGIMES]), regime, side="right")
        sigma = np.array([r[1] for r in _REGIMES])[pick]
        drift = np.array([r[2] for r in _REGIMES])[pick] * np.sign(draws[:, 2])
        self.gap = _GAP_SIGMA * draws[:, 0]
        self.sigma = sigma
        ret = self.gap + drift + sigma * draws[:, 1]
        cs = np.cumsum(ret)
        # Weekday i closes at log(start) + cs[i] - cs[anchor - 1], i counted from
        # _SPAN_DAYS weekdays before the anchor (the first live session): the weekday
        # before the anchor closes at the start price.
        self.log_close = math.log(start_paise) + cs - cs[_SPAN_DAYS - 1]
        self.day_volume = _TURNOVER / (start_paise / 100) * np.exp(0.3 * draws[:, 3])
        self._days: dict[int, DayBars] = {}

    def index(self, day: date) -> int:
        """Position of ``day`` in the arrays; IndexError outside the span."""
        i = _weekday_index(day) - self.anchor + _SPAN_DAYS
        if not 1 <= i < 2 * _SPAN_DAYS:
            raise IndexError(day)
        return i

    def day(self, day: date) -> DayBars:
        """The minute bars of one weekday (cached: a fetch asks for the same days again)."""
        i = self.index(day)
        cached = self._days.get(i)
        if cached is not None:
            return cached
        if len(self._days) >= _CACHED_DAYS:
            self._days.clear()
        self._days[i] = bars = self._make_day(day, i)
        return bars

    def _make_day(self, day: date, i: int) -> DayBars:
        rng = np.random.default_rng([*self.key, 2, i])
        z = rng.standard_normal(SESSION_MINUTES)
        wick = np.abs(rng.standard_normal((2, SESSION_MINUTES)))
        noise = rng.lognormal(0.0, 0.5, SESSION_MINUTES)
        start = self.log_close[i - 1] + self.gap[i]
        end = self.log_close[i]
        step = self.sigma[i] / math.sqrt(SESSION_MINUTES)
        walk = np.concatenate(([0.0], np.cumsum(z * step)))
        frac = np.arange(SESSION_MINUTES + 1) / SESSION_MINUTES
        path = start + walk - frac * (walk[-1] - (end - start))  # bridge: ends at the close
        tick = self.tick
        grid = np.maximum(tick, np.rint(np.exp(path) / tick) * tick).astype(np.int64)
        o, c = grid[:-1], grid[1:]
        top, bottom = np.maximum(o, c), np.minimum(o, c)
        h = top + np.floor(top * step * _WICK * wick[0] / tick).astype(np.int64) * tick
        lo = bottom - np.floor(bottom * step * _WICK * wick[1] / tick).astype(np.int64) * tick
        lo = np.maximum(lo, tick)
        minute = np.arange(SESSION_MINUTES)
        profile = 1.0 + 1.5 * ((minute - SESSION_MINUTES / 2) / (SESSION_MINUTES / 2)) ** 2
        profile /= profile.sum()
        units = np.maximum(1, np.rint(self.day_volume[i] * profile * noise / self.lot))
        opened = datetime(day.year, day.month, day.day, *SESSION_OPEN, tzinfo=IST)
        ts = int(opened.timestamp()) * 1000 + minute * 60_000
        return DayBars(ts, o, h, lo, c, units.astype(np.int64) * self.lot)


def _aggregate(day: DayBars, minutes: int) -> DayBars:
    starts = np.arange(0, SESSION_MINUTES, minutes if minutes else SESSION_MINUTES)
    ends = np.append(starts[1:], SESSION_MINUTES) - 1
    return DayBars(
        day.ts_ms[starts],
        day.open[starts],
        np.maximum.reduceat(day.high, starts),
        np.minimum.reduceat(day.low, starts),
        day.close[ends],
        np.add.reduceat(day.volume, starts),
    )


class CandleError(Exception):
    """A request Angel One would refuse: ``errorcode`` and ``message`` as it answers."""

    def __init__(self, errorcode: str, message: str) -> None:
        super().__init__(f"{errorcode} {message}")
        self.errorcode = errorcode
        self.message = message


class CandleBook:
    """Candles for the instruments of a market with this seed (the same tokens in the same
    order give the same start prices as ``Market``)."""

    def __init__(
        self,
        tokens: Any = DEFAULT_TOKENS,
        seed: int = 7,
        exchange_type: int = ExchangeType.NSE_CM,
    ) -> None:
        # A twin of the live market, never advanced: its start prices, ticks, lots and
        # first session date, without touching the market that streams.
        twin = Market(tokens, seed=seed, exchange_type=exchange_type)
        self.seed = seed
        self.first_session = twin.session_date
        self._specs = {
            key: (
                round(twin.snapshot(key[1], Mode.QUOTE, key[0]).prev_close * 100),
                round(twin.tick_size(key[1], key[0]) * 100),
                twin.lot_size(key[1], key[0]),
            )
            for key in twin.instruments
        }
        self._instruments: dict[tuple[int, str], _Instrument] = {}

    @classmethod
    def of(cls, market: Market) -> CandleBook:
        return cls(market.instruments, seed=market.seed, exchange_type=market.exchange_type)

    def knows(self, exchange_type: int, token: str) -> bool:
        return (int(exchange_type), token) in self._specs

    def _instrument(self, exchange_type: int, token: str) -> _Instrument:
        key = (int(exchange_type), token)
        inst = self._instruments.get(key)
        if inst is None:
            start, tick, lot = self._specs[key]
            inst = _Instrument(self.seed, key[0], token, start, tick, lot, self.first_session)
            self._instruments[key] = inst
        return inst

    def bars(
        self, exchange_type: int, token: str, interval: str, start: datetime, end: datetime
    ) -> DayBars:
        """Bars (paise) of ``interval`` opening in [start, end] (IST wall times; daily bars
        by date), oldest first."""
        minutes, _ = INTERVALS[interval]
        inst = self._instrument(exchange_type, token)
        first_ms = int(start.replace(tzinfo=IST).timestamp()) * 1000
        last_ms = int(end.replace(tzinfo=IST).timestamp()) * 1000
        parts: list[DayBars] = []
        day = start.date()
        while day <= end.date():
            if day.weekday() < 5:
                try:
                    bars = _aggregate(inst.day(day), minutes)
                except IndexError:
                    bars = None  # outside the simulated span: no trading
                if bars is not None:
                    if minutes == 0:
                        midnight = datetime(day.year, day.month, day.day, tzinfo=IST)
                        bars = DayBars(
                            np.array([int(midnight.timestamp()) * 1000]),
                            *(getattr(bars, f) for f in ("open", "high", "low", "close", "volume")),
                        )
                    else:
                        keep = (bars.ts_ms >= first_ms) & (bars.ts_ms <= last_ms)
                        bars = DayBars(*(getattr(bars, f)[keep] for f in _FIELDS))
                    parts.append(bars)
            day += timedelta(days=1)
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return DayBars(*(empty for _ in _FIELDS))
        return DayBars(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))

    def response_rows(
        self, exchange_type: int, token: str, interval: str, start: datetime, end: datetime
    ) -> list[list[Any]]:
        """The ``data`` of a getCandleData answer: ``[ts, open, high, low, close, volume]``."""
        bars = self.bars(exchange_type, token, interval, start, end)
        rows = []
        for i in range(len(bars.ts_ms)):
            wall = datetime.fromtimestamp(int(bars.ts_ms[i]) // 1000, IST)
            stamp = wall.strftime("%Y-%m-%dT%H:%M:%S+05:30")  # daily bars: 00:00
            rows.append(
                [
                    stamp,
                    int(bars.open[i]) / 100.0,
                    int(bars.high[i]) / 100.0,
                    int(bars.low[i]) / 100.0,
                    int(bars.close[i]) / 100.0,
                    int(bars.volume[i]),
                ]
            )
        return rows


_FIELDS = ("ts_ms", "open", "high", "low", "close", "volume")


def parse_request(body: dict[str, Any]) -> tuple[int, str, str, datetime, datetime]:
    """(exchange type, token, interval, from, to) of a request body, or CandleError."""
    exchange = str(body.get("exchange", ""))
    token = str(body.get("symboltoken", ""))
    interval = str(body.get("interval", ""))
    if exchange not in EXCHANGES or interval not in INTERVALS or not token:
        raise CandleError(*BAD_REQUEST)
    try:
        start = datetime.strptime(str(body.get("fromdate", "")), DATE_FORMAT)
        end = datetime.strptime(str(body.get("todate", "")), DATE_FORMAT)
    except ValueError:
        raise CandleError(*BAD_REQUEST) from None
    if start > end or end - start > timedelta(days=INTERVALS[interval][1]):
        raise CandleError(*BAD_REQUEST)
    return EXCHANGES[exchange], token, interval, start, end


@dataclass(frozen=True)
class CandleCall:
    """One getCandleData request as the desk saw it (``at`` is time.monotonic())."""

    at: float
    exchange: str
    token: str
    interval: str
    fromdate: str
    todate: str
    outcome: str  # "ok", "rate_limited" or the errorcode
    candles: int = 0


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CandleDesk:
    """The getCandleData route: Angel One's rate limit and range rules over a CandleBook.
    ``calls`` logs every request (tests count them per second window)."""

    def __init__(self, market: Market | None) -> None:
        self.book = CandleBook.of(market) if market is not None else None
        self.calls: list[CandleCall] = []
        self._admitted: deque[float] = deque()
        self._inject: list[str] = []

    def inject_errors(self, count: int, errorcode: str = BAD_REQUEST[0]) -> None:
        """Answer the next ``count`` admitted requests with ``errorcode`` (tests: a
        transient AB1004)."""
        self._inject.extend([errorcode] * count)

    def _admit(self, now: float) -> bool:
        calls = self._admitted
        while calls and now - calls[0] >= CANDLE_RATE_LIMITS[-1][0]:
            calls.popleft()
        for window, limit in CANDLE_RATE_LIMITS:
            if sum(1 for t in calls if now - t < window) >= limit:
                return False
        calls.append(now)
        return True

    async def serve(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        body = body if isinstance(body, dict) else {}
        call = functools.partial(
            CandleCall,
            now,
            str(body.get("exchange", "")),
            str(body.get("symboltoken", "")),
            str(body.get("interval", "")),
            str(body.get("fromdate", "")),
            str(body.get("todate", "")),
        )
        if not self._admit(now):
            self.calls.append(call("rate_limited"))
            log.warning("sim_candles_rate_limited", path=request.path)
            return web.Response(status=403, text=RATE_LIMIT_TEXT)
        try:
            if self._inject:
                raise CandleError(self._inject.pop(0), BAD_REQUEST[1])
            exchange_type, token, interval, start, end = parse_request(body)
            if self.book is None or not self.book.knows(exchange_type, token):
                raise CandleError("AB1009", f"Invalid symboltoken {token!r}")
            rows = self.book.response_rows(exchange_type, token, interval, start, end)
        except CandleError as exc:
            self.calls.append(call(exc.errorcode))
            log.info("sim_candles_refused", errorcode=exc.errorcode, body=body)
            return web.json_response(
                {"status": False, "message": exc.message, "errorcode": exc.errorcode, "data": None}
            )
        self.calls.append(call("ok", len(rows)))
        log.info(
            "sim_candles_served",
            exchange=body["exchange"],
            token=token,
            interval=interval,
            fromdate=body["fromdate"],
            todate=body["todate"],
            candles=len(rows),
        )
        return web.json_response(
            {"status": True, "message": "SUCCESS", "errorcode": "", "data": rows}
        )


def install_candle_route(
    app: web.Application, market: Market | None, secure: Callable[[_Handler], _Handler]
) -> CandleDesk:
    """Add the getCandleData POST route (behind the gateway's auth) to ``app``."""
    desk = CandleDesk(market)
    app.router.add_post(CANDLE_PATH, secure(desk.serve))
    return desk


# ---- the shipped sample -----------------------------------------------------------------


def write_sample(
    out: Path,
    token: str = "2885",
    interval: str = "FIVE_MINUTE",
    first: str = "2024-01-01",
    last: str = "2024-02-09",
    seed: int = 7,
) -> int:
    """Write candles of the default ``chimera sim`` market (seed 7, tokens 2885,1594,3045)
    as an OHLCV CSV (data/samples/); returns the number of bars."""
    book = CandleBook(DEFAULT_TOKENS, seed=seed)
    start = datetime.strptime(f"{first} 00:00", DATE_FORMAT)
    end = datetime.strptime(f"{last} 23:59", DATE_FORMAT)
    rows = book.response_rows(ExchangeType.NSE_CM, token, interval, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="ascii", newline="\n") as fh:
        fh.write("timestamp,open,high,low,close,volume\n")
        for ts, o, h, lo, c, v in rows:
            fh.write(f"{ts},{o!r},{h!r},{lo!r},{c!r},{v}\n")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.sim.candles OUT.csv``: regenerate a sample file."""
    p = argparse.ArgumentParser(description="write simulated OHLCV candles (not real data)")
    p.add_argument("out", type=Path)
    p.add_argument("--token", default="2885")
    p.add_argument("--interval", default="FIVE_MINUTE", choices=sorted(INTERVALS))
    p.add_argument("--from", dest="first", default="2024-01-01")
    p.add_argument("--to", dest="last", default="2024-02-09")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    n = write_sample(args.out, args.token, args.interval, args.first, args.last, args.seed)
    print(f"{args.out}: {n} bars")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
