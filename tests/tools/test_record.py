"""The black-box recorder as a real process on real ZeroMQ sockets and real files."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from chimera_core.config import parse_config
from chimera_core.contracts import Health, Mode, SessionInfo, TickRecord
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import (
    TOPIC_HEALTH,
    TOPIC_SESSION,
    ReadReport,
    TelemetryPublisher,
    encode_message,
    iter_session,
    segments,
    tick_topic,
)
from tools.sim.market import Market

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _no_nan(name: str) -> Any:
    raise ValueError(f"JSON has {name}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_bytes(), parse_constant=_no_nan)


def _wait(cond: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or cond}")


def _health(n: int) -> Health:
    return Health(
        at_ns=n,
        engine={"frames": n},
        feed_connected=True,
        feed_connects=1,
        feed_stale=False,
        telemetry_sent=n,
        telemetry_dropped=0,
        halted=False,
        states={"IDLE": 3},
    )


def _session(session_id: str) -> SessionInfo:
    return SessionInfo(session_id, 1, "paper", b'{"mode":"paper"}', "ab" * 32, "test", "")


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    conf = tmp_path / "rec.toml"
    conf.write_text(
        "[recorder]\nfsync_interval_s = 0.05\nneural_state_interval_s = 0.02\n", encoding="utf-8"
    )

    def start(endpoint: str, *extra: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tools.record", "--config", str(conf)]
        cmd += ["--data-dir", str(tmp_path / "data"), "--endpoint", endpoint, *extra]
        err = open(tmp_path / f"recorder{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=err, stderr=err)
        err.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _verify(tmp_path: Path, session: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "tools.record", "--data-dir", str(tmp_path / "data")]
    return subprocess.run(
        [*cmd, "--verify", session], cwd=REPO, env=_env(), capture_output=True, text=True
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def _subscribed(pub: TelemetryPublisher) -> Callable[[], bool]:
    def check() -> bool:
        pub.drain_subscriptions()
        return pub.subscriptions > 0

    return check


def test_records_an_engine_session_byte_for_byte(tmp_path: Path, recorder: Any) -> None:
    cfg = parse_config('[feed]\ntokens = ["2885", "1594", "3045"]\n')
    engine = Engine(cfg)
    market = Market(seed=5)
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    proc = recorder(pub.endpoint, "--segment-bytes", "200000")
    _wait(_subscribed(pub), what="recorder subscription")

    data = tmp_path / "data"
    state_path = data / "neural_state.json"
    reads = {"ok": 0, "bad": 0}
    done = threading.Event()

    def reader() -> None:  # the cortex's view: must never see a partial file
        while not done.is_set():
            try:
                _read_json(state_path)
                reads["ok"] += 1
            except FileNotFoundError:
                pass
            except ValueError:
                reads["bad"] += 1

    watcher = threading.Thread(target=reader)
    watcher.start()

    sent: list[bytes] = []
    info = session_info(cfg)
    pub.publish(TOPIC_SESSION, info)
    sent.append(encode_message(TOPIC_SESSION, 1, info))
    last: dict[str, Any] = {}
    recv_ns = 1_000_000
    for i in range(4000):
        frame = encode(market.next_tick(Mode.QUOTE))
        if i % 500 == 7:
            frame = frame[:10]  # malformed: the engine drops it, telemetry sends it as raw
        recv_ns += 50_000
        decision = engine.on_frame(frame, recv_ns)
        pub.tick(frame, recv_ns, decision)
        sent.append(
            encode_message(
                tick_topic(decision), len(sent) + 1, TickRecord(recv_ns, frame, decision)
            )
        )
        if decision is not None:
            last[decision.token] = decision
        if i % 250 == 249:
            time.sleep(0.03)  # spread over time so neural_state.json is rewritten often
    pub.publish(TOPIC_HEALTH, _health(7))
    sent.append(encode_message(TOPIC_HEALTH, len(sent) + 1, _health(7)))
    assert pub.dropped == 0

    def caught_up() -> bool:
        try:
            state = _read_json(state_path)
        except (FileNotFoundError, ValueError):
            return False
        return state["health"] is not None and all(
            state["symbols"].get(t, {}).get("seq") == d.seq for t, d in last.items()
        )

    _wait(caught_up, what="neural_state to reach the last decision")
    _stop(proc)
    done.set()
    watcher.join()
    pub.close()

    session_dir = data / "blackbox" / info.session_id
    report = ReadReport()
    assert list(iter_session(session_dir, report)) == sent
    assert report.crc_errors == [] and report.torn == []
    assert len(segments(session_dir)) > 1  # rotated

    manifest = _read_json(session_dir / "manifest.json")
    assert manifest["complete"] is True
    assert manifest["session_id"] == info.session_id
    assert manifest["config_json"] == json.loads(info.config_json)
    assert manifest["config_sha256"] == info.config_sha256
    assert manifest["records"] == len(sent)
    assert manifest["segments"] == len(segments(session_dir))
    assert (manifest["first_seq"], manifest["last_seq"]) == (1, len(sent))
    assert manifest["gaps"] == []
    assert sum(manifest["counts"].values()) == len(sent)
    expected: dict[str, int] = {}
    for m in sent:
        topic = m[: m.index(b"\0")].decode()
        expected[topic] = expected.get(topic, 0) + 1
    assert manifest["counts"] == expected and expected["raw"] >= 8

    state = _read_json(state_path)
    assert state["session_id"] == info.session_id
    assert state["health"]["telemetry_sent"] == 7
    assert set(state["symbols"]) == set(cfg.feed.tokens)
    for token, d in last.items():
        s = state["symbols"][token]
        assert s["exchange_ts_ms"] == d.exchange_ts_ms
        assert s["price"] == d.physics.close
        assert s["state"] == d.state
        assert s["signal"]["direction"] == d.signal.direction
        assert s["physics"]["band"] == d.physics.band.value
        assert s["confidence"] == (None if math.isnan(d.confidence) else d.confidence)
    assert reads["bad"] == 0 and reads["ok"] > 10

    log = (tmp_path / "recorder0.log").read_text()
    assert "recorder_stopped" in log


def test_gaps_sessions_and_verify(tmp_path: Path, recorder: Any) -> None:
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    proc = recorder(f"tcp://127.0.0.1:{port}")
    assert pub.poll(10_000), "no subscription"
    assert pub.recv()[:1] == b"\x01"

    def msg(topic: bytes, seq: int, obj: Any) -> bytes:
        return encode_message(topic, seq, obj)

    # Before any SessionInfo (buffered, then filed under session A), a gap of 2 in A,
    # then the engine restarts as session B with its sequence starting again.
    a = [msg(TOPIC_HEALTH, 1, _health(1)), msg(TOPIC_HEALTH, 2, _health(2))]
    a += [msg(TOPIC_SESSION, 3, _session("sess-A")), msg(TOPIC_HEALTH, 4, _health(4))]
    a += [msg(TOPIC_HEALTH, 7, _health(7))]
    b = [msg(TOPIC_SESSION, 1, _session("sess-B")), msg(TOPIC_HEALTH, 2, _health(2))]
    for m in a + b:
        pub.send(m)
    data = tmp_path / "data"
    _wait(lambda: _state_session(data) == "sess-B", what="session B")
    _stop(proc)
    pub.close()

    dir_a, dir_b = data / "blackbox" / "sess-A", data / "blackbox" / "sess-B"
    assert list(iter_session(dir_a)) == a
    assert list(iter_session(dir_b)) == b
    man_a, man_b = _read_json(dir_a / "manifest.json"), _read_json(dir_b / "manifest.json")
    assert man_a["gaps"] == [{"after_seq": 4, "missed": 2}]
    assert man_a["complete"] is True and man_a["end_reason"] == "new_session"
    assert man_a["counts"] == {"health": 4, "session": 1}
    assert man_a["config_json"] == {"mode": "paper"}
    assert man_b["gaps"] == [] and man_b["complete"] is True and man_b["records"] == 2

    out = _verify(tmp_path, "sess-A")  # by name, under <data_dir>/blackbox
    assert out.returncode == 0, out.stdout + out.stderr
    assert "gap after seq 4: 2 missed" in out.stdout
    assert "records 5" in out.stdout


def _state_session(data: Path) -> str | None:
    try:
        return _read_json(data / "neural_state.json")["session_id"]
    except (FileNotFoundError, ValueError):
        return None


def test_messages_without_session_go_to_unknown(tmp_path: Path, recorder: Any) -> None:
    pub = TelemetryPublisher("tcp://127.0.0.1:*")
    proc = recorder(pub.endpoint, "--session-wait-s", "0.2")
    _wait(_subscribed(pub), what="recorder subscription")
    for n in range(3):
        pub.publish(TOPIC_HEALTH, _health(n))
    blackbox = tmp_path / "data" / "blackbox"
    _wait(lambda: list(blackbox.glob("unknown-*/manifest.json")), what="unknown session")
    _stop(proc)
    pub.close()
    (session_dir,) = blackbox.glob("unknown-*")
    manifest = _read_json(session_dir / "manifest.json")
    assert manifest["session_id"] is None and manifest["complete"] is True
    assert manifest["records"] == 3 and len(list(iter_session(session_dir))) == 3


def test_sigkill_torn_tail_and_crc_error(tmp_path: Path, recorder: Any) -> None:
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    proc = recorder(pub.endpoint, "--segment-bytes", "100000")
    _wait(_subscribed(pub), what="recorder subscription")
    sent = [encode_message(TOPIC_SESSION, 1, _session("crash"))]
    pub.publish(TOPIC_SESSION, _session("crash"))
    session_dir = tmp_path / "data" / "blackbox" / "crash"

    def on_disk() -> int:
        return sum(p.stat().st_size for p in segments(session_dir)) if session_dir.is_dir() else 0

    stop = threading.Event()

    def publish() -> None:
        n = 2
        while not stop.is_set() and n < 200_000:
            pub.publish(TOPIC_HEALTH, _health(n))
            sent.append(encode_message(TOPIC_HEALTH, n, _health(n)))
            n += 1
            if n % 100 == 0:
                time.sleep(0.001)

    writer = threading.Thread(target=publish)
    writer.start()
    try:
        _wait(lambda: on_disk() > 300_000, what="data on disk")
        proc.kill()  # mid-stream: no flush, no final manifest
        proc.wait()
    finally:
        stop.set()
        writer.join()
        pub.close()

    report = ReadReport()
    got = list(iter_session(session_dir, report))
    assert len(got) > 100 and got == sent[: len(got)]
    assert _read_json(session_dir / "manifest.json")["complete"] is False

    last = segments(session_dir)[-1]
    if last.stat().st_size <= 8:  # killed between opening a segment and writing to it
        out = _verify(tmp_path, str(session_dir))
        assert out.returncode == 0 and f"torn tail at {last.name}" in out.stdout, out.stdout
        last.unlink()
        last = segments(session_dir)[-1]
    with open(last, "r+b") as fh:  # a record cut short, as a crash mid-write leaves it
        fh.truncate(last.stat().st_size - 5)
    out = _verify(tmp_path, str(session_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torn tail at " + last.name in out.stdout
    report = ReadReport()
    again = list(iter_session(session_dir, report))
    assert again == sent[: len(again)] and len(again) >= len(got) - 1
    assert report.torn

    first = segments(session_dir)[0]
    raw = bytearray(first.read_bytes())
    raw[8 + 8 + 3] ^= 0xFF  # inside the first record's body (magic 8, header 8)
    first.write_bytes(bytes(raw))
    out = _verify(tmp_path, str(session_dir))
    assert out.returncode == 1
    assert f"crc mismatch at {first.name}@8" in out.stdout


def test_a_restarted_engine_lands_in_its_own_session_even_when_its_head_was_lost(
    tmp_path: Path, recorder: Any
) -> None:
    """The recorder outlives three engine runs on one endpoint. The second and third
    publish before the recorder has re-dialled (their first messages are lost, as with
    ``wait_for_subscriber_s = 0``) and name their session only later, as the health loop
    does: none of their messages may be filed in the session before."""
    from tests.loopback import free_port

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = recorder(endpoint)
    runs: list[tuple[str, list[bytes]]] = []

    def run(name: str, lost_head: int, before_info: int, after_info: int) -> None:
        pub = TelemetryPublisher(endpoint, hwm=1_000_000)
        sent: list[bytes] = []
        must = 0  # the last `must` messages of `sent` were published to an attached recorder

        def send(topic: bytes, obj: Any) -> None:
            pub.publish(topic, obj)
            sent.append(encode_message(topic, len(sent) + 1, obj))

        for n in range(lost_head):  # nobody attached yet (as a rule): ZeroMQ drops these
            send(TOPIC_HEALTH, _health(n))
        _wait(lambda: (pub.drain_subscriptions(), pub.recorders > 0)[1], what="recorder")
        head = len(sent)
        if not lost_head:
            send(TOPIC_SESSION, _session(name))
        for n in range(before_info):
            send(TOPIC_HEALTH, _health(n))
        if lost_head:
            send(TOPIC_SESSION, _session(name))
        for n in range(after_info):
            send(TOPIC_HEALTH, _health(n))
        must = len(sent) - head
        assert pub.dropped == 0
        pub.close()
        runs.append((name, sent, must))
        _wait(lambda: _state_session(tmp_path / "data") == name, what=f"session {name}")

    run("run-1", lost_head=0, before_info=0, after_info=200)
    run("run-2", lost_head=300, before_info=50, after_info=20)  # first seen seq 301 > 201
    run("run-3", lost_head=5, before_info=40, after_info=10)  # first seen seq 6 < 371
    time.sleep(0.3)
    _stop(proc)

    blackbox = tmp_path / "data" / "blackbox"
    assert sorted(p.name for p in blackbox.iterdir()) == ["run-1", "run-2", "run-3"]
    for name, sent, must in runs:
        got = list(iter_session(blackbox / name))
        # Exactly this run's messages from wherever the recorder caught it, to its end.
        assert len(got) >= must and got == sent[len(sent) - len(got) :], name
        manifest = _read_json(blackbox / name / "manifest.json")
        assert manifest["records"] == len(got) and manifest["seq_resets"] == 0
        assert manifest["complete"] is True
        out = _verify(tmp_path, name)
        assert out.returncode == 0, out.stdout + out.stderr
        missing = len(sent) - len(got)
        assert (f"first {missing} message(s) were not recorded" in out.stdout) == (missing > 0)
    assert _read_json(blackbox / "run-1" / "manifest.json")["end_reason"] == "engine_restarted"
    log = (tmp_path / "recorder0.log").read_text()
    assert '"engine_restarts": 2' in log


def test_a_sequence_break_inside_a_batch_asks_the_monitor_before_filing(tmp_path: Path) -> None:
    """The recorder reads a batch of messages without looking at its socket monitor. When a
    restarted engine's first messages arrive in the same batch as the old run's tail, the
    disconnect is already queued on the monitor: a break in the sequence must consult it
    rather than file the new run's messages (seq 301.. after 201, a plain gap) in the old
    session. The hook here stands where ``run`` puts the monitor's drain."""
    from tools.record import Recorder

    rec = Recorder(tmp_path / "data", 1 << 20, 60.0, 60.0, now=0.0)
    queued_disconnects = [1]  # the old connection's drop, not yet read

    def poll_disconnects() -> None:
        while queued_disconnects:
            queued_disconnects.pop()
            rec.on_publisher_disconnected()

    rec.poll_disconnects = poll_disconnects
    rec.on_message(encode_message(TOPIC_SESSION, 1, _session("run-1")), 0.0)
    for seq in range(2, 202):
        rec.on_message(encode_message(TOPIC_HEALTH, seq, _health(seq)), 0.0)
    for seq in range(301, 351):  # run-2's head before its SessionInfo
        rec.on_message(encode_message(TOPIC_HEALTH, seq, _health(seq)), 0.0)
    rec.on_message(encode_message(TOPIC_SESSION, 351, _session("run-2")), 0.0)
    for seq in range(352, 362):
        rec.on_message(encode_message(TOPIC_HEALTH, seq, _health(seq)), 0.0)
    rec.stop()

    blackbox = tmp_path / "data" / "blackbox"
    assert len(list(iter_session(blackbox / "run-1"))) == 201
    assert _read_json(blackbox / "run-1" / "manifest.json")["end_reason"] == "engine_restarted"
    assert rec.engine_restarts == 1 and not queued_disconnects
    # run-2's head waited for its SessionInfo and is filed with it.
    assert len(list(iter_session(blackbox / "run-2"))) == 50 + 1 + 10
