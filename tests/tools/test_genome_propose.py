"""`chimera genome propose`: a finished study's trial becomes a candidate genome version
and a promotion in the approval queue; it is in force only after a human approves it
through the engine's governance. A study whose guards failed cannot be proposed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chimera_core.config import parse_config
from chimera_core.event_loop import Engine
from chimera_governance import approvals as apv
from chimera_governance.genome import CANDIDATE, PROMOTED, GenomeView
from chimera_governance.pipeline import GovernancePipeline
from tests.loopback import REPO

SAMPLE = REPO / "data" / "samples" / "sim_2885_5m.csv"


def _chimera(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)},
    )  # fmt: skip


def _study(tmp: Path, name: str, *guards: str) -> None:
    done = _chimera(
        "optimize", "--data", str(SAMPLE), "--study", name, "--research-dir", str(tmp / "r"),
        "--unit", "days", "--train", "10", "--test", "5", "--folds", "2", "--trials", "24",
        "--generation", "8", "--workers", "1", "--seed", "11", "--pbo-splits", "4",
        "--no-html", "--quiet", *guards, cwd=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("propose")
    _study(tmp, "lax", "--min-deflated-sharpe", "0", "--max-pbo", "1")
    _study(tmp, "strict", "--min-deflated-sharpe", "1", "--max-pbo", "1")
    return tmp


def test_a_proposed_trial_is_in_force_only_after_a_human_approves_it(studies: Path) -> None:
    state = studies / "paper"
    state.mkdir(exist_ok=True)
    db = state / "genome.db"
    done = _chimera(
        "genome", "propose", "lax", "--db", str(db), "--research-dir", str(studies / "r"),
        cwd=studies,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    with GenomeView(db) as view:
        cand = view.version("default", out["candidate_version"])
        assert cand.status == CANDIDATE and cand.source["study"] == "lax"
        assert view.current("default").version != cand.version  # not in force
    queued = apv.proposals(state / "approvals.db")
    assert [(p["proposal_id"], p["kind"], p["status"]) for p in queued] == [
        (out["proposal_id"], "genome_promote", "PENDING")
    ]
    # The engine's governance on the same state: approve through its control path.
    cfg = parse_config('[logging]\ndecisions = "none"\n')
    gov = GovernancePipeline(cfg, state)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    before = gov.genomes.current("default")
    ok, result = engine.control("approve", out["proposal_id"])
    assert ok, result
    now = gov.genomes.current("default")
    assert now.version > before.version and now.params == out["params"]
    assert gov.genomes.version("default", cand.version).status == PROMOTED
    gov.close()
    assert [p["status"] for p in apv.proposals(state / "approvals.db")] == ["APPROVED"]


def test_a_study_whose_guards_failed_cannot_be_proposed(studies: Path) -> None:
    db = studies / "strict-state" / "genome.db"
    db.parent.mkdir(exist_ok=True)
    done = _chimera(
        "genome", "propose", "strict", "--db", str(db), "--research-dir", str(studies / "r"),
        cwd=studies,
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot be proposed" in done.stderr and "deflated Sharpe" in done.stderr
    assert not (db.parent / "approvals.db").exists()


def test_a_trial_that_was_no_folds_pick_is_refused(studies: Path) -> None:
    db = studies / "pick-state" / "genome.db"
    db.parent.mkdir(exist_ok=True)
    done = _chimera(
        "genome", "propose", "lax", "0:999", "--db", str(db), "--research-dir",
        str(studies / "r"), cwd=studies,
    )  # fmt: skip
    assert done.returncode == 2 and "no fold's pick" in done.stderr
