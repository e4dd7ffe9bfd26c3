"""The order journal: the engine's own record of intents, orders, fills, positions and cash.

One SQLite file per mode (``<data_dir>/paper/chimera.db``, ``<data_dir>/live/chimera.db``)
in WAL mode. The file stores its mode in ``meta`` and a journal refuses a file whose
stored mode is not its own, so paper code can never touch live state or the reverse.

Every public write is one ``BEGIN IMMEDIATE … COMMIT`` transaction: a SIGKILL at any
point leaves either all of a report's effects (order row, fill, position, cash rows) or
none. With ``synchronous=FULL`` a committed write also survives power loss; ``NORMAL``
survives a process kill but may lose the last commits on power loss.

Positions: ``qty`` is signed; ``avg_price`` is the average entry price of the open
quantity; ``realized_pnl`` is price P&L on reductions and flips, *gross* of charges
(``charges`` is kept beside it; net = realized_pnl - charges).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import msgspec
import structlog

from chimera_core.contracts import (
    TERMINAL_STATUSES,
    ExecKind,
    ExecutionReport,
    Fill,
    Order,
    OrderIntent,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Purpose,
    Side,
)
from chimera_core.errors import ChimeraError, DuplicateOrder, JournalCorrupt, JournalWriteError
from chimera_core.sqlite_files import connect_readonly, file_state, is_damaged, private_file

log = structlog.get_logger(__name__)

MODES = ("paper", "live")
DB_NAME = "chimera.db"

KIND_TO_STATUS = {
    ExecKind.ACK: OrderStatus.OPEN,
    ExecKind.PARTIAL: OrderStatus.PARTIAL,
    ExecKind.FILLED: OrderStatus.FILLED,
    ExecKind.REJECTED: OrderStatus.REJECTED,
    ExecKind.CANCELLED: OrderStatus.CANCELLED,
}
# A non-terminal status only moves forward (an ACK arriving after a PARTIAL is stale);
# a terminal one never moves at all.
_RANK = {OrderStatus.PENDING: 0, OrderStatus.OPEN: 1, OrderStatus.PARTIAL: 2}
WORKING_STATUSES = (OrderStatus.PENDING, OrderStatus.OPEN, OrderStatus.PARTIAL)
# Order rows the journal had to invent (a fill or report for an order it never wrote).
UNKNOWN_ORDER_TYPE = "UNKNOWN"
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


def read_fills(db: sqlite3.Connection, table: str) -> list[Fill]:
    """The fills of ``table`` (the journal's, or the paper ledger's), in booking order."""
    rows = db.execute(f"SELECT {FILL_COLUMNS} FROM {table} ORDER BY rowid")
    return [Fill(r[0], r[1], r[2], Side(r[3]), r[4], r[5], r[6], r[7]) for r in rows]


RECOVERY_ADVICE = (
    "stop every chimera process, move the file aside with its -wal and -shm (keep them), "
    "salvage what SQLite can read with `sqlite3 <moved file> .recover | sqlite3 {path}`, "
    "run `chimera doctor`, and let the start-up reconciliation compare the result with "
    "the broker; see docs/RUNBOOK.md, 'After a crash'"
)


def corrupt_error(path: Path, exc: BaseException) -> JournalCorrupt:
    return JournalCorrupt(
        f"journal: {path} is damaged ({exc}); refusing to trade on it. To recover: "
        + RECOVERY_ADVICE.format(path=path),
        path=str(path),
    )


def _quick_check(db: sqlite3.Connection, path: Path) -> None:
    # O(file size), once per open: a damaged page found here is a clean refusal instead of
    # a DatabaseError from the middle of reconciliation or trading.
    problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)").fetchall()]
    if problems != ["ok"]:
        raise corrupt_error(path, sqlite3.DatabaseError("; ".join(problems)))


def stored_mode(path: Path) -> str | None:
    """The mode a journal file says it belongs to, read-only; None if it has none yet.
    JournalCorrupt when SQLite cannot read it."""
    if not path.exists():
        return None
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE key='mode'").fetchone()
        return None if row is None else str(row[0])
    except sqlite3.DatabaseError as exc:
        if is_damaged(exc):
            raise corrupt_error(path, exc) from None
        raise
    finally:
        db.close()


class _JournalReads:
    """The reads a journal file serves, shared by the engine's Journal and the
    read-only JournalReader (which may open a file that has no schema yet)."""

    _db: sqlite3.Connection

    def _has_schema(self) -> bool:
        return True

    def intent(self, intent_id: str) -> OrderIntent | None:
        if not self._has_schema():
            return None
        row = self._db.execute(
            "SELECT intent_id, token, exchange_type, side, qty, ref_price, bar_start_ms, "
            "signal_seq, exchange_ts_ms FROM intents WHERE intent_id=?",
            (intent_id,),
        ).fetchone()
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
        row = self._db.execute(
            f"SELECT {self._ORDER_COLS} FROM orders WHERE client_order_id=?",
            (client_order_id,),
        ).fetchone()
        return None if row is None else self._order(row)

    def orders(self) -> list[Order]:
        if not self._has_schema():
            return []
        rows = self._db.execute(f"SELECT {self._ORDER_COLS} FROM orders ORDER BY rowid")
        return [self._order(r) for r in rows]

    def open_orders(self) -> list[Order]:
        if not self._has_schema():
            return []
        rows = self._db.execute(
            f"SELECT {self._ORDER_COLS} FROM orders WHERE status IN (?,?,?) ORDER BY rowid",
            tuple(s.value for s in WORKING_STATUSES),
        )
        return [self._order(r) for r in rows]

    def fills(self) -> list[Fill]:
        if not self._has_schema():
            return []
        return read_fills(self._db, "fills")

    def positions(self) -> list[Position]:
        """Open positions, and flat ones that realized P&L (today's record)."""
        if not self._has_schema():
            return []
        rows = self._db.execute(
            "SELECT token, qty, avg_price, realized_pnl, charges FROM positions "
            "WHERE qty != 0 OR realized_pnl != 0 ORDER BY token"
        )
        return [Position(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def get_risk(self, key: str) -> dict[str, Any] | None:
        if not self._has_schema():
            return None
        row = self._db.execute("SELECT value FROM risk_state WHERE key=?", (key,)).fetchone()
        return None if row is None else msgspec.json.decode(row[0], type=dict[str, Any])

    def check(self) -> list[str]:
        """Invariant violations, empty when healthy. One read transaction, O(fills)."""
        problems: list[str] = []
        if not self._has_schema():
            return problems
        db = self._db
        db.execute("BEGIN")  # one consistent snapshot for every query below
        try:
            fills = db.execute(
                "SELECT fill_id, client_order_id, token, side, qty, price, charges "
                "FROM fills ORDER BY rowid"
            ).fetchall()
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
                for r in db.execute(
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
            for ref, amount in db.execute("SELECT ref, amount FROM cash_ledger"):
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
                for r in db.execute("SELECT client_order_id, qty, filled_qty FROM orders")
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
            db.execute("COMMIT")
        return problems


class Journal(_JournalReads):
    """The engine-side journal for one mode. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        data_dir: str | Path,
        mode: str,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        starting_cash: float | None = None,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ChimeraError(f"journal: expected synchronous NORMAL or FULL, got {synchronous!r}")
        self.mode = mode
        self.path = journal_path(data_dir, mode)
        found = stored_mode(self.path)
        if found is not None and found != mode:
            # Checked read-only before anything (a migration included) writes to it.
            raise ChimeraError(
                f"journal: {self.path} belongs to mode {found!r}, this journal is {mode!r}; "
                f"each mode keeps its own file under <data_dir>/<mode>/ — do not copy them"
            )
        # 0600 in 0700 directories, set before SQLite opens it (SQLite itself would create it
        # 0644, and gives -wal / -shm the file's mode): positions and cash are private.
        private_file(self.path)
        # Autocommit at the driver level: every write below opens its own BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        try:
            self._db.execute("PRAGMA busy_timeout=10000")
            _quick_check(self._db, self.path)  # before anything writes to it
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._migrate()
            self._starting_cash = self._init_meta(starting_cash)
        except sqlite3.Error as exc:
            self._db.close()
            if is_damaged(exc):
                raise corrupt_error(self.path, exc) from None
            raise ChimeraError(f"journal: cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        log.info(
            "journal.opened",
            path=str(self.path),
            mode=mode,
            schema=SCHEMA_VERSION,
            synchronous=synchronous,
        )

    # ---- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A failure in SQLite itself (full disk, I/O error) is a
        JournalWriteError after the rollback; IntegrityError passes through (callers turn
        it into DuplicateOrder), and so does any error of ours."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._write_error(exc, "begin") from exc
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise self._write_error(exc, "write") from exc
            raise

    def _rollback(self) -> None:
        # On SQLITE_FULL / IOERR SQLite may already have rolled back by itself; a second
        # ROLLBACK would raise "no transaction is active" and hide the real cause.
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("journal.rollback_failed", path=str(self.path), error=str(exc))

    def _write_error(self, exc: sqlite3.Error, stage: str) -> JournalWriteError:
        text = str(exc)
        if "full" in text:
            advice = f"free disk space under {self.path.parent}"
        elif is_damaged(exc):
            advice = RECOVERY_ADVICE.format(path=self.path)
        elif "readonly" in text or "read-only" in text:
            advice = f"make {self.path} and its directory writable by this user"
        else:
            advice = f"check the disk holding {self.path} (dmesg, smartctl)"
        log.error("journal.write_failed", path=str(self.path), stage=stage, error=text)
        return JournalWriteError(
            f"journal: write to {self.path} failed ({stage}): {text}; the transaction was "
            f"rolled back, nothing of it was recorded — {advice}",
            path=str(self.path),
            cause=exc,
        )

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ChimeraError(
                f"journal: {self.path} has schema {version}, this code knows up to "
                f"{SCHEMA_VERSION}; run the newer Chimera version that wrote it"
            )
        for step in range(version, SCHEMA_VERSION):
            with self._tx() as db:
                MIGRATIONS[step](db)
                # user_version is set inside the same transaction as the step.
                db.execute(f"PRAGMA user_version={step + 1}")
            log.info("journal.migrated", path=str(self.path), to_version=step + 1)

    def _init_meta(self, starting_cash: float | None) -> float:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='mode'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('mode', ?)", (self.mode,))
            elif row[0] != self.mode:  # a race with another writer; same refusal
                raise ChimeraError(
                    f"journal: {self.path} belongs to mode {row[0]!r}, not {self.mode!r}"
                )
            row = db.execute("SELECT value FROM meta WHERE key='starting_cash'").fetchone()
            if row is None:
                cash = 0.0 if starting_cash is None else float(starting_cash)
                db.execute("INSERT INTO meta VALUES ('starting_cash', ?)", (repr(cash),))
                return cash
        stored = float(row[0])
        if starting_cash is not None and not math.isclose(stored, starting_cash):
            # The first open fixes it: changing it later would rewrite history's cash.
            log.warning("journal.starting_cash_ignored", stored=stored, given=starting_cash)
        return stored

    @staticmethod
    def open_readonly(data_dir: str | Path, mode: str, *, snapshot: bool = False) -> JournalReader:
        """A read-only view of this mode's journal (see JournalReader)."""
        return JournalReader(journal_path(data_dir, mode), snapshot=snapshot)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- intents and orders --------------------------------------------------------------

    def record_intent(self, intent: OrderIntent) -> None:
        """Journal an intent (keyed by its client_order_id); DuplicateOrder if known."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO intents VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        intent.client_order_id,
                        intent.token,
                        intent.exchange_type,
                        intent.side.value,
                        intent.qty,
                        intent.ref_price,
                        intent.bar_start_ms,
                        intent.signal_seq,
                        intent.exchange_ts_ms,
                        intent.exchange_ts_ms,
                    ),
                )
        except sqlite3.IntegrityError:
            raise DuplicateOrder(
                f"journal: intent {intent.client_order_id!r} is already journaled; "
                f"it was decided before and must not be sent again"
            ) from None

    def record_order(self, request: OrderRequest) -> None:
        """Write-ahead: the order is PENDING and committed before the broker sees it."""
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO orders (client_order_id, intent_id, token, exchange_type, "
                    "side, qty, order_type, limit_price, trigger_price, purpose, status, "
                    "broker_order_id, filled_qty, avg_price, reason, updated, product) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,'',0,0.0,'',?,?)",
                    (
                        request.client_order_id,
                        request.intent_id,
                        request.token,
                        request.exchange_type,
                        request.side.value,
                        request.qty,
                        request.order_type.value,
                        request.limit_price
                        if request.order_type in (OrderType.LIMIT, OrderType.STOPLOSS_LIMIT)
                        else None,
                        request.trigger_price
                        if request.order_type
                        in (OrderType.STOPLOSS_MARKET, OrderType.STOPLOSS_LIMIT)
                        else None,
                        request.purpose.value,
                        OrderStatus.PENDING.value,
                        request.exchange_ts_ms,
                        request.product,
                    ),
                )
        except sqlite3.IntegrityError:
            raise DuplicateOrder(
                f"journal: order {request.client_order_id!r} is already journaled; it may "
                f"have reached the broker — reconcile instead of sending it again"
            ) from None

    # ---- reports and fills ---------------------------------------------------------------

    def apply_report(self, report: ExecutionReport) -> bool:
        """Apply one broker report in one transaction; False if it changed nothing."""
        with self._tx() as db:
            changed = False
            row = db.execute(
                "SELECT status, broker_order_id, filled_qty, avg_price, reason, qty, "
                "order_type FROM orders WHERE client_order_id=?",
                (report.client_order_id,),
            ).fetchone()
            if row is None:
                # Real broker state we never wrote (an adopted orphan, a lost write-ahead):
                # keep it, so the fill below has an order to belong to.
                self._insert_unknown_order(
                    db,
                    client_order_id=report.client_order_id,
                    intent_id=report.intent_id,
                    token=report.token,
                    side=report.side,
                    qty=report.order_qty,
                    purpose=report.purpose,
                    status=OrderStatus.PENDING,
                    updated=report.at_ns,
                )
                log.warning(
                    "journal.report_for_unknown_order",
                    client_order_id=report.client_order_id,
                    kind=report.kind.value,
                )
                row = (OrderStatus.PENDING.value, "", 0, 0.0, "", report.order_qty, "")
                changed = True
            status = OrderStatus(row[0])
            broker_id, filled, avg, reason, qty = row[1], row[2], row[3], row[4], row[5]
            invented = row[6] == UNKNOWN_ORDER_TYPE or row[6] == ""

            booked = False
            if report.fill is not None:
                booked = self._book_fill(db, report.fill)
                if booked and status is OrderStatus.CANCELLED:
                    # Real money moved after our cancel: book it, keep the status.
                    log.warning(
                        "journal.late_fill_after_cancel",
                        client_order_id=report.client_order_id,
                        fill_id=report.fill.fill_id,
                        qty=report.fill.qty,
                    )
            changed |= booked

            target = KIND_TO_STATUS[report.kind]
            new_status = status
            if status not in TERMINAL_STATUSES and (
                target in TERMINAL_STATUSES or _RANK[target] > _RANK[status]
            ):
                new_status = target
            elif status in TERMINAL_STATUSES and target is not status:
                log.info(
                    "journal.terminal_kept",
                    client_order_id=report.client_order_id,
                    status=status.value,
                    report=report.kind.value,
                )
            new_filled, new_avg = filled, avg
            if report.filled_qty > new_filled:
                new_filled, new_avg = report.filled_qty, report.avg_price
            fsum, fvwap = self._fills_of(db, report.client_order_id)
            if fsum > new_filled:  # the report's cumulative lags the fills it carried
                new_filled, new_avg = fsum, fvwap
            new_broker_id = report.broker_order_id or broker_id
            new_reason = report.reason or reason
            # An invented row's size is the largest the broker has told us about.
            new_qty = max(qty, report.order_qty, new_filled) if invented else qty
            if (new_status, new_broker_id, new_filled, new_avg, new_reason, new_qty) != (
                status,
                broker_id,
                filled,
                avg,
                reason,
                qty,
            ):
                db.execute(
                    "UPDATE orders SET status=?, broker_order_id=?, filled_qty=?, avg_price=?, "
                    "reason=?, updated=?, qty=? WHERE client_order_id=?",
                    (
                        new_status.value,
                        new_broker_id,
                        new_filled,
                        new_avg,
                        new_reason,
                        report.at_ns,
                        new_qty,
                        report.client_order_id,
                    ),
                )
                changed = True
        return changed

    def record_fill(
        self, fill: Fill, intent_id: str = "", purpose: Purpose = Purpose.ENTRY
    ) -> bool:
        """Book a fill the broker has and the journal lacks (reconciliation); idempotent."""
        with self._tx() as db:
            row = db.execute(
                "SELECT status, qty, order_type FROM orders WHERE client_order_id=?",
                (fill.client_order_id,),
            ).fetchone()
            if row is None:
                self._insert_unknown_order(
                    db,
                    client_order_id=fill.client_order_id,
                    intent_id=intent_id,
                    token=fill.token,
                    side=fill.side,
                    qty=0,
                    purpose=purpose,
                    status=OrderStatus.FILLED,  # all we know of it is that it traded
                    updated=fill.exchange_ts_ms,
                )
                row = (OrderStatus.FILLED.value, 0, UNKNOWN_ORDER_TYPE)
            if not self._book_fill(db, fill):
                return False
            status, qty, order_type = OrderStatus(row[0]), row[1], row[2]
            fsum, fvwap = self._fills_of(db, fill.client_order_id)
            if order_type == UNKNOWN_ORDER_TYPE:
                qty = max(qty, fsum)  # an invented row's size is what we have seen trade
            if status not in TERMINAL_STATUSES:
                status = OrderStatus.FILLED if fsum >= qty else OrderStatus.PARTIAL
            db.execute(
                "UPDATE orders SET qty=?, status=?, filled_qty=MAX(filled_qty, ?), "
                "avg_price=CASE WHEN filled_qty < ? THEN ? ELSE avg_price END "
                "WHERE client_order_id=?",
                (qty, status.value, fsum, fsum, fvwap, fill.client_order_id),
            )
            log.info(
                "journal.fill_recovered", fill_id=fill.fill_id, client_order_id=fill.client_order_id
            )
            return True

    @staticmethod
    def _insert_unknown_order(
        db: sqlite3.Connection,
        *,
        client_order_id: str,
        intent_id: str,
        token: str,
        side: Side,
        qty: int,
        purpose: Purpose,
        status: OrderStatus,
        updated: int,
    ) -> None:
        db.execute(
            "INSERT INTO orders (client_order_id, intent_id, token, exchange_type, side, qty, "
            "order_type, limit_price, trigger_price, purpose, status, broker_order_id, "
            "filled_qty, avg_price, reason, updated) "
            "VALUES (?,?,?,0,?,?,?,NULL,NULL,?,?,'',0,0.0,?,?)",
            (
                client_order_id,
                intent_id,
                token,
                side.value,
                qty,
                UNKNOWN_ORDER_TYPE,
                purpose.value,
                status.value,
                "not journaled before the broker reported it",
                updated,
            ),
        )

    @staticmethod
    def _fills_of(db: sqlite3.Connection, client_order_id: str) -> tuple[int, float]:
        q, notional = db.execute(
            "SELECT COALESCE(SUM(qty), 0), COALESCE(SUM(qty * price), 0.0) FROM fills "
            "WHERE client_order_id=?",
            (client_order_id,),
        ).fetchone()
        return int(q), (notional / q if q else 0.0)

    @staticmethod
    def _book_fill(db: sqlite3.Connection, fill: Fill) -> bool:
        """Insert the fill, move the position and the cash; False if already booked."""
        if fill.qty <= 0 or not (math.isfinite(fill.price) and fill.price > 0):
            raise ChimeraError(
                f"journal: fill {fill.fill_id!r} has qty {fill.qty} price {fill.price!r}; "
                f"expected qty > 0 and a finite price > 0 — the broker report is malformed"
            )
        cur = db.execute(
            "INSERT OR IGNORE INTO fills VALUES (?,?,?,?,?,?,?,?)",
            (
                fill.fill_id,
                fill.client_order_id,
                fill.token,
                fill.side.value,
                fill.qty,
                fill.price,
                fill.charges,
                fill.exchange_ts_ms,
            ),
        )
        if cur.rowcount == 0:
            return False
        pos = db.execute(
            "SELECT qty, avg_price, realized_pnl, charges FROM positions WHERE token=?",
            (fill.token,),
        ).fetchone()
        q, a, r, c = pos if pos is not None else (0, 0.0, 0.0, 0.0)
        q, a, r = apply_fill(q, a, r, fill.side, fill.qty, fill.price)
        db.execute(
            "INSERT OR REPLACE INTO positions VALUES (?,?,?,?,?)",
            (fill.token, q, a, r, c + fill.charges),
        )
        notional = fill.qty * fill.price
        db.execute(
            "INSERT INTO cash_ledger (ts, amount, kind, ref) VALUES (?,?,?,?)",
            (
                fill.exchange_ts_ms,
                -notional if fill.side is Side.BUY else notional,
                fill.side.value,
                fill.fill_id,
            ),
        )
        if fill.charges:
            db.execute(
                "INSERT INTO cash_ledger (ts, amount, kind, ref) VALUES (?,?,'CHARGES',?)",
                (fill.exchange_ts_ms, -fill.charges, fill.fill_id),
            )
        return True

    # ---- reads ---------------------------------------------------------------------------

    @property
    def starting_cash(self) -> float:
        return self._starting_cash

    def cash(self) -> float:
        (total,) = self._db.execute("SELECT COALESCE(SUM(amount), 0.0) FROM cash_ledger").fetchone()
        return self._starting_cash + float(total)

    # ---- risk state ----------------------------------------------------------------------

    def set_risk(self, key: str, value: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO risk_state VALUES (?, ?)",
                (key, msgspec.json.encode(value).decode()),
            )

    # ---- invariants ----------------------------------------------------------------------


class JournalReader(_JournalReads):
    """A read-only view of a journal file for everything that is not the engine (doctor,
    cortex, metrics, reports): SQLite ``mode=ro``, no migration, no meta rows, nothing
    written. A file with no schema yet (0 bytes, or the engine is creating it) reads as
    empty until the engine has initialized it.

    ``snapshot=True`` (doctor) also creates no ``-wal`` / ``-shm`` when no writer has the
    file open; ``unchanged()`` then says whether the reads can be trusted."""

    def __init__(self, path: str | Path, *, snapshot: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ChimeraError(f"journal: no journal at {self.path} (`chimera live` creates it)")
        self._state = file_state(self.path)
        self._ready = False
        try:
            self._db = connect_readonly(self.path, snapshot=snapshot)
        except sqlite3.Error as exc:
            raise ChimeraError(f"journal: cannot open {self.path} read-only: {exc}") from exc
        try:
            version = self.schema_version
            if version > SCHEMA_VERSION:
                raise ChimeraError(
                    f"journal: {self.path} has schema {version}, this code knows up to "
                    f"{SCHEMA_VERSION}; run the newer Chimera version that wrote it"
                )
        except sqlite3.Error as exc:
            self._db.close()
            if is_damaged(exc):
                raise corrupt_error(self.path, exc) from None
            raise ChimeraError(f"journal: cannot read {self.path}: {exc}") from exc
        except BaseException:
            self._db.close()
            raise

    @property
    def schema_version(self) -> int:
        """PRAGMA user_version: 0 before the engine's first open has created the schema."""
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _has_schema(self) -> bool:
        # Migrations commit the schema and user_version together; once seen, it stays.
        if not self._ready:
            self._ready = self.schema_version >= 1
        return self._ready

    def _meta(self, key: str) -> str | None:
        if not self._has_schema():
            return None
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
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
        (total,) = self._db.execute("SELECT COALESCE(SUM(amount), 0.0) FROM cash_ledger").fetchone()
        return start + float(total)

    def unchanged(self) -> bool:
        """True when no writer has touched the file since this reader opened it."""
        try:
            return file_state(self.path) == self._state
        except FileNotFoundError:
            return False

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
