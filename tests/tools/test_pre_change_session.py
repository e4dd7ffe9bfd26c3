"""A session recorded before the telemetry reader moved into ``chimera_core.telemetry``
(main at 717e353, format code in ``tools/blackbox.py``; see
``tests/data/make_pre_telreader_session.py``) still reads, checks and replays bit-exactly:
the move changed no byte of the format."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from chimera_core.telemetry import TOPIC_TICK, check_session, read_session
from cortex.sources import load_session
from tools.backtest.data import load_ticks
from tools.replay import main as replay_main
from tools.replay import replay_session

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
ARCHIVE = REPO / "tests" / "data" / "pre_telreader_session.tar.xz"


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pre-change")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    (found,) = root.iterdir()
    return found


def _manifest(session: Path) -> dict[str, Any]:
    return dict(json.loads((session / "manifest.json").read_bytes()))


def test_it_checks_clean_against_its_manifest(session: Path) -> None:
    manifest = _manifest(session)
    assert manifest["code_version"].endswith("+717e353") and manifest["complete"] is True
    check = check_session(session, keep_messages=True)
    assert check.ok and not check.notes, (check.errors, check.notes)
    assert check.report.records == manifest["records"] == len(check.messages)
    assert check.counts == manifest["counts"]
    assert (check.first_seq, check.last_seq) == (1, manifest["last_seq"])
    assert [m.seq for m in read_session(session)] == list(range(1, manifest["records"] + 1))


def test_replay_verifies_every_decision(session: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay_main([str(session), "--verify", "--quiet"]) == 0
    assert "VERIFY OK: 3000 tick records compared" in capsys.readouterr().out
    result = replay_session(session, verify=True)
    assert result.verified and result.control_applied == 2 and result.feed_events == 3
    assert result.undecodable == 0


def test_record_verify_passes(session: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tools.record", "--verify", str(session)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.rstrip().endswith("OK"), out.stdout + out.stderr


def test_the_other_readers_see_the_same_session(session: Path) -> None:
    ticks = [m for m in read_session(session) if m.topic.startswith(TOPIC_TICK)]
    page = load_session(session)  # the cortex's replay page
    assert page["records"] == _manifest(session)["records"]
    moved = [d for d in (m.decode().decision for m in ticks) if d.transitions or d.intent]
    assert moved and [d.seq for d in page["decisions"]] == [d.seq for d in moved]
    source = load_ticks(session)  # the backtester's tick source
    assert source.kind == "blackbox" and source.frames == 3000 and source.skipped == 0
