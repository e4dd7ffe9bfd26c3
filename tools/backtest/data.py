"""Backtest input data: OHLCV bars from CSV/Parquet, tick files and black-box sessions.

Bars are read with pyarrow (no pandas), validated, and handed over as ``Bars``: numpy
arrays with the bar OPEN time in UTC epoch milliseconds, plus a SHA-256 of the canonical
arrays, so the same data read from CSV or Parquet hashes the same. ``load_ticks`` reads a
tick file or a recorded session as ``(frame, recv_ns)`` pairs for the event-mode driver.
The rules (columns, timestamps, validation, gap policy) are in docs/BACKTEST_DATA.md.

Choices, and why:
- Every column is read as text first and cast with pyarrow; when a cast fails, a binary
  search over prefixes finds the first bad row, so the error names it without a Python
  loop over a million rows.
- A step between two bars longer than the interval is a gap. A gap where the market was
  closed (nights, weekends, holidays) is normal and only counted (``Bars.closed_gaps``);
  one inside a session (missing bars) is kept in ``Bars.gaps`` and is an error only with
  ``allow_gaps=False`` (``--strict-gaps``). With a ``MarketCalendar`` the market's own
  sessions decide; without one, an intraday step to another local date, or a daily step
  over weekend days only, counts as market-closed.
- The hash covers the arrays only (not the symbol, zone or file name): it identifies the
  data a result was computed from, whatever file it came in.
"""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import structlog

from chimera_core.contracts import TickRecord
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.markets import MarketCalendar, build_calendars

__all__ = [
    "COLUMN_ALIASES",
    "DAY_MS",
    "Bars",
    "DataError",
    "Gap",
    "TickSource",
    "bars_from_arrays",
    "code_version",
    "data_hash",
    "load_bars",
    "load_ticks",
    "parse_interval",
    "ticks_hash",
    "write_bars",
]

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# Daily and longer bars stamped at local midnight move by an hour across a DST change.
_DAILY_SLACK_MS = _HOUR_MS
# Epoch integers below this magnitude are seconds, at or above it milliseconds
# (10^11 s is the year 5138; 10^11 ms is March 1973).
_EPOCH_S_LIMIT = 10**11
_HASH_TAG = b"chimera-bars-v1\x00"
_MAX_LISTED = 20  # problems spelled out in one DataError message

# Canonical column -> accepted names (matched case-insensitively, surrounding blanks ignored).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "timestamp": ("timestamp", "datetime", "date", "time", "ts"),
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v"),
}
_PRICES = ("open", "high", "low", "close")
_OFFSET_TZ = re.compile(r"^[+-]\d{2}:\d{2}$")
# A UTC offset after a clock time ("…09:15:00+05:30", "…T03:45Z"); a date alone has none.
_ISO_OFFSET = r"(?:T|t|\s)\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?P<off>Z|z|[+-]\d{2}(?::?\d{2})?)$"
_EPOCH_TEXT = r"^-?\d+$"

_INTERVAL_NAMES = {
    "ONE_MINUTE": 60_000,
    "THREE_MINUTE": 180_000,
    "FIVE_MINUTE": 300_000,
    "TEN_MINUTE": 600_000,
    "FIFTEEN_MINUTE": 900_000,
    "THIRTY_MINUTE": 1_800_000,
    "ONE_HOUR": 3_600_000,
    "ONE_DAY": DAY_MS,
}
_UNIT_MS = {
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "t": 60_000,
    "h": _HOUR_MS,
    "hr": _HOUR_MS,
    "hour": _HOUR_MS,
    "hours": _HOUR_MS,
    "d": DAY_MS,
    "day": DAY_MS,
    "days": DAY_MS,
    "w": 7 * DAY_MS,
    "week": 7 * DAY_MS,
    "weeks": 7 * DAY_MS,
}


class DataError(ChimeraError):
    """Input data is unusable. ``source`` names the file (or series), ``problems`` holds
    ``(row, text)`` pairs with 1-based data rows (the CSV header is not a row; 0 = the
    file as a whole)."""

    def __init__(self, source: str, problems: Sequence[tuple[int, str]], fix: str = "") -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: p[0])
        listed = "; ".join(
            f"row {row}: {text}" if row else text for row, text in self.problems[:_MAX_LISTED]
        )
        more = len(self.problems) - _MAX_LISTED
        if more > 0:
            listed += f"; and {more} more"
        bad_rows = len({row for row, _ in self.problems if row})
        head = f"{source}: {bad_rows} bad row(s): " if bad_rows else f"{source}: "
        fix = fix or (
            "fix or drop those rows and load again (row numbers count data rows from 1, "
            "the CSV header excluded)"
            if bad_rows
            else ""
        )
        super().__init__(head + listed + (f"; {fix}" if fix else ""))


