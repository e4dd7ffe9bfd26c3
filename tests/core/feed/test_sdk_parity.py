"""The independent check: Angel One's own SDK parses our simulator's frames like we do.

The real ``SmartWebSocketV2`` (smartapi-python 1.5.5) runs in a subprocess
(sdk_client.py) against two simulators: NSE_CM with one token per mode (LTP, QUOTE,
SNAP_QUOTE, DEPTH) and NSE_FO in SNAP_QUOTE, whose open interest moves. Every dict the
SDK hands to ``on_data`` must equal what our decoder reads from the same frame (the
simulator's record_sent file is the ground truth), translated to the SDK's shapes and
with its known quirks made explicit (shared/reference/smartapi-v2-protocol.md §6):

- prices are integer paise (our rupees × 100);
- the OI change % is a float64 on the wire that the SDK reads as int64: we reinterpret
  its integer's bits as a double before comparing;
- best-5 records are split by flag (1 = buy, 0 = sell), key ``"no of orders"``;
- DEPTH: the SDK drops offset 27 (the exchange time), reports the packet time at offset
  35 as both ``exchange_timestamp`` and ``packet_received_time``, and has no sequence
  or LTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from chimera_core.contracts import ExchangeType, Mode, Tick
from chimera_core.feed.smartapi_v2 import decode
from chimera_core.tickfile import TickFileReader
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(90)

SDK_CLIENT = Path(__file__).with_name("sdk_client.py")
PER_MODE = 12  # messages of each mode the SDK must see
CASH_BY_MODE = {Mode.LTP: "2885", Mode.QUOTE: "1594", Mode.SNAP_QUOTE: "3045", Mode.DEPTH: "11536"}
FUTURE = "35001"
MODE_NAMES = {1: "LTP", 2: "QUOTE", 3: "SNAP_QUOTE", 4: "DEPTH"}  # SDK SUBSCRIPTION_MODE_MAP


def _paise(rupees: float) -> int:
    return round(rupees * 100)


def _as_double(sdk_int: int) -> float:
    """Undo the SDK's int64 read of a float64 field."""
    return float(struct.unpack("<d", struct.pack("<q", sdk_int))[0])


def sdk_view(tick: Tick) -> dict[str, Any]:
    """What the SDK's parser should report for the frame our decoder read as ``tick``."""
    view: dict[str, Any] = {
        "subscription_mode": tick.mode,
        "exchange_type": tick.exchange_type,
        "token": tick.token,
    }
    if tick.mode == Mode.DEPTH:
        view["exchange_timestamp"] = tick.packet_received_ms  # offset 35, not 27
        view["packet_received_time"] = tick.packet_received_ms
        view["depth_20_buy_data"] = [
            {"quantity": lvl.qty, "price": _paise(lvl.price), "num_of_orders": lvl.orders}
            for lvl in tick.bids
        ]
        view["depth_20_sell_data"] = [
            {"quantity": lvl.qty, "price": _paise(lvl.price), "num_of_orders": lvl.orders}
            for lvl in tick.asks
        ]
        return view
    view |= {
        "sequence_number": tick.sequence,
        "exchange_timestamp": tick.exchange_ts_ms,
        "last_traded_price": _paise(tick.ltp),
        "subscription_mode_val": MODE_NAMES[tick.mode],
    }
    if tick.mode == Mode.LTP:
        return view
    view |= {
        "last_traded_quantity": tick.ltq,
        "average_traded_price": _paise(tick.avg_price),
        "volume_trade_for_the_day": tick.volume,
        "total_buy_quantity": tick.total_buy_qty,
        "total_sell_quantity": tick.total_sell_qty,
        "open_price_of_the_day": _paise(tick.open),
        "high_price_of_the_day": _paise(tick.high),
        "low_price_of_the_day": _paise(tick.low),
        "closed_price": _paise(tick.prev_close),
    }
    if tick.mode == Mode.QUOTE:
        return view
    view |= {
        "last_traded_timestamp": tick.last_traded_ts_s,
        "open_interest": tick.open_interest,
        "open_interest_change_percentage": tick.oi_change_pct,  # compared as a double
        "upper_circuit_limit": _paise(tick.upper_circuit),
        "lower_circuit_limit": _paise(tick.lower_circuit),
        "52_week_high_price": _paise(tick.week52_high),
        "52_week_low_price": _paise(tick.week52_low),
        "best_5_buy_data": [
            {"flag": 1, "quantity": lvl.qty, "price": _paise(lvl.price), "no of orders": lvl.orders}
            for lvl in tick.bids
        ],
        "best_5_sell_data": [
            {"flag": 0, "quantity": lvl.qty, "price": _paise(lvl.price), "no of orders": lvl.orders}
            for lvl in tick.asks
        ],
    }
    return view


