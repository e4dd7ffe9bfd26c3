"""``chimera bench notify``: event-to-delivery latency of ``chimera notify`` to a webhook.

A real ``chimera notify`` process subscribes to a telemetry publisher in this process
(ZeroMQ on 127.0.0.1) and delivers to an aiohttp webhook receiver here (apprise json://).
Each event is an ``exec`` REJECTED report carrying its number; latency is wall time from
the publish to the webhook's receipt of the alert (one clock: one machine). The reference,
in the same run: apprise posting the same alert straight to the same receiver (the
delivery floor notify cannot beat); the ratio says what the SUB, rules, outbox write and
ordered delivery add. Goal: p99 <= 500 ms.

``--hot-path``: the engine's recv → decision-enqueued latency on a simulator stream, with
telemetry drained by a plain subscriber (as the recorder does), then the same with a real
``chimera notify`` subscribed as well, alternated (A B A B) in one run; goal: p99 within 5 %.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from chimera_core.contracts import ExecKind, ExecutionReport, Side
from chimera_core.telemetry import TOPIC_EXEC, TelemetryPublisher

GOAL_P99_MS = 500.0
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """aiohttp on 127.0.0.1 in a thread: (arrival wall ns, message) per POST."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[int, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from aiohttp import web

        ready = threading.Event()

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            self.got.append((time.time_ns(), str(body.get("message", ""))))
            return web.Response(text="ok")

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/hook", handle)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def _reject(i: int) -> ExecutionReport:
    return ExecutionReport(ExecKind.REJECTED, f"bench-{i}", f"bench-{i}", "2885", Side.BUY, 1, 0,
                           0.0, reason="benchmark")  # fmt: skip


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def _direct(port: int, receiver: Receiver, n: int, gap_s: float) -> list[float]:
    """The reference: apprise straight to the receiver, as notify's channel sends."""
    from tools.notify.channels import Channel

    channel = Channel("bench", [f"json://127.0.0.1:{port}/hook"], "benchmark")
    out = []

    async def go() -> None:
        for i in range(n):
            before = len(receiver.got)
            t0 = time.time_ns()
            await channel.send("[WARNING] chimera broker_reject", f"direct {i}", "warning")
            while len(receiver.got) == before:
                await asyncio.sleep(0.0005)
            out.append((receiver.got[-1][0] - t0) / 1e6)
            await asyncio.sleep(gap_s)

    asyncio.run(go())
    return out


def run(n: int, gap_s: float) -> dict[str, Any]:
    port, tel_port = _free_port(), _free_port()
    receiver = Receiver(port)
    receiver.start()
    tmp = Path(tempfile.mkdtemp(prefix="chimera-bench-notify-"))
    (tmp / "chimera.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{_free_port()}"\n'
        "[notify]\nrate_limit = 1000000\ndaily_report_after_min = -1\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "CHIMERA_NOTIFY_URLS": f"json://127.0.0.1:{port}/hook"}  # fmt: skip
    publisher = TelemetryPublisher(f"tcp://127.0.0.1:{tel_port}", 100_000)
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "notify"], cwd=tmp, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        # Until notify is subscribed and delivering: warm-up events, not measured.
        deadline = time.monotonic() + 60
        while not receiver.got:
            assert time.monotonic() < deadline, "chimera notify delivered nothing"
            publisher.publish(TOPIC_EXEC, _reject(-1))
            time.sleep(0.2)
        time.sleep(0.5)
        receiver.got.clear()
        sent: dict[int, int] = {}
        for i in range(n):
            sent[i] = time.time_ns()
            publisher.publish(TOPIC_EXEC, _reject(i))
            time.sleep(gap_s)
        deadline = time.monotonic() + 30
        while len(receiver.got) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        latency = []
        for at, message in receiver.got:
            m = re.search(r"bench-(\d+)", message)
            if m and int(m.group(1)) in sent:
                latency.append((at - sent[int(m.group(1))]) / 1e6)
        direct = _direct(port, receiver, min(n, 200), gap_s)
    finally:
        proc.terminate()
        proc.wait(30)
        publisher.close()
        receiver.stop()
    notify, reference = _stats(latency), _stats(direct)
    return {
        "benchmark": "notify_latency",
        "events": n,
        "gap_ms": gap_s * 1000,
        "delivered": len(latency),
        "notify": notify,
        "direct_apprise": reference,
        "p50_over_direct": round(notify["p50_ms"] / reference["p50_ms"], 2),
        "goal_p99_ms": GOAL_P99_MS,
        "meets_goal": notify["p99_ms"] <= GOAL_P99_MS and len(latency) == n,
        "samples_ms": [round(x, 3) for x in latency],
        "direct_samples_ms": [round(x, 3) for x in direct],
    }


