"""SmartAPI v2 codec: round trips, exact sizes, the reference bytes, and bad input."""

from __future__ import annotations

import string
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimera_core.contracts import ExchangeType, Level, Mode, Tick
from chimera_core.errors import ProtocolError
from chimera_core.feed.smartapi_v2 import PACKET_SIZE, decode, encode

INT64 = st.integers(-(2**63), 2**63 - 1)
NON_NEG64 = st.integers(0, 2**63 - 1)
# Prices travel as integer paise; rupees built as paise / 100 survive the round trip.
PRICE = st.integers(0, 10**11).map(lambda paise: paise / 100)
TOKEN = st.text(string.ascii_letters + string.digits, min_size=1, max_size=25)
EXCHANGE = st.sampled_from([int(e) for e in ExchangeType])
QTY_FLOAT = st.integers(0, 2**53).map(float)  # float64 fields that hold integers
OI_CHANGE = st.floats(allow_nan=False, allow_infinity=False)

BEST5_LEVEL = st.builds(
    Level, price=PRICE, qty=st.integers(1, 2**63 - 1), orders=st.integers(0, 2**15 - 1)
)
DEPTH_LEVEL = st.builds(
    Level,
    price=st.integers(0, 2**31 - 1).map(lambda paise: paise / 100),
    qty=st.integers(1, 2**31 - 1),
    orders=st.integers(0, 2**15 - 1),
)


def _header(mode: int) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "token": TOKEN,
            "exchange_type": EXCHANGE,
            "mode": st.just(mode),
            "sequence": INT64,
            "exchange_ts_ms": INT64,
            "ltp": PRICE,
            "recv_ns": NON_NEG64,
        }
    )


_QUOTE_FIELDS = {
    "ltq": INT64,
    "avg_price": PRICE,
    "volume": INT64,
    "total_buy_qty": QTY_FLOAT,
    "total_sell_qty": QTY_FLOAT,
    "open": PRICE,
    "high": PRICE,
    "low": PRICE,
    "prev_close": PRICE,
}
_SNAP_FIELDS = {
    "last_traded_ts_s": INT64,
    "open_interest": INT64,
    "oi_change_pct": OI_CHANGE,
    "upper_circuit": PRICE,
    "lower_circuit": PRICE,
    "week52_high": PRICE,
    "week52_low": PRICE,
    "bids": st.lists(BEST5_LEVEL, max_size=5).map(tuple),
    "asks": st.lists(BEST5_LEVEL, max_size=5).map(tuple),
}


def _tick(mode: int, **extra: st.SearchStrategy) -> st.SearchStrategy[Tick]:
    return st.tuples(_header(mode), st.fixed_dictionaries(extra)).map(
        lambda parts: Tick(**parts[0], **parts[1])
    )


LTP_TICKS = _tick(Mode.LTP)
QUOTE_TICKS = _tick(Mode.QUOTE, **_QUOTE_FIELDS)
SNAP_TICKS = _tick(Mode.SNAP_QUOTE, **_QUOTE_FIELDS, **_SNAP_FIELDS)
# DEPTH packets carry no sequence and no LTP: those stay at their defaults.
DEPTH_TICKS = st.builds(
    Tick,
    token=TOKEN,
    exchange_type=EXCHANGE,
    mode=st.just(int(Mode.DEPTH)),
    sequence=st.just(0),
    exchange_ts_ms=INT64,
    ltp=st.just(0.0),
    packet_received_ms=INT64,
    bids=st.lists(DEPTH_LEVEL, max_size=20).map(tuple),
    asks=st.lists(DEPTH_LEVEL, max_size=20).map(tuple),
    recv_ns=NON_NEG64,
)


@pytest.mark.parametrize(
    "ticks",
    [LTP_TICKS, QUOTE_TICKS, SNAP_TICKS, DEPTH_TICKS],
    ids=["ltp", "quote", "snap", "depth"],
)
def test_decode_inverts_encode_in_every_mode(ticks: st.SearchStrategy[Tick]) -> None:
    @given(ticks)
    def round_trip(tick: Tick) -> None:
        frame = encode(tick)
        assert len(frame) == PACKET_SIZE[Mode(tick.mode)]
        assert decode(frame, recv_ns=tick.recv_ns) == tick

    round_trip()


@pytest.mark.parametrize(
    ("mode", "size"),
    [(Mode.LTP, 51), (Mode.QUOTE, 123), (Mode.SNAP_QUOTE, 379), (Mode.DEPTH, 443)],
)
def test_packet_sizes_are_the_wire_sizes(mode: Mode, size: int) -> None:
    tick = Tick("2885", 1, int(mode), 1, 1_735_201_464_000, 0.0 if mode == Mode.DEPTH else 1.0)
    assert PACKET_SIZE[mode] == size
    assert len(encode(tick)) == size


# shared/reference/smartapi-v2-protocol.md §4.2, byte for byte.
REFERENCE_LTP = bytes.fromhex(
    "01 01 32 38 38 35 00 00 00 00 00 00 00 00 00 00"
    "00 00 00 00 00 00 00 00 00 00 00 7c c8 b8 00 00"
    "00 00 00 c0 1e 11 02 94 01 00 00 0f e9 02 00 00"
    "00 00 00"
)


