"""The Candidates page: the genomes `chimera shadow` trades on paper beside the active one.

It reads what the shadow writes every ``[shadow] check_interval_s`` per candidate under
``data/shadow/<candidate>/``: ``status.json`` (figures, gate verdict, promotion) and
``track.json`` (equity at each bar close). Both are written atomically, but a file may be
missing (the shadow has not checked yet) or damaged: the page says which file and goes on
with the others. A promotion the shadow queued is approved or rejected here through the
same control path as the Governance page's proposals (``cortex.widgets``).

The data shaping (``read_candidates``, ``aligned``, ``candidate_row``, ``gate_rows``) is
plain functions over the files, testable without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import streamlit as st

from cortex import charts, sources
from cortex.runtime import Runtime
from cortex.widgets import last_proposal_reply, logged_in, proposal_buttons, store_rows

# As tools/shadow/runner.py writes them (the cortex does not import the shadow's node).
SHADOW_DIR = "shadow"
STATUS_FILE = "status.json"
TRACK_FILE = "track.json"
ACTIVE = "active"  # the active genome's candidate: the reference of every other


class _Track(msgspec.Struct):
    """The part of a candidate's ``track.json`` the page draws."""

    bar_ts: list[int] = msgspec.field(default_factory=list)
    equity: list[float] = msgspec.field(default_factory=list)


@dataclass
class CandidateFiles:
    """One candidate's files as read now: what could be read, and what could not."""

    name: str
    status: dict[str, Any] | None = None
    bar_ts: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per unreadable file


def _read_status(path: Path) -> tuple[dict[str, Any] | None, str]:
    if not path.is_file():
        return None, f"{path} is not written yet (the shadow writes it at its next check)"
    try:
        data = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as exc:
        return None, f"{path} is unreadable ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} is unreadable (a JSON object was expected, got {type(data).__name__})"
    return data, ""


def _read_track(path: Path) -> tuple[_Track, str]:
    if not path.is_file():
        return _Track(), f"{path} is not written yet (no equity to draw)"
    try:
        track = msgspec.json.decode(path.read_bytes(), type=_Track)
    except (OSError, msgspec.DecodeError) as exc:
        return _Track(), f"{path} is unreadable ({exc})"
    if len(track.bar_ts) != len(track.equity):
        return _Track(), (
            f"{path} is unreadable ({len(track.bar_ts)} bar times but "
            f"{len(track.equity)} equity values)"
        )
    return track, ""


def read_candidates(shadow_dir: Path) -> list[CandidateFiles]:
    """Every candidate directory under ``shadow_dir``, the active first, then by name; []
    when the shadow never ran here. A missing or damaged file is a problem line on its
    candidate, never an exception and never a silently empty curve."""
    if not shadow_dir.is_dir():
        return []
    out = []
    for d in sorted(p for p in shadow_dir.iterdir() if p.is_dir()):
        status, why_status = _read_status(d / STATUS_FILE)
        track, why_track = _read_track(d / TRACK_FILE)
        problems = [w for w in (why_status, why_track) if w]
        out.append(CandidateFiles(d.name, status, track.bar_ts, track.equity, problems))
    out.sort(key=lambda c: (c.name != ACTIVE, c.name))
    return out


def aligned(found: list[CandidateFiles]) -> dict[str, tuple[list[int], list[float]]]:
    """Each candidate's equity at the bar closes the active candidate also saw (how the
    gates pair the curves: one added later is drawn from where it joined). Without an
    active track every curve is drawn as it is. Candidates with no equity are left out."""
    ref = next((c for c in found if c.name == ACTIVE and c.bar_ts), None)
    seen = set(ref.bar_ts) if ref is not None else None
    curves = {}
    for c in found:
        both = zip(c.bar_ts, c.equity, strict=True)
        pairs = [(t, e) for t, e in both if seen is None or t in seen]
        if pairs:
            curves[c.name] = ([p[0] for p in pairs], [p[1] for p in pairs])
    return curves


def _genes(params: Any) -> str:
    if not isinstance(params, dict):
        return ""
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in params.items()
    )


