"""OHLCV loading (CSV/Parquet via pyarrow), validation, gap policy, hashing, tick inputs.

Files are written here independently of the loader (Python's csv module and datetime,
pyarrow tables built by hand), and parsed values are checked against pandas or against
the arrays the test generated, never against the loader itself.
"""

from __future__ import annotations

import csv
import importlib.metadata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.contracts import TickRecord
from chimera_core.markets import MarketConfig, build_calendars
from chimera_core.telemetry import (
    TOPIC_HEALTH,
    TOPIC_RAW,
    TOPIC_TICK,
    SegmentWriter,
    encode_message,
)
from chimera_core.tickfile import TickFileReader, TickFileWriter
from tools.backtest.data import (
    DAY_MS,
    Bars,
    DataError,
    bars_from_arrays,
    code_version,
    load_bars,
    load_ticks,
    parse_interval,
    write_bars,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data" / "samples"
IST = ZoneInfo("Asia/Kolkata")
MIN = 60_000
# 2024-01-02 09:15 IST, a Tuesday.
OPEN_0102 = int(datetime(2024, 1, 2, 9, 15, tzinfo=IST).timestamp()) * 1000
FIELDS = ("open", "high", "low", "close", "volume")
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---- writing test files (independent of tools.backtest.data) ----------------------------


def iso(ms: int, tz: str) -> str:
    zone = UTC if tz == "UTC" else ZoneInfo(tz) if "/" in tz else _fixed(tz)
    return datetime.fromtimestamp(ms / 1000, zone).isoformat()


def _fixed(offset: str):
    sign = -1 if offset[0] == "-" else 1
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    from datetime import timezone

    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def write_csv(path: Path, rows: list[list[object]], header: list[str] | None = None) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header or ["timestamp", *FIELDS])
        w.writerows(rows)
    return path


def csv_rows(arrays: dict[str, np.ndarray], tz: str = "+05:30") -> list[list[object]]:
    return [
        [iso(int(arrays["ts"][i]), tz), *(repr(float(arrays[f][i])) for f in FIELDS)]
        for i in range(len(arrays["ts"]))
    ]


def write_parquet(path: Path, arrays: dict[str, np.ndarray], tz: str = "UTC") -> Path:
    ts = pa.array(arrays["ts"], pa.int64()).cast(pa.timestamp("ms", tz=tz))
    table = pa.table({"timestamp": ts, **{f: pa.array(arrays[f], pa.float64()) for f in FIELDS}})
    pq.write_table(table, path)
    return path


def assert_arrays(bars: Bars, arrays: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(bars.ts_ms, arrays["ts"])
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(bars, f), arrays[f])


# ---- generated data ------------------------------------------------------------------


finite = st.floats(min_value=0.01, max_value=1e7, allow_nan=False, allow_infinity=False)


@st.composite
def ohlcv(draw: st.DrawFn, min_rows: int = 2, max_rows: int = 40, same_day: bool = False):
    """Valid bars: open times on an interval grid (occasional holes unless ``same_day``),
    high >= max(open, close), 0 < low <= min(open, close), volume >= 0."""
    n = draw(st.integers(min_rows, max_rows))
    interval = MIN if same_day else draw(st.sampled_from([MIN, 5 * MIN, 60 * MIN, DAY_MS]))
    steps = (
        [1] * (n - 1)
        if same_day
        else draw(st.lists(st.sampled_from([1, 1, 1, 2, 7]), min_size=n - 1, max_size=n - 1))
    )
    start = OPEN_0102 + draw(st.integers(0, 3)) * DAY_MS
    ts = start + interval * np.concatenate(([0], np.cumsum(steps, dtype=np.int64)))
    o = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    c = np.array(draw(st.lists(finite, min_size=n, max_size=n)))
    up = np.array(draw(st.lists(st.floats(0, 1e3), min_size=n, max_size=n)))
    down = np.array(draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n)))
    v = np.array(draw(st.lists(st.floats(0, 1e12), min_size=n, max_size=n)))
    h = np.maximum(o, c) + up
    lo = np.minimum(o, c) * down
    return {
        "ts": ts.astype(np.int64),
        "open": o,
        "high": h,
        "low": lo,
        "close": c,
        "volume": v,
        "interval": interval,
    }


