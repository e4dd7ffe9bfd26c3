"""Transaction charges per segment and product, from a dated schedule; or a simple model.

Two entry points:

- ``ChargeCalculator(equity=cfg.execution.charges, markets=cfg.markets, kinds=...)`` —
  what brokers call per fill: ``calc.for_request(req, qty, price, ts_ms, prior_turnover)``
  or ``calc.charges(side, qty, price, market="NSE_FO", product="INTRADAY", ts_ms=...,
  kind="OPT")``. The market's ``charges`` key (``[markets.NAME]``, chimera_core/markets.py)
  picks the model: ``schedule`` (Indian segments), ``percent``, ``fixed`` or ``none``
  (non-Indian data). ``kinds`` maps a token to "FUT" or "OPT" for the derivative segments
  (``Instrument.kind`` from chimera_core/instruments.py); a derivative token without a kind
  is charged as a future (logged once, ``charges_kind_unknown``).
- ``compute_charges(side, qty, price, product, cfg)`` — NSE cash equity from
  ``ChargesConfig`` alone (its original API, kept for its callers).

The schedule in force is chosen by the fill's exchange date (IST): ``SCHEDULES`` holds
versions by effective date, so a backtest over 2023 data pays 2023's STT. Cash equity
is the exception when ``equity`` is given: ``[execution.charges]`` states the NSE cash
rates for every date (its defaults are the 2024-10-01 line) and BSE cash pays the same
but BSE's exchange charge; the dated equity lines apply with ``equity=None``.

Rates, their sources and dates (fractions of turnover; options on premium). This machine
had no internet when they were written; they were checked against published broker
charge lists quoted in public pages (Zerodha's charge list; LiveMint, 1 Oct 2024, on the
1 Oct 2024 changes) — *verify before live* against the exchanges' circulars:

- Brokerage (Angel One pricing page, late 2024): equity intraday, futures, currency and
  commodity ₹20 or 0.03 % per executed order, whichever is lower; equity delivery ₹20 or
  0.1 %; options a flat ₹20 per executed order.
- STT (Finance (No. 2) Act 2004 Ch. VII as amended; Finance (No. 2) Act 2024 from
  1 Oct 2024): delivery 0.1 % buy and sell; intraday 0.025 % sell; futures 0.02 % sell
  (0.0125 % from 1 Apr 2023, Finance Act 2023); options 0.1 % of premium, sell (0.0625 %
  before). CTT (Finance Act 2013): commodity futures 0.01 % sell (non-agri), options
  0.05 % sell. Currency: none. Exercised options (STT on intrinsic value) are not modelled.
- Exchange transaction charges (NSE circular of 27 Sep 2024, uniform fees under SEBI's
  MII circular of 1 Jul 2024, from 1 Oct 2024): NSE cash 0.00297 %, futures 0.00173 %,
  options 0.03503 % of premium, currency futures 0.00035 %, currency options 0.0311 %;
  BSE cash 0.00375 %, BSE futures 0, BSE options 0.0325 %; MCX futures 0.0021 %, options
  0.0418 %. Before 1 Oct 2024 (as quoted by Zerodha): NSE cash 0.00322 %, futures
  0.00183 %, options 0.0495 %. NSE's IPFT levy (₹10/crore) is not modelled.
- SEBI turnover fee: ₹10 per crore, each side (SEBI fee regulations, since 1 Jun 2020).
- GST: 18 % on brokerage + exchange charge + SEBI fee.
- Stamp duty (Indian Stamp Act as amended by the Finance Act 2019, from 1 Jul 2020), buy
  side: delivery 0.015 %, intraday 0.003 %, futures 0.002 %, options 0.003 %, currency
  0.0001 %, commodity futures 0.002 %, commodity options 0.003 %.

Not covered by the schedule: NCX_FO (NCDEX); give it ``charges = "percent"`` or
``"fixed"`` — ``ChargeCalculator.check_markets`` says so at start-up.

Rounding: contract notes round STT and stamp duty to the rupee on the aggregate per scrip
per contract note (a day's trades), which a per-fill computation cannot reproduce. So every
component is kept to paise (rounded half-up) and ``total`` is the sum of the rounded
components; GST is computed on the rounded components it taxes. Expect a day's total to
differ from the broker's contract note by a few rupees at most. Brokerage is per executed
order: a later fill of an order that already traded ``prior_turnover`` pays only the
increase of the order's fee, so an order filled in three pieces pays one fee.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

import msgspec
import structlog

from chimera_core.config import ChargesConfig
from chimera_core.contracts import ExchangeType, OrderRequest, Side
from chimera_core.errors import ChimeraError, ConfigError
from chimera_core.markets import MarketConfig, merged_market

log = structlog.get_logger(__name__)

PRODUCTS = ("INTRADAY", "DELIVERY")  # what execution.product allows (equity)
DERIVATIVE_PRODUCTS = ("INTRADAY", "DELIVERY", "CARRYFORWARD")  # same rates on F&O
KINDS = ("FUT", "OPT")
_CRORE = Decimal(10_000_000)
_PAISA = Decimal("0.01")
# Exact for any finite float price x any qty (a float is < 1e309): nothing a bad print can
# carry makes the arithmetic round or quantize raise on a fill path.
_EXACT = Context(prec=700)


class Charges(msgspec.Struct, frozen=True):
    """Rupees, each component rounded to paise; ``total`` is their sum. The percent and
    fixed models put their whole charge in ``brokerage``."""

    brokerage: float
    stt: float
    exchange_txn: float
    sebi: float
    gst: float
    stamp: float
    total: float


NO_CHARGES = Charges(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


class Line(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a schedule: the rates for one kind of trade. Fractions of turnover."""

    brokerage_flat: float  # rupees per executed order: the fee, or its cap
    brokerage_pct: float | None  # None: the flat fee whatever the size (options)
    stt_buy: float
    stt_sell: float
    exchange_txn: dict[str, float]  # by exchange: NSE, BSE, MCX
    sebi_per_crore: float = 10.0
    stamp_buy: float
    gst: float = 0.18


