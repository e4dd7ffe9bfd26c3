"""``make demo``: the simulator, ``chimera record``, ``chimera cortex`` and ``chimera live``
in paper mode.

Runs until Ctrl-C (or for DEMO_SECONDS seconds), then stops them cleanly, newest first.
The cortex listens on http://127.0.0.1:8501/ (DEMO_CORTEX_PORT to change it). ``--config``
takes another demo config (the simulator listens where its ``feed.url`` points).

Every run trades like the first: the paper account (journal, positions, cash) carries
over, as a trader's does from one day to the next, and the simulated market goes on from
where the last run's clock stopped (``data_dir/sim/clock.json``), opening on the next
trading day. Replaying the same timeline instead would give every signal the intent id
(it embeds the bar's exchange time) the journal already holds from the first run, and
the router would refuse them all as duplicates; the day's trade counts would carry over
too.

On a terminal the demo draws a live view (``tools/console.py``: price, energy, z,
regime, state, position and P&L per instrument by name, and the last fills, vetoes and
halts) and writes each process's JSON log to ``data_dir/logs/demo-<process>.log``;
anywhere else (a pipe, CI) the logs go to stderr as JSON lines, as before.
DEMO_VIEW=console|json forces one or the other.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
DEMO_CONFIG = HERE / "demo.toml"
HOST = "127.0.0.1"
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


def clock_file(data_dir: str | Path) -> Path:
    """Where the demo's simulator keeps its market clock between runs."""
    return Path(data_dir) / "sim" / "clock.json"


def _summary(config: Path) -> str:
    """One line of paper trading so far: orders, fills, positions, P&L (engine status plus
    the paper journal). Best effort: the demo goes on without it."""
    from chimera_core.config import load_config, load_env
    from chimera_core.control import ControlClient, read_token
    from chimera_execution.journal_view import JournalReader, journal_path

    try:
        cfg = load_config(config)
        token = read_token(load_env(None), Path(cfg.data_dir))
        with ControlClient(cfg.control.endpoint, token, timeout_s=1.0) as client:
            status = client.request("status")["result"]
        with JournalReader(journal_path(cfg.data_dir, "paper")) as journal:  # the engine writes
            orders = journal.orders()
            fills = journal.fills()
            cash = journal.cash() or 0.0  # None until the engine has fixed the starting cash
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


def _view(stream: object = sys.stdout) -> str:
    """console (the live view) on a terminal, json elsewhere; DEMO_VIEW forces one."""
    forced = os.environ.get("DEMO_VIEW", "")
    if forced in ("console", "json"):
        return forced
    return "console" if getattr(stream, "isatty", lambda: False)() else "json"


def main(argv: list[str] | None = None) -> int:
    from chimera_core.config import is_loopback_url, load_config
    from chimera_core.errors import ConfigError

    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="The simulator, recorder, cortex and engine in paper mode (make demo).",
    )
    parser.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="demo config (default tools/demo.toml)"
    )
    args = parser.parse_args(argv)
    rate = os.environ.get("DEMO_RATE", "2000")
    seconds = float(os.environ.get("DEMO_SECONDS", "0"))
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    feed = urlparse(cfg.feed.url)
    if not is_loopback_url(cfg.feed.url) or feed.port is None:
        print(
            f"demo: {args.config}: feed.url = {cfg.feed.url!r}; the demo serves its own "
            "simulator, so it must be ws://127.0.0.1:PORT/smart-stream",
            file=sys.stderr,
        )
        return 2
    sim_port = feed.port
    for port in (sim_port, CORTEX_PORT):
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                print(
                    f"demo: port {port} is busy; stop whatever listens there first",
                    file=sys.stderr,
                )
                return 2
    cli = [sys.executable, "-m", "tools.cli"]
    procs: list[subprocess.Popen[bytes]] = []
    view = _view()
    logs: list[BinaryIO] = []
    log_dir = Path(cfg.data_dir) / "logs"

    def start(name: str, cmd: list[str]) -> None:
        if view == "json":
            procs.append(subprocess.Popen(cmd))
            return
        log_dir.mkdir(parents=True, exist_ok=True)
        out = open(log_dir / f"demo-{name}.log", "ab")  # noqa: SIM115 (closed in finally)
        logs.append(out)
        env = {**os.environ, "CHIMERA_LOG_FORMAT": "json"}
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=out, env=env))

    try:
        # The market goes on from the clock the last run left (a new trading day), so
        # this run's intent ids cannot collide with the paper journal's.
        sim = [*cli, "sim", "--host", HOST, "--port", str(sim_port), "--rate", rate]
        sim += ["--clock-file", str(clock_file(cfg.data_dir))]
        start("sim", sim)
        if not _wait_for_port(HOST, sim_port, 30):
            print("demo: the simulator did not start listening within 30 s", file=sys.stderr)
            return 1
        config = ["--config", str(args.config)]
        # The recorder first: the engine waits for its subscription, so the black box
        # holds the session from its first tick (replayable with `chimera replay`).
        start("record", [*cli, "record", *config])
        cortex_url = f"http://{HOST}:{CORTEX_PORT}/"
        start("cortex", [*cli, "cortex", *config, "--port", str(CORTEX_PORT)])
        start("live", [*cli, "live", *config])
        if not _wait_for_port(HOST, CORTEX_PORT, 30):
            print("demo: the cortex did not start listening within 30 s", file=sys.stderr)
        print(
            f"demo: simulator on ws://{HOST}:{sim_port}/smart-stream at {rate} ticks/s, engine "
            f"in paper mode, recorder writing {Path(cfg.data_dir) / 'blackbox'}/; cortex at "
            f"{cortex_url} (open it in a browser); decisions that move a state machine are "
            "logged. Try `.venv/bin/chimera status` / `kill` / `resume` in another terminal. "
            "Ctrl-C stops." + (f" Logs: {log_dir}/demo-*.log" if view == "console" else ""),
            file=sys.stderr,
        )
        deadline = time.monotonic() + seconds if seconds > 0 else None

        def done() -> bool:
            """A process exited, or DEMO_SECONDS are up."""
            if any(p.poll() is not None for p in procs):
                return True
            return deadline is not None and time.monotonic() >= deadline

        if view == "console":
            from tools.console import watch

            watch(cfg.telemetry.endpoint, Path(cfg.data_dir), until=done)
        else:
            next_summary = time.monotonic() + SUMMARY_EVERY_S
            while not done():
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + SUMMARY_EVERY_S
                    print(_summary(args.config), file=sys.stderr)
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
        for out in logs:
            out.close()


if __name__ == "__main__":
    sys.exit(main())