# ---- round trips -----------------------------------------------------------------------


@SETTINGS
@given(data=ohlcv(), tz=st.sampled_from(["UTC", "+05:30", "Asia/Kolkata", "America/New_York"]))
def test_csv_and_parquet_give_the_same_arrays_and_hash(tmp_path: Path, data, tz: str) -> None:
    a = load_bars(write_csv(tmp_path / "x.csv", csv_rows(data, tz)), interval=data["interval"])
    b = load_bars(write_parquet(tmp_path / "x.parquet", data, tz), interval=data["interval"])
    assert_arrays(a, data)
    assert_arrays(b, data)
    assert a.sha256 == b.sha256
    assert (a.interval_ms, b.interval_ms) == (data["interval"], data["interval"])
    assert b.tz == tz
    # Our own writer round-trips too, both ways.
    for out in ("w.csv", "w.parquet"):
        again = load_bars(write_bars(a, tmp_path / out), interval=data["interval"])
        assert_arrays(again, data)
        assert again.sha256 == a.sha256


@SETTINGS
@given(data=ohlcv(min_rows=2))
def test_hash_changes_with_any_value(tmp_path: Path, data) -> None:
    base = bars_from_arrays(
        data["ts"], *(data[f] for f in FIELDS), symbol="X", interval_ms=data["interval"]
    )
    assert len(base.sha256) == 64
    bumped = dict(data)
    bumped["volume"] = data["volume"].copy()
    bumped["volume"][-1] += 1.0
    other = bars_from_arrays(
        bumped["ts"], *(bumped[f] for f in FIELDS), symbol="Y", interval_ms=data["interval"]
    )
    assert other.sha256 != base.sha256
    # The symbol, zone and source do not enter the hash.
    renamed = bars_from_arrays(
        data["ts"],
        *(data[f] for f in FIELDS),
        symbol="Z",
        interval_ms=data["interval"],
        tz="Asia/Kolkata",
    )
    assert renamed.sha256 == base.sha256


def test_iso_parsing_agrees_with_pandas(tmp_path: Path) -> None:
    stamps = [
        "2024-01-02T09:15:00+05:30",
        "2024-01-02 09:16:00+0530",
        "2024-01-02T03:47:00Z",
        "2024-01-02T03:48:00.250+00:00",
        "2024-01-01T22:50:00-05:00",
    ]
    rows = [[s, 10, 11, 9, 10, 5] for s in stamps]
    bars = load_bars(write_csv(tmp_path / "x.csv", rows), interval=MIN)
    expected = pd.to_datetime(pd.Series(stamps), utc=True, format="mixed")
    assert bars.ts_ms.tolist() == expected.dt.as_unit("ms").astype("int64").tolist()
    assert bars.tz == "UTC,+05:30,-05:00"


def test_naive_timestamps_need_tz_and_agree_with_pandas(tmp_path: Path) -> None:
    stamps = ["2024-03-08 09:30:00", "2024-03-11 09:30:00", "2024-03-12 09:30"]
    path = write_csv(tmp_path / "naive.csv", [[s, 10, 11, 9, 10, 5] for s in stamps])
    with pytest.raises(
        DataError,
        match=r"row 1: timestamp '2024-03-08 09:30:00' has no UTC "
        r"offset.*tz=",
    ):
        load_bars(path)
    bars = load_bars(path, tz="America/New_York")  # DST starts 2024-03-10 there
    expected = pd.to_datetime(pd.Series(stamps), format="mixed").dt.tz_localize("America/New_York")
    assert bars.ts_ms.tolist() == expected.dt.as_unit("ms").astype("int64").tolist()
    assert bars.tz == "America/New_York"
    assert bars.interval_ms == DAY_MS and not bars.gaps and bars.closed_gaps == 1


