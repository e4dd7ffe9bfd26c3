"""Chaos: SIGKILL `chimera live` at random moments of a busy paper session, restart it, and
check afterwards that no order was sent twice, no fill was lost or invented, positions are
the sum of fills and the cash ledger balances.

The checks read the two SQLite ledgers with plain SQL (not through the Journal class): the
journal is the engine's side, the paper_* tables are the simulated broker's side.

CHIMERA_CHAOS_KILLS sets the number of kills (default 12 here; the note quotes a run of 100:
``CHIMERA_CHAOS_KILLS=100 pytest tests/execution/test_chaos.py``).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from tests.loopback import ChimeraProcess, chimera, free_port, wait_port

KILLS = int(os.environ.get("CHIMERA_CHAOS_KILLS", "12"))
pytestmark = pytest.mark.timeout(120 + KILLS * 12)


def _config(tmp_path: Path, sim_port: int) -> None:
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "reconnect_initial_s = 0.1\nreconnect_max_s = 0.5\n"
        # Short bars and cooldowns in exchange time (the simulator runs it ~600x faster
        # than the wall clock at this rate): several orders a second.
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.004\norder_qty = 120\n"
        "cooldown_s = 600\nexecute_timeout_s = 60\n"
        '[logging]\ndecisions = "none"\nstats_interval_s = 1.0\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        "wait_for_subscriber_s = 0.0\n"  # no recorder here: never wait for one
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        # Governance would stop a losing strategy (rolling Sharpe); the chaos is about
        # the order path, so let every intent through.
        "[governance]\nenabled = false\n"
        "[execution.paper]\nlatency_ms = 300\n"
    )


def _events(proc: ChimeraProcess) -> list[dict[str, object]]:
    _, err = proc.output()
    out = []
    for line in err.decode(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pass  # a line cut by the SIGKILL
    return out


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    sim_port = free_port()
    _config(tmp_path, sim_port)
    rng = random.Random(20261122)
    sim = chimera("sim", "--port", str(sim_port), "--rate", "3000", "--seed", "11", cwd=tmp_path)
    runs: list[ChimeraProcess] = []
    try:
        wait_port(sim_port)
        for _ in range(KILLS):
            live = chimera("live", cwd=tmp_path)
            runs.append(live)
            # Spread the kills over start-up, reconciliation and trading.
            time.sleep(rng.uniform(2.0, 6.0))
            live.send_signal(signal.SIGKILL)
            live.wait(timeout=10)
        # One last clean run: it reconciles what the kills left, trades, and stops cleanly
        # (SIGTERM: halt, cancel open orders, wait for the answers).
        final = chimera("live", cwd=tmp_path)
        runs.append(final)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            e.get("event") == "engine_reconciled" for e in _events(final)
        ):
            time.sleep(0.2)
        time.sleep(3.0)
        final.send_signal(signal.SIGTERM)
        final.wait(timeout=30)
    finally:
        for p in [sim, *runs]:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, run in enumerate(runs):  # kept with the test's tmp dir, for post-mortems
        (tmp_path / f"live-{i:03d}.log").write_bytes(run.output()[1])
    final_events = _events(final)
    assert final.returncode == 0, final.output()[1].decode()[-3000:]
    recon = [e for e in final_events if e.get("event") == "reconciled"]
    assert recon and recon[0]["ok"] is True, recon
    assert not [e for e in final_events if e.get("level") in ("error", "critical")]

    db = sqlite3.connect(tmp_path / "data" / "paper" / "chimera.db")
    # ---- no order sent twice ------------------------------------------------------------
    journal_orders = {r[0]: r for r in db.execute("SELECT client_order_id, status FROM orders")}
    broker_orders = [r[0] for r in db.execute("SELECT client_order_id FROM paper_orders")]
    assert len(broker_orders) == len(set(broker_orders)), "the broker got an id twice"
    assert set(broker_orders) <= set(journal_orders), "the broker has orders never journaled"
    # ---- no fill lost, none invented ----------------------------------------------------
    cols = "fill_id, client_order_id, token, side, qty, price, charges"
    ours = sorted(db.execute(f"SELECT {cols} FROM fills"))
    theirs = sorted(db.execute(f"SELECT {cols} FROM paper_fills"))
    assert ours == theirs, "journal fills and broker fills differ"
    assert len(ours) >= KILLS, f"not a busy session: {len(ours)} fills over {KILLS} runs"
    # ---- positions are the sum of fills -------------------------------------------------
    signed: dict[str, int] = defaultdict(int)
    for _, _, token, side, qty, _, _ in ours:
        signed[token] += qty if side == "BUY" else -qty
    journal_pos = {t: q for t, q in db.execute("SELECT token, qty FROM positions")}
    broker_pos = {t: q for t, q in db.execute("SELECT token, qty FROM paper_positions")}
    for token in set(signed) | set(journal_pos) | set(broker_pos):
        assert journal_pos.get(token, 0) == signed[token] == broker_pos.get(token, 0), token
    # ---- the cash ledger balances -------------------------------------------------------
    notional = sum((-q * p if s == "BUY" else q * p) for _, _, _, s, q, p, _ in ours)
    charges = sum(c for *_, c in ours)
    (ledger,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM cash_ledger").fetchone()
    (paper_ledger,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM paper_cash").fetchone()
    assert ledger == pytest.approx(notional - charges, abs=1e-6)
    assert paper_ledger == pytest.approx(notional - charges, abs=1e-6)
    # ---- nothing left working after the clean stop --------------------------------------
    open_orders = [c for c, s in journal_orders.items() if s in ("PENDING", "OPEN", "PARTIAL")]
    assert not open_orders, open_orders
    db.close()
    from chimera_execution.journal import Journal

    with Journal(tmp_path / "data", "paper") as journal:
        assert journal.check() == []
    kills_during_trading = sum(
        1 for r in runs[:-1] if any(e.get("event") == "order_placed" for e in _events(r))
    )
    print(
        f"chaos: {KILLS} kills ({kills_during_trading} after orders flowed), "
        f"{len(journal_orders)} orders, {len(ours)} fills, positions {dict(journal_pos)}"
    )
    assert kills_during_trading >= KILLS // 2, "most kills should land while trading"
