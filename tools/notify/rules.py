"""Telemetry in, alerts out: which message means what the trader must hear.

``AlertRules`` is plain state: it is fed decoded telemetry (and the approvals store's
pending list) with the wall-clock time it arrived, and returns the alerts each one raises.
It does no I/O, so a test feeds it messages and reads alerts. A repeated state never
raises twice: every alert here fires on a change (a new session, a state entered, a token
newly dark, a limit crossed), and is re-armed only when the state goes away again.

Where each alert comes from (docs/RUNBOOK.md has the same table for the operator):

=====================  ===========================================================
engine_started         ``session``: a session id not seen before
engine_stopped         ``control``: the halt ``chimera live`` records on SIGTERM/SIGINT
engine_unreachable     no ``health`` for ``notify.engine_silent_s``
feed_dark / recovered  ``health.feed_stale`` for ``notify.dark_feed_s`` / back to fresh
trading_state          ``health.trading_state`` changed (the reason: the last ``control``
                       event and ``health.exits_only_reason``)
daily_loss_near        ``tick.*`` decisions' ``meta_risk``: loss today at limit_fraction
drawdown_near          of ``daily_loss_pct`` x open equity / of ``max_drawdown``
daily_loss_tripped     ``health.exits_only_reason`` / a decision's ``meta_risk.kill_switch``
                       daily_loss / ``control`` reduce ``meta_risk:daily_loss`` (restored)
drawdown_tripped       a decision's ``meta_risk.kill_switch`` max_drawdown / ``control``
                       halt ``meta_risk_persisted:max_drawdown`` (restored at start)
position_unprotected   ``health.unprotected`` gained a token (``position_protected``: emptied)
journal_write_failed   ``health.journal_error`` became non-empty
disk_low               ``health.disk_free_mb`` below the config's ``min_free_disk_mb``
broker_reject          ``exec`` REJECTED (a burst is summarised by the rate limit)
recon_mismatch         ``recon`` with ok false
approval_waiting       the approvals store (ApprovalsView) has a new PENDING intent
proposal_waiting       a PENDING genome proposal (a candidate, an assistant's change)
shadow_candidate_passed a PENDING shadow promotion (prm-): its gates passed
daily_report           the session's close (market calendar) + daily_report_after_min
bot_refused            a new line in data_dir/bot/refusals.jsonl (chimera bot refused a stranger)
fill                   ``exec`` carrying a fill (only with ``notify.fills``)
genome_changed         ``tick.*`` decisions' ``genome``: a family's version in force moved
                       (a promotion, an operator's ``chimera rollback``, the session-loss
                       rollback, a learned version; the cause: the last ``control``
                       approve/rollback, else the engine's own)
=====================  ===========================================================
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import msgspec

from chimera_core.config import Config, NotifyConfig
from chimera_core.contracts import (
    ControlEvent,
    ExecKind,
    ExecutionReport,
    Health,
    Reconciliation,
    SessionInfo,
)

SEVERITIES = ("info", "warning", "critical")
_STATE_SEVERITY = {
    "ACTIVE": "info",
    "REDUCING": "warning",
    "PAUSED": "warning",
    "HALTED": "critical",
}
# The control commands that move the trading state: their arg is the reason.
_STATE_COMMANDS = frozenset({"halt", "pause", "resume", "reduce", "reduce_clear", "reset_halt"})


class Alert(msgspec.Struct, frozen=True):
    """One thing to tell the trader: a stable name, a severity and a line of text."""

    name: str
    severity: str
    text: str
    raised_ns: int
    attach: str = ""  # a file sent with it where the channel takes attachments (the report)


class MetaRiskView(msgspec.Struct, gc=False):
    """The part of a decision's meta-risk output the limit alerts read."""

    drawdown: float
    daily_pnl: float
    session_open_equity: float = 0.0
    kill_switch: str = ""


class ApprovalView(msgspec.Struct, gc=False):
    required: bool
    status: str
    approval_id: str = ""


class GenomeView(msgspec.Struct, gc=False):
    family: str
    version: int


class DecisionView(msgspec.Struct, gc=False):
    """A decision with only what notify reads (the rest is skipped while decoding)."""

    token: str
    meta_risk: MetaRiskView | None = None
    approval: ApprovalView | None = None
    genome: GenomeView | None = None


class TickDecisionView(msgspec.Struct, array_like=True, gc=False):
    recv_ns: int
    frame: msgspec.Raw
    decision: DecisionView | None


