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
from contextlib import AbstractContextManager
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
    OrderIntent,
    OrderRequest,
    OrderStatus,
    OrderType,
    Purpose,
    Side,
)
from chimera_core.errors import (
    ChimeraError,
    DuplicateOrder,
    JournalWriteError,
    StoreDamaged,
)
from chimera_core.store import open_store
from chimera_execution.journal_view import (  # the schema and reads live beside the view
    DB_NAME,
    FILL_COLUMNS,
    MIGRATIONS,
    MODES,
    RECOVERY_ADVICE,
    SCHEMA,
    SCHEMA_VERSION,
    WORKING_STATUSES,
    CashMovement,
    JournalReader,
    _JournalReads,
    apply_fill,
    corrupt_error,
    journal_path,
    read_fills,
    stored_mode,
)

__all__ = [
    "DB_NAME",
    "FILL_COLUMNS",
    "MIGRATIONS",
    "MODES",
    "RECOVERY_ADVICE",
    "SCHEMA_VERSION",
    "WORKING_STATUSES",
    "CashMovement",
    "Journal",
    "JournalReader",
    "apply_fill",
    "corrupt_error",
    "journal_path",
    "read_fills",
    "stored_mode",
]

log = structlog.get_logger(__name__)


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
# Order rows the journal had to invent (a fill or report for an order it never wrote).
UNKNOWN_ORDER_TYPE = "UNKNOWN"


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
        try:
            # 0600 in 0700 directories, WAL, the synchronous level, the migrations; the
            # quick_check first, so a damaged page is a clean refusal before any write.
            self._store = open_store(
                self.path,
                SCHEMA,
                synchronous=synchronous,
                busy_timeout_s=10.0,
                quick_check=True,
                write_error=JournalWriteError,
            )
        except StoreDamaged as exc:
            raise corrupt_error(self.path, exc.cause) from None
        # Autocommit at the driver level: every write below opens its own BEGIN IMMEDIATE.
        self._db = self._store.db
        try:
            self._starting_cash = self._init_meta(starting_cash)
        except BaseException:
            self._store.close()
            raise
        log.info(
            "journal.opened",
            path=str(self.path),
            mode=mode,
            schema=SCHEMA_VERSION,
            synchronous=synchronous,
        )

    # ---- plumbing ------------------------------------------------------------------------

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction (``Store.transaction``): a failure in SQLite itself (full
        disk, I/O error) is a JournalWriteError after the rollback; IntegrityError passes
        through (callers turn it into DuplicateOrder), and so does any error of ours."""
        return self._store.transaction()

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
