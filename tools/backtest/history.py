"""Angel One candle history: fetched in the chunks and at the rate Angel One allows,
resumable, cached as Parquet, returned as ``Bars``.

    source = await AngelOneCandles.login(cfg.execution.angelone, load_env(), data_dir)
    bars = await HistoryFetcher(source, data_dir).fetch("NSE", "3045", "FIVE_MINUTE",
                                                        "2024-01-01", "2024-06-30")

Angel One's limits (cited where they are enforced, in tools/sim/candles.py, which serves
the same route from the simulator's market so all of this is tested end to end):
- one request spans at most 30 days of ONE_MINUTE, 60 of THREE_MINUTE, 100 of FIVE_ and
  TEN_MINUTE, 200 of FIFTEEN_ and THIRTY_MINUTE, 400 of ONE_HOUR, 2000 of ONE_DAY
  (SmartAPI docs, Historical API, "Max Days in one Request");
- getCandleData is limited to 3 requests/s, 500/min, 5000/h (SmartAPI forum topic 4387,
  "Changes in API Rate Limit"); paced here by the execution throttler's exact sliding
  windows, with a guard so network jitter cannot push Angel's count over.

Choices, and why:
- Chunks sit on a fixed grid of max-days windows counted from 2000-01-03 (IST calendar
  days, 00:00-23:59), not on the requested start: any later request that overlaps reuses
  the cached chunks, and a chunk is a file whose name says its dates.
- Cache: ``<data_dir>/history/<EXCHANGE>/<token>/<interval>/<first>_<last>.parquet`` plus
  ``manifest.json`` (chunk → rows, sha256, complete, fetched_at). A chunk file is written
  (atomic rename) before the manifest names it, and only the manifest counts: a fetch
  killed at any point continues where it stopped, fetching at most the one chunk it was
  writing again. A chunk reaching into today (IST, ``now_ms``) is stored as incomplete
  and fetched again next time; every other chunk is fetched once, ever.
- Errors: rate-limit refusals and transient failures (network, timeouts, Angel's
  AB1004 "Something Went Wrong, Please Try After Sometime") are retried with exponential
  backoff and jitter; a refusal (bad token, interval, session) stops the fetch at once.
- Login reuses the live adapter (``chimera_execution.brokers.angelone``): the same
  side-effect-free SDK loader, TOTP login, relogin on an expired session and error
  mapping; only the order stream and poll are not started.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import structlog

from chimera_core.errors import (
    AuthError,
    BrokerError,
    BrokerReject,
    ChimeraError,
    ConfigError,
    RateLimited,
)
from chimera_core.markets import MarketCalendar
from tools.backtest.data import Bars, DataError, bars_from_arrays, data_hash, parse_interval

__all__ = [
    "GRID_ANCHOR",
    "HISTORY_RATE",
    "INTERVALS",
    "AngelOneCandles",
    "CandleSource",
    "Chunk",
    "FetchStats",
    "HistoryError",
    "HistoryFetcher",
    "HistoryIncomplete",
    "HistoryNotCached",
    "fetch_history",
    "history_dir",
    "load_cached",
    "plan_chunks",
]

log = structlog.get_logger(__name__)

IST = timezone(timedelta(hours=5, minutes=30), "IST")  # no DST since 1945: exact
# interval -> the most calendar days one getCandleData request may span (module docstring).
INTERVALS: dict[str, int] = {
    "ONE_MINUTE": 30,
    "THREE_MINUTE": 60,
    "FIVE_MINUTE": 100,
    "TEN_MINUTE": 100,
    "FIFTEEN_MINUTE": 200,
    "THIRTY_MINUTE": 200,
    "ONE_HOUR": 400,
    "ONE_DAY": 2000,
}
HISTORY_RATE = (3, 500, 5000)  # getCandleData per second, minute, hour
RATE_GUARD_S = 0.15  # extra spacing per window against arrival jitter (see Throttler)
GRID_ANCHOR = date(2000, 1, 3)
DATE_FORMAT = "%Y-%m-%d %H:%M"
MANIFEST = "manifest.json"
_TRANSIENT_CODES = frozenset({"AB1004"})  # Angel's "try after sometime"


class HistoryError(ChimeraError):
    """A history fetch or cache read failed; the message names the series and chunk."""


class HistoryNotCached(HistoryError):
    """``load_cached`` found chunks missing from the cache (``missing``: chunk names)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class HistoryIncomplete(HistoryError):
    """The fetch stopped (max_requests) before every chunk was cached; run it again to
    continue. ``done`` and ``total`` count chunks."""

    def __init__(self, message: str, done: int, total: int) -> None:
        super().__init__(message)
        self.done = done
        self.total = total


