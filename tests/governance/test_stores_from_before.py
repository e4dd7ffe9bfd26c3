"""Governance stores written before they kept a schema version (user_version 0) open with
today's code, keep every row, and are stamped with the version their tables are; their
read-only views read them without writing. The DDL below is copied verbatim from the
code as shipped (git 10f86f7; meta-risk's first version from 4fcba30), not taken from the
code under test."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import msgspec
import pytest

from chimera_core.contracts import OrderIntent, Side
from chimera_governance.approvals import SCHEMA as APPROVALS_SCHEMA
from chimera_governance.approvals import (
    ApprovalError,
    ApprovalQueue,
    ApprovalsView,
    approval_id_for,
)
from chimera_governance.genome import GenomeStore, GenomeView
from chimera_governance.meta_risk import MetaRisk, MetaRiskLimits

APPROVALS_DDL = """
CREATE TABLE IF NOT EXISTS approval (
    approval_id     TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    intent          BLOB NOT NULL,      -- msgspec JSON of the OrderIntent
    value           REAL NOT NULL,
    confidence      REAL NOT NULL,
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    decided_ms      INTEGER,
    decided_by      TEXT NOT NULL DEFAULT ''
)
"""
GENOME_DDL = """
CREATE TABLE IF NOT EXISTS genome_version (
    family TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent_version INTEGER,
    restored_from INTEGER,
    params TEXT NOT NULL,
    reason TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created_exchange_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (family, version)
);
CREATE TABLE IF NOT EXISTS genome_trade (
    family TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    pnl REAL NOT NULL,
    features TEXT NOT NULL,
    exchange_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (family, seq)
);
CREATE INDEX IF NOT EXISTS genome_trade_by_version ON genome_trade (family, version, seq);
"""
META_RISK_V1_DDL = """
CREATE TABLE IF NOT EXISTS halt (
    reason      TEXT PRIMARY KEY,   -- the rule that halted: daily_loss | max_drawdown
    day         TEXT NOT NULL,      -- IST trading day it tripped (ISO date)
    value       REAL NOT NULL,
    limit_value REAL NOT NULL,
    set_ts_ms   INTEGER NOT NULL    -- exchange time it tripped
)
"""
META_RISK_V2_DDL = """
CREATE TABLE IF NOT EXISTS halt (
    reason      TEXT PRIMARY KEY,   -- the rule that halted: daily_loss | max_drawdown
    day         TEXT NOT NULL,      -- IST trading day it tripped (ISO date)
    value       REAL NOT NULL,
    limit_value REAL NOT NULL,
    set_ts_ms   INTEGER NOT NULL    -- exchange time it tripped
);
CREATE TABLE IF NOT EXISTS equity_state (
    key   TEXT PRIMARY KEY,  -- high_water_mark | session_day | session_open_equity
    value TEXT NOT NULL
)
"""
T0 = 1_704_166_200_000  # 2024-01-02 09:00 IST


def old_file(path: Path, ddl: str, *rows: tuple[str, tuple[object, ...]]) -> None:
    """A store as the earlier code left it: WAL, its tables, user_version 0."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(ddl)
    for sql, args in rows:
        db.execute(sql, args)
    db.close()
    assert user_version(path) == 0


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def intent(coid: str) -> OrderIntent:
    return OrderIntent(coid, "2885", 1, Side.BUY, 100, 2_000.0, T0 - 60_000, 7, T0)