# Each schedule version: the lines in force from its date (IST) until the next version.
# Line keys: EQUITY_INTRADAY, EQUITY_DELIVERY, FUT, OPT, CURRENCY_FUT, CURRENCY_OPT,
# COMMODITY_FUT, COMMODITY_OPT. Sources and dates: module docstring.
_OCT_2024: dict[str, Line] = {
    "EQUITY_INTRADAY": Line(
        brokerage_flat=20.0,
        brokerage_pct=0.0003,  # Angel One, late 2024
        stt_buy=0.0,
        stt_sell=0.00025,  # STT intraday, sell side
        exchange_txn={"NSE": 0.0000297, "BSE": 0.0000375},  # NSE/BSE, 1 Oct 2024
        stamp_buy=0.00003,  # Stamp Act, 1 Jul 2020
    ),
    "EQUITY_DELIVERY": Line(
        brokerage_flat=20.0,
        brokerage_pct=0.001,  # Angel One, late 2024
        stt_buy=0.001,
        stt_sell=0.001,  # STT delivery, both sides
        exchange_txn={"NSE": 0.0000297, "BSE": 0.0000375},  # NSE/BSE, 1 Oct 2024
        stamp_buy=0.00015,  # Stamp Act, 1 Jul 2020
    ),
    "FUT": Line(
        brokerage_flat=20.0,
        brokerage_pct=0.0003,  # Angel One, late 2024
        stt_buy=0.0,
        stt_sell=0.0002,  # Finance (No. 2) Act 2024, from 1 Oct 2024
        exchange_txn={"NSE": 0.0000173, "BSE": 0.0},  # NSE/BSE, 1 Oct 2024
        stamp_buy=0.00002,  # Stamp Act, 1 Jul 2020
    ),
    "OPT": Line(
        brokerage_flat=20.0,
        brokerage_pct=None,  # Angel One: flat per executed order
        stt_buy=0.0,
        stt_sell=0.001,  # on premium; Finance (No. 2) Act 2024, 1 Oct 2024
        exchange_txn={"NSE": 0.0003503, "BSE": 0.000325},  # on premium; 1 Oct 2024
        stamp_buy=0.00003,  # Stamp Act, 1 Jul 2020
    ),
    "CURRENCY_FUT": Line(
        brokerage_flat=20.0,
        brokerage_pct=0.0003,  # Angel One, late 2024
        stt_buy=0.0,
        stt_sell=0.0,  # no STT on currency derivatives
        exchange_txn={"NSE": 0.0000035, "BSE": 0.0000045},  # NSE/BSE, 1 Oct 2024
        stamp_buy=0.000001,  # Stamp Act, 1 Jul 2020
    ),
    "CURRENCY_OPT": Line(
        brokerage_flat=20.0,
        brokerage_pct=None,  # Angel One: flat per executed order
        stt_buy=0.0,
        stt_sell=0.0,
        exchange_txn={"NSE": 0.000311, "BSE": 0.00001},  # on premium; 1 Oct 2024
        stamp_buy=0.000001,  # Stamp Act, 1 Jul 2020
    ),
    "COMMODITY_FUT": Line(
        brokerage_flat=20.0,
        brokerage_pct=0.0003,  # Angel One, late 2024
        stt_buy=0.0,
        stt_sell=0.0001,  # CTT non-agri futures, Finance Act 2013
        exchange_txn={"MCX": 0.000021},  # MCX, 1 Oct 2024
        stamp_buy=0.00002,  # Stamp Act, 1 Jul 2020
    ),
    "COMMODITY_OPT": Line(
        brokerage_flat=20.0,
        brokerage_pct=None,  # Angel One: flat per executed order
        stt_buy=0.0,
        stt_sell=0.0005,  # CTT options, on premium, Finance Act 2013
        exchange_txn={"MCX": 0.000418},  # MCX, on premium, 1 Oct 2024
        stamp_buy=0.00003,  # Stamp Act, 1 Jul 2020
    ),
}


