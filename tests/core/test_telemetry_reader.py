"""The one telemetry reader: every topic's messages through the black-box writer and back,
a torn tail, CRC and framing damage, and views checked against their contracts.

The reference for what a session holds is a plain re-reading of the segment format written
here (magic, then ``<II`` length/CRC32 records), not the library's reader.
"""

from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.contracts import (
    AlertRecord,
    ControlEvent,
    Decision,
    ExecutionReport,
    FeedEvent,
    Health,
    Reconciliation,
    SessionInfo,
    TickRecord,
)
from chimera_core.errors import ProtocolError
from chimera_core.telemetry import (
    MAGIC,
    TOPIC_ALERT,
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_RAW,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_TICK,
    Message,
    ReadReport,
    SegmentWriter,
    TickView,
    TopicDecoder,
    ViewMismatch,
    check_view,
    decoder_for,
    encode_message,
    parse,
    read_session,
    segments,
    split,
)

# msgpack holds 64-bit integers; the contracts' other bounds do not matter to a codec.
_ints = st.integers(-(2**63), 2**63 - 1)
st.register_type_strategy(int, _ints)


def _tick(decided: bool) -> st.SearchStrategy[tuple[bytes, Any]]:
    frames = st.binary(max_size=200)
    if not decided:
        rec = st.builds(TickRecord, recv_ns=_ints, frame=frames, decision=st.none())
        return st.tuples(st.just(TOPIC_RAW), rec)
    # Tokens are exchange tokens (digits): a topic never holds NUL.
    decisions = st.builds(
        msgspec.structs.replace, st.from_type(Decision), token=st.text("0123456789", min_size=1)
    )
    rec = st.builds(TickRecord, recv_ns=_ints, frame=frames, decision=decisions)
    return rec.map(lambda r: (TOPIC_TICK + r.decision.token.encode(), r))


