"""Stores are created owner-only (files 0600, the directories Chimera creates 0700) whatever
the umask, and SQLite's -wal / -shm follow the file's mode — on real SQLite files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from chimera_core.contracts import OrderIntent, OrderRequest, Side
from chimera_execution.journal import Journal, journal_path
from chimera_governance.approvals import ApprovalQueue
from chimera_governance.genome import GenomeStore


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: whatever is not set explicitly at creation shows up as 0666 / 0777."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def assert_private(db: Path, *, open_now: bool) -> None:
    assert mode(db) == 0o600, f"{db} is {mode(db):04o}"
    sides = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
    if open_now:
        assert all(s.exists() for s in sides), sides
    for side in sides:
        if side.exists():
            assert mode(side) == 0o600, f"{side} is {mode(side):04o}"


def test_a_fresh_data_dir_gets_private_stores(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    with Journal(data, "paper") as j:
        j.record_order(OrderRequest("c1", "c1", "3045", 1, Side.BUY, 10))
        assert_private(journal_path(data, "paper"), open_now=True)
        state = data / "paper"
        with ApprovalQueue(state / "approvals.db", size_limit_value=1.0) as q:
            q.check(OrderIntent("c2", "3045", 1, Side.BUY, 10, 100.0, 0, 1, 1_000), 0.9, 1_000)
            assert_private(state / "approvals.db", open_now=True)
        with GenomeStore(state / "genome.db") as g:
            g.current("default")
            assert_private(state / "genome.db", open_now=True)
    assert mode(data) == 0o700 and mode(data / "paper") == 0o700
    for name in ("chimera.db", "approvals.db", "genome.db"):
        assert_private(data / "paper" / name, open_now=False)


def test_a_genome_store_in_new_nested_directories(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "a" / "b" / "genome.db"
    with GenomeStore(path):
        pass
    assert mode(tmp_path / "a") == 0o700 and mode(tmp_path / "a" / "b") == 0o700
    assert mode(path) == 0o600


def test_an_existing_world_readable_journal_is_tightened(tmp_path: Path) -> None:
    with Journal(tmp_path, "paper") as j:
        j.record_order(OrderRequest("c1", "c1", "3045", 1, Side.BUY, 10))
    path = journal_path(tmp_path, "paper")
    path.chmod(0o644)  # what earlier versions created
    with Journal(tmp_path, "paper") as j:
        assert_private(path, open_now=True)
        assert [o.client_order_id for o in j.orders()] == ["c1"]


def test_existing_directories_are_left_as_they_are(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o750)  # e.g. systemd's StateDirectory, chosen by the operator
    Journal(data, "paper").close()
    assert mode(data) == 0o750
    assert mode(data / "paper") == 0o700