def _bad(source: str, text: str, row: int = 0) -> DataError:
    return DataError(source, [(row, text)])


@dataclass(frozen=True)
class Gap:
    """Bars missing inside a session: ``row`` is the 1-based row of the bar after the
    gap, which opened at ``ts_ms``; the bar before it opened at ``prev_ts_ms``."""

    row: int
    prev_ts_ms: int
    ts_ms: int

    @property
    def duration_ms(self) -> int:
        return self.ts_ms - self.prev_ts_ms


@dataclass(frozen=True, eq=False)
class Bars:
    """OHLCV bars of one symbol, validated; the arrays are read-only.

    ``ts_ms`` is each bar's OPEN time in UTC epoch ms (int64, strictly increasing);
    prices and volume are float64. ``tz`` is the zone the timestamps were written in
    ("Asia/Kolkata", "+05:30", "UTC"; offsets that vary within the file are joined with
    ","). ``sha256`` is ``data_hash`` of the arrays. ``gaps`` are steps inside a session
    longer than the interval; ``closed_gaps`` counts the steps over closed-market time.
    """

    ts_ms: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    symbol: str
    interval_ms: int
    tz: str
    sha256: str
    gaps: tuple[Gap, ...] = ()
    closed_gaps: int = 0
    source: str = ""

    def __len__(self) -> int:
        return int(self.ts_ms.shape[0])

    def table(self) -> pa.Table:
        """The bars as a pyarrow Table (timestamp as ``timestamp[ms, tz]``)."""
        zone = self.tz if _is_zone(self.tz) else "UTC"
        ts = pa.array(self.ts_ms, type=pa.int64()).cast(pa.timestamp("ms", tz=zone))
        columns = [ts, *(pa.array(getattr(self, c)) for c in (*_PRICES, "volume"))]
        schema = pa.schema(
            [("timestamp", ts.type), *((c, pa.float64()) for c in (*_PRICES, "volume"))],
            metadata={
                b"chimera.symbol": self.symbol.encode(),
                b"chimera.interval_ms": str(self.interval_ms).encode(),
                b"chimera.sha256": self.sha256.encode(),
            },
        )
        return pa.Table.from_arrays(columns, schema=schema)


# ---- hashing and code version ------------------------------------------------------------


def data_hash(
    ts_ms: np.ndarray,
    open: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> str:
    """SHA-256 (hex) of the canonical arrays: little-endian int64 times, then each float64
    column; -0.0 counts as 0.0. Independent of file format, symbol and zone."""
    h = hashlib.sha256(_HASH_TAG)
    h.update(struct.pack("<Q", len(ts_ms)))
    h.update(np.ascontiguousarray(ts_ms, dtype="<i8").tobytes())
    for column in (open, high, low, close, volume):
        h.update(np.ascontiguousarray(np.asarray(column, dtype=np.float64) + 0.0, "<f8").tobytes())
    return h.hexdigest()


@functools.cache
def code_version() -> str:
    """The code a result was computed with: ``<package version>+<git short commit>``, as
    the engine records it (``chimera_core.event_loop.code_version``), with ``.dirty``
    appended when tracked files differ from that commit."""
    from chimera_core.event_loop import code_version as engine_version  # heavy: when asked

    version = engine_version()
    if "+" not in version:
        return version  # not a git checkout: nothing more to say
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}.dirty" if status.strip() else version


# ---- intervals and zones ----------------------------------------------------------------