def _with(lines: dict[str, Line], **changes: dict[str, object]) -> dict[str, Line]:
    return {k: msgspec.structs.replace(v, **changes.get(k, {})) for k, v in lines.items()}


SCHEDULES: dict[str, dict[str, Line]] = {
    # From 1 Apr 2023 (Finance Act 2023 STT on F&O) to 30 Sep 2024; exchange charges as
    # Zerodha quoted them before 1 Oct 2024 (LiveMint, 1 Oct 2024). Verify before use.
    "2023-04-01": _with(
        _OCT_2024,
        EQUITY_INTRADAY={"exchange_txn": {"NSE": 0.0000322, "BSE": 0.0000375}},
        EQUITY_DELIVERY={"exchange_txn": {"NSE": 0.0000322, "BSE": 0.0000375}},
        FUT={"stt_sell": 0.000125, "exchange_txn": {"NSE": 0.0000183, "BSE": 0.0}},
        OPT={"stt_sell": 0.000625, "exchange_txn": {"NSE": 0.000495, "BSE": 0.000325}},
    ),
    "2024-10-01": _OCT_2024,
}

_IST = timezone(timedelta(hours=5, minutes=30))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Effective instants (ms) of each version, ascending: selecting one is integer compares.
_VERSIONS: list[tuple[int, str]] = sorted(
    (
        (datetime.combine(date.fromisoformat(d), datetime.min.time(), _IST) - _EPOCH)
        // timedelta(milliseconds=1),
        d,
    )
    for d in SCHEDULES
)

# Segment -> (exchange for the exchange charge, line family).
_SEGMENTS: dict[str, tuple[str, str]] = {
    "NSE_CM": ("NSE", "EQUITY"),
    "BSE_CM": ("BSE", "EQUITY"),
    "NSE_FO": ("NSE", ""),
    "BSE_FO": ("BSE", ""),
    "CDE_FO": ("NSE", "CURRENCY_"),
    "MCX_FO": ("MCX", "COMMODITY_"),
}


def schedule_on(ts_ms: int) -> tuple[str, dict[str, Line]]:
    """The schedule version in force at exchange time ``ts_ms`` (the earliest one before
    the first version). Never raises: integer comparisons only."""
    chosen = _VERSIONS[0][1]
    for start, name in _VERSIONS:
        if ts_ms >= start:
            chosen = name
    return chosen, SCHEDULES[chosen]


def _dec(x: float) -> Decimal:
    # Through the shortest repr, so 0.0000375 x 50,000 is exactly 1.875 (a contract note's
    # arithmetic), not the binary 1.87499... that float multiplication gives. float() first:
    # numpy 2's repr of np.float64(100.0) is "np.float64(100.0)", which Decimal refuses.
    return Decimal(repr(float(x)))


def _paise(x: Decimal) -> Decimal:
    return x.quantize(_PAISA, rounding=ROUND_HALF_UP)


def _check_fill(qty: int, price: float, prior_turnover: float) -> None:
    if qty <= 0:
        raise ChimeraError(f"charges: expected qty > 0, got {qty}; pass the executed quantity")
    if not (math.isfinite(price) and price > 0):
        raise ChimeraError(f"charges: expected a finite price > 0, got {price!r}")
    if not (math.isfinite(prior_turnover) and prior_turnover >= 0):
        raise ChimeraError(f"charges: expected prior_turnover >= 0, got {prior_turnover!r}")


