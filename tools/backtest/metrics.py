"""Backtest metrics: pure numpy over an equity curve (+ bar times) and a trade list.

Both backtest modes (event and fast) and ``chimera report`` compute their figures here, so a
number means the same thing wherever it is printed. Definitions (docs/BACKTEST_METRICS.md
says the same at more length):

- returns ``r_t = E_t / E_{t-1} - 1`` per bar, with ``E_{-1}`` = the initial equity.
- ``total_return`` = E_last / E_initial - 1.
- ``annual_return`` (CAGR) = (1 + total_return) ** (periods_per_year / bars) - 1.
- ``sharpe`` = mean(r - rf) / std(r - rf, ddof=1) x sqrt(periods_per_year), rf the
  per-bar risk-free rate (1 + rf_annual) ** (1 / periods_per_year) - 1 (default 0).
- ``sortino`` = mean(r - rf) / sqrt(mean(min(r - rf, 0) ** 2)) x sqrt(periods_per_year)
  (downside deviation over every bar, the empyrical convention).
- ``max_drawdown`` = max over t of 1 - E_t / max(E_initial, E_0..E_t), a fraction >= 0.
- ``max_drawdown_bars`` = the longest run of bars spent below a previous peak (peak to
  recovery, or to the end if never recovered); ``max_drawdown_s`` the same in seconds of
  bar time when timestamps are given.
- ``calmar`` = annual_return / max_drawdown.
- ``win_rate`` = closed trades with pnl > 0 (net of charges) / closed trades.
- ``profit_factor`` = sum of winning pnl / |sum of losing pnl|.
- ``exposure`` = fraction of bars that end holding a position.
- ``turnover`` = traded value of every fill (qty x price, entries and exits) / mean equity.
- ``charges`` = charges paid on every fill; ``trades`` = closed trades, ``open_trades``
  those still held at the end.

Undefined values (a Sharpe of a flat or constant-return curve, a profit factor without
losses, an annual return that overflows a float) are None in JSON, never NaN or Infinity
(which JSON does not have).

Annualisation (``periods_per_year``): an intraday bar of ``interval`` seconds gives
``trading_days x ceil(session_s / interval)`` bars a year (NSE: 252 days x 375 one-minute
bars in its 09:15-15:30 session); a bar from one session up to a day long gives
``trading_days``; a longer bar gives 365.25 days / its length (weekly ~52.18, monthly ~12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import numpy as np
import numpy.typing as npt

from tools.backtest.rolling import BacktestInputError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]

# Why a trade ended (both modes): the live engine's names for the same exits.
EXIT_OPEN = 0  # still held when the data ended
EXIT_SIGNAL_REVERSAL = 1  # DefaultStrategy.exit_reason "signal_reversal" (MA cross: crossed back)
EXIT_ENERGY_DECAY = 2  # "energy_decay"
EXIT_MAX_HOLD = 3  # "max_hold"
EXIT_STOP_LOSS = 4  # the bracket's stop (Purpose.STOP_LOSS)
EXIT_TAKE_PROFIT = 5  # the bracket's target (Purpose.TAKE_PROFIT)
EXIT_SQUARE_OFF = 6  # the intraday square-off (Purpose.SQUARE_OFF)
EXIT_REASONS: tuple[str, ...] = (
    "open",
    "signal_reversal",
    "energy_decay",
    "max_hold",
    "stop_loss",
    "take_profit",
    "square_off",
)

NSE_SESSION_S = 22_500  # 09:15-15:30 IST
TRADING_DAYS = 252
DAY_S = 86_400
SIGNIFICANT_DIGITS = 12  # floats in the JSON: same inputs, byte-identical output


@dataclass(frozen=True, slots=True)
class Trades:
    """One row per round trip, in entry order. Bars are indices into the equity curve.

    ``entry_bar`` / ``exit_bar`` are the bars whose fills opened / closed the trade
    (``exit_bar`` -1 while open); ``side`` +1 long, -1 short; prices are fill prices,
    slippage included; ``charges`` both fills' charges; ``pnl`` = side x qty x (exit - entry)
    - charges (NaN while open); ``exit_reason`` an ``EXIT_*`` code."""

    entry_bar: IntArray
    exit_bar: IntArray
    side: Int8Array
    qty: IntArray
    entry_price: FloatArray
    exit_price: FloatArray
    charges: FloatArray
    pnl: FloatArray
    exit_reason: Int8Array

    def __len__(self) -> int:
        return int(self.entry_bar.size)

    @property
    def closed(self) -> npt.NDArray[np.bool_]:
        return self.exit_bar >= 0

    def as_records(self) -> list[dict[str, object]]:
        """Rows as plain dicts (JSON-ready; NaN as None), exit reasons by name."""
        rows: list[dict[str, object]] = []
        for i in range(len(self)):
            closed = bool(self.exit_bar[i] >= 0)
            rows.append(
                {
                    "entry_bar": int(self.entry_bar[i]),
                    "exit_bar": int(self.exit_bar[i]) if closed else None,
                    "side": int(self.side[i]),
                    "qty": int(self.qty[i]),
                    "entry_price": _clean(float(self.entry_price[i])),
                    "exit_price": _clean(float(self.exit_price[i])) if closed else None,
                    "charges": _clean(float(self.charges[i])),
                    "pnl": _clean(float(self.pnl[i])) if closed else None,
                    "exit_reason": EXIT_REASONS[int(self.exit_reason[i])],
                }
            )
        return rows


def empty_trades() -> Trades:
    f = np.empty(0)
    i = np.empty(0, dtype=np.int64)
    b = np.empty(0, dtype=np.int8)
    return Trades(i, i.copy(), b, i.copy(), f, f.copy(), f.copy(), f.copy(), b.copy())


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    """The figures of one backtest, in a fixed order (see the module docstring)."""

    bars: int
    periods_per_year: float
    initial_equity: float
    final_equity: float
    total_return: float
    annual_return: float | None
    sharpe: float | None
    sortino: float | None
    calmar: float | None
    max_drawdown: float
    max_drawdown_bars: int
    max_drawdown_s: float | None
    win_rate: float | None
    profit_factor: float | None
    exposure: float | None
    turnover: float | None
    traded_value: float
    charges: float
    trades: int
    open_trades: int

    def to_json(self) -> bytes:
        """Deterministic JSON: fields in this order, floats to 12 significant digits."""
        return msgspec.json.encode(self)

    def to_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__struct_fields__}


def _clean(x: float) -> float | None:
    """A finite float rounded to SIGNIFICANT_DIGITS, or None (NaN, inf)."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