def test_epoch_seconds_and_milliseconds(tmp_path: Path) -> None:
    ts = OPEN_0102 + MIN * np.arange(4)
    for name, values in (("s", ts // 1000), ("ms", ts)):
        rows = [[int(t), 10, 11, 9, 10, 5] for t in values]
        bars = load_bars(write_csv(tmp_path / f"{name}.csv", rows))
        assert bars.ts_ms.tolist() == ts.tolist()
        assert bars.tz == "UTC"
    table = pa.table({"ts": pa.array(ts // 1000), **{f: [10.0, 10, 10, 10] for f in FIELDS}})
    pq.write_table(table, tmp_path / "epoch.parquet")
    assert load_bars(tmp_path / "epoch.parquet").ts_ms.tolist() == ts.tolist()


def test_parquet_naive_timestamps_and_dates(tmp_path: Path) -> None:
    naive = pa.array(np.array(["2024-01-02T09:15", "2024-01-02T09:16"], "datetime64[ms]"))
    days = pa.array([datetime(2024, 1, 2).date(), datetime(2024, 1, 3).date()], pa.date32())
    for name, column in (("naive", naive), ("days", days)):
        table = pa.table({"Date": column, **{f.upper(): [10.0, 10.0] for f in FIELDS}})
        pq.write_table(table, tmp_path / f"{name}.parquet")
        with pytest.raises(DataError, match="has no UTC offset"):
            load_bars(tmp_path / f"{name}.parquet")
        bars = load_bars(tmp_path / f"{name}.parquet", tz="Asia/Kolkata")
        first = datetime(2024, 1, 2, 9, 15) if name == "naive" else datetime(2024, 1, 2)
        assert bars.ts_ms[0] == int(first.replace(tzinfo=IST).timestamp() * 1000)


def test_columns_are_found_by_alias_and_case(tmp_path: Path) -> None:
    rows = [
        ["2024-01-02T09:15:00+05:30", 10, 11, 9, 10, 5, "x"],
        ["2024-01-02T09:16:00+05:30", 10, 11, 9, 10, 5, "y"],
    ]
    header = [" Datetime", "OPEN", "High", "low", "Close", "Vol", "note"]
    bars = load_bars(write_csv(tmp_path / "alias.csv", rows, header))
    assert len(bars) == 2 and bars.volume.tolist() == [5.0, 5.0]


def test_missing_and_ambiguous_columns(tmp_path: Path) -> None:
    rows = [["2024-01-02T09:15:00+05:30", 10, 11, 9, 10]]
    with pytest.raises(DataError, match=r"missing column 'volume'.*the file has columns"):
        load_bars(write_csv(tmp_path / "m.csv", rows, ["timestamp", *FIELDS[:4]]))
    rows = [["2024-01-02", "09:15", 10, 11, 9, 10, 5]]
    with pytest.raises(DataError, match=r"columns 'date', 'time' could each be 'timestamp'"):
        load_bars(write_csv(tmp_path / "a.csv", rows, ["date", "time", *FIELDS]))


def test_symbol_column_picks_rows_and_keeps_row_numbers(tmp_path: Path) -> None:
    rows = [
        ["2024-01-02T09:15:00+05:30", "A", 10, 11, 9, 10, 5],
        ["2024-01-02T09:15:00+05:30", "B", 10, 11, 9, 10, 5],
        ["2024-01-02T09:16:00+05:30", "A", 10, 11, 9, 10, 5],
        ["2024-01-02T09:16:00+05:30", "B", 10, 9, 9, 10, 5],  # high below close
    ]
    path = write_csv(tmp_path / "two.csv", rows, ["timestamp", "symbol", *FIELDS])
    with pytest.raises(DataError, match=r"several symbols \(A, B\)"):
        load_bars(path)
    assert len(load_bars(path, symbol="A")) == 2
    assert load_bars(path, symbol="A").symbol == "A"
    with pytest.raises(DataError, match=r"row 4: high 9.0 is below max\(open, close\) 10.0"):
        load_bars(path, symbol="B")
    with pytest.raises(DataError, match=r"no rows for symbol 'C'"):
        load_bars(path, symbol="C")


# ---- bad rows ----------------------------------------------------------------------------

BAD_KINDS = (
    "nan",
    "zero",
    "negative",
    "not_number",
    "missing",
    "high_below",
    "low_above",
    "negative_volume",
    "bad_timestamp",
    "duplicate",
    "unsorted",
    "shorter_step",
)


@settings(SETTINGS, max_examples=150)  # every kind, several times
@given(
    data=ohlcv(min_rows=3, max_rows=30, same_day=True),
    kind=st.sampled_from(BAD_KINDS),
    where=st.floats(0, 1),
    column=st.sampled_from(["open", "high", "low", "close"]),
)
def test_every_kind_of_bad_row_is_reported_with_its_row(
    tmp_path: Path, data, kind: str, where: float, column: str
) -> None:
    rows = csv_rows(data)
    n = len(rows)
    r = min(n - 1, max(1, int(where * n)))  # 0-based, never the first row
    col = 1 + FIELDS.index(column)
    o, h, c = (float(data[f][r]) for f in ("open", "high", "close"))
    expect = {
        "nan": f"{column} price nan is not a positive number",
        "zero": f"{column} price 0.0 is not a positive number",
        "negative": f"{column} price -3.0 is not a positive number",
        "not_number": f"{column} 'abc' is not a number",
        "missing": f"missing value in column '{column}'",
        "high_below": "is below max(open, close)",
        "low_above": "is above min(open, close)",
        "negative_volume": "volume -1.0 is not a number >= 0",
        "bad_timestamp": "is not ISO 8601",
        "duplicate": "duplicate timestamp",
        "unsorted": "unsorted",
        "shorter_step": "less than the 60000 ms interval",
    }[kind]
    value = {"nan": "nan", "zero": "0", "negative": "-3", "not_number": "abc", "missing": ""}
    if kind in value:
        rows[r][col] = value[kind]
    elif kind == "high_below":
        rows[r][2] = repr(min(o, c) * 0.5)
    elif kind == "low_above":
        rows[r][3] = repr(max(o, c) * 1.5)
        rows[r][2] = repr(max(h, max(o, c) * 2))
    elif kind == "negative_volume":
        rows[r][5] = "-1"
    elif kind == "bad_timestamp":
        rows[r][0] = "2024-13-45T09:15:00+05:30"
    elif kind == "duplicate":
        rows[r][0] = rows[r - 1][0]
    elif kind == "unsorted":
        rows[r][0] = iso(int(data["ts"][r - 1]) - 1000, "+05:30")
    elif kind == "shorter_step":
        rows[r][0] = iso(int(data["ts"][r - 1]) + 30_000, "+05:30")
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError) as err:
        load_bars(path, interval=MIN)
    assert str(path) in str(err.value)
    assert any(row == r + 1 and expect in text for row, text in err.value.problems), (
        kind,
        r + 1,
        err.value.problems,
    )
    assert f"row {r + 1}: " in str(err.value)


def test_non_positive_and_infinite_prices_from_arrays() -> None:
    ts = OPEN_0102 + MIN * np.arange(3)
    ones = np.ones(3)
    for bad in (0.0, -1.0, np.inf, np.nan):
        close = np.array([1.0, bad, 1.0])
        with pytest.raises(DataError, match=r"row 2: close price"):
            bars_from_arrays(ts, ones, np.maximum(ones, close), ones * 0.5, close, ones, symbol="X")


def test_all_problems_are_listed_at_once(tmp_path: Path) -> None:
    ts = OPEN_0102 + MIN * np.arange(5)
    rows = [[iso(int(t), "+05:30"), 10, 11, 9, 10, 5] for t in ts]
    rows[1][5] = -2
    rows[3][1] = 0
    with pytest.raises(DataError) as err:
        load_bars(write_csv(tmp_path / "x.csv", rows))
    assert [row for row, _ in err.value.problems] == [2, 4]
    assert "2 bad row(s)" in str(err.value)


# ---- gaps --------------------------------------------------------------------------------


def minute_day(day: datetime, skip: set[int] = frozenset()) -> list[int]:
    opened = int(day.replace(hour=9, minute=15, tzinfo=IST).timestamp()) * 1000
    return [opened + m * MIN for m in range(375) if m not in skip]


def bars_at(ts: list[int], **kw) -> Bars:
    n = len(ts)
    one = np.full(n, 100.0)
    return bars_from_arrays(ts, one, one, one, one, one, symbol="X", tz="Asia/Kolkata", **kw)


def test_intraday_gap_is_counted_by_default_and_refused_when_strict() -> None:
    ts = minute_day(datetime(2024, 1, 2)) + minute_day(datetime(2024, 1, 3), skip={100, 101})
    bars = bars_at(ts)
    assert bars.interval_ms == MIN
    assert bars.closed_gaps == 1  # the night
    (gap,) = bars.gaps
    assert gap.row == 375 + 100 + 1  # the 10:57 bar, 1-based
    assert gap.duration_ms == 3 * MIN
    with pytest.raises(
        DataError,
        match=r"row 476: gap: no bar between 2024-01-03T10:54:00 "
        r"Asia/Kolkata and 2024-01-03T10:57:00",
    ):
        bars_at(ts, allow_gaps=False)


def test_daily_weekends_and_holidays_are_market_closed() -> None:
    days = [datetime(2024, 1, d) for d in range(1, 20) if datetime(2024, 1, d).weekday() < 5]
    midnight = [int(d.replace(tzinfo=IST).timestamp()) * 1000 for d in days]
    bars = bars_at(midnight)
    assert bars.interval_ms == DAY_MS and bars.gaps == () and bars.closed_gaps == 2
    without_wed = [t for d, t in zip(days, midnight, strict=True) if d.day != 10]
    assert [g.row for g in bars_at(without_wed).gaps] == [8]  # the Thursday
    with pytest.raises(DataError, match="row 8: gap"):
        bars_at(without_wed, allow_gaps=False)
    # With a calendar that knows 2024-01-10 was a holiday, the step is market-closed.
    nse = build_calendars({"NSE_CM": MarketConfig(holidays=["2024-01-10"])})["NSE_CM"]
    strict = bars_at(without_wed, allow_gaps=False, calendar=nse)
    assert strict.gaps == () and strict.closed_gaps == 3


def test_calendar_catches_bars_missing_at_the_close() -> None:
    ts = minute_day(datetime(2024, 1, 2), skip={374}) + minute_day(datetime(2024, 1, 3))
    assert bars_at(ts).gaps == ()  # without a calendar the night hides it
    bars = bars_at(ts, calendar="NSE_CM")
    assert [g.row for g in bars.gaps] == [375] and bars.closed_gaps == 0


def test_sample_file_is_clean_and_regenerates(tmp_path: Path) -> None:
    from tools.sim.candles import write_sample

    sample = SAMPLES / "sim_2885_5m.csv"
    assert sample.stat().st_size <= 200_000
    bars = load_bars(sample, allow_gaps=False, calendar="NSE_CM")
    assert bars.interval_ms == 5 * MIN and bars.tz == "+05:30" and len(bars) == 30 * 75
    assert write_sample(tmp_path / "again.csv") == len(bars)
    assert (tmp_path / "again.csv").read_bytes() == sample.read_bytes()


# ---- small pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("ONE_MINUTE", MIN),
        ("five_minute", 5 * MIN),
        ("1m", MIN),
        ("5min", 5 * MIN),
        ("15T", 15 * MIN),
        ("1h", 60 * MIN),
        ("60m", 60 * MIN),
        ("1d", DAY_MS),
        ("D", DAY_MS),
        ("300s", 5 * MIN),
        ("1w", 7 * DAY_MS),
        (90_000, 90_000),
    ],
)
def test_parse_interval(text: str | int, ms: int) -> None:
    assert parse_interval(text) == ms


@pytest.mark.parametrize("bad", ["0m", "5 fortnights", "", -5, 0])
def test_parse_interval_refuses(bad: str | int) -> None:
    with pytest.raises(DataError, match="interval"):
        parse_interval(bad)


def test_unknown_zone_and_file_type(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["2024-01-02 09:15", 1, 1, 1, 1, 1]])
    with pytest.raises(DataError, match="unknown timezone 'Mars/Olympus'"):
        load_bars(path, tz="Mars/Olympus")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unknown file type"):
        load_bars(tmp_path / "x.json")
    with pytest.raises(DataError, match="no such file"):
        load_bars(tmp_path / "nope.csv")


def test_code_version_names_the_package() -> None:
    version = code_version()
    assert version.startswith(importlib.metadata.version("chimera"))


def test_parquet_metadata_names_symbol_and_interval(tmp_path: Path) -> None:
    one = bars_at(minute_day(datetime(2024, 1, 2))[:1], interval_ms="5m")
    loaded = load_bars(write_bars(one, tmp_path / "one.parquet"))  # one bar: nothing to infer
    assert (loaded.symbol, loaded.interval_ms, loaded.tz) == ("X", 5 * MIN, "Asia/Kolkata")
    with pytest.raises(DataError, match="too few to infer the interval"):
        load_bars(write_bars(one, tmp_path / "one.csv"))


def test_bars_arrays_are_read_only() -> None:
    bars = bars_at(minute_day(datetime(2024, 1, 2))[:3])
    with pytest.raises(ValueError, match="read-only"):
        bars.close[0] = 1.0


# ---- ticks -------------------------------------------------------------------------------


def test_tick_file_and_session_give_the_same_frames_and_hash(tmp_path: Path) -> None:
    sample = SAMPLES / "sim_seed7.chtick"
    frames = [(frame, recv_ns) for recv_ns, frame in TickFileReader(sample)][:500]
    with TickFileWriter(tmp_path / "part.chtick") as w:
        for frame, recv_ns in frames:
            w.write(recv_ns, frame)
    from_file = load_ticks(tmp_path / "part.chtick")
    assert from_file.kind == "tickfile" and from_file.frames == 500
    assert list(from_file) == frames

    session = tmp_path / "session"
    writer = SegmentWriter(session, max_segment_bytes=20_000)  # several segments
    health = msgspec.msgpack.encode([1, 2, 3])
    for seq, (frame, recv_ns) in enumerate(frames):
        topic = TOPIC_RAW if seq % 7 == 0 else TOPIC_TICK + b"2885"
        writer.write(encode_message(topic, seq, TickRecord(recv_ns, frame, None)))
        if seq % 50 == 0:
            writer.write(encode_message(TOPIC_HEALTH, seq, health))  # not a frame
    writer.write(TOPIC_TICK + b"1\x00" + b"\x00" * 8 + b"\xc1not msgpack")
    writer.close()
    from_session = load_ticks(session)
    assert from_session.kind == "blackbox" and from_session.frames == 500
    assert from_session.skipped == 1
    assert list(from_session) == frames
    assert from_session.sha256 == from_file.sha256
    assert load_ticks(sample).sha256 != from_file.sha256


def test_load_ticks_refuses_what_is_not_ticks(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a black-box session"):
        load_ticks(tmp_path / "empty")
    (tmp_path / "junk.chtick").write_bytes(b"hello")
    with pytest.raises(DataError, match="not a Chimera tick file"):
        load_ticks(tmp_path / "junk.chtick")