def _fee(line: Line, turnover: Decimal) -> Decimal:
    if turnover <= 0:
        return Decimal(0)
    flat = _dec(line.brokerage_flat)
    if line.brokerage_pct is None:
        return flat
    return min(flat, _dec(line.brokerage_pct) * turnover)


def apply_line(
    line: Line, exchange: str, side: Side, qty: int, price: float, prior_turnover: float = 0.0
) -> Charges:
    """Charges of one fill under one schedule line (see the module docstring)."""
    _check_fill(qty, price, prior_turnover)
    with localcontext(_EXACT):
        return _apply(line, exchange, side, qty, price, prior_turnover)


def _apply(
    line: Line, exchange: str, side: Side, qty: int, price: float, prior_turnover: float
) -> Charges:
    turnover = _dec(price) * qty
    prior = _dec(prior_turnover)
    buy = side is Side.BUY
    brokerage = _paise(_fee(line, prior + turnover)) - _paise(_fee(line, prior))
    stt = _paise(_dec(line.stt_buy if buy else line.stt_sell) * turnover)
    stamp = _paise(_dec(line.stamp_buy) * turnover) if buy else Decimal(0)
    exchange_txn = _paise(_dec(line.exchange_txn.get(exchange, 0.0)) * turnover)
    sebi = _paise(_dec(line.sebi_per_crore) * turnover / _CRORE)
    gst = _paise(_dec(line.gst) * (brokerage + exchange_txn + sebi))
    return Charges(
        brokerage=float(brokerage),
        stt=float(stt),
        exchange_txn=float(exchange_txn),
        sebi=float(sebi),
        gst=float(gst),
        stamp=float(stamp),
        total=float(brokerage + stt + exchange_txn + sebi + gst + stamp),
    )


def _equity_lines(cfg: ChargesConfig, base: dict[str, Line]) -> dict[str, Line]:
    """``[execution.charges]`` as the cash-equity lines of a schedule version: its rates on
    NSE, and on BSE too except BSE's own exchange charge (from ``base``)."""
    out: dict[str, Line] = {}
    for key, product in (("EQUITY_INTRADAY", "INTRADAY"), ("EQUITY_DELIVERY", "DELIVERY")):
        line = _config_line(cfg, product)
        bse = base[key].exchange_txn.get("BSE", 0.0)
        out[key] = msgspec.structs.replace(line, exchange_txn={"NSE": cfg.exchange_txn, "BSE": bse})
    return out


def _config_line(cfg: ChargesConfig, product: str) -> Line:
    """NSE cash equity exactly as ``ChargesConfig`` states it (compute_charges)."""
    intraday = product == "INTRADAY"
    stt_d = cfg.stt_delivery
    return Line(
        brokerage_flat=cfg.brokerage_flat,
        brokerage_pct=cfg.brokerage_pct_intraday if intraday else cfg.brokerage_pct_delivery,
        stt_buy=0.0 if intraday else stt_d,
        stt_sell=cfg.stt_intraday_sell if intraday else stt_d,
        exchange_txn={"NSE": cfg.exchange_txn},
        sebi_per_crore=cfg.sebi_per_crore,
        stamp_buy=cfg.stamp_intraday_buy if intraday else cfg.stamp_delivery_buy,
        gst=cfg.gst,
    )


def compute_charges(
    side: Side,
    qty: int,
    price: float,
    product: str,
    schedule: ChargesConfig,
    prior_turnover: float = 0.0,
) -> Charges:
    """Charges for one executed order (or fill) of ``qty`` at ``price`` on NSE cash, from
    ``ChargesConfig`` alone. Brokerage is per executed order (see ``prior_turnover``)."""
    if product not in PRODUCTS:
        raise ChimeraError(
            f"charges: expected product in {PRODUCTS}, got {product!r}; fix execution.product"
        )
    return apply_line(_config_line(schedule, product), "NSE", side, qty, price, prior_turnover)


