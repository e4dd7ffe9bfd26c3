"""Replay starts from the governance stores the session started with (its ``state`` record):
a session that began with a learned genome, a persisted halt or queued approvals replays as
it ran, and without that record it cannot."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.commands import Command
from chimera_core.config import parse_config
from chimera_core.contracts import ControlEvent, FeedEvent, GovernanceState, Mode, TickRecord
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.store import image_of, restore_image
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_FEED,
    TOPIC_SESSION,
    TOPIC_STATE,
    TOPIC_TICK,
    SegmentWriter,
    encode_message,
    read_session,
    tick_topic,
)
from chimera_governance.genome import DEFAULT_GENES, GenomeStore
from chimera_governance.pipeline import GovernancePipeline
from tools.replay import replay_session
from tools.sim.market import Market

pytestmark = pytest.mark.timeout(120)
CFG = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
cooldown_s = 30.0
[logging]
decisions = "none"
"""
LEARNED = {g.name: float(g.default) for g in DEFAULT_GENES} | {"band_k": 3.0}


def _record(
    session_dir: Path, state_dir: Path, with_state: bool, n: int = 6_000, rollback_at: int = -1
) -> None:
    """A session as `chimera live` writes it: session, state, then the ticks (and, at tick
    ``rollback_at``, an operator's genome rollback over the control path)."""
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, state_dir)
    engine = Engine(cfg, clock=time.monotonic_ns, governance=gov)
    writer = SegmentWriter(session_dir)
    seq = 0

    def publish(topic: bytes, obj: object) -> None:
        nonlocal seq
        seq += 1
        writer.write(encode_message(topic, seq, obj))

    publish(TOPIC_SESSION, session_info(cfg))
    if with_state:
        publish(TOPIC_STATE, GovernanceState(gov.snapshot()))
    engine.on_feed_state(True)
    publish(TOPIC_FEED, FeedEvent(True, engine.feed_epoch, 1))
    market = Market(seed=5)
    for i in range(n):
        recv = 1_000_000_000 + i * 50_000
        if i == rollback_at:
            ok, result = engine.control(Command.ROLLBACK, "default", "cli:alice")
            assert ok, result
            text = orjson.dumps(result).decode()
            ev = ControlEvent(Command.ROLLBACK, "default", ok, text, recv, by="cli:alice")
            publish(TOPIC_CONTROL, ev)
        frame = encode(market.next_tick(Mode.QUOTE))
        d = engine.on_frame(frame, recv)
        engine.after_publish()
        publish(tick_topic(d), TickRecord(recv, frame, d))
    writer.close()
    gov.close()


def _state_with_a_learned_genome(root: Path) -> Path:
    state = root / "state"
    state.mkdir(parents=True)
    with GenomeStore(state / "genome.db") as store:
        store.new_version("default", LEARNED, "learn", 1_000)
        store.new_version("default", LEARNED | {"energy_lookback": 30.0}, "learn", 2_000)
    return state


def test_a_session_that_began_with_a_learned_genome_replays_as_it_ran(tmp_path: Path) -> None:
    state = _state_with_a_learned_genome(tmp_path)
    with_state = tmp_path / "bb" / "20250101T000000Z-aaaaaa"
    _record(with_state, state, with_state=True)
    result = replay_session(with_state, verify=True)
    assert result.governance_state == "recorded"
    assert result.decisions > 100 and result.mismatched == 0, result.divergence

    # The same session without the state record: replay starts from the defaults, and the
    # decisions it makes are not the ones recorded.
    state2 = _state_with_a_learned_genome(tmp_path / "again")
    without = tmp_path / "bb" / "20250101T000000Z-bbbbbb"
    _record(without, state2, with_state=False)
    result = replay_session(without, verify=True)
    assert result.governance_state == "empty"
    assert result.mismatched > 0 and result.divergence is not None
    assert any(path.startswith("genome") for path, _, _ in result.divergence.fields), (
        result.divergence.fields
    )


def test_an_operator_rollback_mid_session_replays_as_it_ran(tmp_path: Path) -> None:
    state = _state_with_a_learned_genome(tmp_path)  # v2 band_k 3, v3 energy_lookback 30
    session = tmp_path / "bb" / "20250101T000000Z-cccccc"
    _record(session, state, with_state=True, rollback_at=3_000)
    with GenomeStore(state / "genome.db") as store:
        now = store.current_version("default")
        assert (now.restored_from, now.reason) == (2, "operator_rollback:cli:alice")
        assert store.current("default").params == LEARNED  # v2's genes again
    # The decisions after the rollback ran on the restored genome; replay follows it from
    # the recorded control event (as a promotion), at the same frame, with the same version.
    genomes = [
        (r.decision.genome.version, r.decision.genome.params.get("energy_lookback"))
        for m in read_session(session)
        if m.kind == TOPIC_TICK
        and (r := m.decode()).decision is not None
        and r.decision.genome is not None
    ]
    assert genomes[0] == (3, 30.0) and genomes[-1] == (now.version, LEARNED["energy_lookback"])
    result = replay_session(session, verify=True)
    assert result.control_applied == 1
    assert result.decisions > 100 and result.mismatched == 0, result.divergence


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.text(max_size=40)), max_size=60))
def test_a_store_image_restores_to_the_same_rows(rows: list[tuple[int, str]]) -> None:
    d = Path(tempfile.mkdtemp())
    try:
        src = d / "a.db"
        db = sqlite3.connect(src)
        db.execute("PRAGMA journal_mode=WAL")  # committed rows still in the WAL count too
        db.execute("CREATE TABLE t (k INTEGER, v TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", rows)
        db.commit()
        image = image_of(src)  # while the writer still has the file open
        db.close()
        restore_image(d / "b.db", image)
        back = sqlite3.connect(d / "b.db")
        assert back.execute("SELECT k, v FROM t ORDER BY rowid").fetchall() == rows
        back.close()
    finally:
        shutil.rmtree(d)
