"""Plotly figures for the cortex pages (pure functions of a snapshot: testable offline)."""

from __future__ import annotations

import bisect
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from chimera_core.contracts import Decision
from cortex.state import LATENCY_BOUNDS_NS, LAYERS, SymbolState

LAYER_TITLES = {
    "physics": "Physics",
    "drift": "Drift",
    "capital": "Capital",
    "meta_risk": "Meta-risk",
    "genome": "Genome",
    "state": "State machine",
    "execution": "Execution",
}
IST = timezone(timedelta(hours=5, minutes=30))
MARKER_STYLE = {
    "ENTRY": ("triangle-up", "#16a34a"),
    "EXIT": ("x", "#2563eb"),
    "VETO": ("circle-x", "#dc2626"),
    "APPROVAL": ("diamond", "#d97706"),
    "HALT": ("square", "#000000"),
}


def _num(x: float | None, fmt: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return format(x, fmt)


def layer_outputs(d: Decision) -> dict[str, str]:
    """Each layer's latest output in a few words (the neural map's node labels)."""
    p = d.physics
    out = {
        "physics": f"E {_num(p.energy)} · z {_num(p.z)}<br>{p.structure.value} · {p.band.value}",
        "drift": "–",
        "capital": "–",
        "meta_risk": "not consulted",
        "genome": "–",
        "state": d.state + (f"<br>{d.transitions[-1].event}" if d.transitions else ""),
        "execution": "no broker",
    }
    if d.drift is not None:
        out["drift"] = f"{d.drift.regime.value}<br>score {_num(d.drift.drift_score, '.2f')}"
    if d.capital is not None:
        out["capital"] = f"{_num(d.capital.target_leverage, '.2f')}x · qty {d.capital.qty}"
    if d.meta_risk is not None:
        mr = d.meta_risk
        out["meta_risk"] = (
            "ALLOWED" if mr.allowed else "VETO " + ",".join(v.rule for v in mr.vetoes)
        ) + (" · HALT" if mr.halt else "")
    if d.genome is not None:
        g = d.genome
        out["genome"] = f"{g.family} v{g.version}<br>{g.closed_trades} trades"
    if d.execution is not None:
        ex = d.execution
        out["execution"] = f"pos {ex.position_qty} · open {ex.open_orders}"
    if d.approval is not None and d.approval.required:
        out["state"] += f"<br>approval {d.approval.status}"
    return out


def neural_map(d: Decision, name: str = "") -> go.Figure:
    """The decision hierarchy as a chain of nodes, top to bottom, sized by influence;
    ``name`` (the instrument's, when known) goes beside the token in the title."""
    labels = layer_outputs(d)
    weights = [d.influence.get(layer, 0.0) for layer in LAYERS]
    colors = []
    for layer in LAYERS:
        if layer == "meta_risk" and d.meta_risk is not None and not d.meta_risk.allowed:
            colors.append("#dc2626")
        elif layer == "state" and d.state == "HALT":
            colors.append("#111827")
        elif layer in d.influence:
            colors.append("#2563eb")
        else:
            colors.append("#9ca3af")
    who = f"{d.token} · {name}" if name else d.token
    return _chain(labels, weights, colors, f"{who} · seq {d.seq} · confidence {d.confidence:.2f}")


def neural_map_waiting() -> go.Figure:
    """The same chain before the first decision: every layer grey, nothing decided. Drawn
    while the page waits, so the browser has plotly loaded when the first one comes."""
    labels = dict.fromkeys(LAYERS, "–")
    return _chain(
        labels, [0.0] * len(LAYERS), ["#e5e7eb"] * len(LAYERS), "waiting for the first decision"
    )


def _chain(
    labels: dict[str, str], weights: list[float], colors: list[str], title: str
) -> go.Figure:
    n = len(LAYERS)
    ys = [n - 1 - i for i in range(n)]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0] * n,
            y=ys,
            mode="lines",
            line={"color": "#d1d5db", "width": 3},
            hoverinfo="skip",
            showlegend=False,
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0] * n,
            y=ys,
            mode="markers+text",
            marker={"size": [22 + 50 * w for w in weights], "color": colors},
            text=[f"<b>{LAYER_TITLES[layer]}</b>" for layer in LAYERS],
            textposition="middle left",
            hovertext=[f"{LAYER_TITLES[x]}: {labels[x]}" for x in LAYERS],
            hoverinfo="text",
            showlegend=False,
        )
    )
    for layer, y, w in zip(LAYERS, ys, weights, strict=True):
        fig.add_annotation(
            x=0.35,
            y=y,
            xanchor="left",
            showarrow=False,
            align="left",
            text=f"{labels[layer]}  <i>(w {w:.2f})</i>",
        )
    fig.update_layout(
        height=460,
        margin={"l": 120, "r": 10, "t": 30, "b": 10},
        xaxis={"visible": False, "range": [-1.2, 2.6]},
        yaxis={"visible": False, "range": [-0.6, n - 0.4]},
        title=title,
    )
    return fig