_topic_and_payload = st.one_of(
    _tick(decided=True),
    _tick(decided=False),
    st.tuples(st.just(TOPIC_FEED), st.from_type(FeedEvent)),
    st.tuples(st.just(TOPIC_CONTROL), st.from_type(ControlEvent)),
    # Health's default_factory field needs an explicit strategy.
    st.tuples(st.just(TOPIC_HEALTH), st.builds(Health, unprotected=st.lists(st.text(max_size=8)))),
    st.tuples(st.just(TOPIC_SESSION), st.from_type(SessionInfo)),
    st.tuples(st.just(TOPIC_EXEC), st.from_type(ExecutionReport)),
    st.tuples(st.just(TOPIC_RECON), st.from_type(Reconciliation)),
    st.tuples(st.just(TOPIC_ALERT), st.from_type(AlertRecord)),
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def _reference_bodies(session: Path) -> list[bytes]:
    """Record bodies of intact segments, read by hand from the format's definition."""
    out = []
    for seg in sorted(session.glob("seg-*.chbb")):
        data = seg.read_bytes()
        assert data[:8] == b"CHBBOX1\n"
        pos = 8
        while pos < len(data):
            length, crc = struct.unpack_from("<II", data, pos)
            body = data[pos + 8 : pos + 8 + length]
            assert zlib.crc32(body) == crc
            out.append(body)
            pos += 8 + length
    return out


def _write(session: Path, raws: list[bytes], max_segment_bytes: int = 64 << 20) -> None:
    writer = SegmentWriter(session, max_segment_bytes=max_segment_bytes)
    for raw in raws:
        writer.write(raw)
    writer.close()


def _plain_header(raw: bytes) -> tuple[bytes, int, bytes]:
    """topic NUL seq payload, cut apart without the library."""
    topic, _, rest = raw.partition(b"\x00")
    return topic, int.from_bytes(rest[:8], "little"), rest[8:]


@SETTINGS
@given(
    items=st.lists(_topic_and_payload, min_size=1, max_size=25),
    first_seq=st.integers(1, 2**40),
    segment_bytes=st.sampled_from([400, 4_000, 64 << 20]),
)
def test_every_topic_round_trips_through_the_black_box(
    items: list[tuple[bytes, Any]], first_seq: int, segment_bytes: int
) -> None:
    raws = [encode_message(t, first_seq + i, obj) for i, (t, obj) in enumerate(items)]
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "s"
        _write(session, raws, segment_bytes)
        assert _reference_bodies(session) == raws
        report = ReadReport()
        got = list(read_session(session, report))
    assert report.ok and not report.torn and report.malformed == 0
    assert report.records == len(raws)
    decoder = TopicDecoder()
    for (topic, obj), raw, msg in zip(items, raws, got, strict=True):
        ref_topic, ref_seq, ref_payload = _plain_header(raw)
        assert (msg.topic, msg.seq, msg.payload) == (ref_topic, ref_seq, ref_payload) == (
            topic, msg.seq, ref_payload)  # fmt: skip
        assert msg.raw == raw and parse(raw) == msg and split(raw) == (topic, msg.seq, msg.payload)
        # NaN != NaN, so the decoded payload is compared as the bytes it encodes to.
        expected = msgspec.msgpack.encode(obj)
        assert msgspec.msgpack.encode(msg.decode()) == expected
        assert msgspec.msgpack.encode(decoder.decode(msg)) == expected
        assert msg.carries_frame == isinstance(obj, TickRecord)


@SETTINGS
@given(items=st.lists(_tick(decided=True), min_size=1, max_size=10))
def test_the_tick_view_reads_what_the_full_record_holds_without_the_frame(
    items: list[tuple[bytes, TickRecord]],
) -> None:
    view = decoder_for(TOPIC_TICK, TickView)
    full = decoder_for(TOPIC_TICK)
    for topic, rec in items:
        msg = parse(encode_message(topic, 1, rec))
        a, b = view(msg.payload), full(msg.payload)
        assert a.recv_ns == b.recv_ns == rec.recv_ns
        assert bytes(a.frame) == msgspec.msgpack.encode(rec.frame)  # skipped, not decoded
        assert msgspec.msgpack.encode(a.decision) == msgspec.msgpack.encode(b.decision)


def _messages(n: int) -> list[bytes]:
    return [
        encode_message(TOPIC_FEED if i % 3 else TOPIC_HEALTH, i + 1,
                       FeedEvent(bool(i % 2), i, i * 7) if i % 3 else
                       Health(i, {"ticks": i}, True, 1, False, i, 0, False, {}))
        for i in range(n)
    ]  # fmt: skip


def _record_spans(raws: list[bytes]) -> list[tuple[int, int]]:
    """(start, end) byte offsets of each record in a single segment."""
    spans, pos = [], len(MAGIC)
    for raw in raws:
        spans.append((pos, pos + 8 + len(raw)))
        pos += 8 + len(raw)
    return spans


@SETTINGS
@given(n=st.integers(1, 30), data=st.data())
def test_a_torn_tail_loses_only_the_record_it_cuts(n: int, data: st.DataObject) -> None:
    raws = _messages(n)
    spans = _record_spans(raws)
    cut = data.draw(st.integers(len(MAGIC), spans[-1][1]), label="cut")
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "s"
        _write(session, raws)
        (seg,) = segments(session)
        with open(seg, "r+b") as fh:
            fh.truncate(cut)
        report = ReadReport()
        got = [m.raw for m in read_session(session, report)]
    whole = [raw for raw, (_, end) in zip(raws, spans, strict=True) if end <= cut]
    assert got == whole
    assert not report.crc_errors and not report.damage
    at_boundary = cut == len(MAGIC) or any(end == cut for _, end in spans)
    assert bool(report.torn) == (not at_boundary)
    if not at_boundary:
        assert report.torn == [f"{seg.name}@{spans[len(whole)][0]}"]


@SETTINGS
@given(n=st.integers(3, 30), data=st.data())
def test_one_flipped_bit_loses_exactly_its_record_and_reading_resyncs(
    n: int, data: st.DataObject
) -> None:
    raws = _messages(n)
    spans = _record_spans(raws)
    k = data.draw(st.integers(0, n - 2), label="record")  # not the last: that one is a tail
    start, end = spans[k]
    at = data.draw(st.integers(start, end - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    with tempfile.TemporaryDirectory() as tmp:
        session = Path(tmp) / "s"
        _write(session, raws)
        (seg,) = segments(session)
        raw = bytearray(seg.read_bytes())
        raw[at] ^= 1 << bit
        seg.write_bytes(bytes(raw))
        report = ReadReport()
        got = [m.raw for m in read_session(session, report)]
    assert got == raws[:k] + raws[k + 1 :]
    assert not report.ok
    if at >= start + 8:  # the body: its length still frames the next record
        assert report.crc_errors == [f"{seg.name}@{start}"] and not report.damage
    else:
        assert report.damage or report.crc_errors


def test_records_without_a_header_are_counted_and_skipped(tmp_path: Path) -> None:
    first = encode_message(TOPIC_FEED, 1, FeedEvent(True, 1, 2))
    last = encode_message(TOPIC_FEED, 2, FeedEvent(False, 1, 3))
    _write(tmp_path / "s", [first, b"no-separator-in-this-body", last])
    report = ReadReport()
    got = list(read_session(tmp_path / "s", report))
    assert [m.seq for m in got] == [1, 2] and report.malformed == 1 and report.records == 3


def test_unknown_topics_and_bad_payloads_are_protocol_errors_that_name_them() -> None:
    with pytest.raises(ProtocolError, match="no topic/sequence header"):
        parse(b"feed")
    odd = parse(encode_message(b"weather", 1, {"rain": 1}))
    with pytest.raises(ProtocolError, match=r"unknown telemetry topic b'weather'.*known"):
        TopicDecoder().decode(odd)
    with pytest.raises(ProtocolError, match=r"unknown telemetry topic b'weather'"):
        odd.decode()
    bad = parse(encode_message(TOPIC_EXEC, 1, {"kind": 3}))
    with pytest.raises(ProtocolError, match=r"bad exec payload \(ExecutionReport\)"):
        bad.decode()
    with pytest.raises(ProtocolError, match="unknown telemetry topic kinds"):
        TopicDecoder({b"weather": TickView})


class _Skips(msgspec.Struct, array_like=True):
    recv_ns: int
    decision: Decision | None  # position 1 is the frame in a TickRecord


class _NotArray(msgspec.Struct):
    recv_ns: int


class _Typo(msgspec.Struct):
    tokn: str


class _NestedTypo(msgspec.Struct, array_like=True):
    recv_ns: int
    frame: msgspec.Raw
    decision: _Typo | None


class _Fine(msgspec.Struct):
    token: str
    confidence: float


class _NestedFine(msgspec.Struct, array_like=True):
    recv_ns: int
    frame: msgspec.Raw
    decision: _Fine | None


def test_a_view_that_does_not_fit_its_contract_is_refused_by_name() -> None:
    with pytest.raises(ViewMismatch, match=r"_Skips.decision is at position 1.*'frame'"):
        decoder_for(TOPIC_TICK, _Skips)
    with pytest.raises(ViewMismatch, match="must be array_like, as TickRecord is"):
        decoder_for(TOPIC_RAW, _NotArray)
    with pytest.raises(ViewMismatch, match=r"TickRecord.decision: _Typo.tokn is not a field"):
        decoder_for(TOPIC_TICK, _NestedTypo)
    with pytest.raises(ViewMismatch, match="must not be array_like"):
        check_view(Decision, _Skips)
    dec = decoder_for(TOPIC_TICK, _NestedFine)  # a fitting nested view decodes
    assert dec is decoder_for(b"tick.2885", _NestedFine)  # one decoder per kind and view
    msg = Message(
        b"tick.1", 1, msgspec.msgpack.encode([5, b"f", {"token": "1", "confidence": 0.5}])
    )
    assert dec(msg.payload) == _NestedFine(5, msgspec.Raw(b"\xc4\x01f"), _Fine("1", 0.5))
