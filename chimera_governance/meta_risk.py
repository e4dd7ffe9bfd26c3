"""Meta risk: the veto. Its limits are hard; no other layer can override them.

State is explicit and time is an input: every call carries the exchange timestamp (epoch
ms), and the trading day is the session of the segment's market calendar that time falls
in (chimera_core.markets: it turns at the next open, not at midnight). Equity is the account's
(cash + positions marked to market), observed by ``observe`` (per closed bar, per intent,
per closed trade); never a configured figure. The daily loss is measured from the equity
at the session's first observation, the drawdown from the equity high-water mark, so a
profitable day can never read as a loss. Two rules are kill switches: the daily loss
limit stops entries for the rest of that trading day (the engine goes REDUCING), the max
drawdown halts until an explicit ``reset_halt("max_drawdown")``. Halts, the high-water
mark and the session's opening equity are persisted in a small SQLite file (WAL) and
reloaded at construction, so a restart can neither un-halt nor forget the peak.

Rule names (``Veto.rule``), their ``value`` and ``limit``:

=================== ============================== =========================== ==========
rule                value                          limit                       breach
=================== ============================== =========================== ==========
daily_loss          loss today, rupees (positive)  pct x equity at session open value >= limit
max_drawdown        drawdown from the high-water   max_drawdown                value >= limit
                    mark of equity, fraction
trades_per_symbol   trades today on this token     max_trades_per_symbol       value >= limit
trades_per_day      trades today, all tokens       max_trades_per_day          value >= limit
open_positions      open positions                 max_open_positions          value >= limit
position_value      this token's value, rupees     max_position_value          value > limit
stale_feed          1.0                            0.0                         feed stale
spread              spread, percent                max_spread_pct              value > limit
confidence          signal confidence              min_confidence              value < limit
trading_hours       local time as HHMM (914.0)     cut-off or next open, HHMM  outside entry hours
rolling_sharpe      Sharpe of last N trades        sharpe_floor (>= 20 trades) value < limit
order_rate          entries in the last 60 s       max_orders_per_minute       ``trip``
=================== ============================== =========================== ==========

``order_rate`` is tripped by the portfolio rules (chimera_governance/portfolio.py) through
``trip``: like the daily loss it stops entries (REDUCING) for the rest of the trading day.
``rollback_due`` tells, once a session, that the session's loss reached a fraction of its
opening equity (the pipeline then rolls the genomes back at the next bar).

Count limits use ``>=`` because ``update`` is evaluated *before* an entry: at the limit,
one more entry would exceed it. A halt loaded from disk (or still in force after its
numbers recovered) is reported as a veto of its rule with the numbers that tripped it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog

from chimera_core.contracts import MetaRiskOutput, Veto
from chimera_core.errors import ChimeraError
from chimera_core.feed.sanity import MAX_EXCHANGE_MS, MIN_EXCHANGE_MS
from chimera_core.markets import MarketCalendar, calendar_for
from chimera_core.store import Schema, open_store

log = structlog.get_logger(__name__)


DAILY_LOSS = "daily_loss"
MAX_DRAWDOWN = "max_drawdown"
ORDER_RATE = "order_rate"
HALT_RULES = (DAILY_LOSS, MAX_DRAWDOWN, ORDER_RATE)
SESSION_RULES = (DAILY_LOSS, ORDER_RATE)  # REDUCING for the trading day they tripped
HWM_SAVE_STEP = 0.001  # the high-water mark is written when it has risen this much


class MetaRiskError(ChimeraError):
    """Meta risk was asked to do something it cannot (e.g. reset an unknown halt rule)."""


@dataclass(frozen=True, slots=True)
class MetaRiskLimits:
    """Hard limits. Defaults are the documented ones (DESIGN.md, Governance)."""

    daily_loss_pct: float = 0.02  # of equity at the start of the trading day
    max_drawdown: float = 0.10  # fraction of peak equity
    max_trades_per_symbol: int = 10  # per trading day
    max_trades_per_day: int = 50  # all symbols
    max_open_positions: int = 5
    max_position_value: float = 200_000.0  # rupees per symbol, including the new entry
    max_spread_pct: float = 0.5  # percent: 0.5 means 0.5 % of price
    min_confidence: float = 0.3
    sharpe_window: int = 50  # closed trades in the rolling window
    sharpe_floor: float = -1.0
    sharpe_min_trades: int = 20  # the Sharpe rule is silent below this many trades

    def __post_init__(self) -> None:
        if self.sharpe_window < 2:
            raise MetaRiskError(f"sharpe_window must be >= 2 trades, got {self.sharpe_window}")


_NSE = calendar_for({}, 1)


def trading_day(exchange_ts_ms: int, calendar: MarketCalendar = _NSE) -> dt.date:
    """The session (trading day) an exchange timestamp belongs to: the latest session that
    opened at or before it, so the day turns at the next session's open, not at midnight.
    Never raises: a time outside the calendar's range maps to 1970-01-01."""
    day = calendar.session_day(exchange_ts_ms)
    if day <= 0:
        return dt.date(1970, 1, 1)
    return dt.date(day // 10_000, day // 100 % 100, day % 100)


def local_hhmm(exchange_ts_ms: int, calendar: MarketCalendar = _NSE) -> float:
    """Local wall-clock time in the market's timezone as HHMM (914.0), for veto numbers."""
    if not MIN_EXCHANGE_MS <= exchange_ts_ms <= MAX_EXCHANGE_MS:
        return -1.0
    t = dt.datetime.fromtimestamp(exchange_ts_ms / 1000.0, tz=ZoneInfo(calendar.timezone)).time()
    return float(t.hour * 100 + t.minute)


def rolling_sharpe(pnls: list[float] | deque[float]) -> float:
    """Per-trade Sharpe (mean / sample std, not annualised). 0.0 below two trades or when
    every trade is zero; +/-inf when the trades are identical and non-zero."""
    n = len(pnls)
    if n < 2:
        return 0.0
    mean = math.fsum(pnls) / n
    var = math.fsum((p - mean) ** 2 for p in pnls) / (n - 1)
    std = math.sqrt(var)
    if std <= 1e-12 * max(1.0, abs(mean)):
        return 0.0 if mean == 0 else math.copysign(math.inf, mean)
    return mean / std


# Append only. Version 2 came with equity-based risk; files from before versioning hold
# version 1's or version 2's tables and are adopted as what they hold.
SCHEMA = Schema(
    "meta-risk state",
    (
        """CREATE TABLE IF NOT EXISTS halt (
            reason      TEXT PRIMARY KEY,   -- the rule that halted: daily_loss | max_drawdown
            day         TEXT NOT NULL,      -- IST trading day it tripped (ISO date)
            value       REAL NOT NULL,
            limit_value REAL NOT NULL,
            set_ts_ms   INTEGER NOT NULL    -- exchange time it tripped
        )""",
        """CREATE TABLE IF NOT EXISTS equity_state (
            key   TEXT PRIMARY KEY,  -- high_water_mark | session_day | session_open_equity
            value TEXT NOT NULL
        )""",
    ),
    adopt_unversioned=True,
)


class MetaRisk:
    """The veto. ``on_trade_closed`` feeds results in; ``update`` judges an entry."""

    def __init__(
        self,
        state_path: str | Path,
        limits: MetaRiskLimits | None = None,
        calendar: MarketCalendar = _NSE,
    ) -> None:
        self.limits = limits or MetaRiskLimits()
        self.calendar = calendar
        self._store = open_store(state_path, SCHEMA, synchronous="NORMAL", busy_timeout_s=5.0)
        self._db = self._store.db
        # reason -> (day, value, limit)
        self._halts: dict[str, tuple[dt.date, float, float]] = {
            reason: (dt.date.fromisoformat(day), value, limit)
            for reason, day, value, limit in self._db.execute(
                "SELECT reason, day, value, limit_value FROM halt"
            )
        }
        self._pnls: deque[float] = deque(maxlen=self.limits.sharpe_window)
        saved = dict(self._db.execute("SELECT key, value FROM equity_state").fetchall())
        self._hwm: float | None = (
            float(saved["high_water_mark"]) if saved.get("high_water_mark") else None
        )
        self._day: dt.date | None = (
            dt.date.fromisoformat(saved["session_day"]) if saved.get("session_day") else None
        )
        self._open_equity: float | None = (
            float(saved["session_open_equity"]) if saved.get("session_open_equity") else None
        )
        self._equity = self._open_equity if self._open_equity is not None else math.nan
        self._saved_hwm = self._hwm if self._hwm is not None else 0.0
        self._closed_today = 0
        self._rollback_day = saved.get("rollback_day", "")
        if self._halts:
            log.warning("meta_risk.halt_loaded", halts=sorted(self._halts))

    # ---- inputs ------------------------------------------------------------------------

    def on_trade_closed(self, pnl: float, exchange_ts_ms: int) -> None:
        """A round trip closed with net P&L ``pnl`` (rupees, after charges): it feeds the
        rolling Sharpe and the day's count. Its effect on equity arrives with ``observe``."""
        self._roll_day(exchange_ts_ms)
        self._pnls.append(float(pnl))
        self._closed_today += 1

    def observe(self, equity: float, exchange_ts_ms: int) -> list[Veto]:
        """The account's equity at ``exchange_ts_ms``: moves the high-water mark, fixes the
        session's opening equity at its first observation, and returns the kill-switch
        rules it breaches (each also recorded as a halt)."""
        day = self._roll_day(exchange_ts_ms)
        if not math.isfinite(equity) or equity <= 0:
            return []  # nothing to judge by (no marks yet); never a reason to halt
        self._equity = equity
        changed = False
        if self._open_equity is None:
            self._open_equity = equity
            changed = True
        if self._hwm is None or equity > self._hwm:
            self._hwm = equity
            # Persisted when it has risen 0.1 % since last saved (not on every new high: a
            # replay or backtest observes every bar), so a restart's drawdown is measured
            # from at most 0.1 % below the true peak.
            changed = changed or equity >= self._saved_hwm * (1.0 + HWM_SAVE_STEP)
        if changed:
            self._save_equity_state()
        return self._check_kill_switches(day, exchange_ts_ms, equity)

    @property
    def kill_switch(self) -> str:
        """The kill switch in force: "max_drawdown" (HALTED until reset), "daily_loss" or
        "order_rate" (REDUCING until the next session), or ""."""
        if MAX_DRAWDOWN in self._halts:
            return MAX_DRAWDOWN
        for rule in SESSION_RULES:
            if rule in self._halts:
                return rule
        return ""

    def trip(self, rule: str, value: float, limit: float, exchange_ts_ms: int) -> None:
        """Trip a session kill switch another layer judged (``order_rate``): REDUCING for
        the rest of the trading day, persisted like the daily loss."""
        if rule not in SESSION_RULES or rule == DAILY_LOSS:
            raise MetaRiskError(f"cannot trip {rule!r}; expected {ORDER_RATE!r}")
        day = self._roll_day(exchange_ts_ms)
        self._record_halt(Veto(rule, value, limit, "REDUCING for the session"), day, exchange_ts_ms)

    def rollback_due(self, fraction: float, exchange_ts_ms: int) -> Veto | None:
        """Once a trading day: the session's loss has reached ``fraction`` of its opening
        equity (0 = never). Returns the numbers, and remembers (persisted) that it fired."""
        if fraction <= 0 or self._open_equity is None or not math.isfinite(self._equity):
            return None
        day = self._roll_day(exchange_ts_ms)
        loss = self._open_equity - self._equity
        limit = fraction * self._open_equity
        if loss <= 0 or loss < limit or self._rollback_day == day.isoformat():
            return None
        self._rollback_day = day.isoformat()
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO equity_state VALUES (?, ?)",
                ("rollback_day", self._rollback_day),
            )
        log.warning("meta_risk.session_loss_rollback", loss=loss, limit=limit, day=str(day))
        return Veto("session_loss_rollback", loss, limit, f"genome rollback, {day}")

    def update(
        self,
        *,
        token: str,
        exchange_ts_ms: int,
        confidence: float,
        spread_pct: float,
        feed_stale: bool,
        open_positions: int,
        position_value: float,
        trades_today_symbol: int,
        equity: float,
    ) -> MetaRiskOutput:
        """Judge an entry on ``token``. ``equity`` is the account's equity now (cash +
        positions marked to market). ``position_value`` is this token's position value
        including what is held, what is working and the proposed entry."""
        lim = self.limits
        fired = self.observe(equity, exchange_ts_ms)
        vetoes = list(fired)

        trades_today = self._closed_today + open_positions
        checks: list[tuple[bool, str, float, float, str]] = [
            (
                trades_today_symbol >= lim.max_trades_per_symbol,
                "trades_per_symbol",
                float(trades_today_symbol),
                float(lim.max_trades_per_symbol),
                token,
            ),
            (
                trades_today >= lim.max_trades_per_day,
                "trades_per_day",
                float(trades_today),
                float(lim.max_trades_per_day),
                "closed today + open",
            ),
            (
                open_positions >= lim.max_open_positions,
                "open_positions",
                float(open_positions),
                float(lim.max_open_positions),
                "",
            ),
            (
                position_value > lim.max_position_value,
                "position_value",
                float(position_value),
                lim.max_position_value,
                token,
            ),
            (feed_stale, "stale_feed", 1.0, 0.0, "feed is stale"),
            (spread_pct > lim.max_spread_pct, "spread", spread_pct, lim.max_spread_pct, "%"),
            (confidence < lim.min_confidence, "confidence", confidence, lim.min_confidence, ""),
        ]
        cal = self.calendar
        if not cal.entries_allowed(exchange_ts_ms):
            session = cal.session(exchange_ts_ms)
            now = local_hhmm(exchange_ts_ms, cal)
            if session is not None and cal.is_open(exchange_ts_ms):
                edge = local_hhmm(session.entry_cutoff_ms, cal)
                checks.append((True, "trading_hours", now, edge, "past the entry cut-off"))
            else:
                nxt = cal.next_session_open_ms(exchange_ts_ms)
                edge = local_hhmm(nxt, cal) if nxt < MAX_EXCHANGE_MS else -1.0
                checks.append((True, "trading_hours", now, edge, "market closed"))
        sharpe = rolling_sharpe(self._pnls)
        if len(self._pnls) >= lim.sharpe_min_trades and sharpe < lim.sharpe_floor:
            checks.append(
                (True, "rolling_sharpe", sharpe, lim.sharpe_floor, f"{len(self._pnls)} trades")
            )
        for breached, rule, value, limit, detail in checks:
            if breached:
                vetoes.append(Veto(rule=rule, value=value, limit=limit, detail=detail))

        # A halt in force whose numbers no longer breach (reloaded, or recovered) still
        # vetoes, with the numbers that tripped it.
        named = {v.rule for v in vetoes}
        for reason, (hday, value, limit) in sorted(self._halts.items()):
            if reason not in named:
                vetoes.append(
                    Veto(rule=reason, value=value, limit=limit, detail=f"halt since {hday}")
                )
        halted = bool(self._halts)
        if vetoes:
            log.debug(
                "meta_risk.veto",
                token=token,
                exchange_ts_ms=exchange_ts_ms,
                rules=[v.rule for v in vetoes],
            )
        return MetaRiskOutput(
            allowed=not vetoes and not halted,
            halt=halted,
            vetoes=tuple(vetoes),
            rolling_sharpe=sharpe,
            drawdown=self._drawdown(equity),
            daily_pnl=self.daily_pnl,
            trades_today=trades_today,
            open_positions=open_positions,
            equity=equity,
            session_open_equity=self._open_equity or 0.0,
            high_water_mark=self._hwm or 0.0,
            kill_switch=self.kill_switch,
        )

    @property
    def daily_pnl(self) -> float:
        """Equity now minus at the session's open (0 before both are known)."""
        if self._open_equity is None or not math.isfinite(self._equity):
            return 0.0
        return self._equity - self._open_equity

    # ---- halt state --------------------------------------------------------------------

    @property
    def halted(self) -> bool:
        return bool(self._halts)

    @property
    def halts(self) -> dict[str, dt.date]:
        """Halts in force: rule -> IST trading day it tripped."""
        return {reason: day for reason, (day, _, _) in self._halts.items()}

    def reset_halt(self, reason: str) -> bool:
        """Clear a halt by hand (the drawdown halt needs this). Returns whether one was in
        force. Resetting the drawdown halt re-bases the high-water mark to the equity last
        observed, so drawdown is measured from here; a daily-loss halt re-trips while the
        day's loss still breaches, because that limit is hard."""
        if reason not in HALT_RULES:
            raise MetaRiskError(
                f"unknown halt rule {reason!r}; expected one of {', '.join(HALT_RULES)}"
            )
        if reason == MAX_DRAWDOWN and math.isfinite(self._equity):
            self._hwm = self._equity
            self._save_equity_state()
        was = self._halts.pop(reason, None) is not None
        self._db.execute("DELETE FROM halt WHERE reason = ?", (reason,))
        log.warning("meta_risk.halt_reset", reason=reason, was_halted=was)
        return was

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> MetaRisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------

    def _roll_day(self, exchange_ts_ms: int) -> dt.date:
        """Move to the trading day of ``exchange_ts_ms`` (never backwards)."""
        day = trading_day(exchange_ts_ms, self.calendar)
        if self._day is not None and day <= self._day:
            return self._day
        self._day = day
        self._open_equity = None  # the session's first observation fixes it
        self._equity = math.nan
        self._closed_today = 0
        self._save_equity_state()
        for rule in SESSION_RULES:
            stale = self._halts.get(rule)
            if stale is not None and stale[0] < day:
                del self._halts[rule]
                self._db.execute("DELETE FROM halt WHERE reason = ?", (rule,))
                log.info("meta_risk.halt_cleared", reason=rule, halt_day=str(stale[0]))
        return day

    def _drawdown(self, equity: float) -> float:
        """Fraction below the equity high-water mark (0 before any observation)."""
        hwm = self._hwm
        if hwm is None or hwm <= 0 or not math.isfinite(equity):
            return 0.0
        return max(0.0, (hwm - equity) / hwm)

    def _save_equity_state(self) -> None:
        self._saved_hwm = self._hwm if self._hwm is not None else 0.0
        rows = [
            ("high_water_mark", "" if self._hwm is None else repr(self._hwm)),
            ("session_day", "" if self._day is None else self._day.isoformat()),
            (
                "session_open_equity",
                "" if self._open_equity is None else repr(self._open_equity),
            ),
        ]
        with self._store.transaction() as db:  # the three keys move together
            db.executemany("INSERT OR REPLACE INTO equity_state VALUES (?, ?)", rows)

    def _check_kill_switches(self, day: dt.date, exchange_ts_ms: int, equity: float) -> list[Veto]:
        lim = self.limits
        out: list[Veto] = []
        opened = self._open_equity if self._open_equity is not None else equity
        loss = opened - equity
        loss_limit = lim.daily_loss_pct * opened
        if loss > 0 and loss >= loss_limit:
            out.append(Veto(DAILY_LOSS, loss, loss_limit, "halt for the trading day"))
        dd = self._drawdown(equity)
        if dd >= lim.max_drawdown:
            out.append(Veto(MAX_DRAWDOWN, dd, lim.max_drawdown, "halt until reset_halt"))
        for v in out:
            self._record_halt(v, day, exchange_ts_ms)
        return out

    def _record_halt(self, v: Veto, day: dt.date, exchange_ts_ms: int) -> None:
        if v.rule in self._halts:
            return
        self._halts[v.rule] = (day, v.value, v.limit)
        self._db.execute(
            "INSERT OR REPLACE INTO halt (reason, day, value, limit_value, set_ts_ms)"
            " VALUES (?, ?, ?, ?, ?)",
            (v.rule, day.isoformat(), v.value, v.limit, exchange_ts_ms),
        )
        log.warning(
            "meta_risk.halt",
            reason=v.rule,
            value=v.value,
            limit=v.limit,
            day=day.isoformat(),
            exchange_ts_ms=exchange_ts_ms,
        )
