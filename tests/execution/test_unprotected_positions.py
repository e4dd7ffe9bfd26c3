"""Protective exits must not depend on a healthy feed (issue 11 §1): a position whose token
has gone dark is flagged ``position_unprotected`` and, per config, the engine goes
exits-only (lifted by itself when the feed is back) or the position is flattened."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import ExecKind, ExecutionReport, Fill, Purpose, Side
from chimera_core.control import ControlClient, read_token
from chimera_core.event_loop import Engine
from tests.loopback import chimera, free_port
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(180)
NS = 1_000_000_000


def _fill_report(token: str, qty: int) -> ExecutionReport:
    coid = f"CH-1-{token}-0-0"
    fill = Fill(f"{coid}-1", coid, token, Side.BUY, qty, 100.0, 0.0, 1_700_000_000_000)
    return ExecutionReport(
        kind=ExecKind.FILLED, client_order_id=coid, intent_id=coid, token=token,
        side=Side.BUY, order_qty=qty, filled_qty=qty, avg_price=100.0, purpose=Purpose.ENTRY,
        fill=fill, exchange_ts_ms=1_700_000_000_000, final=True,
    )  # fmt: skip


def test_only_tokens_holding_a_position_and_dark_long_enough_are_unprotected():
    engine = Engine(parse_config(""))
    engine.on_report(_fill_report("2885", 5))
    since = 10 * NS
    dark = 30 * NS
    # Never heard from since the start: counted from the start.
    assert engine.unprotected(since + dark, dark, since) == []
    assert engine.unprotected(since + dark + 1, dark, since) == ["2885"]
    engine.symbols["2885"].last_recv_ns = 50 * NS  # a frame accepted at 50 s
    assert engine.unprotected(50 * NS + dark, dark, since) == []
    assert engine.unprotected(50 * NS + dark + 1, dark, since) == ["2885"]
    engine.symbols["1594"].last_recv_ns = 0  # dark, but flat: nothing to protect
    assert "1594" not in engine.unprotected(10**6 * NS, dark, since)


def test_exits_only_blocks_entries_per_cause_and_lifts_per_cause():
    engine = Engine(parse_config(""))
    engine.control("reduce", "journal_write_failed: disk full")
    engine.control("reduce", "position_unprotected: 2885")
    engine.control("reduce_clear", "position_unprotected")  # the feed came back
    assert engine.exits_only == "journal_write_failed: disk full"  # the other cause holds
    assert engine.trading_step.entry_blocked(engine.symbols["2885"], 0) == "exits_only"
    ok, out = engine.control("resume")
    assert ok and out["exits_only_cleared"] and engine.exits_only == ""


def _events(stderr: bytes) -> list[dict]:
    out = []
    for line in stderr.decode().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # the SDK's or a thread's line interleaved with ours: not an event
    return out


@pytest.mark.parametrize("action", ["exits_only", "flatten"])
async def test_a_dark_feed_flags_an_open_position_end_to_end(tmp_path, action):
    port = free_port()
    sim = ExchangeSimulator(port=port, rate=2000.0, seed=3)
    await sim.start()
    control = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "chimera.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "{sim.url}"\nmode = "SNAP_QUOTE"\nreconnect_max_s = 0.5\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        "cooldown_s = 5.0\nexecute_timeout_s = 5.0\n"
        # Positions must stay open until the feed goes dark: no strategy exit, wide brackets.
        "exit_energy_ratio = 0.0\nexit_on_reversal = false\n"
        "[governance]\nenabled = false\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\nhealth_interval_s = 0.2\n'
        "wait_for_subscriber_s = 0.0\n"
        f'[control]\nendpoint = "{control}"\n'
        f'[execution]\nunprotected_after_s = 1.0\nunprotected_action = "{action}"\n'
        "stop_atr_multiple = 50.0\ntake_profit_atr_multiple = 50.0\n"
    )
    proc = chimera("live", "--config", str(cfg), cwd=tmp_path)
    loop = asyncio.get_running_loop()
    try:
        deadline = loop.time() + 60
        status: dict = {}
        token_dir = tmp_path / "data"
        while not (token_dir / "control.token").exists() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        with ControlClient(control, read_token({}, token_dir)) as client:
            while loop.time() < deadline:
                assert proc.poll() is None, proc.output()[1].decode()[-3000:]
                with_timeout = client.request("status")
                status = with_timeout.get("result", {})
                if status.get("positions"):
                    break
                await asyncio.sleep(0.2)
            assert status.get("positions"), "no position opened"
            await sim.stop()  # the feed goes dark with the position open
            deadline = loop.time() + 30
            while loop.time() < deadline:
                names = [e["event"] for e in _events(proc.output()[1])]
                if "position_unprotected" in names:
                    break
                await asyncio.sleep(0.2)
            events = _events(proc.output()[1])
            flagged = [e for e in events if e["event"] == "position_unprotected"]
            assert flagged and flagged[0]["token"] in status["positions"]
            assert flagged[0]["action"] == action
            now = client.request("status")["result"]
            if action == "exits_only":
                assert "position_unprotected" in now["exits_only"]
            else:
                assert any(
                    e["event"] == "flatten" and e["reason"].startswith("flatten_token:")
                    for e in _events(proc.output()[1])
                )
            sim = ExchangeSimulator(port=port, rate=2000.0, seed=4)
            await sim.start()  # the feed is back: the position is watched again
            deadline = loop.time() + 30
            while loop.time() < deadline:
                names = [e["event"] for e in _events(proc.output()[1])]
                if "positions_protected_again" in names or action == "flatten":
                    break
                await asyncio.sleep(0.2)
            if action == "exits_only":
                assert "positions_protected_again" in names
                assert client.request("status")["result"]["exits_only"] == ""
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=60)
        await sim.stop()
    assert proc.returncode == 0, err.decode()[-3000:]