def test_reference_ltp_packet_decodes_to_the_annotated_values() -> None:
    tick = decode(REFERENCE_LTP, recv_ns=5)
    assert tick == Tick(
        token="2885",
        exchange_type=ExchangeType.NSE_CM,
        mode=Mode.LTP,
        sequence=12_109_948,
        exchange_ts_ms=1_735_201_464_000,
        ltp=1907.35,
        recv_ns=5,
    )
    assert encode(tick) == REFERENCE_LTP


def test_snap_quote_best5_flags_mark_bids_1_and_asks_0_even_when_empty() -> None:
    # The SDK sorts best-5 records by flag, not position (reference §6.3).
    tick = Tick(
        "1594", 1, Mode.SNAP_QUOTE, 1, 1, 1907.35,
        bids=(Level(1907.0, 2, 1),), asks=(Level(1907.35, 43, 3), Level(1907.4, 1, 1)),
    )  # fmt: skip
    frame = encode(tick)
    flags = [struct.unpack_from("<h", frame, 147 + 20 * i)[0] for i in range(10)]
    assert flags == [1] * 5 + [0] * 5
    assert struct.unpack_from("<d", frame, 139)[0] == 0.0  # OI change is a float64


def test_depth_keeps_exchange_time_at_27_and_packet_time_at_35() -> None:
    tick = Tick(
        "2885", 1, Mode.DEPTH, 0, 1_000, 0.0, packet_received_ms=2_000,
        bids=(Level(2500.0, 100, 1),), asks=(Level(2500.05, 200, 2),),
    )  # fmt: skip
    frame = encode(tick)
    assert struct.unpack_from("<qq", frame, 27) == (1_000, 2_000)
    assert struct.unpack_from("<iih", frame, 43) == (100, 250_000, 1)
    assert struct.unpack_from("<iih", frame, 243) == (200, 250_005, 2)


def _valid(mode: Mode) -> bytes:
    ltp = 0.0 if mode == Mode.DEPTH else 1907.35
    return encode(Tick("2885", 1, int(mode), 7, 1_735_201_464_000, ltp))


@pytest.mark.parametrize("mode", list(Mode))
def test_wrong_length_is_a_protocol_error(mode: Mode) -> None:
    frame = _valid(mode)
    for bad in (frame[:-1], frame + b"\0", frame[:27], frame + frame):
        with pytest.raises(ProtocolError):
            decode(bad)


@pytest.mark.parametrize("mode_byte", [0, 5, 9, 255])
def test_unknown_mode_byte_is_a_protocol_error(mode_byte: int) -> None:
    with pytest.raises(ProtocolError, match="mode"):
        decode(bytes((mode_byte,)) + _valid(Mode.LTP)[1:])


@pytest.mark.parametrize("exchange_byte", [0, 6, 8, 12, 14, 99])
def test_unknown_exchange_type_is_a_protocol_error(exchange_byte: int) -> None:
    frame = _valid(Mode.QUOTE)
    with pytest.raises(ProtocolError, match="exchange type"):
        decode(frame[:1] + bytes((exchange_byte,)) + frame[2:])


@pytest.mark.parametrize("mode", list(Mode))
def test_empty_token_is_a_protocol_error(mode: Mode) -> None:
    frame = _valid(mode)
    with pytest.raises(ProtocolError, match="token"):
        decode(frame[:2] + b"\0" * 25 + frame[27:])


def test_empty_frame_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        decode(b"")


def _decode_or_protocol_error(frame: bytes) -> None:
    try:
        tick = decode(frame)
    except ProtocolError:
        return
    assert isinstance(tick, Tick)
    assert len(frame) == PACKET_SIZE[Mode(tick.mode)]


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_nothing_but_protocol_error(frame: bytes) -> None:
    _decode_or_protocol_error(frame)


# Random bodies of exactly the right size get past the length check into the parsers.
SIZED_GARBAGE = st.sampled_from(list(Mode)).flatmap(
    lambda mode: st.binary(min_size=PACKET_SIZE[mode], max_size=PACKET_SIZE[mode]).map(
        lambda body: bytes((mode,)) + body[1:]
    )
)


@given(SIZED_GARBAGE)
def test_right_sized_garbage_raises_nothing_but_protocol_error(frame: bytes) -> None:
    _decode_or_protocol_error(frame)


def test_currency_prices_are_in_ten_millionths_on_the_wire():
    """CDE_FO sends prices /10^7, every other segment in paise (SmartAPI WebSocket 2.0)."""
    import struct as _struct

    from chimera_core.contracts import Tick as _Tick

    usdinr = _Tick("1165", 13, 1, 7, 1_717_386_300_000, 83.4567125)
    frame = encode(usdinr)
    (raw,) = _struct.unpack_from("<q", frame, 43)
    assert raw == 834_567_125
    assert decode(frame).ltp == 83.4567125
    nse = _Tick("2885", 1, 1, 7, 1_717_386_300_000, 2950.05)
    (raw,) = _struct.unpack_from("<q", encode(nse), 43)
    assert raw == 295_005
