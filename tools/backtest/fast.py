"""Fast mode: the default strategy and the moving-average crossover as Numba loops over bars.

For parameter sweeps: the same kernels (``chimera_core.physics``'s values, computed O(1)
per bar by ``tools.backtest.rolling``), the same strategy rules (``DefaultStrategy.evaluate``
/ ``exit_reason``, ``MovingAverageCross``), the governance exposure caps, the ATR brackets
of the router (``Bracket.from_entry``, on the tick grid) and the charges of
``ChargeCalculator``, over (open, high, low, close, volume) float64 arrays. With
``fill = "next_open"`` (the default) the moving-average crossover makes the trades event
mode makes (``tests/backtest/test_parity.py``; where they cannot agree:
docs/BACKTEST_METRICS.md, "Where the modes differ").

Prices first
------------

The bars are rounded to the feed's price unit (``price_divisor``: paise, 10^-7 rupee on
currency futures), as ``smartapi_v2``'s codec delivers every print to the engine; the
kernels, fills, brackets and marks all read the rounded prices. Each bar is replayed as
event mode prints it: O → L → H → C when close >= open (judged on the prices as given, as
``event.bar_ticks`` does), else O → H → L → C.

One bar step (bar j, in this order)
-----------------------------------

1. **The open.** A position with a bracket whose level the open is already past (a gap)
   exits at the open (STOP_LOSS / TAKE_PROFIT); else the exit decided at bar j - 1's
   close fills there (``fill = "next_open"``). Then the entry decided there fills at the
   open, after the exit (a reversal: two fills at one price, each charged), or, where the
   node lost prints to a feed gap (``open_delay[j]``, see ``open_delays``), at the first
   leg's end. Its bracket (stop / target from the fill price and the ATR the node had
   when it decided; rounded toward the entry on the ``tick_size`` grid exactly as
   ``Bracket.from_entry``; no finite ATR > 0, or an entry under two ticks: no bracket, as
   the router logs ``bracket_refused``) is checked at the entry's own print: a level it
   is past exits at the next print (the first leg's end, or after a two-print delay the
   second's; no level is printed while an exit is working).
2. **The legs.** A position with a bracket is checked leg by leg along the path, from
   the open (from the entry's print on its entry bar): the first leg whose end reaches a
   level exits AT THE LEVEL (event mode prints the level where a leg passes through it).
   So on an up bar a long's stop (on the way to the low) is tested before its target,
   on a down bar its target first. A bracket exit leaves the position flat for step 3.
3. **Decision at bar j's close.** The default strategy decides on the physics the live
   engine has at the last tick of bar j: energy, z and the band over closes up to and
   including ``close[j]`` (the forming bar's last price), the ATR over the closed bars up
   to j - 1. The crossover decides on closed bars (``MovingAverageCross`` reads close j at
   the first print of bar j + 1): the direction d_j = sign(SMA_fast - SMA_slow) at close
   j (0 while warming up, and where the averages are within 1e-10 x SMA_slow of each
   other), a cross where d_(j-1) and d_j are non-zero and differ; with next-open fills
   its entry's ATR includes bar j, closed by then.

   - holding a position: the strategy exit — ``square_off[j]`` → SQUARE_OFF; else
     ``exit_reason`` (signal reversal: the direction against the position; energy decay
     below exit_energy_ratio x threshold; held >= max_hold_bars bars since its fill bar)
     — closes the whole position at the fill rule. For the default strategy the same
     decision never enters again (live with governance: an entry against a held position
     is vetoed, and a vetoed signal does not re-arm within the bar); a crossover's cross
     back is also its entry the other way (a reversal).
   - an entry: the default strategy's signal when flat; the crossover's cross only (once
     per cross: no re-entry after a bracket exit until the next cross). Longs only with
     ``long_only`` (a down-cross still exits a long). Only when ``entries_allowed[j]``
     and not ``square_off[j]`` (the market calendar at the decision; ``session_masks``),
     and at least ``cooldown_bars`` bars from the previous entry's fill bar to this
     one's. Its quantity is sized at the reference price ``close[j]`` (with slippage, and
     the charges when sizing by equity fraction, on the equity at that close), then
     fitted under the exposure caps (``max_position_value``, ``max_position_qty``,
     ``max_gross_exposure`` and ``max_net_exposure`` x equity) in whole lots, as
     ``chimera_governance.exposure.fit``; nothing fits → no entry. No pyramiding.
   - the fill: ``"next_open"`` at bar j + 1's open (step 1; never after the last bar);
     ``"close"`` at ``close[j]`` now, its bracket first checked at bar j + 1's open.
4. **Mark**: ``equity[j]`` = cash + position x ``close[j]``; ``position[j]`` = units held.
   A position still open after the last bar stays open (exit_bar -1, EXIT_OPEN), marked.

Signals are decided on the kernels' rolling values; where a value lies within 1e-9 of a
decision edge (|energy| vs the threshold or the exit energy, |z| vs 1, the displacement vs
k std) the live kernel's own value decides, so every decision is the one
``DefaultStrategy`` takes on ``chimera_core.physics``' values (a property test holds the
two equal bar by bar).

Every fill moves the price against the trade by ``slippage_bps`` (``price x (1 ± bps /
1e4)``, as the paper broker) and pays its charges, each fill an order of its own.

What this loop leaves out (event mode has them): the per-print evaluation of the default
strategy (its entries, adds and exits on the forming bar: ``tools.backtest.prints`` walks
the prints and makes event mode's trades), order latency beyond the next print,
partial fills against depth, a cooldown that ends inside a bar, the regime /
capital / meta-risk layers (daily loss, drawdown halt, trades per day, min confidence)
and approvals.

Charges
-------

``ChargeCalculator`` keeps every component to paise, rounded half-up, from decimal
arithmetic on the floats' shortest reprs. The schedule is a handful of numbers per line
(brokerage min(flat, pct), STT buy/sell, exchange, SEBI per crore, stamp on buys, GST on
brokerage + exchange + SEBI), so ``fill_charges`` evaluates it in njit from the lines the
calculator itself holds (``charge_table``): each component as a float product rounded
half-up to paise. A float product is within ~3 ulps of the exact decimal one, so it
rounds the same way except within that noise of a half paisa (1.875 rupees = 0.0000375 x
50,000 comes out as 1.87499…; 50,000 x 1.001 slippage as 50049.99999999999). There, and
only there, the exact decimal decides: in int64 when the price has at most 8 decimals
(``digits / 10^places``, its shortest repr), else in Python's decimal exactly as the
calculator does (an ``objmode`` call; a long-repr price rarely lands on a half paisa).
GST (an exact decimal rate times whole paise) is always integer arithmetic. The property
test holds ``fill_charges`` equal to ``ChargeCalculator`` on random orders.
"""

from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Literal

import msgspec
import numba
import numpy as np
import numpy.typing as npt

