"""The stress report: ``stress.json`` (deterministic: the same inputs and seed give the
same bytes) and ``stress.html`` (plotly: fan chart of the bootstrap equity paths with
percentile bands, the max-drawdown histogram, the scenario table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tools.backtest.report import result_json
from tools.stress.run import FAN_LEVELS


def write_stress_report(
    out_dir: Path,
    result: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None,
    html: bool = True,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "stress.json"}
    paths["json"].write_bytes(result_json(result) + b"\n")
    if html:
        paths["html"] = out_dir / "stress.html"
        _html(paths["html"], result, arrays or {})
    return paths


def _html(path: Path, result: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    import plotly.graph_objects as go  # report only
    from plotly.subplots import make_subplots

    scenarios: Sequence[Mapping[str, Any]] = result.get("scenarios") or []
    account = bool(scenarios) and "instruments" in scenarios[0]  # several instruments
    specs: list[list[dict[str, str]]] = [[{"type": "xy"}], [{"type": "xy"}]]
    titles = ["Bootstrap equity paths (percentile bands)", "Max drawdown over the paths"]
    if scenarios:
        specs.append([{"type": "table"}])
        titles.append("Scenarios (one account)" if account else "Scenarios")
    if account:
        specs.append([{"type": "table"}])
        titles.append("Scenarios by instrument")
    fig = make_subplots(
        rows=len(specs), cols=1, specs=specs, subplot_titles=titles, vertical_spacing=0.08
    )
    fan = arrays.get("fan")
    if fan is not None:
        x = np.arange(1, fan.shape[1] + 1)
        for row in arrays.get("fan_sample", np.empty((0, 0))):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=row,
                    mode="lines",
                    showlegend=False,
                    hoverinfo="skip",
                    line={"width": 0.5, "color": "rgba(120,120,120,0.25)"},
                ),
                row=1,
                col=1,
            )
        lo, mid, hi = 0, len(FAN_LEVELS) // 2, len(FAN_LEVELS) - 1
        for a, b, colour in (
            (lo, hi, "rgba(31,119,180,0.15)"),
            (1, hi - 1, "rgba(31,119,180,0.3)"),
        ):
            fig.add_trace(
                go.Scatter(x=x, y=fan[b], mode="lines", line={"width": 0}, showlegend=False),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=fan[a],
                    mode="lines",
                    line={"width": 0},
                    fill="tonexty",
                    fillcolor=colour,
                    name=f"p{FAN_LEVELS[a]:g}-p{FAN_LEVELS[b]:g}",
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=x, y=fan[mid], mode="lines", name="median", line={"color": "rgb(31,119,180)"}
            ),
            row=1,
            col=1,
        )
    dd = arrays.get("drawdowns")
    if dd is not None:
        fig.add_trace(go.Histogram(x=dd, name="returns bootstrap", opacity=0.7), row=2, col=1)
    tdd = arrays.get("trade_drawdowns")
    if tdd is not None:
        fig.add_trace(go.Histogram(x=tdd, name="trade order", opacity=0.7), row=2, col=1)
    if scenarios:
        cols = [
            "scenario",
            "verdict",
            "exits",
            "caps",
            "daily loss",
            "journal",
            "worst day",
            "notes",
        ]
        cells = [
            [s["name"] for s in scenarios],
            [s["verdict"] for s in scenarios],
            *[
                [_mark(s["checks"].get(k)) for s in scenarios]
                for k in ("exits_worked", "caps_held", "loss_within_daily_limit", "journal_ok")
            ],
            [f"{s['worst_day_loss_pct']:.3%}" for s in scenarios],
            ["; ".join(s.get("problems", []))[:200] for s in scenarios],
        ]
        if account:
            cols[1:1] = ["symbol"]
            cells[1:1] = [[s["symbol"] for s in scenarios]]
            for k, label in (("cluster_cap_held", "cluster cap"), ("var_limit_held", "VaR")):
                if any(k in s["checks"] for s in scenarios):
                    cols.insert(-2, label)
                    cells.insert(-2, [_mark(s["checks"].get(k)) for s in scenarios])
        fig.add_trace(go.Table(header={"values": cols}, cells={"values": cells}), row=3, col=1)
    if account:
        fig.add_trace(_instrument_table(go, scenarios), row=4, col=1)
    fig.update_layout(height=420 * len(specs), barmode="overlay", title="chimera stress")
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _instrument_table(go: Any, scenarios: Sequence[Mapping[str, Any]]) -> Any:
    """One row per scenario and instrument: what the transform changed, what it traded."""
    cols = ["scenario", "instrument", "bars changed", "trades", "P&L", "max qty",
            "max value", "exits", "caps"]  # fmt: skip
    rows = [
        (s["name"], t, str(d["changed_bars"]), str(d["trades"]), f"{d['pnl']:,.0f}",
         str(d["max_position_qty"]), f"{d['max_position_value']:,.0f}",
         _mark(d["exits_worked"]), _mark(d["caps_held"]))
        for s in scenarios
        for t, d in s["instruments"].items()
    ]  # fmt: skip
    cells = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in cols]
    return go.Table(header={"values": cols}, cells={"values": cells})


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")
