"""``chimera bench backtest``: fast-mode speed on a 1M-bar series, against vectorbt and
backtesting.py on the same strategy, in one run on one data set.

Measured (bars per second = bars / wall time of one backtest, median of ``--repeat`` runs
after a JIT warm-up; backtesting.py, a per-bar Python loop, runs once):

1. ``ma_cross``: our fast moving-average crossover (``tools.backtest.fast.ma_cross``, the
   public call with its input checks and its rounding to paise, timed; and the njit
   kernel alone), vectorbt (``vbt.MA.run`` + ``Portfolio.from_signals``) and
   backtesting.py (``Backtest.run`` with the SMA crossover ``Strategy`` of its docs,
   ``crossover``): enter long when the fast SMA crosses above the slow one (below at the
   previous close, above at this one), exit while it is below; 100 units, fills at the
   signal bar's close (``fill="close"``, the references' rule; chimera's default, the
   next bar's open, is event mode's), 0.05 % commission per fill, no slippage, no
   brackets. Agreement is checked on a run of ours that takes the prices as given
   (``price_divisor=0``), as the references do. backtesting.py first calls ``next()`` on
   bar 50, where a cross of bars 49/50 is the earliest any of the three can see. The
   three final equities must agree: ours charges each fill in whole paise (as
   ``ChargeCalculator``: percent of turnover, rounded half-up), the references in exact
   floats, so they differ by at most half a paisa per fill; the same run without charges
   must agree to float rounding (1e-6).
2. ``default``: the default econophysics strategy (rolling kernels, the dated NSE cash
   charge schedule, ATR brackets), decided once per bar close.
   ``default_per_print``: the same strategy decided on every print event mode replays
   (``tools.backtest.prints``, the one that makes event mode's trades), timed beside the
   per-close run on the same settings (1 unit per entry), with the ratio.
3. ``kernels``: energy + z + band over the series, ``chimera_core.physics``' per-bar
   recompute (today's live kernels) against the O(1) rolling ones.

Targets: ma_cross >= 20M bars/s and >= 3x vectorbt's median; default >= 20M bars/s.
vectorbt and backtesting.py are the ``bench`` extra (``pip install -e '.[bench]'``); without
them their rows say "skipped" and why. Results: JSON (``--json``) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chimera_core import physics
from tools.backtest import fast, rolling
from tools.backtest.fast import FastSettings

TARGET_BARS_PER_S = 20e6
TARGET_VS_VECTORBT = 3.0
FAST_WINDOW, SLOW_WINDOW = 10, 50
QTY = 100
FEE = 0.0005  # fraction of traded value per fill (0.05 %)
INITIAL = 1_000_000.0
DEFAULT_PARAMS: dict[str, Any] = {
    "energy_lookback": 20,
    "z_lookback": 60,
    "band_lookback": 140,
    "band_k": 2.0,
    "energy_threshold": 0.03,
}


def make_bars(n: int, seed: int) -> dict[str, np.ndarray]:
    """A geometric random walk (0.1 % per bar) with opens gapping from the previous close
    and highs / lows around both. Prices are not rounded to paise: on a price grid two
    moving averages can be exactly equal, and where they are the references' float
    rounding (not the market) decides whether they crossed."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.001, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(rng.normal(0.0, 0.0002, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0.0, 0.0005, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0.0, 0.0005, n)))
    volume = rng.integers(1, 10_000, n).astype(np.float64)
    return {"open": open_, "high": high, "low": low, "close": close, "volume": volume}


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def rate(n: int, times: list[float]) -> float:
    return n / statistics.median(times)


def ma_settings(fees: bool, price_divisor: float = 0.0) -> FastSettings:
    """The references' rules; prices as given (``price_divisor`` 0) unless told, as they
    take them."""
    return FastSettings(
        fill="close",
        price_divisor=price_divisor,
        commission="percent" if fees else "none",
        commission_pct=FEE * 100,
        slippage_bps=0.0,
        sizing="fixed",
        qty=QTY,
        initial_equity=INITIAL,
        long_only=True,
        brackets=False,
        cooldown_bars=0,
        max_position_value=1e12,
        max_position_qty=10**9,
        max_gross_exposure=1e6,
        max_net_exposure=1e6,
    )


