"""Verification of damaged black-box sessions: ``chimera record --verify`` and
``chimera replay --verify`` over sessions written by the real recorder process, then
damaged the way disks and crashes damage files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.config import parse_config
from chimera_core.contracts import Mode
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import (
    MAGIC,
    RECORD,
    TOPIC_SESSION,
    TelemetryPublisher,
    check_session,
    segment_name,
    segments,
)
from chimera_governance.pipeline import GovernancePipeline
from tools.replay import main as replay_main
from tools.sim.market import Market

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
TICKS = 2500
CONFIG = '[feed]\ntokens = ["2885", "1594", "3045"]\n[logging]\ndecisions = "none"\n'


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _wait(cond: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _manifest(session: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((session / "manifest.json").read_bytes()))
    except (FileNotFoundError, ValueError):
        return {}


def _record(root: Path, crash: bool) -> Path:
    """One engine session through the real recorder process; SIGINT, or SIGKILL (crash)."""
    conf = root / "rec.toml"
    conf.write_text("[recorder]\nfsync_interval_s = 0.05\n", encoding="utf-8")
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    cmd = [sys.executable, "-m", "tools.record", "--config", str(conf), "--data-dir"]
    cmd += [str(root / "data"), "--endpoint", pub.endpoint, "--segment-bytes", "150000"]
    log = open(root / "recorder.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=log)
    log.close()
    try:

        def subscribed() -> bool:
            pub.drain_subscriptions()
            return pub.subscriptions > 0

        _wait(subscribed, what="recorder subscription")
        cfg = parse_config(CONFIG)
        # As `chimera live` builds it, so that the replay reproduces every decision.
        engine = Engine(cfg, governance=GovernancePipeline(cfg, root / "governance"))
        market = Market(seed=11)
        info = session_info(cfg)
        pub.publish(TOPIC_SESSION, info)
        recv_ns = 1_000_000_000
        for i in range(TICKS):
            recv_ns += 50_000
            frame = encode(market.next_tick(Mode.QUOTE))
            pub.tick(frame, recv_ns, engine.on_frame(frame, recv_ns))
            if i % 500 == 499:
                time.sleep(0.01)
        assert pub.dropped == 0
        session = root / "data" / "blackbox" / info.session_id
        total = TICKS + 1
        if crash:  # killed once the manifest counts everything: no clean close
            _wait(lambda: _manifest(session).get("records") == total, what="manifest")
            proc.kill()
            proc.wait()
        else:
            _wait(lambda: _manifest(session).get("records") == total, what="all records")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
        assert _manifest(session)["complete"] is (not crash)
        assert len(segments(session)) >= 3
        return session
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        pub.close()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    clean = _record(tmp_path_factory.mktemp("clean"), crash=False)
    crashed = _record(tmp_path_factory.mktemp("crashed"), crash=True)
    return {"clean": clean, "crashed": crashed}


@pytest.fixture
def copy(sessions: dict[str, Path], tmp_path: Path) -> Callable[[str], Path]:
    copies = iter(range(1_000))

    def make(kind: str) -> Path:
        target = tmp_path / f"{kind}-{next(copies)}" / sessions[kind].name
        shutil.copytree(sessions[kind], target)
        return target

    return make


def _record_verify(session: Path) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "tools.record", "--verify", str(session)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stderr + out.stdout  # the verdict is the last line


def _replay_verify(session: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = replay_main([str(session), "--verify", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _offsets(seg: Path) -> list[int]:
    """Byte offset of every record header in an intact segment."""
    data = seg.read_bytes()
    pos, out = len(MAGIC), []
    while pos < len(data):
        out.append(pos)
        pos += RECORD.size + RECORD.unpack_from(data, pos)[0]
    return out


def _records(session: Path) -> int:
    return int(_manifest(session)["records"])


def test_intact_sessions_pass_both_verifiers(sessions: dict[str, Path], capsys: Any) -> None:
    code, out = _record_verify(sessions["clean"])
    assert code == 0 and out.rstrip().endswith("OK"), out
    assert f"records {TICKS + 1} of {TICKS + 1} written" in out
    code, out = _replay_verify(sessions["clean"], capsys)
    assert code == 0 and "VERIFY OK" in out, out


def test_bit_flip_in_a_mid_file_length_prefix_fails_with_the_count_lost(
    copy: Callable[[str], Path], capsys: Any
) -> None:
    session = copy("clean")
    seg = segments(session)[0]
    at = _offsets(seg)[len(_offsets(seg)) // 2]
    raw = bytearray(seg.read_bytes())
    raw[at + 2] ^= 0x40  # the length now claims megabytes: it once read as a torn tail
    seg.write_bytes(bytes(raw))

    code, out = _record_verify(session)
    assert code == 1, out
    assert f"damage: {seg.name}@{at}: broken record framing" in out
    assert f"1 record(s) lost: the manifest says {_records(session)} were written" in out
    assert "FAILED: 1 record(s) lost" in out
    code, out = _replay_verify(session, capsys)
    assert code == 1, out
    assert "VERIFY FAILED: the recording is damaged" in out and "1 record(s) lost" in out


@pytest.mark.parametrize("which", ["last", "middle"])
def test_truncation_to_half_fails_with_the_count_lost(
    copy: Callable[[str], Path], capsys: Any, which: str
) -> None:
    session = copy("clean")
    segs = segments(session)
    seg = segs[-1] if which == "last" else segs[1]
    size = seg.stat().st_size
    offsets = _offsets(seg)
    expected_lost = sum(1 for o in offsets if o + RECORD.size > size // 2)
    expected_lost += sum(  # the record the cut runs through
        1
        for o, nxt in zip(offsets, [*offsets[1:], size], strict=True)
        if o + RECORD.size <= size // 2 < nxt
    )
    with open(seg, "r+b") as fh:
        fh.truncate(size // 2)

    code, out = _record_verify(session)
    assert code == 1, out
    assert f"{expected_lost} record(s) lost" in out
    if which == "last":
        assert "but the recorder stopped this session cleanly" in out
    else:
        assert "which is not the end of the last segment" in out
    code, out = _replay_verify(session, capsys)
    assert code == 1, out
    assert f"{expected_lost} record(s) lost" in out


def test_zero_filled_tail_is_damage_not_empty_records(
    copy: Callable[[str], Path], capsys: Any
) -> None:
    session = copy("clean")
    seg = segments(session)[-1]
    size = seg.stat().st_size
    offsets = _offsets(seg)
    cut = offsets[-3]  # the last three records become zeros, and 4 KiB more past the end
    with open(seg, "r+b") as fh:
        fh.seek(cut)
        fh.write(b"\0" * (size - cut + 4096))

    code, out = _record_verify(session)
    assert code == 1, out
    assert f"damage: {seg.name}@{cut}: zero-filled tail" in out
    assert "3 record(s) lost" in out
    assert "malformed" not in out  # zeros are not read as (empty) records
    code, out = _replay_verify(session, capsys)
    assert code == 1 and "zero-filled tail" in out, out

    appended = copy("clean")  # zeros after an intact end: nothing lost, still damage
    with open(segments(appended)[-1], "ab") as fh:
        fh.write(b"\0" * 512)
    code, out = _record_verify(appended)
    assert code == 1 and "zero-filled tail (512 bytes" in out, out
    assert "record(s) lost" not in out


def test_missing_magic_header_is_a_clean_error(copy: Callable[[str], Path], capsys: Any) -> None:
    session = copy("clean")
    seg = segments(session)[1]
    seg.write_bytes(seg.read_bytes()[len(MAGIC) :])  # the header is gone, records remain

    code, out = _record_verify(session)
    assert code == 1, out
    assert f"{seg.name}: no b'CHBBOX1\\n' magic header" in out
    assert "records resume at @0" in out and "record(s) lost" not in out
    code, out = _replay_verify(session, capsys)
    assert code == 1 and "magic header" in out, out

    foreign = copy("clean")
    segments(foreign)[0].write_text("not a segment at all\n" * 100)
    code, out = _record_verify(foreign)
    assert code == 1 and "no readable record in it" in out and "record(s) lost" in out, out


def test_torn_tail_after_an_unclean_stop_passes_with_a_note(
    copy: Callable[[str], Path], capsys: Any
) -> None:
    session = copy("crashed")
    seg = segments(session)[-1]
    data = seg.read_bytes()
    last = _offsets(seg)[-1]
    with open(seg, "ab") as fh:  # a crash mid-write: a header and part of its body
        fh.write(data[last : last + RECORD.size + 40])

    code, out = _record_verify(session)
    assert code == 0, out
    assert f"WARNING torn tail at {seg.name}@{len(data)}" in out
    assert "did not stop cleanly" in out and out.rstrip().endswith("OK")
    code, out = _replay_verify(session, capsys)
    assert code == 0, out
    assert "torn tail" in out and "VERIFY OK" in out

    # Killed after opening the next segment, before its header reached the disk.
    for left in (b"", MAGIC[:3]):
        crashed = copy("crashed")
        last_index = int(segments(crashed)[-1].stem.split("-")[1])
        empty = crashed / segment_name(last_index + 1)
        empty.write_bytes(left)
        code, out = _record_verify(crashed)
        assert code == 0 and f"torn tail at {empty.name}@{len(left)}" in out, out

    # The same cut on a segment that is not the last is damage even after a crash.
    inner = copy("crashed")
    seg = segments(inner)[0]
    with open(seg, "r+b") as fh:
        fh.truncate(seg.stat().st_size - 5)
    code, out = _record_verify(inner)
    assert code == 1 and "not the end of the last segment" in out, out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_bit_flip_or_truncation_fails_with_the_exact_loss(
    sessions: dict[str, Path], tmp_path: Path, data: st.DataObject
) -> None:
    session = tmp_path / f"h{time.monotonic_ns()}"
    shutil.copytree(sessions["clean"], session)
    segs = segments(session)
    seg = segs[data.draw(st.integers(0, len(segs) - 1), label="segment")]
    raw = bytearray(seg.read_bytes())
    if data.draw(st.booleans(), label="flip"):
        at = data.draw(st.integers(0, len(raw) - 1), label="byte")
        raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    else:
        del raw[data.draw(st.integers(0, len(raw) - 1), label="cut") :]
    seg.write_bytes(bytes(raw))

    check = check_session(session)
    assert check.errors, "damage passed verification"
    assert check.lost == _records(session) - check.report.records
    assert not check.steps_back  # whatever was read is in order, nothing foreign
