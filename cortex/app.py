"""The cortex: Streamlit pages over the engine's telemetry and the recorder's files.

Run with ``chimera cortex`` (never ``streamlit run`` by hand: the launcher binds
127.0.0.1 and passes the config). Each page's body is a fragment that re-runs every
``CHIMERA_CORTEX_REFRESH_S`` seconds against a snapshot of the listener's state. A page
that needs decisions and has none yet (the engine not started, or the listener, which
starts with the first browser, not yet fed) waits in a fragment that looks every
``WAIT_POLL_S`` and reruns the page when the first decision is in, so it fills in within
a moment of it, without a reload and whatever the refresh period.

Tokens are shown with the instrument's name when the session's config names it
(``cortex/names.py``): "RELIANCE-EQ · 2885", else the bare token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import plotly.graph_objects as go
import streamlit as st

from chimera_core.commands import Command
from cortex import candidates, charts, sources
from cortex.names import label, recorded_names
from cortex.runtime import Runtime, build_runtime
from cortex.state import LAYERS, Snapshot, disk_free_text, health_alerts, percentiles_us
from cortex.widgets import (
    command,
    last_proposal_reply,
    logged_in,
    login_id,
    proposal_buttons,
    store_rows,
)

IST = timezone(timedelta(hours=5, minutes=30))
NOTABLE_ROWS = 50
EXPANDED_RECORDS = 15
WAIT_POLL_S = 0.25  # while a page waits for its first decision


@st.cache_resource
def runtime() -> Runtime:
    return build_runtime()


def ts(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, IST).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def fmt(x: float | None, spec: str = ".4f") -> str:
    if x is None or x != x:
        return "–"
    return format(x, spec)


def mode_label(snap: Snapshot, rt: Runtime) -> str:
    mode = snap.session.mode if snap.session is not None else rt.cfg.mode
    return mode.upper()


def min_free_disk_mb(rt: Runtime) -> float:
    return float(getattr(rt.cfg, "min_free_disk_mb", 0) or 0)


def _waiting(rt: Runtime) -> None:
    st.info(
        f"Waiting for telemetry from the engine at {rt.cfg.telemetry.endpoint} "
        "(is `chimera live` running?)"
    )


def names_of(rt: Runtime, snap: Snapshot) -> dict[str, str]:
    """token → instrument name for the session in this snapshot ({} when none is known)."""
    return rt.names.get(snap.session)


def _rerun_when(rt: Runtime, ready: Callable[[], bool]) -> None:
    """A fragment that draws nothing, looks every ``WAIT_POLL_S`` and reruns the whole page
    once ``ready()``; gone from the page after that rerun (the caller no longer calls it)."""

    @st.fragment(run_every=WAIT_POLL_S)
    def poll() -> None:
        rt.names.get(rt.listener.state.session, wait_s=0.0)  # start resolving names early
        if ready():
            st.rerun()

    poll()


def await_decisions(rt: Runtime, chart: Callable[[], go.Figure] | None = None) -> bool:
    """True once the listener holds a decision of this session. Until then the page shows
    the waiting note (and ``chart``, empty, so the browser has plotly loaded when the data
    comes) and reruns at the first decision: the page's own fragment then draws it, no
    reload. With decisions in but not yet the session (it repeats with every health) or
    its instrument names, the page draws now and reruns once more when they are in."""
    state = rt.listener.state
    if not state.decided:
        _rerun_when(rt, lambda: state.decided > 0)
        _waiting(rt)
        if chart is not None:
            st.plotly_chart(chart(), key="waiting_chart")
        return False
    if not rt.names.ready(state.session):
        _rerun_when(rt, lambda: rt.names.ready(state.session))
    return True


# ---- sidebar: session, kill switch, pause / resume -------------------------------------
def sidebar(rt: Runtime) -> None:
    sb = st.sidebar

    @st.fragment(run_every=rt.refresh_s)
    def status() -> None:
        snap = rt.listener.state.snapshot()
        mode = mode_label(snap, rt)
        if mode == "LIVE":
            st.error("LIVE — real orders, real money")
        else:
            st.success(f"{mode} — simulated orders")
        if snap.session is None:
            st.caption(f"no session yet on {rt.cfg.telemetry.endpoint}")
        else:
            st.caption(f"session {snap.session.session_id} · code {snap.session.code_version}")
        h = snap.health
        halted = (h is not None and h.halted) or any(
            s.latest is not None and s.latest.state == "HALT" for s in snap.symbols.values()
        )
        if h is not None:
            state = "HALTED" if halted else "PAUSED (no new entries)" if h.paused else "running"
            text = (
                f"engine **{state}** · feed "
                f"{'connected' if h.feed_connected else 'DISCONNECTED'}"
                f"{' · STALE' if h.feed_stale else ''}"
            )
            (st.error if halted else st.warning if h.paused else st.caption)(text)
        names = rt.names.get(snap.session, wait_s=0.0)  # the pages wait for them, not this
        for alert in health_alerts(h, min_free_disk_mb(rt), names):
            st.error(alert)
        disk = disk_free_text(h)
        if disk:
            st.caption(disk)

    with sb:
        status()
    why = rt.can_control()
    if why:
        sb.warning("Read-only: " + why)
        return
    if not rt.logins.valid(login_id()):
        operator_login_form(rt)
        return
    st.html(
        "<style>.st-key-halt button{background:#dc2626;color:#fff;border-color:#b91c1c;"
        "font-weight:700}</style>"
    )
    if not st.session_state.get("confirm_halt"):
        if sb.button("HALT", key="halt", use_container_width=True, help="kill switch"):
            st.session_state.confirm_halt = True
            st.rerun()
    else:
        sb.error("Halt all trading? Cancels new entries on every symbol.")
        c1, c2 = sb.columns(2)
        if c1.button("Confirm HALT", key="confirm_halt_button", type="primary"):
            reply = command(rt, Command.HALT, "cortex")
            st.session_state.confirm_halt = False
            st.session_state.last_command = ("halt", reply)
            st.rerun()
        if c2.button("Cancel", key="cancel_halt"):
            st.session_state.confirm_halt = False
            st.rerun()
    c1, c2 = sb.columns(2)
    if c1.button("Pause", key="pause", use_container_width=True):
        st.session_state.last_command = ("pause", command(rt, Command.PAUSE, "cortex"))
    if c2.button("Resume", key="resume", use_container_width=True):
        st.session_state.last_command = ("resume", command(rt, Command.RESUME, "cortex"))
    last = st.session_state.get("last_command")
    if last is not None:
        name, reply = last
        (sb.success if reply.get("ok") else sb.error)(
            f"{name}: " + str(reply.get("result") or reply.get("error"))
        )
    if sb.button("Log out", key="logout"):
        rt.logins.logout(login_id())
        st.session_state.operator_login = None
        st.rerun()


def operator_login_form(rt: Runtime) -> None:
    """Read-only until the operator types the password; then this session may command."""
    sb = st.sidebar
    with sb.form("operator_login_form", clear_on_submit=True):
        password = st.text_input("Operator password", type="password", key="operator_password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        new_login, why = rt.logins.login(password)
        if new_login is not None:
            st.session_state.operator_login = new_login
            st.session_state.last_command = None
            st.rerun()
        sb.error(f"Login refused: {why}")
    sb.caption("Read-only until the operator logs in: no HALT, pause or approvals.")


# ---- Brain / neural map ---------------------------------------------------------------
def decision_row(d: Any, names: dict[str, str]) -> dict[str, Any]:
    mr = d.meta_risk
    return {
        "seq": d.seq,
        "time (IST)": ts(d.exchange_ts_ms),
        "token": d.token,
        "name": names.get(d.token, ""),
        "price": d.physics.close,
        "signal": d.signal.reason,
        "state": d.state,
        "transitions": "; ".join(
            f"{t.event} {t.from_state}→{t.to_state} {t.reason}" for t in d.transitions
        ),
        "confidence": round(d.confidence, 3),
        "veto": "" if mr is None or mr.allowed else ",".join(v.rule for v in mr.vetoes),
        "approval": "" if d.approval is None else d.approval.status,
        "intent": ""
        if d.intent is None
        else f"{d.intent.side.value} {d.intent.qty} @ {d.intent.ref_price}",
    }


def page_brain() -> None:
    rt = runtime()
    st.title("Brain · neural map")
    if not await_decisions(rt, charts.neural_map_waiting):
        return

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        snap = rt.listener.state.snapshot()
        latest = {t: s.latest for t, s in snap.symbols.items() if s.latest is not None}
        if not latest:
            st.rerun()  # a new session, nothing decided yet: wait for it as on first load
        names = names_of(rt, snap)
        st.subheader("Influence weight per symbol")
        st.caption(
            "Each layer's weight in the latest decision that carried a signal (the latest "
            "tick's when none has yet); state and price are the latest tick's."
        )
        table = []
        for t, s in snap.symbols.items():
            d = s.latest
            w = s.last_signal or d
            if d is None or w is None:
                continue
            table.append(
                {
                    "token": t,
                    "name": names.get(t, ""),
                    "price": fmt(d.physics.close, ".2f"),
                    "state": d.state,
                    "signal": f"{w.signal.reason} (#{w.seq})",
                    "confidence": round(w.confidence, 3),
                }
                | {f"w {layer}": round(w.influence.get(layer, 0.0), 3) for layer in LAYERS}
            )
        st.table(table)
        c1, c2 = st.columns([1, 2])
        token = c1.selectbox(
            "Symbol", list(latest), key="brain_symbol", format_func=lambda t: label(t, names)
        )
        which = c2.radio(
            "Decision", ["latest signal", "latest tick"], horizontal=True, key="brain_which"
        )
        sym = snap.symbols[token] if token in snap.symbols else next(iter(snap.symbols.values()))
        d = (sym.last_signal if which == "latest signal" else None) or sym.latest
        assert d is not None
        st.plotly_chart(charts.neural_map(d, names.get(d.token, "")), key="neural_map")
        st.subheader(f"Last {NOTABLE_ROWS} decisions that moved something")
        rows = list(reversed(snap.notable))[:NOTABLE_ROWS]
        if not rows:
            st.caption("No transitions, intents or vetoes yet. Latest decisions:")
            rows = list(reversed(snap.recent))[:10]
        st.dataframe([decision_row(x, names) for x in rows], hide_index=True)
        for x in rows[:EXPANDED_RECORDS]:
            with st.expander(f"#{x.seq} {label(x.token, names)} {ts(x.exchange_ts_ms)} {x.state}"):
                st.json(msgspec.to_builtins(x), expanded=False)

    body()


# ---- Market ----------------------------------------------------------------------------
def page_market() -> None:
    rt = runtime()
    st.title("Market")
    if not await_decisions(rt):
        return

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        snap = rt.listener.state.snapshot()
        symbols = {t: s for t, s in snap.symbols.items() if s.latest is not None}
        if not symbols:
            st.rerun()  # a new session, nothing decided yet: wait for it as on first load
        names = names_of(rt, snap)
        token = st.selectbox(
            "Symbol", list(symbols), key="market_symbol", format_func=lambda t: label(t, names)
        )
        s = symbols.get(token) or next(iter(symbols.values()))
        d = s.latest
        assert d is not None
        p = d.physics
        cols = st.columns(6)
        cols[0].metric(f"{label(s.token, names)} price", fmt(p.close, ".2f"))
        cols[1].metric("energy", fmt(p.energy))
        cols[2].metric("z", fmt(p.z, ".3f"))
        cols[3].metric("structure", p.structure.value)
        cols[4].metric("band", p.band.value)
        cols[5].metric("bars closed", p.closed_bars)
        st.caption(
            f"as of {ts(d.exchange_ts_ms)} IST · band mean {fmt(p.band_mean, '.2f')} ± "
            f"{rt.cfg.strategy.band_k:g}·{fmt(p.band_std, '.3f')} · markers: entries ▲, "
            "exits ✕, vetoes ⊗, approvals ◆"
        )
        st.plotly_chart(charts.market(s, rt.cfg.strategy.band_k), key="market_chart")

    body()


# ---- Execution -------------------------------------------------------------------------
def page_execution() -> None:
    rt = runtime()
    st.title("Execution")

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        snap = rt.listener.state.snapshot()
        names = names_of(rt, snap)
        mode = mode_label(snap, rt)
        (st.error if mode == "LIVE" else st.info)(
            f"{mode} P&L — this session's {mode.lower()} journal only; "
            "paper and live are never mixed"
        )
        rows = []
        realized = unrealized = charges = 0.0
        for t, s in snap.symbols.items():
            d = s.latest
            if d is None:
                continue
            ex = d.execution
            row = {
                "token": t,
                "name": names.get(t, ""),
                "state": d.state,
                "last transition": (
                    f"{d.transitions[-1].event} {d.transitions[-1].reason}" if d.transitions else ""
                ),
                "price": d.physics.close,
            }
            if ex is not None:
                upnl = ex.position_qty * (d.physics.close - ex.avg_price)
                realized += ex.realized_pnl
                unrealized += upnl
                charges += ex.charges
                row |= {
                    "position": ex.position_qty,
                    "avg price": ex.avg_price,
                    f"{mode} realized P&L": round(ex.realized_pnl, 2),
                    f"{mode} unrealized P&L": round(upnl, 2),
                    "charges": round(ex.charges, 2),
                    "open orders": ex.open_orders,
                    "last report": ex.last_report,
                }
            rows.append(row)
        c = st.columns(4)
        c[0].metric(f"{mode} realized P&L (net)", fmt(realized, ",.2f"))
        c[1].metric(f"{mode} unrealized P&L", fmt(unrealized, ",.2f"))
        c[2].metric("charges paid", fmt(charges, ",.2f"))
        h = snap.health
        c[3].metric("states", ", ".join(f"{k} {v}" for k, v in (h.states if h else {}).items()))
        st.subheader("State machine and position per symbol")
        if rows:
            st.table(rows)
        else:
            _waiting(rt)
        st.subheader("Open orders")
        open_orders = [
            r
            for r in snap.orders.values()
            if r.kind.value not in ("FILLED", "REJECTED", "CANCELLED")
        ]
        if open_orders:
            st.dataframe([_report_row(r, names) for r in open_orders], hide_index=True)
        else:
            st.caption("No open orders reported on telemetry `exec` since the cortex started.")
        st.subheader("Fills")
        fills = [r for r in snap.exec_reports if r.fill is not None]
        if fills:
            st.dataframe(
                [
                    {
                        "time (IST)": ts(r.fill.exchange_ts_ms),
                        "token": r.token,
                        "name": names.get(r.token, ""),
                        "side": r.side.value,
                        "qty": r.fill.qty,
                        "price": r.fill.price,
                        "charges": r.fill.charges,
                        "purpose": r.purpose.value,
                        "client_order_id": r.client_order_id,
                    }
                    for r in reversed(fills)
                    if r.fill is not None
                ],
                hide_index=True,
            )
        else:
            st.caption(
                "No fills on telemetry `exec` since the cortex started; the journal's are below."
            )
        if snap.recon is not None:
            rc = snap.recon
            st.subheader(f"Start-up reconciliation ({rc.mode.upper()})")
            st.write(
                f"ok={rc.ok} · cash {rc.cash:,.2f} · adopted {len(rc.adopted)} · "
                f"cancelled {len(rc.cancelled)} · mismatches {len(rc.mismatches)}"
            )
            if rc.positions:
                st.dataframe([msgspec.to_builtins(p) for p in rc.positions], hide_index=True)
        mode_dir = Path(rt.cfg.data_dir) / (snap.session.mode if snap.session else rt.cfg.mode)
        journal_fills = store_rows(lambda: sources.journal(mode_dir, "fills", 100))
        if journal_fills:
            st.subheader(f"{mode} journal fills, newest first ({mode_dir / 'chimera.db'})")
            st.dataframe(journal_fills, hide_index=True)

    body()


def _report_row(r: Any, names: dict[str, str]) -> dict[str, Any]:
    return {
        "client_order_id": r.client_order_id,
        "token": r.token,
        "name": names.get(r.token, ""),
        "side": r.side.value,
        "qty": r.order_qty,
        "filled": r.filled_qty,
        "avg price": r.avg_price,
        "status": r.kind.value,
        "purpose": r.purpose.value,
        "reason": r.reason,
    }


# ---- Governance ------------------------------------------------------------------------
def _payload_text(payload: dict[str, Any]) -> str:
    """A proposal's payload in one line: family, version, params."""
    parts = [f"{k} {v}" for k, v in payload.items() if k != "params"]
    params = payload.get("params") or {}
    parts += [f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in params.items()]
    return ", ".join(parts)