class _Transient(Exception):
    """Angel One answered 'try again later' (AB1004): worth a retry."""


class CandleSource(Protocol):
    """Where candles come from: one getCandleData call, its ``data`` rows returned.
    Raises RateLimited (wait, retry), BrokerError (transient, retry), BrokerReject or
    AuthError (refused: stop)."""

    async def candles(self, params: Mapping[str, str]) -> list[list[Any]]: ...


@dataclass(frozen=True)
class Chunk:
    """One request's window: IST calendar days ``first`` .. ``last`` (inclusive)."""

    first: date
    last: date

    @property
    def name(self) -> str:
        return f"{self.first.isoformat()}_{self.last.isoformat()}"

    @property
    def start_ms(self) -> int:
        return _ist_ms(datetime.combine(self.first, datetime.min.time()))

    @property
    def end_ms(self) -> int:
        """First instant after the chunk (next day 00:00 IST)."""
        return _ist_ms(datetime.combine(self.last + timedelta(days=1), datetime.min.time()))

    def params(self, exchange: str, token: str, interval: str) -> dict[str, str]:
        return {
            "exchange": exchange,
            "symboltoken": token,
            "interval": interval,
            "fromdate": f"{self.first.isoformat()} 00:00",
            "todate": f"{self.last.isoformat()} 23:59",
        }


@dataclass
class FetchStats:
    """What one ``fetch`` did: requests sent, chunks served from the cache or fetched,
    retries after rate-limit refusals or transient errors."""

    requests: int = 0
    cached: int = 0
    fetched: int = 0
    rate_limited: int = 0
    retries: int = 0
    chunks: list[str] = field(default_factory=list)  # names of the chunks fetched


def _ist_ms(wall: datetime) -> int:
    return int(wall.replace(tzinfo=IST).timestamp() * 1000)


def _check_interval(interval: str) -> str:
    name = interval.strip().upper()
    if name not in INTERVALS:
        raise HistoryError(
            f"unknown Angel One interval {interval!r}: use one of {', '.join(INTERVALS)}"
        )
    return name


