"""Genome candidates: proposed from a study, never in force by themselves, promoted or
rejected only through a human's decision on the approval queue."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimera_core.config import parse_config
from chimera_core.event_loop import Engine
from chimera_governance import approvals as apv
from chimera_governance.genome import (
    ACTIVE,
    CANDIDATE,
    DEFAULT_GENES,
    PROMOTED,
    REJECTED,
    GenomeError,
    GenomeStore,
)
from chimera_governance.pipeline import GovernancePipeline

DEFAULTS = {g.name: float(g.default) for g in DEFAULT_GENES}
OTHER = DEFAULTS | {"band_k": 3.0, "z_lookback": 90.0}
SOURCE = {"study": "s1", "trial": "2:7", "data_sha256": "ab" * 32}
CFG = """
[strategy]
bar_interval_s = 5
[logging]
decisions = "none"
"""


def test_a_candidate_is_stored_but_never_in_force(tmp_path: Path) -> None:
    with GenomeStore(tmp_path / "genome.db") as store:
        store.new_version("default", DEFAULTS | {"band_k": 2.5}, "operator", 1_000)
        before = store.current("default")
        cand = store.propose("default", OTHER, SOURCE, 2_000, metrics={"sharpe": 1.2})
        assert (cand.status, cand.reason, cand.source) == (CANDIDATE, "candidate", SOURCE)
        assert cand.parent_version == before.version
        assert store.current("default") == before  # nothing changed for the engine
        assert [c.version for c in store.candidates()] == [cand.version]
        with pytest.raises(GenomeError, match="approval queue"):
            store.rollback("default", to_version=cand.version)
        # the next version the engine writes does not collide with the candidate's number
        learned = store.new_version("default", DEFAULTS, "operator", 3_000)
        assert learned.version == cand.version + 1 and learned.parent_version == before.version


def test_promotion_puts_the_candidates_params_in_force_once(tmp_path: Path) -> None:
    with GenomeStore(tmp_path / "genome.db") as store:
        cand = store.propose("default", OTHER, SOURCE, 2_000)
        new = store.promote("default", cand.version, "alice", 5_000)
        assert new.status == ACTIVE and new.params == OTHER and new.restored_from == cand.version
        assert new.source["approved_by"] == "alice" and new.source["study"] == "s1"
        assert store.current("default").version == new.version
        assert store.version("default", cand.version).status == PROMOTED
        with pytest.raises(GenomeError, match="not a candidate"):
            store.promote("default", cand.version, "alice", 6_000)
        other = store.propose("default", DEFAULTS | {"band_k": 1.5}, SOURCE, 7_000)
        assert store.reject("default", other.version).status == REJECTED
        assert store.current("default").version == new.version


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({k: v for k, v in OTHER.items() if k != "band_k"}, "lack genes"),
        (OTHER | {"nope": 1.0}, "name no gene"),
        (OTHER | {"band_k": 99.0}, "outside its bounds"),
        (OTHER | {"z_lookback": 60.5}, "integer"),
    ],
)
def test_a_bad_candidate_is_refused_and_nothing_is_written(
    tmp_path: Path, params: dict[str, float], match: str
) -> None:
    with GenomeStore(tmp_path / "genome.db") as store:
        with pytest.raises(GenomeError, match=match):
            store.propose("default", params, SOURCE, 1_000)
        assert store.history("default") == []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("propose"), st.floats(1.0, 4.0)),
        st.tuples(st.just("promote"), st.integers(0, 5)),
        st.tuples(st.just("reject"), st.integers(0, 5)),
        st.tuples(st.just("change"), st.floats(1.0, 4.0)),
        st.tuples(st.just("rollback"), st.integers(0, 5)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_only_active_versions_are_ever_in_force(sequence: list[tuple[str, float]]) -> None:
    """Whatever the order of proposals, decisions, changes and rollbacks: every version
    number names one row, the version in force is the newest active one, and a candidate's
    params reach the engine only through a promotion."""
    with tempfile.TemporaryDirectory() as d, GenomeStore(Path(d) / "genome.db") as store:
        ts = 0
        promoted_from: set[int] = set()
        for op, x in sequence:
            ts += 1_000
            cands = store.candidates("default")
            try:
                if op == "propose":
                    store.propose("default", DEFAULTS | {"band_k": x}, SOURCE, ts)
                elif op == "change":
                    store.new_version("default", DEFAULTS | {"band_k": x}, "operator", ts)
                elif op in ("promote", "reject") and cands:
                    c = cands[int(x) % len(cands)]
                    if op == "promote":
                        store.promote("default", c.version, "bob", ts)
                        promoted_from.add(c.version)
                    else:
                        store.reject("default", c.version)
                elif op == "rollback":
                    store.rollback("default", exchange_ts_ms=ts)
            except GenomeError:
                pass  # e.g. a rollback with no parent: refused, nothing written
            rows = store.history("default")
            numbers = [r.version for r in rows]
            assert numbers == sorted(set(numbers))
            active = [r for r in rows if r.status == ACTIVE]
            if active:
                assert store.current("default").version == active[-1].version
                for r in active:
                    if r.reason == "promote":
                        assert r.restored_from in promoted_from
            assert all(r.status in (ACTIVE, CANDIDATE, PROMOTED, REJECTED) for r in rows)
            assert {r.version for r in rows if r.status == PROMOTED} == promoted_from


def _pipeline(tmp_path: Path) -> tuple[GovernancePipeline, Engine]:
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    return gov, Engine(cfg, governance=gov, clock=lambda: 0)


def test_an_approved_promotion_changes_the_genome_the_engine_uses(tmp_path: Path) -> None:
    gov, engine = _pipeline(tmp_path)
    token = next(iter(gov._genome_out))
    cand = gov.genomes.propose("default", OTHER, SOURCE, 1_000)
    pid = apv.propose(
        tmp_path / "approvals.db", "genome_promote", {"family": "default", "version": cand.version},
        "study s1 trial 2:7", "chimera genome propose", 1_000,
    )  # fmt: skip
    waiting = [a for a in gov.pending_approvals() if a["approval_id"] == pid]
    assert waiting and waiting[0]["kind"] == "genome_promote"
    assert gov._genome_out[token].params == DEFAULTS
    ok, result = engine.control("approve", pid)
    assert ok, result
    assert result["status"] == "APPROVED" and result["params"] == OTHER
    assert gov._genome_out[token].params == OTHER
    assert gov._genome_out[token].version == result["version"]
    ok, again = engine.control("approve", pid)
    assert not ok and "found APPROVED" in again["error"] and pid in again["error"]
    assert gov.pending_approvals() == []
    gov.close()


def test_a_rejected_promotion_changes_nothing_and_marks_the_candidate(tmp_path: Path) -> None:
    gov, engine = _pipeline(tmp_path)
    cand = gov.genomes.propose("default", OTHER, SOURCE, 1_000)
    pid = apv.propose(
        tmp_path / "approvals.db", "genome_promote", {"family": "default", "version": cand.version},
        "r", "chimera genome propose", 1_000,
    )  # fmt: skip
    ok, result = engine.control("reject", pid)
    assert ok and result["status"] == "REJECTED"
    assert gov.genomes.version("default", cand.version).status == REJECTED
    assert gov.genomes.current("default").params == DEFAULTS
    ok, err = engine.control("approve", "prp-unknown")
    assert not ok and "unknown proposal" in err["error"]
    gov.close()


def test_an_assistants_parameter_change_takes_effect_only_when_approved(tmp_path: Path) -> None:
    gov, engine = _pipeline(tmp_path)
    token = next(iter(gov._genome_out))
    pid = apv.propose(
        tmp_path / "approvals.db", "genome_change",
        {"family": "default", "params": {"band_k": 3.5}}, "wider bands", "assistant", 1_000,
    )  # fmt: skip
    assert gov._genome_out[token].params == DEFAULTS
    ok, result = engine.control("approve", pid)
    assert ok, result
    assert gov._genome_out[token].params == DEFAULTS | {"band_k": 3.5}
    gov.close()