def _sdk_env() -> dict[str, str]:
    env = dict(os.environ)
    # The SDK's import-time requests.get('https://api.ipify.org') must fail fast offline:
    # route it to a refused loopback port; our simulator stays reachable directly.
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        env[name] = "http://127.0.0.1:9"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


async def _run_sdk(config: dict[str, Any], cwd: Path) -> tuple[list[dict[str, Any]], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SDK_CLIENT), json.dumps(config),
        cwd=cwd, env=_sdk_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), config["timeout_s"] + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, f"SDK client failed ({proc.returncode}):\n{stderr[-3000:]}"
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()], stderr


def _compare(messages: list[dict[str, Any]], recorded: list[bytes]) -> None:
    """Pairwise, in order: one connection per simulator, so the orders are the same."""
    assert 0 < len(messages) <= len(recorded)
    for index, (message, frame) in enumerate(zip(messages, recorded, strict=False)):
        tick = decode(frame)
        expected = sdk_view(tick)
        got = dict(message)
        if tick.mode == Mode.SNAP_QUOTE:
            raw = got.pop("open_interest_change_percentage")
            assert isinstance(raw, int)  # the SDK bug: a float64 read as int64
            assert _as_double(raw) == expected.pop("open_interest_change_percentage")
        assert got == expected, f"message {index} differs for {tick.token} mode {tick.mode}"


async def test_real_sdk_parses_our_frames_like_our_decoder(tmp_path: Path) -> None:
    cash_record, fo_record = tmp_path / "cash.chtick", tmp_path / "fo.chtick"
    cash = ExchangeSimulator(
        port=0, rate=400.0, seed=17, tokens=tuple(CASH_BY_MODE.values()), record_sent=cash_record
    )
    futures = ExchangeSimulator(
        port=0, rate=100.0, seed=18, tokens=(FUTURE,), record_sent=fo_record,
        exchange_type=ExchangeType.NSE_FO,
    )  # fmt: skip
    sdk_cwd = tmp_path / "sdk_cwd"
    sdk_cwd.mkdir()
    config = {
        "timeout_s": 30,
        "connections": [
            {
                "url": cash.url,
                "subscriptions": [[int(m), 1, [t]] for m, t in CASH_BY_MODE.items()],
                "expect": {str(int(m)): PER_MODE for m in CASH_BY_MODE},
            },
            {
                "url": futures.url,
                "subscriptions": [[int(Mode.SNAP_QUOTE), int(ExchangeType.NSE_FO), [FUTURE]]],
                "expect": {str(int(Mode.SNAP_QUOTE)): PER_MODE},
            },
        ],
    }
    async with cash, futures:
        config["connections"][0]["url"] = cash.url  # ports are known once started
        config["connections"][1]["url"] = futures.url
        lines, stderr = await _run_sdk(config, sdk_cwd)
    assert (sdk_cwd / "logs").is_dir()  # the SDK's side effect landed in the scratch dir

    by_conn: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for line in lines:
        by_conn[line["conn"]].append(line["data"])
    cash_messages, fo_messages = by_conn[0], by_conn[1]

    # A comparison of zero messages proves nothing: every mode must really have arrived.
    cash_modes = [m["subscription_mode"] for m in cash_messages]
    for mode, token in CASH_BY_MODE.items():
        assert cash_modes.count(mode) >= PER_MODE, (mode, cash_modes, stderr[-2000:])
        assert all(m["token"] == token for m in cash_messages if m["subscription_mode"] == mode)
    assert len(fo_messages) >= PER_MODE

    cash_frames = [frame for _, frame in TickFileReader(cash_record)]
    fo_frames = [frame for _, frame in TickFileReader(fo_record)]
    _compare(cash_messages, cash_frames)
    _compare(fo_messages, fo_frames)

    # The quirks were really exercised, not vacuously equal.
    depth = [decode(f) for f in cash_frames[: len(cash_messages)] if f[0] == Mode.DEPTH]
    assert depth and all(t.exchange_ts_ms != t.packet_received_ms for t in depth)
    assert all(len(m["depth_20_buy_data"]) == 20 for m in cash_messages if "depth_20_buy_data" in m)
    oi_changes = [decode(f).oi_change_pct for f in fo_frames[: len(fo_messages)]]
    assert any(change != 0.0 for change in oi_changes)
    raw_oi = [m["open_interest_change_percentage"] for m in fo_messages]
    assert any(raw != 0 and abs(raw) > 1e9 for raw in raw_oi)  # bit patterns, not percents