async def _hot_stream(port: int, warmup_s: float, seconds: float, notify_dir: Path | None,
                      hook_port: int) -> dict[str, Any]:  # fmt: skip
    """One stream through the engine with telemetry drained by a plain subscriber, and,
    with ``notify_dir``, a real chimera notify subscribed too."""
    from benchmarks.hot_path import (
        BENCH_CONFIG,
        _engine,
        _percentiles,
        _Probe,
        _subscriber,
        probe_feed,
    )  # fmt: skip
    from chimera_core.config import parse_config

    cfg = parse_config(BENCH_CONFIG.format(port=port))
    telemetry = TelemetryPublisher(
        "tcp://127.0.0.1:0", hwm=cfg.telemetry.hwm, batch=cfg.telemetry.batch
    )
    procs = [_subscriber(telemetry.endpoint)]
    if notify_dir is not None:
        (notify_dir / "chimera.toml").write_text(
            f'data_dir = "{notify_dir / "data"}"\n'
            f'[telemetry]\nendpoint = "{telemetry.endpoint}"\n'
            f'[control]\nendpoint = "tcp://127.0.0.1:{_free_port()}"\n'
        )
        env = {**os.environ, "PYTHONPATH": str(REPO),
               "CHIMERA_NOTIFY_URLS": f"json://127.0.0.1:{hook_port}/hook"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "tools.cli", "notify"],
                                      cwd=notify_dir, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))  # fmt: skip
    while telemetry.subscriptions < len(procs):
        telemetry.drain_subscriptions()
        await asyncio.sleep(0.01)
    capacity = 2_000_000
    probe = _Probe(_engine(cfg), capacity, 0, telemetry)
    await probe_feed(cfg, probe, warmup_s, seconds)
    for proc in procs:
        proc.terminate()
        proc.wait(30)
    telemetry.close()
    return _percentiles(probe.lat[: probe.n])


def hot_path(rate: float, seconds: float, rounds: int) -> dict[str, Any]:
    import uvloop

    from benchmarks.hot_path import _start_sim
    from chimera_core.logging import configure_logging
    from chimera_core.physics import warm_up_kernels

    configure_logging("WARNING")
    warm_up_kernels()
    hook_port = _free_port()
    receiver = Receiver(hook_port)
    receiver.start()
    runs: dict[str, list[dict[str, Any]]] = {"without_notify": [], "with_notify": []}
    try:
        for _ in range(rounds):
            for key in runs:
                port = _free_port()
                sim = _start_sim(port, rate, 7)
                notify_dir = (
                    Path(tempfile.mkdtemp(prefix="chimera-bench-hot-")) if key == "with_notify"
                    else None
                )  # fmt: skip
                try:
                    runs[key].append(uvloop.run(_hot_stream(port, 3.0, seconds, notify_dir,
                                                            hook_port)))  # fmt: skip
                finally:
                    sim.terminate()
                    sim.wait(10)
    finally:
        receiver.stop()
    med = {k: {m: float(np.median([r[m] for r in v])) for m in ("p50_us", "p99_us")}
           for k, v in runs.items()}  # fmt: skip
    change = med["with_notify"]["p99_us"] / med["without_notify"]["p99_us"] - 1
    return {
        "rate": rate,
        "seconds": seconds,
        "rounds": runs,
        "median": med,
        "p99_change": round(change, 4),
        "goal_p99_change": 0.05,
        "meets_goal": change <= 0.05,
    }


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key, label in (("samples_ms", "chimera notify (publish → webhook)"),
                       ("direct_samples_ms", "apprise straight to the webhook")):  # fmt: skip
        xs = np.sort(np.asarray(result[key]))
        ax.plot(xs, np.linspace(0, 1, xs.size), label=label)
    ax.axvline(result["goal_p99_ms"], color="red", linestyle="--", label="goal p99 500 ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of alerts")
    n = result["notify"]
    ax.set_title(f"event → delivery: p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between two events")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/notify_latency.json"))
    parser.add_argument("--hot-path", action="store_true", help="also: hot path with/without")
    parser.add_argument("--rate", type=float, default=5_000.0, help="--hot-path ticks/s")
    parser.add_argument("--seconds", type=float, default=8.0, help="--hot-path measured s/run")
    parser.add_argument("--rounds", type=int, default=2, help="--hot-path A/B rounds")
    args = parser.parse_args(argv)
    result = run(args.events, args.gap_ms / 1000)
    if args.hot_path:
        result["hot_path"] = hot_path(args.rate, args.seconds, args.rounds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, args.json.with_suffix(".png"))
    n, d = result["notify"], result["direct_apprise"]
    print(
        f"notify event→webhook p50 {n['p50_ms']} ms p99 {n['p99_ms']} ms max {n['max_ms']} ms "
        f"({result['delivered']}/{result['events']} delivered); apprise direct p50 "
        f"{d['p50_ms']} ms p99 {d['p99_ms']} ms; ratio p50 {result['p50_over_direct']}; goal "
        f"p99 <= {GOAL_P99_MS:.0f} ms: {'met' if result['meets_goal'] else 'MISSED'}"
    )
    if args.hot_path:
        h = result["hot_path"]
        print(
            f"hot path recv→decision p99 (median of {args.rounds}): without notify "
            f"{h['median']['without_notify']['p99_us']:.1f} µs, with "
            f"{h['median']['with_notify']['p99_us']:.1f} µs ({h['p99_change']:+.1%}; goal "
            f"≤ +5 %: {'met' if h['meets_goal'] else 'MISSED'})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
