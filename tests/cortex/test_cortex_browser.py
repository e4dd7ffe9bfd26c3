"""The cortex in a real browser against a real session: simulator, engine, recorder and
cortex as processes on loopback; Debian's chromium driven by Playwright (never its own
browser download). Opens every page, checks it shows this session's values, that no
control is offered until the operator logs in (a wrong password is refused), then
approves a queued intent and hits HALT, and confirms both through the engine, not the page.

Screenshots of every page go to ``test-artifacts/cortex/<page>.png``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

import pytest

from chimera_core.control import ControlClient
from chimera_governance.approvals import proposals, propose, queue_promotion
from tests.cortex.browser import ARTIFACTS, CHROMIUM, NO_BROWSER
from tests.cortex.browser import healthy as _healthy
from tests.cortex.browser import launch as _launch
from tests.cortex.browser import settle as _settle
from tests.cortex.browser import wait_text as _wait_text
from tests.cortex.test_candidates import write_candidate
from tests.loopback import REPO, chimera, free_port, stop, wait_log, wait_port

pytestmark = pytest.mark.timeout(300)

TOKEN = "cortex-browser-test-token-0123456789abcdef"  # >= 32 chars, as the engine requires
TOKENS = ("2885", "1594", "3045")
PASSWORD = "cortex operator passphrase"


def _open(page, base: str, path: str, name: str) -> str:
    page.goto(base + path)
    text = _settle(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    return text


def _neural_state(data_dir: Path, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ns = json.loads((data_dir / "neural_state.json").read_text())
            if ns.get("session_id") and len(ns.get("symbols", {})) == len(TOKENS):
                return ns
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError("the recorder never wrote neural_state.json for every symbol")


def _assert_no_controls(page) -> None:
    for name in ("HALT", "Pause", "Resume", "Approve", "Reject"):
        assert page.get_by_role("button", name=name, exact=True).count() == 0, name


def _log_in(page, password: str) -> None:
    page.get_by_label("Operator password").fill(password)
    page.get_by_role("button", name="Log in").click()


def _set_password(cwd: Path) -> None:
    """`chimera cortex --set-password` with PASSWORD, as the operator types it."""
    setpw = subprocess.run(
        [sys.executable, "-m", "tools.cli", "cortex", "--config", "chimera.toml", "--set-password"],
        cwd=cwd, input=PASSWORD + "\n", capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert setpw.returncode == 0, setpw.stderr


def _approval_status(db: Path, approval_id: str) -> str | None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute(
            "SELECT status FROM approval WHERE approval_id = ?", (approval_id,)
        ).fetchone()
    finally:
        con.close()
    return row[0] if row else None


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=NO_BROWSER,
)
@pytest.mark.timeout(600)  # ~1-2 min alone; a loaded 2-core box takes several
def test_cortex_pages_show_the_session_and_controls_reach_the_engine(tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sim_port, tel_port, ctl_port, web_port = free_port(), free_port(), free_port(), free_port()
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 10\nenergy_threshold = 0.01\ncooldown_s = 30.0\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        "wait_for_subscriber_s = 15.0\n"
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
        # Intents below 0.5 confidence queue for a human and stay queued for the longest TTL
        # (7 days of exchange time: at --rate 1000 the simulator's clock runs ~200x the wall
        # clock and skips nights, so ~9 min here); the others trade on paper.
        "[governance]\napproval_min_confidence = 0.5\napproval_ttl_s = 604800.0\n"
    )
    env = {"CHIMERA_CONTROL_TOKEN": TOKEN}
    procs: list[subprocess.Popen[bytes]] = []
    data_dir = tmp_path / "data"
    _set_password(tmp_path)
    try:
        procs.append(chimera("sim", "--port", str(sim_port), "--rate", "1000", cwd=tmp_path))
        wait_port(sim_port)
        procs.append(chimera("record", "--config", "chimera.toml", cwd=tmp_path, env=env))
        procs.append(
            chimera(
                "cortex",
                "--config",
                "chimera.toml",
                "--port",
                str(web_port),
                "--refresh-s",
                "2",
                cwd=tmp_path,
                env=env,
            )
        )
        procs.append(chimera("live", "--config", "chimera.toml", cwd=tmp_path, env=env))
        base = _healthy(web_port)
        ns = _neural_state(data_dir)
        session_id = ns["session_id"]
        client = ControlClient(f"tcp://127.0.0.1:{ctl_port}", TOKEN, 5.0)

        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = _launch(pw, profile)
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(30_000)

            # Brain: the session's id, every symbol's influence row, the neural map.
            page.goto(base)
            _wait_text(page, "Influence weight per symbol")
            _wait_text(page, re.escape(session_id))
            for token in TOKENS:
                _wait_text(page, rf"\n{token}\s")
            text = _open(page, base, "", "brain")
            for token in TOKENS:
                assert token in text
            assert "Waiting for telemetry" not in text
            assert page.locator(".js-plotly-plot").count() >= 1
            # The cortex holds the token, but offers no control before the login.
            assert "Read-only until the operator logs in" in text
            assert page.get_by_label("Operator password").count() == 1
            _assert_no_controls(page)

            # Market: the price metric agrees with the recorder's view of the same symbol.
            page.goto(base + "market")
            m = _wait_text(page, r"(\d{4}) price\s*\n\s*([\d.]+)")
            text = _open(page, base, "market", "market")
            m = re.search(r"(\d{4}) price\s*\n\s*([\d.]+)", text)
            assert m, text[-2000:]
            recorded = _neural_state(data_dir)["symbols"][m.group(1)]["price"]
            assert abs(float(m.group(2)) - recorded) / recorded < 0.05
            assert "structure" in text and "energy" in text

            # Execution: paper labelled, states per symbol, and the session's own orders and
            # fills (client order ids from this run's intents), with charges paid.
            page.goto(base + "execution")
            _wait_text(page, "PAPER P&L")
            _wait_text(page, r"CH-1-\d+-\d+-\d+", timeout_s=120)
            text = _open(page, base, "execution", "execution")
            assert "PAPER realized P&L" in text and "LIVE" not in text
            assert "State machine and position per symbol" in text
            charges = re.search(r"charges paid\s*\n\s*([\d.,]+)", text)
            assert charges and float(charges.group(1).replace(",", "")) > 0, text[-3000:]

            # Health: feed connected, latency percentiles from real decisions.
            page.goto(base + "health")
            _wait_text(page, r"p50\s*\n\s*[1-9][\d.]* µs")
            text = _open(page, base, "health", "health")
            assert "connected" in text and "recorder lag" in text
            # The engine's safety fields: healthy by default, so no red banner.
            assert re.search(r"trading state\s*\n\s*ACTIVE", text), text[:3000]
            assert re.search(r"journal\s*\n\s*ok", text)
            assert "EXITS ONLY" not in text and "JOURNAL WRITE FAILED" not in text

            # Replay: the recorded session is listed and its decisions load.
            page.goto(base + "replay")
            _wait_text(page, re.escape(session_id))
            _wait_text(page, r"[1-9]\d* records, [1-9]\d* decisions that moved")
            _settle(page)
            page.screenshot(path=str(ARTIFACTS / "replay.png"), full_page=True)

            # An assistant's genome proposal (as `chimera mcp` queues it) waits beside them.
            db = data_dir / "paper" / "approvals.db"
            proposal_id = propose(
                db, "genome_change", {"family": "default", "params": {"band_k": 2.5}},
                "wider bands", "assistant", int(time.time() * 1000),
            )  # fmt: skip

            # Governance: the queue shows, but approving needs the operator's login.
            page.goto(base + "governance")
            m = _wait_text(page, r"(apv-[0-9a-f]{20}) · ", timeout_s=120)
            approval_id = m.group(1)
            text = _open(page, base, "governance", "governance")
            assert "Regime timeline" in text
            assert "log in as the operator (sidebar) to approve" in text
            _assert_no_controls(page)
            # A wrong password is refused and changes nothing.
            _log_in(page, "not the operator passphrase")
            _wait_text(page, "Login refused: wrong password")
            _settle(page)
            _assert_no_controls(page)
            page.screenshot(path=str(ARTIFACTS / "login-refused.png"), full_page=True)
            # The right one: controls appear in this browser session.
            _log_in(page, PASSWORD)
            page.get_by_role("button", name="HALT", exact=True).wait_for()
            assert page.get_by_label("Operator password").count() == 0
            assert client.request("status")["result"]["halted"] is False
            page.locator(f".st-key-approve-{approval_id} button").click()
            _wait_text(page, f"approve {approval_id}: ")
            deadline = time.monotonic() + 15
            while _approval_status(db, approval_id) != "APPROVED":
                assert time.monotonic() < deadline, _approval_status(db, approval_id)
                time.sleep(0.2)
            # The proposal: shown with its payload and who proposed it; approving it goes
            # through the engine, which puts the parameters in force.
            _wait_text(page, rf"{proposal_id} · genome_change · family default, band_k=2.5")
            page.locator(f".st-key-approve-{proposal_id} button").click()
            _wait_text(page, f"approve {proposal_id}: ")
            deadline = time.monotonic() + 15
            while [p["status"] for p in proposals(db)] != ["APPROVED"]:
                assert time.monotonic() < deadline, proposals(db)
                time.sleep(0.2)
            page.screenshot(path=str(ARTIFACTS / "governance-approved.png"), full_page=True)

            # HALT with confirmation (same logged-in session), then ask the engine.
            assert client.request("status")["result"]["halted"] is False
            _settle(page)
            page.get_by_role("button", name="HALT", exact=True).click()
            page.get_by_role("button", name="Confirm HALT").click()
            # The engine is the judge: the control channel must report the halt.
            deadline = time.monotonic() + 30
            while not client.request("status")["result"]["halted"]:
                assert time.monotonic() < deadline, "HALT never reached the engine"
                time.sleep(0.2)
            # And the cortex shows it, from the engine's health telemetry (a fresh load, so
            # a slow rerun of the clicked page cannot hide it).
            page.goto(base)
            _wait_text(page, "engine HALTED", timeout_s=30)
            # A fresh page load is a new browser session: read-only again until a login.
            _assert_no_controls(page)
            page.screenshot(path=str(ARTIFACTS / "halted.png"), full_page=True)
            browser.close()
        client.close()
    finally:
        stop(reversed(procs))
    cortex = procs[2]
    assert cortex.returncode in (0, -2), cortex.output()[1].decode()[-3000:]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"NO BROWSER: {CHROMIUM} is missing")
def test_without_a_control_token_the_cortex_is_read_only(tmp_path, monkeypatch):
    """No CHIMERA_CONTROL_TOKEN and no token file: the cortex shows, but offers no control.
    The engine's health says exits-only and a failed journal write: red banners say so."""
    from playwright.sync_api import sync_playwright

    from chimera_core.contracts import Health
    from chimera_core.telemetry import TOPIC_HEALTH, TelemetryPublisher

    monkeypatch.delenv("CHIMERA_CONTROL_TOKEN", raising=False)
    web_port, tel_port = free_port(), free_port()
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
    )
    # An engine stand-in on the telemetry port: health only, as the engine publishes it.
    pub = TelemetryPublisher(f"tcp://127.0.0.1:{tel_port}")
    health = Health(
        1, {}, True, 1, False, 0, 0, False, {"IDLE": 1},
        exits_only=True, exits_only_reason="journal write failed",
        journal_error="database or disk is full", disk_free_mb=12.0, unprotected=["2885"],
        trading_state="REDUCING",
    )  # fmt: skip
    beating_done = threading.Event()

    def beat() -> None:
        while not beating_done.wait(0.3):
            pub.publish(TOPIC_HEALTH, health)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    # A shadow candidate whose promotion waits for a human, and one whose status.json is
    # half written, as the shadow's files and queue hold them.
    shadow_dir = tmp_path / "data" / "shadow"
    pid, _ = queue_promotion(
        tmp_path / "data" / "paper" / "approvals.db", "calm", "default",
        {"energy_threshold": 0.03}, "gates passed", 1,
    )  # fmt: skip
    write_candidate(shadow_dir, "active", [1e6, 1e6], gates=False)
    write_candidate(shadow_dir, "calm", [1e6, 1e6 + 5], promotion=pid)
    write_candidate(shadow_dir, "keen", [1e6, 1e6 + 2])
    damaged = shadow_dir / "keen" / "status.json"
    damaged.write_bytes(damaged.read_bytes()[:30])
    cortex = chimera("cortex", "--config", "chimera.toml", "--port", str(web_port), cwd=tmp_path)
    try:
        wait_port(web_port, timeout=60)
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = _launch(pw, profile)
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(f"http://127.0.0.1:{web_port}/")
            _wait_text(page, "Read-only: no control token")
            _wait_text(page, "EXITS ONLY: journal write failed")
            text = _settle(page)
            assert "JOURNAL WRITE FAILED: database or disk is full" in text
            assert "UNPROTECTED POSITIONS" in text and "2885" in text
            assert "disk free 12 MB" in text and "DISK LOW" in text
            _assert_no_controls(page)
            assert page.get_by_label("Operator password").count() == 0
            page.screenshot(path=str(ARTIFACTS / "read-only.png"), full_page=True)
            page.goto(f"http://127.0.0.1:{web_port}/health")
            text = _wait_text(page, r"trading state\s*\n\s*REDUCING").string
            assert re.search(r"journal\s*\n\s*WRITE FAILED", text), text[:3000]
            assert re.search(r"disk free \(data_dir\)\s*\n\s*12 MB", text)
            page.screenshot(path=str(ARTIFACTS / "health-alerts.png"), full_page=True)
            # Candidates: the pending promotion shows, with no control to decide it.
            page.goto(f"http://127.0.0.1:{web_port}/candidates")
            _wait_text(page, rf"promotion {pid} · PENDING")
            text = _settle(page)
            assert f"keen: {damaged} is unreadable" in text
            assert "Read-only: log in as the operator (sidebar) to approve or reject." in text
            _assert_no_controls(page)
            page.screenshot(path=str(ARTIFACTS / "candidates-read-only.png"), full_page=True)
            browser.close()
    finally:
        beating_done.set()
        beater.join(2)
        pub.close()
        cortex.send_signal(signal.SIGINT)
        try:
            cortex.wait(timeout=20)
        except subprocess.TimeoutExpired:
            cortex.kill()


