"""``chimera report [--date D | --week W] [--mode paper|live]``: the day's (or week's)
report from the journal and the black box.

Figures: P&L realised (gross, from the fills) and unrealised (open positions marked at the
last fill price of their token: the journal holds no quotes), charges, trades (round trips
per token: flat → open → flat, a flip closes one and opens the next), win rate, profit
factor, Sharpe and drawdown of a one-minute equity curve, exposure, and the period's vetoes
and halts from the black box. Every metric comes from ``tools.backtest.metrics`` (the
backtester's one definition), so a live day and a backtest day read the same.

Where the shadow's paper twin ran against this journal (the primary trading through a real
broker), a "Paper vs live" section: the twin's orders paired with the real ones and their
fill rates, price differences, slippage and latency, recomputed from the two journals
(``tools.shadow.twin``), so the section is reproducible; no twin, no section.

Printed with rich and written as JSON + HTML (plotly, self-contained) under
``data_dir/reports/``. ``build_report(data_dir, mode, day)`` is the entry point for the
notify side (the daily report at session close).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import orjson
import structlog

from chimera_core.contracts import Fill, MetaRiskOutput, Side
from chimera_core.errors import ChimeraError, ConfigError
from chimera_core.telemetry import TOPIC_CONTROL, TOPIC_TICK, decoder_for
from chimera_core.telemetry.reader import read_manifest, read_session
from chimera_execution.journal_view import MODES, JournalReader, apply_fill, journal_path
from tools.backtest import metrics as bt_metrics

log = structlog.get_logger(__name__)

IST = ZoneInfo("Asia/Kolkata")
BAR_MS = 60_000  # the report's equity curve: one-minute bars (NSE: 375 a session)
REPORTS_DIR = "reports"
# Control commands that are a halt, a reduction to exits only, or an operator's change of
# trading state: the report lists them all.
_STATE_COMMANDS = ("halt", "reduce", "pause", "resume", "flatten", "reset_halt")


class ReportError(ChimeraError):
    """A report cannot be built: bad date or week, no journal, unreadable black box."""


class _VerdictView(msgspec.Struct, gc=False):
    """What the report reads of a Decision: its time and meta-risk's verdict (the rest of
    the decision is skipped, not decoded)."""

    exchange_ts_ms: int
    meta_risk: MetaRiskOutput | None = None


class _DecisionView(msgspec.Struct, array_like=True, gc=False):
    recv_ns: int
    frame: msgspec.Raw
    decision: _VerdictView | None


_decode_tick = decoder_for(TOPIC_TICK, _DecisionView)
_decode_control = decoder_for(TOPIC_CONTROL)


@dataclass
class Report:
    """One period's report: what ``render_text`` prints and ``to_json`` writes."""

    mode: str
    period: str  # "2024-05-17" or "2024-W20"
    start_ms: int  # window [start_ms, end_ms), exchange time
    end_ms: int
    starting_cash: float
    fills: int
    realized_pnl: float  # gross, before charges
    charges: float
    unrealized_pnl: float
    net_pnl: float  # realised - charges + change in unrealised over the period
    gross_exposure: float  # sum |qty x mark| at the end of the period
    max_gross_exposure: float
    open_positions: dict[str, dict[str, float]]
    metrics: dict[str, Any]
    trades: list[dict[str, Any]]
    vetoes: dict[str, int]
    vetoed_decisions: int
    halts: list[dict[str, Any]]
    equity_ts_ms: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Paper vs live: the shadow's paper twin against the real fills (None: no twin ran)
    paper_vs_live: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def to_json(self) -> bytes:
        return orjson.dumps(_clean(self.to_dict()), option=orjson.OPT_INDENT_2)

    def short_text(self) -> str:
        """A few lines for a chat message or an alert."""
        m = self.metrics
        win = m.get("win_rate")
        lines = [
            f"Chimera {self.mode} report {self.period}",
            f"net P&L {self.net_pnl:,.2f} (realised {self.realized_pnl:,.2f}, "
            f"charges {self.charges:,.2f}, unrealised {self.unrealized_pnl:,.2f})",
            f"trades {m.get('trades', 0)} · win rate "
            + ("-" if win is None else f"{win:.0%}")
            + f" · fills {self.fills}",
            f"max drawdown {m.get('max_drawdown', 0.0):.2%} · exposure "
            f"{self.gross_exposure:,.0f} (max {self.max_gross_exposure:,.0f})",
            f"vetoes {self.vetoed_decisions} · halts {len(self.halts)}",
        ]
        t = self.paper_vs_live
        if t is not None:
            d = t["price_diff_bps"]
            lines.append(
                f"paper vs live: {t['paired']} of {t['orders']} orders paired, live-paper "
                + ("-" if d["p50"] is None else f"p50 {d['p50']:.1f} bps")
            )
        return "\n".join(lines)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# ---- periods -----------------------------------------------------------------------------