class Memory(msgspec.Struct):
    """What the rules must remember across a notify restart so that nothing is said twice
    (kept in the outbox file): the session announced, the state, what is in force."""

    session_id: str = ""
    state: str = ""
    dark: bool = False
    stopped: bool = False
    unprotected: list[str] = msgspec.field(default_factory=list)
    journal_error: str = ""
    low_disk: bool = False
    daily_tripped: bool = False
    drawdown_tripped: bool = False
    near: dict[str, float] = msgspec.field(default_factory=dict)
    approvals_seen: list[str] = msgspec.field(default_factory=list)
    reported_days: list[int] = msgspec.field(default_factory=list)  # YYYYMMDD reported
    refusals_read: int = 0  # bytes of the bot's refusals file already told
    genomes: dict[str, int] = msgspec.field(default_factory=dict)  # family -> version seen


class Pending(msgspec.Struct, frozen=True):
    """A PENDING approval as the store holds it (from ApprovalsView.pending())."""

    approval_id: str
    side: str
    qty: int
    token: str
    ref_price: float
    value: float
    reason: str
    created_ms: int


def _hms(ns_or_ms: float, tz: dt.tzinfo) -> str:
    return dt.datetime.fromtimestamp(ns_or_ms, tz).strftime("%H:%M:%S %Z")


