"""One parameter set on one walk-forward window: the fast-mode backtest and its metrics.

A ``Workload`` is everything an evaluation reads (the instruments' bars and their
fast-mode inputs, the study's time grid and folds): built once by the driver, sent to
each worker once (the pool's initializer, Ray's object store), then only small ``Task``s
(a trial's parameters and a window) travel.

Windows (``tools.optimize.folds``):

- ``train``: the fold's train window, from a flat start at its first bar.
- ``test``: the run from the fold's train start to its test end, scored on the test
  window only (its equity rebased at the last train bar; its trades those entered in the
  test window). The kernels are causal, so the train part of that run is the train
  evaluation itself: the test window continues the position and the indicators the
  strategy had at the end of train, as a live engine would, and reads no bar after it.

Several instruments are one book: each runs in its own account (the fast-mode settings'
initial equity) and the book's equity is their sum on the study's time grid (an
instrument without a bar at a grid time holds its last equity); its trades are theirs.
With one instrument the book is that instrument's run.

``account = "shared"`` scores a trial on ONE account instead: the window's bars of every
instrument through event mode's node (``tools.backtest.event.run_instruments``: one
engine, governance with the ``[governance.portfolio]`` rules over the whole book, one
paper broker), its equity the account's. Honest for the portfolio rules, and seconds per
window where close mode takes milliseconds (docs/OPTIMIZE.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from tools.backtest import metrics as bt_metrics
from tools.backtest.metrics import Trades
from tools.optimize.folds import Fold

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Phase = Literal["train", "test"]

# Objectives a study can search on: the metric, and whether more is better.
OBJECTIVES: dict[str, bool] = {
    "sharpe": True,
    "sortino": True,
    "calmar": True,
    "total_return": True,
    "annual_return": True,
    "max_drawdown": False,
    "turnover": False,
}
# NSGA-II's three objectives (issue 15): return vs drawdown vs turnover.
MULTI_OBJECTIVES = ("total_return", "max_drawdown", "turnover")


@dataclass(frozen=True, slots=True)
class Instrument:
    """One instrument's bars and the fast-mode inputs event mode's rules give them."""

    name: str
    sha256: str
    ts_ms: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    entries_allowed: npt.NDArray[np.bool_]
    square_off: npt.NDArray[np.bool_]
    open_delay: npt.NDArray[np.int8]
    settings: Any  # tools.backtest.fast.FastSettings


@dataclass(frozen=True, slots=True)
class Workload:
    """What every evaluation of a study reads; pickled once per worker."""

    strategy: str
    instruments: tuple[Instrument, ...]
    grid_ts_ms: IntArray  # the sorted union of the instruments' bar times
    folds: tuple[Fold, ...]
    periods_per_year: float
    day_starts: IntArray  # grid index of each trading day's first bar (the folds' zone)
    # "separate": each instrument its own account (close mode); "shared": one account in
    # event mode, which reads the configuration and the bars below.
    account: str = "separate"
    cfg: Any = None  # chimera_core.config.Config
    bars: tuple[Any, ...] = ()  # each instrument's Bars, as ``instruments``
    exchange_type: int = 1
    long_only: bool = False

    def initial_equity(self) -> float:
        if self.account == "shared":
            return float(self.cfg.execution.paper.starting_cash)
        return float(sum(i.settings.initial_equity for i in self.instruments))


@dataclass(frozen=True)
class _Window:
    """Bars ``[lo, hi)`` of one instrument, as event mode reads a series."""

    ts_ms: IntArray
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    interval_ms: int
    tz: str


def _run_window_shared(
    w: Workload, params: Mapping[str, Any], start: int, stop: int
) -> tuple[FloatArray, Trades, npt.NDArray[np.int64]]:
    """``_run_window`` on one account: the window through event mode's node."""
    import asyncio

    from tools.backtest.event import run_instruments
    from tools.backtest.multi import configured
    from tools.backtest.run import event_factory, trades_of

    grid = w.grid_ts_ms[start:stop]
    t0 = w.grid_ts_ms[start]
    t1 = w.grid_ts_ms[stop] if stop < w.grid_ts_ms.size else np.iinfo(np.int64).max
    pairs = []
    for inst, b in zip(w.instruments, w.bars, strict=True):
        lo, hi = (int(x) for x in np.searchsorted(b.ts_ms, [t0, t1]))
        if hi > lo:
            sl = slice(lo, hi)
            cols = (b.ts_ms[sl], b.open[sl], b.high[sl], b.low[sl], b.close[sl], b.volume[sl])
            pairs.append((inst.name, _Window(*cols, b.interval_ms, b.tz)))
    cfg = configured(w.cfg, w.strategy, params)
    factory = event_factory(w.strategy, params, w.long_only)
    # Its calendar is grid[start:stop]: every grid time is some instrument's bar open.
    ev = asyncio.run(run_instruments(cfg, pairs, w.exchange_type, strategy=factory))
    moved = np.zeros((len(pairs), grid.size), dtype=np.int64)
    index = {t: i for i, (t, _) in enumerate(pairs)}
    for f in ev.fills:
        k = int(np.searchsorted(grid, f["ts_ms"], side="right")) - 1
        moved[index[f["token"]], k] += f["qty"] if f["side"] == "BUY" else -f["qty"]
    held = (np.cumsum(moved, axis=1) != 0).any(axis=0).astype(np.int64)
    return ev.equity, trades_of(ev.trades), held


