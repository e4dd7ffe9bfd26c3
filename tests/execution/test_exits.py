"""The exits (``chimera_execution.exits``) on the one position book, through the engine and
the router wired as ``chimera live`` wires them (``tests.core.test_strategy_exits``'s
PaperNode: real journal, real paper broker, simulated clock). The engine books every fill;
the router reads the same book and books none."""

from __future__ import annotations

import msgspec

from chimera_core.config import parse_config
from chimera_core.contracts import ExecKind, OrderIntent, Purpose, Side, Tick
from chimera_execution.smart_execution import Bracket
from tests.core.test_strategy_exits import PaperNode
from tests.execution.test_router import ASKS, T0, TOKEN, intent, snap

OTHER = "1594"  # a second instrument, later dropped from the configuration


def _cfg(tmp_path, tokens: list[str]):
    quoted = ", ".join(f'"{t}"' for t in tokens)
    return parse_config(
        f'data_dir = "{tmp_path}"\n[feed]\ntokens = [{quoted}]\nmode = "SNAP_QUOTE"\n'
        "[strategy]\nexit_energy_ratio = 0.0\nexit_on_reversal = false\n"
        '[execution.paper]\nlatency_ms = 0\nslippage_bps = 0.0\n[logging]\ndecisions = "none"\n'
    )


def _other(ts: int, ltp: float = 100.0) -> Tick:
    return msgspec.structs.replace(snap(ts, ltp), token=OTHER)


async def test_each_fill_is_booked_once_and_the_bracket_follows_the_booked_average(tmp_path):
    """An entry of 50 crosses two ask levels (30 @ 100.1, 20 @ 100.2). The one book holds
    50 (not 100: one place books), at the volume-weighted average, the journal agrees,
    and the bracket sits around that average: it was made after the engine booked the
    last fill, not from a book one fill behind."""
    node = PaperNode(_cfg(tmp_path, [TOKEN]))
    await node.start()
    engine, router, frame = node.engine, node.router, node.frame
    assert router.positions is engine.positions

    await frame(snap(T0))
    router.submit(intent(T0, 50), atr=0.5)
    await frame(snap(T0 + 100))
    await frame(snap(T0 + 200))
    fills = [r.fill for r in node.reports if r.fill is not None]
    assert [(f.price, f.qty) for f in fills] == [(ASKS[0][0], 30), (ASKS[1][0], 20)]

    want_avg = (ASKS[0][0] * 30 + ASKS[1][0] * 20) / 50  # plain arithmetic, not the book's
    pos = engine.positions.get(TOKEN)
    assert pos.qty == 50 and abs(pos.avg_price - want_avg) < 1e-9
    (journaled,) = router.journal.positions()
    assert journaled.qty == 50 and abs(journaled.avg_price - want_avg) < 1e-9
    ex = node.engine.cfg.execution
    want = Bracket.from_entry(
        Side.BUY, want_avg, 0.5, ex.stop_atr_multiple, ex.take_profit_atr_multiple, 0.05
    )
    assert router.bracket_levels(TOKEN) == (want.stop, want.target)

    await frame(snap(T0 + 300, ltp=want.stop - 0.05))  # through the stop
    await frame(snap(T0 + 400, ltp=want.stop - 0.05))
    stops = [r for r in node.reports if r.purpose is Purpose.STOP_LOSS]
    assert stops and stops[-1].kind is ExecKind.FILLED and stops[-1].filled_qty == 50
    assert engine.positions.get(TOKEN).qty == 0
    assert router.journal.positions()[0].qty == 0
    assert router.bracket_levels(TOKEN) == ()
    await node.sim.close()


async def test_a_flatten_of_a_token_no_longer_traded_goes_out_once(tmp_path):
    """A position the journal holds in an instrument since dropped from the configuration
    is reconciled into the book; a flatten closes it, the engine books that fill (though it
    trades no such symbol), so a second flatten finds nothing to close and sends nothing."""
    first = PaperNode(_cfg(tmp_path, [TOKEN, OTHER]))
    await first.start()
    await first.frame(_other(T0))
    first.router.submit(OrderIntent(f"CH-1-{OTHER}-{T0}-0", OTHER, 1, Side.BUY, 10,
                                    100.0, T0, 0, T0), atr=0.5)  # fmt: skip
    await first.frame(_other(T0 + 100))
    assert first.engine.positions.get(OTHER).qty == 10
    await first.sim.close()

    node = PaperNode(_cfg(tmp_path, [TOKEN]))  # the restart, without OTHER
    await node.start()
    engine, router = node.engine, node.router
    assert OTHER not in engine.symbols and engine.positions.get(OTHER).qty == 10
    # The engine drops OTHER's frames; the router (and the paper exchange) still see its
    # prints, as a broker session would.
    router.on_tick(_other(T0 + 900))
    ok, out = node.node.on_control("flatten", "test")
    assert ok and out == {"flattening": 1}
    await node.sim.settle()
    router.on_tick(_other(T0 + 1000))
    await node.sim.settle()
    flattens = [r for r in node.reports if r.purpose is Purpose.FLATTEN]
    assert flattens and flattens[-1].kind is ExecKind.FILLED and flattens[-1].filled_qty == 10
    assert engine.positions.get(OTHER).qty == 0
    assert {p.token: p.qty for p in router.journal.positions()}[OTHER] == 0

    seen = len(node.reports)
    ok, out = node.node.on_control("flatten", "test again")
    assert ok and out == {"flattening": 0}
    await node.sim.settle()
    router.on_tick(_other(T0 + 2000))
    await node.sim.settle()
    assert node.reports[seen:] == []
    assert [o.client_order_id for o in router.journal.open_orders()] == []
    await node.sim.close()