def market(s: SymbolState, band_k: float) -> go.Figure:
    """Price bars with gaussian bands and markers; energy and z below."""
    bars = list(s.bars)
    starts = [b.start_ms for b in bars]
    # Category axis: nights and weekends take no space; one slot per bar.
    x = [_ist(ms) for ms in starts]
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, row_heights=[0.6, 0.2, 0.2], vertical_spacing=0.03
    )
    fig.add_trace(
        go.Candlestick(
            x=x,
            open=[b.open for b in bars],
            high=[b.high for b in bars],
            low=[b.low for b in bars],
            close=[b.close for b in bars],
            name="price",
        ),
        row=1,
        col=1,
    )
    mean = [b.band_mean for b in bars]
    fig.add_trace(go.Scatter(x=x, y=mean, name="band mean", line={"color": "#6b7280"}), 1, 1)
    for sign, name in ((1, "upper band"), (-1, "lower band")):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[b.band_mean + sign * band_k * b.band_std for b in bars],
                name=name,
                line={"color": "#9ca3af", "dash": "dot"},
            ),
            1,
            1,
        )
    first = starts[0] if starts else 0
    for kind, (symbol, color) in MARKER_STYLE.items():
        ms = [m for m in s.markers if m.kind == kind and m.ts_ms >= first]
        if ms:
            fig.add_trace(
                go.Scatter(
                    x=[x[bisect.bisect_right(starts, m.ts_ms) - 1] for m in ms],
                    y=[m.price for m in ms],
                    mode="markers",
                    name=kind.lower(),
                    marker={"symbol": symbol, "size": 11, "color": color},
                    hovertext=[m.label for m in ms],
                ),
                1,
                1,
            )
    fig.add_trace(go.Bar(x=x, y=[b.energy for b in bars], name="energy"), 2, 1)
    fig.add_trace(go.Scatter(x=x, y=[b.z for b in bars], name="z"), 3, 1)
    fig.update_layout(height=620, margin={"t": 20, "b": 10}, xaxis_rangeslider_visible=False)
    fig.update_yaxes(title_text="price", row=1, col=1)
    fig.update_yaxes(title_text="energy", row=2, col=1)
    fig.update_yaxes(title_text="z", row=3, col=1)
    fig.update_xaxes(type="category", nticks=12)
    fig.update_xaxes(title_text="bar start (IST)", row=3, col=1)
    return fig


def _ist(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, IST).strftime("%m-%d %H:%M:%S")


def latency_histogram(buckets: list[int]) -> go.Figure:
    names = [f"≤{b / 1000:g}µs" for b in LATENCY_BOUNDS_NS] + [">10ms"]
    fig = go.Figure(go.Bar(x=names, y=buckets, marker_color="#2563eb"))
    fig.update_layout(
        height=300, margin={"t": 30, "b": 10}, title="hot-path decision latency (count)"
    )
    return fig


def step_timeline(series: dict[str, list[tuple[int, Any]]], title: str) -> go.Figure:
    fig = go.Figure()
    for token, points in series.items():
        fig.add_trace(
            go.Scatter(
                x=[datetime.fromtimestamp(p[0] / 1000, IST) for p in points],
                y=[p[1] for p in points],
                name=token,
                mode="lines+markers",
                line={"shape": "hv"},
            )
        )
    fig.update_layout(height=280, margin={"t": 30, "b": 10}, title=title)
    return fig


def price_line(points: list[tuple[int, float]], cursor_ms: int | None) -> go.Figure:
    xs = [datetime.fromtimestamp(p[0] / 1000, IST) for p in points]
    fig = go.Figure(go.Scatter(x=xs, y=[p[1] for p in points], name="price"))
    if cursor_ms is not None:
        fig.add_vline(x=datetime.fromtimestamp(cursor_ms / 1000, IST), line_color="#dc2626")
    fig.update_layout(height=300, margin={"t": 20, "b": 10})
    return fig


def equity_vs_active(curves: dict[str, tuple[list[int], list[float]]], active: str) -> go.Figure:
    """Each shadow candidate's equity at its bar closes; the active genome's, the reference,
    drawn thick and dashed."""
    fig = go.Figure()
    for name, (bar_ts, equity) in curves.items():
        ref = name == active
        fig.add_trace(
            go.Scatter(
                x=[datetime.fromtimestamp(t / 1000, IST) for t in bar_ts],
                y=equity,
                name=f"{name} (reference)" if ref else name,
                mode="lines",
                line={"width": 3, "dash": "dash", "color": "#111827"} if ref else {"width": 1.5},
            )
        )
    fig.update_layout(
        height=360, margin={"t": 30, "b": 10}, title="equity at each bar close vs the active genome"
    )
    fig.update_yaxes(title_text="equity")
    return fig
