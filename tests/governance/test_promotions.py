"""Shadow promotions in the approval queue: queued once per (candidate, genes), decided once,
and approving one through the governance pipeline puts its genes in force as a new genome
version (real SQLite files)."""

from __future__ import annotations

import pytest

from chimera_core.commands import Command
from chimera_core.config import parse_config
from chimera_governance.approvals import (
    APPROVED,
    PENDING,
    REJECTED,
    ApprovalError,
    ApprovalNotPending,
    UnknownApproval,
    decide_proposal,
    proposals,
    queue_promotion,
)
from chimera_governance.genome import GenomeView
from chimera_governance.pipeline import GovernancePipeline

CFG = '[feed]\ntokens = ["2885"]\n'
GENES = {
    "energy_threshold": 0.5,
    "band_k": 2.5,
    "energy_lookback": 30.0,
    "z_lookback": 60.0,
    "band_lookback": 140.0,
}


def test_a_promotion_is_queued_once_however_often_its_gates_pass(tmp_path):
    db = tmp_path / "approvals.db"
    first, queued = queue_promotion(db, "calm", "default", GENES, "gates ok", 1_000)
    again, queued_again = queue_promotion(db, "calm", "default", dict(GENES), "gates ok", 9_000)
    other, _ = queue_promotion(db, "calm", "default", {**GENES, "band_k": 3.0}, "ok", 9_000)
    assert first.startswith("prm-") and queued and not queued_again and first == again
    assert other != first
    rows = proposals(db)
    assert [r["proposal_id"] for r in rows] == [first, other]
    assert rows[0]["kind"] == "promotion" and rows[0]["status"] == PENDING
    assert rows[0]["payload"] == {"candidate": "calm", "family": "default", "params": GENES}


def test_a_promotion_needs_what_it_promotes(tmp_path):
    with pytest.raises(ApprovalError, match="candidate name, a family and its params"):
        queue_promotion(tmp_path / "a.db", "calm", "default", {}, "why", 0)


def test_approving_a_promotion_activates_its_genome_and_a_second_decision_is_refused(tmp_path):
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    try:
        before = gov.layers("2885")[2]
        assert before is not None and before.version == 0
        pid, _ = queue_promotion(tmp_path / "approvals.db", "calm", "default", GENES, "ok", 5)
        ok, out = gov.control("approve", pid)
        assert ok, out
        assert out["status"] == APPROVED and out["params"] == GENES
        after = gov.layers("2885")[2]  # what the engine takes at the next bar close
        assert after is not None and after.version == out["version"] >= 1
        assert after.params == GENES
        ok, again = gov.control("reject", pid)
        assert not ok and "expected status PENDING, found APPROVED" in again["error"]
        ok, unknown = gov.control("approve", "prm-00000000000000000000")
        assert not ok and "unknown proposal" in unknown["error"]
    finally:
        gov.close()
    with GenomeView(tmp_path / "genome.db") as view:
        latest = view.current_version("default")
    assert latest.reason == "promotion:calm" and latest.params == GENES


def test_rejecting_a_promotion_changes_no_genome(tmp_path):
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    try:
        pid, _ = queue_promotion(tmp_path / "approvals.db", "calm", "default", GENES, "ok", 5)
        ok, out = gov.control("reject", pid)
        assert ok and out == {"proposal_id": pid, "kind": "promotion", "status": REJECTED}
        genome = gov.layers("2885")[2]
        assert genome is not None and genome.version == 0
        with pytest.raises(ApprovalNotPending):
            decide_proposal(gov.approvals._db, pid, APPROVED, "someone", 6)
        with pytest.raises(UnknownApproval):
            decide_proposal(gov.approvals._db, "prm-nope", APPROVED, "someone", 6)
    finally:
        gov.close()


def test_an_operator_rollback_undoes_a_promotion_through_the_engines_governance(tmp_path):
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    try:
        before = gov.layers("2885")[2]
        assert before is not None
        pid, _ = queue_promotion(tmp_path / "approvals.db", "calm", "default", GENES, "ok", 5)
        ok, promoted = gov.control("approve", pid, "telegram:42")
        assert ok, promoted
        assert proposals(tmp_path / "approvals.db")[0]["decided_by"] == "telegram:42"
        # The promotion's parent (what ran before) is back in force, as a new version.
        ok, out = gov.control(Command.ROLLBACK, "default", "cli:alice")
        assert ok, out
        # (v0 is the config's genes before the store has a row; the promotion wrote them
        # as its parent)
        assert out["restored_from"] == promoted["version"] - 1
        assert out["version"] > promoted["version"]
        after = gov.layers("2885")[2]
        assert after is not None and after.version == out["version"]
        assert after.params == before.params == out["params"]
        # What cannot be rolled back says why and what the argument is.
        ok, bad = gov.control(Command.ROLLBACK, "default:999", "cli:alice")
        assert (
            not ok and "rollback 'default:999'" in bad["error"] and "FAMILY:VERSION" in bad["error"]
        )
        ok, bad = gov.control(Command.ROLLBACK, "default:x", "cli:alice")
        assert not ok and "FAMILY:VERSION" in bad["error"]
        assert gov.layers("2885")[2] == after  # nothing changed by the refusals
    finally:
        gov.close()
    with GenomeView(tmp_path / "genome.db") as view:
        assert view.current_version("default").reason == "operator_rollback:cli:alice"
