"""Two loops, one logic: a paper session recorded from `chimera live` (real sim, engine,
recorder processes), run again through event mode's fresh node, makes the same decisions
and the same fills."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loopback import REPO, chimera, free_port, wait_port
from tools.backtest.session import run_session

pytestmark = pytest.mark.timeout(240)


def _stop(proc: subprocess.Popen[bytes], what: str) -> None:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {err.decode()[-3000:]}"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("live")
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    (root / "chimera.toml").write_text(
        f'data_dir = "{root / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\nexecute_timeout_s = 150.0\n"
        # The simulator's exchange clock runs ~170x real time (1,000 prints/s, ~170 ms
        # apart): the live router places an order milliseconds of real time after its
        # decision (more on a loaded machine), which is many seconds of this clock, while
        # event mode places it before the next print. A latency of a simulated minute
        # (~0.35 s of real time here) lets the live paper broker match where event mode's
        # does, as it would at a real exchange's pace (order latency ~1 ms, latency_ms 50).
        "[execution.paper]\nlatency_ms = 60000\n"
        '[logging]\ndecisions = "none"\nstats_interval_s = 1.0\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nwait_for_subscriber_s = 20\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
    )
    procs = [chimera("sim", "--port", str(sim_port), "--rate", "1000", "--seed", "5", cwd=root)]
    try:
        wait_port(sim_port)
        recorder = chimera("record", cwd=root)
        procs.append(recorder)
        live = chimera("live", cwd=root)
        procs.append(live)
        time.sleep(6.0)
        assert _run("pause", cwd=root).returncode == 0  # an operator command mid-session
        time.sleep(1.5)
        assert _run("resume", cwd=root).returncode == 0
        time.sleep(6.0)
        _stop(live, "chimera live")
        time.sleep(1.0)
        _stop(recorder, "chimera record")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    (found,) = sorted((root / "data" / "blackbox").iterdir())
    return found


def test_a_recorded_paper_session_runs_the_same_through_event_mode(session, tmp_path):
    run = asyncio.run(run_session(session, work_dir=tmp_path))
    assert run.ticks > 3_000 and run.control_applied >= 2
    assert run.recorded_fills > 0, "the session must have traded for its fills to be compared"
    assert run.reproduced, run.first_divergence
    # The fresh paper broker filled what the live one filled, tick for tick.
    assert len(run.fills) == run.recorded_fills


def test_chimera_backtest_takes_a_session_directory(session, tmp_path):
    done = _run("backtest", "--data", str(session), "--report", str(tmp_path), cwd=tmp_path)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-2000:]
    assert "REPRODUCED" in out
    import json

    result = json.loads((tmp_path / "result.json").read_bytes())
    assert result["reproduced"] is True and result["decisions_identical"] > 3_000
