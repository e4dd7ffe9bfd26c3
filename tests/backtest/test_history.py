"""Angel One history fetch end to end against a real ``chimera sim`` on 127.0.0.1.

The simulator's candle desk (tools/sim/candles.py) enforces Angel One's per-interval range
and rate limits and logs every request it receives; chunking, pacing, retries, resume and
the cache are judged from that log, never from our own counters or the wall clock. Expected
candles come from the simulator's CandleBook directly; cross-interval consistency is
checked with numpy aggregation of the one-minute series.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import AngelOneConfig
from chimera_execution.brokers.angelone import new_smartconnect
from chimera_execution.smart_execution import Throttler
from tests.loopback import REPO, start_order_sim
from tools.backtest.data import Bars
from tools.backtest.history import (
    INTERVALS,
    AngelOneCandles,
    HistoryError,
    HistoryFetcher,
    HistoryIncomplete,
    HistoryNotCached,
    fetch_history,
    history_dir,
    load_cached,
    plan_chunks,
)
from tools.sim import candles as simc
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(120)

ENV = {
    "CHIMERA_API_KEY": "sim-api-key",
    "CHIMERA_CLIENT_CODE": DEFAULT_CLIENT_CODE,
    "CHIMERA_PASSWORD": DEFAULT_PASSWORD,
    "CHIMERA_TOTP_SECRET": DEFAULT_TOTP_SECRET,
}
FMT = simc.DATE_FORMAT


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    server = await start_order_sim()
    yield server
    await server.stop()


async def login(sim: ExchangeSimulator, tmp: Path) -> AngelOneCandles:
    return await AngelOneCandles.login(AngelOneConfig(rest_url=sim.rest_url), ENV, tmp)


def desk(sim: ExchangeSimulator) -> simc.CandleDesk:
    assert sim.orders is not None
    return sim.orders.candles


def expected(sim: ExchangeSimulator, token: str, interval: str, first: str, last: str) -> dict:
    """What the simulator's market holds for those IST days, straight from its book."""
    book = desk(sim).book
    assert book is not None
    bars = book.bars(
        1,
        token,
        interval,
        datetime.strptime(f"{first} 00:00", FMT),
        datetime.strptime(f"{last} 23:59", FMT),
    )
    return {
        "ts": bars.ts_ms,
        **{f: getattr(bars, f) / 100.0 for f in ("open", "high", "low", "close")},
        "volume": bars.volume.astype(float),
    }


def assert_bars(bars: Bars, want: dict) -> None:
    np.testing.assert_array_equal(bars.ts_ms, want["ts"])
    for f in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(bars, f), want[f])


def most_in_a_second(calls: list[simc.CandleCall]) -> int:
    """The most requests the simulator received in any sliding 1 s window."""
    at = sorted(c.at for c in calls)
    return max((sum(1 for b in at[i:] if b - a < 1.0) for i, a in enumerate(at)), default=0)


def windows(calls: list[simc.CandleCall]) -> list[tuple[datetime, datetime]]:
    return [(datetime.strptime(c.fromdate, FMT), datetime.strptime(c.todate, FMT)) for c in calls]


# ---- the plan, as a property ------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    interval=st.sampled_from(list(INTERVALS)),
    first=st.dates(date(1995, 1, 1), date(2035, 1, 1)),
    days=st.integers(0, 5000),
)
def test_chunks_tile_the_range_within_the_limit(interval: str, first: date, days: int) -> None:
    last = first + timedelta(days=days)
    chunks = plan_chunks(interval, first, last)
    limit = simc.INTERVALS[interval][1]  # the simulator's table, written separately
    assert chunks[0].first <= first and chunks[-1].last >= last
    for a, b in itertools.pairwise(chunks):
        assert b.first == a.last + timedelta(days=1)  # contiguous, no overlap
    for c in chunks:
        start, end = (
            datetime.strptime(c.params("NSE", "1", interval)[k], FMT)
            for k in ("fromdate", "todate")
        )
        assert timedelta(0) < end - start <= timedelta(days=limit)
    span = days + 1
    assert math.ceil(span / limit) <= len(chunks) <= math.ceil(span / limit) + 1


