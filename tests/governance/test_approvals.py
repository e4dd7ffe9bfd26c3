"""Approval queue: gating, lifecycle, persistence, idempotence, typed errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chimera_core.contracts import OrderIntent, Side
from chimera_core.errors import ChimeraError
from chimera_governance.approvals import (
    ApprovalNotPending,
    ApprovalQueue,
    UnknownApproval,
    approval_id_for,
)

T0 = 1_704_166_200_000  # 2024-01-02 09:00 IST


def intent(coid: str = "c-1", qty: int = 100, price: float = 2_000.0) -> OrderIntent:
    return OrderIntent(
        client_order_id=coid,
        token="2885",
        exchange_type=1,
        side=Side.BUY,
        qty=qty,
        ref_price=price,
        bar_start_ms=T0 - 60_000,
        signal_seq=7,
        exchange_ts_ms=T0,
    )


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM approval").fetchone()[0])


def test_gating_by_size_and_confidence(tmp_path: Path) -> None:
    with ApprovalQueue(tmp_path / "a.db") as q:
        small = q.check(intent("s", qty=50, price=2_000.0), 0.9, T0)  # 100,000: not above
        assert (small.required, small.status, small.approval_id) == (False, "NOT_REQUIRED", "")
        big = q.check(intent("b", qty=51, price=2_000.0), 0.9, T0)
        assert big.required and big.status == "PENDING" and "size limit" in big.reason
        unsure = q.check(intent("u", qty=1, price=10.0), 0.49, T0)
        assert unsure.required and unsure.status == "PENDING" and "confidence" in unsure.reason
        ok = q.check(intent("o", qty=1, price=10.0), 0.5, T0)
        assert ok.status == "NOT_REQUIRED"
        assert {r.approval_id for r in q.pending()} == {big.approval_id, unsure.approval_id}
        assert big.approval_id == approval_id_for("b")
    assert rows(tmp_path / "a.db") == 2  # NOT_REQUIRED intents are not stored


def test_approve_reject_expire_lifecycle(tmp_path: Path) -> None:
    with ApprovalQueue(tmp_path / "a.db", ttl_s=120) as q:
        a = q.check(intent("a"), 0.9, T0).approval_id
        r = q.check(intent("r"), 0.9, T0).approval_id
        e = q.check(intent("e"), 0.9, T0 + 1_000).approval_id
        rec = q.approve(a, by="alice", now_ms=T0 + 5_000)
        assert (rec.status, rec.decided_by, rec.decided_ms) == ("APPROVED", "alice", T0 + 5_000)
        assert q.reject(r, by="bob").status == "REJECTED"
        assert q.expire(T0 + 121_000) == []  # exactly 120 s old: not older than the TTL
        assert q.expire(T0 + 121_001) == [e]
        assert q.status(e).status == "EXPIRED"
        assert q.status(a).status == "APPROVED" and q.status(r).status == "REJECTED"
        assert q.pending() == []


def test_approve_with_now_past_ttl_expires_instead(tmp_path: Path) -> None:
    with ApprovalQueue(tmp_path / "a.db", ttl_s=10) as q:
        aid = q.check(intent(), 0.1, T0).approval_id
        with pytest.raises(ApprovalNotPending, match="found EXPIRED"):
            q.approve(aid, by="alice", now_ms=T0 + 10_001)


def test_errors_on_double_decision_and_unknown_id(tmp_path: Path) -> None:
    with ApprovalQueue(tmp_path / "a.db") as q:
        aid = q.check(intent(), 0.1, T0).approval_id
        q.approve(aid, by="alice")
        with pytest.raises(ApprovalNotPending, match="expected status PENDING, found APPROVED"):
            q.reject(aid, by="bob")
        with pytest.raises(ApprovalNotPending):
            q.approve(aid, by="alice")
        with pytest.raises(UnknownApproval, match="no approval with id 'apv-nope'"):
            q.approve("apv-nope", by="alice")
        with pytest.raises(UnknownApproval):
            q.status("apv-nope")
        assert issubclass(UnknownApproval, ChimeraError)
        assert issubclass(ApprovalNotPending, ChimeraError)
        q.check(intent("x"), 0.1, T0)
        q.expire(T0 + 10**6)
        with pytest.raises(ApprovalNotPending, match="found EXPIRED"):
            q.approve(approval_id_for("x"), by="alice")
        assert q.status(aid).status == "APPROVED"  # the failed decisions changed nothing


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with ApprovalQueue(path) as q:
        aid = q.check(intent("p", qty=500), 0.9, T0).approval_id
        done = q.check(intent("d", qty=500), 0.9, T0).approval_id
        q.reject(done, by="carol")
    with ApprovalQueue(path) as q:
        [rec] = q.pending()
        assert rec.approval_id == aid and rec.intent == intent("p", qty=500)
        assert rec.value == pytest.approx(1_000_000.0) and rec.created_ms == T0
        q.approve(aid, by="dave")
        assert q.record(done).decided_by == "carol"
    with ApprovalQueue(path) as q:
        assert q.status(aid).status == "APPROVED" and q.pending() == []


def test_same_intent_twice_is_one_row(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with ApprovalQueue(path) as q:
        first = q.check(intent(), 0.9, T0)
        again = q.check(intent(), 0.9, T0 + 5)
        assert again.approval_id == first.approval_id and again.status == "PENDING"
        q.approve(first.approval_id, by="alice")
    with ApprovalQueue(path) as q:  # a replay after restart sees the decision, not a new row
        replay = q.check(intent(), 0.9, T0)
        assert replay.status == "APPROVED" and replay.approval_id == first.approval_id
    assert rows(path) == 1
