"""``chimera backtest``: history through the live code (event mode, the default) or the
Numba loops that agree with it (``--fast``); prints the metrics and writes the report.

    chimera backtest --data data/samples/FILE.csv --strategy default
    chimera backtest --data FILE.parquet --strategy ma_cross --fast --report out/
    chimera backtest --data LONG.parquet --compare-portfolio     # N instruments, one account
    chimera backtest synth --out data/universe.parquet --instruments 20 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera backtest",
        description="Run a strategy over history through the live node (event mode) or the "
        "fast Numba loops; print the metrics and write the report (docs/BACKTEST.md).",
    )
    p.add_argument(
        "--data",
        required=True,
        action="append",
        help="OHLCV CSV or Parquet file, smartapi:EXCHANGE:TOKEN (Angel One candles, "
        "cached under data/history/), or a recorded black-box session directory (its "
        "ticks through a fresh paper node, decisions compared with the recorded ones). "
        "Several instruments on one account: a long-format file with a symbol (or token) "
        "column, or --data once per instrument's file (event mode)",
    )
    p.add_argument(
        "--symbol-column", default=None,
        help="the column naming each row's instrument (default: symbol, else token)",
    )  # fmt: skip
    p.add_argument(
        "--compare-portfolio", action="store_true",
        help="several instruments: run with the [governance.portfolio] rules as configured "
        "and with them off, and report both side by side",
    )  # fmt: skip
    p.add_argument(
        "--strategy",
        default="default",
        help="default | ma_cross | module:attr (docs/BACKTEST.md, 'Strategies')",
    )
    p.add_argument("--fast", action="store_true", help="the Numba fast mode (for sweeps)")
    p.add_argument("--config", default=None, help="chimera.toml (default: ./chimera.toml)")
    p.add_argument(
        "--report",
        default=None,
        help="directory for result.json, trades.csv, equity.csv, report.html "
        "(default: data/backtests/<strategy>-<data hash>)",
    )
    p.add_argument("--token", default="", help="instrument token (default: the file's name)")
    p.add_argument(
        "--segment",
        default="NSE_CM",
        help="exchange segment: charges and market calendar (default NSE_CM)",
    )
    p.add_argument(
        "--interval",
        default=None,
        help="bar interval (5m, 1h, 1d, FIVE_MINUTE, ...) when it cannot be inferred; "
        "the candle interval for smartapi:",
    )
    p.add_argument("--from", dest="start", default=None, help="smartapi: first IST date")
    p.add_argument("--to", dest="end", default=None, help="smartapi: last IST date")
    p.add_argument("--tz", default=None, help="timezone of naive timestamps (e.g. Asia/Kolkata)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a strategy parameter (repeatable), e.g. --param fast=10",
    )
    p.add_argument("--long-only", action="store_true", help="ma_cross: no short entries")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
        help="a fast-mode setting (repeatable): fill=close|next_open, "
        "sizing=fixed|lots|equity_fraction, equity_fraction=0.5, "
        "commission=schedule|percent|fixed|none, commission_pct=0.03, slippage_bps=2, ...",
    )  # fmt: skip
    p.add_argument("--no-html", action="store_true", help="skip report.html")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table (scripts)")
    return p


def _settings(pairs: list[str]) -> dict[str, Any]:
    """``--set NAME=VALUE`` pairs: numbers and true/false as such, the rest as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name.strip():
            raise ChimeraError(f"--set {pair!r}: expected NAME=VALUE, e.g. fill=close")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        out[name.strip()] = value
    return out


