"""Instruments by name, as traders write them, resolved through Angel One's instrument master.

    master = load_master(cfg.data_dir, cfg.instruments, today=date_of_session)  # once a day
    inst = master.resolve("NFO:NIFTY26DEC2425000CE")     # -> Instrument (token 43650, ...)
    inst = master.resolve("NSE:RELIANCE-EQ")
    round_to_tick(1234.567, inst.tick_size, Side.BUY)      # limit buy: down to a tick
    qty_in_lots(150, inst.lot_size)                        # 2 lots of 75

A name is ``EXCHANGE:SYMBOL`` with Angel One's exchange (``NSE``, ``BSE``, ``NFO``, ``BFO``,
``MCX``, ``CDS``, ``NCDEX``) and its trading symbol exactly as in the master (options:
``NAME<DDMMMYY><strike><CE|PE>``, futures ``NAME<DDMMMYY>FUT``). An unknown name is a
``ConfigError`` listing the closest names.

The master (OpenAPIScripMaster.json, ``instruments.master_url``) is a JSON list of objects
with string values ``token, symbol, name, expiry, strike, lotsize, instrumenttype, exch_seg,
tick_size``. Units, as Angel One's own SDK consumers read them (OpenAlgo's Angel One master
loader, broker/angel/database/master_contract_db.py): ``tick_size`` and ``strike`` are in
paise (÷100), a currency option's strike ÷10^7; ``strike`` "-1" means none; ``expiry`` is
``26DEC2024``. ``load_master`` downloads it once per session date into
``<data_dir>/instruments/YYYY-MM-DD.json`` (atomic write) and loads that file when it
exists; a failed download falls back to the newest cached file with a warning
(``instruments_master_stale``), and with none raises ``ConfigError``. The date is an input
(the session's exchange date), never the wall clock.

Price divisor (``Instrument.price_divisor``): the SmartAPI WebSocket 2.0 feed sends prices
as integers; Angel One's WebSocket 2.0 documentation: "All prices are in paise. For
currencies, the int32 price values should be divided by 10000000.0 to obtain four decimal
places. For everything else, the price values should be divided by 100." (quoted by the
SmartAPI team, forum topic 3378, "Data format issue with websocket V2 version"). So CDE_FO
divides by 10,000,000 and every other segment by 100. *Verify against a live CDS tick
before trading currency*: the feed codec (chimera_core/feed/smartapi_v2.py) divides by 100
for every segment today.

Exchange types (SmartAPI v2, /work/shared/reference/smartapi-v2-protocol.md): NSE_CM=1,
NSE_FO=2, BSE_CM=3, BSE_FO=4, MCX_FO=5, NCX_FO=7, CDE_FO=13.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import msgspec

from chimera_core.contracts import ExchangeType, Side
from chimera_core.errors import ConfigError
from chimera_core.lazylog import LazyLogger

# On `chimera kill`'s path (the config imports this module): structlog on first use.
log = LazyLogger(__name__)

MASTER_URL = "https://margincalculator.angelbroking.com/OpenAPI_File/files/OpenAPIScripMaster.json"

# Angel One's exch_seg -> (our segment / market name, SmartAPI exchange type).
EXCHANGES: dict[str, tuple[str, int]] = {
    "NSE": ("NSE_CM", ExchangeType.NSE_CM),
    "BSE": ("BSE_CM", ExchangeType.BSE_CM),
    "NFO": ("NSE_FO", ExchangeType.NSE_FO),
    "BFO": ("BSE_FO", ExchangeType.BSE_FO),
    "MCX": ("MCX_FO", ExchangeType.MCX_FO),
    "NCDEX": ("NCX_FO", ExchangeType.NCX_FO),
    "CDS": ("CDE_FO", ExchangeType.CDE_FO),
}
# Feed price divisor per segment (module docstring for the source).
PRICE_DIVISOR: dict[str, int] = {seg: 100 for seg, _ in EXCHANGES.values()} | {"CDE_FO": 10_000_000}


class InstrumentsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[instruments]``: where the instrument master comes from, and names to trade."""

    master_url: str = MASTER_URL
    download_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0
    # Instruments by name ("NSE:RELIANCE-EQ", "NFO:NIFTY26DEC2425000CE"), resolved at start.
    names: Annotated[list[str], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        parsed = urlparse(self.master_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"instruments.master_url must be http(s)://HOST/..., got {self.master_url!r}"
            )
        bad = [n for n in self.names if ":" not in n]
        if bad:
            raise ValueError(f"instruments.names: expected EXCHANGE:SYMBOL, got {bad}")


class Instrument(msgspec.Struct, frozen=True, kw_only=True):
    """One tradable instrument. Prices in rupees; quantities in units (``lot_size`` per lot)."""

    name: str  # "NFO:NIFTY26DEC2425000CE"
    token: str
    symbol: str  # trading symbol, "NIFTY26DEC2425000CE" (placeOrder needs it)
    exchange: str  # Angel One's exch_seg: "NFO"
    segment: str  # our market name: "NSE_FO" (chimera_core/markets.py calendars)
    exchange_type: int  # SmartAPI v2: 2
    kind: Literal["EQ", "FUT", "OPT", "IDX"]
    underlying: str  # the master's "name": "NIFTY"
    lot_size: int
    tick_size: float  # rupees (0.05); 0.0 for an index (not tradable)
    expiry: str | None  # ISO date "2024-12-26"
    strike: float | None  # rupees
    option_type: Literal["CE", "PE"] | None
    price_divisor: int  # feed integer price / this = rupees


def _num(row: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    try:
        v = float(row.get(key, default) or default)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _expiry(text: str) -> str | None:
    if not text:
        return None
    try:
        return datetime.strptime(text.strip().upper(), "%d%b%Y").date().isoformat()
    except ValueError:
        return None


def parse_row(row: Mapping[str, Any]) -> Instrument | None:
    """One master row -> Instrument (None for a row of an exchange we do not trade or
    without a token/symbol)."""
    exch = str(row.get("exch_seg", "")).strip().upper()
    token = str(row.get("token", "")).strip()
    symbol = str(row.get("symbol", "")).strip()
    if exch not in EXCHANGES or not token or not symbol:
        return None
    segment, exchange_type = EXCHANGES[exch]
    itype = str(row.get("instrumenttype", "")).strip().upper()
    kind: Literal["EQ", "FUT", "OPT", "IDX"] = (
        "OPT" if itype.startswith("OPT")
        else "FUT" if itype.startswith("FUT")
        else "IDX" if itype == "AMXIDX"
        else "EQ"
    )  # fmt: skip
    strike_raw = _num(row, "strike", -1.0)
    strike: float | None = None
    if kind == "OPT" and strike_raw > 0:
        strike = strike_raw / (10_000_000 if exch == "CDS" else 100)
    lot = int(_num(row, "lotsize", 1.0)) or 1
    opt: Literal["CE", "PE"] | None = None
    if kind == "OPT" and symbol.upper()[-2:] in ("CE", "PE"):
        opt = "CE" if symbol.upper().endswith("CE") else "PE"
    return Instrument(
        name=f"{exch}:{symbol}",
        token=token,
        symbol=symbol,
        exchange=exch,
        segment=segment,
        exchange_type=int(exchange_type),
        kind=kind,
        underlying=str(row.get("name", "")),
        lot_size=max(1, lot),
        tick_size=max(0.0, _num(row, "tick_size")) / 100.0,
        expiry=_expiry(str(row.get("expiry", ""))),
        strike=strike,
        option_type=opt,
        price_divisor=PRICE_DIVISOR[segment],
    )


class InstrumentMaster:
    """The parsed master: look-ups by name and by (exchange type, token)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], source: str = "<master>") -> None:
        self.source = source
        self.by_name: dict[str, Instrument] = {}
        self.by_token: dict[tuple[int, str], Instrument] = {}
        for row in rows:
            if not isinstance(row, Mapping):
                continue
            inst = parse_row(row)
            if inst is None:
                continue
            self.by_name.setdefault(inst.name.upper(), inst)
            self.by_token.setdefault((inst.exchange_type, inst.token), inst)

    def __len__(self) -> int:
        return len(self.by_name)

    def resolve(self, name: str) -> Instrument:
        """``EXCHANGE:SYMBOL`` -> Instrument; ConfigError with the closest names if unknown."""
        key = name.strip().upper()
        found = self.by_name.get(key)
        if found is not None:
            return found
        exch = key.split(":", 1)[0] if ":" in key else ""
        if exch not in EXCHANGES:
            raise ConfigError(
                f"instrument {name!r}: expected EXCHANGE:SYMBOL with EXCHANGE one of "
                f"{', '.join(EXCHANGES)} (e.g. 'NSE:RELIANCE-EQ', 'NFO:NIFTY26DEC2425000CE')"
            )
        close = difflib.get_close_matches(key, list(self.by_name), n=5, cutoff=0.6)
        hint = ", ".join(self.by_name[c].name for c in close) or "none close"
        raise ConfigError(
            f"instrument {name!r} is not in the instrument master ({self.source}); "
            f"closest: {hint}. Check the symbol, expiry (DDMMMYY) and strike"
        )

    def resolve_all(self, names: Iterable[str]) -> list[Instrument]:
        return [self.resolve(n) for n in names]

    def by_exchange_token(self, exchange_type: int, token: str) -> Instrument | None:
        return self.by_token.get((exchange_type, token))


def _cache_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "instruments"


def _download(url: str, timeout_s: float) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, headers={"User-Agent": "chimera"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        body: bytes = resp.read()
    return body


def _write_atomic(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".master-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(body: bytes, source: str) -> InstrumentMaster:
    try:
        rows = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"instrument master {source}: not JSON ({exc})") from None
    if not isinstance(rows, list):
        raise ConfigError(f"instrument master {source}: expected a JSON list of instruments")
    master = InstrumentMaster(rows, source)
    if not len(master):
        raise ConfigError(f"instrument master {source}: no instruments in it")
    return master


def load_master(data_dir: str | Path, cfg: InstrumentsConfig, today: date) -> InstrumentMaster:
    """Today's master: from ``<data_dir>/instruments/<today>.json`` if there, else
    downloaded from ``cfg.master_url`` and cached there (see the module docstring)."""
    cache = _cache_dir(data_dir)
    path = cache / f"{today.isoformat()}.json"
    if path.is_file():
        try:
            return _parse(path.read_bytes(), str(path))
        except ConfigError as exc:
            log.warning("instruments_cache_bad", path=str(path), error=str(exc))
    try:
        body = _download(cfg.master_url, cfg.download_timeout_s)
        master = _parse(body, cfg.master_url)
    except (OSError, ConfigError) as exc:
        older = sorted(p for p in cache.glob("????-??-??.json") if p.name < path.name)
        if older:
            log.warning(
                "instruments_master_stale", url=cfg.master_url, error=str(exc),
                using=str(older[-1]),
            )  # fmt: skip
            return _parse(older[-1].read_bytes(), str(older[-1]))
        raise ConfigError(
            f"instrument master: could not download {cfg.master_url} ({exc}) and there is "
            f"no cached copy in {cache}; check instruments.master_url and the network"
        ) from None
    _write_atomic(path, body)
    log.info("instruments_master_downloaded", url=cfg.master_url, path=str(path),
             instruments=len(master))  # fmt: skip
    return master


# ---- prices and quantities -------------------------------------------------------------
def round_to_tick(
    price: float, tick: float, side: Side, kind: Literal["limit", "stop"] = "limit"
) -> float:
    """``price`` on the instrument's tick grid, never on the trader's wrong side:

    - a limit BUY rounds down and a limit SELL up (never pay more / sell for less than
      asked);
    - a stop trigger rounds away from the market: a BUY stop (above the market) up, a SELL
      stop (below it) down, so rounding never brings a stop closer to the price.

    A tick of 0 (or not finite) leaves the price as it is; a price a hair off the grid
    (float noise under 1e-9 ticks) counts as on it."""
    if not (math.isfinite(tick) and tick > 0 and math.isfinite(price)):
        return price
    n = price / tick
    up = (side is Side.SELL) if kind == "limit" else (side is Side.BUY)
    nearest = round(n)
    # Float noise, not a price between ticks: the division's error grows with n (a price
    # of 262,144.6075 on a 0.0025 grid is 1.5e-8 ticks off after dividing).
    on_grid = abs(n - nearest) < 1e-9 + abs(n) * 1e-14
    k = nearest if on_grid else math.ceil(n) if up else math.floor(n)
    decimals = max(0, -math.floor(math.log10(tick)) + 4)
    return round(k * tick, decimals)


def qty_in_lots(qty: int, lot_size: int) -> int:
    """Whole lots in ``qty`` units (rounded down): what an order may carry where the
    segment trades in lots. ``lot_size`` < 1 is taken as 1."""
    lot = max(1, int(lot_size))
    return max(0, int(qty)) // lot
