"""``make demo``: the simulator, ``chimera record``, ``chimera cortex`` and ``chimera live``
in paper mode.

Runs until Ctrl-C (or for DEMO_SECONDS seconds), then stops them cleanly, newest first.
The cortex listens on http://127.0.0.1:8501/ (DEMO_CORTEX_PORT to change it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST, PORT = "127.0.0.1", 8765
CORTEX_PORT = int(os.environ.get("DEMO_CORTEX_PORT", "8501"))


def _wait_for_port(host: str, port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.1)
    return False


SUMMARY_EVERY_S = 10.0


def _summary() -> str:
    """One line of paper trading so far: orders, fills, positions, P&L (engine status plus
    the paper journal). Best effort: the demo goes on without it."""
    from chimera_core.config import load_config, load_env
    from chimera_core.control import ControlClient, read_token
    from chimera_execution.journal import Journal

    try:
        cfg = load_config(HERE / "demo.toml")
        token = read_token(load_env(None), Path(cfg.data_dir))
        with ControlClient(cfg.control.endpoint, token, timeout_s=1.0) as client:
            status = client.request("status")["result"]
        with Journal(cfg.data_dir, "paper") as journal:
            orders = journal.orders()
            fills = journal.fills()
            cash = journal.cash()
        filled = sum(1 for o in orders if o.status.value == "FILLED")
        return (
            f"demo: PAPER {len(orders)} orders ({filled} filled), {len(fills)} fills, "
            f"positions {status['positions'] or '{}'}, realized P&L net "
            f"{status['realized_pnl']:+,.2f} this session, paper cash {cash:,.2f}, "
            f"meta-risk vetoes {status['stats']['vetoes']}, "
            f"states {status['states']}{' HALTED' if status['halted'] else ''}"
        )
    except Exception as exc:  # the engine may still be starting
        return f"demo: no summary yet ({exc})"


def main() -> int:
    rate = os.environ.get("DEMO_RATE", "2000")
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    for port in (PORT, CORTEX_PORT):
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                print(
                    f"demo: port {port} is busy; stop whatever listens there first",
                    file=sys.stderr,
                )
                return 2
    cli = [sys.executable, "-m", "tools.cli"]
    procs = []
    try:
        procs.append(
            subprocess.Popen([*cli, "sim", "--host", HOST, "--port", str(PORT), "--rate", rate])
        )
        if not _wait_for_port(HOST, PORT, 30):
            print("demo: the simulator did not start listening within 30 s", file=sys.stderr)
            return 1
        config = ["--config", str(HERE / "demo.toml")]
        # The recorder first: the engine waits for its subscription, so the black box
        # holds the session from its first tick (replayable with `chimera replay`).
        procs.append(subprocess.Popen([*cli, "record", *config]))
        cortex_url = f"http://{HOST}:{CORTEX_PORT}/"
        procs.append(subprocess.Popen([*cli, "cortex", *config, "--port", str(CORTEX_PORT)]))
        procs.append(subprocess.Popen([*cli, "live", *config]))
        if not _wait_for_port(HOST, CORTEX_PORT, 30):
            print("demo: the cortex did not start listening within 30 s", file=sys.stderr)
        print(
            f"demo: simulator on ws://{HOST}:{PORT}/smart-stream at {rate} ticks/s, engine in "
            f"paper mode, recorder writing data/blackbox/; cortex at {cortex_url} (open it in "
            "a browser); decisions that move a state machine are logged. Try "
            "`.venv/bin/chimera status` / `kill` / `resume` in another terminal. Ctrl-C stops.",
            file=sys.stderr,
        )
        deadline = time.monotonic() + seconds if seconds > 0 else None
        next_summary = time.monotonic() + SUMMARY_EVERY_S
        while all(p.poll() is None for p in procs):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + SUMMARY_EVERY_S
                print(_summary(), file=sys.stderr)
            time.sleep(0.2)
        failed = [p for p in procs if p.poll() not in (None, 0)]
        return 1 if failed else 0
    except KeyboardInterrupt:
        return 0
    finally:
        # Newest first, one at a time: the engine stops before the recorder, so the
        # recorder drains the engine's last messages before it closes the black box.
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.exit(main())
