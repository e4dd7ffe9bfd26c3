"""Studies end to end: the same seed gives the same trials on one process and a pool, an
interrupted `chimera optimize` resumes without losing or repeating a trial, `rerun`
reproduces a trial exactly (and says so when it cannot), NSGA-II picks on its Pareto front,
and the guards decide whether the candidate may be proposed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from tests.loopback import REPO
from tests.optimize.conftest import SAMPLE, trials_of, workload_of
from tools.backtest.strategies import get
from tools.optimize.executors import PoolExecutor, SerialExecutor
from tools.optimize.folds import FoldSpec
from tools.optimize.space import space_for
from tools.optimize.study import (
    GuardSpec,
    StudySpec,
    fold_study_name,
    open_storage,
    run_study,
    storage_path,
)

pytestmark = pytest.mark.timeout(300)
STAMP = {"code_version": "test", "data_sha256": ["x"]}


def _spec(loaded: Any, name: str, **kw: Any) -> StudySpec:
    base: dict[str, Any] = {
        "name": name, "strategy": "default", "data": tuple(r for r, _ in loaded),
        "space": space_for(get("default")),
        "folds": FoldSpec(scheme="rolling", unit="days", train=10, test=5, folds=2),
        "n_trials": 24, "generation": 8, "seed": 11, "guards": GuardSpec(pbo_splits=4),
    }  # fmt: skip
    base.update(kw)
    return StudySpec(**base)


def _run(tmp: Path, spec: StudySpec, w: Any, executor: Any) -> tuple[dict[str, Any], Path]:
    db = storage_path(tmp, spec.name)
    executor.start(w)
    try:
        result = run_study(spec, w, executor, open_storage(db), STAMP)
    finally:
        executor.close()
    result.pop("_series")
    result.pop("_timings")
    return result, db


def test_the_same_seed_gives_the_same_trials_in_one_process_and_on_a_pool(tmp_path, cfg, loaded):
    w = workload_of(cfg, loaded, folds=2)
    spec = _spec(loaded, "same")
    one, db1 = _run(tmp_path / "a", spec, w, SerialExecutor())
    two, db2 = _run(tmp_path / "b", spec, w, PoolExecutor(2, min_batch=2))
    t1, t2 = trials_of(db1, "same"), trials_of(db2, "same")
    assert t1 == t2
    assert sum(len(v) for v in t1.values()) == 2 * 24
    assert one == two
    # The out-of-sample curve is the picks' test windows chained: its return compounds
    # theirs, its trades are theirs.
    tests = [f["pick"]["test"] for f in one["folds"]]
    chained = float(np.prod([1.0 + t["total_return"] for t in tests]) - 1.0)
    assert one["oos"]["metrics"]["total_return"] == pytest.approx(chained, rel=1e-9, abs=1e-12)
    assert one["oos"]["metrics"]["trades"] == sum(t["trades"] for t in tests)
    assert one["oos"]["bars"] == sum(t["bars"] for t in tests)
    # A different seed draws other parameters (so the equality above says something).
    _other, db3 = _run(tmp_path / "c", _spec(loaded, "same", seed=12), w, SerialExecutor())
    assert trials_of(db3, "same") != t1


def _optimize(research: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "optimize", "--data", str(SAMPLE),
         "--unit", "days", "--train", "10", "--test", "5", "--folds", "2",
         "--trials", "100", "--generation", "8", "--seed", "5", "--workers", "1",
         "--study", "resume", "--research-dir", str(research), "--pbo-splits", "4",
         "--no-html", "--quiet", *extra],
        cwd=research, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("select count(*) from trials").fetchone()[0])
    except sqlite3.OperationalError:  # tables not made yet
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The resume test's command run once without interruption: the trials to expect."""
    research = tmp_path_factory.mktemp("clean")
    ref = _optimize(research)
    _, err = ref.communicate(timeout=240)
    assert ref.returncode == 0, err[-3000:]
    return trials_of(research / "resume.db", "resume")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_an_interrupted_study_resumes_with_no_trial_lost_or_repeated(tmp_path, sig, uninterrupted):
    research = tmp_path / "r"
    research.mkdir()
    db = research / "resume.db"
    proc = _optimize(research)
    deadline = time.monotonic() + 120
    while _stored(db) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    before = _stored(db)
    assert 40 <= before < 200, f"stopped at {before} trials: not mid-study"
    done = _optimize(research)
    out, err = done.communicate(timeout=240)
    assert done.returncode == 0, err[-3000:]
    resumed = trials_of(db, "resume")
    for name, trials in resumed.items():
        assert [t[0] for t in trials] == list(range(100)), name  # none lost, none twice
    # The same trials as the run that was never interrupted, parameters and values.
    assert resumed == uninterrupted
    report = json.loads(Path(out.strip().splitlines()[-1]).read_text())
    assert report["candidate"]["ref"].startswith("1:")


