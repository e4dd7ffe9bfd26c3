"""``chimera bench bot-halt``: an operator's Telegram ``/halt`` to the engine halted.

A real ``chimera sim``, a real ``chimera live`` (paper) and a real ``chimera bot`` long-polling
a local Bot API stand-in (``tools.sim.telegram``), all on 127.0.0.1. Each round pushes a
``/halt`` from an allow-listed user to the stand-in and takes the wall time until

- ``applied``: the engine's ``control`` telemetry record of the halt arrives here (the
  engine has halted: the record is published after the command is applied), and
- ``answered``: the bot's "halt: done" reply reaches the stand-in (what the operator sees),

then resumes over the control channel. The reference, in the same run and on the same
engine: the same halt sent straight over the control channel (``ControlClient``), timed to
the same telemetry record: the floor the bot adds its poll, parse and reply to. Issue 21's
goal: an allow-listed ``/halt`` halts the engine within a second (p99 of ``applied``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.hot_path import _free_port
from benchmarks.notify_latency import _stats

GOAL_MS = 1000.0
REPO = Path(__file__).resolve().parents[1]
OPERATOR = 424242
BOT_TOKEN = "700000001:AAH-standin-token-for-bench-only-x9Qz"


def _wait_port(port: int, timeout_s: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def _halt_seen(sub: Any, decode: Any, deadline: float) -> float:
    """Wall time (perf_counter) at which the engine's record of an applied halt arrives."""
    while time.perf_counter() < deadline:
        message = sub.recv(50)
        if message is None:
            continue
        ev = decode(message[message.index(b"\x00") + 9 :])
        if ev.command == "halt" and ev.ok:
            return time.perf_counter()
    raise RuntimeError("the engine never recorded the halt")


def run(rounds: int, rate: float) -> dict[str, Any]:
    from chimera_core.contracts import ControlEvent
    from chimera_core.control import ControlClient
    from chimera_core.telemetry import TOPIC_CONTROL, TelemetrySubscriber, decoder_for
    from tools.sim.telegram import TelegramStandIn

    sim_port, tel_port, ctl_port = _free_port(), _free_port(), _free_port()
    api = TelegramStandIn(BOT_TOKEN).start()
    tmp = Path(tempfile.mkdtemp(prefix="chimera-bench-bot-"))
    (tmp / "chimera.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nwait_for_subscriber_s = 0\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\ntimeout_s = 10.0\n'
        f'[bot]\nallowed_users = [{OPERATOR}]\notp = false\napi_url = "{api.api_url}"\n'
        "poll_timeout_s = 10\napprovals_poll_s = 5\nstale_after_s = 60\n"
    )
    (tmp / ".env").write_text(f"CHIMERA_TELEGRAM_BOT_TOKEN={BOT_TOKEN}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = [sys.executable, "-m", "tools.cli"]

    def start(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*cli, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=tmp, env=env)  # fmt: skip

    procs = [start("sim", "--port", str(sim_port), "--rate", str(rate))]
    decode = decoder_for(TOPIC_CONTROL, ControlEvent)
    applied: list[float] = []
    answered: list[float] = []
    direct: list[float] = []
    try:
        _wait_port(sim_port)
        procs.append(start("live"))
        _wait_port(ctl_port)
        token_file = tmp / "data" / "control.token"
        deadline = time.monotonic() + 60
        while not token_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the engine never wrote its control token")
            time.sleep(0.1)
        procs.append(start("bot"))
        deadline = time.monotonic() + 60
        while "getUpdates" not in api.calls:
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise RuntimeError("the bot never polled the stand-in")
            time.sleep(0.05)
        sub = TelemetrySubscriber(f"tcp://127.0.0.1:{tel_port}", topics=(TOPIC_CONTROL,))
        client = ControlClient(
            f"tcp://127.0.0.1:{ctl_port}", token_file.read_text().strip(), 10.0, by="bench"
        )
        time.sleep(1.0)  # the subscription reaches the engine
        try:
            for i in range(rounds):
                # Through the bot: the operator's message to the halt applied, then answered.
                before = len(api.messages_to(OPERATOR))
                t0 = time.perf_counter()
                api.push_message(OPERATOR, "/halt")
                applied.append((_halt_seen(sub, decode, t0 + 30) - t0) * 1000)
                api.wait_for(OPERATOR, lambda m: "halt: done" in m["text"], after=before)
                answered.append((time.perf_counter() - t0) * 1000)
                client.request("resume")
                time.sleep(0.2)
                # The reference: the same halt straight over the control channel.
                t0 = time.perf_counter()
                client.request("halt")
                direct.append((_halt_seen(sub, decode, t0 + 30) - t0) * 1000)
                client.request("resume")
                time.sleep(0.2 + 0.05 * (i % 3))
        finally:
            client.close()
            sub.close()
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        api.stop()
    a, d = _stats(applied), _stats(direct)
    return {
        "benchmark": "bot_halt",
        "command": "chimera bench bot-halt " + f"--rounds {rounds} --rate {rate:g}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rounds": rounds,
        "sim_rate": rate,
        "bot_applied": a,
        "bot_answered": _stats(answered),
        "direct_control": d,
        "p50_over_direct": round(a["p50_ms"] / d["p50_ms"], 2) if d["p50_ms"] else None,
        "goal_p99_ms": GOAL_MS,
        "meets_goal": a["p99_ms"] <= GOAL_MS,
        "samples_ms": {"applied": applied, "answered": answered, "direct": direct},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rate", type=float, default=2000.0, help="simulator ticks/s")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/bot_halt.json"))
    args = parser.parse_args(argv)
    result = run(args.rounds, args.rate)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, args.json.with_suffix(".png"))
    a, w, d = result["bot_applied"], result["bot_answered"], result["direct_control"]
    print(
        f"bot /halt → engine halted p50 {a['p50_ms']} ms p99 {a['p99_ms']} ms max {a['max_ms']} "
        f"ms; → reply p50 {w['p50_ms']} ms p99 {w['p99_ms']} ms; control channel direct p50 "
        f"{d['p50_ms']} ms p99 {d['p99_ms']} ms (bot/direct p50 {result['p50_over_direct']}); "
        f"goal p99 <= {GOAL_MS:.0f} ms: {'met' if result['meets_goal'] else 'MISSED'}"
    )
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples_ms"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([s["direct"], s["applied"], s["answered"]], showfliers=True)
    ax.set_xticks([1, 2, 3], ["control direct", "bot → halted", "bot → reply"])
    ax.axhline(GOAL_MS, color="r", linestyle="--", label=f"goal {GOAL_MS:.0f} ms")
    ax.set_ylabel("ms")
    ax.set_yscale("log")
    ax.set_title(f"/halt latency, {result['rounds']} rounds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
