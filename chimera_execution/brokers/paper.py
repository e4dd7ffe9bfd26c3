"""The paper broker: a simulated exchange + broker that fills against the live feed.

It is the *other side* of the wire, so it keeps its own ledger (tables ``paper_orders``,
``paper_fills``, ``paper_positions``, ``paper_cash``, ``paper_meta``) in the paper
journal file, on its own connection and in its own transactions. After a crash the
engine's journal and this ledger can disagree exactly as with a real broker, which is
what start-up reconciliation is for. It refuses any file that is not paper-mode.

Matching, all in exchange time so replays are exact:

- An order reaches the book ``latency_ms`` after it was decided (``exchange_ts_ms`` of
  the request, or the last tick seen for its token): it is matched on the first tick
  whose ``exchange_ts_ms`` is at least that.
- MARKET walks the opposite side of the tick's best-5 book (asks for a BUY, bids for a
  SELL), one fill per level, taking min(remaining, level qty). Liquidity taken on a tick
  is remembered for that tick, so two orders never take the same lots; the next tick is
  a fresh book. What is left waits for later ticks (partial fills).
- A tick with no book at all (LTP / QUOTE mode) fills the whole remainder at the LTP:
  there is no depth to walk, and the LTP is the only price the feed vouches for.
  A book with only the other side empty (a circuit) fills nothing.
- LIMIT rests until the opposite best crosses the limit, then walks levels at or better
  than the limit (no book: fills at the LTP once the LTP is at or better than the limit).
- STOPLOSS_MARKET / STOPLOSS_LIMIT trigger when the LTP crosses the trigger (BUY:
  ltp >= trigger, SELL: ltp <= trigger) and then act as MARKET / LIMIT on that same tick.
- ``slippage_bps`` moves every fill price against us; a limit order's fill is capped at
  its limit (an exchange never fills a limit order worse than its limit).
- Charges per fill via ``ChargeCalculator.for_request`` (per segment, product and
  instrument kind; a bare ``ChargesConfig`` is NSE/BSE cash equity with those rates over
  the dated schedule); brokerage is per executed order (a market
  order walking three levels pays one fee, charged as the order's turnover grows).
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from chimera_core.config import ChargesConfig, PaperConfig
from chimera_core.contracts import (
    ExecKind,
    Fill,
    Level,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Position,
    Purpose,
    Side,
    Tick,
)
from chimera_core.errors import BrokerError, BrokerReject, ChimeraError, JournalWriteError
from chimera_core.store import Schema, Store, Synchronous, open_store
from chimera_execution.brokers.base import ReportSink, report_for
from chimera_execution.charges import PRODUCTS, ChargeCalculator
from chimera_execution.journal import apply_fill, read_fills, stored_mode

log = structlog.get_logger(__name__)

# The ledger shares the paper journal's file, whose PRAGMA user_version is the journal's:
# its own version is the schema_version row of paper_meta. Ledgers from before versioning
# have exactly version 1's tables and are adopted as such (the DDL keeps IF NOT EXISTS, as
# shipped).
_V1 = (
    "CREATE TABLE IF NOT EXISTS paper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    """CREATE TABLE IF NOT EXISTS paper_orders (
        broker_order_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE,
        client_order_id TEXT NOT NULL UNIQUE, intent_id TEXT NOT NULL, token TEXT NOT NULL,
        exchange_type INTEGER NOT NULL, side TEXT NOT NULL, qty INTEGER NOT NULL,
        order_type TEXT NOT NULL, limit_price REAL NOT NULL, trigger_price REAL NOT NULL,
        purpose TEXT NOT NULL, product TEXT NOT NULL, status TEXT NOT NULL,
        filled_qty INTEGER NOT NULL, avg_price REAL NOT NULL, fills_n INTEGER NOT NULL,
        triggered INTEGER NOT NULL, eligible_ts_ms INTEGER NOT NULL, reason TEXT NOT NULL);"""
    """CREATE TABLE IF NOT EXISTS paper_fills (
        fill_id TEXT PRIMARY KEY, broker_order_id TEXT NOT NULL,
        client_order_id TEXT NOT NULL, token TEXT NOT NULL, side TEXT NOT NULL,
        qty INTEGER NOT NULL, price REAL NOT NULL, charges REAL NOT NULL,
        exchange_ts_ms INTEGER NOT NULL);"""
    """CREATE TABLE IF NOT EXISTS paper_positions (
        token TEXT PRIMARY KEY, qty INTEGER NOT NULL, avg_price REAL NOT NULL,
        realized_pnl REAL NOT NULL, charges REAL NOT NULL);"""
    """CREATE TABLE IF NOT EXISTS paper_cash (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, amount REAL NOT NULL,
        kind TEXT NOT NULL, ref TEXT NOT NULL)"""
)
LEDGER_SCHEMA = Schema(
    "paper ledger",
    (_V1,),
    version_table="paper_meta",
    adopt_unversioned=True,
)
_WORKING = (OrderStatus.OPEN.value, OrderStatus.PARTIAL.value)


@dataclass
class _Working:
    """An order resting on the simulated exchange (mirrors its paper_orders row)."""

    broker_order_id: str
    seq: int
    request: OrderRequest
    eligible_ts_ms: int
    filled_qty: int = 0
    avg_price: float = 0.0
    fills_n: int = 0
    triggered: bool = False

    @property
    def remaining(self) -> int:
        return self.request.qty - self.filled_qty


class PaperBroker:
    """Simulated broker; see the module docstring for the matching rules."""

    name = "paper"

    def __init__(
        self,
        journal_db: Path,
        cfg: PaperConfig,
        charges: ChargesConfig | ChargeCalculator,
        product: str,
        on_report: ReportSink,
        clock: Callable[[], int] = time.monotonic_ns,
        synchronous: str = "FULL",
    ) -> None:
        path = Path(journal_db)
        mode = stored_mode(path)
        if path.parent.name == "live" or (mode is not None and mode != "paper"):
            raise ChimeraError(
                f"paper broker: {path} is a {mode or 'live'}-mode file; the paper broker "
                f"only opens <data_dir>/paper/chimera.db"
            )
        if product not in PRODUCTS:
            raise ChimeraError(f"paper broker: expected product in {PRODUCTS}, got {product!r}")
        self.path = path
        self._cfg = cfg
        self._charges = (
            charges if isinstance(charges, ChargeCalculator) else ChargeCalculator(equity=charges)
        )
        self._product = product
        if synchronous not in ("NORMAL", "FULL"):
            raise ChimeraError(f"paper broker: synchronous NORMAL or FULL, got {synchronous!r}")
        # the journal's setting: the ledger is its twin
        self._synchronous: Synchronous = "FULL" if synchronous == "FULL" else "NORMAL"
        self._on_report = on_report
        self._clock = clock
        self._store: Store | None = None
        self._db: sqlite3.Connection | None = None
        self._unrecorded_cancels: set[str] = set()  # cancelled, not yet in the ledger
        self._working: dict[str, _Working] = {}  # client_order_id → resting order
        self._last_px: dict[str, float] = {}  # token → last traded price (marks, margin)
        self._last_ts: dict[str, int] = {}  # token → exchange time of its last tick
        self._next_seq = 1
        # A fault to inject (``chimera stress``): the refusal reason for an order the
        # simulated exchange would accept, or "" to accept it. None in normal runs.
        self.fault: Callable[[OrderRequest], str] | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the ledger and put resting orders back on the book."""
        if self._db is not None:
            return
        self._store = open_store(
            self.path,
            LEDGER_SCHEMA,
            synchronous=self._synchronous,
            busy_timeout_s=10.0,
            write_error=JournalWriteError,
        )
        self._db = db = self._store.db
        with self._tx():
            db.execute(
                "INSERT OR IGNORE INTO paper_meta VALUES ('starting_cash', ?)",
                (repr(float(self._cfg.starting_cash)),),
            )
        (max_seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM paper_orders").fetchone()
        self._next_seq = max_seq + 1
        self._working.clear()
        rows = db.execute(
            "SELECT broker_order_id, seq, client_order_id, intent_id, token, exchange_type, "
            "side, qty, order_type, limit_price, trigger_price, purpose, product, filled_qty, "
            "avg_price, fills_n, triggered, eligible_ts_ms FROM paper_orders "
            "WHERE status IN (?, ?) ORDER BY seq",
            _WORKING,
        ).fetchall()
        for r in rows:
            request = OrderRequest(
                client_order_id=r[2],
                intent_id=r[3],
                token=r[4],
                exchange_type=r[5],
                side=Side(r[6]),
                qty=r[7],
                order_type=OrderType(r[8]),
                limit_price=r[9],
                trigger_price=r[10],
                purpose=Purpose(r[11]),
                product=r[12],
            )
            self._working[r[2]] = _Working(
                broker_order_id=r[0],
                seq=r[1],
                request=request,
                eligible_ts_ms=r[17],
                filled_qty=r[13],
                avg_price=r[14],
                fills_n=r[15],
                triggered=bool(r[16]),
            )
        log.info("paper.connected", path=str(self.path), resting=len(self._working))

    async def close(self) -> None:
        if self._db is not None and not self._record_cancels():
            log.error("paper.cancels_unrecorded", orders=sorted(self._unrecorded_cancels))
        if self._store is not None:
            self._store.close()
            self._store = self._db = None

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """One ledger transaction; SQLite's own failures (a full disk) come out as
        JournalWriteError after the rollback, so the exchange can refuse what it cannot
        record instead of half-doing it."""
        if self._store is None or self._db is None:
            raise BrokerError("paper broker: not connected; await connect() first")
        return self._store.transaction()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BrokerError("paper broker: not connected; await connect() first")
        return self._db

    # ---- orders --------------------------------------------------------------------------

    def _validate(self, order: OrderRequest) -> str:
        """Why the simulated exchange refuses the order, or "" if it accepts it."""
        if order.qty <= 0:
            return f"qty must be > 0, got {order.qty}"
        if order.token not in self._last_ts:
            return (
                f"unknown token {order.token!r}: no quote seen for it yet; subscribe to it "
                f"and wait for a tick before ordering"
            )
        if order.product not in PRODUCTS:
            return f"product must be one of {PRODUCTS}, got {order.product!r}"
        needs_limit = order.order_type in (OrderType.LIMIT, OrderType.STOPLOSS_LIMIT)
        needs_trigger = order.order_type in (OrderType.STOPLOSS_MARKET, OrderType.STOPLOSS_LIMIT)
        for needed, field, value in (
            (needs_limit, "limit_price", order.limit_price),
            (needs_trigger, "trigger_price", order.trigger_price),
        ):
            if needed and not (math.isfinite(value) and value > 0):
                return f"{order.order_type.value} needs a finite {field} > 0, got {value!r}"
        return self._margin_refusal(order)

    def _margin_refusal(self, order: OrderRequest) -> str:
        """RMS: an order that adds exposure must leave margin x exposure within equity
        (cash + positions marked at the last price). Orders that reduce exposure (exits,
        flattens) always pass, as with a real broker."""
        db = self._conn()
        positions = dict(db.execute("SELECT token, qty FROM paper_positions").fetchall())
        exposure = {t: float(q) for t, q in positions.items()}
        for w in self._working.values():
            signed = w.remaining if w.request.side is Side.BUY else -w.remaining
            exposure[w.request.token] = exposure.get(w.request.token, 0.0) + signed

        def gross() -> float:
            return sum(abs(q) * self._last_px.get(t, 0.0) for t, q in exposure.items())

        before = gross()
        signed = order.qty if order.side is Side.BUY else -order.qty
        exposure[order.token] = exposure.get(order.token, 0.0) + signed
        after = gross()
        if after <= before:
            return ""
        marks = sum(q * self._last_px.get(t, 0.0) for t, q in positions.items())
        equity = self._cash_now() + marks
        cfg = self._cfg
        frac = cfg.intraday_margin if order.product == "INTRADAY" else cfg.delivery_margin
        need = after * frac
        if need > equity:
            return (
                f"RMS: insufficient margin: {frac:.0%} of exposure ₹{after:,.0f} is "
                f"₹{need:,.0f}, equity is ₹{equity:,.0f}; reduce the size"
            )
        return ""

    async def place(self, order: OrderRequest) -> str:
        """Accept (ACK report, broker id) or refuse (REJECTED report, BrokerReject)."""
        db = self._conn()
        row = db.execute(
            "SELECT broker_order_id, status, reason FROM paper_orders WHERE client_order_id=?",
            (order.client_order_id,),
        ).fetchone()
        if row is not None:
            # Same client id again (a retry after a timeout): it is the same order.
            if row[1] == OrderStatus.REJECTED.value:
                raise BrokerReject(f"paper: order {order.client_order_id} was rejected: {row[2]}")
            log.info("paper.duplicate_place", client_order_id=order.client_order_id)
            return str(row[0])

        reason = self._validate(order)
        if not reason and self.fault is not None:  # a stress scenario's injected refusal
            reason = self.fault(order)
        seq = self._next_seq
        broker_id = f"P{seq:010d}"
        decided = order.exchange_ts_ms or self._last_ts.get(order.token, 0)
        eligible = decided + self._cfg.latency_ms
        status = OrderStatus.REJECTED if reason else OrderStatus.OPEN
        try:
            self._insert_order(broker_id, seq, order, status, eligible, reason)
        except JournalWriteError as exc:
            # The simulated exchange takes no order it cannot record.
            raise BrokerReject(f"paper: order {order.client_order_id} refused: {exc}") from exc
        self._next_seq = seq + 1
        if reason:
            log.warning("paper.rejected", client_order_id=order.client_order_id, reason=reason)
            self._emit(ExecKind.REJECTED, order, broker_id, 0, 0.0, decided, reason=reason)
            raise BrokerReject(f"paper: order {order.client_order_id} rejected: {reason}")
        self._working[order.client_order_id] = _Working(broker_id, seq, order, eligible)
        log.info(
            "paper.accepted",
            client_order_id=order.client_order_id,
            broker_order_id=broker_id,
            eligible_ts_ms=eligible,
        )
        self._emit(ExecKind.ACK, order, broker_id, 0, 0.0, decided)
        return broker_id

    def _insert_order(
        self,
        broker_id: str,
        seq: int,
        order: OrderRequest,
        status: OrderStatus,
        eligible: int,
        reason: str,
    ) -> None:
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO paper_orders VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,0.0,0,0,?,?)",
                (
                    broker_id,
                    seq,
                    order.client_order_id,
                    order.intent_id,
                    order.token,
                    order.exchange_type,
                    order.side.value,
                    order.qty,
                    order.order_type.value,
                    _num(order.limit_price),
                    _num(order.trigger_price),
                    order.purpose.value,
                    order.product,
                    status.value,
                    eligible,
                    reason,
                ),
            )

    async def cancel(self, client_order_id: str) -> None:
        """Cancel a resting order (CANCELLED report); unknown or terminal: no-op.

        A cancel always takes effect (it only removes risk); if the ledger cannot record it
        the update is retried on the next ledger write and at close."""
        w = self._working.get(client_order_id)
        if w is None:
            return
        self._unrecorded_cancels.add(w.broker_order_id)
        self._record_cancels()
        del self._working[client_order_id]
        log.info("paper.cancelled", client_order_id=client_order_id, filled_qty=w.filled_qty)
        self._emit(
            ExecKind.CANCELLED,
            w.request,
            w.broker_order_id,
            w.filled_qty,
            w.avg_price,
            self._last_ts.get(w.request.token, 0),
        )

    def _record_cancels(self) -> bool:
        """Write the cancels the ledger still lacks; False if it still cannot."""
        if not self._unrecorded_cancels:
            return True
        try:
            with self._tx() as tx:
                for broker_id in self._unrecorded_cancels:
                    tx.execute(
                        "UPDATE paper_orders SET status=?, reason='cancelled by client' "
                        "WHERE broker_order_id=?",
                        (OrderStatus.CANCELLED.value, broker_id),
                    )
        except JournalWriteError:
            return False
        self._unrecorded_cancels.clear()
        return True

    def _emit(
        self,
        kind: ExecKind,
        order: OrderRequest,
        broker_id: str,
        filled: int,
        avg: float,
        ts_ms: int,
        fill: Fill | None = None,
        reason: str = "",
    ) -> None:
        self._on_report(
            report_for(
                order,
                kind,
                filled_qty=filled,
                avg_price=avg,
                broker_order_id=broker_id,
                fill=fill,
                reason=reason,
                exchange_ts_ms=ts_ms,
                at_ns=self._clock(),
            )
        )

    # ---- matching ------------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> None:
        """Match resting orders for this token against this tick's book."""
        if self._db is None:
            return  # not connected: no exchange to match on
        self._last_ts[tick.token] = tick.exchange_ts_ms
        self._last_px[tick.token] = tick.ltp
        resting = sorted(
            (
                w
                for w in self._working.values()
                if w.request.token == tick.token and tick.exchange_ts_ms >= w.eligible_ts_ms
            ),
            key=lambda w: w.seq,
        )
        if not resting:
            return
        taken: dict[tuple[str, float], int] = {}  # (book side, price) → qty taken this tick
        no_book = not tick.bids and not tick.asks
        for w in resting:
            req = w.request
            buy = req.side is Side.BUY
            stop = req.order_type in (OrderType.STOPLOSS_MARKET, OrderType.STOPLOSS_LIMIT)
            if stop and not w.triggered:
                crossed = tick.ltp >= req.trigger_price if buy else tick.ltp <= req.trigger_price
                if not crossed:
                    continue
                try:
                    with self._tx() as tx:
                        tx.execute(
                            "UPDATE paper_orders SET triggered=1 WHERE broker_order_id=?",
                            (w.broker_order_id,),
                        )
                except JournalWriteError:
                    continue  # not triggered until the ledger can say so
                w.triggered = True
                log.info("paper.triggered", client_order_id=req.client_order_id, ltp=tick.ltp)
            limit: float | None = None
            if req.order_type in (OrderType.LIMIT, OrderType.STOPLOSS_LIMIT):
                limit = req.limit_price
            for price, qty in self._takes(w, tick, limit, no_book, taken):
                if not self._fill(w, price, qty, limit, tick.exchange_ts_ms):
                    break  # the ledger cannot record it: the order rests, unfilled
            if w.remaining == 0:
                del self._working[req.client_order_id]

    def _takes(
        self,
        w: _Working,
        tick: Tick,
        limit: float | None,
        no_book: bool,
        taken: dict[tuple[str, float], int],
    ) -> list[tuple[float, int]]:
        """(book price, qty) pairs this order takes on this tick."""
        buy = w.request.side is Side.BUY

        def acceptable(price: float) -> bool:
            return limit is None or (price <= limit if buy else price >= limit)

        if no_book:
            if tick.ltp > 0 and math.isfinite(tick.ltp) and acceptable(tick.ltp):
                return [(tick.ltp, w.remaining)]
            return []
        book_side = "ask" if buy else "bid"
        levels: tuple[Level, ...] = tick.asks if buy else tick.bids
        out: list[tuple[float, int]] = []
        remaining = w.remaining
        for level in levels:
            if remaining == 0 or not acceptable(level.price):
                break  # levels are best first: past the limit, none further can do
            if level.qty <= 0 or level.price <= 0:
                continue
            key = (book_side, level.price)
            available = level.qty - taken.get(key, 0)
            take = min(remaining, available)
            if take <= 0:
                continue
            taken[key] = taken.get(key, 0) + take
            remaining -= take
            out.append((level.price, take))
        return out

    def _fill(self, w: _Working, book_price: float, qty: int, limit: float | None, ts: int) -> bool:
        req = w.request
        buy = req.side is Side.BUY
        slip = self._cfg.slippage_bps / 10_000.0
        price = book_price * (1 + slip) if buy else book_price * (1 - slip)
        if limit is not None:
            price = min(price, limit) if buy else max(price, limit)
        charges = self._charges.for_request(req, qty, price, ts, w.avg_price * w.filled_qty).total
        n = w.fills_n + 1
        fill = Fill(
            fill_id=f"{w.broker_order_id}-{n}",
            client_order_id=req.client_order_id,
            token=req.token,
            side=req.side,
            qty=qty,
            price=price,
            charges=charges,
            exchange_ts_ms=ts,
        )
        filled = w.filled_qty + qty
        avg = (w.avg_price * w.filled_qty + price * qty) / filled
        status = OrderStatus.FILLED if filled == req.qty else OrderStatus.PARTIAL
        if not self._record_cancels():
            return False
        try:
            self._book_fill(w, fill, filled, avg, n, status)
        except JournalWriteError:
            return False  # a fill the exchange cannot record does not happen (yet)
        w.filled_qty, w.avg_price, w.fills_n = filled, avg, n
        log.info(
            "paper.fill",
            client_order_id=req.client_order_id,
            fill_id=fill.fill_id,
            qty=qty,
            price=price,
            filled_qty=filled,
        )
        kind = ExecKind.FILLED if status is OrderStatus.FILLED else ExecKind.PARTIAL
        self._emit(kind, req, w.broker_order_id, filled, avg, ts, fill=fill)
        return True

    def _book_fill(
        self, w: _Working, fill: Fill, filled: int, avg: float, n: int, status: OrderStatus
    ) -> None:
        req, qty, price, charges = w.request, fill.qty, fill.price, fill.charges
        ts = fill.exchange_ts_ms
        buy = req.side is Side.BUY
        with self._tx() as tx:
            tx.execute(
                "INSERT INTO paper_fills VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    fill.fill_id,
                    w.broker_order_id,
                    fill.client_order_id,
                    fill.token,
                    fill.side.value,
                    qty,
                    price,
                    charges,
                    ts,
                ),
            )
            tx.execute(
                "UPDATE paper_orders SET filled_qty=?, avg_price=?, fills_n=?, status=? "
                "WHERE broker_order_id=?",
                (filled, avg, n, status.value, w.broker_order_id),
            )
            pos = tx.execute(
                "SELECT qty, avg_price, realized_pnl, charges FROM paper_positions WHERE token=?",
                (req.token,),
            ).fetchone()
            pq, pa, pr, pc = pos if pos is not None else (0, 0.0, 0.0, 0.0)
            pq, pa, pr = apply_fill(pq, pa, pr, req.side, qty, price)
            tx.execute(
                "INSERT OR REPLACE INTO paper_positions VALUES (?,?,?,?,?)",
                (req.token, pq, pa, pr, pc + charges),
            )
            tx.execute(
                "INSERT INTO paper_cash (ts, amount, kind, ref) VALUES (?,?,?,?)",
                (ts, -qty * price if buy else qty * price, req.side.value, fill.fill_id),
            )
            tx.execute(
                "INSERT INTO paper_cash (ts, amount, kind, ref) VALUES (?,?,'CHARGES',?)",
                (ts, -charges, fill.fill_id),
            )

    # ---- the broker's books --------------------------------------------------------------

    async def order_book(self) -> list[Order]:
        rows = self._conn().execute(
            "SELECT client_order_id, token, exchange_type, side, qty, order_type, limit_price, "
            "status, broker_order_id, filled_qty, avg_price, reason, intent_id, purpose "
            "FROM paper_orders ORDER BY seq"
        )
        return [
            Order(
                client_order_id=r[0],
                token=r[1],
                exchange_type=r[2],
                side=Side(r[3]),
                qty=r[4],
                limit_price=r[6]
                if r[5] in (OrderType.LIMIT.value, OrderType.STOPLOSS_LIMIT.value)
                else None,
                status=OrderStatus(r[7]),
                broker_order_id=r[8],
                filled_qty=r[9],
                avg_fill_price=r[10],
                reason=r[11],
                intent_id=r[12],
                purpose=Purpose(r[13]),
            )
            for r in rows
        ]

    async def fills(self) -> list[Fill]:
        return read_fills(self._conn(), "paper_fills")

    async def positions(self) -> list[Position]:
        rows = self._conn().execute(
            "SELECT token, qty, avg_price, realized_pnl, charges FROM paper_positions "
            "WHERE qty != 0 OR realized_pnl != 0 ORDER BY token"
        )
        return [Position(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def cash(self) -> float:
        return self._cash_now()

    def _cash_now(self) -> float:
        """Starting cash (fixed on the ledger's first open) plus every cash movement."""
        db = self._conn()
        (start,) = db.execute("SELECT value FROM paper_meta WHERE key='starting_cash'").fetchone()
        (moved,) = db.execute("SELECT COALESCE(SUM(amount), 0.0) FROM paper_cash").fetchone()
        return float(start) + float(moved)


def _num(x: Any) -> float:
    # Prices the order type does not use are stored as 0, never NaN (NOT NULL REAL).
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else 0.0
