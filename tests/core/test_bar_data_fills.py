"""Bar data through the node as ``chimera live`` wires it (issue 12): when consecutive
prints are further apart than ``execute_timeout_s`` (bars, a thin instrument), an entry's
fill arrives with the next print. The simulated exchange matches on that print before the
engine steps on it, so the intent ends FILLED instead of timing out every time; and a fill
that does arrive after its intent expired is booked, never forgotten."""

from __future__ import annotations

import msgspec
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import ExecKind, Mode, Purpose
from chimera_core.state_machine import State
from tests.core.test_strategy_exits import PaperNode
from tools.backtest.event import ALWAYS_OPEN_MARKET
from tools.sim.market import Market

# A 24-hour market (no cut-off, no square-off) so only the timing is under test; prints
# 20 s apart against a 10 s execute timeout, one-minute bars.
CONFIG = (
    """
data_dir = "{data}"
[feed]
tokens = ["2885"]
[strategy]
bar_interval_s = 60
energy_threshold = 0.006
cooldown_s = 30.0
execute_timeout_s = 10.0
max_hold_s = 600.0
"""
    + ALWAYS_OPEN_MARKET
    + """[execution.paper]
latency_ms = 0
slippage_bps = 0.0
[governance]
enabled = false
[logging]
decisions = "none"
"""
)
SPACING_MS = 20_000


def _sparse_ticks(n: int, seed: int = 3) -> list:
    """The seeded market's prints for one token, re-timed 20 s apart."""
    market, out = Market(seed=seed), []
    t0 = 1_735_689_600_000  # 2025-01-01 00:00 UTC
    while len(out) < n:
        tick = market.next_tick(Mode.QUOTE)
        if tick.token == "2885":
            ts = t0 + len(out) * SPACING_MS
            out.append(msgspec.structs.replace(tick, exchange_ts_ms=ts, sequence=len(out) + 1))
    return out


async def _run(tmp_path, wired: bool) -> tuple[PaperNode, list]:
    node = PaperNode(parse_config(CONFIG.format(data=tmp_path)))
    if not wired:  # as before: the exchange saw each print only after the engine's step
        node.engine.on_market = None
    await node.start()
    transitions = []
    for i, tick in enumerate(_sparse_ticks(3_000)):
        # Received back to back (a replayed history: the feed is not stale), 20 s apart in
        # exchange time.
        decision = await node.frame(tick, 1_000_000_000 + i * 1_000_000)
        transitions.extend(decision.transitions if decision is not None else ())
    return node, transitions + node.report_transitions


@pytest.mark.timeout(120)
async def test_entries_on_sparse_prints_fill_instead_of_expiring(tmp_path):
    node, transitions = await _run(tmp_path / "wired", wired=True)
    fires = [t for t in transitions if t.event == "FIRE"]
    ended = [t.event for t in transitions if t.from_state == State.EXECUTE.value]
    assert len(fires) >= 3, "the session must trade for the timing to be tested"
    assert ended and set(ended) <= {"FILLED", "REJECTED"} and "FILLED" in ended, ended
    entries = [r for r in node.reports if r.purpose is Purpose.ENTRY and r.fill is not None]
    assert len(entries) >= len([e for e in ended if e == "FILLED"])
    assert node.engine.stats.late_fills == 0

    # The same prints with the exchange matching after the step: every intent times out
    # first (the old behaviour on bar data), and its fill is still booked.
    old, transitions = await _run(tmp_path / "unwired", wired=False)
    ended = [t.event for t in transitions if t.from_state == State.EXECUTE.value]
    assert ended and set(ended) == {"EXPIRED"}
    assert old.engine.stats.late_fills >= 1
    booked = [r for r in old.reports if r.purpose is Purpose.ENTRY and r.kind is ExecKind.FILLED]
    assert booked, "late fills must still open positions"


@pytest.mark.timeout(120)
async def test_a_sliced_entry_is_not_cut_short_by_the_execute_timeout(tmp_path):
    """An entry at or above ``slicing.min_qty`` is worked as VWAP children over the slicing
    window (300 s here) — ten times the 30 s execute timeout. The timeout must not cancel
    it after the first child: the engine waits the window out."""
    cfg = parse_config(
        CONFIG.format(data=tmp_path)
        .replace("execute_timeout_s = 10.0", "execute_timeout_s = 30.0")
        .replace("bar_interval_s = 60", "bar_interval_s = 5")
        + "[execution.slicing]\nmin_qty = 100\nwindow_s = 300.0\nparticipation = 1.0\n"
    )
    cfg = msgspec.structs.replace(
        cfg, strategy=msgspec.structs.replace(cfg.strategy, order_qty=400)
    )
    node = PaperNode(cfg)
    await node.start()
    transitions = []
    market, t0 = Market(seed=3), 1_735_689_600_000
    n = 0
    while n < 6_000:
        tick = market.next_tick(Mode.QUOTE)
        if tick.token != "2885":
            continue
        n += 1
        tick = msgspec.structs.replace(tick, exchange_ts_ms=t0 + n * 1_000, sequence=n)
        decision = await node.frame(tick, 1_000_000_000 + n * 1_000_000)
        transitions.extend(decision.transitions if decision is not None else ())
    transitions += node.report_transitions
    ended = [t.event for t in transitions if t.from_state == State.EXECUTE.value]
    assert ended, "the session must fire an entry"
    assert "EXPIRED" not in ended, ended
    first = next(r for r in node.reports if r.purpose is Purpose.ENTRY and r.final)
    entry_fills = [
        r.fill.qty for r in node.reports if r.fill is not None and r.intent_id == first.intent_id
    ]
    assert sum(entry_fills) > max(entry_fills), "worked as several children, not cut at one"
