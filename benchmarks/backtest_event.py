"""``chimera bench backtest-event``: event-mode backtest throughput, governance and paper
fills on, beside the engine alone on the very same prints in the same run.

The full node (``tools.backtest.event.run_event``: engine, governance, router, paper broker,
a throwaway journal with ``synchronous=NORMAL``, the simulated clock) replays a seeded
random walk of 5-minute bars; the reference is ``Engine.on_frame`` with governance over the
same encoded prints and nothing else (no router, no broker, no event loop). The ratio says
what the rest of the node costs per print. Target (issue 14): >= 100k prints/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chimera_core.config import parse_config
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.logging import configure_logging
from chimera_core.physics import warm_up_kernels
from tools.backtest.data import bars_from_arrays
from tools.backtest.event import ALWAYS_OPEN_MARKET, bar_ticks, run_event
from tools.node import build_node, build_parts

TARGET_PRINTS_PER_S = 100_000
CONFIG = (
    """
[strategy]
energy_threshold = 0.05
"""
    + ALWAYS_OPEN_MARKET
    + """[logging]
decisions = "none"
level = "ERROR"
"""
)


def _walk(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.004, n))), 2)
    open_ = np.r_[100.0, close[:-1]]
    high = np.round(np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.002, n))), 2)
    low = np.round(np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.002, n))), 2)
    ts = 1_735_689_600_000 + np.arange(n, dtype=np.int64) * 300_000
    volume = rng.integers(1_000, 5_000, n).astype(np.float64)
    return bars_from_arrays(
        ts, open_, high, low, close, volume, symbol="BENCH", interval_ms=300_000
    )


def _engine_only(cfg: Any, frames: list[bytes], stamps: list[int], state: Path) -> float:
    parts = build_parts(cfg, {}, state_dir=state, with_router=False)
    engine = build_node(cfg, parts).engine
    engine.reconciled = True
    on_frame, after = engine.on_frame, engine.after_publish
    t0 = time.perf_counter()
    for frame, ts in zip(frames, stamps, strict=True):
        on_frame(frame, ts * 1_000_000)
        after()
    return time.perf_counter() - t0


def run(bars_n: int, seed: int, rounds: int) -> dict[str, Any]:
    configure_logging("ERROR")
    warm_up_kernels()
    cfg = parse_config(CONFIG)
    bars = _walk(bars_n, seed)
    ticks = list(bar_ticks(bars, "2885", 1, cfg.execution.paper.latency_ms))
    frames = [encode(t) for t in ticks]
    stamps = [t.exchange_ts_ms for t in ticks]
    node_s, engine_s, node_prints = [], [], 0
    trades = 0
    for _ in range(rounds):  # alternate, so drift on a shared machine hits both
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = asyncio.run(run_event(cfg, bars, "2885", 1, work_dir=Path(tmp)))
            node_s.append(time.perf_counter() - t0)
            node_prints, trades = result.ticks, len(result.trades)
        with tempfile.TemporaryDirectory() as tmp:
            engine_s.append(_engine_only(cfg, frames, stamps, Path(tmp)))
    node = node_prints / statistics.median(node_s)
    engine = len(frames) / statistics.median(engine_s)
    return {
        "benchmark": "backtest-event",
        "machine": {"python": platform.python_version(), "cpu": platform.processor()},
        "bars": bars_n,
        "rounds": rounds,
        "node": {
            "prints": node_prints,
            "prints_per_s": node,
            "bars_per_s": bars_n / statistics.median(node_s),
            "trades": trades,
            "seconds": node_s,
        },
        "engine_only": {"prints": len(frames), "prints_per_s": engine, "seconds": engine_s},
        "node_over_engine": node / engine,
        "target_prints_per_s": TARGET_PRINTS_PER_S,
        "meets_target": node >= TARGET_PRINTS_PER_S,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/backtest_event.json"))
    args = parser.parse_args(argv)
    result = run(args.bars, args.seed, args.rounds)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, args.json.with_suffix(".png"))
    print(
        f"event mode {result['node']['prints_per_s']:,.0f} prints/s "
        f"({result['node']['bars_per_s']:,.0f} bars/s, {result['node']['trades']} trades); "
        f"engine alone {result['engine_only']['prints_per_s']:,.0f} prints/s; "
        f"node/engine {result['node_over_engine']:.2f}; target {TARGET_PRINTS_PER_S:,}: "
        f"{'met' if result['meets_target'] else 'MISSED'}"
    )
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = ["event mode (node)", "engine alone", "target"]
    values = [
        result["node"]["prints_per_s"],
        result["engine_only"]["prints_per_s"],
        result["target_prints_per_s"],
    ]
    ax.barh(names, values, color=["tab:blue", "tab:gray", "tab:red"])
    ax.set_xlabel("prints per second")
    ax.set_title(f"event-mode backtest, {result['bars']:,} bars")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
