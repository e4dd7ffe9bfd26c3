"""A study's report: ``report.json`` (the stored result, parameter importance) and
``report.html`` (plotly, offline: the walk-forward equity, in-sample vs out-of-sample per
fold, the Pareto front or the search history, parameter importance, the guards)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tools.backtest.report import clean


def importance(storage: Any, study_name: str, objectives: list[str]) -> dict[str, Any]:
    """Each searched parameter's importance to the first objective in the fold study
    ``study_name`` (Optuna's PED-ANOVA evaluator: fANOVA and mean decrease in impurity
    need scikit-learn, which Chimera does not install). ``{"error": ...}`` when there is
    too little to say (fewer than a few completed trials, one value everywhere)."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = get_param_importances(
                study,
                evaluator=PedAnovaImportanceEvaluator(),
                target=lambda t: t.values[0],
                normalize=True,
            )
        return {
            "study": study_name, "objective": objectives[0], "evaluator": "ped_anova",
            "importance": {k: float(v) for k, v in values.items()},
        }  # fmt: skip
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {"study": study_name, "objective": objectives[0], "error": str(exc)}


def trial_points(storage: Any, study_name: str) -> list[dict[str, Any]]:
    """Every completed trial of a fold study: number, objective values, train metrics."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        out.append({"trial": t.number, "values": list(t.values),
                    "train": t.user_attrs.get("run", {}).get("train", {})})  # fmt: skip
    return out


def write_report(
    out_dir: Path,
    result: Mapping[str, Any],
    series: Mapping[str, Any],
    extra: Mapping[str, Any],
    html: bool = True,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = clean({**{k: v for k, v in result.items() if not k.startswith("_")}, **extra})
    paths = {"json": out_dir / "report.json"}
    paths["json"].write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    if html:
        paths["html"] = out_dir / "report.html"
        _html(paths["html"], doc, series)
    return paths


def _html(path: Path, doc: Mapping[str, Any], series: Mapping[str, Any]) -> None:
    import plotly.graph_objects as go  # report only: never imported by the hot path
    from plotly.subplots import make_subplots

    folds = doc["folds"]
    multi = len(doc["objectives"]) > 1
    fig = make_subplots(
        rows=3, cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}], [{}, {"type": "table"}]],
        subplot_titles=(
            "walk-forward out-of-sample equity (each fold's pick on its test window)",
            "in-sample (train) vs out-of-sample (test) Sharpe of each fold's pick",
            "Pareto front (last fold, train)" if multi else "search history (last fold, train)",
            "parameter importance (last fold, PED-ANOVA)",
            "overfitting guards",
        ),
        vertical_spacing=0.09,
    )  # fmt: skip
    ts = np.asarray(series.get("oos_ts_ms", []), dtype="datetime64[ms]")
    fig.add_trace(go.Scatter(x=ts, y=series.get("oos_equity", []), name="OOS equity"), 1, 1)
    for f in folds[1:]:
        fig.add_vline(x=int(f["test_ts_ms"][0]), line_dash="dot", line_color="grey", row=1, col=1)
    names = [f"fold {f['fold']}" for f in folds]
    fig.add_trace(go.Bar(x=names, y=[f["pick"]["train"].get("sharpe") for f in folds],
                         name="train Sharpe"), 2, 1)  # fmt: skip
    fig.add_trace(go.Bar(x=names, y=[f["pick"]["test"].get("sharpe") for f in folds],
                         name="test Sharpe"), 2, 1)  # fmt: skip
    points = doc.get("trials_last_fold", [])
    if multi and points:
        front = set(folds[-1].get("pareto", []))
        fig.add_trace(
            go.Scatter(
                x=[p["values"][1] for p in points], y=[p["values"][0] for p in points],
                mode="markers", name="trials",
                marker={"color": [p["values"][2] for p in points], "colorscale": "Viridis",
                        "symbol": ["star" if p["trial"] in front else "circle" for p in points],
                        "size": [12 if p["trial"] in front else 6 for p in points],
                        "colorbar": {"title": "turnover", "x": 0.45, "len": 0.3, "y": 0.5}},
                text=[f"trial {p['trial']}" for p in points],
            ),
            3, 1,
        )  # fmt: skip
        fig.update_xaxes(title_text="max drawdown", row=3, col=1)
        fig.update_yaxes(title_text="total return", row=3, col=1)
    elif points:
        fig.add_trace(
            go.Scatter(x=[p["trial"] for p in points], y=[p["values"][0] for p in points],
                       mode="markers", name=doc["objectives"][0]),
            3, 1,
        )  # fmt: skip
        fig.update_xaxes(title_text="trial", row=3, col=1)
    imp = doc.get("importance", {}).get("importance") or {}
    fig.add_trace(go.Bar(x=list(imp), y=list(imp.values()), name="importance"), 2, 2)
    g = doc["guards"]
    dsr = g["deflated_sharpe"]
    rows = [
        ["deflated Sharpe (P[SR > E max SR])", _fmt(dsr.get("value")),
         f">= {g['min_deflated_sharpe']}", _verdict(dsr.get("passed"))],
        *[[f"PBO fold {p['fold']} ({p['n_trials']} trials)", _fmt(p.get("pbo")),
           f"<= {g['max_pbo']}", _verdict(p.get("passed"))] for p in g["pbo"]],
        ["candidate " + doc["candidate"]["ref"], "",
         "", "proposable" if doc["proposable"] else "NOT proposable"],
    ]  # fmt: skip
    fig.add_trace(
        go.Table(header={"values": ["guard", "value", "threshold", "verdict"]},
                 cells={"values": [list(c) for c in zip(*rows, strict=True)]}),
        3, 2,
    )  # fmt: skip
    fig.update_layout(
        height=1300, title=f"chimera optimize · {doc['study']} · {doc['strategy']} · "
        f"{doc['sampler']} · {doc['n_trials_per_fold']} trials x {len(folds)} folds",
        barmode="group",
    )  # fmt: skip
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def _verdict(passed: Any) -> str:
    return "not computed" if passed is None else ("pass" if passed else "FAIL")
