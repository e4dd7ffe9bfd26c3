"""``chimera stress`` Monte Carlo: 1,000 paths over ten years of daily bars (2,520), goal
≤ 5 s, against a plain-Python-loop reference on a subset of the same paths in the same run.

``vectorised``: the whole Monte Carlo as ``chimera stress`` runs it (``monte_carlo``: daily
returns, arch's optimal block length, arch's stationary-bootstrap indices, the (N, T)
numpy path statistics, percentiles; and the trade-order resampling of 1,260 trades).
``loop``: the same bootstrap indices turned into equity, drawdown and underwater runs by
plain Python loops, per path, on ``--loop-paths`` of them; its time per path × N is the
reference the ratio is taken against. The loop is given the bootstrap indices (arch's,
not timed) and the vectorised run is timed whole, so the ratio understates the numpy gain
on the path statistics alone; ``ratio_loop_over_path_stats_only`` is that one (the same
indices through ``returns_paths``).

``fast_reprice``: the issue's number, 1,000 price paths of 2,520 daily bars each re-run
through fast mode (``reprice_monte_carlo``, ma_cross, equity-fraction sizing), timed whole.

    python -m benchmarks.stress_mc [--paths 1000] [--json benchmarks/results/stress_mc.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chimera_core.config import load_config
from tools.backtest.report import result_json
from tools.stress.montecarlo import Limits, bootstrap_indices, daily_returns, returns_paths
from tools.stress.reprice import reprice_monte_carlo
from tools.stress.run import Backtest, load_backtest, monte_carlo
from tools.stress.scenarios import StressBars

DAY_MS = 86_400_000
DAYS = 2_520  # ten years of trading days


def _backtest_dir(root: Path, seed: int = 0) -> Path:
    """A result directory like ``chimera backtest`` writes: daily equity, a trade every
    second day."""
    rng = np.random.default_rng(seed)
    ts = (np.arange(DAYS, dtype=np.int64) + 16_000) * DAY_MS
    r = rng.standard_t(4, DAYS) * 0.008 + 0.0003
    equity = 1e6 * np.cumprod(1.0 + r)
    (root / "result.json").write_bytes(result_json({"starting_equity": 1e6}))
    with (root / "equity.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ts_ms", "close", "equity"])
        w.writerows([[int(t), 100.0, float(e)] for t, e in zip(ts, equity, strict=True)])
    with (root / "trades.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["token", "exit_ts_ms", "pnl"])
        w.writerows([["X", int(ts[i]) + 1, float(rng.normal(40, 4000))] for i in range(0, DAYS, 2)])
    return root


def _bars(bt: Backtest) -> StressBars:
    """Daily bars priced like the equity curve (a price series of the same length)."""
    rng = np.random.default_rng(1)
    c = np.round(bt.equity / 1e4, 2)
    o = np.round(np.r_[c[0], c[:-1]] * (1 + rng.normal(0, 0.003, c.size)), 2)
    h = np.round(np.maximum(o, c) * (1 + rng.uniform(0, 0.01, c.size)), 2)
    lo = np.round(np.minimum(o, c) * (1 - rng.uniform(0, 0.01, c.size)), 2)
    return StressBars(bt.ts_ms + 4 * 3_600_000, o, h, lo, c, np.full(c.size, 1e5), DAY_MS, "UTC")


def _loop_path(returns: list[float], idx: list[int], start: float) -> tuple[float, float, int]:
    e, peak, worst, run, longest = start, start, 0.0, 0, 0
    for j in idx:
        e *= 1.0 + returns[j]
        if e >= peak:
            peak, run = e, 0
        else:
            run += 1
            longest = max(longest, run)
        worst = max(worst, 1.0 - e / peak)
    return e / start - 1.0, worst, longest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.stress_mc")
    p.add_argument("--paths", type=int, default=1000)
    p.add_argument("--loop-paths", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/stress_mc.json")
    args = p.parse_args(argv)
    lim = Limits(0.02, 0.10, 0.5)
    with tempfile.TemporaryDirectory(prefix="stress-mc-") as tmp:
        bt = load_backtest(_backtest_dir(Path(tmp)))
        monte_carlo(bt, lim, paths=10, seed=0)  # imports and arch's first-call costs
        vec: list[float] = []
        for k in range(args.repeats):
            t0 = time.perf_counter()
            out, _ = monte_carlo(bt, lim, paths=args.paths, seed=k)
            vec.append(time.perf_counter() - t0)
        returns, _ = daily_returns(bt.ts_ms, bt.equity, bt.start_equity)
        block = out["returns_bootstrap"]["block_length"]
        idx = bootstrap_indices(returns.size, args.loop_paths, block, seed=0)
        full_idx = bootstrap_indices(returns.size, args.paths, block, seed=0)
        stats_only: list[float] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            returns_paths(returns, bt.start_equity, full_idx)
            stats_only.append(time.perf_counter() - t0)
        rl = returns.tolist()
        t0 = time.perf_counter()
        loop = [_loop_path(rl, row, bt.start_equity) for row in idx.tolist()]
        loop_s = time.perf_counter() - t0
        bars = _bars(bt)
        cfg = load_config(Path(__file__).resolve().parents[1] / "chimera.example.toml")
        fs = {"sizing": "equity_fraction", "equity_fraction": 1.0}
        reprice_monte_carlo(cfg, bars, "ma_cross", None, lim, paths=5, fast_settings=fs)
        rep: list[float] = []
        for k in range(args.repeats):
            t0 = time.perf_counter()
            rout, _ = reprice_monte_carlo(
                cfg, bars, "ma_cross", None, lim, paths=args.paths, seed=k, fast_settings=fs
            )
            rep.append(time.perf_counter() - t0)
    loop_per_path = loop_s / args.loop_paths
    best = min(vec)
    result = {
        "what": "chimera stress Monte Carlo, returns bootstrap + trade order, 10 y daily bars",
        "days": DAYS,
        "paths": args.paths,
        "trades": int(bt.trade_pnl.size),
        "vectorised_s": vec,
        "vectorised_best_s": best,
        "goal_s": 5.0,
        "meets_goal": best <= 5.0,
        "loop_paths": args.loop_paths,
        "loop_s": loop_s,
        "loop_s_per_path": loop_per_path,
        "loop_estimate_s_for_all_paths": loop_per_path * args.paths,
        "ratio_loop_over_vectorised": loop_per_path * args.paths / best,
        "path_stats_only_best_s": min(stats_only),
        "ratio_loop_over_path_stats_only": loop_per_path * args.paths / min(stats_only),
        "loop_checksum": sum(f for f, _, _ in loop),
        "fast_reprice_s": rep,
        "fast_reprice_best_s": min(rep),
        "fast_reprice_meets_goal": min(rep) <= 5.0,
        "fast_reprice_trades_p50": rout["trades"]["p50"],
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, path.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ["returns+trades\n(best)", "plain loop\n(estimated)", "prices → fast mode\n(best)"]
    values = [
        float(result["vectorised_best_s"]),
        float(result["loop_estimate_s_for_all_paths"]),
        float(result["fast_reprice_best_s"]),
    ]
    ax.bar(names, values, color=["tab:blue", "tab:grey", "tab:green"])
    ax.axhline(5.0, color="tab:red", linestyle="--", label="goal 5 s")
    ax.set_ylabel(f"seconds for {result['paths']} paths × {result['days']} days")
    ax.set_title(f"chimera stress Monte Carlo (×{result['ratio_loop_over_vectorised']:.1f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
