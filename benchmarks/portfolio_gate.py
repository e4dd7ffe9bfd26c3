"""The portfolio gate's cost per intent with 50 open positions, against today's meta-risk
check in the same run.

``portfolio``: ``PortfolioRisk.size`` + ``PortfolioRisk.vetoes`` with every rule on (risk
sizing, order value, volatility target, correlation cluster, budgets, VaR and CVaR at a
250-bar window over 50 symbols); ``meta_risk``: ``MetaRisk.update`` (a real SQLite state
file). Each intent gets a fresh account snapshot, as in the engine, and is timed alone
(``perf_counter_ns``); the statistics' refresh after a closed bar is timed separately
(``refresh``): it runs once per bar, not per intent.

    python -m benchmarks.portfolio_gate [--n 20000] [--json benchmarks/results/portfolio_gate.json]
"""

from __future__ import annotations

import os

# One BLAS thread, as the engine's process should run on a shared 2-core box: OpenBLAS's
# threads fight other processes for the cores and make the per-bar covariance 10x slower.
# Set before numpy is imported; an explicit setting in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from chimera_core.config import PortfolioConfig
from chimera_core.contracts import AccountSnapshot, Side
from chimera_governance.meta_risk import MetaRisk, MetaRiskLimits
from chimera_governance.portfolio import PortfolioRisk

N_POS = 50
T0 = 1_764_000_000_000  # Mon 24 Nov 2025 16:00 UTC; intents at 04:00 UTC = 09:30 IST
OPEN = 1_764_043_200_000 + 15 * 60_000
CFG = PortfolioConfig(
    risk_sizing=True,
    max_order_fraction=0.2,
    max_entries_per_session=1_000_000,
    max_orders_per_minute=100_000,
    var_limit=0.5,
    cvar_limit=0.5,
    returns_window=250,
    cluster_rho=0.8,
    cluster_max_exposure=5.0,
    vol_target=0.5,
)


def _pct(xs: list[int]) -> dict[str, float]:
    a = np.array(xs, dtype=float) / 1000.0
    return {k: float(np.percentile(a, q)) for k, q in (("p50_us", 50), ("p99_us", 99))} | {
        "mean_us": float(a.mean())
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.portfolio_gate")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--json", default="benchmarks/results/portfolio_gate.json")
    args = parser.parse_args(argv)
    tokens = [str(3000 + i) for i in range(N_POS)]
    rng = np.random.default_rng(1)
    rets = 0.6 * rng.normal(0, 0.002, (300, 1)) + 0.8 * rng.normal(0, 0.002, (300, N_POS))
    closes = 100.0 * np.cumprod(1.0 + rets, axis=0)
    risk = PortfolioRisk(
        CFG, tokens=tokens, stop_atr_multiple=2.0, costs=(47.3, 1e-4, 3e-4), horizon=375
    )
    refresh: list[int] = []
    for i in range(closes.shape[0]):
        for j, t in enumerate(tokens):
            risk.on_bar(t, OPEN - 300 * 60_000 + i * 60_000, float(closes[i, j]))
        if i >= 250:
            t0 = time.perf_counter_ns()
            risk.stats()
            refresh.append(time.perf_counter_ns() - t0)
    marks = {t: float(closes[-1, j]) for j, t in enumerate(tokens)}
    positions = {t: (10 if j % 3 else -10) for j, t in enumerate(tokens)}
    gross = sum(abs(q) * marks[t] for t, q in positions.items())
    net = sum(q * marks[t] for t, q in positions.items())
    acct = AccountSnapshot(
        cash=10_000_000.0 - net, equity=10_000_000.0, realized_pnl=0.0, unrealized_pnl=0.0,
        charges=0.0, gross_exposure=gross, net_exposure=net, open_positions=N_POS,
        positions=positions, working={}, entries=dict.fromkeys(positions, 1), marks=marks,
    )  # fmt: skip
    gc.collect()
    gc.freeze()  # as run_live does: start-up objects never rescanned by the collector
    with tempfile.TemporaryDirectory() as tmp:
        # Limits wide enough that the reference allows (a veto would add its debug log).
        limits = MetaRiskLimits(
            max_open_positions=1000, max_trades_per_day=1000, max_position_value=1e12
        )
        meta = MetaRisk(Path(tmp) / "meta_risk.db", limits)
        port_ns: list[int] = []
        meta_ns: list[int] = []
        allowed = 0
        for k in range(args.n):
            # A fresh snapshot per intent, as the engine builds one (no cache carries over).
            acct = msgspec.structs.replace(acct, positions=dict(positions))
            token = tokens[k % N_POS]
            price = marks[token]
            ts = OPEN + k
            t0 = time.perf_counter_ns()
            qty, v = risk.size(acct, token, Side.BUY, 1_000, price, 0.5, 1)
            v += risk.vetoes(acct, token, Side.BUY, qty, price, ts, 20251125)
            t1 = time.perf_counter_ns()
            meta_out = meta.update(
                token=token, exchange_ts_ms=ts, confidence=0.9, spread_pct=0.05,
                feed_stale=False, open_positions=N_POS, position_value=qty * price,
                trades_today_symbol=0, equity=acct.equity,
            )  # fmt: skip
            t2 = time.perf_counter_ns()
            port_ns.append(t1 - t0)
            meta_ns.append(t2 - t1)
            allowed += not v and qty > 0
            assert meta_out.allowed, meta_out.vetoes
        meta.close()
    port, ref = _pct(port_ns), _pct(meta_ns)
    result = {
        "benchmark": "portfolio_gate",
        "open_positions": N_POS,
        "returns_window": CFG.returns_window,
        "intents": args.n,
        "allowed": allowed,
        "portfolio": port,
        "meta_risk": ref,
        "refresh_per_bar": _pct(refresh),
        "ratio_p99_portfolio_over_meta_risk": port["p99_us"] / ref["p99_us"],
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", ""),
        "load_average_1m": os.getloadavg()[0],
        "goal_p99_us": 20.0,
        "goal_met": port["p99_us"] <= 20.0,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    _plot(port_ns, meta_ns, out.with_suffix(".png"))
    print(json.dumps(result, indent=2))
    return 0


def _plot(port_ns: list[int], meta_ns: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    hi = float(np.percentile(np.array(port_ns + meta_ns) / 1000.0, 99.5))
    bins = [float(x) for x in np.linspace(0, hi, 80)]
    ax.hist(np.array(port_ns) / 1000.0, bins=bins, alpha=0.6, label="portfolio gate")
    ax.hist(np.array(meta_ns) / 1000.0, bins=bins, alpha=0.6, label="meta-risk check (today)")
    ax.axvline(20.0, color="red", linestyle="--", label="goal p99 20 µs")
    ax.set_xlabel("µs per intent (50 open positions)")
    ax.set_ylabel("intents")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