# ---- Governance ------------------------------------------------------------------------
def page_governance() -> None:
    rt = runtime()
    st.title("Governance")

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        snap = rt.listener.state.snapshot()
        names = names_of(rt, snap)
        mode_dir = Path(rt.cfg.data_dir) / (snap.session.mode if snap.session else rt.cfg.mode)
        st.subheader("Approval queue")
        queue = store_rows(lambda: sources.approvals(mode_dir))
        pending = [r for r in queue if r["status"] == "PENDING"]
        known = {r["approval_id"] for r in queue}
        # Pending approvals the decisions reported but the db (not readable here) lacks.
        for a in snap.approvals.values():
            if a.status == "PENDING" and a.approval_id not in known:
                pending.append(
                    {
                        "approval_id": a.approval_id,
                        "token": a.token,
                        "side": a.side,
                        "qty": a.qty,
                        "ref_price": a.price,
                        "confidence": a.confidence,
                        "reason": a.reason,
                        "status": a.status,
                        "created_ms": a.ts_ms,
                    }
                )
        operator = logged_in(rt)
        if not pending:
            st.caption("No intent waits for approval.")
        elif not operator:
            st.caption("Read-only: log in as the operator (sidebar) to approve or reject.")
        for r in pending[:10]:
            aid = r["approval_id"]
            c = st.columns([6, 1, 1])
            c[0].markdown(
                f"**{aid}** · {label(r['token'], names)} {r['side']} {r['qty']} @ "
                f"{fmt(r['ref_price'], '.2f')}"
                f" · conf {fmt(r['confidence'], '.3f')} · {r['reason']} · "
                f"queued {ts(r['created_ms'])}"
            )
            if not operator:
                continue  # read-only: no approval controls at all
            if c[1].button("Approve", key=f"approve-{aid}", type="primary"):
                st.session_state.last_approval = ("approve", aid, command(rt, Command.APPROVE, aid))
            if c[2].button("Reject", key=f"reject-{aid}"):
                st.session_state.last_approval = ("reject", aid, command(rt, Command.REJECT, aid))
        if len(pending) > 10:
            st.caption(f"… and {len(pending) - 10} more pending (newest not shown)")
        last = st.session_state.get("last_approval")
        if last is not None:
            action, aid, reply = last
            (st.success if reply.get("ok") else st.error)(
                f"{action} {aid}: " + str(reply.get("result") or reply.get("error"))
            )
        decided = [r for r in queue if r["status"] != "PENDING"][:30]
        if decided:
            with st.expander(f"Decided approvals ({len(decided)})"):
                st.dataframe(decided, hide_index=True)

        st.subheader("Proposals")
        props = store_rows(lambda: sources.proposals(mode_dir))
        waiting = [p for p in props if p["status"] == "PENDING"]
        if not waiting:
            st.caption("No genome proposal waits for a human.")
        for p in waiting[:10]:
            pid = p["proposal_id"]
            c = st.columns([6, 1, 1])
            c[0].markdown(
                f"**{pid}** · {p['kind']} · {_payload_text(p['payload'])} · {p['reason']} · "
                f"by {p['proposed_by']} · queued {ts(p['created_ms'])}"
            )
            if operator:
                proposal_buttons(rt, pid, c[1], c[2])
        last_proposal_reply()
        done = [p for p in props if p["status"] != "PENDING"][-30:]
        if done:
            with st.expander(f"Decided proposals ({len(done)})"):
                st.dataframe(
                    [{**p, "payload": _payload_text(p["payload"])} for p in done], hide_index=True
                )

        st.subheader("Regime timeline")
        regimes = {label(t, names): list(s.regimes) for t, s in snap.symbols.items() if s.regimes}
        if regimes:
            st.plotly_chart(charts.step_timeline(regimes, "regime by symbol"), key="regimes")
            st.caption(" · ".join(f"{t}: {pts[-1][1]}" for t, pts in regimes.items()))
        st.subheader("Leverage")
        lev = {label(t, names): list(s.leverage) for t, s in snap.symbols.items() if s.leverage}
        if lev:
            st.plotly_chart(charts.step_timeline(lev, "target leverage"), key="leverage")
            st.caption(
                " · ".join(f"{t}: {pts[-1][1]:.2f}x" for t, pts in lev.items())
                + f" (hard cap {rt.cfg.governance.max_leverage:g}x)"
            )
        st.subheader("Veto log")
        if snap.vetoes:
            st.dataframe(
                [
                    {
                        "time (IST)": ts(v["exchange_ts_ms"]),
                        "token": v["token"],
                        "name": names.get(v["token"], ""),
                        "seq": v["seq"],
                        "rules": ", ".join(v["rules"]),
                        "reasons": v["reasons"],
                        "details": v["details"],
                        "halt": v["halt"],
                    }
                    for v in reversed(snap.vetoes)
                ],
                hide_index=True,
            )
        else:
            st.caption("No vetoes this session.")
        st.subheader("Genome versions")
        genomes = store_rows(lambda: sources.genome_versions(mode_dir))
        if genomes:
            st.dataframe(genomes, hide_index=True)
        else:
            g = next(
                (s.latest.genome for s in snap.symbols.values() if s.latest and s.latest.genome),
                None,
            )
            st.caption(
                f"No genome.db in {mode_dir}"
                + (f"; in force: {g.family} v{g.version} {g.params}" if g else "")
            )

    body()


