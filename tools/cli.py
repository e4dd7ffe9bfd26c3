"""The ``chimera`` command line. Stable names: tests, scripts and systemd units rely on them."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from chimera_core.errors import ChimeraError
from tools.control_cli import CLI_COMMANDS

if TYPE_CHECKING:  # the CLI imports the engine lazily: a kill switch must start fast
    from chimera_core.config import Config
    from chimera_core.instruments import Instrument

# Commands DESIGN.md names that later issues build; they fail clearly until then.
PLANNED: dict[str, str] = {}


# Commands whose module owns its own argument parsing: name → module with main(argv).
SUBCOMMANDS = {
    "backtest": "tools.backtest.cli",
    "bot": "tools.bot",
    "cortex": "cortex.launcher",
    "history": "tools.backtest.history_cli",
    "doctor": "tools.doctor",
    "mcp": "tools.mcp_server",
    "metrics": "tools.metrics",
    "notify": "tools.notify.cli",
    "optimize": "tools.optimize.cli",
    "report": "tools.report",
    "research": "tools.research",
    "service": "tools.service",
    "stress": "tools.stress.cli",
    "shadow": "tools.shadow.cli",
    "watch": "tools.console",
}
CONTROL_COMMANDS = tuple(CLI_COMMANDS)  # the CLI names of chimera_core.control.Command


def cmd_live(args: argparse.Namespace) -> int:
    import structlog
    import uvloop

    from chimera_core.config import load_config, load_credentials, load_env, secret_values
    from chimera_core.control import resolve_token
    from chimera_core.live import run_live
    from chimera_core.logging import configure_logging

    env = load_env(args.env_file)
    configure_logging("INFO", secret_values(env))
    cfg = load_config(args.config)
    configure_logging(cfg.logging.level)
    credentials = load_credentials(cfg, env)
    token = resolve_token(env, Path(cfg.data_dir))
    configure_logging(
        cfg.logging.level, [credentials.jwt, credentials.feed_token, credentials.api_key, token]
    )
    if cfg.mode == "live":
        structlog.get_logger(__name__).warning(
            "live_mode", broker=cfg.execution.broker, note="orders go to the real broker"
        )
    instruments: list[Instrument] = []
    if cfg.instruments.names:
        cfg, instruments = with_instruments(cfg)
    import functools

    from tools.node import build_node, build_parts

    # The journal for this mode only (data/<mode>/chimera.db), the configured broker, and
    # governance state kept apart per mode: no path lets paper touch live.
    parts = build_parts(cfg, env, instruments)
    try:
        make_node = functools.partial(build_node, cfg, parts)
        uvloop.run(run_live(cfg, credentials, make_node, control_token=token))
    finally:
        parts.close()
    return 0


def with_instruments(cfg: Config) -> tuple[Config, list[Instrument]]:
    """Resolve ``[instruments] names`` through today's instrument master (downloaded once a
    day, cached under data_dir) and add them to the feed with their segment, lot and tick
    size, so the recorded config says exactly what was traded."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    import msgspec

    from chimera_core.contracts import ExchangeType
    from chimera_core.instruments import load_master

    # The master is dated by the Indian trading day; the wall clock is right here (start-up,
    # outside the engine).
    today = dt.datetime.now(ZoneInfo("Asia/Kolkata")).date()
    master = load_master(cfg.data_dir, cfg.instruments, today)
    instruments = master.resolve_all(cfg.instruments.names)
    feed = cfg.feed
    tokens = list(feed.tokens)
    for i in instruments:
        entry = f"{ExchangeType(i.exchange_type).name}:{i.token}"
        if entry not in tokens and i.token not in tokens:
            tokens.append(entry)
    feed = msgspec.structs.replace(
        feed,
        tokens=tokens,
        lots={**{i.token: i.lot_size for i in instruments if i.lot_size > 1}, **feed.lots},
        tick_sizes={**{i.token: i.tick_size for i in instruments}, **feed.tick_sizes},
    )
    return msgspec.structs.replace(cfg, feed=feed), instruments


def cmd_sim(argv: list[str]) -> int:
    from tools.sim.server import main as sim_main

    return sim_main(argv)


# `chimera bench NAME ...`: each benchmark's module has main(argv) and writes JSON + a plot
# under benchmarks/results/. hot-path is the default (no name given).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "hot-path": ("benchmarks.hot_path", "recv → decision latency, telemetry, replay (default)"),
    "engine-ab": ("benchmarks.engine_ab", "this tree's engine against another revision's"),
    "control": ("benchmarks.control", "control-channel round trip"),
    "kill-switch": ("benchmarks.kill_switch", "`chimera kill` to every order cancelled"),
    "fuzz": ("benchmarks.fuzz", "a million mutated frames through the whole node"),
    "backtest": ("benchmarks.backtest_bench", "fast mode against vectorbt and backtesting.py"),
    "backtest-event": ("benchmarks.backtest_event", "event-mode prints/s beside the engine alone"),
    "optimize": ("benchmarks.optimize_bench", "trials/s: one process, a local pool, local Ray"),
    "notify": ("benchmarks.notify_latency", "chimera notify: event → webhook delivery latency"),
    "shadow-cost": ("benchmarks.shadow_cost", "hot-path p50/p99 with 0 and 4 shadow candidates"),
    "bot-halt": ("benchmarks.bot_halt", "an operator's Telegram /halt to the engine halted"),
}  # fmt: skip


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help", "help"):
        print("usage: chimera bench [NAME] [options]   (NAME --help for its options)\n")
        for name, (_, what) in BENCHMARKS.items():
            print(f"  {name:12} {what}")
        return 0
    if not argv or argv[0] not in BENCHMARKS:
        argv = ["hot-path", *argv]
    name = argv[0]
    module = importlib.import_module(BENCHMARKS[name][0])
    # The older suites parse their own name as the first argument; backtest's and
    # optimize's do not.
    own = name.startswith("backtest") or name in ("optimize", "notify", "shadow-cost", "bot-halt")
    return int(module.main(argv[1:] if own else argv))