class AlertRules:
    """Turns telemetry into alerts (see the module docstring for the table)."""

    def __init__(self, cfg: Config, tz: dt.tzinfo = dt.UTC) -> None:
        self.notify: NotifyConfig = cfg.notify
        self.tz = tz
        self._limits_from(cfg)
        self.reported_days: list[int] = []
        self.refusals_read = 0
        self.session_id = ""
        self._limits_session = ""
        self.last_health_ns = 0
        self.unreachable = False
        self.stopped = False  # the engine said it is stopping: its silence is expected
        self.state = ""  # trading state as last seen ("" before the first health)
        self.stale_since_ns: int | None = None
        self.dark = False
        self.unprotected: set[str] = set()
        self.journal_error = ""
        self.low_disk = False
        self.last_reason = ""  # the last state-moving control event, "command arg"
        self.daily_tripped = False
        self.drawdown_tripped = False
        self.near: dict[str, float] = {}  # rule -> session open equity it was raised for
        self.approvals_seen: set[str] = set()
        self.approvals_dirty = True  # a decision said an approval is pending: poll now
        self.risk: MetaRiskView | None = None
        self.genomes: dict[str, int] = {}  # family -> version in force, as last seen
        self.genome_cause = ""  # the last control event that changes a genome

    def memory(self) -> Memory:
        return Memory(
            self.session_id, self.state, self.dark, self.stopped, sorted(self.unprotected),
            self.journal_error, self.low_disk, self.daily_tripped, self.drawdown_tripped,
            dict(self.near), sorted(self.approvals_seen), list(self.reported_days),
            self.refusals_read, dict(self.genomes),
        )  # fmt: skip

    def restore(self, m: Memory) -> None:
        self.session_id, self.state, self.dark, self.stopped = (
            m.session_id, m.state, m.dark, m.stopped
        )  # fmt: skip
        self.unprotected, self.journal_error, self.low_disk = (
            set(m.unprotected),
            m.journal_error,
            m.low_disk,
        )
        self.daily_tripped, self.drawdown_tripped = m.daily_tripped, m.drawdown_tripped
        self.near, self.approvals_seen = dict(m.near), set(m.approvals_seen)
        self.reported_days = list(m.reported_days)
        self.refusals_read = m.refusals_read
        self.genomes = dict(m.genomes)

    def _limits_from(self, cfg: Config) -> None:
        g = cfg.governance
        self.daily_loss_pct = g.daily_loss_pct
        self.max_drawdown = g.max_drawdown
        self.approval_ttl_ms = int(g.approval_ttl_s * 1000)
        self.min_free_disk_mb = cfg.min_free_disk_mb

    def _alert(self, name: str, severity: str, text: str, now_ns: int) -> Alert:
        return Alert(name, severity, text, now_ns)

    # ---- per topic ---------------------------------------------------------------------
    def on_session(self, info: SessionInfo, now_ns: int) -> list[Alert]:
        if info.session_id != self._limits_session:
            self._limits_session = info.session_id
            try:  # the engine's own limits, exactly as it runs with them
                self._limits_from(msgspec.json.decode(info.config_json, type=Config))
            except msgspec.DecodeError:
                pass
        if info.session_id == self.session_id:
            return []
        self.session_id = info.session_id
        # A new engine starts ACTIVE; what it restores at start (a kept halt) comes as a
        # change from there.
        self.state = "ACTIVE"
        self.unreachable = False
        self.stopped = False
        self.last_health_ns = now_ns
        return [
            self._alert(
                "engine_started",
                "info",
                f"engine started: session {info.session_id}, mode {info.mode}, "
                f"code {info.code_version or '?'}",
                now_ns,
            )
        ]

    def on_health(self, h: Health, now_ns: int) -> list[Alert]:
        out: list[Alert] = []
        self.last_health_ns = now_ns
        if self.unreachable:
            self.unreachable = False
            out.append(self._alert("engine_unreachable", "info", "engine reachable again", now_ns))
        # The feed: dark only after dark_feed_s of staleness, recovered once fresh again.
        if h.feed_stale:
            if self.stale_since_ns is None:
                self.stale_since_ns = now_ns
            dark_for = (now_ns - self.stale_since_ns) / 1e9
            if not self.dark and dark_for >= self.notify.dark_feed_s:
                self.dark = True
                why = "disconnected" if not h.feed_connected else "connected but silent"
                out.append(
                    self._alert(
                        "feed_dark",
                        "critical",
                        f"market feed dark for {dark_for:.0f} s ({why}); no new entries "
                        "are decided on a stale feed",
                        now_ns,
                    )
                )
        else:
            if self.dark:
                since = self.stale_since_ns
                after = "" if since is None else f" after {(now_ns - since) / 1e9:.0f} s"
                out.append(
                    self._alert("feed_recovered", "info", f"market feed back{after}", now_ns)
                )
            self.dark = False
            self.stale_since_ns = None
        if "meta_risk:daily_loss" in h.exits_only_reason:
            out += self._trip("daily_loss", now_ns)
        # The trading state: an alert on each change (the first health only if not ACTIVE).
        state = h.trading_state
        if state != self.state and not self.stopped:
            if self.state or state != "ACTIVE":
                reason = h.exits_only_reason if state == "REDUCING" else ""
                if state == "HALTED" and self.drawdown_tripped:
                    reason = "meta_risk:max_drawdown"  # the engine halts itself, unrecorded
                reason = reason or self.last_reason or "no reason recorded"
                text = f"trading state {self.state or '?'} → {state}: {reason}"
                numbers = self._risk_numbers()
                if numbers and "meta_risk" in reason:
                    text += f" ({numbers})"
                out.append(self._alert("trading_state", _STATE_SEVERITY.get(state, "warning"),
                                       text, now_ns))  # fmt: skip
            self.state = state
        # Positions whose feed went dark: stops and targets cannot be watched.
        dark_tokens = set(h.unprotected)
        new = sorted(dark_tokens - self.unprotected)
        if new:
            out.append(
                self._alert(
                    "position_unprotected",
                    "critical",
                    f"position unprotected (no ticks, stop/target not watched): {', '.join(new)}",
                    now_ns,
                )
            )
        elif self.unprotected and not dark_tokens:
            out.append(
                self._alert(
                    "position_protected",
                    "info",
                    f"positions watched again: {', '.join(sorted(self.unprotected))}",
                    now_ns,
                )
            )
        self.unprotected = dark_tokens
        if h.journal_error and h.journal_error != self.journal_error:
            out.append(
                self._alert(
                    "journal_write_failed",
                    "critical",
                    f"journal write failed: {h.journal_error}; the engine takes exits only",
                    now_ns,
                )
            )
        self.journal_error = h.journal_error
        low = 0 <= h.disk_free_mb < self.min_free_disk_mb
        if low and not self.low_disk:
            out.append(
                self._alert(
                    "disk_low",
                    "warning",
                    f"disk space low under data_dir: {h.disk_free_mb:.0f} MB free "
                    f"(minimum {self.min_free_disk_mb} MB)",
                    now_ns,
                )
            )
        self.low_disk = low
        return out

    def on_control(self, ev: ControlEvent, now_ns: int) -> list[Alert]:
        out: list[Alert] = []
        if ev.ok and (ev.command == "genome_rollback" or (
            ev.command == "approve" and ev.arg.startswith(("prp-", "prm-"))
        )):  # fmt: skip
            who = f" by {ev.by}" if ev.by else ""
            self.genome_cause = f"{ev.command} {ev.arg}{who}"
        if not ev.ok or ev.command not in _STATE_COMMANDS:
            return out
        self.last_reason = f"{ev.command} {ev.arg}".strip()
        if ev.command == "halt" and ev.arg.startswith("shutdown_"):
            self.stopped = True
            out.append(
                self._alert(
                    "engine_stopped",
                    "warning",
                    f"engine stopping ({ev.arg.removeprefix('shutdown_').upper()}); trading "
                    "halted first",
                    now_ns,
                )
            )
        elif ev.command == "reduce" and ev.arg.startswith("meta_risk:daily_loss"):
            out += self._trip("daily_loss", now_ns)
        elif ev.command == "halt" and "max_drawdown" in ev.arg:
            out += self._trip("max_drawdown", now_ns)
        elif ev.command == "reduce_clear" and ev.arg.startswith("meta_risk"):
            self.daily_tripped = False
        elif ev.command == "reset_halt":
            self.drawdown_tripped = False
        return out

    def _trip(self, rule: str, now_ns: int) -> list[Alert]:
        """A kill switch in force, told once until it is lifted. Seen on a control event
        (a restored switch), a decision's ``meta_risk.kill_switch`` or health's reason."""
        numbers = self._risk_numbers() or "no risk check seen yet"
        if rule == "daily_loss" and not self.daily_tripped:
            self.daily_tripped = True
            return [
                self._alert(
                    "daily_loss_tripped",
                    "critical",
                    f"daily loss limit ({self.daily_loss_pct:.2%} of the opening equity) "
                    f"tripped: exits only until the next session ({numbers})",
                    now_ns,
                )
            ]
        if rule == "max_drawdown" and not self.drawdown_tripped:
            self.drawdown_tripped = True
            return [
                self._alert(
                    "drawdown_tripped",
                    "critical",
                    f"max drawdown ({self.max_drawdown:.2%}) tripped: HALTED until "
                    f"`chimera reset-halt max_drawdown` ({numbers})",
                    now_ns,
                )
            ]
        return []

    def on_exec(self, r: ExecutionReport, now_ns: int) -> list[Alert]:
        if r.kind is ExecKind.REJECTED:
            return [
                self._alert(
                    "broker_reject",
                    "warning",
                    f"order rejected: {r.side.value} {r.order_qty} {r.token} "
                    f"({r.purpose.value.lower()}) {r.client_order_id}: {r.reason or 'no reason'}",
                    now_ns,
                )
            ]
        if r.fill is not None and self.notify.fills:
            f = r.fill
            return [
                self._alert(
                    "fill",
                    "info",
                    f"fill: {f.side.value} {f.qty} {f.token} @ {f.price:.2f} "
                    f"({r.purpose.value.lower()}, {r.filled_qty}/{r.order_qty} filled) "
                    f"{r.client_order_id}",
                    now_ns,
                )
            ]
        return []

    def on_recon(self, recon: Reconciliation, now_ns: int) -> list[Alert]:
        if recon.ok:
            return []
        return [
            self._alert(
                "recon_mismatch",
                "critical",
                "broker reconciliation mismatch, no entries until fixed: "
                + "; ".join(recon.mismatches or ("(none listed)",)),
                now_ns,
            )
        ]

    def on_decision(self, d: DecisionView, now_ns: int) -> list[Alert]:
        out: list[Alert] = []
        g = d.genome
        if g is not None:
            seen = self.genomes.get(g.family)
            if seen != g.version:
                self.genomes[g.family] = g.version
                if seen is not None:  # the first sighting is what is in force, not a change
                    cause = (
                        self.genome_cause or "the engine's own (session-loss rollback or learning)"
                    )
                    self.genome_cause = ""
                    out.append(self._alert(
                        "genome_changed", "warning",
                        f"genome {g.family} v{seen} -> v{g.version} in force ({cause}); "
                        f"undo: chimera rollback {g.family}:{seen}",
                        now_ns,
                    ))  # fmt: skip
        a = d.approval
        if a is not None and a.status == "PENDING" and a.approval_id not in self.approvals_seen:
            self.approvals_dirty = True
        m = d.meta_risk
        if m is None:
            return out
        self.risk = m
        if m.kill_switch:
            out += self._trip(m.kill_switch, now_ns)
        else:
            self.daily_tripped = self.drawdown_tripped = False
        frac = self.notify.limit_fraction
        opened = m.session_open_equity
        limit = self.daily_loss_pct * opened
        loss = -m.daily_pnl
        if limit > 0 and loss >= frac * limit:
            if self.near.get("daily_loss") != opened:
                self.near["daily_loss"] = opened
                out.append(
                    self._alert(
                        "daily_loss_near",
                        "warning",
                        f"daily loss at {loss / limit:.0%} of its limit: lost {loss:,.2f} of "
                        f"{limit:,.2f} ({self.daily_loss_pct:.1%} of {opened:,.2f} at the open)",
                        now_ns,
                    )
                )
        elif limit > 0 and loss < frac * limit * 0.9:
            self.near.pop("daily_loss", None)  # re-armed once clearly back under
        if m.drawdown >= frac * self.max_drawdown:
            if "drawdown" not in self.near:
                self.near["drawdown"] = m.drawdown
                out.append(
                    self._alert(
                        "drawdown_near",
                        "warning",
                        f"drawdown at {m.drawdown / self.max_drawdown:.0%} of its limit: "
                        f"{m.drawdown:.2%} of {self.max_drawdown:.2%} from the high-water mark",
                        now_ns,
                    )
                )
        elif m.drawdown < frac * self.max_drawdown * 0.9:
            self.near.pop("drawdown", None)
        return out

    def on_approvals(self, pending: Iterable[Pending], now_ns: int) -> list[Alert]:
        out: list[Alert] = []
        self.approvals_dirty = False
        for p in pending:
            if p.approval_id in self.approvals_seen:
                continue
            self.approvals_seen.add(p.approval_id)
            expires_ms = p.created_ms + self.approval_ttl_ms
            out.append(
                self._alert(
                    "approval_waiting",
                    "warning",
                    f"approval waiting {p.approval_id}: {p.side} {p.qty} {p.token} @ "
                    f"{p.ref_price:.2f} (value {p.value:,.2f}; {p.reason}); expires "
                    f"{_hms(expires_ms / 1000, self.tz)} — `chimera approve {p.approval_id}` "
                    f"or `chimera reject {p.approval_id}`",
                    now_ns,
                )
            )
        return out

    def on_proposals(self, pending: Iterable[dict[str, Any]], now_ns: int) -> list[Alert]:
        """Proposals waiting for a human: a shadow candidate that passed its gates
        (``promotion``), a genome candidate or an assistant's change."""
        out: list[Alert] = []
        for p in pending:
            pid = str(p["proposal_id"])
            if pid in self.approvals_seen:
                continue
            self.approvals_seen.add(pid)
            payload = p.get("payload") or {}
            what = ", ".join(f"{k}={v}" for k, v in payload.items() if k != "params")
            name = "shadow_candidate_passed" if p["kind"] == "promotion" else "proposal_waiting"
            out.append(
                self._alert(
                    name,
                    "warning",
                    f"{p['kind']} waiting {pid} ({what}; by {p['proposed_by']}): {p['reason']}"
                    f" — `chimera approve {pid}` or `chimera reject {pid}`",
                    now_ns,
                )
            )
        return out

    def on_refusal(self, record: dict[str, Any], now_ns: int) -> list[Alert]:
        """Someone not on the bot's allow-list wrote to it (``chimera bot``)."""
        who = f"user {record.get('user_id')}"
        if record.get("username"):
            who += f" (@{record['username']})"
        return [
            self._alert(
                "bot_refused",
                "critical",
                f"the Telegram bot refused {who} in chat {record.get('chat_id')}: "
                f"{record.get('text', '')!r} — not on [bot] allowed_users",
                now_ns,
            )
        ]

    def on_report(self, day: int, text: str, html: str, now_ns: int) -> list[Alert]:
        """The day's report, once per trading day."""
        if day in self.reported_days:
            return []
        self.reported_days.append(day)
        del self.reported_days[:-30]
        alert = self._alert("daily_report", "info", f"{text}\nfull report: {html}", now_ns)
        return [msgspec.structs.replace(alert, attach=html)]

    def on_clock(self, now_ns: int) -> list[Alert]:
        """What only the passing of time shows: an engine that stopped talking."""
        silent_s = (now_ns - self.last_health_ns) / 1e9
        if (
            self.last_health_ns
            and not (self.unreachable or self.stopped)
            and silent_s >= self.notify.engine_silent_s
        ):
            self.unreachable = True
            return [
                self._alert(
                    "engine_unreachable",
                    "critical",
                    f"no health from the engine for {silent_s:.0f} s: is chimera live running?",
                    now_ns,
                )
            ]
        return []

    def _risk_numbers(self) -> str:
        m = self.risk
        if m is None:
            return ""
        limit = self.daily_loss_pct * m.session_open_equity
        return (
            f"at the last risk check: daily P&L {m.daily_pnl:,.2f} vs limit -{limit:,.2f}; "
            f"drawdown {m.drawdown:.2%} vs {self.max_drawdown:.2%}"
        )