# ---- Candidates (the shadow's) -----------------------------------------------------------
def page_candidates() -> None:
    candidates.page(runtime())


# ---- Health / latency ------------------------------------------------------------------
def page_health() -> None:
    rt = runtime()
    st.title("Health · latency")

    @st.fragment(run_every=rt.refresh_s)
    def body() -> None:
        snap = rt.listener.state.snapshot()
        h = snap.health
        now = time.monotonic_ns()
        st.subheader("Safety")
        for alert in health_alerts(h, min_free_disk_mb(rt), names_of(rt, snap)):
            st.error(alert)
        safety = st.columns(4)
        if h is not None:
            safety[0].metric("trading state", h.trading_state)
            safety[1].metric("journal", "WRITE FAILED" if h.journal_error else "ok")
            safety[2].metric(
                "disk free (data_dir)",
                f"{h.disk_free_mb:,.0f} MB" if h.disk_free_mb >= 0 else "not measured",
            )
            safety[3].metric("unprotected positions", len(h.unprotected))
        st.subheader("Feed")
        c = st.columns(5)
        if h is None:
            _waiting(rt)
        else:
            c[0].metric("feed", "connected" if h.feed_connected else "DISCONNECTED")
            c[1].metric("stale", "STALE" if h.feed_stale else "fresh")
            c[2].metric("reconnects", max(0, h.feed_connects - 1))
            c[3].metric("sequence gaps", h.engine.get("gaps", 0))
            c[4].metric("health age", f"{(now - snap.health_local_ns) / 1e9:.1f} s")
            st.caption("engine counters: " + " · ".join(f"{k} {v}" for k, v in h.engine.items()))
        st.subheader("Telemetry")
        k = snap.counters
        c = st.columns(5)
        c[0].metric("publisher sent", h.telemetry_sent if h else 0)
        c[1].metric("publisher refused", h.telemetry_dropped if h else 0)
        c[2].metric("cortex missed (seq gaps)", f"{k['missed']} ({k['gaps']})")
        c[3].metric("cortex messages", k["messages"])
        c[4].metric("decode errors", k["decode_errors"])
        st.subheader("Lag")
        lag = st.columns(4)
        lag[0].metric("cortex lag now", f"{snap.lag['last_s'] * 1e3:.1f} ms")
        lag[1].metric("cortex lag p99", f"{snap.lag['p99_s'] * 1e3:.1f} ms")
        lag[2].metric("cortex lag max", f"{snap.lag['max_s'] * 1e3:.1f} ms")
        ns = sources.neural_state(Path(rt.cfg.data_dir))
        if ns is None:
            lag[3].metric("recorder", "no neural_state.json")
        else:
            rec_h = (ns.get("health") or {}).get("at_ns")
            if h is not None and rec_h:
                lag[3].metric("recorder lag", f"{max(0, h.at_ns - rec_h) / 1e9:.2f} s")
            else:
                lag[3].metric("recorder", "no health yet")
            try:
                age = (datetime.now(UTC) - datetime.fromisoformat(ns["updated"])).total_seconds()
                st.caption(
                    f"neural_state.json written {age:.1f} s ago (session {ns.get('session_id')})"
                )
            except (KeyError, TypeError, ValueError):
                pass
        st.subheader("Hot-path latency (frame received → decision)")
        pct = percentiles_us(snap.latency_ns)
        pcts = st.columns(4)
        for i, name in enumerate(("p50", "p99", "p99.9", "max")):
            pcts[i].metric(f"{name}", f"{pct.get(name, 0.0):.1f} µs")
        st.caption(f"over the last {len(snap.latency_ns)} decisions")
        st.plotly_chart(charts.latency_histogram(snap.latency_buckets), key="latency")
        if snap.controls:
            st.subheader("Operator commands applied")
            st.dataframe(
                [
                    {"command": e.command, "arg": e.arg, "ok": e.ok, "result": e.result}
                    for e in reversed(snap.controls)
                ],
                hide_index=True,
            )

    body()