from chimera_core import physics
from chimera_core.config import ChargesConfig, Config
from chimera_core.contracts import ExchangeType
from chimera_core.feed.smartapi_v2 import _DIVISOR as PRICE_DIVISORS
from chimera_core.markets import merged_market
from chimera_execution import charges as charges_module
from chimera_execution.charges import ChargeCalculator, Line
from tools.backtest import metrics
from tools.backtest.metrics import (
    EXIT_ENERGY_DECAY,
    EXIT_MAX_HOLD,
    EXIT_OPEN,
    EXIT_REASONS,
    EXIT_SIGNAL_REVERSAL,
    EXIT_SQUARE_OFF,
    EXIT_STOP_LOSS,
    EXIT_TAKE_PROFIT,
    Trades,
)
from tools.backtest.rolling import (
    BacktestInputError,
    checked_lookback,
    energy_state,
    energy_step,
    moments_state,
    moments_step,
    sma_step,
    sum_state,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Int8Array = npt.NDArray[np.int8]
BoolArray = npt.NDArray[np.bool_]

__all__ = [
    "EXIT_ENERGY_DECAY",
    "EXIT_MAX_HOLD",
    "EXIT_OPEN",
    "EXIT_REASONS",
    "EXIT_SIGNAL_REVERSAL",
    "EXIT_SQUARE_OFF",
    "EXIT_STOP_LOSS",
    "EXIT_TAKE_PROFIT",
    "FastResult",
    "FastSettings",
    "bracket_levels",
    "charge_table",
    "default_signals",
    "default_strategy",
    "default_strategy_kernel",
    "event_open_delays",
    "fill_charges",
    "ma_cross",
    "ma_cross_entries",
    "ma_cross_kernel",
    "ma_cross_signals",
    "open_delays",
    "session_masks",
    "settings_from_config",
    "simulate",
]


# ---------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------


class FastSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How fast mode fills, charges, sizes and exits. Names follow chimera.toml's keys
    (``[paper]``, ``[strategy]``, ``[execution]``, ``[governance]``); defaults are theirs."""

    # Fills: at the next bar's open (event mode's, the live node's), or at the signal
    # bar's close.
    fill: Literal["close", "next_open"] = "next_open"
    # Bars are first rounded to 1 / price_divisor rupee, as the feed's codec carries
    # prices (paise: 100; 10^7 on CDE_FO); 0 takes them as given.
    price_divisor: float = 100.0
    # Charges per fill: the segment's dated schedule (ChargeCalculator), a percent of the
    # fill's traded value (commission_pct, in percent as [markets] charges_pct), a fixed
    # amount per order (commission_fixed), or none.
    commission: Literal["schedule", "percent", "fixed", "none"] = "schedule"
    commission_pct: float = 0.0
    commission_fixed: float = 0.0
    market: str = "NSE_CM"  # the segment whose schedule applies
    product: Literal["INTRADAY", "DELIVERY", "CARRYFORWARD"] = "INTRADAY"
    kind: Literal["FUT", "OPT"] | None = None  # derivative segments: the instrument's kind
    # [execution.charges]: the cash-equity rates (None: the dated schedule's own lines).
    equity_charges: ChargesConfig | None = msgspec.field(default_factory=ChargesConfig)
    slippage_bps: float = 1.0  # [paper] slippage_bps
    # Sizing: qty units; lots x lot_size; or the largest whole number of lots whose cost,
    # charges included, fits in equity_fraction x equity.
    sizing: Literal["fixed", "lots", "equity_fraction"] = "fixed"
    qty: int = 1  # [strategy] order_qty
    lots: int = 1
    lot_size: int = 1  # [feed] lots / [governance] lot_size
    equity_fraction: float = 1.0
    initial_equity: float = 1_000_000.0  # [paper] starting_cash
    long_only: bool = False
    # Exits besides the strategy's: the router's ATR bracket ([execution]).
    brackets: bool = True
    stop_atr_multiple: float = 2.0
    take_profit_atr_multiple: float = 3.0
    atr_lookback: int = 14  # SymbolPhysics atr_n
    tick_size: float = 0.05  # [feed] tick_sizes
    # The strategy's own exits ([strategy]); max_hold_bars = max_hold_s / bar_interval_s.
    exit_on_reversal: bool = True
    exit_energy_ratio: float = 0.25
    max_hold_bars: int = 0
    cooldown_bars: int = 1  # [strategy] cooldown_s / bar_interval_s, rounded up
    # The exposure caps ([governance]).
    max_position_value: float = 200_000.0
    max_position_qty: int = 1_000_000
    max_gross_exposure: float = 2.0
    max_net_exposure: float = 1.0

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise BacktestInputError(
                    f"FastSettings.{key} = {getattr(self, key)!r}: expected {what}"
                )

        def finite(key: str, low: float, high: float = math.inf, low_open: bool = False) -> None:
            v = getattr(self, key)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if low_open else v >= low) and v <= high
            need(ok, key, f"a finite number {'>' if low_open else '>='} {low}")

        def count(key: str, low: int) -> None:
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= low, key, f"int >= {low}")

        finite("commission_pct", 0.0, 100.0)
        finite("price_divisor", 0.0, 1e9)
        finite("commission_fixed", 0.0)
        finite("slippage_bps", 0.0, 10_000.0)
        finite("equity_fraction", 0.0, 1e6, low_open=True)
        finite("initial_equity", 0.0, low_open=True)
        finite("stop_atr_multiple", 0.0, 100.0, low_open=True)
        finite("take_profit_atr_multiple", 0.0, 100.0, low_open=True)
        finite("tick_size", 0.0, 1_000.0, low_open=True)
        finite("exit_energy_ratio", 0.0, 1.0)
        for key in ("max_position_value", "max_gross_exposure", "max_net_exposure"):
            v = getattr(self, key)
            need(isinstance(v, int | float) and v > 0 and v == v, key, "a number > 0 (inf: no cap)")
        for key, low in (
            ("qty", 1),
            ("lots", 1),
            ("lot_size", 1),
            ("atr_lookback", 1),
            ("max_hold_bars", 0),
            ("cooldown_bars", 0),
            ("max_position_qty", 1),
        ):
            count(key, low)
        if self.commission == "schedule":
            seg = charges_module._SEGMENTS.get(self.market)
            segments = ", ".join(charges_module._SEGMENTS)
            need(
                seg is not None,
                "market",
                f"a segment with an Indian charge schedule ({segments}); "
                'or commission = "percent", "fixed" or "none"',
            )
            if seg is not None and seg[1] != "EQUITY":
                need(self.kind is not None, "kind", f"'FUT' or 'OPT' on {self.market}")
            elif self.product == "CARRYFORWARD":
                need(False, "product", f"INTRADAY or DELIVERY on {self.market}")


def settings_from_config(
    cfg: Config,
    token: str | None = None,
    kind: str | None = None,
    bar_interval_s: float | None = None,
    **overrides: object,
) -> FastSettings:
    """FastSettings from a chimera.toml Config: its fills' slippage and starting cash, the
    strategy's exits and quantity, the bracket multiples, the exposure caps (none with
    ``[governance] enabled = false``, as the node), the feed's price grid and the charges
    ``token``'s segment ("NSE_FO:35001", or the feed's) is configured with. ``kind`` is a
    derivative's "FUT" / "OPT" (the instrument master's); ``bar_interval_s`` the data's
    bar interval (event mode runs the node on it; default ``[strategy] bar_interval_s``),
    which turns ``max_hold_s`` and ``cooldown_s`` into bars; ``overrides`` replace any
    field."""
    s, ex, gov = cfg.strategy, cfg.execution, cfg.governance
    market: str = cfg.feed.exchange_type
    if token is not None and ":" in token:
        market, _, token = token.partition(":")
    merged = merged_market(market, cfg.markets.get(market))
    interval = float(bar_interval_s if bar_interval_s is not None else s.bar_interval_s)
    if not (math.isfinite(interval) and interval > 0):
        raise BacktestInputError(f"bar_interval_s must be a number of seconds > 0, got {interval}")
    caps = gov.enabled
    segment = ExchangeType.__members__.get(market)
    values: dict[str, object] = {
        "commission": merged.charges,
        "commission_pct": merged.charges_pct or 0.0,
        "commission_fixed": merged.charges_fixed or 0.0,
        "market": market,
        "product": ex.product,
        "kind": kind,
        "equity_charges": ex.charges,
        "slippage_bps": ex.paper.slippage_bps,
        # The codec's price unit for the segment (paise, or 10^-7 rupee on currencies).
        "price_divisor": PRICE_DIVISORS.get(int(segment), 100.0) if segment else 100.0,
        "qty": s.order_qty,
        "lot_size": cfg.feed.lots.get(token or "", 1),
        "initial_equity": ex.paper.starting_cash,
        "stop_atr_multiple": ex.stop_atr_multiple,
        "take_profit_atr_multiple": ex.take_profit_atr_multiple,
        "tick_size": cfg.feed.tick_sizes.get(token or "", 0.05),
        "exit_on_reversal": s.exit_on_reversal,
        "exit_energy_ratio": s.exit_energy_ratio,
        "max_hold_bars": math.ceil(s.max_hold_s / interval) if s.max_hold_s else 0,
        "cooldown_bars": math.ceil(s.cooldown_s / interval),
        "max_position_value": gov.max_position_value if caps else math.inf,
        "max_position_qty": gov.max_position_qty if caps else _NO_QTY_CAP,
        "max_gross_exposure": gov.max_gross_exposure if caps else math.inf,
        "max_net_exposure": gov.max_net_exposure if caps else math.inf,
    }
    if values["lot_size"] != 1:  # intents are order_qty whole lots
        values["sizing"] = "lots"
        values["lots"] = s.order_qty
    values.update(overrides)
    try:
        return msgspec.convert(values, FastSettings)
    except msgspec.ValidationError as exc:
        raise BacktestInputError(f"FastSettings from config: {exc}") from None


_NO_QTY_CAP = 1 << 62  # max_position_qty when governance is off: no cap


# ---------------------------------------------------------------------------------------
# Charges: the schedule's numbers, evaluated in njit
# ---------------------------------------------------------------------------------------

# Columns of a charge table row (one row per schedule version). Each rate of turnover
# is stored three ways: the float (for the fast path and the calculator's own arithmetic),
# and its exact decimal value as an integer over a power of ten (num, exp: rate = num x
# 10^-exp) for exact integer rounding at a half paisa.
C_ACTIVE = 0  # 0: no charges
C_FLAT_PAISE = 1  # brokerage per order in whole paise (inf: none, the percent model)
C_FLAT_PER_ORDER = 2  # 1: the flat fee whatever the size (no percent; options, fixed)
C_GST_NUM = 3  # GST as an exact decimal over 10^C_GST_EXP
C_GST_EXP = 4
# Turnover rates: brokerage percent, STT buy, STT sell, exchange, SEBI, stamp (buy).
R_PCT, R_STT_BUY, R_STT_SELL, R_EXCHANGE, R_SEBI, R_STAMP = range(6)
C_RATES = 5  # then (float, num, exp, divisor) per rate
C_SIZE = C_RATES + 4 * 6


_IST = timezone(timedelta(hours=5, minutes=30))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _decimal(x: float, divisor: int = 1) -> tuple[int, int]:
    """(num, exp) with Decimal(repr(x)) / divisor == num x 10^-exp exactly."""
    d = (Decimal(repr(float(x))) / divisor).normalize()
    _, _, exp = d.as_tuple()
    assert isinstance(exp, int)
    if exp >= 0:
        return int(d), 0
    return int(d.scaleb(-exp)), -exp


def _half_up_paise(x: Decimal) -> float:
    return float((x * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _line_row(line: Line, exchange: str) -> list[float]:
    row = [0.0] * C_SIZE
    row[C_ACTIVE] = 1.0
    flat = line.brokerage_flat
    row[C_FLAT_PAISE] = math.inf if flat == math.inf else _half_up_paise(Decimal(repr(flat)))
    row[C_FLAT_PER_ORDER] = 1.0 if line.brokerage_pct is None else 0.0
    row[C_GST_NUM], row[C_GST_EXP] = _decimal(line.gst)
    rates = (
        (line.brokerage_pct or 0.0, 1),
        (line.stt_buy, 1),
        (line.stt_sell, 1),
        (line.exchange_txn.get(exchange, 0.0), 1),
        (line.sebi_per_crore, 10_000_000),  # per crore of turnover
        (line.stamp_buy, 1),
    )
    for i, (rate, divisor) in enumerate(rates):
        num, exp = _decimal(rate, divisor)
        at = C_RATES + 4 * i
        row[at : at + 4] = [rate / divisor, float(num), float(exp), float(divisor)]
    return row


def charge_table(settings: FastSettings) -> tuple[IntArray, FloatArray]:
    """(version start times in ms, rows): the numbers ``ChargeCalculator`` charges a fill
    with under ``settings``, one row per schedule version (a single row for percent,
    fixed and none). Read from the calculator's own lines, so the two cannot drift."""
    if settings.commission == "none":
        return np.zeros(1, dtype=np.int64), np.zeros((1, C_SIZE))  # C_ACTIVE 0
    if settings.commission == "percent":
        # As ChargeCalculator's percent model: a brokerage of pct / 100, no cap, no taxes.
        line = Line(
            brokerage_flat=math.inf,
            brokerage_pct=settings.commission_pct / 100.0,
            stt_buy=0.0,
            stt_sell=0.0,
            exchange_txn={},
            sebi_per_crore=0.0,
            stamp_buy=0.0,
            gst=0.0,
        )
        return np.zeros(1, dtype=np.int64), np.array([_line_row(line, "")])
    if settings.commission == "fixed":
        line = Line(
            brokerage_flat=settings.commission_fixed,
            brokerage_pct=None,
            stt_buy=0.0,
            stt_sell=0.0,
            exchange_txn={},
            sebi_per_crore=0.0,
            stamp_buy=0.0,
            gst=0.0,
        )
        return np.zeros(1, dtype=np.int64), np.array([_line_row(line, "")])
    calc = ChargeCalculator(equity=settings.equity_charges)
    # The calculator's lines by version ([execution.charges] over the equity lines): read
    # where it keeps them; the property test holds fill_charges equal to its charges().
    lines_by_version: dict[str, dict[str, Line]] = calc._lines
    exchange, family = charges_module._SEGMENTS[settings.market]
    key = f"EQUITY_{settings.product}" if family == "EQUITY" else f"{family}{settings.kind}"
    starts, rows = [], []
    for name in sorted(charges_module.SCHEDULES):
        midnight = datetime.combine(date.fromisoformat(name), datetime.min.time(), _IST)
        starts.append((midnight - _EPOCH) // timedelta(milliseconds=1))
        rows.append(_line_row(lines_by_version[name][key], exchange))
    return np.array(starts, dtype=np.int64), np.array(rows)


def charge_versions(starts: IntArray, ts_ms: IntArray | None, size: int) -> Int8Array:
    """The schedule version in force at each bar (``schedule_on``: the earliest version
    before the first); without bar times, the newest version for every bar."""
    if ts_ms is None:
        return np.full(size, starts.size - 1, dtype=np.int8)
    idx = np.searchsorted(starts, ts_ms, side="right") - 1
    return np.clip(idx, 0, starts.size - 1).astype(np.int8)


def exact_paise(rate: float, price: float, qty: float, divisor: float) -> float:
    """rate x price x qty / divisor rupees in whole paise, half-up, in decimal arithmetic on
    the floats' shortest reprs: exactly ``ChargeCalculator``'s arithmetic (charges.py
    ``_dec`` / ``_paise``)."""
    with localcontext(Context(prec=700)):
        value = (
            Decimal(repr(float(rate)))
            * Decimal(repr(float(price)))
            * int(qty)
            / Decimal(int(divisor))
        )
        return _half_up_paise(value)


_POW10 = np.array([10.0**k for k in range(19)])


@numba.njit(cache=True, error_model="numpy")
def _price_decimal(price: float) -> tuple[int, int]:
    """(digits, places) with price == digits / 10^places as its shortest repr reads, for a
    price of at most 8 decimals (exchange prices, and most prices with slippage);
    places -1 otherwise."""
    scale = 1.0
    for places in range(9):
        x = price * scale
        if x >= 4.5e15:
            break
        digits = math.floor(x + 0.5)
        if digits / scale == price:  # both exact: IEEE division rounds as float("d e-p")
            return int(digits), places
        scale *= 10.0
    return 0, -1


@numba.njit(cache=True, error_model="numpy")
def _turnover_paise(
    row: FloatArray, rate_i: int, price: float, qty: float, digits: int, places: int
) -> float:
    """One turnover component of a fill in whole paise, half-up, as ChargeCalculator.

    The float product is within ~3 ulps of the exact decimal one and rounds the same way,
    except within that noise of a half paisa: there the exact decimal decides, in int64
    when the price has a short decimal form (digits / 10^places), else in Python's decimal
    (an objmode call; prices with long reprs rarely land there)."""
    at = C_RATES + 4 * rate_i
    rate = row[at]
    x = rate * price * qty * 100.0
    f = math.floor(x)
    if abs(x - f - 0.5) > 1e-15 * x + 1e-12:
        return float(f + 1.0 if x - f >= 0.5 else f)
    num = row[at + 1]
    exp = int(row[at + 2])
    if places >= 0 and exp + places <= 18 and num * digits * qty * 200.0 < 8.0e18:
        # paise = num x digits x qty x 100 / 10^(exp + places), half-up in integers.
        n = int(num) * digits * int(qty) * 100
        m = int(_POW10[exp + places])
        return float((2 * n + m) // (2 * m))
    divisor = row[at + 3]
    with numba.objmode(out="float64"):
        out = exact_paise(rate * divisor, price, qty, divisor)
    return out


@numba.njit(cache=True, error_model="numpy")
def fill_charges(table: FloatArray, version: int, buy: bool, qty: float, price: float) -> float:
    """Rupees of charges on one fill (one order) of ``qty`` at ``price``: the components
    of ``ChargeCalculator.charges`` with ``prior_turnover`` 0, each to paise."""
    row = table[version]
    if row[C_ACTIVE] == 0.0 or not price * qty > 0.0:
        return 0.0
    digits, places = _price_decimal(price)
    if row[C_FLAT_PER_ORDER] != 0.0:
        brokerage = row[C_FLAT_PAISE]
    else:
        # min(flat, pct x turnover) to paise is the smaller of the two to paise (rounding
        # is monotone).
        brokerage = min(row[C_FLAT_PAISE], _turnover_paise(row, R_PCT, price, qty, digits, places))
    stt = _turnover_paise(row, R_STT_BUY if buy else R_STT_SELL, price, qty, digits, places)
    stamp = _turnover_paise(row, R_STAMP, price, qty, digits, places) if buy else 0.0
    exchange = _turnover_paise(row, R_EXCHANGE, price, qty, digits, places)
    sebi = _turnover_paise(row, R_SEBI, price, qty, digits, places)
    # GST on the paise of what it taxes: an exact decimal times an integer, half-up.
    taxed = int(brokerage + exchange + sebi)
    m = int(_POW10[int(row[C_GST_EXP])])
    gst = float((2 * int(row[C_GST_NUM]) * taxed + m) // (2 * m))
    return float((brokerage + stt + exchange + sebi + gst + stamp) / 100.0)


# ---------------------------------------------------------------------------------------
# Brackets: Bracket.from_entry on the tick grid
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy", inline="always")
def _ticks(price: float, tick: float, up: bool) -> int:
    x = price / tick
    r = math.floor(x + 0.5)
    if abs(x - r) < 1e-9:
        return int(r)
    return math.ceil(x) if up else math.floor(x)


@numba.njit(cache=True, error_model="numpy")
def bracket_levels(
    side: int, entry: float, atr: float, stop_mult: float, take_mult: float, tick: float
) -> tuple[bool, float, float]:
    """(ok, stop, target) as ``Bracket.from_entry``; ok False where it would refuse (no
    finite ATR > 0, an entry under two ticks): the position then has no bracket."""
    if not (math.isfinite(atr) and atr > 0.0) or not (math.isfinite(entry) and entry >= 2 * tick):
        return False, math.nan, math.nan
    below = _ticks(entry, tick, True) - 1
    above = _ticks(entry, tick, False) + 1
    d_stop = atr * stop_mult
    d_take = atr * take_mult
    if side > 0:
        stop_t = min(_ticks(entry - d_stop, tick, True), below)
        take_t = max(_ticks(entry + d_take, tick, False), above)
        stop_t = max(stop_t, 1)
    else:
        stop_t = max(_ticks(entry + d_stop, tick, False), above)
        take_t = min(_ticks(entry - d_take, tick, True), below)
        take_t = max(take_t, 1)
    return True, round(stop_t * tick, 8), round(take_t * tick, 8)


# ---------------------------------------------------------------------------------------
# The bar loop shared by every strategy
# ---------------------------------------------------------------------------------------

# Slots of the params array ``simulate`` reads (``_params`` fills it from FastSettings).
P_NEXT_OPEN = 0
P_SLIPPAGE = 1  # fraction
P_SIZING = 2  # 0 fixed / lots (qty in P_QTY), 1 equity fraction
P_QTY = 3
P_LOT = 4
P_FRACTION = 5
P_EQUITY = 6
P_LONG_ONLY = 7
P_BRACKETS = 8
P_STOP_MULT = 9
P_TAKE_MULT = 10
P_TICK = 11
P_ATR_N = 12
P_EXIT_ON_REVERSAL = 13
P_EXIT_ENERGY = 14  # <= 0: no energy-decay exit
P_MAX_HOLD = 15
P_COOLDOWN = 16
P_MAX_VALUE = 17
P_MAX_QTY = 18
P_MAX_GROSS = 19
P_MAX_NET = 20
# 1: an exit decided at a close may be followed by the opposite entry at the same fill
# (a reversal: ma_cross, whose cross back is both); 0: the same decision never enters.
P_REVERSE = 21
# 1: the signal is read on closed bars, at the next bar's first print (ma_cross): with
# next_open fills the entry's ATR includes the decision bar.
P_CLOSED_BAR_SIGNAL = 22
P_SIZE = 23


@numba.njit(cache=True, error_model="numpy")
def _fit_qty(
    p: FloatArray, table: FloatArray, version: int, side: int, ref: float, equity: float
) -> int:
    """The entry's quantity at reference price ``ref``: sized, then fitted under the caps
    in whole lots (exposure.fit); 0 when nothing fits."""
    lot = int(p[P_LOT])
    buy = side > 0
    slip = p[P_SLIPPAGE]
    price = ref * (1.0 + slip) if buy else ref * (1.0 - slip)
    if p[P_SIZING] == 0.0:
        qty = int(p[P_QTY])
    else:
        budget = p[P_FRACTION] * equity
        if not (budget > 0.0 and price > 0.0):
            return 0
        q = math.floor(budget / price / lot) * lot
        # Charges grow with the quantity: step down until cost + charges fit, then up
        # while one more lot still fits (a few steps; charges are nearly linear).
        for _ in range(64):
            if q <= 0:
                break
            cost = q * price + fill_charges(table, version, buy, q, price)
            if cost <= budget:
                break
            below = math.floor((budget - (cost - q * price)) / price / lot) * lot
            q = below if below < q else q - lot
        while q > 0:
            more = q + lot
            if more * price + fill_charges(table, version, buy, more, price) > budget:
                break
            q = more
        qty = int(max(q, 0))
    if not (math.isfinite(equity) and equity > 0.0):
        return 0
    room = min(
        p[P_MAX_VALUE] / ref,
        p[P_MAX_QTY],
        p[P_MAX_GROSS] * equity / ref,
        p[P_MAX_NET] * equity / ref,
    )
    fitted = min(qty, int(max(0.0, min(room, 9.0e18))))
    fitted -= fitted % lot
    return fitted


# The trade rows simulate writes (one array per column, sized to the bars).
_Book = namedtuple(
    "_Book",
    "entry_bar exit_bar side qty entry_price exit_price charges pnl exit_reason",
)


@numba.njit(cache=True, error_model="numpy", inline="always")
def _book_entry(
    book: _Book,
    t: int,
    j: int,
    side: int,
    qty: int,
    level: float,
    slip: float,
    table: FloatArray,
    version: int,
) -> float:
    """Open trade row ``t`` at bar ``j``: ``qty`` units bought (side +1) or sold at
    ``level`` moved by the slippage. Returns the cash it takes, charges included."""
    buy = side > 0
    px = level * (1.0 + slip) if buy else level * (1.0 - slip)
    ch = fill_charges(table, version, buy, qty, px)
    book.entry_bar[t] = j
    book.exit_bar[t] = -1
    book.side[t] = side
    book.qty[t] = qty
    book.entry_price[t] = px
    book.exit_price[t] = math.nan
    book.charges[t] = ch
    book.pnl[t] = math.nan
    book.exit_reason[t] = EXIT_OPEN
    return side * qty * px + ch


@numba.njit(cache=True, error_model="numpy", inline="always")
def _book_exit(
    book: _Book,
    t: int,
    j: int,
    sign: int,
    held: int,
    level: float,
    why: int,
    slip: float,
    table: FloatArray,
    version: int,
) -> float:
    """Close trade row ``t`` at bar ``j``, at ``level`` moved by the slippage, for reason
    ``why``. Returns the cash it brings, charges deducted."""
    buy = sign < 0
    px = level * (1.0 + slip) if buy else level * (1.0 - slip)
    ch = fill_charges(table, version, buy, held, px)
    book.exit_bar[t] = j
    book.exit_price[t] = px
    book.charges[t] += ch
    book.pnl[t] = sign * held * (px - book.entry_price[t]) - book.charges[t]
    book.exit_reason[t] = why
    return sign * held * px - ch


@numba.njit(cache=True, error_model="numpy", inline="always")
def _crossed(sign: int, price: float, stop: float, target: float) -> int:
    """The bracket leg a print at ``price`` reaches (``Bracket.check``): STOP_LOSS,
    TAKE_PROFIT, or 0."""
    if sign > 0:
        if price <= stop:
            return EXIT_STOP_LOSS
        if price >= target:
            return EXIT_TAKE_PROFIT
    else:
        if price >= stop:
            return EXIT_STOP_LOSS
        if price <= target:
            return EXIT_TAKE_PROFIT
    return 0


@numba.njit(cache=True, error_model="numpy")
def simulate(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    up: BoolArray,
    direction: Int8Array,
    entry: Int8Array,
    energy: FloatArray,
    entries_ok: BoolArray,
    square_off: BoolArray,
    open_delay: Int8Array,
    versions: Int8Array,
    table: FloatArray,
    p: FloatArray,
) -> tuple[
    int,
    IntArray,
    IntArray,
    Int8Array,
    IntArray,
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    Int8Array,
    FloatArray,
    IntArray,
]:
    """The bar step of the module docstring over every bar.

    ``direction[j]`` is the strategy's direction at bar j's decision (+1, -1, 0: what a
    position is exited against), ``entry[j]`` its entry signal there (the direction
    itself for the default strategy; only the crosses for ma_cross); ``energy[j]`` its
    energy (read only when p[P_EXIT_ENERGY] > 0); ``up[j]`` whether bar j is replayed
    O→L→H→C (else O→H→L→C); ``open_delay[j]`` the prints an entry at bar j's open waits
    past them (``open_delays``). Empty ``entries_ok`` / ``square_off`` / ``open_delay``
    mean always / never / none; ``versions[j]`` the charge table row at bar j. Returns (trade
    count, entry_bar, exit_bar, side, qty, entry_price, exit_price, charges, pnl,
    exit_reason, equity, position); trade arrays are sized to the bars and hold ``count``
    rows.
    """
    n = close.size
    entry_bar = np.empty(n, dtype=np.int64)
    exit_bar = np.empty(n, dtype=np.int64)
    side_out = np.empty(n, dtype=np.int8)
    qty_out = np.empty(n, dtype=np.int64)
    entry_px = np.empty(n)
    exit_px = np.empty(n)
    charges_out = np.empty(n)
    pnl_out = np.empty(n)
    reason_out = np.empty(n, dtype=np.int8)
    equity = np.empty(n)
    position = np.empty(n, dtype=np.int64)
    trades = _Book(
        entry_bar, exit_bar, side_out, qty_out, entry_px, exit_px, charges_out, pnl_out, reason_out
    )

    next_open = p[P_NEXT_OPEN] != 0.0
    slip = p[P_SLIPPAGE]
    long_only = p[P_LONG_ONLY] != 0.0
    use_brackets = p[P_BRACKETS] != 0.0
    stop_mult = p[P_STOP_MULT]
    take_mult = p[P_TAKE_MULT]
    tick = p[P_TICK]
    atr_n = int(p[P_ATR_N])
    exit_on_reversal = p[P_EXIT_ON_REVERSAL] != 0.0
    exit_energy = p[P_EXIT_ENERGY]
    max_hold = int(p[P_MAX_HOLD])
    cooldown = int(p[P_COOLDOWN])
    reverse = p[P_REVERSE] != 0.0
    # The ATR an entry's bracket uses, relative to its decision bar: the closed bars
    # before it (a decision at the bar's last print), or through it (a signal read at the
    # next bar's first print, when the decision bar has closed).
    atr_lag = 0 if (next_open and p[P_CLOSED_BAR_SIGNAL] != 0.0) else 1
    always_ok = entries_ok.size == 0
    never_square = square_off.size == 0
    no_delays = open_delay.size == 0

    cash = p[P_EQUITY]
    sign = 0  # -1, 0, +1
    held = 0  # units, > 0
    count = 0
    fill_bar = -1  # bar the open position's entry filled on
    last_entry = -(1 << 60)
    has_bracket = False
    stop = math.nan
    target = math.nan
    pending_exit = False
    pending_reason = 0
    pending_entry = False
    pending_side = 0
    pending_qty = 0
    pending_atr = math.nan

    for j in range(n):
        o = open_[j]
        c = close[j]
        v = versions[j]
        # The path's two middle points: O -> first -> second -> C.
        first = low[j] if up[j] else high[j]
        second = high[j] if up[j] else low[j]
        legs_from = 1  # the first path point (1 first, 2 second, 3 close) checked below
        exit_at = 0.0
        why = 0

        # 1. the open: a level it is already past (a gap), else the exit decided at the
        #    previous close; then the entry decided there.
        if sign != 0:
            if has_bracket:
                why = _crossed(sign, o, stop, target)
            if why == 0 and pending_exit:
                why = pending_reason
            exit_at = o
        if pending_entry:
            if why != 0:  # the exit goes first, at the same print
                cash += _book_exit(trades, count - 1, j, sign, held, exit_at, why, slip, table, v)
                sign = 0
                held = 0
                has_bracket = False
                why = 0
            # After a feed gap the node confirms the entry on later prints (open_delays):
            # it fills at the first leg's end, on its first print or its repeat.
            delay = 0 if no_delays else open_delay[j]
            at = o if delay == 0 else first
            legs_from = 1 if delay == 0 else 2
            sign = pending_side
            held = pending_qty
            fill_bar = j
            last_entry = j
            cash -= _book_entry(trades, count, j, sign, held, at, slip, table, v)
            count += 1
            has_bracket = False
            if use_brackets:
                has_bracket, stop, target = bracket_levels(
                    sign, trades.entry_price[count - 1], pending_atr, stop_mult, take_mult, tick
                )
            if has_bracket:
                # The bracket is checked at the entry's own print; an exit it triggers
                # fills at the next print (no level is printed while an exit is
                # working): the first leg's end, or after its repeat the second's.
                why = _crossed(sign, at, stop, target)
                exit_at = second if delay == 2 else first
        pending_exit = False
        pending_entry = False

        # 2. the legs: a level the path passes through fills at that level.
        if sign != 0 and has_bracket and why == 0:
            for m in range(legs_from, 4):
                b = first if m == 1 else (second if m == 2 else c)
                why = _crossed(sign, b, stop, target)
                if why != 0:
                    exit_at = stop if why == EXIT_STOP_LOSS else target
                    break
        if why != 0:
            cash += _book_exit(trades, count - 1, j, sign, held, exit_at, why, slip, table, v)
            sign = 0
            held = 0
            has_bracket = False

        # 3. the decision at this bar's close
        d = direction[j]
        was_flat = sign == 0
        exiting = False
        if sign != 0:
            why = 0
            if not never_square and square_off[j]:
                why = EXIT_SQUARE_OFF
            elif exit_on_reversal and d == -sign:
                why = EXIT_SIGNAL_REVERSAL
            elif exit_energy > 0.0 and math.isfinite(energy[j]) and energy[j] * sign < exit_energy:
                why = EXIT_ENERGY_DECAY
            elif max_hold > 0 and j - fill_bar >= max_hold:
                why = EXIT_MAX_HOLD
            if why != 0:
                exiting = True
                if next_open:
                    pending_exit = True
                    pending_reason = why
                else:
                    cash += _book_exit(trades, count - 1, j, sign, held, c, why, slip, table, v)
                    sign = 0
                    held = 0
                    has_bracket = False
        e = entry[j]
        fill_at = j + 1 if next_open else j
        if (
            e != 0
            and (was_flat or (reverse and exiting))
            and not (long_only and e < 0)
            and (always_ok or entries_ok[j])
            and (never_square or not square_off[j])
            and fill_at - last_entry >= cooldown
            and fill_at < n
        ):
            # Sized on the equity at this close (a reversal's exit has not filled yet).
            qty = _fit_qty(p, table, v, e, c, cash + sign * held * c)
            if qty > 0:
                atr = math.nan
                end = j - atr_lag
                if use_brackets and end >= atr_n:
                    atr = physics.atr_at(high, low, close, end, atr_n)
                if next_open:
                    pending_entry = True
                    pending_side = e
                    pending_qty = qty
                    pending_atr = atr
                else:
                    sign = e
                    held = qty
                    fill_bar = j
                    last_entry = j
                    cash -= _book_entry(trades, count, j, sign, held, c, slip, table, v)
                    count += 1
                    has_bracket = False
                    if use_brackets:
                        has_bracket, stop, target = bracket_levels(
                            e, trades.entry_price[count - 1], atr, stop_mult, take_mult, tick
                        )

        # 4. mark
        equity[j] = cash + sign * held * c
        position[j] = sign * held

    return (
        count,
        entry_bar,
        exit_bar,
        side_out,
        qty_out,
        entry_px,
        exit_px,
        charges_out,
        pnl_out,
        reason_out,
        equity,
        position,
    )


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------


MA_TIE = 1e-10


@numba.njit(cache=True, error_model="numpy")
def ma_cross_signals(close: FloatArray, fast: int, slow: int, direction: Int8Array) -> None:
    """+1 where the fast SMA is above the slow one, -1 below, 0 while warming up or when
    they are equal: closer than MA_TIE (1e-10) of the slow one, ten times the rolling
    means' error bound, so two means equal in exact arithmetic (a flat market, tick-grid
    prices) never read as a cross."""
    n = close.size
    direction[: min(n, slow - 1)] = 0
    fast_state = sum_state()
    slow_state = sum_state()
    for i in range(slow - 1, n):
        f, fast_state = sma_step(close, i, fast, fast_state)
        s, slow_state = sma_step(close, i, slow, slow_state)
        tie = MA_TIE * abs(s)
        direction[i] = 1 if f - s > tie else (-1 if f - s < -tie else 0)


@numba.njit(cache=True, error_model="numpy")
def ma_cross_entries(direction: Int8Array, entry: Int8Array) -> None:
    """The crosses (``MovingAverageCross``): the new direction at a close whose direction
    and the previous close's are both non-zero and differ, 0 elsewhere. A crossover
    enters only on a cross, once (no re-entry after a bracket exit until the next one);
    passing through equal averages (+1, 0, -1) is no cross."""
    n = direction.size
    if n:
        entry[0] = 0
    for i in range(1, n):
        a = direction[i - 1]
        b = direction[i]
        entry[i] = b if (a != 0 and b != 0 and a != b) else 0


# Near a decision threshold a rolling value is replaced by the live kernel's own (exact)
# value, so a rounding difference (~1e-11 relative) can never flip a decision.
GUARD = 1e-9


@numba.njit(cache=True, error_model="numpy")
def default_signals(
    close: FloatArray,
    energy_n: int,
    z_n: int,
    band_n: int,
    k: float,
    threshold: float,
    exit_energy: float,
    direction: Int8Array,
    energy: FloatArray,
) -> None:
    """DefaultStrategy.evaluate's direction at every bar, and the energy exit_reason reads,
    from the physics the live engine has at each bar's last tick (module docstring).

    Nothing trades until z and the band are warm (structure / band WARMUP); then |energy|
    must exceed ``threshold``, |z| >= 1 (VACUUM; a flat window has z = 0), and the band
    must not contradict the direction (long into BREAKDOWN, short into BREAKOUT). The
    comparisons are made on squares (|z| >= 1 as d^2 >= var), so no square root is taken;
    near a boundary the live kernel decides."""
    n = close.size
    energy[: min(n, energy_n - 1)] = np.nan
    e_state = energy_state()
    for i in range(energy_n - 1, n):
        e, e_state = energy_step(close, i, energy_n, e_state)
        scale = GUARD * max(1.0, abs(e))
        if abs(abs(e) - threshold) <= scale or (
            exit_energy > 0.0 and abs(abs(e) - exit_energy) <= scale
        ):
            e = physics.energy_at(close, i, energy_n)
        energy[i] = e
    warm = max(z_n, band_n - 1, energy_n - 1)
    direction[: min(n, warm)] = 0
    z_state = moments_state()
    b_state = moments_state()
    for i in range(warm, n):
        # Both windows slide every bar (their states must follow), decided or not.
        z_var, z_anchor, z_shift, z_state = moments_step(close, i - 1, z_n, z_state)
        b_var, b_anchor, b_shift, b_state = moments_step(close, i, band_n, b_state)
        e = energy[i]
        if not (math.isfinite(e) and abs(e) > threshold):
            direction[i] = 0
            continue
        # Squares: a displacement's error is ~1e-11 of the std, so near an edge (|z| = 1,
        # |displacement| = k std) the comparison is left to the live kernel. A zero
        # variance is exact (a flat window): z = 0, TRAPPED; displacement 0, NEUTRAL.
        dz = (close[i] - z_anchor) - z_shift
        dz2 = dz * dz
        if z_var == 0.0:
            vacuum = False
        elif abs(dz2 - z_var) <= GUARD * max(dz2, z_var):
            vacuum = abs(physics.zscore_at(close, i, z_n)) >= 1.0
        else:
            vacuum = dz2 >= z_var
        if not vacuum:
            direction[i] = 0  # TRAPPED
            continue
        sig = 1 if e > 0 else -1
        db = (close[i] - b_anchor) - b_shift
        db2 = db * db
        limit = k * k * b_var
        if b_var == 0.0:
            code = 0
        elif abs(db2 - limit) <= GUARD * max(db2, limit, b_var):
            _, _, code = physics.band_at(close, i, band_n, k)
        else:
            code = 0 if db2 <= limit else (1 if db > 0 else -1)
        if (sig > 0 and code == -1) or (sig < 0 and code == 1):
            direction[i] = 0
        else:
            direction[i] = sig


# ---------------------------------------------------------------------------------------
# Kernels: signals + the bar loop in one njit call (what a sweep calls per candidate)
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, error_model="numpy")
def ma_cross_kernel(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    up: BoolArray,
    fast: int,
    slow: int,
    entries_ok: BoolArray,
    square_off: BoolArray,
    open_delay: Int8Array,
    versions: Int8Array,
    table: FloatArray,
    p: FloatArray,
) -> tuple[
    int,
    IntArray,
    IntArray,
    Int8Array,
    IntArray,
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    Int8Array,
    FloatArray,
    IntArray,
]:
    direction = np.empty(close.size, dtype=np.int8)
    ma_cross_signals(close, fast, slow, direction)
    entry = np.empty(close.size, dtype=np.int8)
    ma_cross_entries(direction, entry)
    q = p.copy()
    q[P_EXIT_ENERGY] = 0.0  # no energy in a moving-average crossover
    q[P_REVERSE] = 1.0  # a cross back exits and enters the other way
    q[P_CLOSED_BAR_SIGNAL] = 1.0  # MovingAverageCross reads closed bars
    return simulate(
        open_,
        high,
        low,
        close,
        up,
        direction,
        entry,
        np.empty(0),
        entries_ok,
        square_off,
        open_delay,
        versions,
        table,
        q,
    )


@numba.njit(cache=True, error_model="numpy")
def default_strategy_kernel(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    up: BoolArray,
    energy_n: int,
    z_n: int,
    band_n: int,
    k: float,
    threshold: float,
    entries_ok: BoolArray,
    square_off: BoolArray,
    open_delay: Int8Array,
    versions: Int8Array,
    table: FloatArray,
    p: FloatArray,
) -> tuple[
    int,
    IntArray,
    IntArray,
    Int8Array,
    IntArray,
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    Int8Array,
    FloatArray,
    IntArray,
]:
    direction = np.empty(close.size, dtype=np.int8)
    energy = np.empty(close.size)
    default_signals(close, energy_n, z_n, band_n, k, threshold, p[P_EXIT_ENERGY], direction, energy)
    q = p.copy()
    q[P_REVERSE] = 0.0
    q[P_CLOSED_BAR_SIGNAL] = 0.0  # DefaultStrategy decides on the forming bar's last print
    return simulate(
        open_,
        high,
        low,
        close,
        up,
        direction,
        direction,
        energy,
        entries_ok,
        square_off,
        open_delay,
        versions,
        table,
        q,
    )


# ---------------------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FastResult:
    """A fast-mode run: the trades, the equity and units held at each bar's close."""

    trades: Trades
    equity: FloatArray
    position: IntArray
    settings: FastSettings

    @property
    def final_equity(self) -> float:
        return float(self.equity[-1])

    @property
    def charges_paid(self) -> float:
        return float(self.trades.charges.sum())

    def metrics(
        self, ts_ms: IntArray | None = None, periods: float | None = None, **kwargs: object
    ) -> metrics.Metrics:
        """``metrics.compute`` over this run (pass bar times or bars per year)."""
        return metrics.compute(
            self.equity,
            trades=self.trades,
            ts_ms=ts_ms,
            periods=periods,
            initial_equity=self.settings.initial_equity,
            position=self.position,
            **kwargs,  # type: ignore[arg-type]
        )


def _params(settings: FastSettings, exit_energy: float) -> FloatArray:
    s = settings
    p = np.zeros(P_SIZE)
    p[P_NEXT_OPEN] = 1.0 if s.fill == "next_open" else 0.0
    p[P_SLIPPAGE] = s.slippage_bps / 10_000.0
    p[P_SIZING] = 1.0 if s.sizing == "equity_fraction" else 0.0
    p[P_QTY] = s.qty if s.sizing == "fixed" else s.lots * s.lot_size
    p[P_LOT] = s.lot_size if s.sizing != "fixed" else 1
    p[P_FRACTION] = s.equity_fraction
    p[P_EQUITY] = s.initial_equity
    p[P_LONG_ONLY] = 1.0 if s.long_only else 0.0
    p[P_BRACKETS] = 1.0 if s.brackets else 0.0
    p[P_STOP_MULT] = s.stop_atr_multiple
    p[P_TAKE_MULT] = s.take_profit_atr_multiple
    p[P_TICK] = s.tick_size
    p[P_ATR_N] = s.atr_lookback
    p[P_EXIT_ON_REVERSAL] = 1.0 if s.exit_on_reversal else 0.0
    p[P_EXIT_ENERGY] = exit_energy
    p[P_MAX_HOLD] = s.max_hold_bars
    p[P_COOLDOWN] = s.cooldown_bars
    p[P_MAX_VALUE] = s.max_position_value
    p[P_MAX_QTY] = s.max_position_qty
    p[P_MAX_GROSS] = s.max_gross_exposure
    p[P_MAX_NET] = s.max_net_exposure
    return p


@numba.njit(cache=True)
def _first_bad_bar(o: FloatArray, h: FloatArray, lo: FloatArray, c: FloatArray) -> int:
    """The first bar with a non-finite or non-positive price, or whose high / low do not
    contain its open and close; -1 when every bar is sound. One pass over the four arrays."""
    for i in range(c.size):
        oi, hi, li, ci = o[i], h[i], lo[i], c[i]
        ok = li > 0.0 and hi < math.inf and li <= oi <= hi and li <= ci <= hi
        if not ok:  # NaN fails every comparison
            return i
    return -1


@numba.njit(cache=True)
def _feed_prices(
    o: FloatArray, h: FloatArray, lo: FloatArray, c: FloatArray, divisor: float
) -> tuple[int, FloatArray, FloatArray, FloatArray, FloatArray, BoolArray]:
    """(first bad bar or -1, open, high, low, close rounded to 1 / ``divisor``, up).

    The prices as the feed's codec carries them (``round(price x divisor) / divisor``,
    half to even, as ``smartapi_v2.encode`` then ``decode``); ``up[i]`` is event mode's
    path choice, made on the prices as given (close >= open: O→L→H→C). A bar is bad
    where a price is not finite and > 0 (after rounding too), or its high / low do not
    contain its open and close."""
    n = c.size
    ro = np.empty(n)
    rh = np.empty(n)
    rl = np.empty(n)
    rc = np.empty(n)
    up = np.empty(n, dtype=np.bool_)
    for i in range(n):
        oi, hi, li, ci = o[i], h[i], lo[i], c[i]
        if not (li > 0.0 and hi < math.inf and li <= oi <= hi and li <= ci <= hi):
            return i, ro, rh, rl, rc, up
        low_i = np.rint(li * divisor) / divisor
        if not low_i > 0.0:
            return i, ro, rh, rl, rc, up
        ro[i] = np.rint(oi * divisor) / divisor
        rh[i] = np.rint(hi * divisor) / divisor
        rl[i] = low_i
        rc[i] = np.rint(ci * divisor) / divisor
        up[i] = ci >= oi
    return -1, ro, rh, rl, rc, up


@numba.njit(cache=True)
def _up_bars(o: FloatArray, c: FloatArray) -> BoolArray:
    up = np.empty(c.size, dtype=np.bool_)
    for i in range(c.size):
        up[i] = c[i] >= o[i]
    return up


def _float_bars(name: str, values: object) -> FloatArray:
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype != np.float64:
        got = (
            f"{values.dtype} array of shape {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise BacktestInputError(
            f"{name} must be a 1-D float64 numpy array, got {got}; "
            f"convert with np.asarray({name}, dtype=np.float64).ravel()"
        )
    return np.ascontiguousarray(values)


def _checked_bars(
    open_: object,
    high: object,
    low: object,
    close: object,
    volume: object,
    divisor: float = 0.0,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, BoolArray]:
    """(open, high, low, close, up): the bars checked, and rounded to 1 / ``divisor``
    when it is > 0 (``_feed_prices``)."""
    o = _float_bars("open", open_)
    h = _float_bars("high", high)
    lo = _float_bars("low", low)
    c = _float_bars("close", close)
    sizes = {"open": o.size, "high": h.size, "low": lo.size, "close": c.size}
    if len(set(sizes.values())) != 1:
        raise BacktestInputError(f"open, high, low and close must have the same length: {sizes}")
    if c.size == 0:
        raise BacktestInputError("no bars: open/high/low/close are empty")
    if volume is not None and (not isinstance(volume, np.ndarray) or volume.shape != (c.size,)):
        raise BacktestInputError(
            f"volume must be a 1-D numpy array of {c.size} bars (or None), got "
            f"{getattr(volume, 'shape', type(volume).__name__)}"
        )
    if divisor > 0.0:
        row, ro, rh, rl, rc, up = _feed_prices(o, h, lo, c, divisor)
    else:
        row = _first_bad_bar(o, h, lo, c)
        ro, rh, rl, rc = o, h, lo, c
        up = _up_bars(o, c) if row < 0 else np.empty(0, dtype=np.bool_)
    if row >= 0:
        grid = f" (also rounded to 1/{divisor:g}, the feed's price unit)" if divisor else ""
        raise BacktestInputError(
            f"bar {row}: open {o[row]!r} high {h[row]!r} low {lo[row]!r} close {c[row]!r}: "
            f"prices must be finite and > 0{grid}, with low <= open, close <= high; fix or "
            "drop that bar"
        )
    return ro, rh, rl, rc, up


def _checked_mask(name: str, mask: object, size: int) -> BoolArray:
    if mask is None:
        return np.empty(0, dtype=np.bool_)
    if not isinstance(mask, np.ndarray) or mask.shape != (size,):
        raise BacktestInputError(
            f"{name} must be a numpy bool array with one value per bar ({size}), got "
            f"{getattr(mask, 'shape', type(mask).__name__)}"
        )
    return np.ascontiguousarray(mask, dtype=np.bool_)


def _inputs(
    bars: tuple[object, object, object, object, object],
    settings: FastSettings,
    ts_ms: object,
    entries_allowed: object,
    square_off: object,
    open_delay: object,
) -> tuple[
    FloatArray,
    FloatArray,
    FloatArray,
    FloatArray,
    BoolArray,
    BoolArray,
    BoolArray,
    Int8Array,
    Int8Array,
    FloatArray,
]:
    if not isinstance(settings, FastSettings):
        raise BacktestInputError(f"settings must be a FastSettings, got {type(settings).__name__}")
    o, h, lo, c, up = _checked_bars(*bars, divisor=settings.price_divisor)
    n = c.size
    ts = None
    if ts_ms is not None:
        if not isinstance(ts_ms, np.ndarray) or ts_ms.shape != (n,):
            raise BacktestInputError(f"ts_ms must be a numpy int64 array of {n} bar times (ms)")
        ts = ts_ms.astype(np.int64, copy=False)
    starts, table = charge_table(settings)
    versions = charge_versions(starts, ts, n)
    return (
        o,
        h,
        lo,
        c,
        up,
        _checked_mask("entries_allowed", entries_allowed, n),
        _checked_mask("square_off", square_off, n),
        _checked_delays(open_delay, n),
        versions,
        table,
    )


def _result(raw: tuple, settings: FastSettings) -> FastResult:  # type: ignore[type-arg]
    count = raw[0]
    trades = Trades(*(a[:count].copy() for a in raw[1:10]))
    return FastResult(trades=trades, equity=raw[10], position=raw[11], settings=settings)


def ma_cross(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    volume: FloatArray | None = None,
    *,
    settings: FastSettings | None = None,
    fast: int = 10,
    slow: int = 30,
    ts_ms: IntArray | None = None,
    entries_allowed: BoolArray | None = None,
    square_off: BoolArray | None = None,
    open_delay: Int8Array | None = None,
) -> FastResult:
    """The moving-average crossover (``MovingAverageCross``): enter long when the
    ``fast``-bar SMA of closes crosses above the ``slow``-bar one, short (unless
    ``settings.long_only``) when it crosses below, once per cross; a position exits when
    the averages stand against it (a cross back, which also enters the other way).
    ``open_delay`` says where an entry at each bar's open fills after a feed gap
    (``open_delays``).
    ``volume`` is not used (accepted for a uniform bar interface)."""
    s = settings or FastSettings()
    fast_n = checked_lookback("fast", fast, 1)
    slow_n = checked_lookback("slow", slow, 2)
    if fast_n >= slow_n:
        raise BacktestInputError(f"fast ({fast_n}) must be shorter than slow ({slow_n})")
    o, h, lo, c, up, ok, sq, delays, versions, table = _inputs(
        (open_, high, low, close, volume), s, ts_ms, entries_allowed, square_off, open_delay
    )
    raw = ma_cross_kernel(
        o, h, lo, c, up, fast_n, slow_n, ok, sq, delays, versions, table, _params(s, 0.0)
    )
    return _result(raw, s)


def default_strategy(
    open_: FloatArray,
    high: FloatArray,
    low: FloatArray,
    close: FloatArray,
    volume: FloatArray | None = None,
    *,
    settings: FastSettings | None = None,
    energy_lookback: int = 20,
    z_lookback: int = 60,
    band_lookback: int = 140,
    band_k: float = 2.0,
    energy_threshold: float = 0.2,
    ts_ms: IntArray | None = None,
    entries_allowed: BoolArray | None = None,
    square_off: BoolArray | None = None,
    open_delay: Int8Array | None = None,
) -> FastResult:
    """The default econophysics strategy (``DefaultStrategy``) with the genome's genes
    (``[strategy]`` names) and the exits of ``settings``. ``volume`` is not used by its
    rules (the volume profile is reported beside them, never decided on)."""
    s = settings or FastSettings()
    en = checked_lookback("energy_lookback", energy_lookback)
    zn = checked_lookback("z_lookback", z_lookback)
    bn = checked_lookback("band_lookback", band_lookback)
    k = float(band_k)
    if not (math.isfinite(k) and k >= 0):
        raise BacktestInputError(f"band_k must be a finite number >= 0, got {band_k!r}")
    thr = float(energy_threshold)
    if not (math.isfinite(thr) and thr > 0):
        raise BacktestInputError(
            f"energy_threshold must be a finite number > 0, got {energy_threshold!r}"
        )
    o, h, lo, c, up, ok, sq, delays, versions, table = _inputs(
        (open_, high, low, close, volume), s, ts_ms, entries_allowed, square_off, open_delay
    )
    # The same float product as DefaultStrategy.exit_energy.
    exit_energy = s.exit_energy_ratio * thr
    raw = default_strategy_kernel(
        o, h, lo, c, up, en, zn, bn, k, thr, ok, sq, delays, versions, table,
        _params(s, exit_energy),
    )  # fmt: skip
    return _result(raw, s)


def session_masks(decision_ts_ms: IntArray, calendar: object) -> tuple[BoolArray, BoolArray]:
    """(entries_allowed, square_off) per bar from a ``MarketCalendar`` at each bar's
    decision time (its last tick's exchange time, e.g. bar start + interval - 1 ms)."""
    entries = getattr(calendar, "entries_allowed", None)
    past = getattr(calendar, "past_square_off", None)
    if entries is None or past is None:
        raise BacktestInputError(
            "calendar must be a chimera_core.markets.MarketCalendar (calendar_for(...))"
        )
    ts = [int(t) for t in np.asarray(decision_ts_ms, dtype=np.int64)]
    return (
        np.fromiter((entries(t) for t in ts), dtype=np.bool_, count=len(ts)),
        np.fromiter((past(t) for t in ts), dtype=np.bool_, count=len(ts)),
    )


def open_delays(
    ts_ms: IntArray,
    interval_ms: int,
    *,
    stale_after_s: float,
    max_ahead_s: float,
    latency_ms: int = 0,
) -> Int8Array:
    """Per bar, how many prints past its open's three an entry decided at that open waits
    in event mode (0, 1 or 2), from the gap before the bar. The open is printed three
    times (``event.bar_ticks``): arm, fire, fill. After a gap, the node loses some:

    - the feed clock drops a first print more than ``max_ahead_s`` after the last one it
      accepted (the previous bar's last print, the close's repeat at its start + 3/4 of
      the interval + ``latency_ms`` + 1), until a second print confirms the new time;
    - the first print it accepts is stale when it comes more than ``stale_after_s``
      after that last print, and no entry arms on a stale print.

    Each lost print moves the fill one print on: to the first leg's end (O→L→H→C on an
    up bar: the low), on its first print (1) or its repeat (2). Exits are not delayed
    (they fill at the open all the same). The first bar is stale (no earlier print)."""
    ts = np.asarray(ts_ms, dtype=np.int64)
    step = int(interval_ms) // 4
    if step <= 0:
        raise BacktestInputError(f"interval_ms must be >= 4 ms, got {interval_ms!r}")
    gap = int(latency_ms) + 1
    last_print = ts[:-1] + 3 * step + gap
    out = np.ones(ts.size, dtype=np.int8)
    lost = ts[1:] - last_print > int(max_ahead_s * 1000)  # FeedClock: refused
    first_seen = ts[1:] + np.where(lost, gap, 0)
    # As the engine compares: receive times in ns against int(stale_after_s x 1e9).
    stale = (first_seen - last_print) * 1_000_000 > int(stale_after_s * 1e9)
    out[1:] = lost.astype(np.int8) + stale.astype(np.int8)
    return out


def event_open_delays(cfg: Config, ts_ms: IntArray, interval_ms: int) -> Int8Array:
    """``open_delays`` with the feed settings event mode runs the node with on bars of
    ``interval_ms`` (``event.backtest_config``: ``[feed] stale_after_s`` raised to four
    bars, at most a week; the engine's feed clock allows ``[sanity] max_clock_ahead_s``
    or two bars, whichever is longer), and ``[execution.paper] latency_ms``."""
    interval_s = interval_ms / 1000
    return open_delays(
        ts_ms,
        interval_ms,
        stale_after_s=min(604_800.0, max(cfg.feed.stale_after_s, 4.0 * interval_s)),
        max_ahead_s=max(cfg.sanity.max_clock_ahead_s, 2 * (interval_ms // 1000)),
        latency_ms=cfg.execution.paper.latency_ms,
    )


def _checked_delays(delays: object, size: int) -> Int8Array:
    if delays is None:
        return np.empty(0, dtype=np.int8)
    if not isinstance(delays, np.ndarray) or delays.shape != (size,):
        raise BacktestInputError(
            f"open_delay must be a numpy int array with one value per bar ({size}), got "
            f"{getattr(delays, 'shape', type(delays).__name__)}"
        )
    out = np.ascontiguousarray(delays, dtype=np.int8)
    if out.size and (out.min() < 0 or out.max() > 2):
        raise BacktestInputError(
            f"open_delay values must be 0, 1 or 2 (prints past the open), got "
            f"{int(out.min())}..{int(out.max())}"
        )
    return out


def warm_up() -> None:
    """Compile (or load from the on-disk cache) every kernel on tiny inputs."""
    c = np.linspace(100.0, 101.0, 40)
    s = FastSettings(commission="percent", commission_pct=0.01, sizing="equity_fraction")
    ma_cross(c, c + 0.5, c - 0.5, c, settings=s, fast=2, slow=4)
    default_strategy(
        c, c + 0.5, c - 0.5, c, settings=s, energy_lookback=3, z_lookback=3, band_lookback=3
    )