APPROVAL_INSERT = (
    "INSERT OR IGNORE INTO approval (approval_id, client_order_id, intent, value,"
    " confidence, reason, status, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def test_an_approval_queue_from_before_is_read_then_adopted(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    aid = approval_id_for("c-old")
    row = (aid, "c-old", msgspec.json.encode(intent("c-old")), 200_000.0, 0.9,
           "value 200000.00 > size limit 100000.00", "PENDING", T0)  # fmt: skip
    old_file(path, APPROVALS_DDL, (APPROVAL_INSERT, row))
    before = digest(path)
    with ApprovalsView(path) as view:  # the cortex, before the engine's next start
        (rec,) = view.queue()
        assert (rec.approval_id, rec.status, rec.intent) == (aid, "PENDING", intent("c-old"))
    assert digest(path) == before and user_version(path) == 0
    with ApprovalQueue(path, ttl_s=3600) as q:
        assert user_version(path) == APPROVALS_SCHEMA.version  # adopted as 1, then migrated
        assert [r.approval_id for r in q.pending()] == [aid]
        assert q.approve(aid, "ops").status == "APPROVED"
        again = q.check(intent("c-old"), 0.9, T0 + 5)  # the same intent: never queued twice
        assert again.status == "APPROVED"


def test_an_approval_queue_of_an_unknown_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    old_file(path, APPROVALS_DDL.replace(",\n    decided_by      TEXT NOT NULL DEFAULT ''", ""))
    before = digest(path)
    with pytest.raises(ApprovalError) as err:
        ApprovalQueue(path)
    assert str(path) in str(err.value) and "approval" in str(err.value)
    assert digest(path) == before  # not stamped, not migrated, not even switched


def test_a_genome_from_before_is_read_then_adopted(tmp_path: Path) -> None:
    path = tmp_path / "genome.db"
    v1 = {"energy_threshold": 0.2, "band_k": 2.0, "energy_lookback": 20.0,
          "z_lookback": 60.0, "band_lookback": 140.0}  # fmt: skip
    v2 = v1 | {"energy_threshold": 0.22}
    insert_v = "INSERT INTO genome_version VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    rows = [
        (insert_v, ("default", 1, None, None, json.dumps(v1, sort_keys=True), "initial", "{}", T0)),
        (insert_v, ("default", 2, 1, None, json.dumps(v2, sort_keys=True), "learn",
                    json.dumps({"trades": 30}), T0 + 1)),
        *[("INSERT INTO genome_trade VALUES (?, ?, ?, ?, ?, ?)",
           ("default", s, 1 if s <= 31 else 2, float(s % 3 - 1), "{}", T0 + s))
          for s in range(1, 36)],
    ]  # fmt: skip
    old_file(path, GENOME_DDL, *rows)
    before = digest(path)
    with GenomeView(path) as view:
        assert [v.version for v in view.history("default")] == [1, 2]
        assert view.current("default").version == 2 and view.current("default").params == v2
    assert digest(path) == before and user_version(path) == 0
    with GenomeStore(path) as store:
        assert user_version(path) == 2  # adopted as 1, then migrated (status, source)
        assert [v.status for v in store.history("default")] == ["active", "active"]
        out = store.current("default")
        assert (out.version, out.params, out.closed_trades) == (2, v2, 35)
        store.on_trade_closed("default", 1.0, {}, T0 + 100)
        assert len(store.trade_pnls("default")) == 36


def test_meta_risk_state_of_its_first_version_is_migrated_with_the_halt_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta_risk.db"
    halt = ("INSERT INTO halt VALUES (?, ?, ?, ?, ?)",
            ("max_drawdown", "2024-01-02", 0.12, 0.10, T0))  # fmt: skip
    old_file(path, META_RISK_V1_DDL, halt)
    with MetaRisk(path) as risk:
        assert risk.kill_switch == "max_drawdown"  # a restart cannot un-halt
        risk.observe(1_000_000.0, T0 + 1_000)  # the peak, saved in the table v2 added
    assert user_version(path) == 2
    with MetaRisk(path) as risk:
        assert risk.kill_switch == "max_drawdown"


def test_meta_risk_state_of_its_second_version_keeps_the_high_water_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta_risk.db"
    state = "INSERT INTO equity_state VALUES (?, ?)"
    old_file(path, META_RISK_V2_DDL,
             (state, ("high_water_mark", repr(1_000_000.0))),
             (state, ("session_day", "2024-01-02")),
             (state, ("session_open_equity", repr(1_000_000.0))))  # fmt: skip
    with MetaRisk(path, MetaRiskLimits(daily_loss_pct=0.5)) as risk:
        assert user_version(path) == 2
        assert risk.kill_switch == ""
        # 11 % below the stored peak: only a peak read back from the file can trip this.
        vetoes = risk.observe(890_000.0, T0 + 1_000)
        assert [v.rule for v in vetoes] == ["max_drawdown"]