@dataclass(frozen=True, slots=True)
class Task:
    """Evaluate ``params`` on fold ``fold``'s ``phase`` window; ``key`` comes back as is."""

    key: tuple[int, int]  # (fold, trial number)
    params: Mapping[str, Any]
    fold: int
    phase: Phase = "train"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A task's result: the book's metrics (JSON-ready), its returns over the scored
    window (test: per bar, for the stitched equity; train: per trading day, compounded,
    for the PBO matrix: a per-bar matrix of a year of minute bars by thousands of trials
    would not fit, nor travel back from the workers cheaply), the per-bar Sharpe (mean /
    std, not annualised: the deflated Sharpe's trial Sharpes), or the error that made the
    parameters unusable."""

    key: tuple[int, int]
    metrics: dict[str, Any] | None
    returns: FloatArray = field(default_factory=lambda: np.empty(0))
    bar_sharpe: float = 0.0
    error: str | None = None


def objective_value(metrics: Mapping[str, Any], name: str) -> float:
    """The number an objective reads from metrics: an undefined ratio (a flat curve's
    Sharpe) counts as 0, no edge; an undefined turnover as 0, nothing traded."""
    value = metrics.get(name)
    return 0.0 if value is None else float(value)


def _run_window(
    w: Workload, params: Mapping[str, Any], start: int, stop: int
) -> tuple[FloatArray, Trades, npt.NDArray[np.int64]]:
    """(book equity on grid[start:stop], book trades with grid-relative bars, held flag)."""
    from tools.backtest.strategies import get

    if w.account == "shared":
        return _run_window_shared(w, params, start, stop)

    spec = get(w.strategy)
    grid = w.grid_ts_ms[start:stop]
    n = int(grid.size)
    book = np.zeros(n)
    held = np.zeros(n, dtype=np.int64)
    parts: list[Trades] = []
    t0 = w.grid_ts_ms[start]
    t1 = w.grid_ts_ms[stop] if stop < w.grid_ts_ms.size else np.iinfo(np.int64).max
    for inst in w.instruments:
        lo, hi = np.searchsorted(inst.ts_ms, [t0, t1])
        lo, hi = int(lo), int(hi)
        e0 = float(inst.settings.initial_equity)
        if hi - lo < 1:
            book += e0
            continue
        sl = slice(lo, hi)
        out = spec.run_fast(
            inst.open[sl], inst.high[sl], inst.low[sl], inst.close[sl], inst.volume[sl],
            settings=inst.settings, params=params, ts_ms=inst.ts_ms[sl],
            entries_allowed=inst.entries_allowed[sl], square_off=inst.square_off[sl],
            open_delay=inst.open_delay[sl],
        )  # fmt: skip
        # Each grid time: the instrument's last bar at or before it (its equity holds).
        idx = np.searchsorted(inst.ts_ms[sl], grid, side="right") - 1
        book += np.where(idx >= 0, out.equity[np.maximum(idx, 0)], e0)
        held += np.where(idx >= 0, out.position[np.maximum(idx, 0)] != 0, False)
        at = np.searchsorted(grid, inst.ts_ms[sl])  # the grid index of each bar
        tr = out.trades
        parts.append(
            Trades(
                entry_bar=at[tr.entry_bar].astype(np.int64),
                exit_bar=np.where(tr.exit_bar >= 0, at[np.maximum(tr.exit_bar, 0)], -1).astype(
                    np.int64
                ),
                side=tr.side, qty=tr.qty, entry_price=tr.entry_price, exit_price=tr.exit_price,
                charges=tr.charges, pnl=tr.pnl, exit_reason=tr.exit_reason,
            )
        )  # fmt: skip
    trades = _concat(parts) if parts else bt_metrics.empty_trades()
    return book, trades, held


def _concat(parts: Sequence[Trades]) -> Trades:
    if len(parts) == 1:
        return parts[0]
    fields = ("entry_bar", "exit_bar", "side", "qty", "entry_price", "exit_price", "charges",
              "pnl", "exit_reason")  # fmt: skip
    cat = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
    order = np.argsort(cat["entry_bar"], kind="stable")
    return Trades(**{f: v[order] for f, v in cat.items()})


def _tail(trades: Trades, k: int) -> Trades:
    """The trades entered at or after bar ``k``, their bars counted from ``k``."""
    keep = trades.entry_bar >= k
    return Trades(
        entry_bar=trades.entry_bar[keep] - k,
        exit_bar=np.where(trades.exit_bar[keep] >= 0, trades.exit_bar[keep] - k, -1),
        side=trades.side[keep], qty=trades.qty[keep], entry_price=trades.entry_price[keep],
        exit_price=trades.exit_price[keep], charges=trades.charges[keep], pnl=trades.pnl[keep],
        exit_reason=trades.exit_reason[keep],
    )  # fmt: skip


def _returns(equity: FloatArray, initial: float) -> FloatArray:
    previous = np.concatenate(([initial], equity[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = equity / previous - 1.0
    return np.where(np.isfinite(r), r, 0.0)


def evaluate(w: Workload, task: Task) -> Outcome:
    """One task: its book metrics and per-bar returns, or the parameters' error."""
    from chimera_core.errors import ChimeraError

    fold = w.folds[task.fold]
    try:
        if task.phase == "train":
            a, b = fold.train
            equity, trades, held = _run_window(w, task.params, a, b)
            initial = w.initial_equity()
            ts = w.grid_ts_ms[a:b]
        else:
            a, b = fold.train_start, fold.test_end
            full, trades_all, held_all = _run_window(w, task.params, a, b)
            k = fold.test_start - a
            initial = float(full[k - 1]) if k > 0 else w.initial_equity()
            equity, held, trades = full[k:], held_all[k:], _tail(trades_all, k)
            ts = w.grid_ts_ms[fold.test_start : fold.test_end]
        if not (math.isfinite(initial) and initial > 0):
            return Outcome(task.key, None, error=f"equity {initial!r} at the test window's start")
        m = bt_metrics.compute(
            equity, trades=trades, ts_ms=ts, periods=w.periods_per_year,
            initial_equity=initial, position=held,
        )  # fmt: skip
    except ChimeraError as exc:  # a parameter set the strategy refuses (fast >= slow)
        return Outcome(task.key, None, error=str(exc))
    r = _returns(equity, initial)
    if task.phase == "train":
        a = fold.train_start
        starts = w.day_starts[(w.day_starts >= a) & (w.day_starts < fold.test_start)] - a
        if starts.size == 0 or starts[0] != 0:
            starts = np.concatenate(([0], starts))
        periods = np.expm1(np.add.reduceat(np.log1p(r), starts)) if r.size else r
    else:
        periods = r
    return Outcome(task.key, msgspec.to_builtins(m), returns=periods, bar_sharpe=per_bar_sharpe(r))


def evaluate_batch(w: Workload, tasks: Sequence[Task]) -> list[Outcome]:
    return [evaluate(w, t) for t in tasks]


def per_bar_sharpe(returns: FloatArray) -> float:
    """mean / std (ddof 1) of per-bar returns, not annualised; 0 for a flat curve."""
    if returns.size < 2:
        return 0.0
    sd = float(np.std(returns, ddof=1))
    mean = float(np.mean(returns))
    if not (sd > 0 and sd > 1e-9 * abs(mean)):
        return 0.0
    return mean / sd