def _params(pairs: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ChimeraError(f"--param {pair!r}: expected NAME=NUMBER, e.g. fast=10") from None
    return out


def load_data(spec: str, cfg: Any, args: argparse.Namespace) -> Any:
    """Bars from a file, or Angel One candles (fetched once, then from the cache)."""
    from tools.backtest.data import load_bars

    if spec.startswith("smartapi:"):
        import asyncio

        from chimera_core.config import load_env
        from tools.backtest.history import fetch_history

        parts = spec.split(":")
        if len(parts) != 3 or not args.interval or not args.start or not args.end:
            raise ChimeraError(
                f"--data {spec}: write smartapi:EXCHANGE:TOKEN (e.g. smartapi:NSE:2885) with "
                "--interval (e.g. FIVE_MINUTE), --from and --to (IST dates, YYYY-MM-DD)"
            )
        return asyncio.run(
            fetch_history(
                parts[1], parts[2], args.interval, args.start, args.end,
                data_dir=cfg.data_dir, cfg=cfg, env=load_env(),
            )
        )  # fmt: skip
    path = Path(spec)
    if not path.exists():
        raise ChimeraError(f"--data {spec}: no such file (an OHLCV .csv or .parquet)")
    return load_bars(path, interval=args.interval, tz=args.tz)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["synth"]:
        return synth_main(argv[1:])
    args = build_parser().parse_args(argv)
    from chimera_core.config import default_config_path, load_config
    from chimera_core.contracts import ExchangeType
    from chimera_core.logging import configure_logging

    # The node's own warnings (a cancel at the end of the run) are no news in a backtest;
    # errors still show.
    configure_logging("ERROR")
    cfg = load_config(args.config or default_config_path())
    try:
        exchange_type = int(ExchangeType[args.segment])
    except KeyError:
        names = ", ".join(e.name for e in ExchangeType)
        raise ChimeraError(f"--segment {args.segment!r}: one of {names}") from None
    from tools.backtest.universe import symbol_column_in, token_of

    datas: list[str] = args.data
    several = len(datas) > 1 or args.compare_portfolio or args.symbol_column is not None
    if len(datas) == 1 and not several and Path(datas[0]).is_file():
        several = symbol_column_in(Path(datas[0])) is not None
    bars = None
    if several:
        universe = _universe(datas, args)
        if len(universe) > 1 or args.compare_portfolio:
            return _portfolio(cfg, universe, args, exchange_type)
        bars = universe.bars[0]  # one instrument: the one-instrument run
    (data,) = datas
    if bars is None and Path(data).is_dir():  # a recorded session: its ticks, its config
        return _session(Path(data), args)
    if bars is None and Path(data).suffix == ".chtick":  # a tick file: its frames here
        return _tick_file(cfg, Path(data), args)
    if bars is None:
        bars = load_data(data, cfg, args)
    # The feed's token field is ASCII letters and digits: the file's name, cleaned, unless
    # --token says (event mode checks it through the real codec).
    name = getattr(bars, "symbol", "") or Path(data).stem
    token = args.token or token_of(name) or "BT"
    params = _params(args.param)
    from tools.backtest.run import run_backtest

    result, series = run_backtest(
        cfg,
        bars,
        args.strategy,
        params,
        fast=args.fast,
        token=token,
        exchange_type=exchange_type,
        quiet=args.quiet,
        fast_settings=_settings(args.settings),
    )
    out = Path(args.report) if args.report else _default_dir(cfg, args.strategy, result)
    from tools.backtest.report import write_report

    paths = write_report(out, result, result["trades"], html=not args.no_html, **series)
    if not args.quiet:
        _print_table(result, paths)
    else:
        print(paths["json"])
    return 0


def _universe(datas: list[str], args: argparse.Namespace) -> Any:
    from tools.backtest.universe import load_universe

    for d in datas:
        if d.startswith("smartapi:") or Path(d).is_dir() or Path(d).suffix == ".chtick":
            raise ChimeraError(
                f"--data {d}: several instruments come from CSV or Parquet bar files (fetch "
                "candles with chimera history fetch --out FILE first)"
            )
        if not Path(d).exists():
            raise ChimeraError(f"--data {d}: no such file (an OHLCV .csv or .parquet)")
    if args.token:
        raise ChimeraError("--token names one instrument; several take their symbols' tokens")
    return load_universe(datas, symbol_column=args.symbol_column, interval=args.interval,
                         tz=args.tz)  # fmt: skip


def _portfolio(cfg: Any, universe: Any, args: argparse.Namespace, exchange_type: int) -> int:
    """N instruments on one account (tools/backtest/multi.py), optionally side by side with
    the portfolio rules off."""
    from tools.backtest.multi import compare_portfolio, run_universe
    from tools.backtest.report import write_portfolio_report

    if args.fast:
        raise ChimeraError("several instruments share one account in event mode only: drop --fast")
    if args.settings:
        raise ChimeraError("--set changes fast mode's settings: drop it (event mode)")
    params = _params(args.param)
    if args.compare_portfolio:
        result, series = compare_portfolio(
            cfg, universe, args.strategy, params, exchange_type, args.quiet, args.long_only
        )
    else:
        one, s = run_universe(
            cfg, universe, args.strategy, params, exchange_type, args.quiet, args.long_only
        )
        result, series = one, {"with_rules": s}
    out = Path(args.report) if args.report else _default_dir(cfg, args.strategy, result)
    paths = write_portfolio_report(out, result, series, html=not args.no_html)
    if args.quiet:
        print(paths["json"])
        return 0
    runs: dict[str, dict[str, Any]] = {
        k: result[k] for k in ("with_rules", "without_rules") if k in result
    } or {"portfolio rules on": result}
    _print_portfolio(result, runs, paths)
    return 0


def _print_portfolio(
    result: dict[str, Any], runs: dict[str, dict[str, Any]], paths: dict[str, Path]
) -> None:
    from rich.console import Console
    from rich.table import Table

    first = next(iter(runs.values()))
    table = Table(
        title=f"{first['strategy']} · event mode · {len(first['instruments'])} instruments, "
        f"one account · {first['bars']} bars"
    )
    table.add_column("metric")
    for name in runs:
        table.add_column(name.replace("_", " "), justify="right")
    for name in ("total_return", "sharpe", "max_drawdown", "profit_factor", "charges", "trades"):
        table.add_row(name, *(_fmt(r["metrics"][name]) for r in runs.values()))
    table.add_row("max gross / equity", *(_fmt(r["exposure"]["max_gross"]) for r in runs.values()))
    rules = sorted({k for r in runs.values() for k in r["portfolio_vetoes"]})
    for rule in rules:
        table.add_row(f"veto {rule}", *(str(r["portfolio_vetoes"].get(rule, 0))
                                        for r in runs.values()))  # fmt: skip
    console = Console()
    console.print(table)
    for kind, path in paths.items():
        console.print(f"{kind:7} {path}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.2f}"
    return str(value)


def synth_main(argv: list[str]) -> int:
    """``chimera backtest synth``: a seeded random universe of correlated instruments."""
    from tools.backtest.synth import synth_universe, write_universe

    p = argparse.ArgumentParser(
        prog="chimera backtest synth",
        description="A seeded random universe of correlated instruments (one-factor GBM "
        "bars of the NSE session), written as long-format Parquet or CSV: simulated data.",
    )
    p.add_argument("--out", required=True, help="FILE.parquet (or .csv)")
    p.add_argument("--instruments", type=int, default=20)
    p.add_argument("--bars", type=int, default=1500, help="bars per instrument")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rho", default="0.3:0.8", help="pairwise correlation range LO:HI")
    p.add_argument("--interval", default="5m")
    args = p.parse_args(argv)
    lo, sep, hi = args.rho.partition(":")
    try:
        rho = (float(lo), float(hi if sep else lo))
    except ValueError:
        raise ChimeraError(f"--rho {args.rho!r}: expected LO:HI, e.g. 0.3:0.8") from None
    u = synth_universe(args.instruments, args.bars, args.seed, rho, args.interval)
    path = write_universe(u, args.out)
    off = u.corr[~np.eye(len(u.symbols), dtype=bool)] if len(u.symbols) > 1 else np.zeros(1)
    print(
        f"{path}: {len(u.symbols)} instruments x {args.bars} bars, seed {args.seed}, "
        f"model correlation {off.min():.3f}..{off.max():.3f}"
    )
    return 0


def _session(session_dir: Path, args: argparse.Namespace) -> int:
    """Event mode on a recorded session: its frames through a fresh paper node, every
    decision compared with the recorded one (tools/backtest/session.py)."""
    import asyncio

    from tools.backtest.report import result_json
    from tools.backtest.session import run_session

    if args.fast or args.strategy != "default" or args.param:
        raise ChimeraError(
            "a recorded session runs in event mode on its own configuration and strategy: "
            "drop --fast, --strategy and --param"
        )
    run = asyncio.run(run_session(session_dir))
    result = {
        "mode": "event-session", "session": run.session, "ticks": run.ticks,
        "decisions_compared": run.compared, "decisions_identical": run.identical,
        "reproduced": run.reproduced, "first_divergence": run.first_divergence,
        "control_applied": run.control_applied, "recorded_fills": run.recorded_fills,
        "fills": run.fills, "trades": run.trades, "final_equity": run.final_equity,
        "final_state": run.final_state,
    }  # fmt: skip
    out = Path(args.report) if args.report else session_dir / "backtest"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_bytes(result_json(result) + b"\n")
    verdict = "REPRODUCED" if run.reproduced else "DIVERGED"
    print(
        f"{run.session}: {run.identical}/{run.compared} decisions identical ({verdict}); "
        f"fills {len(run.fills)} (recorded {run.recorded_fills}); {len(run.trades)} trades; "
        f"final equity {run.final_equity:,.2f}; {out / 'result.json'}"
    )
    return 0 if run.reproduced else 1


def _tick_file(cfg: Any, path: Path, args: argparse.Namespace) -> int:
    import asyncio

    from tools.backtest.report import result_json
    from tools.backtest.session import run_tick_file

    if args.fast:
        raise ChimeraError("a tick file runs in event mode only: drop --fast")
    factory = _event_factory(args)
    run = asyncio.run(run_tick_file(cfg, path, strategy=factory))
    result = {
        "mode": "event-ticks", "source": run.session, "ticks": run.ticks,
        "fills": run.fills, "trades": run.trades, "final_equity": run.final_equity,
        "final_state": run.final_state,
    }  # fmt: skip
    out = Path(args.report) if args.report else Path(cfg.data_dir) / "backtests" / path.stem
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_bytes(result_json(result) + b"\n")
    print(
        f"{path.name}: {run.ticks} ticks, {len(run.fills)} fills, {len(run.trades)} trades, "
        f"final equity {run.final_equity:,.2f}; {out / 'result.json'}"
    )
    return 0


def _event_factory(args: argparse.Namespace) -> Any:
    from tools.backtest.run import event_factory

    return event_factory(args.strategy, _params(args.param), args.long_only)


def _default_dir(cfg: Any, strategy: str, result: dict[str, Any]) -> Path:
    key = hashlib.sha256(
        f"{result['data']['sha256']}|{strategy}|{result['settings']}".encode()
    ).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in strategy)
    return Path(cfg.data_dir) / "backtests" / f"{safe}-{result['mode']}-{key}"


def _print_table(result: dict[str, Any], paths: dict[str, Path]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['strategy']} · {result['mode']} mode · {result['bars']} bars")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result["metrics"].items():
        if isinstance(value, float):
            text = f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.2f}"
        else:
            text = str(value)
        table.add_row(name, text)
    console = Console()
    console.print(table)
    for kind, path in paths.items():
        console.print(f"{kind:7} {path}")


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ChimeraError as exc:
        print(f"chimera backtest: {exc}", file=sys.stderr)
        sys.exit(2)
