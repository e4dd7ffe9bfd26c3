"""SmartAPI WebSocket 2.0 binary codec: the only module that knows the packet layout.

One little-endian packet per binary WebSocket message; sizes LTP 51, QUOTE 123,
SNAP_QUOTE 379, DEPTH20 443 bytes (see shared/reference/smartapi-v2-protocol.md §4).
Prices travel as int64 paise and are decoded to rupees; the OI change percentage is a
float64 on the wire (the SDK misreads it as int64; we do not).
"""

from __future__ import annotations

import struct

from chimera_core.contracts import ExchangeType, Level, Mode, Tick
from chimera_core.errors import ProtocolError

LTP_S = struct.Struct("<BB25sqqq")
QUOTE_S = struct.Struct("<BB25sqqqqqqddqqqq")
SNAP_S = struct.Struct("<BB25sqqqqqqddqqqqqqd" + "hqqh" * 10 + "qqqq")
DEPTH_S = struct.Struct("<BB25sqq" + "iih" * 40)

PACKET_SIZE = {
    Mode.LTP: LTP_S.size,
    Mode.QUOTE: QUOTE_S.size,
    Mode.SNAP_QUOTE: SNAP_S.size,
    Mode.DEPTH: DEPTH_S.size,
}
_SIZE_BY_MODE = {int(m): s for m, s in PACKET_SIZE.items()}
_EXCHANGE_TYPES = frozenset(int(e) for e in ExchangeType)
# The integer price's divisor per exchange type: paise, but currencies (CDE_FO) in 10^-7.
_DIVISOR: dict[int, float] = {int(ExchangeType.CDE_FO): 10_000_000.0}
TOKEN_BYTES = 25
BEST5_LEVELS = 5
DEPTH_LEVELS = 20
_BID_FLAG = 1  # wire flag of a buy (bid) best-5 record; 0 is a sell (ask)

# Tokens repeat on every packet; caching their decoded str saves ~150 ns a frame.
_token_cache: dict[bytes, str] = {}
_TOKEN_CACHE_MAX = 4096


def _token(raw: bytes) -> str:
    cached = _token_cache.get(raw)
    if cached is not None:
        return cached
    name = raw.split(b"\0", 1)[0]
    if not name:
        raise ProtocolError("token field is empty (expected ASCII instrument token at bytes 2-26)")
    if not name.isascii() or not name.isalnum():
        raise ProtocolError(f"token field {name!r} is not an ASCII alphanumeric instrument token")
    text = name.decode("ascii")
    if len(_token_cache) < _TOKEN_CACHE_MAX:
        _token_cache[raw] = text
    return text


def _levels(
    values: tuple[int | float, ...], start: int, count: int, stride: int, d: float = 100.0
) -> tuple[Level, ...]:
    """Price levels from unpacked (…, qty, price, orders) records; empty slots are dropped."""
    out = []
    for i in range(start, start + count * stride, stride):
        qty, price, orders = values[i], values[i + 1], values[i + 2]
        if qty == 0:  # an empty slot: no size at that price
            continue
        out.append(Level(price / d, int(qty), int(orders)))
    return tuple(out)


