"""The default strategy's exits beside the brackets (issue 12): signal reversal, energy
decay below a fraction of the entry threshold, a maximum holding time; and, through the
engine and the router wired as ``chimera live`` wires them, an exit that really closes."""

from __future__ import annotations

import asyncio
import math

import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import Band, ExecKind, PhysicsState, Purpose, Side, Signal, Structure
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.strategy import DefaultStrategy
from chimera_core.telemetry import TOPIC_EXEC
from chimera_execution.router import build_router
from tests.execution.test_router import T0, TOKEN, booking, intent, snap
from tools.backtest.event import SimNode


class PaperNode:
    """Engine → router → paper broker → journal as ``chimera live`` builds and wires them
    (``tools/node.py``, ``chimera_core.node.Node``), in process on a simulated clock
    (``tools.backtest.event.SimNode``: the throttle counts exchange time)."""

    def __init__(self, cfg) -> None:
        self.reports: list = []
        self.report_transitions: list = []  # FILLED / REJECTED: moved by reports
        self.sim = SimNode(
            cfg,
            publish=self._published,
            on_transitions=lambda _report, moved: self.report_transitions.extend(moved),
        )
        self.node, self.engine, self.router = self.sim.node, self.sim.engine, self.sim.router

    def _published(self, topic: bytes, obj) -> None:
        if topic == TOPIC_EXEC:
            self.reports.append(obj)

    async def start(self) -> None:
        await self.sim.start()

    async def frame(self, tick, recv_ns: int = 0):
        return await self.sim.frame(encode(tick), tick.exchange_ts_ms, recv_ns)


def _physics(energy: float) -> PhysicsState:
    return PhysicsState(
        100.0, 200, energy, 1.5, Structure.VACUUM, Band.NEUTRAL, 100.0, 1.0, 0.01, 0.5, None
    )


@pytest.mark.parametrize(
    ("energy", "signal", "sign", "held_ms", "want"),
    [
        (0.5, Signal(-1, "short"), 1, 0, "signal_reversal"),  # a short signal under a long
        (0.5, Signal(1, "long"), 1, 0, ""),  # the same direction: hold
        (0.04, Signal(0, "energy_below_threshold"), 1, 0, "energy_decay"),  # < 0.25 x 0.2
        (0.06, Signal(0, "energy_below_threshold"), 1, 0, ""),  # still above 0.05
        (-0.3, Signal(0, "trapped"), -1, 0, ""),  # a short carried by negative energy
        (0.3, Signal(0, "trapped"), -1, 0, "energy_decay"),  # energy turned against it
        (0.5, Signal(1, "long"), 1, 3_600_000, "max_hold"),
        (math.nan, Signal(0, "warmup"), 1, 0, ""),  # nothing to judge by
    ],
)
def test_exit_rules(energy, signal, sign, held_ms, want):
    strategy = DefaultStrategy(0.2, exit_energy_ratio=0.25, max_hold_ms=3_600_000)
    assert strategy.exit_reason(_physics(energy), signal, sign, held_ms) == want


def test_exit_rules_can_be_switched_off():
    strategy = DefaultStrategy(0.2, exit_energy_ratio=0.0, exit_on_reversal=False)
    assert strategy.exit_reason(_physics(-1.0), Signal(-1, "short"), 1, 10**9) == ""


async def test_a_held_position_is_closed_by_the_exit_rule_end_to_end(tmp_path):
    """Engine → router → paper broker → journal, in process on exchange time: a long whose
    holding time runs out is closed at market by an EXIT order, and the engine knows."""
    cfg = parse_config(
        f'data_dir = "{tmp_path}"\n[feed]\ntokens = ["{TOKEN}"]\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nmax_hold_s = 5.0\nexit_energy_ratio = 0.0\n"
        '[execution.paper]\nlatency_ms = 0\nslippage_bps = 0.0\n[logging]\ndecisions = "none"\n'
    )
    node = PaperNode(cfg)
    await node.start()
    engine, router, reports, frame = node.engine, node.router, node.reports, node.frame

    for i in range(10):
        await frame(snap(T0 + i * 1000))
    router.submit(intent(T0 + 10_000, 10, side=Side.BUY), atr=5.0)  # a wide bracket
    await frame(snap(T0 + 10_200))
    await frame(snap(T0 + 10_400))
    assert engine.positions.get(TOKEN).qty == 10
    entry = next(r for r in reports if r.purpose is Purpose.ENTRY and r.fill is not None)
    for i in range(8):
        await frame(snap(T0 + 11_000 + i * 1000))
    exits = [r for r in reports if r.purpose is Purpose.EXIT]
    assert exits and exits[-1].kind is ExecKind.FILLED and exits[-1].side is Side.SELL
    assert engine.positions.get(TOKEN).qty == 0
    # Held from the entry fill until the first tick 5 s later or more.
    assert exits[0].exchange_ts_ms - entry.fill.exchange_ts_ms >= 5_000
    assert engine.symbols[TOKEN].position_sign == 0
    await router.stop()


