"""The whole order path against the simulator's SmartAPI order side, as real processes:
`chimera sim` (market data + REST order routes + order-update socket, with RMS rejects
and dropped order updates) and `chimera live` with `execution.broker = "angelone"`,
which logs in with TOTP through smartapi-python's SmartConnect.

Afterwards the journal must agree with the simulated broker's trade book fill for fill,
a kill switch must leave nothing open there, and a restart must reconcile cleanly.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from chimera_core.config import AngelOneConfig
from chimera_execution.brokers.angelone import AngelOneBroker
from tests.loopback import REPO, ChimeraProcess, chimera, free_port, wait_port
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET

pytestmark = pytest.mark.timeout(240)

ENV = {
    "CHIMERA_API_KEY": "sim-api-key",
    "CHIMERA_CLIENT_CODE": DEFAULT_CLIENT_CODE,
    "CHIMERA_FEED_TOKEN": "sim-feed-token",
    "CHIMERA_JWT": "sim-jwt",
    "CHIMERA_PASSWORD": DEFAULT_PASSWORD,
    "CHIMERA_TOTP_SECRET": DEFAULT_TOTP_SECRET,
}
SYMBOLS = {"2885": "RELIANCE-EQ", "1594": "INFY-EQ", "3045": "SBIN-EQ"}
SYMBOLS_TOML = "{ " + ", ".join(f'"{t}" = "{s}"' for t, s in SYMBOLS.items()) + " }"


def _events(proc: ChimeraProcess) -> list[dict[str, object]]:
    out = []
    for line in proc.output()[1].decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass
    return out


def _wait_for(proc: ChimeraProcess, event: str, timeout: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in _events(proc) if e.get("event") == event]
        if found:
            return found[0]
        assert proc.poll() is None, proc.output()[1].decode()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no {event} within {timeout} s: {proc.output()[1].decode()[-2000:]}")


def _control(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )


async def _broker_books(rest_port: int, tmp_path: Path) -> tuple[list, list]:  # type: ignore[type-arg]
    """The simulated broker's own view, through a fresh adapter (its SmartConnect)."""
    cfg = AngelOneConfig(
        rest_url=f"http://127.0.0.1:{rest_port}",
        order_ws_url=f"ws://127.0.0.1:{rest_port}/smart-order-update",
        symbols=SYMBOLS,
    )
    broker = AngelOneBroker(
        cfg, ENV["CHIMERA_API_KEY"], DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD,
        DEFAULT_TOTP_SECRET, on_report=lambda r: None,
        # The installation's ordertag map: tags are hashes of our client_order_ids.
        state_dir=tmp_path / "data" / "paper" / "angelone",
    )  # fmt: skip
    await broker.connect()
    try:
        return await broker.order_book(), await broker.fills()
    finally:
        await broker.close()


async def test_live_engine_trades_through_smartconnect_against_the_simulator(tmp_path: Path):
    sim_port, rest_port = free_port(), free_port()
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\nstats_interval_s = 1.0\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
        '[execution]\nbroker = "angelone"\n'
        "[execution.angelone]\n"
        f'rest_url = "http://127.0.0.1:{rest_port}"\n'
        f'order_ws_url = "ws://127.0.0.1:{rest_port}/smart-order-update"\n'
        "poll_interval_s = 0.5\n"
        f"symbols = {SYMBOLS_TOML}\n"
    )
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV.items()))
    sim = chimera(
        "sim", "--port", str(sim_port), "--rest-port", str(rest_port), "--rate", "2000",
        "--seed", "4", "--order-reject-rate", "0.25", "--order-update-drop-rate", "0.3",
        cwd=tmp_path,
    )  # fmt: skip
    procs = [sim]
    try:
        wait_port(sim_port)
        wait_port(rest_port)
        live = chimera("live", cwd=tmp_path)
        procs.append(live)
        recon = _wait_for(live, "reconciled")
        assert recon["ok"] is True
        _wait_for(live, "feed_credentials_from_broker_login")  # the feed uses the login's
        # Enough orders that the simulator's RMS rejects show (entries are capped and never
        # pyramid now, so a session places fewer orders than it used to).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            fills = [e for e in _events(live) if e.get("event") == "order_placed"]
            if len(fills) >= 10:
                break
            time.sleep(0.5)
        assert len(fills) >= 6, live.output()[1].decode()[-3000:]
        time.sleep(2.0)
        kill = _control("kill", cwd=tmp_path)
        assert kill.returncode == 0, kill.stderr.decode()
        time.sleep(2.0)  # cancels answered; dropped updates recovered by the poll
        live.send_signal(signal.SIGTERM)
        assert live.wait(timeout=60) == 0, live.output()[1].decode()[-3000:]
        live_events = _events(live)
        # A restart reconciles against the broker's books: nothing unknown, nothing missing.
        again = chimera("live", cwd=tmp_path)
        procs.append(again)
        recon2 = _wait_for(again, "reconciled")
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 0, again.output()[1].decode()[-3000:]
        broker_orders, broker_fills = await _broker_books(rest_port, tmp_path)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert recon2["ok"] is True and recon2["fills_recovered"] == 0, recon2
    assert not recon2["cancelled"] and not recon2["never_sent"], recon2
    assert not [e for e in live_events if e.get("level") in ("error", "critical")]

    db = sqlite3.connect(tmp_path / "data" / "paper" / "chimera.db")
    ours = sorted(db.execute("SELECT fill_id, client_order_id, side, qty, price FROM fills"))
    theirs = sorted(
        (f.fill_id, f.client_order_id, f.side.value, f.qty, f.price) for f in broker_fills
    )
    assert ours and ours == [(a, b, c, d, pytest.approx(e)) for a, b, c, d, e in theirs]
    statuses = defaultdict(int)
    for (status,) in db.execute("SELECT status FROM orders"):
        statuses[status] += 1
    assert statuses["REJECTED"] > 0, f"the 25% RMS rejects should show: {dict(statuses)}"
    assert not statuses["PENDING"] and not statuses["OPEN"] and not statuses["PARTIAL"]
    # Every order the broker holds is journaled, under the same id, and none is still open.
    journaled = {c for (c,) in db.execute("SELECT client_order_id FROM orders")}
    assert {o.client_order_id for o in broker_orders} <= journaled
    assert all(o.status.value in ("FILLED", "CANCELLED", "REJECTED") for o in broker_orders)
    db.close()
