"""A paper session across two segments (issue 12): `chimera live` resolves its instruments
by name through the simulator's instrument master, subscribes NSE cash and NSE F&O on one
connection, trades the future in whole lots on its tick grid and charges it as a future."""

from __future__ import annotations

import signal

import orjson
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import Side
from chimera_execution.charges import ChargeCalculator
from chimera_execution.journal import Journal
from tests.loopback import chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(240)
FUT = "35006"  # NFO:NIFTY26DEC24FUT in tools/sim/master.py: lot 75, tick 0.10
CASH = "2885"  # NSE:RELIANCE-EQ: lot 1, tick 0.10


def _events(stderr: bytes) -> list[dict]:
    return [orjson.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


def test_cash_and_futures_in_one_session_trade_lots_on_their_ticks(tmp_path):
    ws, rest = free_port(), free_port()
    sim = chimera(
        "sim", "--port", str(ws), "--rest-port", str(rest), "--rate", "3000", "--seed", "3",
        "--tokens", f"NSE_FO:{FUT},{CASH}", cwd=tmp_path,
    )  # fmt: skip
    text = (
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{ws}/smart-stream"\nmode = "SNAP_QUOTE"\ntokens = []\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\nexit_energy_ratio = 0.0\n"
        "[governance]\nenabled = false\n"
        '[logging]\ndecisions = "transitions"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\nwait_for_subscriber_s = 0.0\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[instruments]\nmaster_url = "http://127.0.0.1:{rest}/OpenAPI_File/files/'
        'OpenAPIScripMaster.json"\nnames = ["NFO:NIFTY26DEC24FUT", "NSE:RELIANCE-EQ"]\n'
    )
    (tmp_path / "chimera.toml").write_text(text)
    try:
        wait_port(ws)
        wait_port(rest)
        live = chimera("live", "--config", "chimera.toml", cwd=tmp_path)
        journal_path = tmp_path / "data" / "paper" / "chimera.db"
        import time

        deadline = time.monotonic() + 150
        fills = []
        while time.monotonic() < deadline:
            assert live.poll() is None, live.output()[1].decode()[-3000:]
            if journal_path.exists():
                with Journal.open_readonly(tmp_path / "data", "paper") as j:
                    fills = j.fills()
                if {f.token for f in fills} >= {FUT, CASH}:
                    break
            time.sleep(1.0)
        live.send_signal(signal.SIGTERM)
        _, err = live.communicate(timeout=60)
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(timeout=20)
    assert live.returncode == 0, err.decode()[-3000:]
    events = _events(err)
    started = next(e for e in events if e["event"] == "engine_started")
    assert started["tokens"] == [f"NSE_FO:{FUT}", f"NSE_CM:{CASH}"]
    assert {f.token for f in fills} >= {FUT, CASH}, "both segments should trade"
    fut = [f for f in fills if f.token == FUT]
    cash = [f for f in fills if f.token == CASH]
    with Journal.open_readonly(tmp_path / "data", "paper") as j:
        orders = {o.client_order_id: o for o in j.orders()}
    # Whole lots of 75 on the future; the cash leg in single shares.
    for f in fut:
        assert orders[f.client_order_id].qty % 75 == 0, orders[f.client_order_id]
    assert all(o.exchange_type == 2 for o in orders.values() if o.token == FUT)
    assert all(o.exchange_type == 1 for o in orders.values() if o.token == CASH)
    # Charged as a future (no stamp duty on the sell, futures STT) vs cash intraday.
    cfg = parse_config(text)
    calc = ChargeCalculator(equity=cfg.execution.charges, markets=cfg.markets, kinds={FUT: "FUT"})
    firsts = [f for f in fut if f.fill_id.endswith("-1")]  # an order's first fill
    assert firsts
    for f in firsts:
        want = calc.charges(
            f.side, f.qty, f.price, market="NSE_FO", product="INTRADAY", ts_ms=f.exchange_ts_ms,
            kind="FUT",
        )  # fmt: skip
        as_cash = calc.charges(
            f.side, f.qty, f.price, market="NSE_CM", product="INTRADAY", ts_ms=f.exchange_ts_ms
        )
        assert f.charges == pytest.approx(want.total, abs=0.011)
        assert want.total != pytest.approx(as_cash.total, abs=0.011)
    assert any(f.side is Side.BUY for f in fut + cash)
