"""Shared inputs for the optimizer's tests: the shipped 5-minute sample, cut small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.loopback import REPO

SAMPLE = REPO / "data" / "samples" / "sim_2885_5m.csv"
# Sized so the default strategy trades on this sample (genome bounds, log-scaled threshold).
FOLDS = {"scheme": "rolling", "unit": "days", "train": 10, "test": 5}


@pytest.fixture(scope="session")
def loaded() -> list[tuple[Any, Any]]:
    from tools.optimize.inputs import load_instruments

    return load_instruments([SAMPLE], "NSE_CM")


@pytest.fixture(scope="session")
def cfg() -> Any:
    from chimera_core.config import load_config

    return load_config(None)


def workload_of(cfg: Any, loaded: Any, strategy: str = "default", **folds: Any) -> Any:
    from tools.optimize.folds import FoldSpec
    from tools.optimize.inputs import build_workload

    w, _ = build_workload(cfg, loaded, strategy, FoldSpec(**{**FOLDS, **folds}))
    return w


def trials_of(db: Path, name: str) -> dict[str, list[tuple[int, str, dict[str, Any], Any]]]:
    """Every fold study's trials in the file: (number, state, params, values)."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    out: dict[str, list[tuple[int, str, dict[str, Any], Any]]] = {}
    for s in optuna.get_all_study_summaries(storage):
        if s.study_name == name:
            continue
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        out[s.study_name] = [
            (t.number, t.state.name, dict(t.params), t.values)
            for t in study.get_trials(deepcopy=False)
        ]
    return out
