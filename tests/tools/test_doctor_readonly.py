"""``chimera doctor`` only looks: every store it opens is opened read-only and no file or
directory under data_dir is created, changed or removed — on real SQLite files."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from chimera_core.config import CREDENTIAL_ENV
from chimera_execution.journal import Journal, JournalReader, journal_path
from chimera_governance.approvals import ApprovalQueue
from chimera_governance.genome import GenomeStore
from tools.doctor import main

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (*CREDENTIAL_ENV.values(), "CHIMERA_CONTROL_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "chimera.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n',
        encoding="utf-8",
    )
    return path


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root`` (the root included) → sha256 of its bytes, or 'dir'."""
    if not root.exists():
        return {}
    out = {".": "dir"}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def doctor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> tuple[int, str]:
    code = main(["--config", str(write_config(tmp_path)), "--env-file", str(tmp_path / ".env")])
    return code, capsys.readouterr().out


def row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(name + " "))


def test_fresh_install_creates_nothing(capsys, tmp_path):
    data = tmp_path / "data"
    code, out = doctor(capsys, tmp_path)
    assert code == 0, out
    assert not data.exists(), sorted(p.name for p in tmp_path.rglob("*"))
    assert "does not exist yet" in row(out, "data dir")


def test_empty_data_dir_stays_empty(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    code, out = doctor(capsys, tmp_path)
    assert code == 0, out
    assert list(data.iterdir()) == []


def test_zero_byte_journal_is_left_alone_and_reported(capsys, tmp_path):
    path = journal_path(tmp_path / "data", "paper")
    path.parent.mkdir(parents=True)
    path.touch()
    before = tree(tmp_path / "data")
    code, out = doctor(capsys, tmp_path)
    assert tree(tmp_path / "data") == before, out
    assert path.stat().st_size == 0
    journal_row = row(out, "journal")
    assert "WARN" in journal_row and "0 bytes" in journal_row and str(path) in journal_row
    assert code == 0, out
    # The first real open still takes its starting cash from the config, not 0.0.
    with Journal(tmp_path / "data", "paper", starting_cash=250_000.0) as j:
        assert j.starting_cash == 250_000.0


def test_real_stores_are_byte_identical_after_doctor(capsys, tmp_path):
    from chimera_core.contracts import OrderIntent, OrderRequest, Side

    data = tmp_path / "data"
    with Journal(data, "paper", starting_cash=1e6) as j:
        j.record_order(OrderRequest("c1", "c1", "3045", 1, Side.BUY, 10))
    with GenomeStore(data / "paper" / "genome.db"):
        pass
    with ApprovalQueue(data / "paper" / "approvals.db", size_limit_value=1.0) as q:
        q.check(OrderIntent("c2", "3045", 1, Side.BUY, 10, 100.0, 0, 1, 1_000), 0.9, 1_000)
    before = tree(data)
    assert not any(name.endswith(("-wal", "-shm")) for name in before)
    code, out = doctor(capsys, tmp_path)
    assert code == 0, out
    assert tree(data) == before, out  # no -wal / -shm left behind, no byte changed
    assert "consistent" in row(out, "journal")
    assert "3 database(s)" in row(out, "sqlite")


def test_journal_reader_follows_a_running_writer(tmp_path):
    from chimera_core.contracts import OrderRequest, Side

    with Journal(tmp_path, "paper", starting_cash=5_000.0) as j:
        reader = JournalReader(journal_path(tmp_path, "paper"))
        try:
            assert reader.orders() == [] and reader.starting_cash == 5_000.0
            j.record_order(OrderRequest("c1", "c1", "3045", 1, Side.BUY, 10))
            assert [o.client_order_id for o in reader.orders()] == ["c1"]
            assert reader.check() == [] and reader.mode == "paper"
        finally:
            reader.close()


def test_doctor_beside_a_running_engine_reads_through_its_wal(capsys, tmp_path):
    from chimera_core.contracts import OrderRequest, Side

    data = tmp_path / "data"
    with Journal(data, "paper", starting_cash=1e6) as j:
        for i in range(3):
            j.record_order(OrderRequest(f"c{i}", "I", "3045", 1, Side.BUY, 10))
        wal = journal_path(data, "paper").with_name("chimera.db-wal")
        assert wal.stat().st_size > 0  # the rows are in the WAL, not yet in the file
        db_before = journal_path(data, "paper").read_bytes()
        code, out = doctor(capsys, tmp_path)
        assert code == 0, out
        assert "3 orders, 0 fills, 3 open; consistent" in row(out, "journal")
        assert journal_path(data, "paper").read_bytes() == db_before
        j.record_order(OrderRequest("after", "I", "3045", 1, Side.BUY, 10))  # still writable
