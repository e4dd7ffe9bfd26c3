"""`chimera mcp` over a real `chimera live` that trades the simulator: the book, governance
history, health, genome, backtest and study tools each match an independent read of the
files (raw SQL on the journal and the genome store, the black box decoded here, Optuna on
the study, result.json), and a halt from the assistant is recorded as the assistant's."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import optuna
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from chimera_core.config import load_config
from chimera_core.contracts import ControlEvent, Decision, Health
from chimera_core.control import ControlClient, read_token
from chimera_core.telemetry import TOPIC_CONTROL, TOPIC_HEALTH, TOPIC_TICK, read_session
from chimera_core.telemetry.reader import TickView
from tests.loopback import REPO, chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(300)
SAMPLE = REPO / "data" / "samples" / "sim_2885_5m.csv"


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def _sql(path: Path, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("mcp-book")
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    (tmp / "chimera.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        # Short bars so the paper broker trades within seconds.
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        "wait_for_subscriber_s = 20\n"
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
    )
    # Research results the read tools serve, made by the real commands.
    _run("backtest", "--data", str(SAMPLE), "--fast", "--quiet", cwd=tmp)
    _run(
        "optimize", "--data", str(SAMPLE), "--study", "s1", "--unit", "days", "--train", "10",
        "--test", "5", "--folds", "2", "--trials", "8", "--workers", "1", "--pbo-splits", "4",
        "--no-html", "--quiet", "--config", "chimera.toml", cwd=tmp,
    )  # fmt: skip
    procs = [chimera("sim", "--port", str(sim_port), "--rate", "2000", cwd=tmp)]
    try:
        wait_port(sim_port)
        procs.append(chimera("record", cwd=tmp))
        procs.append(chimera("live", cwd=tmp))
        journal = tmp / "data" / "paper" / "chimera.db"
        deadline = time.monotonic() + 120
        while not (journal.is_file() and _sql(journal, "SELECT COUNT(*) FROM fills")[0][0]):
            assert procs[2].poll() is None, procs[2].output()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the paper broker never filled an order"
            time.sleep(1.0)
        yield tmp
    finally:
        _stop(procs)


def _client(tmp: Path) -> Client:
    return Client(
        StdioServerParameters(
            command=sys.executable,
            args=["-m", "tools.cli", "mcp", "--config", str(tmp / "chimera.toml")],
            cwd=str(tmp),
            env={"PYTHONPATH": str(REPO)},
        )
    )


def _call(tmp: Path, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    async def run() -> list[Any]:
        out = []
        async with _client(tmp) as client:
            for name, args in calls:
                res = await client.call_tool(name, args)
                assert not res.is_error, (name, res)
                got = res.structured_content
                # A tool returning a list comes back wrapped as {"result": [...]}.
                wrapped = isinstance(got, dict) and set(got) == {"result"}
                out.append(got["result"] if wrapped else got)
        return out

    return anyio.run(run)


def _session(tmp: Path) -> Path:
    (path,) = [p for p in (tmp / "data" / "blackbox").iterdir() if p.is_dir()]
    return path


def test_a_halt_from_the_assistant_is_recorded_as_the_assistants(engine: Path) -> None:
    (reply,) = _call(engine, [("halt", {})])
    assert reply["ok"] is True
    cfg = load_config(engine / "chimera.toml")
    with ControlClient(cfg.control.endpoint, read_token({}, Path(cfg.data_dir)), 2.0) as c:
        assert c.request("status")["result"]["halted"] is True
    deadline = time.monotonic() + 20
    decode = msgspec.msgpack.Decoder(ControlEvent)
    while True:  # the recorder flushes in batches
        events = [decode.decode(m.payload) for m in read_session(_session(engine))
                  if m.topic == TOPIC_CONTROL]  # fmt: skip
        if any(e.command == "halt" for e in events):
            break
        assert time.monotonic() < deadline, "no halt in the black box"
        time.sleep(0.5)
    halts = [e for e in events if e.command == "halt"]
    assert [(e.arg, e.ok) for e in halts] == [("by assistant", True)]


def test_the_book_tools_match_the_journal(engine: Path) -> None:
    journal = engine / "data" / "paper" / "chimera.db"
    for _ in range(3):  # a report in flight when we read: read both again
        fills, positions, orders = _call(
            engine, [("fills", {"n": 100_000}), ("positions", {}), ("open_orders", {})]
        )
        raw_fills = _sql(journal, "SELECT fill_id, qty, price FROM fills ORDER BY rowid")
        raw_pos = _sql(
            journal,
            "SELECT token, qty FROM positions WHERE qty != 0 OR realized_pnl != 0 ORDER BY token",
        )
        raw_open = _sql(
            journal,
            "SELECT client_order_id FROM orders WHERE status NOT IN "
            "('FILLED', 'CANCELLED', 'REJECTED') ORDER BY rowid",
        )
        got = (
            [(f["fill_id"], f["qty"], f["price"]) for f in fills],
            [(p["token"], p["qty"]) for p in positions],
            [(o["client_order_id"],) for o in orders],
        )
        if got == (raw_fills, raw_pos, raw_open):
            break
        time.sleep(1.0)
    assert got == (raw_fills, raw_pos, raw_open)
    assert raw_fills, "the engine traded before the test"


def test_genome_health_and_governance_history_match_the_files(engine: Path) -> None:
    genome, health = _call(engine, [("genome_versions", {}), ("health", {})])
    raw = _sql(engine / "data" / "paper" / "genome.db",
               "SELECT family, version, status FROM genome_version")  # fmt: skip
    assert sorted((g["family"], g["version"], g["status"]) for g in genome) == sorted(raw)
    messages = list(read_session(_session(engine)))
    last_health = msgspec.msgpack.decode(
        [m for m in messages if m.topic == TOPIC_HEALTH][-1].payload, type=Health
    )
    assert health["source"] == "blackbox"
    assert health["health"]["at_ns"] <= last_health.at_ns + 10**10  # read a moment earlier
    assert set(health["health"]) == set(msgspec.to_builtins(last_health))

    ticks = msgspec.msgpack.Decoder(TickView)
    decisions: list[tuple[int, Decision]] = []
    for m in messages:
        if m.topic.startswith(TOPIC_TICK):
            rec = ticks.decode(m.payload)
            if rec.decision is not None:
                decisions.append((m.seq, rec.decision))
    token = decisions[-1][1].token
    (history,) = _call(engine, [("governance_history", {"token": token, "n": 100_000})])
    # Independently: a regime or leverage change, or a veto, on this token's decisions.
    want, last = [], (None, None)
    for seq, d in decisions:
        if d.token != token:
            continue
        now = (d.drift and d.drift.regime.value, d.capital and d.capital.target_leverage)
        vetoes = [] if d.meta_risk is None else [v.rule for v in d.meta_risk.vetoes]
        if now != last or vetoes:
            want.append((seq, now[0], now[1], vetoes))
            last = now
    got = [(h["seq"], h["regime"], h["target_leverage"], [v["rule"] for v in h["vetoes"]])
           for h in history]  # fmt: skip
    assert got[: len(want)] == want[: len(got)] and len(got) >= min(len(want), 1)
    assert any(h["regime"] is not None for h in history)


def test_backtest_and_study_tools_match_their_stored_results(engine: Path) -> None:
    backtests, studies, study = _call(
        engine, [("backtests", {}), ("studies", {}), ("study", {"name": "s1"})]
    )
    files = sorted((engine / "data" / "backtests").glob("*/result.json"))
    assert [b["name"] for b in backtests] == [f.parent.name for f in files]
    stored = json.loads(files[0].read_text())
    assert backtests[0]["metrics"]["sharpe"] == stored["metrics"]["sharpe"]
    assert backtests[0]["mode"] == stored["mode"] == "fast"
    parent = optuna.load_study(
        study_name="s1", storage=f"sqlite:///{engine / 'data' / 'research' / 's1.db'}"
    ).user_attrs["result"]
    assert [s["study"] for s in studies] == ["s1"]
    assert studies[0]["proposable"] == parent["proposable"]
    assert studies[0]["candidate"]["ref"] == parent["candidate"]["ref"]
    assert study["folds"] == parent["folds"] and study["guards"] == parent["guards"]
