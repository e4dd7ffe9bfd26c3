"""Governance wired into the engine over simulated sessions: regime flips the capital brain,
a daily loss on the account's equity stops entries (REDUCING) until the next session, and
survives a restart."""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets

import msgspec
import pytest

from chimera_core.config import load_credentials, parse_config
from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Fill,
    Mode,
    Purpose,
    Regime,
    Side,
    TradingState,
)
from chimera_core.event_loop import Engine
from chimera_core.feed.smartapi_v2 import decode, encode
from chimera_core.live import run_live
from chimera_governance.pipeline import GovernancePipeline
from tests.loopback import free_port
from tools.node import Parts, build_node
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


def _round_trip(engine: Engine, token: str, qty: int, buy: float, sell: float, ts: int) -> None:
    """A closed trade as the router reports it: an entry fill, then an exit fill."""
    for kind, side, price, purpose, n in (
        ("entry", Side.BUY, buy, Purpose.ENTRY, 1),
        ("exit", Side.SELL, sell, Purpose.STOP_LOSS, 2),
    ):
        coid = f"T-{token}-{ts}-{kind}"
        fill = Fill(f"{coid}-f", coid, token, side, qty, price, 0.0, ts + n)
        engine.on_report(
            ExecutionReport(
                kind=ExecKind.FILLED, client_order_id=coid, intent_id=coid, token=token,
                side=side, order_qty=qty, filled_qty=qty, avg_price=price, purpose=purpose,
                fill=fill, final=True, exchange_ts_ms=ts + n,
            )
        )  # fmt: skip


def test_a_daily_loss_goes_reducing_survives_a_restart_and_clears_at_the_next_session(tmp_path):
    cfg = parse_config(CFG)
    state = tmp_path / "governance"
    gov = GovernancePipeline(cfg, state)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    frames = _frames(30_000)
    before = _run(engine, frames[:15_000])
    assert any(d.intent for d in before) and engine.trading_state is TradingState.ACTIVE
    # A losing round trip of 3 % of the account's equity.
    equity = engine.account_snapshot().equity
    _round_trip(
        engine, "2885", 1000, 1000.0, 1000.0 - 0.03 * equity / 1000, before[-1].exchange_ts_ms
    )
    assert engine.account_snapshot().equity == pytest.approx(0.97 * equity)
    assert engine.trading_state is TradingState.REDUCING  # exits only, not HALT
    assert gov.kill_switch == "daily_loss"
    after = _run(engine, frames[15_000:], start=15_000)
    assert not any(d.intent for d in after)
    assert not engine.halted and all(
        s.machine.state.value != "HALT" for s in engine.symbols.values()
    )
    gov.close()

    # Restart the same day: a new process on the same state starts REDUCING.
    restarted = GovernancePipeline(cfg, state)
    assert restarted.kill_switch == "daily_loss"
    asyncio.run(_live_briefly(cfg, restarted))
    restarted.close()

    # The next session: its first bar close lifts the switch and entries come back.
    nextday = GovernancePipeline(cfg, state)
    engine = Engine(cfg, governance=nextday, clock=lambda: 0)
    engine.control("reduce", "meta_risk:daily_loss")  # as run_live starts it
    tomorrow = [_shifted(f, 86_400_000) for f in frames]
    decisions = _run(engine, tomorrow)
    assert engine.trading_state is TradingState.ACTIVE
    assert any(d.intent for d in decisions)
    nextday.close()


def _shifted(frame: bytes, ms: int) -> bytes:
    tick = decode(frame)
    return encode(msgspec.structs.replace(tick, exchange_ts_ms=tick.exchange_ts_ms + ms))


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
                live_cfg,
                load_credentials(live_cfg, {}),
                functools.partial(build_node, live_cfg, Parts(governance, None)),
                stop,
                secrets.token_hex(16),
            )
        )
        await asyncio.sleep(2.0)
        stop.set()
        engine = await asyncio.wait_for(task, 10)
    assert engine.trading_state is TradingState.REDUCING and engine.stats.decisions > 100
    assert engine.stats.intents == 0


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


def test_the_genome_in_force_drives_the_strategy_from_the_next_bar(tmp_path):
    """Decisions name the genome version the strategy ran on; a new version (here put in
    force by a promotion written to the store) takes effect at the symbol's next bar close,
    and its genes are what the strategy and the kernels then use."""
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path)
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    frames = _frames(20_000)
    first = _run(engine, frames[:10_000])
    family = gov.genomes.family_for("2885")
    v1 = gov.genomes.current(family)
    assert {d.genome.version for d in first if d.token == "2885"} == {v1.version}
    assert any(d.intent for d in first)
    params = {**v1.params, "energy_threshold": 2.0, "band_k": 3.0, "energy_lookback": 30}
    v2 = gov.genomes.new_version(family, params, "promotion", first[-1].exchange_ts_ms)
    gov.reload_genomes()
    second = _run(engine, frames[10_000:], start=10_000)
    mine = [d for d in second if d.token == "2885"]
    switched = next(i for i, d in enumerate(mine) if d.genome.version == v2.version)
    assert all(d.genome.version == v1.version for d in mine[:switched])
    # The switch comes at the first tick after the one that closed this symbol's bar (that
    # tick opened the new bar: its bar start moved on from the tick before it).
    assert switched >= 2
    assert mine[switched - 1].bar_start_ms > mine[switched - 2].bar_start_ms
    sym = engine.symbols["2885"]
    assert (sym.strategy.energy_threshold, sym.physics.k, sym.physics.energy_n) == (2.0, 3.0, 30)
    # An energy threshold of 2.0 is beyond this market: nothing fires on v2.
    assert not any(d.intent for d in mine[switched:])
    gov.close()