# ---- Replay ----------------------------------------------------------------------------
@st.cache_data(max_entries=8, show_spinner=False)
def _recorded_names(path: str, data_dir: str) -> dict[str, str]:
    return recorded_names(Path(path), Path(data_dir))


@st.cache_data(max_entries=4, show_spinner="Reading the black box…")
def _load_session(path: str, generation: int) -> dict[str, Any]:
    data = sources.load_session(Path(path))
    data["decisions"] = [msgspec.to_builtins(d) for d in data["decisions"]]
    return data


def page_replay() -> None:
    rt = runtime()
    st.title("Replay")
    sessions = sources.sessions(Path(rt.cfg.data_dir))
    if not sessions:
        st.info(f"No recorded sessions in {Path(rt.cfg.data_dir) / 'blackbox'}")
        return
    name = st.selectbox("Recorded session", [s["name"] for s in sessions], key="replay_session")
    meta = next(s for s in sessions if s["name"] == name)
    st.caption(
        f"mode {meta.get('mode')} · records {meta.get('records')} · missed {meta.get('missed')}"
        f" · complete {meta.get('complete')} · code {meta.get('code_version')}"
    )
    # A session still being recorded grows: it is read once, and again on Reload only.
    if st.button("Reload", key="replay_reload_button", help="read the session's files again"):
        st.session_state.replay_generation = st.session_state.get("replay_generation", 0) + 1
    data = _load_session(meta["path"], st.session_state.get("replay_generation", 0))
    decisions = data["decisions"]
    st.write(f"{data['records']} records, {len(decisions)} decisions that moved something")
    if not decisions:
        return
    i = st.slider("Decision", 0, len(decisions) - 1, 0, key="replay_index")
    d = decisions[i]
    names = _recorded_names(meta["path"], str(rt.cfg.data_dir))  # token → instrument
    st.markdown(
        f"**#{d['seq']} {label(d['token'], names)}** {ts(d['exchange_ts_ms'])} IST · "
        f"state {d['state']} · "
        + "; ".join(
            f"{t['event']} {t['from_state']}→{t['to_state']} {t['reason']}"
            for t in d["transitions"]
        )
    )
    st.plotly_chart(
        charts.price_line(data["prices"].get(d["token"], []), d["exchange_ts_ms"]),
        key="replay_price",
    )
    st.json(d, expanded=False)


PAGES = [
    st.Page(page_brain, title="Brain", url_path="brain", default=True),
    st.Page(page_market, title="Market", url_path="market"),
    st.Page(page_execution, title="Execution", url_path="execution"),
    st.Page(page_governance, title="Governance", url_path="governance"),
    st.Page(page_candidates, title="Candidates", url_path="candidates"),
    st.Page(page_health, title="Health", url_path="health"),
    st.Page(page_replay, title="Replay", url_path="replay"),
]


def main() -> None:
    st.set_page_config(page_title="Chimera cortex", layout="wide")
    rt = runtime()
    nav = st.navigation(PAGES)
    sidebar(rt)
    nav.run()


main()
