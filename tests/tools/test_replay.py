"""``chimera replay`` over real black-box sessions written the way the live process does."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest
from websockets.asyncio.client import connect

from chimera_core.config import parse_config
from chimera_core.contracts import (
    ControlEvent,
    Decision,
    FeedEvent,
    Health,
    Mode,
    TickRecord,
)
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import PACKET_SIZE, encode
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_SESSION,
    SegmentWriter,
    encode_message,
    tick_topic,
)
from chimera_governance.pipeline import GovernancePipeline
from tools.replay import EXPORT_COLUMNS, main, replay_session, serve_session
from tools.sim.market import Market

pytestmark = pytest.mark.timeout(60)

FAST = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
cooldown_s = 30.0
execute_timeout_s = 10.0
[logging]
decisions = "none"
"""
NS_PER_TICK = 50_000
HEADERS = {
    "Authorization": "Bearer FAKE.JWT",
    "x-api-key": "fake_api_key",
    "x-client-code": "A1234567",
    "x-feed-token": "fake_feed_token",
}


def record_session(
    session_dir: Path, n: int = 20_000, seed: int = 3, tamper: int | None = None
) -> dict[str, object]:
    """Run a real Engine over simulator frames and record every message it would publish.

    Includes a reconnect, malformed and duplicate frames, a halt and a resume. The live
    wall clock stamps ``decided_ns`` (replay must ignore it). ``tamper``: the n-th
    decision that carries an intent is written with a different confidence.
    """
    cfg = parse_config(FAST)
    # As `chimera live` runs it: with the governance pipeline on its own fresh state.
    governance = GovernancePipeline(cfg, Path(tempfile.mkdtemp(prefix="gov-")))
    engine = Engine(cfg, clock=time.monotonic_ns, governance=governance)
    writer = SegmentWriter(session_dir, max_segment_bytes=2 << 20)  # several segments
    seq = 0
    info: dict[str, object] = {"fires": 0, "intents": 0, "dropped": 0, "tampered_seq": None}

    def publish(topic: bytes, obj: object) -> int:
        nonlocal seq
        seq += 1
        writer.write(encode_message(topic, seq, obj))
        return seq

    def tick(frame: bytes, recv_ns: int) -> None:
        d = engine.on_frame(frame, recv_ns)
        if d is None:
            info["dropped"] = int(info["dropped"]) + 1  # type: ignore[call-overload]
        else:
            if any(t.event == "FIRE" for t in d.transitions):
                info["fires"] = int(info["fires"]) + 1  # type: ignore[call-overload]
            if d.intent is not None:
                if tamper is not None and info["intents"] == tamper:
                    d = msgspec.structs.replace(d, confidence=d.confidence + 0.125)
                    info["tampered_seq"] = seq + 1
                info["intents"] = int(info["intents"]) + 1  # type: ignore[call-overload]
        publish(tick_topic(d), TickRecord(recv_ns, frame, d))

    def feed(connected: bool, recv_ns: int) -> None:
        engine.on_feed_state(connected)
        publish(TOPIC_FEED, FeedEvent(connected, engine.feed_epoch, recv_ns))

    def control(command: str, recv_ns: int) -> None:
        ok, result = engine.control(command, "test")
        publish(TOPIC_CONTROL, ControlEvent(command, "test", ok, json.dumps(result), recv_ns))

    publish(TOPIC_SESSION, session_info(cfg))
    market = Market(seed=seed)
    recv_ns = 1_000_000_000
    feed(True, recv_ns)
    previous = b""
    for i in range(n):
        recv_ns += NS_PER_TICK
        frame = encode(market.next_tick(Mode.QUOTE))
        if i == n // 2:  # a reconnect mid-session: the epoch moves, signals re-confirm
            feed(False, recv_ns)
            feed(True, recv_ns)
        if i == n // 3:
            control("halt", recv_ns)
        if i == n // 3 + 1500:
            control("resume", recv_ns)
        if i == n // 4:
            control("flatten", recv_ns)  # refused: ok=False, never re-applied
        if i % 997 == 5:
            tick(frame[:40], recv_ns)  # torn packet
            tick(b"\xff" * 7, recv_ns)  # noise
        tick(frame, recv_ns)
        if i % 613 == 7 and previous:
            tick(frame, recv_ns + 1)  # the exchange sent it twice
        if i % 5000 == 0:
            publish(TOPIC_HEALTH, Health(recv_ns, engine.stats.as_dict(), True, 1, False, 0, 0,
                                         engine.halted, {}))  # fmt: skip
        previous = frame
    writer.close()
    info["messages"] = seq
    info["stats"] = engine.stats.as_dict()
    return info


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    session_dir = tmp_path_factory.mktemp("blackbox") / "20250101T000000Z-abc123"
    return session_dir, record_session(session_dir)