CANDIDATE_GENES = {  # three candidates beside the active genome (the primary runs 0.006)
    "calm": "energy_threshold = 0.03\n",
    "wide": "band_k = 3.0\n",
    "keen": "energy_threshold = 0.02\nband_lookback = 100\n",
}


def _genes_in_force(tmp_path: Path) -> dict[str, float]:
    """`chimera genome show` on the primary's genome store: its params ({} with no store)."""
    db = tmp_path / "data" / "paper" / "genome.db"
    if not db.exists():
        return {}
    show = chimera("genome", "show", "--db", str(db), cwd=tmp_path)
    assert show.wait(timeout=60) == 0, show.output()
    return dict(json.loads(show.output()[0])["params"])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=NO_BROWSER)
@pytest.mark.timeout(600)  # ~1-2 min alone; a loaded 2-core box takes several
def test_candidates_page_shows_the_shadow_and_promotes_a_candidate(tmp_path):
    """`chimera shadow` with four candidates (the active genome and three others, gates
    deliberately small as in tests/tools/test_shadow_e2e.py) beside a paper session: the
    Candidates page lists them, with their gates, read-only until the operator logs in;
    approving a passing candidate's promotion there puts its genes in force in the
    primary, as `chimera genome show` on the primary's genome store says."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sim_port, tel_port, ctl_port, shadow_port, web_port = (free_port() for _ in range(5))
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        "wait_for_subscriber_s = 60\n"
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
        "[execution.paper]\nlatency_ms = 8000\n"  # why: tests/tools/test_shadow_e2e.py
        f'[shadow]\nendpoint = "tcp://127.0.0.1:{shadow_port}"\ncheck_interval_s = 0.5\n'
        # Deliberately small gates: any candidate whose returns differ from the active's.
        "[shadow.gates]\nmin_days = 0\nmin_trades = 0\nmin_sharpe_edge = -100.0\n"
        "max_drawdown_excess = 1.0\nsignificance = 1.0\n"
    )
    for name, genes in CANDIDATE_GENES.items():
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n[genome]\n{genes}')
    _set_password(tmp_path)
    env = {"CHIMERA_CONTROL_TOKEN": TOKEN}
    shadow_dir = tmp_path / "data" / "shadow"
    procs = [chimera("sim", "--port", str(sim_port), "--rate", "500", cwd=tmp_path)]
    try:
        wait_port(sim_port)
        shadow = chimera("shadow", "run", *(f"{n}.toml" for n in CANDIDATE_GENES), cwd=tmp_path)
        procs.append(shadow)
        cortex = chimera(
            "cortex", "--port", str(web_port), "--refresh-s", "1", cwd=tmp_path, env=env
        )
        procs.append(cortex)
        base = _healthy(web_port)
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
            browser = _launch(pw, profile)
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(30_000)
            # Before the shadow wrote anything: the empty state says where it looked.
            page.goto(base + "candidates")
            _wait_text(page, rf"No shadow candidates under {re.escape(str(shadow_dir))}")
            assert "start chimera shadow" in _settle(page)

            # The engine (the shadow has dialled it already; the engine waits for a
            # subscriber before its first message), then the recorder.
            wait_log(shadow, b"shadow_subscribed")
            procs.append(chimera("live", cwd=tmp_path, env=env))
            wait_port(tel_port)
            procs.append(chimera("record", cwd=tmp_path))

            # Every candidate shows, and one passes its gates with its promotion pending.
            m = _wait_text(
                page, r"(\w+) · gates PASS\s*\n[\s\S]*?promotion (prm-[0-9a-f]{20}) · PENDING",
                timeout_s=180,
            )  # fmt: skip
            winner, proposal_id = m.group(1), m.group(2)
            assert winner in CANDIDATE_GENES
            text = _settle(page)
            page.screenshot(path=str(ARTIFACTS / "candidates.png"), full_page=True)
            cells = {c.strip() for c in re.split(r"[\t\n]", text)}  # of the tables, and more
            for name in ("active", *CANDIDATE_GENES):
                assert name in cells, name
            for check in ("days", "trades", "sharpe", "drawdown", "significance", "governance"):
                assert re.search(rf"\s{check}\s+ok\s", text), check
            assert "edge needed -100" in text  # a gate check's detail, as the shadow judged
            assert "Read-only: log in as the operator (sidebar) to approve or reject." in text
            assert page.locator(".js-plotly-plot").count() >= 1  # equity vs the active's
            _assert_no_controls(page)
            status = json.loads((shadow_dir / winner / "status.json").read_text())
            assert status["promotion"] == proposal_id and status["gates"]["passed"]
            genes = tomllib.loads((tmp_path / f"{winner}.toml").read_text())["genome"]
            before = _genes_in_force(tmp_path)
            assert any(before.get(g) != pytest.approx(v) for g, v in genes.items()), before

            # The operator approves it here: the engine decides it and activates the genes.
            _log_in(page, PASSWORD)
            page.locator(f".st-key-approve-{proposal_id} button").click()
            _wait_text(page, f"approve {proposal_id}: ")
            db = tmp_path / "data" / "paper" / "approvals.db"
            deadline = time.monotonic() + 30
            while next(p["status"] for p in proposals(db) if p["proposal_id"] == proposal_id) != (
                "APPROVED"
            ):
                assert time.monotonic() < deadline, proposals(db)
                time.sleep(0.2)
            _wait_text(page, rf"promotion {proposal_id} · APPROVED")
            page.screenshot(path=str(ARTIFACTS / "candidates-promoted.png"), full_page=True)
            browser.close()
        # In force in the primary from its next bar close: `chimera genome show` says so.
        deadline = time.monotonic() + 60
        while True:
            in_force = _genes_in_force(tmp_path)
            if all(in_force.get(g) == pytest.approx(v) for g, v in genes.items()):
                break
            assert time.monotonic() < deadline, (genes, in_force)
            time.sleep(0.5)
    finally:
        stop(procs[3:4])  # the engine first: the shadow and the recorder get its last words
        stop([procs[1], *procs[4:], procs[2], procs[0]])
    assert cortex.returncode in (0, -2), cortex.output()[1].decode()[-3000:]
