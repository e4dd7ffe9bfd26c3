"""``chimera bench shadow-cost``: what shadow candidates cost the hot path.

The engine's recv → decision-enqueued latency (as ``benchmarks/hot_path.py`` measures it
with telemetry on: the frame in, the decision published) on the same simulator stream,
in one run:

1. ``baseline``: one plain subscriber drains telemetry (the recorder's stand-in), no shadow;
2. ``shadow_4``: the same, plus a real ``chimera shadow`` process running the active genome
   and 4 candidates on that telemetry (5 paper nodes, their journals and black boxes).

The shadow never runs in the hot path, but it shares the machine's cores with it: the
figure is the p50/p99 change, reported as ratios against the baseline of the same run
(issue 16's goal: p99 changes by at most 10 %). JSON + histogram PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.hot_path import (
    BENCH_CONFIG,
    _engine,
    _free_port,
    _percentiles,
    _Probe,
    _start_sim,
    probe_feed,
)
from benchmarks.hot_path import _subscriber as _plain_subscriber
from chimera_core.config import parse_config
from chimera_core.event_loop import session_info
from chimera_core.logging import configure_logging
from chimera_core.physics import warm_up_kernels
from chimera_core.telemetry import TOPIC_SESSION, TelemetryPublisher

THRESHOLDS = (0.02, 0.05, 0.1, 0.3)  # the 4 candidates' energy thresholds


def _start_shadow(work: Path, endpoint: str, candidates: int) -> subprocess.Popen[bytes]:
    (work / "chimera.toml").write_text(
        '[feed]\ntokens = ["2885", "1594", "3045"]\n'
        f'[telemetry]\nendpoint = "{endpoint}"\n'
        f'[shadow]\nendpoint = "tcp://127.0.0.1:{_free_port()}"\n'
        '[logging]\nlevel = "INFO"\ndecisions = "none"\n'  # its start-up events
    )
    files = []
    for i, threshold in enumerate(THRESHOLDS[:candidates]):
        f = work / f"cand{i}.toml"
        f.write_text(f"[genome]\nenergy_threshold = {threshold}\n")
        files.append(f.name)
    log = (work / "shadow.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "shadow", "run", *files],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return proc


def _wait_subscribed(work: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until the shadow says it subscribed (a second subscription to everything is not
    reported by the XPUB socket, so the publisher cannot tell)."""
    deadline = time.monotonic() + 60
    while b"shadow_subscribed" not in (work / "shadow.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (work / "shadow.log").read_bytes()[-2000:].decode(errors="replace")
            raise RuntimeError(f"the shadow never subscribed: {tail}")
        time.sleep(0.05)
    time.sleep(0.5)  # connected: it dialled before the warm-up it has just finished


async def _stream(
    port: int, warmup_s: float, seconds: float, capacity: int, shadow: int
) -> dict[str, Any]:
    cfg = parse_config(BENCH_CONFIG.format(port=port))
    telemetry = TelemetryPublisher(
        "tcp://127.0.0.1:0", hwm=cfg.telemetry.hwm, batch=cfg.telemetry.batch
    )
    procs = [_plain_subscriber(telemetry.endpoint)]
    work = Path(tempfile.mkdtemp(prefix="chimera-bench-shadow-"))
    if shadow:
        procs.append(_start_shadow(work, telemetry.endpoint, shadow))
        try:
            _wait_subscribed(work, procs[-1])
        except RuntimeError:
            for p in procs:
                p.kill()
            raise
    while telemetry.subscriptions < 1:
        telemetry.drain_subscriptions()
        await asyncio.sleep(0.01)
    telemetry.publish(TOPIC_SESSION, session_info(cfg))  # the shadow starts its candidates
    await asyncio.sleep(3.0 if shadow else 0.0)
    probe = _Probe(_engine(cfg), capacity, 0, telemetry)  # as chimera live builds it
    rate = await probe_feed(cfg, probe, warmup_s, seconds)
    dropped = probe.dropped
    for p in procs:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    if shadow:
        statuses = [json.loads(f.read_text()) for f in work.glob("data/shadow/*/status.json")]
        shadow_figures = {
            s["candidate"]: {k: s[k] for k in ("ticks", "divergences", "trades", "joined_late")}
            for s in statuses
        }
    else:
        shadow_figures = {}
    telemetry.close()
    lat = probe.lat[: probe.n].copy()
    return {
        "candidates": shadow,
        "rate_achieved": round(rate),
        "telemetry_dropped": dropped,
        "shadow": shadow_figures,
        **_percentiles(lat),
        "_lat": lat,
    }


def _plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, r in runs.items():
        us = np.maximum(r["_lat"] / 1000.0, 0.1)
        bins = np.logspace(np.log10(us.min()), np.log10(us.max()), 120)
        ax.hist(us, bins=bins.tolist(), histtype="step", density=True,
                label=f"{name}: p50 {r['p50_us']} µs, p99 {r['p99_us']} µs")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("recv → decision enqueued (µs, log scale)")
    ax.set_ylabel("density")
    ax.set_title("Hot-path latency with and without a shadow of 4 candidates")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chimera bench shadow-cost", description=__doc__)
    parser.add_argument("--json", default="benchmarks/results/shadow_cost.json")
    parser.add_argument("--rate", type=float, default=2_000.0, help="ticks/s from the simulator")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--candidates", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs per side")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    warm_up_kernels()
    gc.freeze()
    import uvloop

    capacity = int(args.rate * args.seconds * 2) + 1000
    # Alternated, so load from outside (other processes on the box) that drifts during the
    # run falls on both sides; each side's latencies are pooled over its repeats.
    parts: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for name, n in (("baseline", 0), (f"shadow_{args.candidates}", args.candidates)):
            port = _free_port()
            sim = _start_sim(port, args.rate, args.seed)
            try:
                one = uvloop.run(_stream(port, args.warmup, args.seconds, capacity, n))
            finally:
                sim.terminate()
                sim.wait(10)
            parts.setdefault(name, []).append(one)
    runs: dict[str, dict[str, Any]] = {}
    for name, ps in parts.items():
        lat = np.concatenate([p["_lat"] for p in ps])
        runs[name] = {
            "candidates": ps[0]["candidates"],
            "repeats": len(ps),
            "rate_achieved": round(float(np.mean([p["rate_achieved"] for p in ps]))),
            "telemetry_dropped": sum(p["telemetry_dropped"] for p in ps),
            "shadow": ps[-1]["shadow"],
            "p99_us_per_repeat": [p["p99_us"] for p in ps],
            **_percentiles(lat),
            "_lat": lat,
        }
    base, shadow = runs["baseline"], runs[f"shadow_{args.candidates}"]
    result: dict[str, Any] = {
        "command": "chimera bench shadow-cost " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "rate_requested": args.rate,
        "load_average_at_end": os.getloadavg(),
        **{k: {f: v for f, v in r.items() if f != "_lat"} for k, r in runs.items()},
        "p50_ratio": round(shadow["p50_us"] / base["p50_us"], 3),
        "p99_ratio": round(shadow["p99_us"] / base["p99_us"], 3),
        "goal_p99_ratio_max": 1.10,
    }  # fmt: skip
    result["meets_goal"] = result["p99_ratio"] <= result["goal_p99_ratio_max"]
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(runs, out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
