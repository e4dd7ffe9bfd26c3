"""Paper broker: matching against hand-built ticks, ledger persistence, rejects."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from chimera_core.config import ChargesConfig, PaperConfig
from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Level,
    Mode,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    Tick,
)
from chimera_core.errors import BrokerReject, ChimeraError
from chimera_execution.brokers.paper import PaperBroker
from chimera_execution.charges import compute_charges
from chimera_execution.journal import Journal, journal_path

TOKEN = "3045"
CHARGES = ChargesConfig()


def snap(ts: int, ltp: float = 100.0, bids=(), asks=(), token: str = TOKEN) -> Tick:
    return Tick(
        token=token, exchange_type=1, mode=int(Mode.SNAP_QUOTE), sequence=ts,
        exchange_ts_ms=ts, ltp=ltp,
        bids=tuple(Level(p, q, 1) for p, q in bids), asks=tuple(Level(p, q, 1) for p, q in asks),
    )  # fmt: skip


BOOK_BIDS = ((99.9, 40), (99.8, 60), (99.7, 100), (99.6, 100), (99.5, 100))
BOOK_ASKS = ((100.1, 30), (100.2, 50), (100.3, 70), (100.4, 100), (100.5, 100))


def order(
    coid: str,
    side: Side = Side.BUY,
    qty: int = 10,
    order_type: OrderType = OrderType.MARKET,
    limit: float = 0.0,
    trigger: float = 0.0,
    ts: int = 1_000,
) -> OrderRequest:
    return OrderRequest(
        client_order_id=coid, intent_id="I-" + coid, token=TOKEN, exchange_type=1, side=side,
        qty=qty, order_type=order_type, limit_price=limit, trigger_price=trigger,
        exchange_ts_ms=ts,
    )  # fmt: skip


class Harness:
    def __init__(self, tmp: Path, latency_ms: int = 50, slippage_bps: float = 0.0) -> None:
        Journal(tmp, "paper").close()  # the engine side creates the file and its mode
        self.path = journal_path(tmp, "paper")
        self.cfg = PaperConfig(latency_ms=latency_ms, slippage_bps=slippage_bps)
        self.reports: list[ExecutionReport] = []
        self.broker = self.new_broker()

    def new_broker(self) -> PaperBroker:
        ticks = iter(range(1_000_000))
        return PaperBroker(
            self.path, self.cfg, CHARGES, "INTRADAY", self.reports.append, clock=lambda: next(ticks)
        )

    def fills_of(self, coid: str) -> list[ExecutionReport]:
        return [r for r in self.reports if r.client_order_id == coid and r.fill is not None]


@pytest.fixture
async def h(tmp_path: Path):
    harness = Harness(tmp_path)
    await harness.broker.connect()
    harness.broker.on_tick(snap(900, bids=BOOK_BIDS, asks=BOOK_ASKS))  # the token is known
    yield harness
    await harness.broker.close()


async def test_market_buy_walks_the_asks(h: Harness) -> None:
    bid = await h.broker.place(order("m1", qty=100))
    assert bid == "P0000000001"
    ack = h.reports[-1]
    assert (ack.kind, ack.broker_order_id, ack.filled_qty, ack.intent_id) == (
        ExecKind.ACK, bid, 0, "I-m1",
    )  # fmt: skip
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))
    fills = h.fills_of("m1")
    assert [(r.fill.price, r.fill.qty) for r in fills] == [  # type: ignore[union-attr]
        (100.1, 30), (100.2, 50), (100.3, 20),
    ]  # fmt: skip
    assert [r.kind for r in fills] == [ExecKind.PARTIAL, ExecKind.PARTIAL, ExecKind.FILLED]
    assert [r.fill.fill_id for r in fills] == [f"{bid}-1", f"{bid}-2", f"{bid}-3"]  # type: ignore[union-attr]
    vwap = (100.1 * 30 + 100.2 * 50 + 100.3 * 20) / 100
    assert fills[-1].avg_price == pytest.approx(vwap)
    assert [r.filled_qty for r in fills] == [30, 80, 100]
    prior = 0.0  # brokerage is per order: each fill is charged on the order's turnover so far
    for r in fills:
        assert r.exchange_ts_ms == 1_050 and not r.final and r.order_qty == 100
        fill = r.fill
        assert fill is not None
        expected = compute_charges(Side.BUY, fill.qty, fill.price, "INTRADAY", CHARGES, prior)
        assert fill.charges == expected.total
        prior += fill.qty * fill.price
    (o,) = await h.broker.order_book()
    assert (o.status, o.filled_qty, o.avg_fill_price) == (
        OrderStatus.FILLED,
        100,
        pytest.approx(vwap),
    )
    (p,) = await h.broker.positions()
    assert (p.qty, p.avg_price) == (100, pytest.approx(vwap))
    paid = sum(r.fill.charges for r in fills)  # type: ignore[union-attr]
    assert await h.broker.cash() == pytest.approx(1_000_000 - vwap * 100 - paid)


async def test_two_orders_on_one_tick_share_liquidity_then_partial_across_ticks(
    h: Harness,
) -> None:
    await h.broker.place(order("a", side=Side.SELL, qty=30))
    await h.broker.place(order("b", side=Side.SELL, qty=400))
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))
    a = [(r.fill.price, r.fill.qty) for r in h.fills_of("a")]  # type: ignore[union-attr]
    b = [(r.fill.price, r.fill.qty) for r in h.fills_of("b")]  # type: ignore[union-attr]
    assert a == [(99.9, 30)]  # placed first, takes the best level first
    assert b == [(99.9, 10), (99.8, 60), (99.7, 100), (99.6, 100), (99.5, 100)]
    assert h.fills_of("b")[-1].kind is ExecKind.PARTIAL
    assert h.fills_of("b")[-1].filled_qty == 370
    # The next tick is a fresh book: the 30 left fill there, and only there.
    h.broker.on_tick(snap(1_100, bids=((99.0, 20), (98.5, 100)), asks=BOOK_ASKS))
    rest = h.fills_of("b")[5:]
    assert [(r.fill.price, r.fill.qty, r.kind) for r in rest] == [  # type: ignore[union-attr]
        (99.0, 20, ExecKind.PARTIAL), (98.5, 10, ExecKind.FILLED),
    ]  # fmt: skip
    b_all = [(r.fill.price, r.fill.qty) for r in h.fills_of("b")]  # type: ignore[union-attr]
    vwap = sum(p * q for p, q in b_all) / sum(q for _, q in b_all)
    assert h.fills_of("b")[-1].avg_price == pytest.approx(vwap)
    h.broker.on_tick(snap(1_150, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert len(h.fills_of("b")) == 7  # nothing more once filled


async def test_latency_respected(h: Harness) -> None:
    await h.broker.place(order("l", qty=5, ts=1_000))
    h.broker.on_tick(snap(1_049, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert h.fills_of("l") == []
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert h.fills_of("l")[0].fill.exchange_ts_ms == 1_050  # type: ignore[union-attr]
    # Without a decision time, the last tick seen for the token is the decision time.
    await h.broker.place(order("l2", qty=5, ts=0))
    h.broker.on_tick(snap(1_099, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert h.fills_of("l2") == []
    h.broker.on_tick(snap(1_100, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert len(h.fills_of("l2")) == 1


async def test_limit_rests_until_crossed(h: Harness) -> None:
    await h.broker.place(order("lim", qty=60, order_type=OrderType.LIMIT, limit=100.0))
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))  # best ask 100.1 > 100
    assert h.fills_of("lim") == []
    asks = ((99.95, 20), (100.0, 25), (100.05, 500))
    h.broker.on_tick(snap(1_100, bids=BOOK_BIDS, asks=asks))
    got = [(r.fill.price, r.fill.qty) for r in h.fills_of("lim")]  # type: ignore[union-attr]
    assert got == [(99.95, 20), (100.0, 25)]  # never the level above the limit
    h.broker.on_tick(snap(1_150, bids=BOOK_BIDS, asks=((99.9, 100),)))
    last = h.fills_of("lim")[-1]
    assert (last.kind, last.filled_qty, last.fill.price) == (ExecKind.FILLED, 60, 99.9)  # type: ignore[union-attr]


async def test_stop_market_triggers_on_ltp(h: Harness) -> None:
    await h.broker.place(
        order("sl", side=Side.SELL, qty=10, order_type=OrderType.STOPLOSS_MARKET, trigger=99.0)
    )
    h.broker.on_tick(snap(1_050, ltp=99.5, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert h.fills_of("sl") == []
    h.broker.on_tick(snap(1_100, ltp=98.9, bids=((98.8, 100),), asks=((99.0, 10),)))
    (r,) = h.fills_of("sl")
    assert (r.kind, r.fill.price, r.fill.qty) == (ExecKind.FILLED, 98.8, 10)  # type: ignore[union-attr]


async def test_ltp_mode_fills_whole_remainder_at_ltp(h: Harness) -> None:
    await h.broker.place(order("q", qty=1_000))
    quote = Tick(token=TOKEN, exchange_type=1, mode=int(Mode.QUOTE), sequence=1,
                 exchange_ts_ms=1_050, ltp=101.25)  # fmt: skip
    h.broker.on_tick(quote)
    (r,) = h.fills_of("q")
    assert (r.kind, r.fill.qty, r.fill.price) == (ExecKind.FILLED, 1_000, 101.25)  # type: ignore[union-attr]


async def test_slippage_is_adverse(tmp_path: Path) -> None:
    h = Harness(tmp_path, slippage_bps=10.0)
    await h.broker.connect()
    h.broker.on_tick(snap(900, bids=BOOK_BIDS, asks=BOOK_ASKS))
    await h.broker.place(order("buy", qty=10))
    await h.broker.place(order("sell", side=Side.SELL, qty=10))
    await h.broker.place(order("lim", qty=10, order_type=OrderType.LIMIT, limit=100.15))
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))
    assert h.fills_of("buy")[0].fill.price == pytest.approx(100.1 * 1.001)  # type: ignore[union-attr]
    assert h.fills_of("sell")[0].fill.price == pytest.approx(99.9 * 0.999)  # type: ignore[union-attr]
    # Slippage never pushes a limit order past its limit.
    assert h.fills_of("lim")[0].fill.price == 100.15  # type: ignore[union-attr]
    await h.broker.close()


async def test_cancel_and_idempotent_place(h: Harness) -> None:
    first = await h.broker.place(order("c", qty=10, order_type=OrderType.LIMIT, limit=90.0))
    n = len(h.reports)
    assert await h.broker.place(order("c", qty=10, order_type=OrderType.LIMIT, limit=90.0)) == first
    assert len(h.reports) == n and len(await h.broker.order_book()) == 1
    await h.broker.cancel("c")
    assert h.reports[-1].kind is ExecKind.CANCELLED
    await h.broker.cancel("c")  # terminal: no-op
    await h.broker.cancel("never-placed")
    assert len(h.reports) == n + 1
    (o,) = await h.broker.order_book()
    assert o.status is OrderStatus.CANCELLED and o.limit_price == 90.0
    h.broker.on_tick(snap(1_100, bids=BOOK_BIDS, asks=((80.0, 100),)))
    assert h.fills_of("c") == []


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (order("z", qty=0), "qty"),
        (order("u").__replace__(token="999"), "unknown token"),
        (order("nl", order_type=OrderType.LIMIT, limit=float("nan")), "limit_price"),
        (order("nt", order_type=OrderType.STOPLOSS_MARKET, trigger=-1.0), "trigger_price"),
        (order("pr").__replace__(product="MTF"), "product"),
    ],
)
async def test_rejects(h: Harness, req: OrderRequest, match: str) -> None:
    with pytest.raises(BrokerReject, match=match):
        await h.broker.place(req)
    assert h.reports[-1].kind is ExecKind.REJECTED
    assert match in h.reports[-1].reason
    (o,) = await h.broker.order_book()
    assert o.status is OrderStatus.REJECTED
    with pytest.raises(BrokerReject):  # the same id again stays rejected
        await h.broker.place(req)


async def test_restart_keeps_resting_orders_and_ledger(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.broker.connect()
    h.broker.on_tick(snap(900, bids=BOOK_BIDS, asks=BOOK_ASKS))
    await h.broker.place(order("big", qty=100))
    await h.broker.place(
        order("rest", side=Side.SELL, qty=5, order_type=OrderType.LIMIT, limit=101.0)
    )
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=((100.1, 30),)))
    cash_before = await h.broker.cash()
    await h.broker.close()

    h.broker = h.new_broker()
    await h.broker.connect()
    assert [o.status for o in await h.broker.order_book()] == [
        OrderStatus.PARTIAL,
        OrderStatus.OPEN,
    ]
    assert await h.broker.cash() == cash_before
    h.broker.on_tick(snap(1_100, bids=((101.0, 10),), asks=((100.2, 100),)))
    big, rest = h.fills_of("big"), h.fills_of("rest")
    assert [(r.filled_qty, r.kind) for r in big] == [(30, ExecKind.PARTIAL), (100, ExecKind.FILLED)]
    assert big[-1].fill.fill_id == "P0000000001-2"  # type: ignore[union-attr]
    assert rest[-1].kind is ExecKind.FILLED
    # New ids continue after the persisted counter.
    assert await h.broker.place(order("next", qty=1)) == "P0000000003"
    (p,) = await h.broker.positions()
    assert p.qty == 95
    await h.broker.close()


async def test_refuses_live_file(tmp_path: Path) -> None:
    Journal(tmp_path, "live").close()
    with pytest.raises(ChimeraError, match="live"):
        PaperBroker(journal_path(tmp_path, "live"), PaperConfig(), CHARGES, "INTRADAY", print)
    # A live file copied under paper/ is refused by its stored mode.
    paper = journal_path(tmp_path, "paper")
    paper.parent.mkdir(parents=True)
    paper.write_bytes(journal_path(tmp_path, "live").read_bytes())
    with pytest.raises(ChimeraError, match="live"):
        PaperBroker(paper, PaperConfig(), CHARGES, "INTRADAY", print)


async def test_ledger_separate_from_journal(h: Harness) -> None:
    await h.broker.place(order("x", qty=10))
    h.broker.on_tick(snap(1_050, bids=BOOK_BIDS, asks=BOOK_ASKS))
    db = sqlite3.connect(h.path)
    assert db.execute("SELECT COUNT(*) FROM paper_fills").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM fills").fetchone() == (0,)  # the engine's, untouched
    db.close()


async def test_rms_refuses_orders_beyond_the_margin_but_never_an_exit(h: Harness) -> None:
    """1,000,000 cash at 20% intraday margin carries 5,000,000 of exposure at most; what
    reduces exposure always passes."""
    # 100.0 last price: 49,000 units = 4.9M exposure, margin 0.98M <= 1M equity.
    await h.broker.place(order("fits", qty=49_000))
    with pytest.raises(BrokerReject, match="RMS: insufficient margin"):
        await h.broker.place(order("too-big", qty=2_000))  # 5.1M in all
    assert h.reports[-1].kind is ExecKind.REJECTED
    # Selling against the resting buy lowers the exposure: accepted at any size that does.
    await h.broker.place(order("reduce", side=Side.SELL, qty=49_000))
    # Delivery is paid in full: 1M of cash buys 10,000 units at 100, not 10,001.
    await h.broker.cancel("fits")
    await h.broker.cancel("reduce")
    d = order("deliv", qty=10_001)
    with pytest.raises(BrokerReject, match="RMS"):
        await h.broker.place(msgspec.structs.replace(d, product="DELIVERY"))
    ok = order("deliv-ok", qty=10_000)
    await h.broker.place(msgspec.structs.replace(ok, product="DELIVERY"))