def test_rerun_reproduces_a_trial_exactly_and_fails_when_it_does_not(tmp_path, cfg, loaded):
    w = workload_of(cfg, loaded, folds=2)
    from chimera_core.config import default_config_path

    spec = _spec(loaded, "again", config=str(Path(default_config_path() or "").resolve())
                 if default_config_path() else "",
                 settings_sha256=_settings_sha(cfg, loaded))  # fmt: skip
    result, db = _run(tmp_path, spec, w, SerialExecutor())
    pick = result["candidate"]["ref"]

    def rerun(ref: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tools.cli", "optimize", "rerun", "again", ref,
             "--research-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=200, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    ok = rerun(pick)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "train metrics: identical" in ok.stdout and "test metrics: identical" in ok.stdout
    # Alter one stored metric of trial 0:3: rerun must say which and exit 1.
    with sqlite3.connect(db) as conn:
        (sid,) = conn.execute(
            "select study_id from studies where study_name = ?", (fold_study_name("again", 0),)
        ).fetchone()
        (tid,) = conn.execute(
            "select trial_id from trials where study_id = ? and number = 3", (sid,)
        ).fetchone()
        (raw,) = conn.execute(
            "select value_json from trial_user_attributes where trial_id = ? and key = 'run'",
            (tid,),
        ).fetchone()
        run = json.loads(raw)
        run["train"]["final_equity"] += 0.01
        conn.execute(
            "update trial_user_attributes set value_json = ? where trial_id = ? and key = 'run'",
            (json.dumps(run), tid),
        )
    bad = rerun("0:3")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "final_equity stored" in bad.stdout
    missing = rerun("0:999")
    assert missing.returncode == 2 and "fold 0 has trials 0..23" in missing.stderr


def _settings_sha(cfg: Any, loaded: Any) -> str:
    from tools.optimize.inputs import build_workload

    return build_workload(cfg, loaded, "default", FoldSpec(unit="days", train=10, test=5))[1]


def test_nsga2_picks_the_pareto_trial_with_the_best_pick_metric(tmp_path, cfg, loaded):
    w = workload_of(cfg, loaded, folds=1)
    one_fold = FoldSpec(scheme="rolling", unit="days", train=10, test=5, folds=1)
    spec = _spec(loaded, "pareto", sampler="nsga2", population=8, n_trials=24, folds=one_fold)
    result, db = _run(tmp_path, spec, w, SerialExecutor())
    study = optuna.load_study(study_name=fold_study_name("pareto", 0), storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.values is not None]
    # Independently: maximise return, minimise drawdown and turnover.
    pts = np.array([[t.values[0], -t.values[1], -t.values[2]] for t in done])
    front = [
        t.number for i, t in enumerate(done)
        if not any((pts[j] >= pts[i]).all() and (pts[j] > pts[i]).any() for j in range(len(done)))
    ]  # fmt: skip
    assert sorted(front) == result["folds"][0]["pareto"]

    def sharpe(n: int) -> float:
        return study.trials[n].user_attrs["run"]["train"]["sharpe"] or 0.0

    best = max(front, key=lambda n: (sharpe(n), -n))
    assert result["candidate"]["trial"] == best


@pytest.mark.parametrize(
    ("guards", "proposable", "reason"),
    [
        (GuardSpec(min_deflated_sharpe=0.0, max_pbo=1.0, pbo_splits=4), True, None),
        (GuardSpec(min_deflated_sharpe=1.0, max_pbo=1.0, pbo_splits=4), False, "deflated Sharpe"),
        (GuardSpec(min_deflated_sharpe=0.0, max_pbo=0.0, pbo_splits=4), None, "PBO"),
    ],
)
def test_a_candidate_failing_the_guards_is_stored_as_not_proposable(
    tmp_path, cfg, loaded, guards, proposable, reason
):
    w = workload_of(cfg, loaded, folds=2)
    result, db = _run(tmp_path, _spec(loaded, "guarded", guards=guards), w, SerialExecutor())
    stored = optuna.load_study(study_name="guarded", storage=f"sqlite:///{db}").user_attrs
    assert stored["proposable"] == result["proposable"]
    assert stored["result"]["candidate"]["ref"] == result["candidate"]["ref"]
    if proposable is not None:
        assert result["proposable"] is proposable
    if reason is None:
        assert result["not_proposable_because"] == []
    elif reason == "PBO" and result["guards"]["pbo"][-1]["pbo"] == 0.0:
        assert result["proposable"]  # a PBO of exactly 0 passes max_pbo = 0
    else:
        assert result["proposable"] is False
        assert any(reason in r for r in result["not_proposable_because"])
