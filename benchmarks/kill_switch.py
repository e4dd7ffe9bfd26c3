"""``chimera bench kill-switch``: kill switch → every open order cancelled.

A real ``chimera live`` in paper mode, fed by ``chimera sim`` (20 tokens, SNAP_QUOTE), with
a paper latency so long that entry orders rest at the simulated broker. When enough
orders are open, this process sends ``halt`` on the control channel and watches the
``exec`` telemetry topic until every open order's CANCELLED report has arrived.

- ``reply``: command sent → control reply (HALT applied, cancels queued).
- ``all_cancelled``: command sent → the last CANCELLED report seen on telemetry
  (``time.monotonic_ns`` is one clock for every process on a Linux host).
- ``router``: the router's own figure (cancel_all → last cancel journaled), from its log.
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

import orjson
import zmq

from benchmarks.control import stats, wait_for_engine
from benchmarks.hot_path import _free_port
from chimera_core.contracts import ExecKind, ExecutionReport
from chimera_core.control import ControlClient
from chimera_core.telemetry import TOPIC_EXEC, decoder_for, parse

TOKENS = [str(3000 + i) for i in range(20)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chimera bench kill-switch")
    parser.add_argument("suite", choices=["kill-switch"])
    parser.add_argument("--json", default="benchmarks/results/kill_switch.json")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-open", type=int, default=8, help="open orders before a halt")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="chimera-bench-kill-"))
    sim_port, tel, ctl = _free_port(), _free_port(), _free_port()
    (work / "chimera.toml").write_text(
        f'data_dir = "{work / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        f"tokens = {json.dumps(TOKENS)}\n"
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.004\norder_qty = 10\n"
        "execute_timeout_s = 100000\ncooldown_s = 5\n"
        '[logging]\ndecisions = "none"\nlevel = "WARNING"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl}"\n'
        "[governance]\nenabled = false\n"
        # Orders rest at the paper broker (eligible after ~3 hours of exchange time).
        "[execution.paper]\nlatency_ms = 10000000\n"
    )
    env = {**os.environ, "CHIMERA_CONTROL_TOKEN": secrets.token_hex(16)}
    cli = [sys.executable, "-m", "tools.cli"]
    sim = subprocess.Popen(
        [*cli, "sim", "--port", str(sim_port), "--rate", "3000", "--seed", "3",
         "--tokens", ",".join(TOKENS)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    log_path = work / "live.log"
    with log_path.open("wb") as log_file:
        live = subprocess.Popen([*cli, "live"], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=log_file)  # fmt: skip
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC_EXEC)
    sub.connect(f"tcp://127.0.0.1:{tel}")
    decode_report = decoder_for(TOPIC_EXEC, ExecutionReport)
    open_orders: set[str] = set()

    def drain(timeout_ms: int) -> list[tuple[int, ExecutionReport]]:
        got = []
        if sub.poll(timeout_ms):
            while True:
                try:
                    msg = sub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                rep = decode_report(parse(msg).payload)
                if rep.kind in (ExecKind.ACK, ExecKind.PARTIAL):
                    open_orders.add(rep.client_order_id)
                else:
                    open_orders.discard(rep.client_order_id)
                got.append((now, rep))
        return got

    reply_us: list[float] = []
    all_us: list[float] = []
    sizes: list[int] = []
    try:
        client = ControlClient(f"tcp://127.0.0.1:{ctl}", env["CHIMERA_CONTROL_TOKEN"], timeout_s=2)
        wait_for_engine(client)
        for _ in range(args.rounds):
            deadline = time.monotonic() + 30
            while len(open_orders) < args.min_open and time.monotonic() < deadline:
                drain(100)
            drain(50)
            waiting = set(open_orders)
            if not waiting:
                continue
            sizes.append(len(waiting))
            t0 = time.monotonic_ns()
            reply = client.request("halt", "bench")
            reply_us.append((time.monotonic_ns() - t0) / 1000)
            assert reply["ok"], reply
            last = t0
            deadline = time.monotonic() + 10
            while waiting and time.monotonic() < deadline:
                for at, rep in drain(100):
                    if rep.kind is ExecKind.CANCELLED and rep.client_order_id in waiting:
                        waiting.discard(rep.client_order_id)
                        last = at
            if waiting:
                raise RuntimeError(f"orders still open 10 s after the kill switch: {waiting}")
            all_us.append((last - t0) / 1000)
            client.request("resume", "bench")
        client.close()
    finally:
        live.terminate()
        live.wait(15)
        sim.terminate()
        sim.wait(10)
        sub.close(0)
        ctx.term()
    router_us = []
    for line in log_path.read_bytes().splitlines():
        if b"kill_switch_all_cancelled" in line:
            router_us.append(float(orjson.loads(line)["latency_us"]))
    result: dict[str, Any] = {
        "command": "chimera bench " + " ".join(argv or []),
        "setup": "chimera sim 3000 ticks/s, 20 tokens, SNAP_QUOTE; chimera live paper; "
        "orders resting at the paper broker; halt over the control channel",
        "rounds": len(all_us),
        "open_orders_per_halt": sizes,
        "reply": stats(reply_us),
        "all_cancelled": stats(all_us),
        "router": stats(router_us) if router_us else None,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
