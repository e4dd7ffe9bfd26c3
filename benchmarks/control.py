"""``chimera bench control``: kill switch latency, command → HALT.

Against a real ``chimera live`` process (fed by ``chimera sim`` at 2,000 ticks/s):
1. ``in_process``: Engine.control("halt") on a loaded engine, timed around the call.
2. ``client``: ControlClient round trips (halt, then resume) from this process; the engine
   replies only after HALT is applied, so the round trip bounds command → HALT.
3. ``cli``: wall time of ``chimera kill`` as a new process (interpreter start included),
   beside ``interpreter`` (``python -c pass``: the floor no entry point can beat) and, with
   ``--against REV``, the same command from revision REV's tree, interleaved run by run so
   the machine's load falls on all three alike.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hot_path import _free_port, _start_sim
from chimera_core.config import parse_config
from chimera_core.control import ControlClient
from chimera_core.event_loop import Engine
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.logging import configure_logging
from tools.sim.market import Market

GOALS_US = {"in_process": 1_000.0, "cli": 50_000.0}


def stats(us: list[float]) -> dict[str, float]:
    a = np.asarray(us)
    return {
        "n": int(a.size),
        "p50_us": round(float(np.percentile(a, 50)), 1),
        "p99_us": round(float(np.percentile(a, 99)), 1),
        "max_us": round(float(a.max()), 1),
    }


def wait_for_engine(client: ControlClient, timeout_s: float = 60.0) -> None:
    """Until the engine answers ``status`` on the control channel (it is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.request("status")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _in_process(n: int) -> dict[str, float]:
    engine = Engine(parse_config('[logging]\ndecisions = "none"'))
    market = Market(seed=1)
    for i in range(5000):
        engine.on_frame(encode(market.next_tick(2)), i)
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        engine.control("halt", "bench")
        out.append((time.perf_counter_ns() - t0) / 1000)
        engine.control("resume", "bench")
    return stats(out)


def _worktree(rev: str) -> Path:
    """A checkout of ``rev`` in a temp dir (git worktree), for the old code beside the new."""
    repo = Path(__file__).resolve().parents[1]
    path = Path(tempfile.mkdtemp(prefix="chimera-bench-rev-")) / "tree"
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chimera bench control")
    parser.add_argument("suite", choices=["control"])
    parser.add_argument("--json", default="benchmarks/results/control.json")
    parser.add_argument("--n", type=int, default=200, help="client round trips")
    parser.add_argument("--cli-runs", type=int, default=20)
    parser.add_argument(
        "--against", default=None, metavar="REV", help="also time REV's `chimera kill`"
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    result: dict[str, Any] = {
        "command": "chimera bench " + " ".join(argv or []),
        "goals_us": GOALS_US,
    }
    result["in_process"] = _in_process(args.n)

    work = Path(tempfile.mkdtemp(prefix="chimera-bench-control-"))
    sim_port, tel, ctl = _free_port(), _free_port(), _free_port()
    (work / "chimera.toml").write_text(
        f'data_dir = "{work / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\n'
        '[logging]\ndecisions = "none"\nlevel = "WARNING"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl}"\n'
    )
    env = {**os.environ, "CHIMERA_CONTROL_TOKEN": secrets.token_hex(16)}
    sim = _start_sim(sim_port, 2000, 7)
    live = subprocess.Popen([sys.executable, "-m", "tools.cli", "live"], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        client = ControlClient(f"tcp://127.0.0.1:{ctl}", env["CHIMERA_CONTROL_TOKEN"], timeout_s=2)
        wait_for_engine(client)
        time.sleep(1.0)  # ticks flowing
        rtt = []
        for _ in range(args.n):
            t0 = time.perf_counter_ns()
            reply = client.request("halt", "bench")
            rtt.append((time.perf_counter_ns() - t0) / 1000)
            assert reply["ok"] and reply["result"]["halted"], reply
            client.request("resume", "bench")
        result["client_round_trip"] = stats(rtt)
        trees: dict[str, Path | None] = {"cli": None}
        if args.against:
            trees["cli_against"] = _worktree(args.against)
        runs: dict[str, list[float]] = {name: [] for name in (*trees, "interpreter")}
        for _ in range(args.cli_runs):
            for name, tree in trees.items():
                run_env = env if tree is None else {**env, "PYTHONPATH": str(tree)}
                t0 = time.perf_counter_ns()
                done = subprocess.run([sys.executable, "-m", "tools.cli", "kill"], cwd=work,
                                      env=run_env, capture_output=True, timeout=30)  # fmt: skip
                runs[name].append((time.perf_counter_ns() - t0) / 1000)
                assert done.returncode == 0, done.stderr.decode()
                client.request("resume", "bench")
            t0 = time.perf_counter_ns()
            subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
            runs["interpreter"].append((time.perf_counter_ns() - t0) / 1000)
        for name, us in runs.items():
            result[name] = stats(us)
        result["cli_over_interpreter_p50"] = round(
            result["cli"]["p50_us"] / result["interpreter"]["p50_us"], 2
        )
        if args.against:
            result["against"] = args.against
            result["cli_over_against_p50"] = round(
                result["cli"]["p50_us"] / result["cli_against"]["p50_us"], 3
            )
        client.close()
    finally:
        live.terminate()
        live.wait(15)
        sim.terminate()
        sim.wait(10)
    result["meets_goals"] = {
        "in_process": result["in_process"]["p99_us"] <= GOALS_US["in_process"],
        "client_round_trip": result["client_round_trip"]["p99_us"] <= GOALS_US["in_process"],
        "cli": result["cli"]["p50_us"] <= GOALS_US["cli"],
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