def bench_ours(b: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    n = b["close"].size
    # Timed as a user calls it: the bars rounded to paise first (the default).
    s = ma_settings(True, price_divisor=100.0)
    fast.warm_up()

    def public() -> fast.FastResult:
        return fast.ma_cross(
            b["open"],
            b["high"],
            b["low"],
            b["close"],
            b["volume"],
            settings=s,
            fast=FAST_WINDOW,
            slow=SLOW_WINDOW,
        )

    public()  # compile for these types (or load the cache)
    times, _ = timed(public, repeat)
    # Compared with the references on the prices they see, as given.
    result = fast.ma_cross(
        b["open"],
        b["high"],
        b["low"],
        b["close"],
        settings=ma_settings(True),
        fast=FAST_WINDOW,
        slow=SLOW_WINDOW,
    )
    starts, table = fast.charge_table(s)
    versions = fast.charge_versions(starts, None, n)
    p = fast._params(s, 0.0)
    none = np.empty(0, dtype=np.bool_)
    no_delays = np.empty(0, dtype=np.int8)
    up = b["close"] >= b["open"]
    kernel_times, _ = timed(
        lambda: fast.ma_cross_kernel(
            b["open"],
            b["high"],
            b["low"],
            b["close"],
            up,
            FAST_WINDOW,
            SLOW_WINDOW,
            none,
            none,
            no_delays,
            versions,
            table,
            p,
        ),
        repeat,
    )
    no_fee = fast.ma_cross(
        b["open"],
        b["high"],
        b["low"],
        b["close"],
        settings=ma_settings(False),
        fast=FAST_WINDOW,
        slow=SLOW_WINDOW,
    )
    return {
        "times_s": times,
        "bars_per_s": rate(n, times),
        "kernel_times_s": kernel_times,
        "kernel_bars_per_s": rate(n, kernel_times),
        "trades": len(result.trades),
        "closed_trades": int(result.trades.closed.sum()),
        "fills": int(len(result.trades) + result.trades.closed.sum()),
        "final_equity": result.final_equity,
        "final_equity_no_fees": no_fee.final_equity,
        "charges": result.charges_paid,
    }


def bench_vectorbt(b: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pandas as pd
            import vectorbt as vbt
    except ImportError as exc:
        return {"skipped": f"vectorbt not installed ({exc}); pip install -e '.[bench]'"}
    close = pd.Series(b["close"])

    def signals() -> tuple[Any, Any]:
        fast_ma = vbt.MA.run(close, FAST_WINDOW).ma.to_numpy()
        slow_ma = vbt.MA.run(close, SLOW_WINDOW).ma.to_numpy()
        # A cross: below at the previous close, above at this one (backtesting.py's
        # ``crossover``, chimera's MovingAverageCross). vbt's ``crossed_above`` also
        # counts below -> equal -> above, which paise prices make happen.
        above = fast_ma > slow_ma
        below = fast_ma < slow_ma
        entries = above & np.concatenate(([False], below[:-1]))
        return entries, below

    def run(fees: float) -> Any:
        entries, exits = signals()
        return vbt.Portfolio.from_signals(
            close, entries, exits, size=QTY, fees=fees, init_cash=INITIAL, accumulate=False
        )

    run(FEE)  # warm-up: vectorbt's own numba kernels compile on first use
    times, pf = timed(lambda: run(FEE), repeat)
    entries, exits = signals()
    sim_times, _ = timed(
        lambda: vbt.Portfolio.from_signals(
            close, entries, exits, size=QTY, fees=FEE, init_cash=INITIAL
        ),
        repeat,
    )
    return {
        "version": vbt.__version__,
        "times_s": times,
        "bars_per_s": rate(close.size, times),
        "from_signals_times_s": sim_times,
        "from_signals_bars_per_s": rate(close.size, sim_times),
        "trades": int(pf.trades.count()),
        "closed_trades": int(pf.trades.closed.count()),
        "final_equity": float(pf.final_value()),
        "final_equity_no_fees": float(run(0.0).final_value()),
    }


def bench_backtesting(b: dict[str, np.ndarray]) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import backtesting
            import pandas as pd
            from backtesting import Backtest, Strategy
    except ImportError as exc:
        return {"skipped": f"backtesting not installed ({exc}); pip install -e '.[bench]'"}
    from backtesting.lib import crossover

    n = b["close"].size
    frame = pd.DataFrame(
        {
            "Open": b["open"],
            "High": b["high"],
            "Low": b["low"],
            "Close": b["close"],
            "Volume": b["volume"],
        },
        index=pd.date_range("2020-01-01", periods=n, freq="1min"),
    )

    def sma(values: Any, window: int) -> np.ndarray:
        out: np.ndarray = pd.Series(values).rolling(window).mean().to_numpy()
        return out

    class SmaCross(Strategy):  # type: ignore[misc]
        def init(self) -> None:
            self.fast_ma = self.I(sma, self.data.Close, FAST_WINDOW)
            self.slow_ma = self.I(sma, self.data.Close, SLOW_WINDOW)

        def next(self) -> None:
            if not self.position:
                if crossover(self.fast_ma, self.slow_ma):
                    self.buy(size=QTY)
            elif self.fast_ma[-1] < self.slow_ma[-1]:
                self.position.close()

    def run(fee: float) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bt = Backtest(frame, SmaCross, cash=INITIAL, commission=fee, trade_on_close=True)
            return bt.run()

    times, stats = timed(lambda: run(FEE), 1)
    no_fee = run(0.0)
    return {
        "version": backtesting.__version__,
        "times_s": times,
        "bars_per_s": rate(n, times),
        "trades": int(stats["# Trades"]),
        "closed_trades": len(stats["_trades"]),
        "final_equity": float(stats["Equity Final [$]"]),
        "final_equity_no_fees": float(no_fee["Equity Final [$]"]),
    }


def bench_default(b: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    n = b["close"].size
    s = FastSettings(sizing="equity_fraction", equity_fraction=0.5, initial_equity=INITIAL)

    def run() -> fast.FastResult:
        return fast.default_strategy(
            b["open"], b["high"], b["low"], b["close"], b["volume"], settings=s, **DEFAULT_PARAMS
        )

    run()
    times, result = timed(run, repeat)
    reasons = np.bincount(result.trades.exit_reason, minlength=len(fast.EXIT_REASONS))
    return {
        "note": "a speed figure: a random walk has no edge, so charges take the equity",
        "settings": "schedule charges (NSE cash intraday), 1 bps slippage, ATR brackets "
        "2x/3x, half the equity per entry, [governance] caps",
        "params": DEFAULT_PARAMS,
        "times_s": times,
        "bars_per_s": rate(n, times),
        "trades": len(result.trades),
        "exit_reasons": dict(zip(fast.EXIT_REASONS, reasons.tolist(), strict=True)),
        "final_equity": result.final_equity,
        "charges": result.charges_paid,
    }


def bench_default_prints(b: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    """The default strategy decided on every print (``tools.backtest.prints``, event mode's
    prints and the node's rules), against the per-close decision on the same bars and
    settings, in this run: the ratio is the price of parity with event mode."""
    from tools.backtest import prints

    n = b["close"].size
    interval = 300_000
    ts = 1_735_689_600_000 + np.arange(n, dtype=np.int64) * interval
    s = FastSettings(initial_equity=INITIAL)

    def per_close() -> fast.FastResult:
        return fast.default_strategy(
            b["open"], b["high"], b["low"], b["close"], b["volume"], settings=s, ts_ms=ts,
            **DEFAULT_PARAMS,
        )  # fmt: skip

    def per_print() -> fast.FastResult:
        return prints.default_prints(
            b["open"], b["high"], b["low"], b["close"], b["volume"], ts_ms=ts,
            interval_ms=interval, settings=s, **DEFAULT_PARAMS,
        )  # fmt: skip

    per_close()
    per_print()
    close_times, close_result = timed(per_close, repeat)
    print_times, print_result = timed(per_print, repeat)
    reasons = np.bincount(print_result.trades.exit_reason, minlength=len(fast.EXIT_REASONS))
    close_rate, print_rate = rate(n, close_times), rate(n, print_times)
    return {
        "settings": "five-minute bars, schedule charges (NSE cash intraday), 1 bps slippage, "
        "ATR brackets 2x/3x, 1 unit per entry, no caps; per print: latency 50 ms, "
        "cooldown 60 s",
        "params": DEFAULT_PARAMS,
        "times_s": print_times,
        "bars_per_s": print_rate,
        "per_close_times_s": close_times,
        "per_close_bars_per_s": close_rate,
        "per_close_over_per_print": close_rate / print_rate,
        "meets_bars_per_s_target": print_rate >= TARGET_BARS_PER_S,
        "trades": len(print_result.trades),
        "per_close_trades": len(close_result.trades),
        "exit_reasons": dict(zip(fast.EXIT_REASONS, reasons.tolist(), strict=True)),
        "final_equity": print_result.final_equity,
    }


def bench_kernels(b: dict[str, np.ndarray], repeat: int) -> dict[str, Any]:
    close = b["close"]
    n = close.size
    en, zn, bn = (DEFAULT_PARAMS[k] for k in ("energy_lookback", "z_lookback", "band_lookback"))

    def old() -> None:
        physics.energy_series(close, en)
        physics.zscore_series(close, zn)
        physics.gaussian_bands(close, bn, 2.0)

    def new() -> None:
        rolling.rolling_energy(close, en)
        rolling.rolling_zscore(close, zn)
        rolling.rolling_band(close, bn, 2.0)

    old()
    new()
    old_times, _ = timed(old, max(3, repeat // 2))
    new_times, _ = timed(new, repeat)
    return {
        "what": f"energy({en}) + z({zn}) + band({bn}) over every bar",
        "per_bar_recompute_times_s": old_times,
        "per_bar_recompute_bars_per_s": rate(n, old_times),
        "rolling_times_s": new_times,
        "rolling_bars_per_s": rate(n, new_times),
        "speedup": statistics.median(old_times) / statistics.median(new_times),
    }


def agreement(ours: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Final equities (with and without charges) and trade counts (round trips, the one
    still open at the end included) of our run and a reference's."""
    if "skipped" in ref:
        return {"skipped": ref["skipped"]}
    tolerance = 0.005 * ours["fills"] + 1e-9 * INITIAL  # half a paisa per fill
    diff = ours["final_equity"] - ref["final_equity"]
    diff_no_fees = ours["final_equity_no_fees"] - ref["final_equity_no_fees"]
    return {
        "final_equity_diff": diff,
        "tolerance": tolerance,
        "final_equity_diff_no_fees": diff_no_fees,
        "tolerance_no_fees": 1e-6,
        "same_closed_trades": ours["closed_trades"] == ref["closed_trades"],
        "agrees": abs(diff) <= tolerance
        and abs(diff_no_fees) <= 1e-6
        and ours["closed_trades"] == ref["closed_trades"],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("fast ma_cross", result["ma_cross"]["ours"]["bars_per_s"], "#1f77b4")]
    for key, label in (("vectorbt", "vectorbt"), ("backtesting", "backtesting.py")):
        ref = result["ma_cross"][key]
        if "skipped" not in ref:
            rows.append((label, ref["bars_per_s"], "#7f7f7f"))
    rows.append(("fast default", result["default"]["bars_per_s"], "#2ca02c"))
    rows.append(("fast default per print", result["default_per_print"]["bars_per_s"], "#98df8a"))
    k = result["kernels"]
    rows.append(("kernels: per-bar recompute", k["per_bar_recompute_bars_per_s"], "#d62728"))
    rows.append(("kernels: rolling O(1)", k["rolling_bars_per_s"], "#ff7f0e"))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = [r[0] for r in rows]
    values = [r[1] for r in rows]
    ax.barh(labels, values, color=[r[2] for r in rows])
    ax.set_xscale("log")
    ax.axvline(TARGET_BARS_PER_S, color="k", linestyle="--", linewidth=1)
    ax.text(TARGET_BARS_PER_S, len(rows) - 0.5, " 20M bars/s target", va="center", fontsize=8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v / 1e6:.2f}M", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bars per second (log scale), median")
    ax.set_title(f"chimera backtest, {result['bars']:,} bars, one run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(n: int, seed: int, repeat: int) -> dict[str, Any]:
    b = make_bars(n, seed)
    ours = bench_ours(b, repeat)
    vbt = bench_vectorbt(b, repeat)
    bt = bench_backtesting(b)
    default = bench_default(b, repeat)
    default_prints = bench_default_prints(b, repeat)
    kernels = bench_kernels(b, repeat)
    ratio = ours["bars_per_s"] / vbt["bars_per_s"] if "skipped" not in vbt else None
    checks = {
        "ma_cross_bars_per_s": ours["bars_per_s"] >= TARGET_BARS_PER_S,
        "ma_cross_vs_vectorbt": None if ratio is None else ratio >= TARGET_VS_VECTORBT,
        "default_bars_per_s": default["bars_per_s"] >= TARGET_BARS_PER_S,
    }
    import numba

    return {
        "benchmark": "backtest",
        "command": "python -m benchmarks.backtest_bench " + " ".join(sys.argv[1:]),
        "bars": n,
        "seed": seed,
        "repeat": repeat,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
            "numpy": np.__version__,
            "numba": numba.__version__,
        },
        "ma_cross": {
            "strategy": f"SMA {FAST_WINDOW}/{SLOW_WINDOW} crossover (enter on a cross above, exit "
            f"below), long only, {QTY} units, "
            f"fill at close, {FEE * 100:g} % per fill, no slippage",
            "ours": ours,
            "vectorbt": vbt,
            "backtesting": bt,
            "ours_vs_vectorbt": ratio,
            "ours_vs_backtesting": ours["bars_per_s"] / bt["bars_per_s"]
            if "skipped" not in bt
            else None,
            "agreement_vectorbt": agreement(ours, vbt),
            "agreement_backtesting": agreement(ours, bt),
        },
        "default": default,
        "default_per_print": default_prints,
        "kernels": kernels,
        "targets": {"bars_per_s": TARGET_BARS_PER_S, "vs_vectorbt": TARGET_VS_VECTORBT},
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/backtest.json"))
    args = parser.parse_args(argv)
    result = run(args.bars, args.seed, args.repeat)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    plot(result, args.json.with_suffix(".png"))
    ma = result["ma_cross"]
    print(
        f"fast ma_cross   {ma['ours']['bars_per_s'] / 1e6:8.2f}M bars/s "
        f"(kernel {ma['ours']['kernel_bars_per_s'] / 1e6:.2f}M)"
    )
    for key in ("vectorbt", "backtesting"):
        ref = ma[key]
        if "skipped" in ref:
            print(f"{key:15} skipped: {ref['skipped']}")
        else:
            agree = ma[f"agreement_{key}"]
            print(
                f"{key:15} {ref['bars_per_s'] / 1e6:8.2f}M bars/s, final equity diff "
                f"{agree['final_equity_diff']:+.4f} (tolerance {agree['tolerance']:.2f}), "
                f"no fees {agree['final_equity_diff_no_fees']:+.2e}, "
                f"agrees={agree['agrees']}"
            )
    if ma["ours_vs_vectorbt"] is not None:
        print(f"ours / vectorbt {ma['ours_vs_vectorbt']:8.2f}x")
    print(
        f"fast default    {result['default']['bars_per_s'] / 1e6:8.2f}M bars/s, "
        f"{result['default']['trades']} trades"
    )
    dp = result["default_per_print"]
    print(
        f"default / print {dp['bars_per_s'] / 1e6:8.2f}M bars/s, {dp['trades']} trades "
        f"(per close {dp['per_close_bars_per_s'] / 1e6:.2f}M: "
        f"{dp['per_close_over_per_print']:.1f}x faster)"
    )
    k = result["kernels"]
    print(
        f"kernels         per-bar {k['per_bar_recompute_bars_per_s'] / 1e6:.2f}M vs rolling "
        f"{k['rolling_bars_per_s'] / 1e6:.2f}M bars/s ({k['speedup']:.1f}x)"
    )
    print(f"checks          {result['checks']}")
    agreements = [ma[f"agreement_{k}"] for k in ("vectorbt", "backtesting")]
    failed = [a for a in agreements if "skipped" not in a and not a["agrees"]]
    return 1 if failed or not all(v for v in result["checks"].values() if v is not None) else 0


if __name__ == "__main__":
    sys.exit(main())
