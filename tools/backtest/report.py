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


def _write_trades(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        else:
            fh.write("no trades\n")


def _run_files(out_dir: Path, result: Mapping[str, Any], s: Mapping[str, Any]) -> dict[str, Path]:
    """One N-instrument run's result.json, trades.csv and equity.csv, laid out as a
    one-instrument report's (``chimera stress --backtest DIR`` reads them): equity.csv
    holds ts_ms, the gross exposure / equity (where one instrument has its close), equity."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (("json", "result.json"), ("trades", "trades.csv"), ("equity", "equity.csv"))
    paths = {n: out_dir / f for n, f in names}
    paths["json"].write_bytes(result_json(result) + b"\n")
    _write_trades(paths["trades"], [clean(dict(t)) for t in result["trades"]])
    with paths["equity"].open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["ts_ms", "gross_exposure", "equity"])
        for t, g, e in zip(s["ts_ms"].tolist(), s["gross"].tolist(), s["equity"].tolist(),
                           strict=True):  # fmt: skip
            w.writerow([t, clean(g), clean(e)])
    return paths


def write_portfolio_report(
    out_dir: Path,
    result: Mapping[str, Any],
    series: Mapping[str, Mapping[str, Any]],
    html: bool = True,
) -> dict[str, Path]:
    """An N-instrument run's files. ``series`` is keyed by run ("with_rules",
    "without_rules"). One run: result.json, trades.csv (every round trip, with its token),
    equity.csv (ts_ms, gross exposure / equity, equity) and report.html. Both runs
    (``result`` holds them under the same keys): result.json with both, report.html with
    them side by side (equity, gross exposure against the cluster cap, P&L per instrument,
    the vetoes by rule, the metrics), and each run's own files in ``DIR/<run>/``."""
    runs = {k: result[k] for k in series if k in result}
    if runs:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "result.json"}
        paths["json"].write_bytes(result_json(result) + b"\n")
        for k, r in runs.items():
            paths[k] = _run_files(out_dir / k, r, series[k])["json"].parent
    else:
        (k,) = series
        runs = {k: result}
        paths = _run_files(out_dir, result, series[k])
    if html:
        paths["html"] = out_dir / "report.html"
        _portfolio_html(paths["html"], runs, series)
    return paths


_RUN_NAMES = {"with_rules": "portfolio rules on", "without_rules": "portfolio rules off"}
_SHOWN = ("total_return", "sharpe", "max_drawdown", "profit_factor", "win_rate", "trades",
          "charges", "exposure")  # fmt: skip


def _cell(v: Any) -> str:
    import html as html_

    v = clean(v)
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.2f}"
    return html_.escape("" if v is None else str(v))


def _table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th>{_cell(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _portfolio_html(
    path: Path, runs: Mapping[str, Mapping[str, Any]], series: Mapping[str, Mapping[str, Any]]
) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [_RUN_NAMES.get(k, k) for k in runs]
    fig = make_subplots(
        rows=3, cols=1, vertical_spacing=0.08,
        subplot_titles=["Account equity", "Gross exposure / equity", "P&L per instrument"],
    )  # fmt: skip
    for k, name in zip(runs, names, strict=True):
        when = series[k]["ts_ms"].astype("datetime64[ms]")
        fig.add_trace(go.Scatter(x=when, y=series[k]["equity"], name=f"equity, {name}"), 1, 1)
        fig.add_trace(go.Scatter(x=when, y=series[k]["gross"], name=f"gross, {name}"), 2, 1)
        per = runs[k]["instruments"]
        fig.add_trace(go.Bar(x=list(per), y=[v["pnl"] for v in per.values()], name=name), 3, 1)
    first = next(iter(runs.values()))
    cap = first["exposure"]["cluster_cap"]
    if cap is not None:
        fig.add_hline(y=cap, line_dash="dot", annotation_text="cluster cap", row=2, col=1)
    fig.update_layout(height=1000, barmode="group", title="portfolio backtest")
    keys = list(runs)
    metric_rows = [[m, *(runs[k]["metrics"].get(m) for k in keys)] for m in _SHOWN]
    metric_rows += [[f"exposure {x}", *(runs[k]["exposure"][x] for k in keys)]
                    for x in ("max_gross", "mean_gross")]  # fmt: skip
    rules = sorted({r for k in keys for r in runs[k]["vetoes"]})
    veto_rows = [[r, *(runs[k]["vetoes"].get(r, 0) for k in keys)] for r in rules]
    inst_head = ["token", "symbol"] + [
        f"{c}, {n}" for n in names for c in ("trades", "P&L", "sharpe", "max drawdown")
    ]
    inst_rows = []
    for token, v in first["instruments"].items():
        row: list[Any] = [token, v["symbol"]]
        for k in keys:
            x = runs[k]["instruments"][token]
            row += [x["trades"], x["pnl"], x["metrics"]["sharpe"], x["metrics"]["max_drawdown"]]
        inst_rows.append(row)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>portfolio backtest</title>"
        "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;"
        "margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "</style></head><body><h1>Portfolio backtest: "
        + _cell(first["strategy"]) + f", {len(first['instruments'])} instruments, one account"
        "</h1><h2>Account</h2>" + _table(["metric", *names], metric_rows)
        + "<h2>Vetoes by rule (entry attempts)</h2>"
        + "<p>Portfolio rules: " + _cell(", ".join(sorted(first["portfolio_vetoes"])) or "none")
        + " (run with the rules on).</p>" + _table(["rule", *names], veto_rows)
        + "<h2>Per instrument</h2>" + _table(inst_head, inst_rows)
        + fig.to_html(include_plotlyjs=True, full_html=False) + "</body></html>"
    )  # fmt: skip
    path.write_text(page, encoding="utf-8")