# ---------------------------------------------------------------------------------------
# Annualisation
# ---------------------------------------------------------------------------------------


def periods_per_year(
    bar_interval_s: float, session_s: float = NSE_SESSION_S, trading_days: float = TRADING_DAYS
) -> float:
    """Bars per year for bars of ``bar_interval_s`` seconds (rule in the module docstring).
    A market open around the clock: session_s = 86400 and trading_days = 365 (or 252 …)."""
    for name, value in (
        ("bar_interval_s", bar_interval_s),
        ("session_s", session_s),
        ("trading_days", trading_days),
    ):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise BacktestInputError(f"{name} must be a finite number > 0, got {value!r}")
    if bar_interval_s < session_s:
        return float(trading_days * math.ceil(session_s / bar_interval_s - 1e-9))
    if bar_interval_s <= DAY_S:
        return float(trading_days)
    return 365.25 * DAY_S / bar_interval_s


def bar_interval_s(ts_ms: npt.NDArray[np.int64]) -> float:
    """The bar interval of a series of bar times: the median positive step (overnight and
    weekend gaps are a minority of steps, so they do not move it)."""
    ts = _checked_ts(ts_ms, None)
    steps = np.diff(ts)
    steps = steps[steps > 0]
    if steps.size == 0:
        raise BacktestInputError(
            "ts_ms: needs at least two distinct, increasing bar times to infer the bar "
            "interval; pass periods_per_year instead"
        )
    return float(np.median(steps)) / 1000.0


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def _checked_equity(equity: object) -> FloatArray:
    if not isinstance(equity, np.ndarray) or equity.ndim != 1 or equity.size == 0:
        raise BacktestInputError(
            "equity must be a non-empty 1-D numpy array of equity per bar, got "
            f"{type(equity).__name__}{getattr(equity, 'shape', '')}"
        )
    values = np.asarray(equity, dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise BacktestInputError(
            f"equity[{row}] = {values[row]!r} is not finite; the equity curve must be "
            "finite at every bar"
        )
    return values


def _checked_ts(ts_ms: object, size: int | None) -> npt.NDArray[np.int64]:
    if not isinstance(ts_ms, np.ndarray) or ts_ms.ndim != 1:
        raise BacktestInputError(
            f"ts_ms must be a 1-D numpy int64 array of bar times (ms), got {type(ts_ms).__name__}"
        )
    if size is not None and ts_ms.size != size:
        raise BacktestInputError(
            f"ts_ms has {ts_ms.size} bar times for {size} equity values; pass one per bar"
        )
    ts = ts_ms.astype(np.int64, copy=False)
    if ts.size > 1 and (np.diff(ts) < 0).any():
        row = int(np.argmax(np.diff(ts) < 0)) + 1
        raise BacktestInputError(f"ts_ms[{row}] is earlier than ts_ms[{row - 1}]; sort the bars")
    return ts


def drawdown(equity: FloatArray, initial_equity: float) -> tuple[float, int, int, int]:
    """(max drawdown fraction, longest underwater run in bars, its first and last bar).

    A bar is underwater while its equity is below the running peak (the initial equity
    counts as the first peak). The run's bars are [first, last] inclusive; (0, 0, -1, -1)
    when never under water."""
    peaks = np.maximum.accumulate(np.concatenate(([initial_equity], equity)))[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(peaks > 0, 1.0 - equity / peaks, 0.0)
    max_dd = float(max(0.0, depth.max()))
    under = equity < peaks
    if not under.any():
        return max_dd, 0, -1, -1
    # Runs of consecutive underwater bars: starts where under turns on, ends where it turns off.
    edges = np.diff(np.concatenate(([0], under.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)  # exclusive
    lengths = ends - starts
    k = int(np.argmax(lengths))
    return max_dd, int(lengths[k]), int(starts[k]), int(ends[k] - 1)


def compute(
    equity: FloatArray,
    *,
    trades: Trades | None = None,
    ts_ms: npt.NDArray[np.int64] | None = None,
    periods: float | None = None,
    initial_equity: float | None = None,
    position: npt.NDArray[np.int64] | None = None,
    risk_free_rate: float = 0.0,
    session_s: float = NSE_SESSION_S,
    trading_days: float = TRADING_DAYS,
) -> Metrics:
    """Every metric of one run. ``equity`` is the equity at each bar's close; pass the
    bar times ``ts_ms`` (annualisation from their interval, drawdown duration in seconds) or
    ``periods`` (bars per year) directly. ``initial_equity`` defaults to ``equity[0]``;
    ``position`` (units held at each bar's close) gives the exposure, else it comes from
    the trades' bars."""
    values = _checked_equity(equity)
    n = values.size
    ts = _checked_ts(ts_ms, n) if ts_ms is not None else None
    if periods is None:
        if ts is None:
            raise BacktestInputError(
                "compute needs ts_ms (bar times) or periods (bars per year) to annualise"
            )
        periods = periods_per_year(bar_interval_s(ts), session_s, trading_days)
    if not (math.isfinite(periods) and periods > 0):
        raise BacktestInputError(f"periods must be a finite number > 0, got {periods!r}")
    start = float(values[0]) if initial_equity is None else float(initial_equity)
    if not (math.isfinite(start) and start > 0):
        raise BacktestInputError(f"initial_equity must be finite and > 0, got {start!r}")
    if not (math.isfinite(risk_free_rate) and risk_free_rate > -1):
        raise BacktestInputError(f"risk_free_rate must be > -1, got {risk_free_rate!r}")

    previous = np.concatenate(([start], values[:-1]))
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = values / previous - 1.0
    final = float(values[-1])
    total = final / start - 1.0
    annual: float | None = None
    if final > 0:
        growth = math.log(final / start) * periods / n
        try:
            annual = math.expm1(growth)
        except OverflowError:  # a few bars "annualised" can exceed any float: no figure
            annual = None
    rf = (1.0 + risk_free_rate) ** (1.0 / periods) - 1.0
    excess = returns - rf
    sharpe = sortino = None
    if n >= 2 and np.isfinite(excess).all():
        sd = float(np.std(excess, ddof=1))
        mean = float(np.mean(excess))
        # A spread at the rounding noise of a constant return is no spread: undefined.
        if sd > 0 and sd > 1e-9 * abs(mean):
            sharpe = mean / sd * math.sqrt(periods)
        downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
        if downside > 0 and downside > 1e-9 * abs(mean):
            sortino = mean / downside * math.sqrt(periods)
    max_dd, dd_bars, dd_first, dd_last = drawdown(values, start)
    dd_s = None
    if ts is not None and dd_bars > 0:
        # From the peak (the bar before the run; the start for a run from bar 0) to the
        # recovery bar (the one after the run), or to the last bar if never recovered.
        peak_ms = ts[dd_first - 1] if dd_first > 0 else ts[0]
        end_ms = ts[dd_last + 1] if dd_last + 1 < n else ts[-1]
        dd_s = float(end_ms - peak_ms) / 1000.0
    calmar = annual / max_dd if annual is not None and max_dd > 0 else None

    tr = trades if trades is not None else empty_trades()
    closed = tr.closed
    pnl = tr.pnl[closed]
    wins = pnl[pnl > 0]
    losses = pnl[pnl < 0]
    win_rate = float(wins.size / pnl.size) if pnl.size else None
    loss_sum = float(-losses.sum())
    profit_factor = float(wins.sum()) / loss_sum if loss_sum > 0 else None
    traded = float((tr.qty * tr.entry_price).sum() + (tr.qty[closed] * tr.exit_price[closed]).sum())
    mean_equity = float(values.mean())
    turnover = traded / mean_equity if mean_equity > 0 else None
    if position is not None:
        if not isinstance(position, np.ndarray) or position.shape != (n,):
            raise BacktestInputError(
                f"position must be a numpy array with one value per bar ({n}), got "
                f"{getattr(position, 'shape', type(position).__name__)}"
            )
        exposure: float | None = float(np.count_nonzero(position) / n)
    elif trades is not None:
        held = np.where(closed, tr.exit_bar, n) - tr.entry_bar
        exposure = float(np.clip(held, 0, None).sum() / n)
    else:
        exposure = None

    def clean(x: float | None) -> float | None:
        return None if x is None else _clean(x)

    return Metrics(
        bars=n,
        periods_per_year=_clean(float(periods)) or 0.0,
        initial_equity=_clean(start) or 0.0,
        final_equity=_clean(final) or 0.0,
        total_return=_clean(total) or 0.0,
        annual_return=clean(annual),
        sharpe=clean(sharpe),
        sortino=clean(sortino),
        calmar=clean(calmar),
        max_drawdown=_clean(max_dd) or 0.0,
        max_drawdown_bars=dd_bars,
        max_drawdown_s=clean(dd_s),
        win_rate=clean(win_rate),
        profit_factor=clean(profit_factor),
        exposure=clean(exposure),
        turnover=clean(turnover),
        traded_value=_clean(traded) or 0.0,
        charges=_clean(float(tr.charges.sum())) or 0.0,
        trades=int(closed.sum()),
        open_trades=int(len(tr) - closed.sum()),
    )


def to_json(metrics: Metrics | Mapping[str, object]) -> bytes:
    """Deterministic JSON of a Metrics (or a mapping of JSON-ready values)."""
    return msgspec.json.encode(metrics)
