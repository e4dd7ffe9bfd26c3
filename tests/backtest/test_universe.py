"""Several instruments for one account: the long-format and one-file-per-instrument
loaders, their errors, and the time-ordered merge of the instruments' prints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.backtest.data import DataError, bars_from_arrays, load_bars
from tools.backtest.event import bar_ticks, calendar_of, merged_ticks
from tools.backtest.universe import load_universe, token_of

T0 = 1_735_689_600_000  # 2025-01-01 00:00 UTC
FIVE_MIN = 300_000


def _rows(symbol: str, ts: np.ndarray, base: float) -> dict[str, list[object]]:
    close = base + np.arange(ts.size, dtype=float)
    return {
        "timestamp": [int(t) for t in ts],
        "symbol": [symbol] * ts.size,
        "open": list(close - 0.5),
        "high": list(close + 1.0),
        "low": list(close - 1.0),
        "close": list(close),
        "volume": [1000.0] * ts.size,
    }


def _write(path: Path, parts: list[dict[str, list[object]]], drop: str = "") -> Path:
    cols: dict[str, list[object]] = {k: [] for k in parts[0]}
    for p in parts:
        for k, v in p.items():
            cols[k] += v
    if drop:
        cols.pop(drop)
    pacsv.write_csv(pa.table(cols), path)
    return path


def test_a_long_format_file_gives_one_series_per_symbol_on_one_calendar(tmp_path):
    a = T0 + np.arange(10) * FIVE_MIN
    b = T0 + np.arange(3, 14) * FIVE_MIN  # starts later, ends later
    path = _write(tmp_path / "long.csv", [_rows("ZED", a, 100.0), _rows("ABC-EQ", b, 50.0)])
    u = load_universe([path])
    assert u.tokens == ("ABCEQ", "ZED")  # sorted by token, cleaned like a feed token
    assert [x.symbol for x in u.bars] == ["ABC-EQ", "ZED"]
    np.testing.assert_array_equal(u.bars[1].ts_ms, a)
    np.testing.assert_array_equal(u.bars[0].close, 50.0 + np.arange(11))
    np.testing.assert_array_equal(u.ts_ms, np.union1d(a, b))
    assert u.interval_ms == FIVE_MIN
    # Each symbol reads as load_bars reads it alone: the same arrays, the same hash.
    alone = load_bars(path, symbol="ZED")
    assert alone.sha256 == u.bars[1].sha256


def test_one_file_per_instrument_and_a_token_column(tmp_path):
    ts = T0 + np.arange(6) * FIVE_MIN
    one = _write(tmp_path / "SBIN.csv", [_rows("x", ts, 10.0)], drop="symbol")
    rows = _rows("2885", ts, 20.0)
    rows["token"] = rows.pop("symbol")
    two = _write(tmp_path / "other.csv", [rows])
    u = load_universe([one, two])
    assert u.tokens == ("2885", "SBIN")
    assert u.sha256 != load_universe([one]).sha256


def test_the_errors_name_the_file_and_what_to_fix(tmp_path):
    ts = T0 + np.arange(6) * FIVE_MIN
    long = _write(tmp_path / "long.csv", [_rows("A", ts, 10.0), _rows("B", ts, 20.0)])
    with pytest.raises(DataError, match=r"long\.csv.*no symbol column 'ticker'.*--symbol-column"):
        load_universe([long], symbol_column="ticker")

    clash = _write(tmp_path / "clash.csv", [_rows("SBIN-EQ", ts, 10.0), _rows("SBINEQ", ts, 20.0)])
    with pytest.raises(DataError, match=r"clash\.csv.*both trade as token 'SBINEQ'.*rename"):
        load_universe([clash])

    hourly = _write(tmp_path / "hourly.csv", [_rows("C", T0 + np.arange(6) * 3_600_000, 50.0)])
    with pytest.raises(DataError, match=r"different bar intervals.*hourly\.csv.*3600 s.*resample"):
        load_universe([long, hourly])

    empty = tmp_path / "empty.csv"
    empty.write_text("timestamp,symbol,open,high,low,close,volume\n")
    with pytest.raises(DataError, match=r"empty\.csv: no data rows"):
        load_universe([long, empty])

    again = _write(tmp_path / "again.csv", [_rows("A", ts, 10.0)])
    with pytest.raises(DataError, match=r"again\.csv.*'A' and 'A' \(in .*long\.csv\)"):
        load_universe([long, again])


def test_a_token_is_the_symbols_ascii_letters_and_digits():
    assert token_of("NIFTY 50-INDEX") == "NIFTY50INDEX"
    assert token_of("x" * 30) == "x" * 20


@st.composite
def _instruments(draw: st.DrawFn) -> list[tuple[str, object]]:
    n = draw(st.integers(1, 4))
    out = []
    for i in range(n):
        # Any subset of a 40-bar grid: instruments start, stop and skip at different bars.
        slots = draw(st.lists(st.integers(0, 39), min_size=1, max_size=12, unique=True))
        ts = T0 + np.sort(np.asarray(slots, dtype=np.int64)) * FIVE_MIN
        prices = draw(st.lists(st.floats(10, 1000), min_size=len(slots), max_size=len(slots)))
        c = np.asarray(prices)
        bars = bars_from_arrays(ts, c, c * 1.01, c * 0.99, c, np.full(c.size, 400.0),
                                symbol=f"S{i}", interval_ms=FIVE_MIN)  # fmt: skip
        out.append((f"S{i}", bars))
    return out


@settings(max_examples=150, deadline=None)
@given(_instruments())
def test_merging_keeps_each_instruments_prints_in_order_and_loses_none(instruments):
    alone = {t: list(bar_ticks(b, t, 1)) for t, b in instruments}
    merged = list(merged_ticks([bar_ticks(b, t, 1) for t, b in instruments]))
    assert len(merged) == sum(len(v) for v in alone.values())  # none lost, none added
    for t, ticks in alone.items():  # each instrument's prints, the same and in order
        assert [x for x in merged if x.token == t] == ticks
    keys = [(x.exchange_ts_ms, x.token) for x in merged]
    assert keys == sorted(keys)  # time order; one millisecond's prints by token
    cal = calendar_of(instruments)
    every = np.concatenate([b.ts_ms for _, b in instruments])
    assert set(cal.tolist()) == set(every.tolist()) and np.all(np.diff(cal) > 0)