def _day(value: date | datetime | str, what: str) -> date:
    if isinstance(value, datetime):
        return (value.astimezone(IST) if value.tzinfo else value).date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise HistoryError(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


def plan_chunks(interval: str, first: date, last: date) -> list[Chunk]:
    """The grid windows covering IST days ``first`` .. ``last``, oldest first."""
    days = INTERVALS[_check_interval(interval)]
    if last < first:
        raise HistoryError(f"the range ends ({last}) before it starts ({first})")
    k = (first - GRID_ANCHOR).days // days
    chunks: list[Chunk] = []
    while True:
        start = GRID_ANCHOR + timedelta(days=k * days)
        if start > last:
            return chunks
        chunks.append(Chunk(start, start + timedelta(days=days - 1)))
        k += 1


def history_dir(data_dir: str | Path, exchange: str, token: str, interval: str) -> Path:
    """Where a series is cached: ``<data_dir>/history/<EXCHANGE>/<token>/<interval>``."""
    return Path(data_dir) / "history" / exchange.upper() / token / _check_interval(interval)


# ---- the cache ---------------------------------------------------------------------------

_SCHEMA = pa.schema(
    [
        ("ts_ms", pa.int64()),
        *((c, pa.float64()) for c in ("open", "high", "low", "close", "volume")),
    ]
)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _rows_hash(table: pa.Table) -> str:
    return data_hash(*(table.column(name).to_numpy() for name in _SCHEMA.names))


class _Cache:
    """One series' directory: chunk Parquet files and the manifest that vouches for them."""

    def __init__(self, root: Path, exchange: str, token: str, interval: str) -> None:
        self.root = root
        self.path = root / MANIFEST
        self.key = {"exchange": exchange, "symboltoken": token, "interval": interval}
        self.chunks: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                manifest = json.loads(self.path.read_text())
                self.chunks = dict(manifest["chunks"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # The manifest is only written by rename: unreadable means damaged by hand
                # or disk; the chunk files stay, but nothing is trusted until refetched.
                log.warning("history_manifest_unreadable", path=str(self.path), error=str(exc))
                self.chunks = {}

    def complete(self, chunk: Chunk) -> bool:
        entry = self.chunks.get(chunk.name)
        return bool(entry and entry.get("complete") and (self.root / entry["file"]).is_file())

    def read(self, chunk: Chunk) -> pa.Table | None:
        """The cached chunk, or None when it is missing or does not match the manifest."""
        entry = self.chunks.get(chunk.name)
        if entry is None:
            return None
        try:
            table = pq.read_table(self.root / entry["file"]).cast(_SCHEMA)
        except (OSError, pa.ArrowInvalid, KeyError) as exc:
            log.warning("history_chunk_unreadable", chunk=chunk.name, error=str(exc))
            return None
        if table.num_rows != entry.get("rows") or _rows_hash(table) != entry.get("sha256"):
            log.warning("history_chunk_mismatch", chunk=chunk.name, root=str(self.root))
            return None
        return table

    def write(self, chunk: Chunk, table: pa.Table, complete: bool, now_ms: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        file = f"{chunk.name}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        _atomic_write(self.root / file, sink.getvalue().to_pybytes())
        self.chunks[chunk.name] = {
            "file": file,
            "rows": table.num_rows,
            "sha256": _rows_hash(table),
            "complete": complete,
            "fetched_at": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
        }
        manifest = {
            **self.key,
            "grid_anchor": GRID_ANCHOR.isoformat(),
            "max_days": INTERVALS[self.key["interval"]],
            "chunks": dict(sorted(self.chunks.items())),
        }
        _atomic_write(self.path, json.dumps(manifest, indent=1).encode() + b"\n")


def _table(rows: list[list[Any]], where: str) -> pa.Table:
    """Angel One candle rows (``[iso ts, o, h, l, c, v]``) as a typed table."""
    if not rows:
        return _SCHEMA.empty_table()
    try:
        columns = list(zip(*rows, strict=True))
        stamps = pa.array([str(x) for x in columns[0]])
        ts = pc.cast(stamps, pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        values = [pa.array([float(x) for x in col], pa.float64()) for col in columns[1:6]]
    except (ValueError, TypeError, IndexError, pa.ArrowInvalid) as exc:
        raise HistoryError(
            f"{where}: Angel One sent candles we cannot read ({exc}); expected rows of "
            "[ISO timestamp with offset, open, high, low, close, volume]"
        ) from None
    return pa.Table.from_arrays([ts, *values], schema=_SCHEMA)


# ---- fetching ----------------------------------------------------------------------------


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HistoryFetcher:
    """Fetch a series chunk by chunk into the cache and return it as ``Bars``.

    ``throttle`` paces requests (default: Angel One's 3/s, 500/min, 5000/h with a guard);
    ``retries`` bounds attempts per chunk after transient errors; ``rate_retries`` after
    rate-limit refusals; ``backoff_s`` is the first wait (doubling, with jitter, capped at
    ``max_backoff_s``). ``now_ms`` is the wall clock in epoch ms (decides which chunks are
    still forming). ``stats`` describes the last ``fetch``.
    """

    def __init__(
        self,
        source: CandleSource,
        data_dir: str | Path,
        *,
        throttle: Any = None,
        retries: int = 5,
        rate_retries: int = 20,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        now_ms: Callable[[], int] = _wall_ms,
        seed: int | None = None,
    ) -> None:
        from chimera_execution.smart_execution import Throttler

        self.source = source
        self.data_dir = Path(data_dir)
        self.throttle = throttle or Throttler(*HISTORY_RATE, guard_s=RATE_GUARD_S)
        self.retries = retries
        self.rate_retries = rate_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.now_ms = now_ms
        self._rng = random.Random(seed)
        self.stats = FetchStats()

    def _wait(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return float(base * self._rng.uniform(0.5, 1.0))  # jitter: retries do not march in step

    async def _request(self, params: dict[str, str], where: str) -> list[list[Any]]:
        failures = limited = 0
        while True:
            await self.throttle.acquire()
            self.stats.requests += 1
            try:
                return await self.source.candles(dict(params))
            except RateLimited as exc:
                limited += 1
                self.stats.rate_limited += 1
                if limited > self.rate_retries:
                    raise HistoryError(
                        f"{where}: {exc} ({limited} times); wait and run again "
                        "(cached chunks are kept)"
                    ) from None
                wait = self._wait(min(limited - 1, 4))
                reason = "rate_limited"
            except (AuthError, BrokerReject) as exc:
                raise HistoryError(f"{where}: {exc}") from None
            except BrokerError as exc:
                failures += 1
                if failures >= self.retries:
                    raise HistoryError(
                        f"{where}: failed {failures} times, last: {exc}; Angel One answers "
                        "AB1004 both when busy and for a malformed request; run again later "
                        "(cached chunks are kept)"
                    ) from None
                wait = self._wait(failures - 1)
                reason = str(exc)[:160]
            self.stats.retries += 1
            log.warning("history_retry", where=where, reason=reason, wait_s=round(wait, 3))
            await asyncio.sleep(wait)

    async def fetch(
        self,
        exchange: str,
        token: str,
        interval: str,
        start: date | datetime | str,
        end: date | datetime | str,
        *,
        symbol: str | None = None,
        max_requests: int | None = None,
        allow_gaps: bool = True,
        calendar: MarketCalendar | str | None = None,
    ) -> Bars:
        """Bars of ``interval`` for IST days ``start`` .. ``end`` (inclusive; datetimes are
        taken by their IST date). Chunks in the cache are not fetched again. With
        ``max_requests``, stops (HistoryIncomplete) after that many chunk requests."""
        exchange, interval = exchange.strip().upper(), _check_interval(interval)
        first, last = _day(start, "start"), _day(end, "end")
        chunks = plan_chunks(interval, first, last)
        series = f"{exchange}:{token} {interval}"
        cache = _Cache(
            history_dir(self.data_dir, exchange, token, interval), exchange, token, interval
        )
        self.stats = FetchStats()
        today = datetime.fromtimestamp(self.now_ms() / 1000, IST).date()
        tables = []
        for chunk in chunks:
            table = cache.read(chunk) if cache.complete(chunk) else None
            if table is not None:
                self.stats.cached += 1
                log.debug("history_chunk_cached", series=series, chunk=chunk.name)
                tables.append(table)
                continue
            if max_requests is not None and self.stats.fetched >= max_requests:
                done = sum(cache.complete(c) for c in chunks)
                raise HistoryIncomplete(
                    f"{series}: stopped after {self.stats.fetched} request(s) "
                    f"(max_requests); {done} of {len(chunks)} chunks are cached under "
                    f"{cache.root}; run again to continue",
                    done,
                    len(chunks),
                )
            where = f"{series} chunk {chunk.name}"
            rows = await self._request(chunk.params(exchange, token, interval), where)
            table = _table(rows, where)
            _check_rows(table, chunk, where)
            complete = chunk.last < today
            cache.write(chunk, table, complete, self.now_ms())
            self.stats.fetched += 1
            self.stats.chunks.append(chunk.name)
            log.info(
                "history_chunk_fetched",
                series=series,
                chunk=chunk.name,
                candles=table.num_rows,
                complete=complete,
            )
            tables.append(table)
        bars = _assemble(
            tables,
            first,
            last,
            series,
            symbol or f"{exchange}:{token}",
            interval,
            allow_gaps,
            calendar,
            cache.root,
        )
        log.info(
            "history_fetch_done",
            series=series,
            bars=len(bars),
            chunks=len(chunks),
            cached=self.stats.cached,
            fetched=self.stats.fetched,
            requests=self.stats.requests,
            retries=self.stats.retries,
            sha256=bars.sha256[:16],
        )
        return bars


def _check_rows(table: pa.Table, chunk: Chunk, where: str) -> None:
    """Every candle of an answer must lie in the chunk it answers, or caching it under that
    chunk's name would be a lie."""
    if not table.num_rows:
        return
    ts = table.column("ts_ms").to_numpy()
    outside = (ts < chunk.start_ms) | (ts >= chunk.end_ms)
    if outside.any():
        bad = int(ts[np.flatnonzero(outside)[0]])
        raise HistoryError(
            f"{where}: Angel One answered with a candle at "
            f"{datetime.fromtimestamp(bad / 1000, IST).isoformat()}, outside the requested "
            "days; not cached"
        )


def _assemble(
    tables: list[pa.Table],
    first: date,
    last: date,
    series: str,
    symbol: str,
    interval: str,
    allow_gaps: bool,
    calendar: MarketCalendar | str | None,
    root: Path,
) -> Bars:
    table = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
    lo = _ist_ms(datetime.combine(first, datetime.min.time()))
    hi = _ist_ms(datetime.combine(last + timedelta(days=1), datetime.min.time()))
    ts = table.column("ts_ms").to_numpy()
    keep = (ts >= lo) & (ts < hi)
    cols = {name: table.column(name).to_numpy()[keep] for name in _SCHEMA.names}
    if not len(cols["ts_ms"]):
        raise HistoryError(
            f"{series}: Angel One has no candles from {first} to {last}; check the token "
            "and exchange (the instrument master) and the dates (trading days, listing date)"
        )
    try:
        return bars_from_arrays(
            cols["ts_ms"],
            cols["open"],
            cols["high"],
            cols["low"],
            cols["close"],
            cols["volume"],
            symbol=symbol,
            interval_ms=parse_interval(interval),
            tz="Asia/Kolkata",
            allow_gaps=allow_gaps,
            calendar=calendar,
            source=f"{series} ({root})",
        )
    except DataError as exc:
        raise HistoryError(
            f"{exc}; the broker's data is cached as received: delete the chunk files under "
            f"{root} to fetch them again"
        ) from None


def load_cached(
    data_dir: str | Path,
    exchange: str,
    token: str,
    interval: str,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    symbol: str | None = None,
    allow_gaps: bool = True,
    calendar: MarketCalendar | str | None = None,
    complete_only: bool = False,
) -> Bars:
    """The cached series for IST days ``start`` .. ``end`` without any network: raises
    HistoryNotCached naming the chunks that are not cached (fetch them first); with
    ``complete_only``, a chunk that was still forming when fetched counts as missing."""
    exchange, interval = exchange.strip().upper(), _check_interval(interval)
    first, last = _day(start, "start"), _day(end, "end")
    root = history_dir(data_dir, exchange, token, interval)
    cache = _Cache(root, exchange, token, interval)
    series = f"{exchange}:{token} {interval}"
    tables, missing = [], []
    for chunk in plan_chunks(interval, first, last):
        table = cache.read(chunk) if cache.complete(chunk) or not complete_only else None
        if table is None:
            missing.append(chunk.name)
        else:
            tables.append(table)
    if missing:
        raise HistoryNotCached(
            f"{series}: not cached under {root}: {', '.join(missing)}; run `chimera history "
            f"fetch --exchange {exchange} --token {token} --interval {interval} --from {first} "
            f"--to {last}`",
            missing,
        )
    return _assemble(
        tables,
        first,
        last,
        series,
        symbol or f"{exchange}:{token}",
        interval,
        allow_gaps,
        calendar,
        root,
    )


# ---- Angel One -------------------------------------------------------------------------


class AngelOneCandles:
    """getCandleData through the live adapter's logged-in SmartConnect session."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    @classmethod
    async def login(cls, cfg: Any, env: Mapping[str, str], data_dir: str | Path) -> AngelOneCandles:
        """Log in as ``chimera live`` does with ``execution.broker = "angelone"``:
        ``cfg`` is the ``[execution.angelone]`` table (its rest_url may be the simulator),
        ``env`` holds CHIMERA_API_KEY / _CLIENT_CODE / _PASSWORD / _TOTP_SECRET."""
        from chimera_execution.brokers.angelone import (
            AngelOneBroker,
            _load_sdk,
            new_smartconnect,
        )
        from chimera_execution.router import BROKER_ENV

        missing = [k for k in BROKER_ENV if not env.get(k)]
        if missing:
            raise ConfigError(
                f"Angel One history needs {', '.join(missing)} in the environment or .env "
                "(the same login as execution.broker = 'angelone')"
            )
        state_dir = Path(data_dir) / "history" / ".angelone"  # the SDK's logs/ go here
        broker = AngelOneBroker(
            cfg,
            api_key=env["CHIMERA_API_KEY"],
            client_code=env["CHIMERA_CLIENT_CODE"],
            password=env["CHIMERA_PASSWORD"],
            totp_secret=env["CHIMERA_TOTP_SECRET"],
            on_report=lambda report: None,  # no orders: nothing to report
            state_dir=state_dir,
        )
        # What AngelOneBroker.connect() does before its order stream and poll, which a
        # history fetch does not want.
        broker._api = new_smartconnect(
            broker._api_key, cfg.rest_url, cfg.request_timeout_s, state_dir
        )
        _, broker._exc = _load_sdk(state_dir)
        await broker._login()
        return cls(broker)

    def _get(self, params: dict[str, str]) -> Any:
        response = self._broker._api.getCandleData(params)
        if isinstance(response, dict) and str(response.get("errorcode", "")) in _TRANSIENT_CODES:
            # Raised inside the adapter's call: it maps this to a BrokerError (retry), not
            # to the BrokerReject a status:false answer becomes.
            raise _Transient(f"{response.get('errorcode')} {response.get('message', '')}")
        return response

    async def candles(self, params: Mapping[str, str]) -> list[list[Any]]:
        response = await self._broker._call("getCandleData", self._get, dict(params))
        data = response.get("data")
        return list(data) if isinstance(data, list) else []


async def fetch_history(
    exchange: str,
    token: str,
    interval: str,
    start: date | datetime | str,
    end: date | datetime | str,
    *,
    data_dir: str | Path = "data",
    cfg: Any = None,
    env: Mapping[str, str] | None = None,
    symbol: str | None = None,
    max_requests: int | None = None,
    allow_gaps: bool = True,
    calendar: MarketCalendar | str | None = None,
) -> Bars:
    """Log in to Angel One (``cfg``: AngelOneConfig, default the real API; ``env``:
    credentials, default the environment + .env) and fetch what the cache lacks. A fully
    cached range needs neither login nor network."""
    from chimera_core.config import AngelOneConfig, load_env

    try:
        return load_cached(
            data_dir,
            exchange,
            token,
            interval,
            start,
            end,
            symbol=symbol,
            allow_gaps=allow_gaps,
            calendar=calendar,
            complete_only=True,
        )
    except HistoryNotCached:
        pass  # log in and fetch what is missing
    source = await AngelOneCandles.login(cfg or AngelOneConfig(), env or load_env(), data_dir)
    fetcher = HistoryFetcher(source, data_dir)
    return await fetcher.fetch(
        exchange,
        token,
        interval,
        start,
        end,
        symbol=symbol,
        max_requests=max_requests,
        allow_gaps=allow_gaps,
        calendar=calendar,
    )