def verdict(status: dict[str, Any]) -> str:
    """PASS, fail, or n/a (the active genome, or not judged yet)."""
    gates = status.get("gates")
    return (
        "n/a"
        if not isinstance(gates, dict) or not gates
        else ("PASS" if gates.get("passed") else "fail")
    )


def candidate_row(c: CandidateFiles, promotions: dict[str, str]) -> dict[str, Any]:
    """The summary table's row of one candidate; ``promotions`` maps proposal id → status
    (PENDING, APPROVED, REJECTED) from the primary's approval queue."""
    s = c.status or {}
    last = s.get("last_divergence")
    last = last if isinstance(last, dict) else {}
    promotion = str(s.get("promotion") or "")
    return {
        "candidate": c.name,
        "genes": _genes(s.get("params")),
        "ticks": _number(s.get("ticks"), ","),
        "trades": _number(s.get("trades"), ","),
        "P&L": _number(s.get("pnl"), ",.2f"),
        "equity": _number(s.get("equity"), ",.2f"),
        "days": _number(s.get("days"), ","),
        "divergences": _number(s.get("divergences"), ","),
        "last divergence": f"#{last.get('seq')} {last.get('reason', '')}" if last else "",
        "gates": verdict(s) if c.status is not None else "unreadable",
        "promotion": f"{promotion} {promotions.get(promotion, 'not in the queue')}"
        if promotion
        else "",
    }


def _number(x: Any, spec: str) -> str:
    """A figure as the table shows it; "" when the file had none (every cell is text, so a
    candidate with an unreadable status does not turn the others' counts into floats)."""
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else ""


def gate_rows(status: dict[str, Any]) -> list[dict[str, str]]:
    """Each gate check: its name, ok or FAIL, and the figures behind it."""
    gates = status.get("gates")
    checks = gates.get("checks") if isinstance(gates, dict) else None
    return [
        {"check": str(c.get("name")), "result": "ok" if c.get("ok") else "FAIL",
         "detail": str(c.get("detail", ""))}
        for c in checks or () if isinstance(c, dict)
    ]  # fmt: skip


# ---- the page ----------------------------------------------------------------------------
def page(rt: Runtime) -> None:
    st.title("Candidates")

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        shadow_dir = rt.data_dir / SHADOW_DIR
        found = read_candidates(shadow_dir)
        if not found:
            st.info(
                f"No shadow candidates under {shadow_dir} — start `chimera shadow` "
                "(it runs the active genome and each candidate on paper beside the engine)."
            )
            return
        session = rt.listener.state.session
        mode_dir = rt.data_dir / (session.mode if session is not None else rt.cfg.mode)
        props = store_rows(lambda: sources.proposals(mode_dir))
        promotions = {str(p["proposal_id"]): str(p["status"]) for p in props}
        for c in found:
            for problem in c.problems:
                st.warning(f"{c.name}: {problem}")
        st.caption(
            f"{len(found)} candidate(s) under {shadow_dir}; the `active` one runs the genome "
            "in force and is the reference the gates judge the others against."
        )
        st.table([candidate_row(c, promotions) for c in found])
        curves = aligned(found)
        if curves:
            st.plotly_chart(charts.equity_vs_active(curves, ACTIVE), key="candidates_equity")
        operator = logged_in(rt)
        for c in found:
            if c.name == ACTIVE or c.status is None:
                continue
            st.subheader(f"{c.name} · gates {verdict(c.status)}")
            checks = gate_rows(c.status)
            if checks:
                st.table(checks)
            else:
                st.caption("Not judged yet (no active candidate to compare with, or no check).")
            pid = c.status.get("promotion") or ""
            if not pid:
                continue
            state = promotions.get(pid, "not in the queue")
            cols = st.columns([6, 1, 1])
            cols[0].markdown(f"promotion **{pid}** · {state}")
            if state != "PENDING":
                continue
            if operator:
                proposal_buttons(rt, pid, cols[1], cols[2])
            else:
                cols[0].caption("Read-only: log in as the operator (sidebar) to approve or reject.")
        last_proposal_reply()

    body()