@pytest.mark.parametrize("policy", ["atr", "flatten"])
async def test_a_restored_position_without_its_bracket_is_never_left_bare(tmp_path, policy):
    """A position the journal holds with no bracket saved (an older version, or lost):
    per config it gets one from the ATR at its first warm tick, or is closed at market."""
    text = (
        f'data_dir = "{tmp_path}"\n[feed]\ntokens = ["{TOKEN}"]\nmode = "SNAP_QUOTE"\n'
        f'[execution]\nrestored_without_bracket = "{policy}"\n'
        "[execution.paper]\nlatency_ms = 0\nslippage_bps = 0.0\n"
    )
    cfg = parse_config(text)
    first = build_router(cfg, {})
    reports: list = []
    first.sink = booking(first, reports)
    await first.connect()
    await first.reconcile()
    first.on_tick(snap(T0))
    first.submit(intent(T0, 10), atr=0.0)  # no ATR: no bracket is saved
    for _ in range(5):
        await asyncio.sleep(0)
    first.on_tick(snap(T0 + 100))
    for _ in range(5):
        await asyncio.sleep(0)
    assert first.journal.positions()[0].qty == 10
    await first.broker.close()
    first.journal.close()

    router = build_router(cfg, {})  # the restart
    reports = []
    router.sink = booking(router, reports)
    await router.connect()
    recon = await router.reconcile()
    assert [p.qty for p in recon.positions] == [10]
    router.on_tick(snap(T0 + 1000), atr=math.nan)  # not warm yet
    for _ in range(5):
        await asyncio.sleep(0)
    router.on_tick(snap(T0 + 1100), atr=math.nan)
    for _ in range(5):
        await asyncio.sleep(0)
    if policy == "flatten":
        assert any(r.purpose is Purpose.FLATTEN and r.kind is ExecKind.FILLED for r in reports)
    else:
        assert not [r for r in reports if r.fill is not None]
        router.on_tick(snap(T0 + 2000), atr=0.5)  # warm: bracket from this ATR
        router.on_tick(snap(T0 + 3000, ltp=98.9))  # through entry - 2 ATR
        for _ in range(5):
            await asyncio.sleep(0)
        router.on_tick(snap(T0 + 4000, ltp=98.9))
        for _ in range(5):
            await asyncio.sleep(0)
        stops = [r for r in reports if r.purpose is Purpose.STOP_LOSS]
        assert stops and stops[-1].kind is ExecKind.FILLED
    assert router.journal.positions()[0].qty == 0
    await router.stop()


@pytest.mark.parametrize("command", ["reduce", "pause", "halt"])
async def test_protective_exits_work_in_every_trading_state(tmp_path, command):
    """REDUCING, PAUSED or HALTED: no entry goes out, but an open position's stop still
    closes it (a halt used to leave positions without stop, target or square-off)."""
    cfg = parse_config(
        f'data_dir = "{tmp_path}"\n[feed]\ntokens = ["{TOKEN}"]\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nexit_energy_ratio = 0.0\nexit_on_reversal = false\n"
        '[execution.paper]\nlatency_ms = 0\nslippage_bps = 0.0\n[logging]\ndecisions = "none"\n'
    )
    node = PaperNode(cfg)
    await node.start()
    engine, router, reports, frame = node.engine, node.router, node.reports, node.frame

    for i in range(5):
        await frame(snap(T0 + i * 1000))
    router.submit(intent(T0 + 5_000, 10, side=Side.BUY), atr=0.5)
    await frame(snap(T0 + 5_200))
    await frame(snap(T0 + 5_400))
    assert engine.positions.get(TOKEN).qty == 10
    engine.control(command, "test")
    router.apply(engine.actions)
    assert engine.trading_state.value == {
        "reduce": "REDUCING", "pause": "PAUSED", "halt": "HALTED"
    }[command]  # fmt: skip
    await frame(snap(T0 + 6_000, ltp=98.9))  # through entry - 2 ATR
    await frame(snap(T0 + 7_000, ltp=98.9))
    stops = [r for r in reports if r.purpose is Purpose.STOP_LOSS]
    assert stops and stops[-1].kind is ExecKind.FILLED
    assert engine.positions.get(TOKEN).qty == 0
    await router.stop()
