"""`chimera genome show|history` only read: the genome file is opened read-only, left
byte-identical, and no -wal / -shm appears beside it — on real SQLite files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chimera_governance.genome import GenomeStore
from tools.genome_cli import main


def files(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("action", [["show"], ["history"], ["history", "--json"]])
def test_show_and_history_leave_the_file_alone(tmp_path, capsys, action):
    path = tmp_path / "genome.db"
    with GenomeStore(path) as store:
        store.on_trade_closed("default", 1.0, {}, 5)
    before = files(tmp_path)
    assert list(before) == ["genome.db"]
    assert main([*action, "--db", str(path)]) == 0
    assert capsys.readouterr().out
    assert files(tmp_path) == before


def test_an_empty_genome_file_is_reported_and_not_initialized(tmp_path, capsys):
    path = tmp_path / "genome.db"
    path.touch()
    assert main(["show", "--db", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "no genome" in err
    assert path.stat().st_size == 0 and files(tmp_path) == {
        "genome.db": hashlib.sha256(b"").hexdigest()
    }