def parse_interval(value: int | str) -> int:
    """An interval in ms from an int (ms) or text: ``ONE_MINUTE`` … ``ONE_DAY`` (Angel One),
    ``1m``, ``5min``, ``15T``, ``1h``, ``60m``, ``1d``, ``D``, ``300s``, ``1w``."""
    if isinstance(value, bool):
        raise _bad("interval", f"interval must be ms or text like '5m', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise _bad("interval", f"interval must be > 0 ms, got {value}")
        return value
    text = str(value).strip()
    if text.upper() in _INTERVAL_NAMES:
        return _INTERVAL_NAMES[text.upper()]
    m = re.fullmatch(r"(\d*)\s*([A-Za-z]+)", text)
    unit = _UNIT_MS.get(m.group(2).lower()) if m else None
    if m is None or unit is None or (m.group(1) and int(m.group(1)) == 0):
        names = ", ".join(_INTERVAL_NAMES)
        raise DataError(
            "interval",
            [(0, f"unknown interval {value!r}: use ms, '1m', '5m', '1h', '1d' or one of {names}")],
        )
    return int(m.group(1) or 1) * unit


def _is_zone(tz: str) -> bool:
    if _OFFSET_TZ.match(tz) or tz == "UTC":
        return True
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_zone(tz: str, source: str) -> str:
    tz = tz.strip()
    if not _is_zone(tz):
        raise _bad(
            source,
            f"unknown timezone {tz!r}: use an IANA name like 'Asia/Kolkata' or an offset "
            "like '+05:30'",
        )
    return tz


def _local_ms(ts_ms: np.ndarray, tz: str) -> np.ndarray:
    """Wall-clock time in ``tz`` of each UTC instant, as epoch-like ms (for dates)."""
    if tz == "UTC" or not len(ts_ms):
        return ts_ms
    aware = pa.array(ts_ms, type=pa.int64()).cast(pa.timestamp("ms", tz=tz))
    local = pc.local_timestamp(aware)
    return np.asarray(local.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _offset_ms(text: str) -> int:
    if text in ("Z", "z"):
        return 0
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return sign * (hours * 60 + minutes) * 60_000


def _offset_label(ms: int) -> str:
    if ms == 0:
        return "UTC"
    sign = "-" if ms < 0 else "+"
    minutes = abs(ms) // 60_000
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# ---- validation -------------------------------------------------------------------------


def _f(x: Any) -> str:
    return repr(float(x))


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _calendar(calendar: MarketCalendar | str | None, source: str) -> MarketCalendar | None:
    if calendar is None or isinstance(calendar, MarketCalendar):
        return calendar
    calendars = build_calendars()
    if calendar not in calendars:
        raise _bad(
            source,
            f"unknown market {calendar!r} for the gap calendar (one of "
            f"{', '.join(sorted(calendars))})",
        )
    return calendars[calendar]


def _market_closed(
    prev: int,
    ts: int,
    interval_ms: int,
    local_prev: int,
    local_ts: int,
    calendar: MarketCalendar | None,
) -> bool:
    """Was the market closed for the whole time between bar ``prev``'s end and ``ts``?"""
    if calendar is not None:
        end = prev + interval_ms
        return not calendar.is_open(end) and calendar.next_session_open_ms(end) >= ts
    day_prev, day_ts = local_prev // DAY_MS, local_ts // DAY_MS
    if interval_ms < DAY_MS:
        return bool(day_ts != day_prev)  # overnight, weekend, holiday
    skipped = np.arange(day_prev + 1, day_ts, dtype=np.int64)
    # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays, 5/6 on weekends.
    return bool(np.all((skipped + 3) % 7 >= 5))


def _validate(
    ts: np.ndarray,
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    rows: np.ndarray,
    local: np.ndarray,
    interval_ms: int | None,
    allow_gaps: bool,
    calendar: MarketCalendar | None,
    source: str,
    tz: str,
) -> tuple[int, tuple[Gap, ...], int]:
    """All row problems at once (raised as one DataError); else (interval, gaps, closed)."""
    problems: list[tuple[int, str]] = []

    def when(i: int) -> str:
        """Bar i's time as the file wrote it (its zone), for messages."""
        if tz == "UTC" or "," in tz:
            return _iso(int(ts[i]))
        wall = _iso(int(local[i])).removesuffix("Z")
        return wall + tz if _OFFSET_TZ.match(tz) else f"{wall} {tz}"

    def flag(mask: np.ndarray, text: Any) -> None:
        for i in np.flatnonzero(mask)[: _MAX_LISTED * 5]:
            problems.append((int(rows[i]), text(int(i))))

    with np.errstate(invalid="ignore"):
        for name, col in zip(_PRICES, (o, h, lo, c), strict=True):
            bad = ~np.isfinite(col) | (col <= 0)
            flag(bad, lambda i, n=name, a=col: f"{n} price {_f(a[i])} is not a positive number")
        # Bounds are checked only where all four prices are valid (else that is the report).
        ok = np.all([np.isfinite(p) & (p > 0) for p in (o, h, lo, c)], axis=0)
        top, bottom = np.maximum(o, c), np.minimum(o, c)
        flag(ok & (h < top), lambda i: f"high {_f(h[i])} is below max(open, close) {_f(top[i])}")
        flag(
            ok & (lo > bottom),
            lambda i: f"low {_f(lo[i])} is above min(open, close) {_f(bottom[i])}",
        )
        flag(ok & (h < lo), lambda i: f"high {_f(h[i])} is below low {_f(lo[i])}")
        flag(~np.isfinite(v) | (v < 0), lambda i: f"volume {_f(v[i])} is not a number >= 0")
    step = np.diff(ts)
    prev_row = rows[:-1]
    flag(
        np.concatenate(([False], step < 0)),
        lambda i: (
            f"unsorted: opens at {when(i)}, before row {prev_row[i - 1]} ({when(i - 1)}); "
            "sort the bars by time"
        ),
    )
    flag(
        np.concatenate(([False], step == 0)),
        lambda i: f"duplicate timestamp {when(i)} (same as row {prev_row[i - 1]})",
    )
    if problems:
        raise DataError(source, problems)

    if interval_ms is None:
        if len(ts) < 2:
            raise _bad(source, f"{len(ts)} bar(s): too few to infer the interval; pass interval=")
        # The most common spacing (the smallest on a tie). Not the median: an hourly file
        # with more holes than bars would come out two-hourly.
        spacings, counts = np.unique(step, return_counts=True)
        interval_ms = int(spacings[np.argmax(counts)])
    slack = _DAILY_SLACK_MS if interval_ms >= DAY_MS else 0
    short = np.concatenate(([False], step < interval_ms - slack))
    flag(
        short,
        lambda i: (
            f"opens {int(ts[i] - ts[i - 1])} ms after row {prev_row[i - 1]}, less than "
            f"the {interval_ms} ms interval: the bars are not on one interval (resample them)"
        ),
    )
    if problems:
        raise DataError(source, problems)

    gaps: list[Gap] = []
    at: list[int] = []
    closed = 0
    for i in np.flatnonzero(step > interval_ms + slack):
        prev, nxt = int(ts[i]), int(ts[i + 1])
        if _market_closed(prev, nxt, interval_ms, int(local[i]), int(local[i + 1]), calendar):
            closed += 1
        else:
            gaps.append(Gap(int(rows[i + 1]), prev, nxt))
            at.append(int(i))
    if gaps and not allow_gaps:
        raise DataError(
            source,
            [
                (
                    g.row,
                    f"gap: no bar between {when(i)} and {when(i + 1)} while the market was open",
                )
                for g, i in zip(gaps, at, strict=True)
            ],
            fix="bars are missing inside a session; fill them, or load without --strict-gaps "
            "(allow_gaps=True) to accept and count them",
        )
    return interval_ms, tuple(gaps), closed


def _freeze(a: np.ndarray, dtype: Any) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    if out.dtype == np.float64:
        out += 0.0  # -0.0 -> 0.0: the same value hashes the same
    out.flags.writeable = False
    return out


def _build(
    ts: np.ndarray,
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    v: np.ndarray,
    *,
    symbol: str,
    interval_ms: int | None,
    tz: str,
    local: np.ndarray,
    rows: np.ndarray,
    allow_gaps: bool,
    calendar: MarketCalendar | None,
    source: str,
) -> Bars:
    interval, gaps, closed = _validate(
        ts, o, h, lo, c, v, rows, local, interval_ms, allow_gaps, calendar, source, tz
    )
    arrays = [_freeze(ts, np.int64), *(_freeze(a, np.float64) for a in (o, h, lo, c, v))]
    ts_a, o_a, h_a, lo_a, c_a, v_a = arrays
    bars = Bars(
        ts_a,
        o_a,
        h_a,
        lo_a,
        c_a,
        v_a,
        symbol=symbol,
        interval_ms=interval,
        tz=tz,
        sha256=data_hash(*arrays),
        gaps=gaps,
        closed_gaps=closed,
        source=source,
    )
    if gaps:
        log.warning(
            "bars_gaps",
            source=source,
            gaps=len(gaps),
            first_row=gaps[0].row,
            why="bars missing inside a session; strict_gaps makes this an error",
        )
    return bars


def bars_from_arrays(
    ts_ms: Any,
    open: Any,
    high: Any,
    low: Any,
    close: Any,
    volume: Any,
    *,
    symbol: str,
    interval_ms: int | str | None = None,
    tz: str = "UTC",
    allow_gaps: bool = True,
    calendar: MarketCalendar | str | None = None,
    source: str = "<arrays>",
) -> Bars:
    """Validate arrays (bar open times in UTC epoch ms) into ``Bars``; the same rules as
    ``load_bars``. An empty series needs ``interval_ms``."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    cols = [np.asarray(a, dtype=np.float64) for a in (open, high, low, close, volume)]
    if any(col.shape != ts.shape for col in cols) or ts.ndim != 1:
        raise _bad(source, "ts_ms and the five OHLCV arrays must be 1-D, one length")
    tz = _check_zone(tz, source)
    interval = None if interval_ms is None else parse_interval(interval_ms)
    return _build(
        ts,
        *cols,
        symbol=symbol,
        interval_ms=interval,
        tz=tz,
        local=_local_ms(ts, tz),
        rows=np.arange(1, len(ts) + 1),
        allow_gaps=allow_gaps,
        calendar=_calendar(calendar, source),
        source=source,
    )


# ---- reading files ----------------------------------------------------------------------


def _first_failure(arr: pa.Array, convert: Any) -> int:
    """Index of the first element ``convert`` cannot handle (given the whole array fails):
    a binary search over prefixes, O(n log n) work and no per-row Python."""
    lo, hi = 0, len(arr)  # convert(arr[:lo]) succeeds, convert(arr[:hi]) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(arr.slice(0, mid))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OverflowError):
            hi = mid
        else:
            lo = mid
    return hi - 1


def _convert(arr: pa.Array, convert: Any, rows: np.ndarray, source: str, what: Any) -> Any:
    try:
        return convert(arr)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OverflowError):
        i = _first_failure(arr, convert)
        raise DataError(source, [(int(rows[i]), what(arr[i].as_py()))]) from None


def _resolve_columns(names: Sequence[str], source: str) -> dict[str, str]:
    lowered: dict[str, list[str]] = {}
    for name in names:
        lowered.setdefault(name.strip().lower(), []).append(name)
    found: dict[str, str] = {}
    problems: list[tuple[int, str]] = []
    for canonical, aliases in COLUMN_ALIASES.items():
        hits = [n for alias in aliases for n in lowered.get(alias, [])]
        exact = lowered.get(canonical, [])
        if len(exact) == 1:
            found[canonical] = exact[0]
        elif len(hits) == 1:
            found[canonical] = hits[0]
        elif not hits:
            problems.append(
                (
                    0,
                    f"missing column {canonical!r} (accepted names: {', '.join(aliases)}, any "
                    "case)",
                )
            )
        else:
            problems.append(
                (
                    0,
                    f"columns {', '.join(map(repr, hits))} could each be {canonical!r}: rename "
                    f"the one to use to {canonical!r}",
                )
            )
    if problems:
        problems.append((0, f"the file has columns {', '.join(map(repr, names))}"))
        raise DataError(source, problems)
    return found


def _float_column(arr: pa.Array, name: str, rows: np.ndarray, source: str) -> np.ndarray:
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        arr = pc.utf8_trim_whitespace(arr)
        out = _convert(
            arr,
            lambda a: pc.cast(a, pa.float64()),
            rows,
            source,
            lambda value: f"{name} {value!r} is not a number",
        )
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        out = pc.cast(arr, pa.float64(), safe=False)
    else:
        raise _bad(source, f"column {name!r} has type {t}; expected numbers")
    return np.asarray(out.to_numpy(zero_copy_only=False), dtype=np.float64)


def _epoch_ms(values: np.ndarray) -> np.ndarray:
    if len(values) and np.abs(values).max() < _EPOCH_S_LIMIT:
        return values * 1000
    return values


def _need_tz(source: str, row: int, example: Any) -> DataError:
    return _bad(
        source,
        f"timestamp {example!r} has no UTC offset; write timestamps with their offset "
        "(2024-01-02T09:15:00+05:30) or pass tz= (--tz Asia/Kolkata) to say the zone they "
        "were written in",
        row=row,
    )


def _assume(naive_ns: pa.Array, tz: str, rows: np.ndarray, source: str) -> pa.Array:
    def localize(a: pa.Array) -> pa.Array:
        return pc.assume_timezone(a, timezone=tz, ambiguous="raise", nonexistent="raise")

    return _convert(
        naive_ns,
        localize,
        rows,
        source,
        lambda value: (
            f"local time {value} does not exist or is ambiguous in {tz} (a DST "
            "change): write it with its UTC offset"
        ),
    )


def _timestamps(
    arr: pa.Array, tz: str | None, rows: np.ndarray, source: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """(UTC ms, local wall ms, zone label) of a timestamp column of any supported type."""
    t = arr.type
    if pa.types.is_timestamp(t):
        raw = np.asarray(arr.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[t.unit]
        ms = raw * 1000 if per_ms < 1 else raw // int(per_ms)
        if t.tz is not None:
            zone = tz or t.tz
            return ms, _local_ms(ms, zone), zone
        if tz is None:
            raise _need_tz(source, int(rows[0]), arr[0].as_py().isoformat())
        naive = pa.array(ms, type=pa.int64()).cast(pa.timestamp("ms"))
        aware = _assume(naive, tz, rows, source)
        return np.asarray(aware.cast(pa.int64()).to_numpy(), dtype=np.int64), ms, tz
    if pa.types.is_date(t):
        days = np.asarray(arr.cast(pa.date32()).cast(pa.int32()).to_numpy(), dtype=np.int64)
        if tz is None:
            raise _need_tz(source, int(rows[0]), str(arr[0].as_py()))
        naive = pa.array(days * DAY_MS, type=pa.int64()).cast(pa.timestamp("ms"))
        aware = _assume(naive, tz, rows, source)
        return np.asarray(aware.cast(pa.int64()).to_numpy(), dtype=np.int64), days * DAY_MS, tz
    if pa.types.is_integer(t):
        ms = _epoch_ms(np.asarray(arr.cast(pa.int64()).to_numpy(), dtype=np.int64))
        zone = tz or "UTC"
        return ms, _local_ms(ms, zone), zone
    if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
        raise _bad(source, f"timestamp column has type {t}; expected ISO 8601 text or epoch s/ms")
    text = pc.utf8_trim_whitespace(arr)
    if len(text) and pc.all(pc.match_substring_regex(text, _EPOCH_TEXT)).as_py():
        ints = _convert(
            text,
            lambda a: pc.cast(a, pa.int64()),
            rows,
            source,
            lambda value: f"epoch timestamp {value!r} does not fit in 64 bits",
        )
        return _timestamps(ints, tz, rows, source)
    offsets = pc.struct_field(pc.extract_regex(text, _ISO_OFFSET), "off")
    has_offset = np.asarray(pc.is_valid(offsets).to_numpy(zero_copy_only=False), dtype=bool)
    if has_offset.any():
        if not has_offset.all():
            i = int(np.flatnonzero(~has_offset)[0])
            j = int(np.flatnonzero(has_offset)[0])
            raise _bad(
                source,
                f"timestamp {text[i].as_py()!r} has no UTC offset while row "
                f"{rows[j]} ({text[j].as_py()!r}) has one: give every timestamp "
                "its offset",
                row=int(rows[i]),
            )
        aware = _convert(
            text,
            lambda a: pc.cast(a, pa.timestamp("ns", tz="UTC")),
            rows,
            source,
            lambda value: (
                f"timestamp {value!r} is not ISO 8601 (2024-01-02T09:15:00+05:30) within 1678-2261"
            ),
        )
        ms = np.asarray(aware.cast(pa.int64()).to_numpy(), dtype=np.int64) // 1_000_000
        encoded = pc.dictionary_encode(offsets)
        by_text = np.array([_offset_ms(s) for s in encoded.dictionary.to_pylist()], np.int64)
        offset = by_text[np.asarray(encoded.indices.to_numpy(), dtype=np.int64)]
        labels = sorted({_offset_label(int(x)) for x in by_text}, key=lambda s: (s != "UTC", s))
        zone = tz or ",".join(labels)
        local = _local_ms(ms, tz) if tz else ms + offset
        return ms, local, zone
    if tz is None:
        raise _need_tz(source, int(rows[0]), text[0].as_py())
    naive = _convert(
        text,
        lambda a: pc.cast(a, pa.timestamp("ns")),
        rows,
        source,
        lambda value: (
            f"timestamp {value!r} is not ISO 8601 (2024-01-02T09:15:00 or 2024-01-02) "
            "within 1678-2261"
        ),
    )
    aware = _assume(naive, tz, rows, source)
    ms = np.asarray(aware.cast(pa.int64()).to_numpy(), dtype=np.int64) // 1_000_000
    local = np.asarray(naive.cast(pa.int64()).to_numpy(), dtype=np.int64) // 1_000_000
    return ms, local, tz


def _read_table(path: Path, source: str) -> tuple[pa.Table, dict[bytes, bytes]]:
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            table = pq.read_table(path)
            return table, dict(table.schema.metadata or {})
        if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zst")):
            # Every column as text (pyarrow would guess types per block): one cast later
            # decides, and names the first row it fails on.
            names = pacsv.open_csv(path).schema.names
            convert = pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                # Only an empty cell is missing: "nan" stays text and fails as a price.
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            )
            table = pacsv.read_csv(path, convert_options=convert)
            return table, {}
    except FileNotFoundError:
        raise _bad(source, "no such file") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise _bad(source, f"cannot read it: {exc}") from None
    raise _bad(source, "unknown file type: expected .csv (optionally .gz/.bz2/.zst) or .parquet")


def load_bars(
    path: str | Path,
    symbol: str | None = None,
    interval: int | str | None = None,
    allow_gaps: bool = True,
    tz: str | None = None,
    calendar: MarketCalendar | str | None = None,
) -> Bars:
    """Read and validate OHLCV bars from ``.csv`` or ``.parquet`` (docs/BACKTEST_DATA.md).

    ``symbol`` picks one symbol from a file with a ``symbol`` column (and names the result;
    default: the Parquet metadata, the column's single value, or the file stem).
    ``interval`` (ms or text like "5m"; default: the Parquet metadata, else the most
    common spacing). ``allow_gaps=False`` makes bars missing inside a session an error.
    ``tz`` is the zone of naive timestamps (and the label of the result). ``calendar`` (a
    MarketCalendar or a market name such as "NSE_CM") decides which gaps are market-closed;
    without one, nights and weekends are.
    Raises ``DataError`` naming the file, the 1-based row and the problem.
    """
    path = Path(path)
    source = str(path)
    if tz is not None:
        tz = _check_zone(tz, source)
    cal = _calendar(calendar, source)
    interval_ms = None if interval is None else parse_interval(interval)
    table, meta = _read_table(path, source)
    symbol_col = next((n for n in table.column_names if n.strip().lower() == "symbol"), None)
    return table_bars(
        table, meta, path, symbol, symbol_col, interval_ms, allow_gaps, tz, cal, source
    )


def table_bars(
    table: pa.Table,
    meta: dict[bytes, bytes],
    path: Path,
    symbol: str | None,
    symbol_col: str | None,
    interval_ms: int | None,
    allow_gaps: bool,
    tz: str | None,
    cal: MarketCalendar | None,
    source: str,
) -> Bars:
    """``load_bars`` on a table already read: the rows of ``symbol`` in ``symbol_col`` (a
    file with several symbols needs one), validated into ``Bars``."""
    columns = _resolve_columns(
        [n for n in table.column_names if n != symbol_col] if symbol_col else table.column_names,
        source,
    )
    rows = np.arange(1, table.num_rows + 1)
    if symbol_col is not None:
        symbols = pc.utf8_trim_whitespace(
            table.column(symbol_col).combine_chunks().cast(pa.string())
        )
        present = sorted(s for s in pc.unique(symbols).to_pylist() if s is not None)
        if symbol is not None:
            keep = pc.fill_null(pc.equal(symbols, symbol), False)
            if not pc.any(keep).as_py():
                raise _bad(
                    source,
                    f"no rows for symbol {symbol!r} (the file has {', '.join(present) or 'none'})",
                )
            table = table.filter(keep)
            rows = rows[np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)]
        elif len(present) > 1:
            raise _bad(
                source,
                f"the file holds several symbols ({', '.join(present)}): "
                "pass symbol= (--symbol) to pick one",
            )
        else:
            symbol = present[0] if present else None
    if symbol is None:
        symbol = meta.get(b"chimera.symbol", b"").decode() or path.name.split(".")[0]
    if table.num_rows == 0:
        raise _bad(source, "no data rows")
    if interval_ms is None and meta.get(b"chimera.interval_ms", b"").isdigit():
        interval_ms = int(meta[b"chimera.interval_ms"])  # written by write_bars

    arrays = {name: table.column(col).combine_chunks() for name, col in columns.items()}
    problems = []
    for name, arr in arrays.items():
        if arr.null_count:
            nulls = np.flatnonzero(np.asarray(arr.is_null().to_numpy(zero_copy_only=False)))
            problems += [
                (int(rows[i]), f"missing value in column {columns[name]!r}")
                for i in nulls[: _MAX_LISTED * 5]
            ]
    if problems:
        raise DataError(source, problems)
    ts, local, zone = _timestamps(arrays["timestamp"], tz, rows, source)
    o, h, lo, c, v = (
        _float_column(arrays[name], columns[name], rows, source) for name in (*_PRICES, "volume")
    )
    bars = _build(
        ts,
        o,
        h,
        lo,
        c,
        v,
        symbol=symbol,
        interval_ms=interval_ms,
        tz=zone,
        local=local,
        rows=rows,
        allow_gaps=allow_gaps,
        calendar=cal,
        source=source,
    )
    log.info(
        "bars_loaded",
        source=source,
        symbol=symbol,
        rows=len(bars),
        interval_ms=bars.interval_ms,
        tz=zone,
        gaps=len(bars.gaps),
        closed_gaps=bars.closed_gaps,
        sha256=bars.sha256[:16],
    )
    return bars


# ---- writing ----------------------------------------------------------------------------


def _iso_column(bars: Bars) -> pa.Array:
    """ISO 8601 text with the bars' UTC offset (e.g. 2024-01-02T09:15:00+05:30)."""
    zone = bars.tz if _is_zone(bars.tz) else "UTC"
    whole_seconds = not np.any(bars.ts_ms % 1000)
    unit = "s" if whole_seconds else "ms"
    raw = bars.ts_ms // 1000 if whole_seconds else bars.ts_ms
    ts = pa.array(raw, type=pa.int64()).cast(pa.timestamp(unit, tz=zone))
    text = pc.strftime(ts, format="%Y-%m-%dT%H:%M:%S%z")
    return pc.replace_substring_regex(text, pattern=r"([+-]\d\d)(\d\d)$", replacement=r"\1:\2")


def write_bars(bars: Bars, path: str | Path) -> Path:
    """Write bars as ``.csv`` (ISO 8601 timestamps with offset, shortest round-trip floats)
    or ``.parquet`` (``timestamp[ms, tz]``, symbol and interval in the metadata); either
    loads back to the same arrays and hash. The file is replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        pq.write_table(bars.table(), tmp)
    elif name.endswith(".csv"):
        table = bars.table()
        table = table.set_column(0, "timestamp", _iso_column(bars))
        with pa.OSFile(str(tmp), "wb") as out:
            out.write(",".join(table.column_names).encode() + b"\n")  # unquoted header
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            pacsv.write_csv(table, out, write_options=options)
    else:
        raise DataError(str(path), [(0, "unknown file type: write .csv or .parquet")])
    tmp.replace(path)
    return path


# ---- ticks ------------------------------------------------------------------------------


def ticks_hash(frames: Iterator[tuple[bytes, int]] | Sequence[tuple[bytes, int]]) -> str:
    """SHA-256 of a frame sequence (each ``<q recv_ns><I length>`` + frame): the same frames
    hash the same whether they came from a tick file or a black-box session."""
    h = hashlib.sha256(b"chimera-ticks-v1\x00")
    for frame, recv_ns in frames:
        h.update(struct.pack("<qI", recv_ns, len(frame)))
        h.update(frame)
    return h.hexdigest()


def _session_frames(session: Path, skipped: list[int]) -> Iterator[tuple[bytes, int]]:
    from chimera_core.telemetry import TOPIC_RAW, ReadReport, decoder_for, read_session

    decode_tick = decoder_for(TOPIC_RAW, TickRecord)
    report = ReadReport()
    for message in read_session(session, report):
        if message.carries_frame:
            try:
                rec = decode_tick(message.payload)
            except ProtocolError:
                skipped[0] += 1
                continue
            yield rec.frame, rec.recv_ns
    skipped[0] += report.malformed


def _tickfile_frames(path: Path) -> Iterator[tuple[bytes, int]]:
    from chimera_core.tickfile import TickFileReader

    for recv_ns, frame in TickFileReader(path):
        yield frame, recv_ns


@dataclass(frozen=True)
class TickSource:
    """Raw feed frames in recorded order: iterate for ``(frame, recv_ns)`` pairs, the
    arguments of ``Engine.on_frame``. ``kind`` is "tickfile" or "blackbox"; ``sha256`` is
    ``ticks_hash`` of every frame; ``skipped`` counts undecodable black-box records."""

    path: Path
    kind: str
    frames: int
    sha256: str
    skipped: int = 0

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        if self.kind == "tickfile":
            return _tickfile_frames(self.path)
        return _session_frames(self.path, [0])


def load_ticks(path: str | Path) -> TickSource:
    """A tick file (``chimera_core.tickfile``) or a black-box session directory
    (``chimera_core/telemetry/blackbox.py``; its ``tick.*`` and ``raw`` messages carry the
    feed frames).
    Reads the input once to count and hash it; iterate the result to read it again."""
    path = Path(path)
    source = str(path)
    if path.is_dir():
        from chimera_core.telemetry import segments

        if not segments(path):
            raise _bad(source, "not a black-box session: no seg-*.chbb files in it")
        skipped = [0]
        frames = list(_session_frames(path, skipped))
        kind = "blackbox"
    elif path.is_file():
        try:
            frames = list(_tickfile_frames(path))
        except ProtocolError as exc:
            raise _bad(source, str(exc)) from None
        skipped, kind = [0], "tickfile"
    else:
        raise _bad(source, "no such tick file or session directory")
    if not frames:
        raise _bad(source, "no feed frames in it")
    result = TickSource(path, kind, len(frames), ticks_hash(frames), skipped[0])
    log.info(
        "ticks_loaded",
        source=source,
        kind=kind,
        frames=len(frames),
        skipped=skipped[0],
        sha256=result.sha256[:16],
    )
    return result