def day_window(day: dt.date) -> tuple[int, int]:
    """[00:00, 24:00) IST of ``day`` in epoch ms (exchange time is IST)."""
    start = dt.datetime.combine(day, dt.time(), IST)
    return int(start.timestamp() * 1000), int((start + dt.timedelta(days=1)).timestamp() * 1000)


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"--date {text!r}: expected YYYY-MM-DD (e.g. 2024-05-17)") from None


def parse_week(text: str) -> tuple[dt.date, dt.date]:
    """(Monday, next Monday) of ISO week ``YYYY-Www``."""
    try:
        year, week = text.upper().split("-W")
        monday = dt.date.fromisocalendar(int(year), int(week), 1)
    except ValueError:
        raise ReportError(
            f"--week {text!r}: expected an ISO week YYYY-Www (e.g. 2024-W20)"
        ) from None
    return monday, monday + dt.timedelta(days=7)


def today_ist() -> dt.date:
    # The operator's "today" (a command-line default), never used inside the engine.
    return dt.datetime.now(IST).date()


def latest_day(data_dir: str | Path, mode: str) -> dt.date:
    """The IST day of the journal's last fill (today when there is none): what the bot's
    /daily shows, since a simulator session trades on simulated days."""
    path = journal_path(data_dir, mode)
    if not path.is_file():
        return today_ist()
    with JournalReader(path) as journal:
        fills = journal.recent_fills(1)
    if not fills:
        return today_ist()
    return dt.datetime.fromtimestamp(fills[-1].exchange_ts_ms / 1000, IST).date()


# ---- the journal side ----------------------------------------------------------------------


@dataclass
class _Book:
    """Per-token position state while the fills are walked in booking order."""

    qty: int = 0
    avg: float = 0.0
    realized: float = 0.0
    mark: float = 0.0
    trade: dict[str, Any] | None = None


def _unrealized(books: dict[str, _Book]) -> float:
    return sum(b.qty * (b.mark - b.avg) for b in books.values() if b.qty)


def _gross(books: dict[str, _Book]) -> float:
    return sum(abs(b.qty * b.mark) for b in books.values() if b.qty)


def _window_report(
    fills: Sequence[Fill], starting_cash: float, start_ms: int, end_ms: int
) -> dict[str, Any]:
    books: dict[str, _Book] = {}
    cash_pnl = 0.0  # realised - charges, cumulative since the journal's start
    before = None  # equity at the window's start
    unreal_before = 0.0
    realized = charges = 0.0
    count = 0
    events: list[tuple[int, float, int, float]] = []  # (ts, equity, gross units, gross value)
    trades: list[dict[str, Any]] = []
    max_gross = 0.0
    for f in fills:
        if f.exchange_ts_ms >= end_ms:
            break
        if before is None and f.exchange_ts_ms >= start_ms:
            unreal_before = _unrealized(books)
            before = starting_cash + cash_pnl + unreal_before
            # Trades open at the window's start count from its first bar.
            for b in books.values():
                if b.trade is not None:
                    b.trade["entry_ts"] = start_ms
        book = books.setdefault(f.token, _Book())
        in_window = f.exchange_ts_ms >= start_ms
        was = book.qty
        qty, avg, real = apply_fill(book.qty, book.avg, book.realized, f.side, f.qty, f.price)
        delta = real - book.realized
        book.qty, book.avg, book.realized, book.mark = qty, avg, real, f.price
        cash_pnl += delta - f.charges
        signed = f.qty if f.side is Side.BUY else -f.qty
        closing = min(abs(signed), abs(was)) if was and (was > 0) != (signed > 0) else 0
        # Charges of a flip are split between the trade it closes and the one it opens.
        close_share = f.charges * closing / f.qty
        if book.trade is not None:
            book.trade["pnl"] += delta - close_share
            book.trade["charges"] += close_share
            if qty == 0 or (was > 0) != (qty > 0):
                book.trade.update(exit_ts=f.exchange_ts_ms, exit_price=f.price)
                if in_window:
                    trades.append(book.trade)
                book.trade = None
        opening_qty = abs(qty) if (was == 0 or (was > 0) != (qty > 0)) and qty else 0
        if opening_qty:
            share = f.charges - close_share
            book.trade = {
                "token": f.token,
                "side": 1 if qty > 0 else -1,
                "qty": opening_qty,
                "entry_ts": max(f.exchange_ts_ms, start_ms),
                "entry_price": f.price,
                "exit_ts": None,
                "exit_price": None,
                "charges": share,
                "pnl": -share,
            }
        elif book.trade is not None and closing == 0:
            # An add to the open position: its charges belong to the trade.
            book.trade["charges"] += f.charges
            book.trade["pnl"] -= f.charges
            book.trade["qty"] = max(book.trade["qty"], abs(qty))
        if in_window:
            count += 1
            realized += delta
            charges += f.charges
            gross = _gross(books)
            max_gross = max(max_gross, gross)
            events.append((f.exchange_ts_ms, starting_cash + cash_pnl + _unrealized(books),
                           sum(abs(b.qty) for b in books.values()), gross))  # fmt: skip
    if before is None:
        unreal_before = _unrealized(books)
        before = starting_cash + cash_pnl + unreal_before
    open_trades = [b.trade for b in books.values() if b.trade is not None]
    return {
        "books": books,
        "before": before,
        "unreal_before": unreal_before,
        "realized": realized,
        "charges": charges,
        "fills": count,
        "events": events,
        "trades": trades,
        "open_trades": open_trades,
        "max_gross": max_gross,
    }