def test_verify_reproduces_every_decision(recorded, capsys):
    session_dir, info = recorded
    # The session must exercise the strategy and the hygiene, or "identical" proves little.
    assert int(info["fires"]) >= 3 and int(info["intents"]) >= 3  # type: ignore[call-overload]
    stats = info["stats"]
    assert stats["malformed"] > 0 and stats["duplicates"] > 0  # type: ignore[index]
    assert len(list(session_dir.glob("seg-*.chbb"))) > 1

    assert main([str(session_dir), "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "VERIFY OK" in out and "(100%)" in out and "ticks/s" in out

    result = replay_session(session_dir, verify=True)
    assert result.mismatched == 0 and result.divergence is None
    assert result.compared == result.ticks == result.identical
    assert result.ticks - result.decisions == info["dropped"]
    assert result.feed_events == 3 and result.control_applied == 2  # flatten was refused
    assert result.engine_stats["intents"] == info["intents"]
    assert not result.incomplete


def test_session_by_name_under_data_dir(recorded, capsys):
    session_dir, _ = recorded
    data_dir = session_dir.parent.parent
    (data_dir / "blackbox").mkdir(exist_ok=True)
    link = data_dir / "blackbox" / "named"
    if not link.exists():
        link.symlink_to(session_dir)
    assert main(["named", "--data-dir", str(data_dir), "--quiet"]) == 0
    assert main(["nope", "--data-dir", str(data_dir), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_tampered_decision_fails_verify_with_its_seq_and_field(tmp_path, capsys):
    info = record_session(tmp_path / "s", n=6_000, tamper=1)
    tampered_seq = info["tampered_seq"]
    assert tampered_seq is not None
    assert main([str(tmp_path / "s"), "--verify", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert f"publisher seq {tampered_seq}," in out
    assert "confidence:" in out and "VERIFY FAILED: 1 of" in out
    differing = [line for line in out.splitlines() if line.startswith("! ")]
    assert [line.split()[1] for line in differing] == ["confidence"]


def test_manifest_gap_is_reported_and_divergence_free_run_still_passes(recorded, tmp_path, capsys):
    session_dir, _ = recorded
    copy = tmp_path / "with-gap"
    copy.mkdir()
    for seg in session_dir.glob("seg-*.chbb"):
        (copy / seg.name).write_bytes(seg.read_bytes())
    cfg = msgspec.json.decode(msgspec.json.encode(parse_config(FAST)))
    manifest = {
        "session_id": "with-gap",
        "config_json": cfg,
        "gaps": [{"after_seq": 9, "missed": 2}],
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main([str(copy), "--verify", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "INCOMPLETE" in captured.err and "after seq 9: 2 missed" in captured.err
    assert "despite the gaps" in captured.out


def test_lost_tick_record_diverges(recorded, tmp_path, capsys):
    """A tick lost between publisher and recorder: replay cannot be exact, verify says so."""
    from chimera_core.telemetry import iter_session, split

    session_dir, _ = recorded
    writer = SegmentWriter(tmp_path / "lossy")
    for body in iter_session(session_dir):
        if split(body)[1] != 3000:
            writer.write(body)
    writer.close()
    assert main([str(tmp_path / "lossy"), "--verify", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "after seq 2999: 1 missed (segments)" in captured.err
    assert "publisher seq 3001," in captured.out and "seq:" in captured.out
    assert "session has gaps" in captured.out


def test_exports_are_deterministic_and_complete(recorded, tmp_path):
    session_dir, _ = recorded
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main([str(session_dir), "--export", "csv", "--out", str(a), "--quiet"]) == 0
    assert main([str(session_dir), "--export", "csv", "--out", str(b), "--quiet"]) == 0
    assert a.read_bytes() == b.read_bytes()
    lines = a.read_text().splitlines()
    assert lines[0].split(",") == list(EXPORT_COLUMNS)
    assert any("READY->EXECUTE:FIRE" in line for line in lines)

    pq_path = tmp_path / "d.parquet"
    assert main([str(session_dir), "--export", "parquet", "--out", str(pq_path), "--quiet"]) == 0
    table = pq.read_table(pq_path)
    assert table.column_names == list(EXPORT_COLUMNS)
    assert table.num_rows == len(lines) - 1
    assert table.column("intent_id").to_pylist().count("") < table.num_rows
    recorded_decided = table.column("decided_ns").to_pylist()
    assert all(v > 0 for v in recorded_decided)  # the recorded (live clock) stamps


async def test_speed_serves_the_session_frames_byte_for_byte(tmp_path):
    session_dir = tmp_path / "small"
    record_session(session_dir, n=400)
    wanted = ("2885", "3045")
    from tools.replay import session_frames

    quote = PACKET_SIZE[Mode.QUOTE]
    expected = [
        f
        for _, f in session_frames(session_dir)
        if len(f) == quote and f[0] == Mode.QUOTE and f[1] == 1
        and f[2:27].rstrip(b"\0").decode() in wanted
    ]  # fmt: skip
    assert len(expected) > 200
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_session(session_dir, 4.0, port=0, on_ready=lambda url, *_: ready.set_result(url))
    )
    url = await asyncio.wait_for(ready, 10)
    got: list[bytes] = []
    async with connect(url, additional_headers=HEADERS, compression=None) as ws:
        tokens = [{"exchangeType": 1, "tokens": list(wanted)}]
        request = {"action": 1, "params": {"mode": 2, "tokenList": tokens}}
        await ws.send(json.dumps(request))
        async with asyncio.timeout(15):
            while len(got) < len(expected):
                message = await ws.recv()
                if isinstance(message, bytes):
                    got.append(message)
    assert got == expected
    sent = await asyncio.wait_for(server, 15)
    assert sent == len(expected)


def _decisions(session_dir: Path) -> list[Decision]:
    return [d for d, _ in replay_session(session_dir, collect=True).rows]


def test_replay_is_deterministic_across_runs(recorded):
    session_dir, _ = recorded
    assert msgspec.msgpack.encode(_decisions(session_dir)) == msgspec.msgpack.encode(
        _decisions(session_dir)
    )
