"""A whole session as real processes: sim (with faults) → chimera live → chimera record;
operator commands over the control channel; then verify, replay bit-exactly and export."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.loopback import REPO, chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(180)


def _run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=timeout,
    )


def _stop(proc: subprocess.Popen[bytes], what: str) -> bytes:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"{what} exited {proc.returncode}: {err.decode()[-3000:]}"
    return err


def test_record_verify_replay_and_export_a_faulty_session(tmp_path):
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "reconnect_initial_s = 0.1\nreconnect_max_s = 0.5\n"
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\nstats_interval_s = 1.0\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nwait_for_subscriber_s = 20\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
    )
    sim = chimera("sim", "--port", str(sim_port), "--rate", "3000", "--seed", "5",
                   "--drop-every", "2.5", "--malformed-p", "0.01", cwd=tmp_path)  # fmt: skip
    procs = [sim]
    try:
        wait_port(sim_port)
        recorder = chimera("record", cwd=tmp_path)
        procs.append(recorder)
        live = chimera("live", cwd=tmp_path)
        procs.append(live)
        wait_port(ctl_port, timeout=60)  # up: a loaded machine may take longer than 5 s
        time.sleep(5.0)
        kill = _run("kill", cwd=tmp_path)
        assert kill.returncode == 0, kill.stderr.decode()
        status = orjson.loads(_run("status", cwd=tmp_path).stdout)
        assert status["result"]["halted"] is True
        time.sleep(1.0)
        resumed = _run("resume", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr.decode()
        time.sleep(4.0)
        live_err = _stop(live, "chimera live")
        time.sleep(1.0)  # let the recorder drain what is in flight
        _stop(recorder, "chimera record")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    stopped = [orjson.loads(x) for x in live_err.decode().splitlines() if x.startswith("{")]
    stopped = [e for e in stopped if e["event"] == "engine_stopped"][-1]
    assert stopped["feed_connects"] >= 2, "the simulator's drops should have forced reconnects"
    assert stopped["malformed"] > 0 and stopped["telemetry_dropped"] == 0

    sessions = sorted((tmp_path / "data" / "blackbox").iterdir())
    assert len(sessions) == 1
    session = sessions[0]
    manifest = orjson.loads((session / "manifest.json").read_bytes())
    assert manifest["complete"] is True and manifest["gaps"] == []
    assert manifest["counts"]["control"] >= 2 and manifest["counts"]["feed"] >= 3
    assert (tmp_path / "data" / "neural_state.json").is_file()

    verify_box = _run("record", "--verify", str(session), cwd=tmp_path)
    assert verify_box.returncode == 0, verify_box.stdout.decode() + verify_box.stderr.decode()

    replay = _run("replay", str(session), "--verify", "--quiet", cwd=tmp_path)
    out = replay.stdout.decode() + replay.stderr.decode()
    assert replay.returncode == 0, out[-3000:]
    assert "identical" in out
    # The paper broker's fills were re-applied where they happened, and the positions and
    # state machines they moved came out identical.
    reports = re.search(r"(\d+) execution reports", out)
    assert reports and int(reports.group(1)) == manifest["counts"]["exec"] > 0, out[-2000:]
    assert manifest["counts"]["recon"] == 1

    export = _run("replay", str(session), "--export", "csv", "--quiet", cwd=tmp_path)
    assert export.returncode == 0, export.stderr.decode()
    with open(session / "decisions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == stopped["decisions"]
    assert any(r["intent_id"] for r in rows), "the session should contain order intents"
    assert any(r["state"] == "HALT" for r in rows)