def build_parser() -> argparse.ArgumentParser:
    from chimera_core.config import default_config_path

    parser = argparse.ArgumentParser(prog="chimera", description="Chimera trading engine")
    sub = parser.add_subparsers(dest="command", required=True)
    live = sub.add_parser("live", help="run the hot path (paper unless the config says live)")
    live.add_argument(
        "--config",
        default=default_config_path(),
        help="TOML config (default: ./chimera.toml if present)",
    )
    live.add_argument(
        "--env-file", default=".env", help="file with CHIMERA_* secrets (default .env)"
    )
    sub.add_parser("sim", help="local SmartAPI v2 exchange simulator", add_help=False)
    sub.add_parser("bench", help="benchmarks (chimera bench --help lists them)", add_help=False)
    sub.add_parser("backtest", help="a strategy over history: event mode or --fast", add_help=False)
    sub.add_parser("stress", help="Monte Carlo and scenario tests of a backtest", add_help=False)
    sub.add_parser("history", help="Angel One candle history: fetch | ls", add_help=False)
    sub.add_parser(
        "optimize", help="walk-forward parameter search: run | show | rerun", add_help=False
    )
    sub.add_parser(
        "doctor", help="check config, credentials, data, ports, black box", add_help=False
    )
    sub.add_parser(
        "cortex", help="the Streamlit dashboard on 127.0.0.1 (--port 8501)", add_help=False
    )
    sub.add_parser("notify", help="alerts to any channel (apprise URLs from .env)", add_help=False)
    sub.add_parser("metrics", help="Prometheus /metrics from telemetry (127.0.0.1)", add_help=False)
    sub.add_parser("service", help="systemd units: install | uninstall | status", add_help=False)
    sub.add_parser(
        "genome", help="strategy genome: show | history | rollback | propose", add_help=False
    )
    sub.add_parser(
        "research", help="nightly research: history, studies, candidates", add_help=False
    )
    sub.add_parser(
        "shadow", help="candidate genomes on the live ticks: run | status", add_help=False
    )
    sub.add_parser("record", help="black-box recorder (telemetry → data/blackbox)", add_help=False)
    sub.add_parser("replay", help="replay / verify / export a recorded session", add_help=False)
    sub.add_parser("watch", help="a live terminal view of a running engine", add_help=False)
    sub.add_parser("bot", help="the operator's Telegram bot (allow-listed users)", add_help=False)
    sub.add_parser("report", help="daily / weekly report from the journal", add_help=False)
    for name in CONTROL_COMMANDS:
        sub.add_parser(name, help="operator command over the control channel", add_help=False)
    for name, what in PLANNED.items():
        sub.add_parser(name, help=f"{what} — not built yet", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, log_format = _log_format_option(argv)
    if argv and argv[0] in CONTROL_COMMANDS:
        # Before logging is set up: a kill switch must not wait for structlog's import.
        from tools.control_cli import main as control_main

        return control_main(argv[0], argv[1:])
    from chimera_core.logging import configure_logging, set_log_format

    if log_format is not None:
        try:
            set_log_format(log_format)
        except ValueError as exc:
            print(f"chimera: --{exc}", file=sys.stderr)
            return 2
    configure_logging("INFO")
    # These own their argument parsing.
    if argv and argv[0] == "sim":
        return cmd_sim(argv[1:])
    if argv and argv[0] == "bench":
        return cmd_bench(argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]])
        try:
            return int(module.main(argv[1:]))
        except ChimeraError as exc:  # what to fix, in one line: no traceback
            print(f"chimera {argv[0]}: {exc}", file=sys.stderr)
            return 2
    if argv and argv[0] == "genome":
        from tools.genome_cli import main as genome_main

        return genome_main(argv[1:])
    if argv and argv[0] == "record":
        from tools.record import main as record_main

        return record_main(argv[1:])
    if argv and argv[0] == "replay":
        from tools.replay import main as replay_main

        return replay_main(argv[1:])
    if argv and argv[0] in CONTROL_COMMANDS:
        from tools.control_cli import main as control_main

        return control_main(argv[0], argv[1:])
    if argv and argv[0] in PLANNED:
        print(f"chimera {argv[0]}: {PLANNED[argv[0]]} is not built yet", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        if args.command == "live":
            return cmd_live(args)
    except ChimeraError as exc:
        print(f"chimera {args.command}: {exc}", file=sys.stderr)
        return 2
    return 2


def _log_format_option(argv: list[str]) -> tuple[list[str], str | None]:
    """``--log-format json|console|auto`` anywhere on the line (every command logs the
    same way), taken out before the command parses the rest; checked by set_log_format
    (not here: the control commands must not wait for the logging import)."""
    out: list[str] = []
    fmt: str | None = None
    it = iter(argv)
    for arg in it:
        if arg == "--log-format":
            fmt = next(it, "")
        elif arg.startswith("--log-format="):
            fmt = arg.split("=", 1)[1]
        else:
            out.append(arg)
    return out, fmt


def live_main() -> int:
    """``chimera-live``: the systemd entry point, same as ``chimera live``."""
    return main(["live", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
