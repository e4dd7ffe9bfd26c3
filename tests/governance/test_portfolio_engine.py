"""Portfolio rules wired into the engine over simulated sessions: the order-rate guard trips
REDUCING with its numbers on the decision record, a bad session rolls the genome back at
the next bar, and a session with every rule on decides the same twice."""

from __future__ import annotations

import asyncio
import itertools

import msgspec
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import TradingState
from chimera_core.event_loop import Engine
from chimera_governance.pipeline import GovernancePipeline
from tests.governance.test_pipeline import _frames, _live_briefly, _round_trip, _run

CFG = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
[logging]
decisions = "none"
[governance]
approval_min_confidence = 0.0
"""
ALL_ON = """
[governance.portfolio]
risk_sizing = true
stop_risk = 0.005
max_order_fraction = 0.05
max_entries_per_session = 40
max_orders_per_minute = 3
var_limit = 0.01
cvar_limit = 0.015
cluster_rho = 0.5
cluster_max_exposure = 0.5
vol_target = 0.02
"""


def test_the_order_rate_guard_trips_reducing_with_its_numbers(tmp_path):
    cfg = parse_config(CFG + "[governance.portfolio]\nmax_orders_per_minute = 1\n")
    gov = GovernancePipeline(cfg, tmp_path)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    decisions = _run(engine, _frames(30_000))
    fired = [d.exchange_ts_ms for d in decisions if d.intent is not None]
    assert fired
    for a, b in itertools.pairwise(fired):  # never two entries in one minute
        assert b - a >= 60_000
    tripped = [
        d
        for d in decisions
        if d.meta_risk and any(v.rule == "order_rate" for v in d.meta_risk.vetoes)
    ]
    assert tripped, "the session should try a second entry within a minute"
    (v,) = [v for v in tripped[0].meta_risk.vetoes if v.rule == "order_rate"]
    assert (v.value, v.limit) == (2.0, 1.0)
    assert tripped[0].meta_risk.kill_switch == "order_rate"
    assert engine.trading_state is TradingState.REDUCING and not engine.halted
    assert gov.kill_switch == "order_rate"
    later = [d for d in decisions if d.exchange_ts_ms > tripped[0].exchange_ts_ms]
    assert not any(d.intent for d in later)  # exits only for the rest of the session
    gov.close()

    # A restart the same session starts REDUCING (the live node restores the switch).
    restarted = GovernancePipeline(cfg, tmp_path)
    assert restarted.kill_switch == "order_rate"
    asyncio.run(_live_briefly(cfg, restarted))  # asserts REDUCING and no intent
    restarted.close()


@pytest.mark.parametrize("on", [True, False])
def test_a_bad_session_rolls_the_genome_back_at_the_next_bar(tmp_path, on):
    loss = "0.025" if on else "0.0"
    cfg = parse_config(CFG + f"[governance.portfolio]\nrollback_session_loss = {loss}\n")
    gov = GovernancePipeline(cfg, tmp_path)
    frames = _frames(12_000)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    before = _run(engine, frames[:6_000])
    family = gov.genomes.family_for("2885")
    params = {g.name: float(g.default) for g in gov.genomes.genes}
    params["band_k"] = params["band_k"] * 1.05
    v2 = gov.genomes.new_version(family, params, "operator", before[-1].exchange_ts_ms)
    v1 = gov.genomes.version(family, 1)
    gov.reload_genomes()
    equity = engine.account_snapshot().equity
    _round_trip(
        engine, "2885", 1000, 1000.0, 1000.0 - 0.03 * equity / 1000, before[-1].exchange_ts_ms
    )
    after = _run(engine, frames[6_000:], start=6_000)
    cur = gov.genomes.current_version(family)
    if not on:
        assert cur.version == v2.version
        return
    # Once, at the next bar: v3 restores v1's params; the decisions carry it.
    assert (cur.version, cur.restored_from, cur.reason) == (3, 1, "session_loss_rollback")
    assert cur.params == v1.params and cur.created_exchange_ts_ms > before[-1].exchange_ts_ms
    versions = [d.genome.version for d in after if d.genome is not None]
    assert versions[-1] == 3 and all(v == 3 for v in versions[versions.index(3) :])
    gov.close()


def test_every_rule_on_decides_the_same_twice_and_never_breaks_a_limit(tmp_path):
    cfg = parse_config(CFG + ALL_ON)
    frames = _frames(12_000)
    runs = []
    for i in range(2):
        gov = GovernancePipeline(cfg, tmp_path / str(i))
        decisions = _run(Engine(cfg, governance=gov, clock=lambda: 0), frames)
        runs.append(msgspec.msgpack.encode(decisions))
        assert any(d.intent for d in decisions), "the rules should let some entries through"
        for d in decisions:
            if d.intent is not None:
                assert d.intent.qty * d.intent.ref_price <= 0.05 * d.meta_risk.equity
        gov.close()
    assert runs[0] == runs[1]
