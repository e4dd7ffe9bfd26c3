"""The systemd layout, as real processes: `chimera sim`, a long-running `chimera record`
and a cortex-like subscriber stay up while `chimera live` is restarted six times with
the default config. Every engine run must be its own session from its first message,
with nothing lost, and pass both `chimera record --verify` and `chimera replay --verify`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from tests.loopback import REPO, chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(420)
RESTARTS = 6


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=180,
    )


def _events(err: bytes, name: str) -> list[dict[str, Any]]:
    lines = (orjson.loads(x) for x in err.decode().splitlines() if x.startswith("{"))
    return [e for e in lines if e.get("event") == name]


def _records(session: Path) -> int:
    try:
        return int(orjson.loads((session / "manifest.json").read_bytes())["records"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_every_restart_is_its_own_complete_session(tmp_path: Path) -> None:
    sim_port, tel_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{tel_port}"
    # No telemetry.wait_for_subscriber_s: the default is what the systemd units run with.
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\n'
        "reconnect_initial_s = 0.1\nreconnect_max_s = 0.5\n"
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        # The genome and meta-risk state carry over from run to run, and no session yet
        # starts with a snapshot of them for replay: governance off keeps each run's
        # replay independent of the one before (what this test is about is the filing).
        "[governance]\nenabled = false\n"
        '[logging]\ndecisions = "none"\nstats_interval_s = 1.0\n'
        f'[telemetry]\nendpoint = "{endpoint}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
    )
    blackbox = tmp_path / "data" / "blackbox"
    # The cortex re-dials faster than the recorder: the engine must wait for the black box,
    # not for whichever subscriber comes back first.
    ctx = zmq.Context.instance()
    cortex = ctx.socket(zmq.SUB)
    cortex.setsockopt(zmq.RECONNECT_IVL, 5)
    cortex.setsockopt(zmq.RCVHWM, 0)
    cortex.setsockopt(zmq.LINGER, 0)
    cortex.setsockopt(zmq.SUBSCRIBE, b"")
    cortex.connect(endpoint)
    sim = chimera("sim", "--port", str(sim_port), "--rate", "2000", "--seed", "7", cwd=tmp_path)
    procs = [sim]
    runs: list[tuple[str, int]] = []  # (session id, messages the engine sent)
    try:
        wait_port(sim_port)
        recorder = chimera("record", cwd=tmp_path)
        procs.append(recorder)
        for _ in range(RESTARTS):
            live = chimera("live", cwd=tmp_path)
            procs.append(live)
            deadline = time.monotonic() + 120
            session: Path | None = None
            while time.monotonic() < deadline:
                started = _events(live.output()[1], "engine_started")
                if started:
                    session = blackbox / started[0]["session"]
                    if _records(session) > 1000:  # ticks flowing and recorded
                        break
                assert live.poll() is None, live.output()[1].decode()[-3000:]
                time.sleep(0.1)
            else:
                raise AssertionError(f"engine run never recorded: {live.output()[1][-3000:]!r}")
            live.send_signal(signal.SIGINT)
            _, err = live.communicate(timeout=60)
            assert live.returncode == 0, err.decode()[-3000:]
            stopped = _events(err, "engine_stopped")[-1]
            assert stopped["telemetry_dropped"] == 0
            assert session is not None
            runs.append((session.name, stopped["telemetry_sent"]))
        time.sleep(1.0)  # the last run's final messages reach the recorder
        recorder.send_signal(signal.SIGINT)
        _, rec_err = recorder.communicate(timeout=30)
        assert recorder.returncode == 0, rec_err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        cortex.close(linger=0)

    assert len({name for name, _ in runs}) == RESTARTS
    assert sorted(p.name for p in blackbox.iterdir()) == sorted(name for name, _ in runs)
    for name, sent in runs:
        session = blackbox / name
        manifest = orjson.loads((session / "manifest.json").read_bytes())
        where = f"session {name}: {manifest}"
        # Nothing lost: every message this engine run sent is in its own session.
        assert manifest["records"] == sent, where
        assert (manifest["first_seq"], manifest["last_seq"]) == (1, sent), where
        assert manifest["gaps"] == [] and manifest["seq_resets"] == 0, where
        assert manifest["complete"] is True, where
        box = _run("record", "--verify", str(session), cwd=tmp_path)
        out = box.stdout.decode() + box.stderr.decode()
        assert box.returncode == 0 and "WARNING" not in box.stdout.decode(), out[-3000:]
        replay = _run("replay", str(session), "--verify", "--quiet", cwd=tmp_path)
        out = replay.stdout.decode() + replay.stderr.decode()
        assert replay.returncode == 0 and "VERIFY OK" in out, out[-3000:]
        assert "INCOMPLETE" not in out, out[-3000:]
