"""What a journal file holds and how to read it: the schema (append-only migrations), the
reads the engine and every other process share, and ``JournalReader``, the read-only view
for everything that is not the engine (cortex, doctor, demo, reports).

Imports nothing of the hot path (no router, no broker), so the cortex may use it; the
writer, ``chimera_execution.journal.Journal``, builds on it.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgspec

from chimera_core.contracts import Fill, Order, OrderIntent, OrderStatus, Position, Purpose, Side
from chimera_core.errors import ChimeraError, JournalCorrupt, StoreDamaged, StoreMissing
from chimera_core.store import Schema, StoreView, open_readonly

T = TypeVar("T")

MODES = ("paper", "live")
DB_NAME = "chimera.db"

WORKING_STATUSES = (OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIAL)
_EPS = 1e-6


def journal_path(data_dir: str | Path, mode: str) -> Path:
    """``<data_dir>/<mode>/chimera.db``; mode must be "paper" or "live"."""
    if mode not in MODES:
        raise ChimeraError(
            f"journal: expected mode in {MODES}, got {mode!r}; set config mode to paper or live"
        )
    return Path(data_dir) / mode / DB_NAME


def apply_fill(
    qty: int, avg_price: float, realized: float, side: Side, fill_qty: int, price: float
) -> tuple[int, float, float]:
    """Position arithmetic for one fill: returns (signed qty, avg entry price, realized).

    Adds average the entry price; reductions realize (price - avg) x closed qty in the
    position's direction; a flip realizes the whole old position and opens the rest at
    the fill price. Shared with the paper broker's ledger so both sides agree.
    """
    signed = fill_qty if side is Side.BUY else -fill_qty
    new_qty = qty + signed
    if qty == 0 or (qty > 0) == (signed > 0):
        avg = (abs(qty) * avg_price + fill_qty * price) / abs(new_qty)
        return new_qty, avg, realized
    closed = min(abs(signed), abs(qty))
    direction = 1 if qty > 0 else -1
    realized += closed * (price - avg_price) * direction
    if new_qty == 0:
        return 0, 0.0, realized
    if (new_qty > 0) == (qty > 0):
        return new_qty, avg_price, realized
    return new_qty, price, realized


# ---- schema migrations -------------------------------------------------------------------
# Applied in order on open; PRAGMA user_version holds how many have run. Append only:
# never edit a step that has shipped.


def _v1_initial(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE intents (
            intent_id TEXT PRIMARY KEY, token TEXT NOT NULL, exchange_type INTEGER NOT NULL,
            side TEXT NOT NULL, qty INTEGER NOT NULL, ref_price REAL NOT NULL,
            bar_start_ms INTEGER NOT NULL, signal_seq INTEGER NOT NULL,
            exchange_ts_ms INTEGER NOT NULL, created INTEGER NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE orders (
            client_order_id TEXT PRIMARY KEY, intent_id TEXT NOT NULL, token TEXT NOT NULL,
            exchange_type INTEGER NOT NULL, side TEXT NOT NULL, qty INTEGER NOT NULL,
            order_type TEXT NOT NULL, limit_price REAL, trigger_price REAL,
            purpose TEXT NOT NULL, status TEXT NOT NULL, broker_order_id TEXT NOT NULL,
            filled_qty INTEGER NOT NULL, avg_price REAL NOT NULL, reason TEXT NOT NULL,
            updated INTEGER NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE fills (
            fill_id TEXT PRIMARY KEY, client_order_id TEXT NOT NULL, token TEXT NOT NULL,
            side TEXT NOT NULL, qty INTEGER NOT NULL, price REAL NOT NULL,
            charges REAL NOT NULL, exchange_ts_ms INTEGER NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE positions (
            token TEXT PRIMARY KEY, qty INTEGER NOT NULL, avg_price REAL NOT NULL,
            realized_pnl REAL NOT NULL, charges REAL NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE cash_ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, amount REAL NOT NULL,
            kind TEXT NOT NULL, ref TEXT NOT NULL)"""
    )
    db.execute("CREATE TABLE risk_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _v2_product_and_indexes(db: sqlite3.Connection) -> None:
    # The product decides the charges; reconciliation looks fills up by order and cash
    # rows by fill, so index both.
    db.execute("ALTER TABLE orders ADD COLUMN product TEXT NOT NULL DEFAULT 'INTRADAY'")
    db.execute("CREATE INDEX fills_by_order ON fills (client_order_id)")
    db.execute("CREATE INDEX cash_by_ref ON cash_ledger (ref)")
    db.execute("CREATE INDEX orders_by_status ON orders (status)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1_initial,
    _v2_product_and_indexes,
)
SCHEMA_VERSION = len(MIGRATIONS)


FILL_COLUMNS = "fill_id, client_order_id, token, side, qty, price, charges, exchange_ts_ms"


def _fill(r: tuple[Any, ...]) -> Fill:
    return Fill(r[0], r[1], r[2], Side(r[3]), r[4], r[5], r[6], r[7])


def read_fills(db: sqlite3.Connection, table: str) -> list[Fill]:
    """The fills of ``table`` (the journal's, or the paper ledger's), in booking order."""
    return [_fill(r) for r in db.execute(f"SELECT {FILL_COLUMNS} FROM {table} ORDER BY rowid")]


class CashMovement(msgspec.Struct, frozen=True):
    """One row of the cash ledger: a fill's notional or its charges (rupees, signed)."""

    id: int
    ts: int  # exchange time, ms
    amount: float
    kind: str  # BUY | SELL | CHARGES
    ref: str  # the fill_id it belongs to


RECOVERY_ADVICE = (
    "stop every chimera process, move the file aside with its -wal and -shm (keep them), "
    "salvage what SQLite can read with `sqlite3 <moved file> .recover | sqlite3 {path}`, "
    "run `chimera doctor`, and let the start-up reconciliation compare the result with "
    "the broker; see docs/RUNBOOK.md, 'After a crash'"
)


# The journal owns its file's PRAGMA user_version (the paper ledger beside it keeps its
# own version in paper_meta). Files have carried a version since the first release, so
# there is nothing to adopt.
SCHEMA = Schema("journal", MIGRATIONS, damaged_advice=RECOVERY_ADVICE)


def corrupt_error(path: Path, exc: BaseException | None) -> JournalCorrupt:
    return JournalCorrupt(
        f"journal: {path} is damaged ({exc}); refusing to trade on it. To recover: "
        + RECOVERY_ADVICE.format(path=path),
        path=str(path),
    )


class _JournalReads:
    """The reads a journal file serves, shared by the engine's Journal and the
    read-only JournalReader (which may open a file that has no schema yet, and turns a
    schema it does not know into StoreSchemaError instead of an empty answer)."""

    _db: sqlite3.Connection

    def _has_schema(self) -> bool:
        return True

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(args)).fetchall()

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, tuple(args)).fetchone()
        return row

    def intent(self, intent_id: str) -> OrderIntent | None:
        if not self._has_schema():
            return None
        row = self._one(
            "SELECT intent_id, token, exchange_type, side, qty, ref_price, bar_start_ms, "
            "signal_seq, exchange_ts_ms FROM intents WHERE intent_id=?",
            (intent_id,),
        )
        if row is None:
            return None
        return OrderIntent(
            client_order_id=row[0],
            token=row[1],
            exchange_type=row[2],
            side=Side(row[3]),
            qty=row[4],
            ref_price=row[5],
            bar_start_ms=row[6],
            signal_seq=row[7],
            exchange_ts_ms=row[8],
        )

    _ORDER_COLS = (
        "client_order_id, token, exchange_type, side, qty, limit_price, status, "
        "broker_order_id, filled_qty, avg_price, reason, intent_id, purpose"
    )

    @staticmethod
    def _order(row: tuple[Any, ...]) -> Order:
        return Order(
            client_order_id=row[0],
            token=row[1],
            exchange_type=row[2],
            side=Side(row[3]),
            qty=row[4],
            limit_price=row[5],
            status=OrderStatus(row[6]),
            broker_order_id=row[7],
            filled_qty=row[8],
            avg_fill_price=row[9],
            reason=row[10],
            intent_id=row[11],
            purpose=Purpose(row[12]),
        )

    def order(self, client_order_id: str) -> Order | None:
        if not self._has_schema():
            return None
        row = self._one(
            f"SELECT {self._ORDER_COLS} FROM orders WHERE client_order_id=?", (client_order_id,)
        )
        return None if row is None else self._order(row)

    def orders(self) -> list[Order]:
        if not self._has_schema():
            return []
        rows = self._rows(f"SELECT {self._ORDER_COLS} FROM orders ORDER BY rowid")
        return [self._order(r) for r in rows]

    def recent_orders(self, limit: int) -> list[Order]:
        """The newest ``limit`` orders, newest first."""
        if not self._has_schema():
            return []
        rows = self._rows(f"SELECT {self._ORDER_COLS} FROM orders ORDER BY rowid DESC LIMIT ?",
                          (limit,))  # fmt: skip
        return [self._order(r) for r in rows]

    def open_orders(self) -> list[Order]:
        if not self._has_schema():
            return []
        rows = self._rows(
            f"SELECT {self._ORDER_COLS} FROM orders WHERE status IN (?,?,?) ORDER BY rowid",
            tuple(s.value for s in WORKING_STATUSES),
        )
        return [self._order(r) for r in rows]

    def fills(self) -> list[Fill]:
        if not self._has_schema():
            return []
        return [_fill(r) for r in self._rows(f"SELECT {FILL_COLUMNS} FROM fills ORDER BY rowid")]

    def recent_fills(self, limit: int) -> list[Fill]:
        """The newest ``limit`` fills, newest first."""
        if not self._has_schema():
            return []
        rows = self._rows(f"SELECT {FILL_COLUMNS} FROM fills ORDER BY rowid DESC LIMIT ?",
                          (limit,))  # fmt: skip
        return [_fill(r) for r in rows]

    def cash_movements(self, limit: int) -> list[CashMovement]:
        """The newest ``limit`` rows of the cash ledger, newest first."""
        if not self._has_schema():
            return []
        rows = self._rows(
            "SELECT id, ts, amount, kind, ref FROM cash_ledger ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [CashMovement(*r) for r in rows]

    def positions(self) -> list[Position]:
        """Open positions, and flat ones that realized P&L (today's record)."""
        if not self._has_schema():
            return []
        rows = self._rows(
            "SELECT token, qty, avg_price, realized_pnl, charges FROM positions "
            "WHERE qty != 0 OR realized_pnl != 0 ORDER BY token"
        )
        return [Position(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def get_risk(self, key: str) -> dict[str, Any] | None:
        if not self._has_schema():
            return None
        row = self._one("SELECT value FROM risk_state WHERE key=?", (key,))
        return None if row is None else msgspec.json.decode(row[0], type=dict[str, Any])

    def check(self) -> list[str]:
        """Invariant violations, empty when healthy. One read transaction, O(fills)."""
        problems: list[str] = []
        if not self._has_schema():
            return problems
        self._db.execute("BEGIN")  # one consistent snapshot for every query below
        try:
            fills = self._rows(
                "SELECT fill_id, client_order_id, token, side, qty, price, charges "
                "FROM fills ORDER BY rowid"
            )
            # Positions, replayed from the fills in booking order.
            expect: dict[str, list[float]] = {}
            ledger_expect: dict[str, float] = {}
            per_order: dict[str, int] = {}
            for fill_id, coid, token, side, qty, price, charges in fills:
                if qty <= 0:
                    problems.append(f"fill {fill_id}: qty {qty} <= 0")
                q, a, r, c = expect.get(token, [0, 0.0, 0.0, 0.0])
                q, a, r = apply_fill(int(q), a, r, Side(side), qty, price)
                expect[token] = [q, a, r, c + charges]
                notional = qty * price
                ledger_expect[fill_id] = (-notional if side == "BUY" else notional) - charges
                per_order[coid] = per_order.get(coid, 0) + qty
            held = {
                r[0]: r[1:]
                for r in self._rows(
                    "SELECT token, qty, avg_price, realized_pnl, charges FROM positions"
                )
            }
            for token in sorted(set(expect) | set(held)):
                eq, ea, er, ec = expect.get(token, [0, 0.0, 0.0, 0.0])
                hq, ha, hr, hc = held.get(token, (0, 0.0, 0.0, 0.0))
                if hq != eq:
                    problems.append(f"position {token}: qty {hq} != signed sum of fills {eq}")
                for name, h, e in (
                    ("avg_price", ha, ea),
                    ("realized_pnl", hr, er),
                    ("charges", hc, ec),
                ):
                    if not math.isclose(h, e, rel_tol=1e-9, abs_tol=_EPS):
                        problems.append(f"position {token}: {name} {h} != replayed {e}")
            # Cash: every fill has exactly its ledger rows, and nothing else is in there.
            ledger: dict[str, float] = {}
            total = 0.0
            for ref, amount in self._rows("SELECT ref, amount FROM cash_ledger"):
                ledger[ref] = ledger.get(ref, 0.0) + amount
                total += amount
            for ref in sorted(set(ledger) | set(ledger_expect)):
                got, want = ledger.get(ref), ledger_expect.get(ref)
                if want is None:
                    problems.append(f"cash ledger: rows for {ref!r}, which is no fill")
                elif got is None:
                    problems.append(f"cash ledger: fill {ref} has no cash rows")
                elif not math.isclose(got, want, rel_tol=1e-9, abs_tol=_EPS):
                    problems.append(f"cash ledger: fill {ref} moved {got}, expected {want}")
            want_total = sum(ledger_expect.values())
            if not math.isclose(total, want_total, rel_tol=1e-9, abs_tol=_EPS):
                problems.append(
                    f"cash: ledger sum {total} != -signed notional - charges {want_total}"
                )
            # Orders: fills booked <= filled_qty <= qty, and every fill has its order.
            orders = {
                r[0]: (r[1], r[2])
                for r in self._rows("SELECT client_order_id, qty, filled_qty FROM orders")
            }
            for coid, (qty, filled) in orders.items():
                if not 0 <= filled <= qty:
                    problems.append(f"order {coid}: filled_qty {filled} outside 0..{qty}")
                booked = per_order.get(coid, 0)
                if booked > filled:
                    problems.append(f"order {coid}: fills sum {booked} > filled_qty {filled}")
            for coid in sorted(set(per_order) - set(orders)):
                problems.append(f"fills for order {coid}, which the journal does not have")
        finally:
            self._db.execute("COMMIT")
        return problems


def stored_mode(path: Path) -> str | None:
    """The mode a journal file says it belongs to, read-only; None if it has none yet.
    JournalCorrupt when SQLite cannot read it."""
    if not path.exists():
        return None
    try:
        with open_readonly(path, SCHEMA) as view:
            if not view.one("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"):
                return None
            row = view.one("SELECT value FROM meta WHERE key='mode'")
    except StoreDamaged as exc:
        raise corrupt_error(path, exc.cause) from None
    return None if row is None else str(row[0])


class JournalReader(_JournalReads):
    """A read-only view of a journal file for everything that is not the engine (doctor,
    cortex, demo, reports): SQLite ``mode=ro``, no migration, no meta rows, nothing
    written. A file with no schema yet (0 bytes, or the engine is creating it) reads as
    empty until the engine has initialized it; a table or column this code reads that the
    file lacks is StoreSchemaError, never an empty answer.

    ``snapshot=True`` (doctor) also creates no ``-wal`` / ``-shm`` when no writer has the
    file open; ``unchanged()`` then says whether the reads can be trusted."""

    def __init__(self, path: str | Path, *, snapshot: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreMissing(
                f"journal: no journal at {self.path} (`chimera live` creates it)", str(self.path)
            )
        try:
            self._view: StoreView = open_readonly(self.path, SCHEMA, snapshot=snapshot)
        except StoreDamaged as exc:
            raise corrupt_error(self.path, exc.cause) from None
        self._db = self._view.db

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._guard(lambda: self._view.rows(sql, args))

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        return self._guard(lambda: self._view.one(sql, args))

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except StoreDamaged as exc:
            raise corrupt_error(self.path, exc.cause) from None

    @property
    def schema_version(self) -> int:
        """PRAGMA user_version: 0 before the engine's first open has created the schema."""
        return self._view.version

    def _has_schema(self) -> bool:
        return self._view.has_schema()

    def _meta(self, key: str) -> str | None:
        if not self._has_schema():
            return None
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        return None if row is None else str(row[0])

    @property
    def mode(self) -> str | None:
        """The mode the file belongs to; None before the engine has stamped it."""
        return self._meta("mode")

    @property
    def starting_cash(self) -> float | None:
        """None before the engine's first open has fixed it."""
        value = self._meta("starting_cash")
        return None if value is None else float(value)

    def cash(self) -> float | None:
        """Starting cash plus the ledger; None while the starting cash is not fixed."""
        start = self.starting_cash
        if start is None:
            return None
        row = self._one("SELECT COALESCE(SUM(amount), 0.0) FROM cash_ledger")
        return start + float(row[0] if row else 0.0)

    def unchanged(self) -> bool:
        """True when no writer has touched the file since this reader opened it."""
        return self._view.unchanged()

    def close(self) -> None:
        self._view.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
