"""The cortex reads the stores only through their read-only views: the same rows the pages
showed when it ran its own SQL, and a schema this code does not read is an error naming
the file and what is missing — never an empty page. Real SQLite files throughout."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from chimera_core.contracts import ExecKind, ExecutionReport, Fill, OrderIntent, OrderRequest, Side
from chimera_core.errors import StoreSchemaError
from chimera_execution.journal import Journal
from chimera_governance.approvals import ApprovalQueue
from chimera_governance.genome import GenomeError, GenomeStore
from cortex import sources

T0 = 1_704_166_200_000


def intent(coid: str, qty: int = 100) -> OrderIntent:
    return OrderIntent(coid, "2885", 1, Side.BUY, qty, 2_000.0, T0 - 60_000, 7, T0)


def raw(path: Path, sql: str) -> list[dict[str, object]]:
    """The reference: plain sqlite3, as the cortex used to read."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(sql)]
    finally:
        db.close()


def sql(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    db.execute(statement)
    db.commit()
    db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def queue(tmp_path: Path) -> list[str]:
    """Five approvals queued a second apart; two decided. Returns their ids in queue order."""
    ids = []
    with ApprovalQueue(tmp_path / "approvals.db", size_limit_value=1.0, ttl_s=3600) as q:
        for i in range(5):
            ids.append(q.check(intent(f"c{i}", qty=10 + i), 0.9, T0 + i * 1000).approval_id)
        q.approve(ids[1], "ops", now_ms=T0 + 10_000)
        q.reject(ids[3], "ops", now_ms=T0 + 11_000)
    return ids


def test_the_approval_queue_reads_as_before(tmp_path: Path) -> None:
    ids = queue(tmp_path)
    rows = sources.approvals(tmp_path)
    # Pending oldest first, then decided newest first (by when they were queued).
    assert [r["approval_id"] for r in rows] == [ids[0], ids[2], ids[4], ids[3], ids[1]]
    ref = {r["approval_id"]: r for r in raw(tmp_path / "approvals.db", "SELECT * FROM approval")}
    for r in rows:
        want = ref[r["approval_id"]]
        for key in ("client_order_id", "value", "confidence", "reason", "status", "created_ms",
                    "decided_ms", "decided_by"):  # fmt: skip
            assert r[key] == want[key], key
        n = int(str(want["client_order_id"])[1:])
        assert (r["token"], r["side"], r["qty"], r["ref_price"]) == ("2885", "BUY", 10 + n, 2000.0)
    assert len(sources.approvals(tmp_path, limit=2)) == 2


def test_an_approval_table_without_a_column_is_an_error_not_an_empty_queue(
    tmp_path: Path,
) -> None:
    queue(tmp_path)
    path = tmp_path / "approvals.db"
    sql(path, "ALTER TABLE approval DROP COLUMN decided_by")  # a schema this code does not know
    before = digest(path)
    with pytest.raises(StoreSchemaError) as err:
        sources.approvals(tmp_path)
    message = str(err.value)
    assert str(path) in message and "decided_by" in message
    assert digest(path) == before


def test_an_unversioned_approval_table_of_another_shape_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "approvals.db"
    sql(path, "CREATE TABLE approval (approval_id TEXT PRIMARY KEY, status TEXT)")
    sql(path, "INSERT INTO approval VALUES ('apv-1', 'PENDING')")
    with pytest.raises(StoreSchemaError) as err:
        sources.approvals(tmp_path)
    assert str(path) in str(err.value) and "approval" in str(err.value)


def fill(coid: str, n: int) -> Fill:
    return Fill(f"F-{coid}-{n}", coid, "3045", Side.BUY, 1, 100.0 + n, 0.25, 2_000 + n)


def journal_with_fills(tmp_path: Path) -> Path:
    with Journal(tmp_path, "paper", starting_cash=1e6) as j:
        req = OrderRequest("c1", "I-c1", "3045", 1, Side.BUY, 5, exchange_ts_ms=1_000)
        j.record_order(req)
        for n in range(1, 6):
            j.apply_report(ExecutionReport(
                ExecKind.PARTIAL, "c1", "I-c1", "3045", Side.BUY, 5, n, 100.0,
                broker_order_id="B1", fill=fill("c1", n), exchange_ts_ms=2_000, at_ns=n,
            ))  # fmt: skip
    return tmp_path / "paper" / "chimera.db"


def test_journal_fills_read_as_the_page_showed_them(tmp_path: Path) -> None:
    path = journal_with_fills(tmp_path)
    mode_dir = path.parent
    want = raw(path, "SELECT * FROM fills ORDER BY rowid DESC LIMIT 3")
    assert sources.journal(mode_dir, "fills", 3) == want
    ledger = raw(path, "SELECT * FROM cash_ledger ORDER BY id DESC")
    assert sources.journal(mode_dir, "cash_ledger") == ledger
    (pos,) = sources.journal(mode_dir, "positions")
    assert (pos["token"], pos["qty"]) == ("3045", 5)
    (order,) = sources.journal(mode_dir, "orders")
    assert (order["client_order_id"], order["filled_qty"]) == ("c1", 5)


def test_a_journal_without_a_column_is_an_error_not_an_empty_page(tmp_path: Path) -> None:
    path = journal_with_fills(tmp_path)
    sql(path, "ALTER TABLE fills DROP COLUMN charges")
    with pytest.raises(StoreSchemaError) as err:
        sources.journal(path.parent, "fills")
    assert str(path) in str(err.value) and "charges" in str(err.value)


def test_genome_versions_read_as_before_and_a_changed_table_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "genome.db"
    with GenomeStore(path) as store:
        store.on_trade_closed("default", 1.0, {}, T0)
        store.new_version("banks", store.current("default").params, "operator", T0 + 1)
        store.new_version("banks", store.current("default").params, "operator", T0 + 2)
    rows = sources.genome_versions(tmp_path)
    # A new family starts at its initial version 1; by family, newest first.
    want = [("banks", 3), ("banks", 2), ("banks", 1), ("default", 1)]
    assert [(r["family"], r["version"]) for r in rows] == want
    assert rows[0]["params"] == rows[3]["params"] and rows[0]["reason"] == "operator"
    assert rows[2]["reason"] == "initial" and rows[0]["parent_version"] == 2
    sql(path, "ALTER TABLE genome_version DROP COLUMN metrics")
    with pytest.raises(GenomeError) as err:
        sources.genome_versions(tmp_path)
    assert str(path) in str(err.value) and "metrics" in str(err.value)


def test_store_files_not_created_yet_read_as_empty(tmp_path: Path) -> None:
    for name in ("approvals.db", "genome.db", "chimera.db"):
        (tmp_path / name).touch()  # the engine is creating them right now
    assert sources.approvals(tmp_path) == []
    assert sources.genome_versions(tmp_path) == []
    assert sources.journal(tmp_path, "fills") == []
    assert all((tmp_path / n).stat().st_size == 0 for n in ("approvals.db", "genome.db"))
