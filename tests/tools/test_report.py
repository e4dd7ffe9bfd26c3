"""`chimera report`: its figures against an independent computation from the journal's
rows — cash flows and marks rather than average-cost position arithmetic — on synthetic
fills (hypothesis) and on a real paper session (`chimera sim` + `chimera record` +
`chimera live`, then `chimera report`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.contracts import Fill, Side
from tests.loopback import chimera, free_port, wait_port
from tools.backtest.metrics import drawdown
from tools.report import (
    BAR_MS,
    IST,
    _minute_curve,
    _window_report,
    build_report,
    day_window,
    parse_week,
)

# ---- the reference: cash flows, written without the position arithmetic ------------------

Row = tuple[str, str, int, float, float, int]  # token, side, qty, price, charges, ts_ms


def reference(
    rows: Sequence[Row], starting_cash: float, start_ms: int, end_ms: int
) -> dict[str, Any]:
    """Net P&L, charges, fills, closed trades (+ their P&L) and the max drawdown of the
    one-minute equity curve, from cash flows: equity = cash + holdings at the last price."""

    def state_at(t: int, strict: bool = True) -> tuple[float, dict[str, int], dict[str, float]]:
        cash = starting_cash
        held: dict[str, int] = {}
        last: dict[str, float] = {}
        for token, side, qty, price, charges, ts in rows:
            if ts > t or (strict and ts == t):
                break
            sign = 1 if side == "BUY" else -1
            cash -= sign * qty * price + charges
            held[token] = held.get(token, 0) + sign * qty
            last[token] = price
        return cash, held, last

    def equity(t: int, strict: bool = True) -> float:
        cash, held, last = state_at(t, strict)
        return cash + sum(q * last[k] for k, q in held.items())

    inside = [r for r in rows if start_ms <= r[5] < end_ms]
    net = equity(end_ms) - equity(start_ms)
    # Round trips: a token's running quantity leaving zero opens one, reaching (or
    # crossing) zero closes it; a crossing fill is split in two by quantity.
    running: dict[str, int] = {}
    trip: dict[str, float] = {}
    closed: list[float] = []
    for token, side, qty, price, charges, ts in rows:
        if ts >= end_ms:
            break
        sign = 1 if side == "BUY" else -1
        pieces = [(qty, charges)]
        q0 = running.get(token, 0)
        if q0 and (q0 > 0) != (sign > 0) and qty > abs(q0):
            first = abs(q0)
            pieces = [(first, charges * first / qty), (qty - first, charges * (qty - first) / qty)]
        for part, part_charges in pieces:
            trip[token] = trip.get(token, 0.0) - sign * part * price - part_charges
            running[token] = running.get(token, 0) + sign * part
            if running[token] == 0:
                if ts >= start_ms:
                    closed.append(trip[token])
                trip[token] = 0.0
    # The minute curve: closes from the first fill's minute to the last's.
    dd = 0.0
    if inside:
        peak = equity(start_ms)
        first = inside[0][5] // BAR_MS * BAR_MS
        last = inside[-1][5] // BAR_MS * BAR_MS
        for close in range(first + BAR_MS, last + 2 * BAR_MS, BAR_MS):
            e = equity(min(close, end_ms))  # the curve stops at the window's end
            peak = max(peak, e)
            dd = max(dd, 1 - e / peak)
    return {
        "net": net,
        "charges": sum(r[4] for r in inside),
        "fills": len(inside),
        "closed": closed,
        "max_drawdown": dd,
        "flat_at_end": all(q == 0 for q in state_at(end_ms)[1].values()),
    }


def _as_fills(rows: Sequence[Row]) -> list[Fill]:
    return [
        Fill(f"f{i}", f"o{i}", t, Side(s), q, p, c, ts)
        for i, (t, s, q, p, c, ts) in enumerate(rows)
    ]


# ---- synthetic fills ------------------------------------------------------------------------

_row = st.tuples(
    st.sampled_from(["2885", "1594"]),
    st.sampled_from(["BUY", "SELL"]),
    st.integers(1, 40),
    st.integers(9000, 11000).map(lambda p: p / 100),  # rupees on a paise grid
    st.integers(0, 500).map(lambda c: c / 100),
    st.integers(0, 600_000),  # the step to the next fill, ms
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_row, min_size=0, max_size=40), st.integers(0, 3_000_000), st.integers(0, 6_000_000)
)
def test_window_figures_match_the_cash_flow_reference(
    raw: list[Any], start_off: int, length: int
) -> None:
    t0 = 1_718_000_000_000
    rows: list[Row] = []
    ts = t0
    for token, side, qty, price, charges, step in raw:
        ts += step
        rows.append((token, side, qty, price, charges, ts))
    start, end = t0 + start_off, t0 + start_off + length
    w = _window_report(_as_fills(rows), 1_000_000.0, start, end)
    ref = reference(rows, 1_000_000.0, start, end)
    unreal = sum(b.qty * (b.mark - b.avg) for b in w["books"].values() if b.qty)
    net = w["realized"] - w["charges"] + unreal - w["unreal_before"]
    assert net == pytest.approx(ref["net"], abs=1e-6)
    assert w["charges"] == pytest.approx(ref["charges"], abs=1e-9)
    assert w["fills"] == ref["fills"]
    got = sorted(t["pnl"] for t in w["trades"])
    assert got == pytest.approx(sorted(ref["closed"]), abs=1e-6)
    _, equity, _ = _minute_curve(w["events"], w["before"])
    assert drawdown(equity, w["before"])[0] == pytest.approx(ref["max_drawdown"], abs=1e-12)


# ---- a real paper session --------------------------------------------------------------------


def _fill_rows(db: Path) -> list[Row]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [
            (str(t), str(s), int(q), float(p), float(c), int(ts))
            for t, s, q, p, c, ts in conn.execute(
                "SELECT token, side, qty, price, charges, exchange_ts_ms FROM fills ORDER BY rowid"
            )
        ]


def _starting_cash(db: Path) -> float:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return float(conn.execute("SELECT value FROM meta WHERE key='starting_cash'").fetchone()[0])


@pytest.fixture(scope="module")
def paper_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cwd = tmp_path_factory.mktemp("report")
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    (cwd / "chimera.toml").write_text(
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\ntimeout_s = 20.0\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
        # A few trades a day, then vetoes: the report counts them.
        "max_trades_per_day = 3\n"
    )
    procs = []
    db = cwd / "data" / "paper" / "chimera.db"
    try:
        procs.append(chimera("sim", "--port", str(sim_port), "--rate", "2000", cwd=cwd))
        wait_port(sim_port)
        procs.append(chimera("record", cwd=cwd))
        procs.append(chimera("live", cwd=cwd))
        deadline = time.monotonic() + 150
        paused = False
        while True:
            rows = _fill_rows(db) if db.exists() else []
            if len(rows) >= 2 and not paused:
                # An operator's pause and resume: the report lists them.
                for cmd in ("pause", "resume"):
                    p = chimera(cmd, "--reason", f"test_{cmd}", cwd=cwd)
                    assert p.wait(timeout=30) == 0, p.output()[1].decode()
                paused = True
            if len(rows) >= 10 or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert len(rows) >= 4, f"the paper session made only {len(rows)} fills"
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    yield cwd


def _days(rows: Sequence[Row]) -> list[dt.date]:
    return sorted({dt.datetime.fromtimestamp(r[5] / 1000, IST).date() for r in rows})


def test_a_paper_day_matches_the_journal_rows(paper_session: Path) -> None:
    data = paper_session / "data"
    db = data / "paper" / "chimera.db"
    rows = _fill_rows(db)
    cash = _starting_cash(db)
    for day in _days(rows):
        report = build_report(data, "paper", day)
        ref = reference(rows, cash, *day_window(day))
        assert report.fills == ref["fills"] > 0
        assert report.charges == pytest.approx(ref["charges"], abs=1e-9)
        assert report.net_pnl == pytest.approx(ref["net"], abs=1e-6)
        assert report.metrics["trades"] == len(ref["closed"])
        wins = sum(p > 0 for p in ref["closed"])
        if ref["closed"]:
            assert report.metrics["win_rate"] == pytest.approx(wins / len(ref["closed"]))
        else:
            assert report.metrics["win_rate"] is None
        assert report.metrics["max_drawdown"] == pytest.approx(ref["max_drawdown"], abs=1e-9)
        assert report.metrics["charges"] == pytest.approx(
            sum(t["charges"] for t in report.trades), abs=1e-6
        )
        if ref["flat_at_end"]:
            assert report.unrealized_pnl == 0.0 and report.open_positions == {}


def test_the_pause_and_resume_are_on_the_day_they_happened(paper_session: Path) -> None:
    from chimera_core.telemetry import TOPIC_CONTROL, TOPIC_TICK, decoder_for
    from chimera_core.telemetry.reader import check_session

    data = paper_session / "data"
    # Independently: the exchange time of the last decision before each control message.
    seen: dict[str, int] = {}
    decode_tick, decode_control = decoder_for(TOPIC_TICK), decoder_for(TOPIC_CONTROL)
    for session_dir in (data / "blackbox").iterdir():
        last_ms = None
        for m in check_session(session_dir, keep_messages=True).messages:
            if m.topic.startswith(TOPIC_TICK):
                record = decode_tick(m.payload)
                if record.decision is not None:
                    last_ms = record.decision.exchange_ts_ms
            elif m.topic == TOPIC_CONTROL:
                event = decode_control(m.payload)
                if event.arg.startswith("test_") and last_ms is not None:
                    seen[event.command] = last_ms
    assert set(seen) == {"pause", "resume"}
    for command, ms in seen.items():
        day = dt.datetime.fromtimestamp(ms / 1000, IST).date()
        report = build_report(data, "paper", day)
        listed = [
            h for h in report.halts if h["kind"] == command and h.get("reason") == f"test_{command}"
        ]
        assert len(listed) == 1, report.halts
        other = build_report(data, "paper", day + dt.timedelta(days=1))
        assert not [h for h in other.halts if h.get("reason") == f"test_{command}"]


def test_the_vetoes_match_the_black_box(paper_session: Path) -> None:
    from chimera_core.telemetry import TOPIC_TICK, decoder_for
    from chimera_core.telemetry.reader import check_session

    data = paper_session / "data"
    # Independently: every decision's meta-risk verdict, by IST day of its exchange time.
    by_day: dict[dt.date, dict[str, int]] = {}
    vetoed: dict[dt.date, int] = {}
    decode = decoder_for(TOPIC_TICK)
    for session_dir in (data / "blackbox").iterdir():
        for m in check_session(session_dir, keep_messages=True).messages:
            if not m.topic.startswith(TOPIC_TICK):
                continue
            d = decode(m.payload).decision
            if d is None or d.meta_risk is None or d.meta_risk.allowed:
                continue
            day = dt.datetime.fromtimestamp(d.exchange_ts_ms / 1000, IST).date()
            vetoed[day] = vetoed.get(day, 0) + 1
            rules = by_day.setdefault(day, {})
            for v in d.meta_risk.vetoes:
                rules[v.rule] = rules.get(v.rule, 0) + 1
    assert sum(vetoed.values()) > 0, "the session was vetoed nowhere: nothing to compare"
    for day in {*vetoed, *_days(_fill_rows(data / "paper" / "chimera.db"))}:
        report = build_report(data, "paper", day)
        assert report.vetoed_decisions == vetoed.get(day, 0)
        assert report.vetoes == dict(sorted(by_day.get(day, {}).items()))


def test_chimera_report_prints_and_writes_json_and_html(paper_session: Path) -> None:
    data = paper_session / "data"
    rows = _fill_rows(data / "paper" / "chimera.db")
    day = _days(rows)[-1]
    p = chimera("report", "--date", day.isoformat(), "--mode", "paper", cwd=paper_session)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    assert "net P&L" in out.decode()
    stem = data / "reports" / f"report-paper-{day.isoformat()}"
    written = json.loads(Path(f"{stem}.json").read_text())
    expected = build_report(data, "paper", day)
    assert written["fills"] == expected.fills
    assert math.isclose(written["net_pnl"], expected.net_pnl, abs_tol=1e-9)
    assert written["metrics"] == json.loads(expected.to_json())["metrics"]
    html = Path(f"{stem}.html").read_text()
    assert "plotly" in html.lower() and "equity" in html
    # A week's report covers the day.
    iso = day.isocalendar()
    week = build_report(data, "paper", week=parse_week(f"{iso[0]}-W{iso[1]:02d}"))
    assert week.fills >= expected.fills
    assert np.isfinite(week.net_pnl)


def test_bad_periods_and_modes_are_clear_errors(tmp_path: Path) -> None:
    from tools.report import ReportError, parse_day

    with pytest.raises(ReportError, match="YYYY-MM-DD"):
        parse_day("17/05/2024")
    with pytest.raises(ReportError, match="YYYY-Www"):
        parse_week("2024-20")
    with pytest.raises(ReportError, match="paper, live"):
        build_report(tmp_path, "demo", dt.date(2024, 5, 17))
    with pytest.raises(ReportError, match="no paper journal"):
        build_report(tmp_path, "paper", dt.date(2024, 5, 17))
