"""One backtest, either mode, as a result a report can be written from: settings, the
input's hash, the code version, metrics, trades, and the series to plot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from chimera_core.config import Config
from chimera_core.contracts import ExchangeType
from chimera_core.errors import ChimeraError
from chimera_core.markets import calendar_for
from chimera_core.strategy import StrategyFactory, default_factory, ma_cross_factory
from tools.backtest.data import code_version
from tools.backtest.event import BarSeries, EventResult, Trade, backtest_config, run_event

RESULT_SCHEMA = 1


def _progress(
    total: int, quiet: bool, what: str
) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A rich progress bar over ``total`` bars (nothing when quiet or not a terminal)."""
    import sys

    if quiet or not sys.stderr.isatty():
        return (lambda _n: None), (lambda: None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(what),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} bars"),
        TimeRemainingColumn(),
        transient=True,
    )
    task = bar.add_task(what, total=total)
    bar.start()
    step = max(1, total // 200)

    def advance(n: int) -> None:
        if n % step == 0 or n == total:
            bar.update(task, completed=n)

    return advance, bar.stop


def _data_meta(bars: Any) -> dict[str, Any]:
    ts = np.asarray(bars.ts_ms, dtype=np.int64)
    return {
        "sha256": getattr(bars, "sha256", ""),
        "symbol": getattr(bars, "symbol", ""),
        "bars": int(ts.size),
        "first_ts_ms": int(ts[0]) if ts.size else None,
        "last_ts_ms": int(ts[-1]) if ts.size else None,
        "interval_ms": int(bars.interval_ms),
        "tz": getattr(bars, "tz", ""),
    }


def _settings(cfg: Config) -> dict[str, Any]:
    """What of the configuration decides a backtest's trades (recorded with the result)."""
    return {
        "strategy": msgspec.to_builtins(cfg.strategy),
        "execution": {
            k: v
            for k, v in msgspec.to_builtins(cfg.execution).items()
            if k not in ("angelone", "throttle")
        },
        "governance": msgspec.to_builtins(cfg.governance),
        "markets": msgspec.to_builtins(cfg.markets),
    }


# Event mode's side of each registered strategy: its StrategyFactory from checked params
# (the default strategy takes its params through [strategy], which seeds the genome).
_EVENT: dict[str, Callable[[Mapping[str, Any], bool], StrategyFactory]] = {
    "default": lambda _p, _long_only: default_factory,
    "ma_cross": lambda p, long_only: ma_cross_factory(int(p["fast"]), int(p["slow"]), long_only),
}


def _checked(spec: Any, params: Mapping[str, float] | None) -> dict[str, Any]:
    """``params`` as the strategy declares them (``--param fast=10`` arrives as 10.0)."""
    ints = {p.name for p in spec.params if p.kind is int}
    given = {k: int(v) if k in ints and float(v).is_integer() else v
             for k, v in (params or {}).items()}  # fmt: skip
    return dict(spec.check_params(given))


def event_factory(
    strategy: str, params: Mapping[str, float] | None = None, long_only: bool = False
) -> StrategyFactory:
    """Event mode's StrategyFactory for a registered (or module:attr) strategy."""
    from tools.backtest.strategies import get

    spec = get(strategy)
    checked = _checked(spec, params)
    make = spec.event if spec.event is not None else _EVENT.get(strategy)
    if make is None:
        raise ChimeraError(f"strategy {strategy!r} has no event-mode side; use --fast")
    return make(checked, long_only)


def run_backtest(
    cfg: Config,
    bars: BarSeries,
    strategy: str = "default",
    params: Mapping[str, float] | None = None,
    fast: bool = False,
    token: str = "BT",
    exchange_type: int = int(ExchangeType.NSE_CM),
    quiet: bool = True,
    long_only: bool = False,
    fast_settings: Mapping[str, Any] | None = None,
    decide: str = "print",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result, series): ``result`` goes to result.json as it is; ``series`` feeds the
    report's plots (``ts_ms``, ``close``, ``equity``, ``panel``, ``band_k``).

    ``decide`` (fast mode, default strategy): "print" decides on every print event mode
    replays, as the live node does (the same trades as event mode); "close" decides once
    per bar close, the per-close kernel `chimera optimize` sweeps with (faster, and its
    trades differ from event mode's: the result says so)."""
    if decide not in ("print", "close"):
        raise ChimeraError(f"decide must be 'print' or 'close', got {decide!r}")
    from tools.backtest import metrics
    from tools.backtest.strategies import get

    spec = get(strategy)
    checked = _checked(spec, params)
    if strategy == "default":  # the genome is seeded from [strategy]: the params go there
        cfg = msgspec.structs.replace(
            cfg, strategy=msgspec.structs.replace(cfg.strategy, **checked)
        )
    # Both modes run on the configuration event mode replays with (one instrument, the
    # data's bar interval, positional on daily bars): the same calendar, product, charges.
    bt = backtest_config(cfg, bars, token, exchange_type, Path("."))
    if fast_settings and not fast:
        raise ChimeraError(
            "--set changes fast mode's settings; event mode takes them from the config "
            "(the paper broker's slippage and latency, [markets] charges, [strategy]): "
            "add --fast, or set them in chimera.toml"
        )
    result: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "mode": "fast" if fast else "event",
        "strategy": strategy,
        "params": checked,
        "long_only": long_only,
        "fast_settings": dict(fast_settings or {}),
        "data": _data_meta(bars),
        "code_version": code_version(),
        "settings": _settings(bt),
    }
    ts = np.asarray(bars.ts_ms, dtype=np.int64)
    close = np.asarray(bars.close, dtype=np.float64)
    if fast:
        settings, entries, square_off, open_delay = fast_inputs(
            bt, bars, token, exchange_type, long_only, fast_settings
        )
        ohlcv = (
            np.asarray(bars.open, dtype=np.float64), np.asarray(bars.high, dtype=np.float64),
            np.asarray(bars.low, dtype=np.float64), close,
            np.asarray(bars.volume, dtype=np.float64),
        )  # fmt: skip
        if strategy == "default" and decide == "print":
            # Decided on every print event mode replays, as the node does (parity:
            # tests/backtest/test_parity.py), on the calendar read at each print.
            from tools.backtest import prints

            out = prints.default_prints(
                *ohlcv, ts_ms=ts, interval_ms=int(bars.interval_ms), settings=settings,
                timing=prints.timing_from_config(bt, int(bars.interval_ms)),
                calendar=calendar_for(bt.markets, exchange_type), **checked,
            )  # fmt: skip
        else:
            out = spec.run_fast(
                *ohlcv, settings=settings, params=checked, ts_ms=ts, entries_allowed=entries,
                square_off=square_off, open_delay=open_delay,
            )  # fmt: skip
        trades = out.trades
        records = trades.as_records()
        result.update(
            bars=int(ts.size), starting_equity=settings.initial_equity,
            final_equity=out.final_equity, charges=out.charges_paid, trades=records,
        )  # fmt: skip
        equity, position = out.equity, out.position
        panel = None
        differs = []
        if bt.governance.enabled:
            differs.append(
                "governance is on: event mode sizes entries by the capital brain and applies "
                "drift, meta-risk and approvals; fast mode trades the fixed quantity "
                + (
                    "with no cap (the default strategy per print)"
                    if strategy == "default"
                    else "under the exposure caps only"
                )
                + ". Compare modes with [governance] enabled = false"
            )
        if strategy == "default" and decide == "close":
            differs.append(
                "decided once per bar close (the per-close kernel chimera optimize sweeps "
                "with); event mode and the live node decide on every print of the forming bar"
            )
        if differs:
            result["differs_from_event_mode"] = differs
    else:
        make = spec.event if spec.event is not None else _EVENT.get(strategy)
        if make is None:
            raise ChimeraError(f"strategy {strategy!r} has no event-mode side; use --fast")
        advance, done = _progress(len(ts), quiet, f"event mode · {strategy}")
        try:
            ev = asyncio.run(
                run_event(
                    cfg, bars, token, exchange_type, progress=advance,
                    strategy=make(checked, long_only),
                )
            )  # fmt: skip
        finally:
            done()
        result.update(_event_result(ev))
        trades = trades_of(ev.trades)
        equity, position = ev.equity, None
        panel = {"energy": ev.energy, "z": ev.z, "band_mean": ev.band_mean,
                 "band_std": ev.band_std} if strategy == "default" else None  # fmt: skip
    figures = metrics.compute(
        equity, trades=trades, ts_ms=ts, initial_equity=result["starting_equity"],
        position=position,
    )  # fmt: skip
    result["metrics"] = msgspec.to_builtins(figures)
    series = {"ts_ms": ts, "close": close, "equity": equity, "panel": panel,
              "band_k": bt.strategy.band_k}  # fmt: skip
    return result, series


def fast_inputs(
    bt: Config,
    bars: Any,
    token: str,
    exchange_type: int,
    long_only: bool = False,
    fast_settings: Mapping[str, Any] | None = None,
) -> tuple[Any, Any, Any, Any]:
    """(settings, entries_allowed, square_off, open_delay): what fast mode needs beside the
    bars, from the configuration event mode runs with (``bt``: ``backtest_config``'s), so
    ``run_backtest --fast`` and ``chimera optimize`` trade under the same rules."""
    from tools.backtest import fast as fast_mode

    ts = np.asarray(bars.ts_ms, dtype=np.int64)
    segment = ExchangeType(exchange_type).name
    interval_ms = int(bars.interval_ms)
    overrides = {"fill": "next_open", "long_only": long_only, **(fast_settings or {})}
    known = {f.name for f in msgspec.structs.fields(fast_mode.FastSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ChimeraError(
            f"--set {', '.join(unknown)}: not a fast-mode setting; the settings are "
            f"{', '.join(sorted(known - {'equity_charges'}))} (docs/BACKTEST_METRICS.md)"
        )
    settings = fast_mode.settings_from_config(
        bt, token=f"{segment}:{token}", bar_interval_s=interval_ms / 1000, **overrides
    )
    calendar = calendar_for(bt.markets, exchange_type)
    # The node acts on a bar's decision at the next bar's open (the next morning's after
    # the last bar of a day): its entry cut-off and
    # square-off are read there, and a feed gap before that open delays the entry as
    # the node's feed clock and staleness rules do (fast.event_open_delays).
    acted = np.append(ts[1:], ts[-1] + interval_ms)  # the next bar's open, as it came
    entries, square_off = fast_mode.session_masks(acted, calendar)
    return settings, entries, square_off, fast_mode.event_open_delays(bt, ts, interval_ms)


_EXIT_CODE = {"EXIT": 1, "STOP_LOSS": 4, "TAKE_PROFIT": 5, "SQUARE_OFF": 6, "END": 0}


def trades_of(rows: Sequence[Trade]) -> Any:
    """Event mode's round trips as metrics.Trades (a trip open at the end: exit_bar -1)."""
    from tools.backtest.metrics import Trades

    open_ = [t.exit_purpose == "END" for t in rows]
    return Trades(
        entry_bar=np.asarray([t.entry_bar for t in rows], dtype=np.int64),
        exit_bar=np.asarray([-1 if o else t.exit_bar for t, o in zip(rows, open_, strict=True)],
                            dtype=np.int64),
        side=np.asarray([1 if t.side == "LONG" else -1 for t in rows], dtype=np.int8),
        qty=np.asarray([t.qty for t in rows], dtype=np.int64),
        entry_price=np.asarray([t.entry_price for t in rows], dtype=np.float64),
        exit_price=np.asarray([np.nan if o else t.exit_price
                               for t, o in zip(rows, open_, strict=True)], dtype=np.float64),
        charges=np.asarray([t.charges for t in rows], dtype=np.float64),
        pnl=np.asarray([np.nan if o else t.pnl for t, o in zip(rows, open_, strict=True)],
                       dtype=np.float64),
        exit_reason=np.asarray([_EXIT_CODE.get(t.exit_purpose, 1) for t in rows], dtype=np.int8),
    )  # fmt: skip


def _event_result(ev: EventResult) -> dict[str, Any]:
    trades = [
        {
            "token": t.token,
            "side": t.side,
            "qty": t.qty,
            "entry_bar": t.entry_bar,
            "entry_ts_ms": t.entry_ts_ms,
            "entry_price": t.entry_price,
            "exit_bar": t.exit_bar,
            "exit_ts_ms": t.exit_ts_ms,
            "exit_price": t.exit_price,
            "exit_reason": t.exit_purpose,
            "charges": t.charges,
            "pnl": t.pnl,
        }
        for t in ev.trades
    ]
    return {
        "bars": ev.bars,
        "ticks": ev.ticks,
        "starting_equity": ev.starting_equity,
        "final_equity": float(ev.equity[-1]),
        "charges": ev.charges,
        "trades": trades,
        "final_state": ev.final_state,
        "transitions": ev.transitions,
        "engine": {k: v for k, v in ev.stats.items() if v},
    }
