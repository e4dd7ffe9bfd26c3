"""Governance wired into the engine over simulated sessions: regime flips the capital brain,
a daily loss halts trading, and the halt survives a restart."""

from __future__ import annotations

import asyncio
import itertools
import secrets

import msgspec
import pytest

from chimera_core.config import load_credentials, parse_config
from chimera_core.contracts import Mode, Regime
from chimera_core.event_loop import Engine, run_live
from chimera_core.feed.smartapi_v2 import encode
from chimera_governance.pipeline import GovernancePipeline
from tests.loopback import free_port
from tools.sim.market import Market
from tools.sim.server import ExchangeSimulator

CFG = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
[logging]
decisions = "none"
[governance]
approval_min_confidence = 0.0
"""
BASE_LEVERAGE = {Regime.CHAOS: 0.5, Regime.STABLE: 1.0, Regime.TRENDING: 1.5, Regime.WARMUP: 0.0}


def _frames(n: int, seed: int = 3) -> list[bytes]:
    market = Market(seed=seed)
    return [encode(market.next_tick(Mode.QUOTE)) for _ in range(n)]


def _run(engine: Engine, frames: list[bytes], start: int = 0) -> list:
    out = []
    for i, f in enumerate(frames):
        d = engine.on_frame(f, (start + i) * 50_000)
        if d is not None:
            out.append(d)
    return out


def test_every_decision_carries_the_layers_and_the_capital_brain_follows_the_regime(tmp_path):
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    decisions = _run(Engine(cfg, governance=gov, clock=lambda: 0), _frames(30_000))
    warm = [d for d in decisions if d.drift is not None]
    assert warm and all(d.capital is not None and d.genome is not None for d in warm)
    regimes = [d.drift.regime for d in warm]
    flips = sum(1 for a, b in itertools.pairwise(regimes) if a != b)
    assert {Regime.STABLE, Regime.TRENDING, Regime.CHAOS} <= set(regimes) and flips >= 3
    for d in warm:
        assert d.capital.regime_leverage == BASE_LEVERAGE[d.drift.regime]
        assert d.capital.target_leverage <= d.capital.max_leverage
    fired = [d for d in decisions if d.intent is not None]
    assert fired, "the session should trade"
    for d in fired:
        assert d.meta_risk is not None and d.meta_risk.allowed
        assert 0 < d.intent.qty * d.intent.ref_price <= cfg.governance.max_position_value
        assert d.intent.qty <= d.capital.qty
        assert set(d.influence) == {"physics", "drift", "capital"}
        assert sum(d.influence.values()) == pytest.approx(1.0)
        assert 0.0 < d.confidence <= 1.0
        # drift discounts confidence: the drift layer's weight is its share of the discount
        drift_cut = d.drift.drift_score
        assert d.influence["drift"] == pytest.approx(drift_cut * d.influence["physics"])
    vetoed = [d for d in decisions if d.meta_risk is not None and not d.meta_risk.allowed]
    for d in vetoed:  # a veto always names its rule, and never lets an intent out
        assert d.intent is None and d.meta_risk.vetoes
        assert d.transitions[0].reason.startswith("veto:")
        assert d.influence == {"meta_risk": 1.0}  # the refusing layer decided it
    gov.close()


def test_decisions_with_governance_are_deterministic(tmp_path):
    cfg = parse_config(CFG)
    frames = _frames(8000)
    runs = []
    for i in range(2):
        gov = GovernancePipeline(cfg, tmp_path / str(i))
        runs.append(
            msgspec.msgpack.encode(_run(Engine(cfg, governance=gov, clock=lambda: 0), frames))
        )
        gov.close()
    assert runs[0] == runs[1]


def test_a_daily_loss_halts_trading_and_the_halt_survives_a_restart(tmp_path):
    cfg = parse_config(CFG)
    state = tmp_path / "governance"
    gov = GovernancePipeline(cfg, state)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    frames = _frames(30_000)
    before = _run(engine, frames[:15_000])
    assert any(d.intent for d in before) and not engine.halted
    # A losing round trip of 3% of equity (as Engine.on_report feeds closed trades in).
    gov.meta_risk.on_trade_closed(-30_000.0, before[-1].exchange_ts_ms)
    after = _run(engine, frames[15_000:], start=15_000)
    assert engine.halted
    halting = next(d for d in after if d.meta_risk is not None and d.meta_risk.halt)
    assert "daily_loss" in {v.rule for v in halting.meta_risk.vetoes}
    assert {t.to_state for t in halting.transitions} == {"HALT"}
    assert not any(d.intent for d in after)
    gov.close()

    # Restart: a new process on the same state starts halted, as a recorded control event.
    restarted = GovernancePipeline(cfg, state)
    assert restarted.halted
    asyncio.run(_live_briefly(cfg, restarted))
    restarted.close()


async def _live_briefly(cfg, governance: GovernancePipeline) -> None:
    async with ExchangeSimulator(port=0, rate=1000.0, seed=3) as sim:
        live_cfg = msgspec.structs.replace(
            cfg,
            feed=msgspec.structs.replace(cfg.feed, url=sim.url),
            telemetry=msgspec.structs.replace(  # no recorder here: never wait for one
                cfg.telemetry, endpoint=f"tcp://127.0.0.1:{free_port()}", wait_for_subscriber_s=0.0
            ),
            control=msgspec.structs.replace(cfg.control, endpoint=f"tcp://127.0.0.1:{free_port()}"),
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(
            run_live(
                live_cfg, load_credentials(live_cfg, {}), stop, secrets.token_hex(16), governance
            )
        )
        await asyncio.sleep(2.0)
        stop.set()
        engine = await asyncio.wait_for(task, 10)
    assert engine.halted and engine.stats.decisions > 100
    assert engine.stats.intents == 0
    assert all(s.machine.state.value == "HALT" for s in engine.symbols.values())


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_approvals_gate_large_intents_until_a_human_decides(tmp_path, command):
    cfg = parse_config(CFG + "approval_size_limit = 1.0\n")  # every intent needs a human
    gov = GovernancePipeline(cfg, tmp_path)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    decisions = _run(engine, _frames(20_000))
    waiting = [d for d in decisions if d.approval is not None]
    assert waiting and not any(d.intent for d in decisions)
    first = waiting[0].approval
    assert first.status == "PENDING" and first.required and "size limit" in first.reason
    ok, _ = engine.control(command, first.approval_id)
    assert not ok  # its 120 s (exchange time) expired long ago in this session
    assert gov.approvals.status(first.approval_id).status == "EXPIRED"
    latest = gov.pending_approvals()[-1]["approval_id"]
    ok, result = engine.control(command, latest)
    assert ok and result["status"] == ("APPROVED" if command == "approve" else "REJECTED")
    again, _ = engine.control(command, latest)
    assert not again  # decided once
    gov.close()


def test_deferred_bar_work_gives_the_same_decisions_whether_or_not_the_caller_flushes(tmp_path):
    """Live calls after_publish() after each tick; replay does not. Same decisions."""
    cfg = parse_config(CFG)
    frames = _frames(8000)
    flushed_gov = GovernancePipeline(cfg, tmp_path / "a")
    engine = Engine(cfg, governance=flushed_gov, clock=lambda: 0)
    flushed = []
    for i, f in enumerate(frames):
        d = engine.on_frame(f, i * 50_000)
        engine.after_publish()
        if d is not None:
            flushed.append(d)
    lazy_gov = GovernancePipeline(cfg, tmp_path / "b")
    lazy = _run(Engine(cfg, governance=lazy_gov, clock=lambda: 0), frames)
    assert any(d.drift is not None for d in lazy)
    assert msgspec.msgpack.encode(flushed) == msgspec.msgpack.encode(lazy)
    flushed_gov.close()
    lazy_gov.close()
