"""A study's inputs: the bars of each instrument and the fast-mode inputs event mode's rules
give them (``tools.backtest.run.fast_inputs``), as one ``Workload``."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from chimera_core.config import Config
from chimera_core.contracts import ExchangeType
from chimera_core.errors import ChimeraError
from tools.optimize.evaluate import Instrument, Workload
from tools.optimize.folds import FoldSpec, day_starts, make_folds
from tools.optimize.study import DataRef


def token_of(path: Path, symbol: str = "") -> str:
    """The feed token a file's bars travel under: its symbol or name, ASCII letters and
    digits only (as ``chimera backtest``)."""
    name = symbol or path.stem
    return "".join(c for c in name if c.isascii() and c.isalnum())[:20] or "BT"


def load_instruments(
    paths: Sequence[str | Path], segment: str, interval: str | None = None, tz: str | None = None
) -> list[tuple[DataRef, Any]]:
    """(reference, bars) per instrument, checked; the same token twice is refused. A
    long-format file (a symbol or token column: docs/BACKTEST_DATA.md) gives one per
    symbol, in token order, each referring to the file."""
    from tools.backtest.data import load_bars
    from tools.backtest.universe import load_universe, symbol_column_in

    if segment not in ExchangeType.__members__:
        raise ChimeraError(f"--segment {segment!r}: one of {', '.join(ExchangeType.__members__)}")
    out: list[tuple[DataRef, Any]] = []
    seen: set[str] = set()
    for p in dict.fromkeys(str(x) for x in paths):  # a long file's symbols name it each
        path = Path(p)
        if not path.exists():
            raise ChimeraError(f"--data {p}: no such file (an OHLCV .csv or .parquet)")
        if symbol_column_in(path) is not None:
            found = load_universe([path], interval=interval, tz=tz).pairs()
        else:
            bars = load_bars(path, interval=interval, tz=tz)
            found = [(token_of(path, getattr(bars, "symbol", "")), bars)]
        for token, bars in found:
            if token in seen:
                raise ChimeraError(f"--data {p}: instrument {token!r} given twice")
            seen.add(token)
            ref = DataRef(path=str(path.resolve()), sha256=bars.sha256, token=token,
                          segment=segment)  # fmt: skip
            out.append((ref, bars))
    if not out:
        raise ChimeraError("--data: give at least one OHLCV file")
    return out


def build_workload(
    cfg: Config,
    loaded: Sequence[tuple[DataRef, Any]],
    strategy: str,
    folds: FoldSpec,
    long_only: bool = False,
    fast_settings: Mapping[str, Any] | None = None,
    account: str = "separate",
) -> tuple[Workload, str]:
    """(workload, settings hash): the hash covers every instrument's fast-mode settings and
    session masks (and with ``account="shared"``, one account in event mode, the
    configuration event mode runs), so a rerun can tell whether it changed."""
    if account not in ("separate", "shared"):
        raise ChimeraError(f"--account {account!r}: separate or shared")
    if account == "shared" and fast_settings:
        raise ChimeraError("--set changes fast mode's settings: drop it with --account shared")
    from tools.backtest import metrics as bt_metrics
    from tools.backtest.event import backtest_config
    from tools.backtest.run import fast_inputs

    instruments: list[Instrument] = []
    h = hashlib.sha256()
    for ref, bars in loaded:
        exchange_type = int(ExchangeType[ref.segment])
        bt = backtest_config(cfg, bars, ref.token, exchange_type, Path("."))
        settings, entries, square_off, delays = fast_inputs(
            bt, bars, ref.token, exchange_type, long_only, fast_settings
        )
        inst = Instrument(
            name=ref.token, sha256=ref.sha256,
            ts_ms=np.ascontiguousarray(bars.ts_ms, dtype=np.int64),
            open=np.ascontiguousarray(bars.open, dtype=np.float64),
            high=np.ascontiguousarray(bars.high, dtype=np.float64),
            low=np.ascontiguousarray(bars.low, dtype=np.float64),
            close=np.ascontiguousarray(bars.close, dtype=np.float64),
            volume=np.ascontiguousarray(bars.volume, dtype=np.float64),
            entries_allowed=np.ascontiguousarray(entries, dtype=np.bool_),
            square_off=np.ascontiguousarray(square_off, dtype=np.bool_),
            open_delay=np.ascontiguousarray(delays, dtype=np.int8),
            settings=settings,
        )  # fmt: skip
        instruments.append(inst)
        h.update(msgspec.json.encode(settings))
        for a in (inst.entries_allowed, inst.square_off, inst.open_delay):
            h.update(a.tobytes())
    if account == "shared":
        h.update(b"shared\x00" + msgspec.json.encode(cfg))
    grid = np.unique(np.concatenate([i.ts_ms for i in instruments]))
    interval_s = min(bt_metrics.bar_interval_s(i.ts_ms) for i in instruments)
    periods = bt_metrics.periods_per_year(interval_s)
    fold_list = make_folds(grid, folds)
    w = Workload(
        strategy=strategy, instruments=tuple(instruments), grid_ts_ms=grid,
        folds=tuple(fold_list), periods_per_year=float(periods),
        day_starts=day_starts(grid, folds.tz),
        account=account, cfg=cfg if account == "shared" else None,
        bars=tuple(b for _, b in loaded) if account == "shared" else (),
        exchange_type=int(ExchangeType[loaded[0][0].segment]), long_only=long_only,
    )  # fmt: skip
    return w, h.hexdigest()