class ChargeCalculator:
    """Charges per fill for every market; see the module docstring."""

    def __init__(
        self,
        equity: ChargesConfig | None = None,
        markets: Mapping[str, MarketConfig] | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        self._equity = equity
        markets = markets or {}
        names = {*_SEGMENTS, "NCX_FO", "generic", *markets}
        self._markets = {n: merged_market(n, markets.get(n)) for n in names}
        self._kinds = dict(kinds or {})
        bad = {t: k for t, k in self._kinds.items() if k not in KINDS}
        if bad:
            raise ConfigError(f"charges: instrument kinds must be FUT or OPT, got {bad}")
        self._warned: set[str] = set()
        # [execution.charges] over each version's equity lines, built once.
        self._lines = {
            v: lines if equity is None else {**lines, **_equity_lines(equity, lines)}
            for v, lines in SCHEDULES.items()
        }

    def check_markets(self, names: list[str] | None = None) -> None:
        """ConfigError for a market whose ``charges = "schedule"`` has no schedule lines
        (NCX_FO, or a market of your own), so a session fails at start, not at a fill."""
        for name in names if names is not None else list(self._markets):
            m = self._markets.get(name) or merged_market(name)
            if m.charges == "schedule" and name not in _SEGMENTS:
                raise ConfigError(
                    f"'markets.{name}.charges' = \"schedule\": there is no Indian charge "
                    f'schedule for {name}; set charges = "percent" (charges_pct) or '
                    '"fixed" (charges_fixed) with your broker\'s numbers, or "none"'
                )

    def charges(
        self,
        side: Side,
        qty: int,
        price: float,
        *,
        market: str,
        product: str,
        ts_ms: int,
        kind: str | None = None,
        prior_turnover: float = 0.0,
    ) -> Charges:
        """Charges of one fill on ``market`` (a segment name or a ``[markets]`` name)."""
        m = self._markets.get(market)
        if m is None:
            m = self._markets[market] = merged_market(market)
        model = m.charges
        if model == "none":
            _check_fill(qty, price, prior_turnover)
            return NO_CHARGES
        if model == "percent":
            line = Line(brokerage_flat=math.inf, brokerage_pct=(m.charges_pct or 0.0) / 100.0,
                        stt_buy=0.0, stt_sell=0.0, exchange_txn={}, sebi_per_crore=0.0,
                        stamp_buy=0.0, gst=0.0)  # fmt: skip
            return apply_line(line, "", side, qty, price, prior_turnover)
        if model == "fixed":
            line = Line(brokerage_flat=m.charges_fixed or 0.0, brokerage_pct=None, stt_buy=0.0,
                        stt_sell=0.0, exchange_txn={}, sebi_per_crore=0.0, stamp_buy=0.0,
                        gst=0.0)  # fmt: skip
            return apply_line(line, "", side, qty, price, prior_turnover)
        seg = _SEGMENTS.get(market)
        if seg is None:
            raise ChimeraError(
                f"charges: no Indian schedule for market {market!r}; set "
                f'[markets.{market}] charges = "percent", "fixed" or "none"'
            )
        exchange, family = seg
        version, _ = schedule_on(ts_ms)
        lines = self._lines[version]
        if family == "EQUITY":
            if product not in PRODUCTS:
                raise ChimeraError(
                    f"charges: expected product in {PRODUCTS} on {market}, got {product!r}"
                )
            key = f"EQUITY_{product}"
        else:
            if product not in DERIVATIVE_PRODUCTS:
                raise ChimeraError(
                    f"charges: expected product in {DERIVATIVE_PRODUCTS} on {market}, "
                    f"got {product!r}"
                )
            if kind not in KINDS:
                raise ChimeraError(
                    f"charges: {market} needs kind 'FUT' or 'OPT' (the instrument's), got {kind!r}"
                )
            key = f"{family}{kind}"
        return apply_line(lines[key], exchange, side, qty, price, prior_turnover)

    def for_request(
        self, req: OrderRequest, qty: int, price: float, ts_ms: int, prior_turnover: float = 0.0
    ) -> Charges:
        """Charges of one fill of ``req`` (its exchange type, product and token's kind)."""
        try:
            market = ExchangeType(req.exchange_type).name
        except ValueError:
            raise ChimeraError(
                f"charges: unknown exchange type {req.exchange_type!r} on {req.client_order_id}"
            ) from None
        kind = self._kinds.get(req.token)
        if kind is None and _SEGMENTS.get(market, ("", "EQUITY"))[1] != "EQUITY":
            kind = "FUT"
            if req.token not in self._warned:
                self._warned.add(req.token)
                log.warning("charges_kind_unknown", token=req.token, market=market, used="FUT")
        return self.charges(
            req.side, qty, price, market=market, product=req.product, ts_ms=ts_ms, kind=kind,
            prior_turnover=prior_turnover,
        )  # fmt: skip
