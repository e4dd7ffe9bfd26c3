"""Non-order proposals beside the approval queue: queued PENDING, nothing else."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chimera_governance.approvals import ApprovalError, ApprovalQueue, proposals, propose


def test_a_proposal_is_queued_once_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "approvals.db"
    assert proposals(db) == []
    with ApprovalQueue(db):  # the intent queue and proposals share the file
        pass
    assert proposals(db) == []
    payload = {"family": "physics", "params": {"energy_threshold": 0.01}}
    pid = propose(db, "genome_change", payload, "tighter", "assistant", 1_000)
    assert propose(db, "genome_change", payload, "tighter", "assistant", 1_000) == pid
    rows = sqlite3.connect(db).execute("SELECT proposal_id, status FROM proposal").fetchall()
    assert rows == [(pid, "PENDING")]
    [got] = proposals(db)
    assert got["payload"] == payload and got["proposed_by"] == "assistant"
    with ApprovalQueue(db) as q:
        assert q.pending() == []  # a proposal is never an order intent


@pytest.mark.parametrize(
    ("kind", "reason", "by", "match"),
    [("order", "r", "a", "kind 'order'"), ("genome_change", "", "a", "reason"),
     ("genome_change", "r", "", "by=")],
)  # fmt: skip
def test_bad_proposals_are_refused(
    tmp_path: Path, kind: str, reason: str, by: str, match: str
) -> None:
    with pytest.raises(ApprovalError, match=match):
        propose(tmp_path / "approvals.db", kind, {}, reason, by, 1)
