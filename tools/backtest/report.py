"""A backtest's results on disk: ``result.json`` (settings, input hash, code version,
metrics, trades: the same inputs give byte-identical JSON), ``trades.csv``,
``equity.csv`` and ``report.html`` (plotly: price with the trades, equity and drawdown,
and the energy / z / band panel in event mode)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

SIGNIFICANT = 12  # digits kept in JSON floats: stable across platforms and runs


def clean(value: Any) -> Any:
    """JSON-ready and deterministic: floats to ``SIGNIFICANT`` digits, NaN/inf to None,
    numpy scalars and arrays to Python, mappings with their keys as strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if not math.isfinite(f):
            return None
        return float(f"{f:.{SIGNIFICANT}g}")
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: clean(getattr(value, k)) for k in value.__dataclass_fields__}
    raise TypeError(f"cannot put {type(value).__name__} in a backtest result")


def result_json(result: Mapping[str, Any]) -> bytes:
    return orjson.dumps(clean(result), option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def write_report(
    out_dir: Path,
    result: Mapping[str, Any],
    trades: Sequence[Mapping[str, Any]],
    ts_ms: npt.NDArray[np.int64],
    close: npt.NDArray[np.float64],
    equity: npt.NDArray[np.float64],
    panel: Mapping[str, npt.NDArray[np.float64]] | None = None,
    band_k: float = 2.0,
    html: bool = True,
) -> dict[str, Path]:
    """Write the files (see the module docstring); returns them by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "result.json",
        "trades": out_dir / "trades.csv",
        "equity": out_dir / "equity.csv",
    }
    paths["json"].write_bytes(result_json(result) + b"\n")
    rows = [clean(dict(t)) for t in trades]
    with paths["trades"].open("w", newline="", encoding="utf-8") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        else:
            fh.write("no trades\n")
    with paths["equity"].open("w", newline="", encoding="utf-8") as fh:
        writer_ = csv.writer(fh)
        writer_.writerow(["ts_ms", "close", "equity"])
        for t, c, e in zip(ts_ms.tolist(), close.tolist(), equity.tolist(), strict=True):
            writer_.writerow([t, clean(c), clean(e)])
    if html:
        paths["html"] = out_dir / "report.html"
        _html(paths["html"], result, rows, ts_ms, close, equity, panel, band_k)
    return paths


def _html(
    path: Path,
    result: Mapping[str, Any],
    trades: Sequence[Mapping[str, Any]],
    ts_ms: npt.NDArray[np.int64],
    close: npt.NDArray[np.float64],
    equity: npt.NDArray[np.float64],
    panel: Mapping[str, npt.NDArray[np.float64]] | None,
    band_k: float,
) -> None:
    import plotly.graph_objects as go  # report only: never imported by the hot path
    from plotly.subplots import make_subplots

    when = ts_ms.astype("datetime64[ms]")
    rows = 4 if panel else 3
    titles = ["Price and trades", "Equity", "Drawdown"] + (["Energy, z"] if panel else [])
    fig = make_subplots(
        rows=rows, cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.04
    )
    fig.add_trace(go.Scatter(x=when, y=close, name="close", line={"width": 1}), row=1, col=1)
    if panel:
        mean, std = panel["band_mean"], panel["band_std"]
        for sign, name in ((1, "band upper"), (-1, "band lower")):
            fig.add_trace(
                go.Scatter(
                    x=when,
                    y=mean + sign * band_k * std,
                    name=name,
                    line={"width": 0.5, "dash": "dot"},
                ),
                row=1,
                col=1,
            )
    for side, symbol, colour in (
        ("LONG", "triangle-up", "green"),
        ("SHORT", "triangle-down", "red"),
    ):
        picked = [t for t in trades if t["side"] == side]
        if picked:
            fig.add_trace(
                go.Scatter(
                    x=np.asarray([t["entry_ts_ms"] for t in picked], dtype="datetime64[ms]"),
                    y=[t["entry_price"] for t in picked],
                    mode="markers",
                    name=f"{side} entry",
                    marker={"symbol": symbol, "color": colour, "size": 8},
                ),
                row=1,
                col=1,
            )
            fig.add_trace(
                go.Scatter(
                    x=np.asarray([t["exit_ts_ms"] for t in picked], dtype="datetime64[ms]"),
                    y=[t["exit_price"] for t in picked],
                    mode="markers",
                    name=f"{side} exit",
                    marker={"symbol": "x", "color": colour, "size": 7},
                ),
                row=1,
                col=1,
            )
    fig.add_trace(go.Scatter(x=when, y=equity, name="equity"), row=2, col=1)
    peak = np.maximum.accumulate(np.where(np.isfinite(equity), equity, -np.inf))
    drawdown = np.where(peak > 0, equity / peak - 1.0, 0.0)
    fig.add_trace(go.Scatter(x=when, y=drawdown, name="drawdown", fill="tozeroy"), row=3, col=1)
    if panel:
        fig.add_trace(go.Scatter(x=when, y=panel["energy"], name="energy"), row=4, col=1)
        fig.add_trace(go.Scatter(x=when, y=panel["z"], name="z"), row=4, col=1)
    metrics = result.get("metrics", {})
    title = " · ".join(
        f"{k} {clean(v)}" for k, v in list(metrics.items())[:6] if not isinstance(v, dict)
    )
    fig.update_layout(height=300 * rows, title=title or "backtest", showlegend=True)
    # Self-contained: a report opens offline, on a machine with no route to a CDN.
    fig.write_html(path, include_plotlyjs=True, full_html=True)