def _minute_curve(
    events: list[tuple[int, float, int, float]], before: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equity and units held at the close of each minute from the first fill's minute to
    the last's (the state after every fill at or before that close)."""
    if not events:
        return np.array([0], dtype=np.int64), np.array([before]), np.array([0], dtype=np.int64)
    first = events[0][0] // BAR_MS * BAR_MS
    last = events[-1][0] // BAR_MS * BAR_MS
    closes = np.arange(first + BAR_MS, last + 2 * BAR_MS, BAR_MS, dtype=np.int64)
    ts = np.array([e[0] for e in events], dtype=np.int64)
    idx = np.searchsorted(ts, closes, side="left") - 1  # last fill strictly before the close
    eq_at = np.array([e[1] for e in events])
    units_at = np.array([e[2] for e in events], dtype=np.int64)
    equity = np.where(idx >= 0, eq_at[np.clip(idx, 0, None)], before)
    units = np.where(idx >= 0, units_at[np.clip(idx, 0, None)], 0)
    return closes, equity, units.astype(np.int64)


def _trades_arrays(rows: list[dict[str, Any]], closes: np.ndarray) -> bt_metrics.Trades:
    def bar(ts: int | None) -> int:
        if ts is None:
            return -1
        k = int(np.searchsorted(closes, ts, side="right"))  # the bar whose close is after ts
        return min(k, int(closes.size) - 1)

    n = len(rows)
    return bt_metrics.Trades(
        entry_bar=np.array([bar(r["entry_ts"]) for r in rows], dtype=np.int64),
        exit_bar=np.array([bar(r["exit_ts"]) for r in rows], dtype=np.int64),
        side=np.array([r["side"] for r in rows], dtype=np.int8),
        qty=np.array([r["qty"] for r in rows], dtype=np.int64),
        entry_price=np.array([r["entry_price"] for r in rows], dtype=np.float64),
        exit_price=np.array(
            [np.nan if r["exit_price"] is None else r["exit_price"] for r in rows],
            dtype=np.float64,
        ),
        charges=np.array([r["charges"] for r in rows], dtype=np.float64),
        pnl=np.array(
            [r["pnl"] if r["exit_ts"] is not None else np.nan for r in rows], dtype=np.float64
        ),
        exit_reason=np.zeros(n, dtype=np.int8),
    )


# ---- the black-box side --------------------------------------------------------------------


def _blackbox(
    data_dir: Path, mode: str, start_ms: int, end_ms: int
) -> tuple[dict[str, int], int, list[dict[str, Any]], list[str], list[str]]:
    """(veto counts by rule, vetoed decisions, halts, sessions read, notes) of the window."""
    vetoes: dict[str, int] = {}
    vetoed = 0
    halts: list[dict[str, Any]] = []
    sessions: list[str] = []
    notes: list[str] = []
    root = data_dir / "blackbox"
    if not root.is_dir():
        return vetoes, vetoed, halts, sessions, [f"no black box under {root}"]
    for session_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest, _ = read_manifest(session_dir)
        if manifest is not None and manifest.get("mode") not in (None, mode):
            continue
        exchange_ms: int | None = None  # a control event's exchange time: the last tick's
        used = False
        tripped: set[str] = set()
        try:
            for message in read_session(session_dir):
                if message.topic.startswith(TOPIC_TICK):
                    d = _decode_tick(message.payload).decision
                    if d is None:
                        continue
                    exchange_ms = d.exchange_ts_ms
                    if not start_ms <= d.exchange_ts_ms < end_ms:
                        continue
                    used = True
                    mr = d.meta_risk
                    if mr is None:
                        continue
                    if not mr.allowed:
                        vetoed += 1
                        for v in mr.vetoes:
                            vetoes[v.rule] = vetoes.get(v.rule, 0) + 1
                    if mr.halt and mr.kill_switch and mr.kill_switch not in tripped:
                        tripped.add(mr.kill_switch)
                        halts.append({"kind": "meta_risk", "rule": mr.kill_switch,
                                      "exchange_ts_ms": d.exchange_ts_ms,
                                      "session": session_dir.name})  # fmt: skip
                elif message.topic == TOPIC_CONTROL:
                    event = _decode_control(message.payload)
                    if event.command not in _STATE_COMMANDS or exchange_ms is None:
                        continue
                    if start_ms <= exchange_ms < end_ms:
                        used = True
                        halts.append({"kind": event.command, "reason": event.arg,
                                      "ok": event.ok, "exchange_ts_ms": exchange_ms,
                                      "session": session_dir.name})  # fmt: skip
        except ChimeraError as exc:
            notes.append(f"black box {session_dir.name}: {exc}")
        if used:
            sessions.append(session_dir.name)
    return vetoes, vetoed, halts, sessions, notes


# ---- the report --------------------------------------------------------------------------


def build_report(
    data_dir: str | Path,
    mode: str,
    day: dt.date | None = None,
    *,
    week: tuple[dt.date, dt.date] | None = None,
    blackbox: bool = True,
) -> Report:
    """The report of one IST ``day`` (or of ``week`` = (monday, next monday)) for ``mode``,
    from ``data_dir/<mode>/chimera.db`` (read-only) and ``data_dir/blackbox``
    (``blackbox=False``: the journal's figures only, no vetoes or halts; the bot's /pnl)."""
    if mode not in MODES:
        raise ReportError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    if week is not None:
        start_ms, end_ms = day_window(week[0])[0], day_window(week[1])[0]
        iso = week[0].isocalendar()
        period = f"{iso[0]}-W{iso[1]:02d}"
    else:
        day = day or today_ist()
        start_ms, end_ms = day_window(day)
        period = day.isoformat()
    data = Path(data_dir)
    path = journal_path(data, mode)
    if not path.is_file():
        raise ReportError(
            f"no {mode} journal at {path}: run `chimera live` in {mode} mode first, or pass "
            "the data_dir it uses (--config)"
        )
    with JournalReader(path) as journal:
        fills = journal.fills()
        starting = journal.starting_cash
    if starting is None:
        raise ReportError(f"the journal {path} has no starting cash yet (the engine sets it)")
    w = _window_report(fills, starting, start_ms, end_ms)
    closes, equity, units = _minute_curve(w["events"], w["before"])
    rows = w["trades"] + w["open_trades"]
    m = bt_metrics.compute(
        equity,
        trades=_trades_arrays(rows, closes),
        ts_ms=closes,  # drawdown duration in seconds; the annualisation is one-minute bars
        periods=bt_metrics.periods_per_year(BAR_MS / 1000),
        initial_equity=w["before"],
        position=units,
    )
    books: dict[str, _Book] = w["books"]
    unreal = _unrealized(books)
    if blackbox:
        vetoes, vetoed, halts, sessions, notes = _blackbox(data, mode, start_ms, end_ms)
    else:
        vetoes, vetoed, halts, sessions, notes = {}, 0, [], [], ["black box not read"]
    twin = paper_vs_live(data, mode, start_ms, end_ms)
    if any(b.qty for b in books.values()):
        notes.append(
            "open positions are marked at their last fill price (no quotes in the journal)"
        )
    return Report(
        mode=mode,
        period=period,
        start_ms=start_ms,
        end_ms=end_ms,
        starting_cash=starting,
        fills=w["fills"],
        realized_pnl=w["realized"],
        charges=w["charges"],
        unrealized_pnl=unreal,
        net_pnl=w["realized"] - w["charges"] + unreal - w["unreal_before"],
        gross_exposure=_gross(books),
        max_gross_exposure=w["max_gross"],
        open_positions={
            t: {"qty": b.qty, "avg_price": b.avg, "mark": b.mark}
            for t, b in sorted(books.items())
            if b.qty
        },
        metrics=m.to_dict(),
        trades=[_trade_row(r) for r in rows],
        vetoes=dict(sorted(vetoes.items())),
        vetoed_decisions=vetoed,
        halts=halts,
        equity_ts_ms=[int(t) for t in closes],
        equity=[float(e) for e in equity],
        sessions=sessions,
        notes=notes,
        paper_vs_live=twin,
    )


def paper_vs_live(data: Path, mode: str, start_ms: int, end_ms: int) -> dict[str, Any] | None:
    """The paper twin's orders against the real ones in [start_ms, end_ms), recomputed from
    the two journals (the primary's and ``shadow/active/paper``'s); None when no twin ran
    against this mode's journal (no ``twin.json``: the shadow writes it only when the primary
    trades through a real broker) or when neither side had an order in the period."""
    from tools.shadow.twin import TWIN_FILE, aggregate, compare_journals

    active = data / "shadow" / "active"
    marker, twin_db = active / TWIN_FILE, journal_path(active, "paper")
    if not marker.is_file() or not twin_db.is_file():
        return None
    try:
        ran = orjson.loads(marker.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ReportError(f"{marker} is unreadable ({exc}); move it aside to report without "
                          "the paper twin") from None  # fmt: skip
    if not isinstance(ran, dict) or ran.get("mode") != mode:
        return None
    rows = compare_journals(journal_path(data, mode), twin_db, start_ms, end_ms)
    if not rows:
        return None
    return {
        "broker": ran.get("broker", ""),
        **aggregate(rows),
        "rows": [msgspec.to_builtins(r) for r in rows],
    }


def _trade_row(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r[k] for k in ("token", "side", "qty", "entry_ts", "entry_price", "exit_ts",
                              "exit_price", "charges", "pnl")}  # fmt: skip


def write_report(report: Report, data_dir: str | Path) -> dict[str, Path]:
    """``report-<mode>-<period>.json`` and ``.html`` under ``data_dir/reports``."""
    out = Path(data_dir) / REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = f"report-{report.mode}-{report.period}"
    paths = {"json": out / f"{stem}.json", "html": out / f"{stem}.html"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_bytes(report.to_json())
    os.replace(tmp, paths["json"])
    _write_html(report, paths["html"])
    return paths


def _write_html(report: Report, path: Path) -> None:
    import plotly.graph_objects as go  # the report only; never the hot path
    from plotly.subplots import make_subplots

    when = [dt.datetime.fromtimestamp(t / 1000, IST) for t in report.equity_ts_ms]
    twin_row = report.paper_vs_live is not None
    fig = make_subplots(
        rows=3 if twin_row else 2, cols=1,
        row_heights=[0.5, 0.3, 0.2] if twin_row else [0.6, 0.4], vertical_spacing=0.06,
        specs=[[{"type": "xy"}], [{"type": "table"}]] + ([[{"type": "table"}]] if twin_row else []),
    )  # fmt: skip
    fig.add_trace(go.Scatter(x=when, y=report.equity, name="equity (1-minute)"), row=1, col=1)
    m = report.metrics
    figures: list[tuple[str, Any]] = [
        ("net P&L", report.net_pnl),
        ("realised P&L", report.realized_pnl),
        ("unrealised P&L", report.unrealized_pnl),
        ("charges", report.charges),
        ("fills", report.fills),
        ("trades", m.get("trades")),
        ("win rate", m.get("win_rate")),
        ("profit factor", m.get("profit_factor")),
        ("Sharpe (1-minute bars)", m.get("sharpe")),
        ("max drawdown", m.get("max_drawdown")),
        ("time in market", m.get("exposure")),
        ("gross exposure (end / max)",
         f"{report.gross_exposure:,.0f} / {report.max_gross_exposure:,.0f}"),
        ("vetoed decisions", report.vetoed_decisions),
        ("vetoes by rule", ", ".join(f"{k} {v}" for k, v in report.vetoes.items()) or "-"),
        ("halts and state changes", ", ".join(h["kind"] for h in report.halts) or "-"),
    ]  # fmt: skip
    fig.add_trace(
        go.Table(
            header={"values": ["figure", "value"]},
            cells={"values": [[k for k, _ in figures], [_fmt(v) for _, v in figures]]},
        ),
        row=2,
        col=1,
    )
    if report.paper_vs_live is not None:
        twin = _twin_figures(report.paper_vs_live)
        fig.add_trace(
            go.Table(
                header={"values": ["Paper vs live", "value"]},
                cells={"values": [[k for k, _ in twin], [_fmt(v) for _, v in twin]]},
            ),
            row=3,
            col=1,
        )
    fig.update_layout(
        height=1200 if twin_row else 900, title=f"Chimera {report.mode} report {report.period}"
    )
    # Self-contained: the report opens offline and as a chat/email attachment.
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def print_report(report: Report, paths: dict[str, Path] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Chimera {report.mode} report {report.period}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    m = report.metrics
    for name, value in (
        ("net P&L", report.net_pnl),
        ("realised P&L (gross)", report.realized_pnl),
        ("charges", report.charges),
        ("unrealised P&L", report.unrealized_pnl),
        ("fills", report.fills),
        ("trades (closed / open)", f"{m.get('trades')} / {m.get('open_trades')}"),
        ("win rate", m.get("win_rate")),
        ("profit factor", m.get("profit_factor")),
        ("Sharpe (1-minute bars)", m.get("sharpe")),
        ("max drawdown", m.get("max_drawdown")),
        ("time in market", m.get("exposure")),
        ("gross exposure at end", report.gross_exposure),
        ("max gross exposure", report.max_gross_exposure),
        ("vetoed decisions", report.vetoed_decisions),
    ):
        table.add_row(name, _fmt(value))
    for rule, n in report.vetoes.items():
        table.add_row(f"  veto {rule}", str(n))
    for h in report.halts:
        table.add_row(f"  {h['kind']}", str(h.get("reason") or h.get("rule") or ""))
    console = Console()
    console.print(table)
    if report.paper_vs_live is not None:
        console.print(_twin_table(report.paper_vs_live))
    for note in report.notes:
        console.print(f"note: {note}")
    for kind, p in (paths or {}).items():
        console.print(f"{kind}: {p}")


def _twin_figures(t: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("orders (paired / live only / paper only)",
         f"{t['paired']} / {t['live_only']} / {t['paper_only']}"),
        ("paired by sequence (ids differed)", t["paired_by_sequence"]),
        ("fill rate live / paper", f"{_fmt(t['live_fill_rate'])} / {_fmt(t['paper_fill_rate'])}"),
    ]  # fmt: skip
    for name, label in (
        ("price_diff_bps", "live vs paper fill price, bps (live worse > 0)"),
        ("live_slippage_bps", "live slippage vs decision price, bps"),
        ("paper_slippage_bps", "paper slippage vs decision price, bps"),
        ("live_latency_ms", "live decision to first fill, ms"),
        ("paper_latency_ms", "paper decision to first fill, ms"),
    ):
        d = t[name]
        rows.append((label, "-" if not d["n"] else
                     f"p50 {d['p50']:.2f} · p90 {d['p90']:.2f} · p99 {d['p99']:.2f} · "
                     f"mean {d['mean']:.2f} (n {d['n']})"))  # fmt: skip
    return rows


def _twin_table(t: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"Paper vs live ({t.get('broker') or 'real broker'})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in _twin_figures(t):
        table.add_row(name, _fmt(value))
    return table


def main(argv: Iterable[str] | None = None) -> int:
    from chimera_core.config import default_config_path, load_config

    parser = argparse.ArgumentParser(prog="chimera report", description=__doc__.splitlines()[0])
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--date", help="IST trading day YYYY-MM-DD (default: today)")
    when.add_argument("--week", help="ISO week YYYY-Www (Monday to Sunday)")
    parser.add_argument("--mode", choices=MODES, help="journal to read (default: the config's)")
    parser.add_argument("--config", default=default_config_path(), help="TOML config (data_dir)")
    parser.add_argument("--data-dir", help="overrides the config's data_dir")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"chimera report: {exc}", file=sys.stderr)
        return 2
    data_dir = args.data_dir or cfg.data_dir
    mode = args.mode or cfg.mode
    if args.week:
        report = build_report(data_dir, mode, week=parse_week(args.week))
    else:
        report = build_report(data_dir, mode, parse_day(args.date) if args.date else None)
    paths = None if args.no_write else write_report(report, data_dir)
    print_report(report, paths)
    log.info("report_written", mode=mode, period=report.period,
             paths={k: str(v) for k, v in (paths or {}).items()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
