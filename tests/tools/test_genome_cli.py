"""`chimera genome show|history|rollback` against a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chimera_governance.genome import DEFAULT_GENES, MIN_HISTORY, GenomeStore
from tools.genome_cli import main

DEFAULTS = {g.name: float(g.default) for g in DEFAULT_GENES}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "genome.db"
    with GenomeStore(path) as store:
        for i in range(MIN_HISTORY):
            x = float(i % 7)
            features = {g.name: x for g in DEFAULT_GENES}
            store.on_trade_closed("default", x - 3.0, features, 1000 * (i + 1))
        store.on_trade_closed("banks", 1.0, {}, 5)
        assert store.current("default").version == 2
    return path


def test_show(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--db", str(db)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "default" and out["version"] == 2 and out["parent_version"] == 1
    assert out["reason"] == "learn" and out["closed_trades"] == MIN_HISTORY and out["learning"]
    assert set(out["params"]) == set(DEFAULTS) and out["metrics"]["trades"] == 30

    assert main(["show", "--family", "banks", "--db", str(db)]) == 0
    banks = json.loads(capsys.readouterr().out)
    assert banks["version"] == 1 and banks["params"] == DEFAULTS and not banks["learning"]


def test_history_table_and_json(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:6] == [
        "version", "status", "parent", "restored", "created_ts_ms", "reason",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["1", "active", "-", "-", "1000", "initial"]
    assert lines[2].split()[:6] == ["2", "active", "1", "-", str(1000 * MIN_HISTORY), "learn"]
    assert "band_k=" in lines[2]

    assert main(["history", "--db", str(db), "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in versions] == [1, 2]


def test_rollback_default_and_explicit(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollback", "--db", str(db), "--reason", "operator says so"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["version"] == 3 and new["parent_version"] == 2 and new["restored_from"] == 1
    assert new["params"] == DEFAULTS and new["reason"] == "operator says so"
    assert new["created_exchange_ts_ms"] == 1000 * MIN_HISTORY

    assert main(["rollback", "--db", str(db), "--to", "2"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["version"] == 4 and again["restored_from"] == 2
    assert again["reason"] == "manual_rollback"
    with GenomeStore(db) as store:
        assert store.current("default").params == store.version("default", 2).params
        assert len(store.history("default")) == 4


def test_errors_exit_2(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--family", "nope", "--db", str(db)]) == 2
    assert "unknown genome family 'nope'" in capsys.readouterr().err
    assert main(["rollback", "--to", "99", "--db", str(db)]) == 2
    assert "unknown genome version 99" in capsys.readouterr().err
    assert main(["rollback", "--family", "banks", "--db", str(db)]) == 2
    assert "has no parent" in capsys.readouterr().err
    missing = tmp_path / "missing.db"
    assert main(["history", "--db", str(missing)]) == 2
    assert "no genome db" in capsys.readouterr().err
    assert not missing.exists()
    assert main(["frobnicate"]) == 2
    capsys.readouterr()
    with GenomeStore(db) as store:  # failed commands wrote nothing
        assert len(store.history("default")) == 2
