"""Telemetry → alerts: each alert on a change only (a repeated state never again), with
the numbers; and what the rules remember across a notify restart."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import parse_config
from chimera_core.contracts import (
    ControlEvent,
    ExecKind,
    ExecutionReport,
    Fill,
    Health,
    Reconciliation,
    SessionInfo,
    Side,
)
from tools.notify.rules import (
    AlertRules,
    DecisionView,
    GenomeView,
    Memory,
    MetaRiskView,
    Pending,
)

S = 1_000_000_000
CFG = parse_config(
    "[notify]\ndark_feed_s = 5.0\nfills = true\nlimit_fraction = 0.8\nengine_silent_s = 3.0\n"
    "[governance]\ndaily_loss_pct = 0.02\nmax_drawdown = 0.1\napproval_ttl_s = 60\n"
)


def health(**kw: object) -> Health:
    base = dict(at_ns=0, engine={}, feed_connected=True, feed_connects=1, feed_stale=False,
                telemetry_sent=0, telemetry_dropped=0, halted=False, states={})  # fmt: skip
    return Health(**{**base, **kw})  # type: ignore[arg-type]


def names(alerts: list) -> list[str]:
    return [a.name for a in alerts]


states = st.lists(st.sampled_from(["ACTIVE", "REDUCING", "PAUSED", "HALTED"]), max_size=40)


@settings(max_examples=100, deadline=None)
@given(states)
def test_one_trading_state_alert_per_change(seq):
    rules = AlertRules(CFG)
    got = []
    for i, state in enumerate(seq):
        got += [a for a in rules.on_health(health(trading_state=state), i * S)
                if a.name == "trading_state"]  # fmt: skip
    # Reference: a change from the state before ("" first; a first ACTIVE is no news).
    expected = [s for prev, s in zip(["ACTIVE", *seq], seq, strict=False) if s != prev]
    assert [a.text.split("→ ")[1].split(":")[0] for a in got] == expected
    sev = {"ACTIVE": "info", "REDUCING": "warning", "PAUSED": "warning", "HALTED": "critical"}
    assert [a.severity for a in got] == [sev[s] for s in expected]


def test_the_state_alert_names_the_rule_and_its_numbers():
    rules = AlertRules(CFG)
    rules.on_health(health(), 0)
    seen = rules.on_decision(
        DecisionView("2885", MetaRiskView(0.01, -2100.0, 100_000.0, "daily_loss")), S
    )
    assert names(seen) == ["daily_loss_tripped", "daily_loss_near"]
    assert "-2,100.00 vs limit -2,000.00" in seen[0].text
    # Said once, however it shows: the control event of a restored switch, health's reason.
    assert rules.on_control(ControlEvent("reduce", "meta_risk:daily_loss", True, "{}", 0), S) == []
    (alert,) = rules.on_health(
        health(trading_state="REDUCING", exits_only=True, exits_only_reason="meta_risk:daily_loss"),
        2 * S,
    )
    assert alert.name == "trading_state" and alert.severity == "warning"
    assert "meta_risk:daily_loss" in alert.text and "-2,100.00 vs limit -2,000.00" in alert.text
    # Lifted (the next session's first decision), then tripped again: told again.
    rules.on_decision(DecisionView("2885", MetaRiskView(0.0, 0.0, 100_000.0, "")), 3 * S)
    again = rules.on_health(
        health(trading_state="REDUCING", exits_only_reason="meta_risk:daily_loss"), 4 * S
    )
    assert names(again) == ["daily_loss_tripped"]


def test_a_drawdown_halt_is_told_with_its_rule():
    rules = AlertRules(CFG)
    rules.on_health(health(), 0)
    seen = rules.on_decision(
        DecisionView("2885", MetaRiskView(0.12, -500.0, 100_000.0, "max_drawdown")), S
    )
    assert names(seen) == ["drawdown_tripped", "drawdown_near"]
    (alert,) = rules.on_health(health(trading_state="HALTED", halted=True), 2 * S)
    assert alert.severity == "critical" and "meta_risk:max_drawdown" in alert.text


def test_feed_dark_only_past_its_seconds_and_recovered_once():
    rules = AlertRules(CFG)
    out = []
    for t in range(0, 12):
        out += rules.on_health(health(feed_stale=t < 8, feed_connected=t < 2), t * S)
    assert names(out) == ["feed_dark", "feed_recovered"]
    assert "dark for 5 s" in out[0].text and "back after 8 s" in out[1].text
    assert out[0].severity == "critical"


def test_limits_near_at_their_fraction_once_and_rearmed_when_clearly_back():
    rules = AlertRules(CFG)
    m = lambda dd, pnl: DecisionView("1", MetaRiskView(dd, pnl, 100_000.0))  # noqa: E731
    seq = [m(0.0, -1000), m(0.0, -1600), m(0.085, -1700), m(0.09, -1800), m(0.0, -100),
           m(0.0, -1650)]  # fmt: skip
    got = [names(rules.on_decision(d, i * S)) for i, d in enumerate(seq)]
    assert got == [[], ["daily_loss_near"], ["drawdown_near"], [], [], ["daily_loss_near"]]


def test_positions_journal_disk_rejects_recon_fills_and_approvals():
    rules = AlertRules(CFG)
    out = rules.on_health(health(unprotected=["2885"]), 0)
    out += rules.on_health(health(unprotected=["2885", "1594"]), S)
    out += rules.on_health(health(unprotected=[]), 2 * S)
    assert names(out) == ["position_unprotected", "position_unprotected", "position_protected"]
    assert out[1].text.endswith(": 1594")
    out = rules.on_health(health(journal_error="disk I/O error", disk_free_mb=10.0), 3 * S)
    out += rules.on_health(health(journal_error="disk I/O error", disk_free_mb=10.0), 4 * S)
    assert names(out) == ["journal_write_failed", "disk_low"]
    rep = ExecutionReport(ExecKind.REJECTED, "c1", "i1", "2885", Side.BUY, 10, 0, 0.0,
                          reason="RMS: margin")  # fmt: skip
    assert "RMS: margin" in rules.on_exec(rep, 5 * S)[0].text
    fill = Fill("f1", "c1", "2885", Side.BUY, 10, 101.5, 0.2, 0)
    rep = ExecutionReport(ExecKind.FILLED, "c1", "i1", "2885", Side.BUY, 10, 10, 101.5, fill=fill)
    assert "BUY 10 2885 @ 101.50" in rules.on_exec(rep, 6 * S)[0].text
    recon = Reconciliation(
        "paper", False, (), (), (), (), (), 0, ("position 2885: 5 vs 0",), 0.0, 0
    )
    assert "position 2885: 5 vs 0" in rules.on_recon(recon, 7 * S)[0].text
    p = Pending("apv-1", "BUY", 10, "2885", 100.0, 1000.0, "value > limit", 1_700_000_000_000)
    (a,) = rules.on_approvals([p], 8 * S)
    assert a.name == "approval_waiting" and "apv-1" in a.text and "chimera approve apv-1" in a.text
    assert rules.on_approvals([p], 9 * S) == []


def test_session_start_stop_and_silence():
    rules = AlertRules(CFG)
    info = SessionInfo("s1", 0, "paper", msgspec.json.encode(CFG), "sha", "v1")
    assert names(rules.on_session(info, 0)) == ["engine_started"]
    assert rules.on_session(info, S) == []
    rules.on_health(health(), S)
    assert names(rules.on_clock(5 * S)) == ["engine_unreachable"]
    assert rules.on_clock(6 * S) == []
    assert names(rules.on_health(health(), 7 * S)) == ["engine_unreachable"]  # back: info
    stop = rules.on_control(ControlEvent("halt", "shutdown_sigterm", True, "{}", 0), 8 * S)
    assert names(stop) == ["engine_stopped"]
    assert rules.on_clock(60 * S) == []  # a stopped engine's silence is expected


@settings(max_examples=50, deadline=None)
@given(states, st.lists(st.booleans(), max_size=20))
def test_a_restarted_notify_says_nothing_the_first_one_said(seq, stale):
    """The memory (kept in the outbox) carries what was said: the same telemetry again to a
    restored instance raises nothing."""
    first = AlertRules(CFG)
    info = SessionInfo("s1", 0, "paper", b"{}", "sha", "v1")
    first.on_session(info, 0)
    hs = [health(trading_state=s, feed_stale=stale[i % len(stale)] if stale else False)
          for i, s in enumerate(seq)]  # fmt: skip
    for i, h in enumerate(hs):
        first.on_health(h, i * S)
    p = Pending("apv-9", "SELL", 1, "1594", 10.0, 10.0, "r", 0)
    first.on_approvals([p], S)
    saved = msgspec.json.encode(first.memory())
    second = AlertRules(CFG)
    second.restore(msgspec.json.decode(saved, type=Memory))
    assert second.on_session(info, 0) == []
    assert second.on_approvals([p], S) == []
    if hs:
        assert [a for a in second.on_health(hs[-1], len(hs) * S) if a.name == "trading_state"] == []


def test_a_genome_version_change_is_told_once_with_its_cause():
    rules = AlertRules(CFG)
    g = lambda fam, v: DecisionView("1", genome=GenomeView(fam, v))  # noqa: E731
    # First sighting: what is in force, no alert; the same again: none.
    assert (
        rules.on_decision(g("default", 3), 0) == [] and rules.on_decision(g("default", 3), S) == []
    )
    # An operator's rollback recorded on the control topic, then the version moves.
    rollback = ControlEvent("genome_rollback", "default", True, "{}", 1, by="telegram:42")
    assert rules.on_control(rollback, 2 * S) == []
    (a,) = rules.on_decision(g("default", 4), 3 * S)
    assert (a.name, a.severity) == ("genome_changed", "warning")
    assert "default v3 -> v4" in a.text and "genome_rollback default by telegram:42" in a.text
    assert "chimera rollback default:3" in a.text
    assert rules.on_decision(g("default", 4), 4 * S) == []
    # A move with no control event before it: the engine's own (session-loss rollback).
    (b,) = rules.on_decision(g("default", 5), 5 * S)
    assert "the engine's own" in b.text
    # Another family is its own; a restarted notify does not tell v5 again.
    assert rules.on_decision(g("banks", 1), 6 * S) == []
    again = AlertRules(CFG)
    again.restore(msgspec.json.decode(msgspec.json.encode(rules.memory()), type=Memory))
    assert again.on_decision(g("default", 5), 7 * S) == []
    assert names(again.on_decision(g("banks", 2), 8 * S)) == ["genome_changed"]