def decode(frame: bytes, recv_ns: int = 0) -> Tick:
    """Decode one binary packet into a Tick; raise ProtocolError on anything malformed."""
    n = len(frame)
    if n == 0:
        raise ProtocolError("empty frame (expected a SmartAPI v2 binary packet)")
    mode = frame[0]
    expected = _SIZE_BY_MODE.get(mode)
    if expected is None:
        raise ProtocolError(f"unknown subscription mode {mode} in byte 0 (expected 1, 2, 3 or 4)")
    if n != expected:
        raise ProtocolError(f"mode {mode} packet is {n} bytes, expected {expected}")
    exchange_type = frame[1]
    if exchange_type not in _EXCHANGE_TYPES:
        raise ProtocolError(
            f"unknown exchange type {exchange_type} in byte 1 (expected one of "
            f"{sorted(_EXCHANGE_TYPES)})"
        )
    token = _token(frame[2:27])
    # Prices are integers: paise (/100) on every segment but currencies (/10^7), per the
    # SmartAPI WebSocket 2.0 documentation.
    d = _DIVISOR.get(exchange_type, 100.0)

    if mode == Mode.LTP:
        _, _, _, seq, ts, ltp = LTP_S.unpack(frame)
        return Tick(token, exchange_type, mode, seq, ts, ltp / d, recv_ns=recv_ns)

    if mode == Mode.QUOTE:
        v = QUOTE_S.unpack(frame)
        # Positional up to prev_close (Tick field order): keywords cost ~0.3 µs here.
        return Tick(
            token, exchange_type, mode, v[3], v[4], v[5] / d, v[6], v[7] / d, v[8],
            v[9], v[10], v[11] / d, v[12] / d, v[13] / d, v[14] / d,
            recv_ns=recv_ns,
        )  # fmt: skip

    if mode == Mode.SNAP_QUOTE:
        v = SNAP_S.unpack(frame)
        # v[18:58] are 10 records (flag, qty, price, orders): 5 bids then 5 asks by position.
        bids = _levels(v, 19, BEST5_LEVELS, 4, d)
        asks = _levels(v, 39, BEST5_LEVELS, 4, d)
        return Tick(
            token, exchange_type, mode, v[3], v[4], v[5] / d,
            ltq=v[6], avg_price=v[7] / d, volume=v[8],
            total_buy_qty=v[9], total_sell_qty=v[10],
            open=v[11] / d, high=v[12] / d, low=v[13] / d, prev_close=v[14] / d,
            last_traded_ts_s=v[15], open_interest=v[16], oi_change_pct=v[17],
            bids=bids, asks=asks,
            upper_circuit=v[58] / d, lower_circuit=v[59] / d,
            week52_high=v[60] / d, week52_low=v[61] / d,
            recv_ns=recv_ns,
        )  # fmt: skip

    # DEPTH20: exchange time at offset 27 (the SDK drops it), packet time at 35, no LTP.
    # Its prices are int32 paise (depth-20 is an NSE feed; no currency divisor applies).
    v = DEPTH_S.unpack(frame)
    return Tick(
        token, exchange_type, mode, 0, v[3], 0.0,
        bids=_levels(v, 5, DEPTH_LEVELS, 3), asks=_levels(v, 65, DEPTH_LEVELS, 3),
        packet_received_ms=v[4], recv_ns=recv_ns,
    )  # fmt: skip


def _paise(rupees: float, d: float = 100.0) -> int:
    return round(rupees * d)


def _token_bytes(token: str) -> bytes:
    raw = token.encode("ascii")
    if not raw or len(raw) > TOKEN_BYTES:
        raise ProtocolError(f"token {token!r} must be 1-{TOKEN_BYTES} ASCII characters")
    return raw


def _pad(levels: tuple[Level, ...], count: int, side: str) -> list[Level]:
    if len(levels) > count:
        raise ProtocolError(f"{len(levels)} {side} levels, the packet holds at most {count}")
    return list(levels) + [Level(0.0, 0, 0)] * (count - len(levels))


def encode(tick: Tick) -> bytes:
    """Encode a Tick as the exchange would send it (simulator and tests)."""
    try:
        return _encode(tick)
    except (struct.error, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot encode {tick.token} mode {tick.mode}: {exc}") from exc


def _encode(tick: Tick) -> bytes:
    tok = _token_bytes(tick.token)
    mode = tick.mode
    d = _DIVISOR.get(tick.exchange_type, 100.0)
    head = (mode, tick.exchange_type, tok, tick.sequence, tick.exchange_ts_ms, _paise(tick.ltp, d))
    if mode == Mode.LTP:
        return LTP_S.pack(*head)
    quote = (
        tick.ltq, _paise(tick.avg_price, d), tick.volume,
        float(tick.total_buy_qty), float(tick.total_sell_qty),
        _paise(tick.open, d), _paise(tick.high, d), _paise(tick.low, d), _paise(tick.prev_close, d),
    )  # fmt: skip
    if mode == Mode.QUOTE:
        return QUOTE_S.pack(*head, *quote)
    if mode == Mode.SNAP_QUOTE:
        book: list[int] = []
        for flag, levels in ((_BID_FLAG, tick.bids), (0, tick.asks)):
            for lvl in _pad(levels, BEST5_LEVELS, "bid" if flag else "ask"):
                book += (flag, lvl.qty, _paise(lvl.price, d), lvl.orders)
        return SNAP_S.pack(
            *head, *quote,
            tick.last_traded_ts_s, tick.open_interest, float(tick.oi_change_pct),
            *book,
            _paise(tick.upper_circuit, d), _paise(tick.lower_circuit, d),
            _paise(tick.week52_high, d), _paise(tick.week52_low, d),
        )  # fmt: skip
    if mode == Mode.DEPTH:
        depth: list[int] = []
        for levels, side in ((tick.bids, "bid"), (tick.asks, "ask")):
            for lvl in _pad(levels, DEPTH_LEVELS, side):
                depth += (lvl.qty, _paise(lvl.price), lvl.orders)
        return DEPTH_S.pack(
            mode, tick.exchange_type, tok, tick.exchange_ts_ms, tick.packet_received_ms, *depth
        )
    raise ProtocolError(f"cannot encode mode {mode} (expected 1, 2, 3 or 4)")
