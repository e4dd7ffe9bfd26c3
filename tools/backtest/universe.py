"""Several instruments for one account: a long-format file (one row per bar and symbol, a
``symbol`` or ``token`` column) or one file per instrument, read into per-instrument
``Bars`` on one bar interval (docs/BACKTEST_DATA.md, "Several instruments").

Each instrument's feed token is its symbol with everything but ASCII letters and digits
dropped (at most 20 characters, the SmartAPI frame's field), as ``chimera backtest`` names
a single file's. The joint calendar is every bar open any instrument has; an instrument
without a bar at some time simply prints nothing then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from chimera_core.markets import MarketCalendar
from tools.backtest.data import (
    Bars,
    DataError,
    _calendar,
    _check_zone,
    _read_table,
    parse_interval,
    table_bars,
)

log = structlog.get_logger(__name__)

SYMBOL_COLUMNS = ("symbol", "token")  # looked for, in this order, when none is named
TOKEN_CHARS = 20


def token_of(symbol: str) -> str:
    """The feed token a symbol travels as: its ASCII letters and digits, at most 20."""
    return "".join(c for c in symbol if c.isascii() and c.isalnum())[:TOKEN_CHARS]


@dataclass(frozen=True, eq=False)
class Universe:
    """Instruments on one bar interval, sorted by token: ``tokens[i]`` trades ``bars[i]``.
    ``ts_ms`` is the joint calendar; ``sha256`` covers every instrument's token and data."""

    tokens: tuple[str, ...]
    bars: tuple[Bars, ...]
    interval_ms: int
    ts_ms: np.ndarray
    sha256: str
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    def pairs(self) -> list[tuple[str, Bars]]:
        return list(zip(self.tokens, self.bars, strict=True))


def _symbol_column(table: pa.Table, wanted: str | None, source: str) -> str | None:
    names: list[str] = list(table.column_names)
    by_lower = {n.strip().lower(): n for n in names}
    if wanted is not None:
        hit = by_lower.get(wanted.strip().lower())
        if hit is None:
            raise DataError(
                source,
                [(0, f"no symbol column {wanted!r}; the file has columns "
                     f"{', '.join(map(repr, names))}")],
                f"pass --symbol-column with one of them, or add a {wanted!r} column",
            )  # fmt: skip
        return hit
    return next((by_lower[c] for c in SYMBOL_COLUMNS if c in by_lower), None)


def _file_bars(
    path: Path,
    symbol_column: str | None,
    interval_ms: int | None,
    allow_gaps: bool,
    tz: str | None,
    cal: MarketCalendar | None,
) -> list[Bars]:
    """Every instrument in one file: one per symbol of its symbol column, else the file."""
    source = str(path)
    table, meta = _read_table(path, source)
    if table.num_rows == 0:
        raise DataError(source, [(0, "no data rows")], "drop the file or fill it with bars")
    col = _symbol_column(table, symbol_column, source)
    if col is None:
        return [table_bars(table, meta, path, None, None, interval_ms, allow_gaps, tz, cal,
                           source)]  # fmt: skip
    symbols = pc.utf8_trim_whitespace(table.column(col).combine_chunks().cast(pa.string()))
    if symbols.null_count:
        nulls = np.flatnonzero(np.asarray(symbols.is_null().to_numpy(zero_copy_only=False)))
        raise DataError(source, [(int(i) + 1, f"no value in column {col!r}") for i in nulls])
    out = []
    for symbol in sorted(pc.unique(symbols).to_pylist()):
        out.append(
            table_bars(table, meta, path, symbol, col, interval_ms, allow_gaps, tz, cal, source)
        )
    return out


def load_universe(
    paths: Sequence[str | Path],
    symbol_column: str | None = None,
    interval: int | str | None = None,
    allow_gaps: bool = True,
    tz: str | None = None,
    calendar: MarketCalendar | str | None = None,
) -> Universe:
    """Instruments from ``paths`` (each a long-format file or one instrument's file; the
    same rules as ``load_bars``). Raises ``DataError`` naming the file and what to fix:
    an unknown ``symbol_column``, two instruments on one token, bar intervals that differ,
    a file with no rows."""
    if not paths:
        raise DataError("<universe>", [(0, "no data files")], "pass --data FILE at least once")
    interval_ms = None if interval is None else parse_interval(interval)
    cal = _calendar(calendar, "<universe>")
    if tz is not None:
        tz = _check_zone(tz, "<universe>")
    found: list[tuple[str, Bars]] = []
    for p in paths:
        for bars in _file_bars(Path(p), symbol_column, interval_ms, allow_gaps, tz, cal):
            found.append((token_of(bars.symbol), bars))
    by_token: dict[str, Bars] = {}
    for token, bars in found:
        if not token:
            raise DataError(
                bars.source,
                [(0, f"symbol {bars.symbol!r} has no ASCII letter or digit to name a token")],
                "rename it (the feed token is the symbol's ASCII letters and digits)",
            )
        other = by_token.get(token)
        if other is not None:
            raise DataError(
                bars.source,
                [(0, f"symbol {bars.symbol!r} and {other.symbol!r} (in {other.source}) both "
                     f"trade as token {token!r}")],
                "rename one of them (the token is the symbol's ASCII letters and digits, "
                f"at most {TOKEN_CHARS}) or drop the duplicate file",
            )  # fmt: skip
        by_token[token] = bars
    intervals = {b.interval_ms for b in by_token.values()}
    if len(intervals) > 1:
        listed = ", ".join(
            f"{t} ({b.source}) {b.interval_ms // 1000} s" for t, b in sorted(by_token.items())
        )
        raise DataError(
            "<universe>",
            [(0, f"instruments on different bar intervals: {listed}")],
            "resample them to one interval, or pass --interval if one was inferred wrongly",
        )
    tokens = tuple(sorted(by_token))
    bars_ = tuple(by_token[t] for t in tokens)
    digest = hashlib.sha256(b"chimera-universe-v1\x00")
    for t, b in zip(tokens, bars_, strict=True):
        digest.update(f"{t}\x00{b.sha256}\x00".encode())
    calendar_ = np.unique(np.concatenate([b.ts_ms for b in bars_]))
    universe = Universe(
        tokens=tokens,
        bars=bars_,
        interval_ms=bars_[0].interval_ms,
        ts_ms=calendar_,
        sha256=digest.hexdigest(),
        sources=tuple(str(p) for p in paths),
    )
    log.info(
        "universe_loaded",
        instruments=len(tokens),
        bars=int(calendar_.size),
        interval_ms=universe.interval_ms,
        sha256=universe.sha256[:16],
    )
    return universe


def symbol_column_in(path: Path, wanted: str | None = None) -> str | None:
    """The symbol column of a bar file, from its header alone (None: one instrument)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            names = pq.read_schema(path).names
        elif name.endswith(".csv"):
            names = pacsv.open_csv(path).schema.names
        else:
            return None
    except (pa.ArrowInvalid, OSError):
        return None  # load_bars says what is wrong with it
    return _symbol_column(pa.table({n: [] for n in names}), wanted, str(path))