# ---- the simulator's route ---------------------------------------------------------------


async def test_sim_route_enforces_range_and_is_deterministic(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    api = new_smartconnect("k", sim.rest_url, 5.0, tmp_path)
    import pyotp

    session = await asyncio.to_thread(
        api.generateSession,
        DEFAULT_CLIENT_CODE,
        DEFAULT_PASSWORD,
        pyotp.TOTP(DEFAULT_TOTP_SECRET).now(),
    )
    assert session["status"] is True

    async def ask(**over: str) -> dict[str, Any]:
        params = {
            "exchange": "NSE",
            "symboltoken": "3045",
            "interval": "ONE_MINUTE",
            "fromdate": "2024-01-01 09:15",
            "todate": "2024-01-31 09:15",
            **over,
        }
        await asyncio.sleep(0.4)  # under 3/s: this test is not about the rate
        return await asyncio.to_thread(api.getCandleData, params)

    ok = await ask()  # exactly 30 days: allowed
    assert ok["status"] is True and ok["errorcode"] == ""
    first = ok["data"][0]
    assert first[0] == "2024-01-01T09:15:00+05:30" and len(first) == 6
    assert all(isinstance(x, float) for x in first[1:5]) and isinstance(first[5], int)
    assert ok["data"][-1][0] == "2024-01-31T09:15:00+05:30"
    assert (await ask())["data"] == ok["data"]  # the same request, the same answer
    for bad in (
        {"todate": "2024-01-31 09:16"},  # 30 days and a minute
        {"fromdate": "2024-02-01 09:15"},  # from after to
        {"interval": "TWO_MINUTE"},
        {"fromdate": "2024-01-01"},
    ):
        refused = await ask(**bad)
        assert (refused["status"], refused["errorcode"]) == (False, "AB1004"), bad
    unknown = await ask(symboltoken="999999")
    assert unknown["errorcode"] == "AB1009"
    daily = await ask(interval="ONE_DAY", fromdate="2024-01-05 10:00", todate="2024-01-08 10:00")
    assert [r[0] for r in daily["data"]] == [
        "2024-01-05T00:00:00+05:30",
        "2024-01-08T00:00:00+05:30",
    ]
    # Another simulator with the same seed serves the same candles; another seed does not.
    assert (
        desk(sim).book.response_rows(
            1, "3045", "ONE_DAY", datetime(2024, 1, 5), datetime(2024, 1, 8)
        )
        == daily["data"]
    )
    other = simc.CandleBook(seed=8).response_rows(
        1, "3045", "ONE_DAY", datetime(2024, 1, 5), datetime(2024, 1, 8)
    )
    assert other != daily["data"]


# ---- chunking, pacing, consistency --------------------------------------------------------


async def test_each_interval_is_fetched_in_its_chunks_at_the_allowed_rate(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    source = await login(sim, tmp_path)
    fetcher = HistoryFetcher(source, tmp_path)
    first, last = "2024-01-01", "2024-04-30"
    span = (date(2024, 4, 30) - date(2024, 1, 1)).days + 1
    got: dict[str, Bars] = {}
    for interval, (_, limit) in simc.INTERVALS.items():
        before = len(desk(sim).calls)
        got[interval] = await fetcher.fetch("NSE", "3045", interval, first, last)
        calls = desk(sim).calls[before:]
        assert {c.interval for c in calls} == {interval}
        assert [c.outcome for c in calls] == ["ok"] * len(calls)
        assert len(calls) == fetcher.stats.requests == fetcher.stats.fetched
        assert math.ceil(span / limit) <= len(calls) <= math.ceil(span / limit) + 1, interval
        spans = windows(calls)
        assert spans[0][0] <= datetime(2024, 1, 1) and spans[-1][1] >= datetime(2024, 4, 30, 15, 30)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start - end == timedelta(minutes=1)  # contiguous, nothing asked twice
        assert_bars(got[interval], expected(sim, "3045", interval, first, last))
        minutes = simc.INTERVALS[interval][0]
        assert got[interval].interval_ms == (minutes * 60_000 if minutes else 86_400_000)
    calls = desk(sim).calls
    assert most_in_a_second(calls) <= 3  # Angel One: 3 getCandleData per second
    assert not [c for c in calls if c.outcome == "rate_limited"]
    # The intervals agree with each other: 5-minute bars are the 1-minute bars aggregated.
    one, five = got["ONE_MINUTE"], got["FIVE_MINUTE"]
    starts = np.flatnonzero(np.isin(one.ts_ms, five.ts_ms))
    np.testing.assert_array_equal(one.ts_ms[starts], five.ts_ms)
    np.testing.assert_array_equal(one.open[starts], five.open)
    np.testing.assert_array_equal(np.maximum.reduceat(one.high, starts), five.high)
    np.testing.assert_array_equal(np.minimum.reduceat(one.low, starts), five.low)
    np.testing.assert_array_equal(np.add.reduceat(one.volume, starts), five.volume)
    ends = np.append(starts[1:], len(one.ts_ms)) - 1
    np.testing.assert_array_equal(one.close[ends], five.close)
    day = got["ONE_DAY"]
    assert day.high.max() == one.high.max() and day.low.min() == one.low.min()
    assert day.volume.sum() == one.volume.sum()


async def test_rate_limit_refusals_are_waited_out(sim: ExchangeSimulator, tmp_path: Path) -> None:
    source = await login(sim, tmp_path)
    # Too fast on purpose: the simulator refuses, the fetcher backs off and gets everything.
    reckless = Throttler(per_second=50, per_minute=500, per_hour=5000, guard_s=0.0)
    fetcher = HistoryFetcher(source, tmp_path, throttle=reckless, backoff_s=0.3, seed=1)
    bars = await fetcher.fetch("NSE", "1594", "ONE_MINUTE", "2024-01-01", "2024-05-31")
    calls = desk(sim).calls
    refused = [c for c in calls if c.outcome == "rate_limited"]
    ok = [c for c in calls if c.outcome == "ok"]
    assert refused and fetcher.stats.rate_limited == len(refused)
    assert (
        len(ok)
        == fetcher.stats.fetched
        == len(plan_chunks("ONE_MINUTE", date(2024, 1, 1), date(2024, 5, 31)))
    )
    assert len({(c.fromdate, c.todate) for c in ok}) == len(ok)  # no chunk fetched twice
    assert_bars(bars, expected(sim, "1594", "ONE_MINUTE", "2024-01-01", "2024-05-31"))


async def test_transient_errors_are_retried_refusals_are_not(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    source = await login(sim, tmp_path)
    fetcher = HistoryFetcher(source, tmp_path, backoff_s=0.05, seed=2)
    desk(sim).inject_errors(2)  # AB1004 "Something Went Wrong, Please Try After Sometime"
    bars = await fetcher.fetch("NSE", "2885", "FIFTEEN_MINUTE", "2024-01-01", "2024-03-31")
    assert [c.outcome for c in desk(sim).calls][:3] == ["AB1004", "AB1004", "ok"]
    assert fetcher.stats.retries == 2
    assert_bars(bars, expected(sim, "2885", "FIFTEEN_MINUTE", "2024-01-01", "2024-03-31"))

    before = len(desk(sim).calls)
    with pytest.raises(HistoryError, match=r"NSE:424242 ONE_DAY chunk .*AB1009"):
        await fetcher.fetch("NSE", "424242", "ONE_DAY", "2024-01-01", "2024-03-31")
    assert len(desk(sim).calls) == before + 1  # refused: no retry

    desk(sim).inject_errors(10)
    fetcher.retries = 3
    with pytest.raises(HistoryError, match=r"failed 3 times.*AB1004.*run again later"):
        await fetcher.fetch("NSE", "2885", "ONE_DAY", "2024-01-01", "2024-03-31")


# ---- resume and cache ---------------------------------------------------------------------


async def test_stopped_fetch_resumes_without_fetching_a_chunk_twice(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    source = await login(sim, tmp_path)
    args = ("NSE", "3045", "ONE_MINUTE", "2024-01-01", "2024-06-30")
    total = len(plan_chunks("ONE_MINUTE", date(2024, 1, 1), date(2024, 6, 30)))
    fetcher = HistoryFetcher(source, tmp_path / "resumed")
    with pytest.raises(HistoryIncomplete) as stop:
        await fetcher.fetch(*args, max_requests=3)
    assert (stop.value.done, stop.value.total) == (3, total)
    with pytest.raises(HistoryNotCached) as missing:
        load_cached(tmp_path / "resumed", *args)
    assert len(missing.value.missing) == total - 3
    resumed = await fetcher.fetch(*args)
    assert (fetcher.stats.cached, fetcher.stats.fetched) == (3, total - 3)
    asked = Counter((c.fromdate, c.todate) for c in desk(sim).calls)
    assert len(asked) == total and set(asked.values()) == {1}

    once = await HistoryFetcher(source, tmp_path / "one-shot").fetch(*args)
    assert resumed.sha256 == once.sha256
    assert_bars(resumed, expected(sim, "3045", "ONE_MINUTE", "2024-01-01", "2024-06-30"))


async def test_killed_fetch_resumes_where_it_stopped(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    argv = [
        "fetch",
        "--token",
        "2885",
        "--interval",
        "ONE_MINUTE",
        "--from",
        "2024-01-01",
        "--to",
        "2024-08-31",
        "--data-dir",
        str(data),
        "--rest-url",
        sim.rest_url,
        "--env-file",
        str(tmp_path / "none.env"),
    ]
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.backtest.history_cli",
        *argv,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60):
            while sum(c.outcome == "ok" for c in desk(sim).calls) < 3:
                await asyncio.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    root = history_dir(data, "NSE", "2885", "ONE_MINUTE")
    kept = set(json.loads((root / "manifest.json").read_text())["chunks"])
    assert len(kept) >= 2  # the manifest survived the kill and names what is on disk
    killed_run = len(desk(sim).calls)

    source = await login(sim, tmp_path)
    fetcher = HistoryFetcher(source, data)
    bars = await fetcher.fetch("NSE", "2885", "ONE_MINUTE", "2024-01-01", "2024-08-31")
    total = len(plan_chunks("ONE_MINUTE", date(2024, 1, 1), date(2024, 8, 31)))
    again = {f"{c.fromdate[:10]}_{c.todate[:10]}" for c in desk(sim).calls[killed_run:]}
    assert not again & kept  # nothing the killed run had cached is fetched again
    assert fetcher.stats.cached == len(kept) and fetcher.stats.fetched == total - len(kept)
    asked = Counter((c.fromdate, c.todate) for c in desk(sim).calls if c.outcome == "ok")
    assert len(asked) == total and sum(asked.values()) - total <= 1  # at most the one in flight
    once = await HistoryFetcher(source, tmp_path / "one-shot").fetch(
        "NSE", "2885", "ONE_MINUTE", "2024-01-01", "2024-08-31"
    )
    assert bars.sha256 == once.sha256

    ls = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.backtest.history_cli",
        "ls",
        "--data-dir",
        str(data),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await ls.communicate()
    assert f"NSE:2885 ONE_MINUTE: {total} chunk(s)" in out.decode()


async def test_cache_hits_make_no_requests(sim: ExchangeSimulator, tmp_path: Path) -> None:
    source = await login(sim, tmp_path)
    fetcher = HistoryFetcher(source, tmp_path)
    full = await fetcher.fetch("NSE", "1594", "FIVE_MINUTE", "2024-01-01", "2024-12-31")
    sent = len(desk(sim).calls)
    again = await fetcher.fetch("NSE", "1594", "FIVE_MINUTE", "2024-01-01", "2024-12-31")
    part = await fetcher.fetch("NSE", "1594", "FIVE_MINUTE", "2024-03-01", "2024-03-31")
    assert len(desk(sim).calls) == sent and fetcher.stats.requests == 0
    assert again.sha256 == full.sha256
    assert_bars(part, expected(sim, "1594", "FIVE_MINUTE", "2024-03-01", "2024-03-31"))
    offline = load_cached(tmp_path, "NSE", "1594", "FIVE_MINUTE", "2024-01-01", "2024-12-31")
    assert offline.sha256 == full.sha256

    # A damaged chunk file is not trusted: that chunk, and only it, is fetched again.
    root = history_dir(tmp_path, "NSE", "1594", "FIVE_MINUTE")
    victim = sorted(root.glob("*.parquet"))[1]
    victim.write_bytes(b"not parquet")
    repaired = await fetcher.fetch("NSE", "1594", "FIVE_MINUTE", "2024-01-01", "2024-12-31")
    assert [f"{c.fromdate[:10]}_{c.todate[:10]}.parquet" for c in desk(sim).calls[sent:]] == [
        victim.name
    ]
    assert repaired.sha256 == full.sha256


async def test_a_chunk_still_forming_is_fetched_again(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    source = await login(sim, tmp_path)
    # "Today" is 2024-03-15 (IST): the chunk holding it is not final yet.
    now = int(datetime(2024, 3, 15, 12, 0).timestamp() * 1000)
    fetcher = HistoryFetcher(source, tmp_path, now_ms=lambda: now)
    await fetcher.fetch("NSE", "3045", "ONE_MINUTE", "2024-01-01", "2024-03-15")
    sent = len(desk(sim).calls)
    args = (tmp_path, "NSE", "3045", "ONE_MINUTE", "2024-01-01", "2024-03-15")
    assert len(load_cached(*args)) > 0  # offline, what is there
    with pytest.raises(HistoryNotCached) as forming:
        load_cached(*args, complete_only=True)
    await fetcher.fetch("NSE", "3045", "ONE_MINUTE", "2024-01-01", "2024-03-15")
    (call,) = desk(sim).calls[sent:]
    chunk = next(
        c
        for c in plan_chunks("ONE_MINUTE", date(2024, 1, 1), date(2024, 3, 15))
        if c.first <= date(2024, 3, 15) <= c.last
    )
    assert call.fromdate.startswith(chunk.first.isoformat())
    assert forming.value.missing == [chunk.name]
    assert (
        fetcher.stats.cached
        == len(plan_chunks("ONE_MINUTE", date(2024, 1, 1), date(2024, 3, 15))) - 1
    )


async def test_missing_credentials_name_the_variables(tmp_path: Path) -> None:
    from chimera_core.errors import ConfigError

    with pytest.raises(ConfigError, match="CHIMERA_PASSWORD, CHIMERA_TOTP_SECRET"):
        await AngelOneCandles.login(
            AngelOneConfig(rest_url="http://127.0.0.1:9"),
            {"CHIMERA_API_KEY": "k", "CHIMERA_CLIENT_CODE": "c"},
            tmp_path,
        )


async def test_fetch_history_logs_in_only_when_something_is_missing(
    sim: ExchangeSimulator, tmp_path: Path
) -> None:
    args = ("NSE", "2885", "ONE_HOUR", "2024-01-01", "2024-02-29")
    first = await fetch_history(
        *args, data_dir=tmp_path, cfg=AngelOneConfig(rest_url=sim.rest_url), env=ENV
    )
    assert_bars(first, expected(sim, "2885", "ONE_HOUR", "2024-01-01", "2024-02-29"))
    # Nothing listens on port 9: a login attempt would fail.
    dead = AngelOneConfig(rest_url="http://127.0.0.1:9", request_timeout_s=1.0)
    again = await fetch_history(*args, data_dir=tmp_path, cfg=dead, env=ENV)
    assert again.sha256 == first.sha256
    from chimera_core.errors import BrokerError

    with pytest.raises(BrokerError, match="login failed"):  # missing days: it has to log in
        await fetch_history(
            "NSE",
            "2885",
            "ONE_HOUR",
            "2023-01-01",
            "2023-01-31",
            data_dir=tmp_path,
            cfg=dead,
            env=ENV,
        )
