"""``chimera stress``: Monte Carlo on a backtest and scenario runs through event mode
(docs/STRESS.md).

    chimera stress --backtest data/backtests/DIR              # Monte Carlo on a result
    chimera stress --data data/samples/sim_2885_5m.csv --strategy ma_cross   # + scenarios
    chimera stress --data data/samples/synth_4x5m.csv --strategy ma_cross   # one account
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
    src.add_argument(
        "--data",
        action="append",
        help="OHLCV CSV/Parquet: run the backtest (event mode) first; a long-format file "
        "(a symbol column) or several --data run the instruments on one account",
    )
    p.add_argument("--symbol-column", default=None, help="with --data: the symbol column")
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
    universe: Any = None
    token = "BT"
    if args.data:
        universe = _universe(args)
    if universe is not None:
        if args.reprice:
            raise StressError(
                "--reprice re-runs one instrument in fast mode; several instruments share "
                "one account in event mode only: drop --reprice"
            )
        name = Path(args.data[0]).stem
        default = Path(cfg.data_dir) / "stress" / f"{name}-{args.strategy}"
        out = Path(args.out) if args.out else default
        bt_dir = out / "backtest"
        _account_backtest(cfg, universe, args, exchange_type, bt_dir)
    elif args.data:
        from tools.backtest.data import load_bars

        (data,) = args.data
        bars = load_bars(Path(data))
        name = getattr(bars, "symbol", "") or Path(data).stem
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
        if scenarios and universe is not None:
            from tools.backtest.multi import configured
            from tools.backtest.run import event_factory
            from tools.stress.account import run_account_scenarios

            factory = event_factory(args.strategy, _params(args.param), args.long_only)
            result["scenarios"] = run_account_scenarios(
                configured(cfg, args.strategy, _params(args.param)),
                universe,
                scenarios,
                factory,
                out / "work",
                exchange_type,
                progress=progress,
            )
            result["instruments"] = list(universe.tokens)
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


def _universe(args: argparse.Namespace) -> Any:
    """The instruments ``--data`` names when they are several (a symbol column, or more
    than one file); None for one instrument (the one-instrument run, as before)."""
    from tools.backtest.universe import load_universe, symbol_column_in

    for d in args.data:
        if not Path(d).is_file():
            raise StressError(f"--data {d}: no such file (an OHLCV .csv or .parquet)")
    several = len(args.data) > 1 or args.symbol_column is not None
    several = several or symbol_column_in(Path(args.data[0])) is not None
    if not several:
        return None
    if args.token:
        raise StressError("--token names one instrument; several take their symbols' tokens")
    return load_universe(args.data, symbol_column=args.symbol_column)


def _account_backtest(
    cfg: Any, universe: Any, args: argparse.Namespace, exchange_type: int, out: Path
) -> None:
    """The instruments on one account (event mode, the portfolio rules as configured):
    the run Monte Carlo resamples."""
    from tools.backtest.multi import run_universe
    from tools.backtest.report import write_portfolio_report

    result, series = run_universe(cfg, universe, args.strategy, _params(args.param),
                                  exchange_type, args.quiet, args.long_only)  # fmt: skip
    write_portfolio_report(out, result, {"with_rules": series}, html=False)


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


def changed_instruments(row: dict[str, Any]) -> str:
    """The instruments a scenario row's data transform changed: "all", their tokens, "-"."""
    moved = [t for t, d in row["instruments"].items() if d["changed_bars"]]
    if moved and len(moved) == len(row["instruments"]) > 1:
        return "all"
    return ", ".join(moved) or "-"


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
        several = "instruments" in result
        cols: tuple[str, ...] = ("scenario", "verdict", "worst day", "trades", "problems")
        if several:
            cols = ("scenario", "symbol", "verdict", "worst day", "trades", "changed", "problems")
        for col in cols:
            st.add_column(col)
        for s in result["scenarios"]:
            cells = [s["name"], s["verdict"], f"{s['worst_day_loss_pct']:.3%}", str(s["trades"])]
            if several:
                cells.insert(1, s["symbol"])
                cells.append(changed_instruments(s))
            st.add_row(*cells, "; ".join(s["problems"]))
        console.print(st)
    for kind, path in paths.items():
        console.print(f"{kind:5} {path}")


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ChimeraError as exc:
        print(f"chimera stress: {exc}", file=sys.stderr)
        sys.exit(2)
