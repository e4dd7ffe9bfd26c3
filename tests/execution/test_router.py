"""The order router with its real parts: a journal file, the paper broker on the same file,
the smart-execution pieces; ticks are hand-built SNAP_QUOTE packets in exchange time.
The last test puts the throttled Angel One adapter against the simulator's rate limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chimera_core.config import AngelOneConfig, parse_config
from chimera_core.contracts import (
    CancelAll,
    ExecKind,
    ExecutionReport,
    Level,
    Mode,
    OrderIntent,
    OrderRequest,
    Purpose,
    ResumeRouting,
    Side,
    Tick,
)
from chimera_execution.brokers.angelone import AngelOneBroker
from chimera_execution.journal import Journal
from chimera_execution.router import OrderRouter, ReportSink, build_router
from chimera_execution.smart_execution import Throttler
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET
from tools.sim.server import ExchangeSimulator

TOKEN = "3045"
T0 = 1_723_782_600_000  # 2024-08-16 10:00:00 IST
SQUARE_OFF = 1_723_801_500_000  # 15:15 IST the same day
ASKS = ((100.1, 30), (100.2, 50), (100.3, 70), (100.4, 100), (100.5, 100))
BIDS = ((99.9, 40), (99.8, 60), (99.7, 100), (99.6, 100), (99.5, 100))


def snap(ts: int, ltp: float = 100.0, volume: int = 0, depth: int = 1) -> Tick:
    """A book around ``ltp`` (the fixed shape shifted), ``depth`` x the level sizes."""
    shift = ltp - 100.0
    return Tick(
        token=TOKEN, exchange_type=1, mode=int(Mode.SNAP_QUOTE), sequence=ts,
        exchange_ts_ms=ts, ltp=ltp, volume=volume,
        bids=tuple(Level(round(p + shift, 2), q * depth, 1) for p, q in BIDS),
        asks=tuple(Level(round(p + shift, 2), q * depth, 1) for p, q in ASKS),
    )  # fmt: skip


def intent(ts: int, qty: int, side: Side = Side.BUY, seq: int = 0) -> OrderIntent:
    coid = f"CH-1-{TOKEN}-{ts}-{seq}"
    return OrderIntent(coid, TOKEN, 1, side, qty, 100.0, ts, seq, ts)


def booking(router: OrderRouter, reports: list[ExecutionReport]) -> ReportSink:
    """A sink that does the engine's part for a router without an engine: each fill is
    booked into the position book the router reads (the router books none), then the
    report is kept."""
    book = router.positions

    def sink(report: ExecutionReport) -> None:
        if report.fill is not None:
            book.apply(report.fill)
        reports.append(report)

    return sink


class Desk:
    """A paper router with its reports collected as the engine would get them."""

    def __init__(self, tmp_path: Path, extra: str = "", latency_ms: int = 0) -> None:
        self.cfg = parse_config(
            f'data_dir = "{tmp_path / "data"}"\n[feed]\ntokens = ["{TOKEN}"]\n'
            f"[execution.paper]\nlatency_ms = {latency_ms}\nslippage_bps = 0.0\n" + extra
        )
        self.router = build_router(self.cfg, {})
        self.reports: list[ExecutionReport] = []
        self.router.sink = booking(self.router, self.reports)

    async def start(self) -> None:
        await self.router.connect()
        await self.router.reconcile()

    async def tick(self, t: Tick) -> None:
        await self.settle()
        self.router.on_tick(t)
        await self.settle()

    async def settle(self) -> None:
        for _ in range(5):  # let queued broker calls run, as the event loop would
            await asyncio.sleep(0)

    def finals(self) -> list[ExecutionReport]:
        return [r for r in self.reports if r.final]

    @property
    def journal(self) -> Journal:
        return self.router.journal


async def test_entry_fills_then_the_bracket_stop_closes_it(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    await desk.start()
    await desk.tick(snap(T0))
    entry = intent(T0, 50)
    desk.router.submit(entry, atr=0.5)
    await desk.tick(snap(T0 + 100))
    finals = desk.finals()
    assert [(r.kind, r.intent_id, r.filled_qty) for r in finals] == [
        (ExecKind.FILLED, entry.client_order_id, 50)
    ]
    fills = [r.fill for r in desk.reports if r.fill is not None]
    assert [(f.price, f.qty) for f in fills] == [(100.1, 30), (100.2, 20)]
    (pos,) = desk.journal.positions()
    assert pos.qty == 50
    # Stop = average entry - 2 ATR (rounded toward the entry, on the 0.05 grid).
    await desk.tick(snap(T0 + 200, ltp=99.30))  # above the stop: nothing
    assert not [r for r in desk.reports if r.purpose is Purpose.STOP_LOSS]
    await desk.tick(snap(T0 + 300, ltp=99.00))  # through it: exit at market
    await desk.tick(snap(T0 + 400, ltp=99.00))
    exits = [r for r in desk.reports if r.purpose is Purpose.STOP_LOSS]
    assert exits and exits[0].client_order_id == f"{entry.client_order_id}-SL{T0 + 300}"
    assert exits[-1].kind is ExecKind.FILLED and exits[-1].filled_qty == 50
    assert all(p.qty == 0 for p in desk.journal.positions())
    assert desk.journal.check() == []


async def test_a_halt_keeps_the_stop_of_an_open_position_working(tmp_path: Path) -> None:
    """The kill switch cancels what is open and sends no entry, but a position keeps its
    stop: a halted router used to stop managing positions altogether."""
    desk = Desk(tmp_path)
    await desk.start()
    await desk.tick(snap(T0))
    desk.router.submit(intent(T0, 50), atr=0.5)
    await desk.tick(snap(T0 + 100))
    assert desk.journal.positions()[0].qty == 50
    desk.router.apply([CancelAll("operator")])
    desk.router.submit(intent(T0 + 150, 10, seq=1), atr=0.5)  # refused while halted
    await desk.tick(snap(T0 + 200, ltp=99.00))  # through the stop
    await desk.tick(snap(T0 + 300, ltp=99.00))
    stops = [r for r in desk.reports if r.purpose is Purpose.STOP_LOSS]
    assert stops and stops[-1].kind is ExecKind.FILLED and stops[-1].filled_qty == 50
    assert desk.journal.positions()[0].qty == 0


async def test_the_same_intent_twice_is_never_sent_twice(tmp_path: Path) -> None:
    desk = Desk(tmp_path)
    await desk.start()
    await desk.tick(snap(T0))
    entry = intent(T0, 10)
    desk.router.submit(entry, atr=0.5)
    await desk.tick(snap(T0 + 100))
    desk.router.submit(entry, atr=0.5)  # a restart re-fires the same bar's signal
    dup = desk.reports[-1]
    assert dup.final and dup.kind is ExecKind.REJECTED and "duplicate" in dup.reason
    assert len(await desk.router.broker.order_book()) == 1  # type: ignore[union-attr]


async def test_square_off_closes_positions_at_the_cut_off(tmp_path: Path) -> None:
    desk = Desk(tmp_path, '[execution]\nsquare_off_at = "15:15"\n')
    await desk.start()
    ts = SQUARE_OFF - 60_000
    await desk.tick(snap(ts))
    desk.router.submit(intent(ts, 40, Side.SELL), atr=5.0)  # a wide bracket stays out of it
    await desk.tick(snap(ts + 100))
    assert desk.journal.positions()[0].qty == -40
    await desk.tick(snap(SQUARE_OFF - 1))
    assert not [r for r in desk.reports if r.purpose is Purpose.SQUARE_OFF]
    await desk.tick(snap(SQUARE_OFF))
    await desk.tick(snap(SQUARE_OFF + 100))
    squares = [r for r in desk.reports if r.purpose is Purpose.SQUARE_OFF]
    assert squares and squares[-1].kind is ExecKind.FILLED and squares[-1].side is Side.BUY
    assert desk.journal.positions()[0].qty == 0


async def test_a_large_parent_is_worked_as_vwap_children(tmp_path: Path) -> None:
    desk = Desk(
        tmp_path,
        "[execution.slicing]\nmin_qty = 1000\nwindow_s = 300.0\nparticipation = 0.1\n"
        "depth_fraction = 0.5\n",
    )
    await desk.start()
    volume = 1_000_000
    await desk.tick(snap(T0, volume=volume, depth=100))
    parent = intent(T0, 3000)
    desk.router.submit(parent, atr=0.5)
    for second in range(1, 330):
        volume += 2_000  # 2,000 shares a second trade in the market
        await desk.tick(snap(T0 + second * 1000, volume=volume, depth=100))
    children = {r.client_order_id for r in desk.reports if r.intent_id == parent.client_order_id}
    children.discard(parent.client_order_id + "-end")
    assert len(children) >= 3, children
    assert all(c == parent.client_order_id or "-c" in c for c in children)
    fills = [r.fill for r in desk.reports if r.fill is not None]
    filled = sum(f.qty for f in fills)
    assert 0 < filled <= 3000
    # Participation: never more than 10% of what traded from the start to that fill.
    for f in fills:
        traded = (f.exchange_ts_ms - T0) // 1000 * 2_000
        done = sum(g.qty for g in fills if g.exchange_ts_ms <= f.exchange_ts_ms)
        assert done <= 0.1 * traded + 1, (f, done, traded)
    finals = desk.finals()
    assert len(finals) == 1 and finals[0].intent_id == parent.client_order_id
    assert desk.journal.check() == []


async def test_kill_switch_cancels_resting_and_queued_orders_and_persists(tmp_path: Path) -> None:
    desk = Desk(tmp_path, latency_ms=100_000_000)  # orders rest at the paper broker
    await desk.start()
    await desk.tick(snap(T0))
    resting = intent(T0, 10)
    desk.router.submit(resting, atr=0.5)
    await desk.tick(snap(T0 + 100))  # placed; rests (latency)
    queued = intent(T0, 10, seq=1)
    desk.router.submit(queued, atr=0.5)  # journaled, its place call not run yet
    cancelled = desk.router.cancel_all("operator")
    assert cancelled == 2
    await desk.tick(snap(T0 + 200))
    kinds = {r.client_order_id: r.kind for r in desk.reports if r.final}
    assert kinds == {
        resting.client_order_id: ExecKind.CANCELLED,
        queued.client_order_id: ExecKind.CANCELLED,
    }
    book = await desk.router.broker.order_book()  # type: ignore[union-attr]
    assert [o.client_order_id for o in book] == [resting.client_order_id]  # queued never sent
    assert not desk.journal.open_orders()
    assert desk.router.kill_latencies_us
    # A new router on the same journal (a restart) knows the operator halted.
    await desk.router.stop()
    desk.journal.close()
    again = Desk(tmp_path)
    assert again.router.persisted_halt() == "operator"
    again.router.apply([ResumeRouting("operator")])
    assert again.router.persisted_halt() == ""
    again.journal.close()


async def test_a_throttled_burst_gets_no_rate_limit_reject(tmp_path: Path) -> None:
    """60 order calls at once against the simulator's real 20/s limit: the throttler spaces
    them, so the simulator never answers 403."""
    async with ExchangeSimulator(port=0, rate=200.0) as sim:
        cfg = AngelOneConfig(
            rest_url=sim.rest_url, order_ws_url=sim.order_ws_url, symbols={TOKEN: "SBIN-EQ"}
        )
        broker = AngelOneBroker(
            cfg, "k", DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET,
            on_report=lambda r: None, state_dir=tmp_path / "angelone",
        )  # fmt: skip
        await broker.connect()
        # The simulator shares this event loop: it stamps a request when its handler runs,
        # which under load can be well after the client sent it (a whole batch of 20 POSTs
        # is handled one by one). The guard must cover that jitter, as in production it
        # covers the network's; 50 ms (the default) failed on a loaded CI machine.
        throttler = Throttler(per_second=20, per_minute=500, per_hour=1000, guard_s=0.25)
        errors: list[Exception] = []

        async def place(i: int) -> None:
            await throttler.acquire()
            try:
                await broker.place(
                    OrderRequest(
                        f"burst-{i}", f"burst-{i}", TOKEN, 1, Side.BUY, 1, symbol="SBIN-EQ"
                    )
                )
            except Exception as exc:
                errors.append(exc)

        await asyncio.gather(*(place(i) for i in range(60)))
        await broker.close()
        assert sim.orders is not None
        placed = len(sim.orders.orders)
    assert errors == []
    assert placed == 60
