"""A paper ledger written before it kept a schema version (no ``schema_version`` row in
paper_meta) opens with today's code: its resting order goes back on the book and fills,
its cash is kept, and the ledger is stamped version 1 — without touching the journal's own
PRAGMA user_version in the same file. The DDL is copied verbatim from the code as shipped
(git 10f86f7), not taken from the code under test."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from chimera_core.config import ChargesConfig, PaperConfig
from chimera_core.contracts import ExecutionReport, Level, Mode, OrderStatus, Tick
from chimera_execution.brokers.paper import PaperBroker
from chimera_execution.journal import SCHEMA_VERSION, Journal, journal_path

PAPER_DDL = (
    "CREATE TABLE IF NOT EXISTS paper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS paper_orders (
        broker_order_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
        client_order_id TEXT NOT NULL UNIQUE, intent_id TEXT NOT NULL, token TEXT NOT NULL,
        exchange_type INTEGER NOT NULL, side TEXT NOT NULL, qty INTEGER NOT NULL,
        order_type TEXT NOT NULL, limit_price REAL NOT NULL, trigger_price REAL NOT NULL,
        purpose TEXT NOT NULL, product TEXT NOT NULL, status TEXT NOT NULL,
        filled_qty INTEGER NOT NULL, avg_price REAL NOT NULL, fills_n INTEGER NOT NULL,
        triggered INTEGER NOT NULL, eligible_ts_ms INTEGER NOT NULL, reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_fills (
        fill_id TEXT PRIMARY KEY, broker_order_id TEXT NOT NULL,
        client_order_id TEXT NOT NULL, token TEXT NOT NULL, side TEXT NOT NULL,
        qty INTEGER NOT NULL, price REAL NOT NULL, charges REAL NOT NULL,
        exchange_ts_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_positions (
        token TEXT PRIMARY KEY, qty INTEGER NOT NULL, avg_price REAL NOT NULL,
        realized_pnl REAL NOT NULL, charges REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS paper_cash (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, amount REAL NOT NULL,
        kind TEXT NOT NULL, ref TEXT NOT NULL)""",
)
TOKEN = "3045"


def tick(ts: int, ltp: float) -> Tick:
    return Tick(token=TOKEN, exchange_type=1, mode=int(Mode.SNAP_QUOTE), sequence=ts,
                exchange_ts_ms=ts, ltp=ltp, bids=(Level(ltp - 0.1, 500, 1),),
                asks=(Level(ltp + 0.1, 500, 1),))  # fmt: skip


async def test_a_ledger_from_before_is_adopted_and_its_resting_order_fills(
    tmp_path: Path,
) -> None:
    Journal(tmp_path, "paper").close()  # the engine's side of the file
    path = journal_path(tmp_path, "paper")
    db = sqlite3.connect(path, isolation_level=None)
    for stmt in PAPER_DDL:  # exactly what the earlier connect() created
        db.execute(stmt)
    db.execute("INSERT INTO paper_meta VALUES ('starting_cash', ?)", (repr(250_000.0),))
    db.execute(
        "INSERT INTO paper_orders VALUES ('P0000000001', 1, 'c-rest', 'I-c-rest', ?, 1, 'BUY',"
        " 10, 'LIMIT', 99.0, 0.0, 'ENTRY', 'INTRADAY', 'OPEN', 0, 0.0, 0, 0, 1000, '')",
        (TOKEN,),
    )
    db.close()

    reports: list[ExecutionReport] = []
    broker = PaperBroker(path, PaperConfig(), ChargesConfig(), "INTRADAY", reports.append)
    await broker.connect()
    try:
        (o,) = await broker.order_book()
        assert (o.client_order_id, o.status, o.limit_price) == ("c-rest", OrderStatus.OPEN, 99.0)
        assert await broker.cash() == pytest.approx(250_000.0)
        broker.on_tick(tick(2_000, 98.5))  # the ask crosses the resting limit
        filled = [r for r in reports if r.client_order_id == "c-rest" and r.fill is not None]
        assert sum(r.fill.qty for r in filled if r.fill) == 10
        assert (await broker.order_book())[0].status is OrderStatus.FILLED
    finally:
        await broker.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM paper_meta WHERE key='schema_version'").fetchone() == (
        "1",
    )
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)  # the journal's
    db.close()
    with Journal(tmp_path, "paper") as journal:  # and the journal still opens as before
        assert journal.check() == []
