"""A candidate's gate figures go on across the primary's sessions and the shadow's restarts:
a recorded session (tests/data, 3000 ticks) split in two engine sessions, the second run by
a new Shadow (a restarted process) that reads the first one's ``track.json``. The bars it
judged on are every bar of the recording, counted from the recorded decisions."""

from __future__ import annotations

import asyncio
import json
import tarfile
from pathlib import Path

import msgspec
import pytest

from chimera_core.config import Config
from chimera_core.contracts import SessionInfo
from chimera_core.telemetry import TOPIC_SESSION, TOPIC_TICK, decoder_for, read_session
from tools.shadow.candidates import resolve_all
from tools.shadow.runner import TRACK_FILE, Shadow, ShadowError, load_track

pytestmark = pytest.mark.timeout(120)
ARCHIVE = Path(__file__).resolve().parents[2] / "tests" / "data" / "pre_telreader_session.tar.xz"


def _bars(decisions: list[int]) -> list[int]:
    """Bar starts as they first appear, in order (a reference written apart from the code)."""
    out: list[int] = []
    for b in decisions:
        if not out or b > out[-1]:
            out.append(b)
    return out


def test_figures_survive_a_primary_restart_and_a_shadow_restart(tmp_path, monkeypatch):
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path / "rec", filter="data")
    (session,) = (tmp_path / "rec").iterdir()
    messages = [m.raw for m in read_session(session)]
    decode_info = decoder_for(TOPIC_SESSION, SessionInfo)
    info = decode_info(next(m for m in read_session(session) if m.topic == TOPIC_SESSION).payload)
    primary = msgspec.json.decode(info.config_json, type=Config)
    primary = msgspec.structs.replace(primary, data_dir=str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keen.toml").write_text("[genome]\nenergy_threshold = 0.02\n")
    candidates = resolve_all(["keen.toml"], primary)
    bars = _bars(
        [
            r.decision.bar_start_ms
            for m in read_session(session)
            if m.topic.startswith(TOPIC_TICK)
            and (r := decoder_for(TOPIC_TICK)(m.payload)).decision is not None
        ]
    )
    assert len(bars) > 10
    half = len(messages) // 2
    second = msgspec.structs.replace(info, session_id=info.session_id + "-2")
    restart = b"session\x00" + (10**9).to_bytes(8, "little") + msgspec.msgpack.encode(second)

    async def feed(shadow: Shadow, part: list[bytes]) -> None:
        for raw in part:
            await shadow.on_message(raw)
        shadow.check(0.0)
        await shadow.close()

    first = Shadow(primary, candidates)
    asyncio.run(feed(first, messages[:half]))
    saved = load_track(tmp_path / "data" / "shadow" / "keen" / TRACK_FILE)
    assert 0 < len(saved.bar_ts) < len(bars)
    again = Shadow(primary, resolve_all(["keen.toml"], primary))  # the shadow restarted
    asyncio.run(feed(again, [restart, *messages[half:]]))
    for name in ("active", "keen"):
        track = load_track(tmp_path / "data" / "shadow" / name / TRACK_FILE)
        assert track.bar_ts == bars, name
        assert len(track.equity) == len(bars)
    status = json.loads((tmp_path / "data" / "shadow" / "keen" / "status.json").read_text())
    assert status["gates"]["samples"] == len(bars)
    # Two sessions, one black box each.
    assert len(list((tmp_path / "data" / "shadow" / "keen" / "blackbox").iterdir())) == 2


def test_a_damaged_track_is_an_error_that_names_the_file(tmp_path):
    bad = tmp_path / TRACK_FILE
    bad.write_text('{"bar_ts": "yesterday"}')
    with pytest.raises(ShadowError, match=r"track\.json is unreadable"):
        load_track(bad)
