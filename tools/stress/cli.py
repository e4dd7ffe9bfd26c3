"""``chimera stress``: Monte Carlo on a backtest and scenario runs through event mode
(docs/STRESS.md).

    chimera stress --backtest data/backtests/DIR              # Monte Carlo on a result
    chimera stress --data data/samples/sim_2885_5m.csv --strategy ma_cross   # + scenarios
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from chimera_core.errors import ChimeraError
from tools.stress.montecarlo import TRADE_MODES, StressError

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera stress",
        description="Monte Carlo (block bootstrap of daily returns, trade-order resampling) "
        "on a backtest, and scenarios through the live node on a simulated clock.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--backtest", help="a `chimera backtest --report DIR` directory")
    src.add_argument("--data", help="OHLCV CSV/Parquet: run the backtest (event mode) first")
    p.add_argument("--strategy", default="default", help="with --data: the strategy")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--long-only", action="store_true")
    p.add_argument("--token", default="", help="with --data: instrument token")
    p.add_argument("--config", default=None, help="chimera.toml (default: ./chimera.toml)")
    p.add_argument("--paths", type=int, default=1000, help="Monte Carlo paths (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--block",
        type=float,
        default=None,
        help="expected block length in days (default: arch's optimal_block_length)",
    )
    p.add_argument(
        "--trades",
        choices=TRADE_MODES,
        default="shuffle",
        help="trade resampling: shuffle (same trades, new order) or replace",
    )
    p.add_argument(
        "--ruin-loss",
        type=float,
        default=0.5,
        help="risk of ruin: the loss from the start that counts as ruin (0.5)",
    )
    p.add_argument("--tz", default=None, help="zone of the trading day (default: the market's)")
    p.add_argument(
        "--scenario",
        action="append",
        default=None,
        metavar="TOML",
        help="a scenario file (repeatable); with --data the shipped ones run unless given",
    )
    p.add_argument("--no-scenarios", action="store_true", help="Monte Carlo only")
    p.add_argument(
        "--reprice",
        action="store_true",
        help="with --data: also bootstrap the bars and re-run the strategy on each path in "
        "fast mode",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="settings",
        help="with --reprice: a fast-mode setting, as for chimera backtest --fast "
        "(e.g. sizing=equity_fraction)",
    )
    p.add_argument("--out", default=None, help="report directory (default data/stress/NAME)")
    p.add_argument("--no-html", action="store_true", help="skip stress.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chimera_core.config import default_config_path, load_config
    from chimera_core.contracts import ExchangeType
    from chimera_core.logging import configure_logging
    from chimera_core.markets import calendar_for
    from tools.stress.montecarlo import Limits
    from tools.stress.report import write_stress_report
    from tools.stress.run import load_backtest, monte_carlo
    from tools.stress.scenarios import load_scenario, shipped_scenarios

    configure_logging("ERROR")
    cfg = load_config(args.config or default_config_path())
    exchange_type = int(ExchangeType.NSE_CM)
    tz = args.tz or calendar_for(cfg.markets, exchange_type).timezone
    if args.paths < 1:
        raise StressError(f"--paths {args.paths}: at least 1")
    limits = Limits(cfg.governance.daily_loss_pct, cfg.governance.max_drawdown, args.ruin_loss)
    limits.check()
    scenario_files: list[Path] = []
    if not args.no_scenarios:
        if args.scenario:
            scenario_files = [Path(s) for s in args.scenario]
        elif args.data:
            scenario_files = shipped_scenarios()
    if scenario_files and not args.data:
        raise StressError("scenarios run the strategy on history: give --data (and --strategy)")
    scenarios = [load_scenario(f) for f in scenario_files]  # all validated before any run
    bars: Any = None
    token = "BT"
    if args.data:
        from tools.backtest.data import load_bars
        from tools.backtest.universe import symbol_column_in

        if not Path(args.data).is_file():
            raise StressError(f"--data {args.data}: no such file (an OHLCV .csv or .parquet)")
        if symbol_column_in(Path(args.data)) is not None:
            raise StressError(
                f"--data {args.data}: several instruments (a symbol column); scenarios run one "
                "instrument. For the account of several: chimera backtest --data FILE "
                "--compare-portfolio --report DIR, then chimera stress --backtest "
                "DIR/with_rules (Monte Carlo)"
            )
        bars = load_bars(Path(args.data))
        name = getattr(bars, "symbol", "") or Path(args.data).stem
        token = args.token or "".join(c for c in name if c.isascii() and c.isalnum())[:20] or "BT"
        default = Path(cfg.data_dir) / "stress" / f"{name}-{args.strategy}"
        out = Path(args.out) if args.out else default
        bt_dir = out / "backtest"
        _backtest(cfg, bars, args, token, exchange_type, bt_dir, _params(args.param))
    else:
        bt_dir = Path(args.backtest)
        out = Path(args.out) if args.out else bt_dir / "stress"
    progress, stop = _progress(len(scenarios) + 1 if scenarios else 0, args.quiet)
    try:
        mc, arrays = monte_carlo(
            load_backtest(bt_dir), limits, args.paths, args.seed, args.block, args.trades, tz
        )
        result: dict[str, Any] = {"monte_carlo": mc, "scenarios": []}
        if args.reprice:
            if bars is None:
                raise StressError("--reprice re-runs the strategy on resampled bars: give --data")
            from tools.stress.reprice import reprice_monte_carlo

            mc["fast_reprice"], _ = reprice_monte_carlo(
                cfg, bars, args.strategy, _params(args.param), limits, args.paths, args.seed,
                args.block, token, exchange_type, args.long_only, tz, _settings(args.settings),
            )  # fmt: skip
        if scenarios and bars is not None:
            from tools.backtest.run import event_factory
            from tools.stress.scenarios import run_scenarios

            factory = event_factory(args.strategy, _params(args.param), args.long_only)
            result["scenarios"] = run_scenarios(
                cfg,
                bars,
                scenarios,
                factory,
                out / "work",
                token,
                exchange_type,
                progress=progress,
            )
    finally:
        stop()
    result["verdict"] = (
        "PASS" if all(s["verdict"] == "PASS" for s in result["scenarios"]) else "FAIL"
    )
    paths = write_stress_report(out, result, arrays, html=not args.no_html)
    if args.quiet:
        print(paths["json"])
    else:
        _print(result, paths)
    return 0 if result["verdict"] == "PASS" else 1


def _params(pairs: list[str]) -> dict[str, float]:
    from tools.backtest.cli import _params as parse

    return parse(pairs)


def _settings(pairs: list[str]) -> dict[str, Any]:
    from tools.backtest.cli import _settings as parse

    return parse(pairs)


def _backtest(
    cfg: Any,
    bars: Any,
    args: argparse.Namespace,
    token: str,
    exchange_type: int,
    out: Path,
    params: dict[str, float],
) -> None:
    from tools.backtest.report import write_report
    from tools.backtest.run import run_backtest

    result, series = run_backtest(
        cfg,
        bars,
        args.strategy,
        params,
        token=token,
        exchange_type=exchange_type,
        quiet=args.quiet,
        long_only=args.long_only,
    )
    write_report(out, result, result["trades"], html=False, **series)


def _progress(total: int, quiet: bool) -> tuple[Any, Any]:
    if quiet or total == 0 or not sys.stderr.isatty():
        return None, (lambda: None)
    from rich.progress import BarColumn, Progress, TextColumn

    bar = Progress(
        TextColumn("scenarios"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[name]}"),
        transient=True,
    )
    task = bar.add_task("scenarios", total=total, name="")
    bar.start()

    def advance(name: str) -> None:
        bar.update(task, advance=1, name=name)

    return advance, bar.stop


def _print(result: dict[str, Any], paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    mc = result["monte_carlo"]
    table = Table(title=f"Monte Carlo · {mc['paths']} paths · seed {mc['seed']}")
    for col in (
        "",
        "final return p5",
        "p50",
        "p95",
        "max DD p50",
        "p95",
        "P(daily loss)",
        "P(drawdown)",
        "P(ruin)",
    ):
        table.add_column(col, justify="right")
    kinds = (
        ("returns_bootstrap", "returns"),
        ("trade_order", "trades"),
        ("fast_reprice", "prices"),
    )
    for kind, label in kinds:
        s = mc.get(kind)
        if not s:
            continue
        fr, dd = s["final_return"], s["max_drawdown"]
        table.add_row(
            label,
            f"{fr['p5']:.2%}",
            f"{fr['p50']:.2%}",
            f"{fr['p95']:.2%}",
            f"{dd['p50']:.2%}",
            f"{dd['p95']:.2%}",
            f"{s['p_daily_loss_trip']:.1%}",
            f"{s['p_drawdown_trip']:.1%}",
            f"{s['p_ruin']:.1%}",
        )
    console.print(table)
    if result["scenarios"]:
        st = Table(title="Scenarios")
        for col in ("scenario", "verdict", "worst day", "trades", "problems"):
            st.add_column(col)
        for s in result["scenarios"]:
            st.add_row(
                s["name"],
                s["verdict"],
                f"{s['worst_day_loss_pct']:.3%}",
                str(s["trades"]),
                "; ".join(s["problems"]),
            )
        console.print(st)
    for kind, path in paths.items():
        console.print(f"{kind:5} {path}")


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ChimeraError as exc:
        print(f"chimera stress: {exc}", file=sys.stderr)
        sys.exit(2)
