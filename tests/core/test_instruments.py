"""Instruments: master rows in Angel One's units, names as traders write them, download ->
cache -> resolve against the simulator's real REST server, tick rounding and lots."""

from __future__ import annotations

import asyncio
import math
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimera_core.config import parse_config
from chimera_core.contracts import Side
from chimera_core.errors import ConfigError
from chimera_core.instruments import (
    MASTER_URL,
    InstrumentMaster,
    InstrumentsConfig,
    load_master,
    qty_in_lots,
    round_to_tick,
)
from tools.sim.master import MASTER_PATH, SAMPLE_MASTER
from tools.sim.server import ExchangeSimulator

MASTER = InstrumentMaster(SAMPLE_MASTER, "sample")


def test_cash_option_future_currency_and_commodity_rows() -> None:
    rel = MASTER.resolve("NSE:RELIANCE-EQ")
    assert (rel.token, rel.segment, rel.exchange_type, rel.kind) == ("2885", "NSE_CM", 1, "EQ")
    assert (rel.lot_size, rel.tick_size, rel.price_divisor) == (1, 0.10, 100)
    ce = MASTER.resolve("nfo:nifty26dec2425000ce")  # case does not matter
    assert (ce.token, ce.segment, ce.exchange_type, ce.kind) == ("43650", "NSE_FO", 2, "OPT")
    assert (ce.strike, ce.option_type, ce.expiry) == (25000.0, "CE", "2024-12-26")
    assert (ce.lot_size, ce.tick_size, ce.underlying) == (75, 0.05, "NIFTY")
    fut = MASTER.resolve("NFO:NIFTY26DEC24FUT")
    assert (fut.kind, fut.strike, fut.tick_size) == ("FUT", None, 0.10)
    usd = MASTER.resolve("CDS:USDINR24DECFUT")
    assert (usd.segment, usd.exchange_type, usd.tick_size) == ("CDE_FO", 13, 0.0025)
    assert usd.price_divisor == 10_000_000
    assert MASTER.resolve("CDS:USDINR24DEC84.5CE").strike == 84.5  # CDS strike is x10^7
    crude = MASTER.resolve("MCX:CRUDEOIL19DEC24FUT")
    assert (crude.segment, crude.exchange_type, crude.lot_size, crude.tick_size) == (
        "MCX_FO", 5, 100, 1.0,
    )  # fmt: skip
    assert MASTER.by_exchange_token(2, "43650") == ce


def test_an_unknown_name_lists_the_closest() -> None:
    with pytest.raises(ConfigError) as err:
        MASTER.resolve("NFO:NIFTY26DEC2425100CE")
    assert "NFO:NIFTY26DEC2425000CE" in str(err.value) and "not in the instrument master" in str(
        err.value
    )
    with pytest.raises(ConfigError, match="EXCHANGE:SYMBOL"):
        MASTER.resolve("RELIANCE")


def test_junk_rows_are_skipped() -> None:
    rows = [
        {"token": "", "symbol": "X", "exch_seg": "NSE"},
        {"token": "1", "symbol": "Y", "exch_seg": "NYSE"},
        "not a row",
        {"token": "2", "symbol": "Z-EQ", "exch_seg": "NSE", "lotsize": "junk", "tick_size": "nan"},
    ]
    m = InstrumentMaster(rows)  # type: ignore[arg-type]
    assert len(m) == 1
    z = m.resolve("NSE:Z-EQ")
    assert (z.lot_size, z.tick_size) == (1, 0.0)


async def test_download_cache_and_resolve_against_the_simulator(tmp_path: Path) -> None:
    data = tmp_path / "data"
    day = date(2024, 12, 26)
    async with ExchangeSimulator(port=0, rate=0.0) as sim:
        cfg = InstrumentsConfig(master_url=f"{sim.rest_url}{MASTER_PATH}", download_timeout_s=5)
        # A blocking download (as at start-up), off the loop that serves the sim.
        master = await asyncio.to_thread(load_master, data, cfg, day)
        assert master.resolve("NFO:NIFTY26DEC2425000CE").token == "43650"
    cached = data / "instruments" / "2024-12-26.json"
    assert cached.is_file() and cached.stat().st_size > 0
    # The sim is gone: the same day loads from the cache,
    again = load_master(data, cfg, day)
    assert again.resolve("NSE:SBIN-EQ").token == "3045" and str(cached) == again.source
    # the next day falls back to the newest older copy (logged as stale),
    stale = load_master(data, cfg, date(2024, 12, 27))
    assert stale.source == str(cached)
    # and with no copy at all, a clear error.
    with pytest.raises(ConfigError, match="could not download"):
        load_master(tmp_path / "empty", cfg, day)


def test_config_keys() -> None:
    cfg = parse_config('[instruments]\nnames = ["NSE:RELIANCE-EQ"]\n')
    assert cfg.instruments.master_url == MASTER_URL and cfg.instruments.names == ["NSE:RELIANCE-EQ"]
    with pytest.raises(ConfigError, match="master_url"):
        parse_config('[instruments]\nmaster_url = "ftp://x/y"\n')
    with pytest.raises(ConfigError, match="EXCHANGE:SYMBOL"):
        parse_config('[instruments]\nnames = ["RELIANCE"]\n')


TICKS = st.sampled_from([0.05, 0.10, 1.0, 0.0025, 0.25, 5.0, 0.01])


@given(st.floats(0.01, 1e6, allow_nan=False), TICKS, st.sampled_from([Side.BUY, Side.SELL]),
       st.sampled_from(["limit", "stop"]))  # fmt: skip
def test_round_to_tick_is_on_the_grid_and_on_the_safe_side(
    price: float, tick: float, side: Side, kind: str
) -> None:
    got = round_to_tick(price, tick, side, kind)  # type: ignore[arg-type]
    n = got / tick
    assert abs(n - round(n)) < 1e-6  # on the grid
    assert abs(got - price) < tick * (1 + 1e-9)  # at most one tick away
    up = (side is Side.SELL) if kind == "limit" else (side is Side.BUY)
    slack = tick * 1e-6
    assert got >= price - slack if up else got <= price + slack
    assert round_to_tick(got, tick, side, kind) == got  # idempotent  # type: ignore[arg-type]


def test_round_to_tick_by_hand() -> None:
    assert round_to_tick(100.03, 0.05, Side.BUY) == 100.0  # limit buy: down
    assert round_to_tick(100.03, 0.05, Side.SELL) == 100.05  # limit sell: up
    assert round_to_tick(100.03, 0.05, Side.BUY, "stop") == 100.05  # buy stop: up
    assert round_to_tick(100.03, 0.05, Side.SELL, "stop") == 100.0  # sell stop: down
    assert round_to_tick(84.12345, 0.0025, Side.BUY) == 84.1225
    assert round_to_tick(0.1 + 0.2, 0.05, Side.BUY) == 0.3  # float noise is on the grid
    assert round_to_tick(101.0, 0.0, Side.BUY) == 101.0
    assert math.isnan(round_to_tick(float("nan"), 0.05, Side.BUY))


def test_qty_in_lots() -> None:
    assert qty_in_lots(150, 75) == 2 and qty_in_lots(149, 75) == 1 and qty_in_lots(74, 75) == 0
    assert qty_in_lots(5, 1) == 5 and qty_in_lots(5, 0) == 5 and qty_in_lots(-3, 75) == 0
