"""The order router: one path for every order, intent → journal → throttler → broker, and
every broker report → journal → engine.

- Write-ahead: an intent and each order are committed to the journal before the broker is
  called; the journal's unique keys make a second submission of the same id impossible.
- Reports are journaled first, then handed to the engine (``sink``) with ``final`` set when
  the intent has nothing left working, so the state machine leaves EXECUTE exactly once.
- Smart execution: parents at or above ``slicing.min_qty`` are worked as VWAP children, each
  child is capped by displayed depth and waits out a wide spread; every broker call passes
  the throttler.
- Exits (brackets, the square-off, strategy exits, flattens: ``chimera_execution.exits``)
  and start-up reconciliation (``chimera_execution.reconcile``; trading waits for it) are
  parts the router composes; this module keeps submission, working parents, report
  routing and the kill switch.
- Positions: the router books no fill. It reads the one ``PositionBook`` the engine
  applies every fill to (``use_positions``; the wiring in ``chimera_core.node`` hands it
  over), and the sink gets each report before the router acts on the position it moved
  (a bracket follows the fill after the engine booked it). A router used without an
  engine starts with a book of its own, seeded by reconciliation; its sink must book the
  fills into ``router.positions`` as the engine does.

Everything runs on the engine's event loop; broker calls are tasks, so a slow broker never
holds a tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.config import Config, feed_symbols
from chimera_core.contracts import (
    TERMINAL_STATUSES,
    CancelAll,
    CancelEntries,
    CancelIntent,
    ExchangeType,
    ExecKind,
    ExecutionReport,
    ExitPosition,
    Flatten,
    OrderIntent,
    OrderRequest,
    OrderStatus,
    OrderType,
    Purpose,
    Reconciliation,
    ResumeRouting,
    RouterCommand,
    Tick,
)
from chimera_core.errors import (
    BrokerError,
    BrokerReject,
    ConfigError,
    DuplicateOrder,
    JournalWriteError,
    RateLimited,
)
from chimera_core.instruments import Instrument
from chimera_core.markets import calendar_for
from chimera_core.position_book import PositionBook
from chimera_execution.brokers.base import Broker, report_for
from chimera_execution.exits import Exits
from chimera_execution.journal import Journal, journal_path
from chimera_execution.reconcile import Reconciler
from chimera_execution.smart_execution import LiquidityAdjuster, Throttler, VwapSlicer

log = structlog.get_logger(__name__)

ReportSink = Callable[[ExecutionReport], None]

_PLACE_ATTEMPTS = 3
KILL_SWITCH_KEY = "kill_switch"
KILL_SWITCH_PERSISTED = "kill_switch_persisted"


class Parent:
    """One intent being worked: what is left to send and which children are working."""

    __slots__ = (
        "atr",
        "intent",
        "n_children",
        "remaining",
        "slicer",
        "stopped",
        "wait_since_ms",
        "window_end_ms",
        "working",
    )

    def __init__(self, intent: OrderIntent, atr: float, slicer: VwapSlicer | None) -> None:
        self.intent = intent
        self.atr = atr
        self.remaining = intent.qty  # not yet sent to the broker
        self.slicer = slicer
        self.working: set[str] = set()
        self.n_children = 0
        self.stopped = False  # cancelled, expired, rejected: send nothing more
        self.wait_since_ms = -1  # the liquidity adjuster asked to wait since then
        self.window_end_ms = 0  # VWAP parents: no child after this exchange time


class OrderRouter:
    def __init__(
        self,
        cfg: Config,
        journal: Journal,
        clock: Callable[[], int] = time.monotonic_ns,
        instruments: Sequence[Instrument] = (),
        throttle_clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        ex = cfg.execution
        self.cfg = cfg
        self.ex = ex
        self.journal = journal
        self.broker: Broker | None = None  # set by build_router (the broker reports to us)
        self.clock = clock
        self.sink: ReportSink = _nowhere
        self.on_journal_failure: Callable[[str], None] = _no_journal_alarm
        # While the journal cannot write, what it could not record is kept here so the
        # router still knows its orders: exits sent unjournaled (a position must not lose
        # its stop to a full disk), reports it could not book (deduplicated here instead),
        # and orders whose end it could not record. Reconciliation at the next start
        # brings the journal back in line with the broker.
        self._unjournaled: dict[str, OrderRequest] = {}
        self._unbooked: set[tuple[str, str, str]] = set()
        self._ended_unrecorded: set[str] = set()
        self._acked_unrecorded: set[str] = set()  # at the broker, the journal says PENDING
        self.journal_failures = 0
        # Angel One budgets each order endpoint on its own (placeOrder, modifyOrder and
        # cancelOrder: 20/s, 500/min, 1000/h each), so a kill switch's cancels never queue
        # behind the places that used up the placeOrder budget.
        # ``throttle_clock``/``sleep``: the loop's in live, a simulated clock in a backtest.
        self.throttler = Throttler.from_config(ex.throttle, clock=throttle_clock, sleep=sleep)
        self.cancel_throttler = Throttler.from_config(
            ex.throttle, clock=throttle_clock, sleep=sleep
        )
        self.liquidity = LiquidityAdjuster(
            ex.slicing.depth_fraction, ex.slicing.max_spread_pct, ex.slicing.max_wait_s
        )
        # Each token's segment (cash and F&O side by side), its calendar and tick size.
        self._exchange_type = int(ExchangeType[cfg.feed.exchange_type])
        self._segment = dict((t, et) for et, t in feed_symbols(cfg))
        self._ticks = {
            **cfg.feed.tick_sizes,
            **{i.token: i.tick_size for i in instruments if i.tick_size > 0},
        }
        # Trading symbols for the broker: the instrument master's, or [execution.angelone].
        self._symbols = {**{i.token: i.symbol for i in instruments}, **ex.angelone.symbols}
        self._parents: dict[str, Parent] = {}
        self._watch: set[str] = set()  # tokens with parents, positions or exits
        self._last_tick: dict[str, Tick] = {}
        self._matched: Tick | None = None  # the tick the broker last matched on (on_market)
        self._tasks: set[asyncio.Task[Any]] = set()
        # The same calendars as the engine and meta-risk (chimera_core.markets).
        self.calendar = calendar_for(cfg.markets, self._exchange_type, ex.square_off_at)
        self.exits = Exits(
            ex,
            PositionBook(),  # until use_positions hands over the engine's
            send=self._send,
            stop_entries=self._stop_entries,
            set_risk=self._set_risk,
            watch=self._watch,
            segment=self._segment,
            exchange_type=self._exchange_type,
            calendars={
                et: calendar_for(cfg.markets, et, ex.square_off_at)
                for et in set(self._segment.values())
            },
            calendar=self.calendar,
            tick_sizes=self._ticks,
            symbols=self._symbols,
        )
        self.reconciler = Reconciler(cfg, journal, self.exits, self.cancel_throttler, clock)
        self._cancel_all_ns = 0  # kill switch started (0: none pending)
        # Orders the kill switch caught before they reached the broker: never sent.
        self._dont_send: set[str] = set()
        self.halted = False  # kill switch: no new orders but flatten until resumed
        self.kill_latencies_us: list[float] = []  # kill switch → last open order cancelled
        self.stats = {"orders": 0, "reports": 0, "duplicates": 0, "rejects": 0, "retries": 0}

    # ---- intents ------------------------------------------------------------------------
    def submit(self, intent: OrderIntent, atr: float) -> None:
        """An intent left the state machine: journal it and start working it."""
        try:
            self.journal.record_intent(intent)
        except DuplicateOrder as exc:
            # A restart or replay re-fired the same bar's signal: never sent twice.
            log.warning("intent_duplicate", intent_id=intent.client_order_id)
            self.sink(_reject(intent, intent.client_order_id, f"duplicate: {exc}", self.clock()))
            return
        except JournalWriteError as exc:
            # An entry that cannot be recorded is never sent.
            self._journal_failed(exc, intent.client_order_id)
            why = f"journal_write_failed: {exc.cause}"
            self.sink(_reject(intent, intent.client_order_id, why, self.clock()))
            return
        s = self.ex.slicing
        slicer = None
        if intent.qty >= s.min_qty:
            slicer = VwapSlicer(
                intent.qty,
                intent.side,
                intent.exchange_ts_ms,
                s.window_s,
                s.participation,
                lot_size=self.cfg.feed.lots.get(intent.token, self.cfg.governance.lot_size),
            )
        parent = Parent(intent, atr, slicer)
        parent.window_end_ms = intent.exchange_ts_ms + int(s.window_s * 1000)
        self._parents[intent.client_order_id] = parent
        self._watch.add(intent.token)
        log.info(
            "intent_accepted",
            intent_id=intent.client_order_id,
            side=intent.side.value,
            qty=intent.qty,
            vwap=slicer is not None,
        )
        self._work(parent, self._last_tick.get(intent.token), intent.exchange_ts_ms)

    def _work(self, parent: Parent, tick: Tick | None, now_ms: int) -> None:
        """Send the parent's next child if it is due and the book allows it."""
        slicer = parent.slicer
        if slicer is not None and tick is not None:
            slicer.on_tick(tick)  # observed volume, for the participation cap
        if parent.stopped or parent.remaining <= 0 or parent.working:
            return
        if self.halted:
            parent.stopped = True
            return
        intent = parent.intent
        if slicer is not None:
            if now_ms >= parent.window_end_ms:
                # The window is over: what the participation cap held back is not chased.
                unsent = slicer.stop()
                parent.remaining = 0
                self._finish(parent, f"vwap window ended, {unsent} unsent")
                return
            due = min(slicer.next_child(now_ms), parent.remaining)
        else:
            due = parent.remaining
        if due <= 0:
            return
        qty = due
        if tick is not None:
            waited_s = (now_ms - parent.wait_since_ms) / 1000 if parent.wait_since_ms >= 0 else 0.0
            adj = self.liquidity.adjust(intent.side, qty, tick, waited_s)
            if adj.action == "wait":
                if slicer is not None:
                    slicer.on_unfilled(due)  # back into the schedule
                if parent.wait_since_ms < 0:
                    parent.wait_since_ms = now_ms
                    log.info("child_waits", intent_id=intent.client_order_id, reason=adj.reason)
                return
            qty = min(qty, adj.qty)
            if slicer is not None and qty < due:
                slicer.on_unfilled(due - qty)  # capped by displayed depth
            if qty <= 0:
                return
        parent.wait_since_ms = -1
        n = parent.n_children
        coid = intent.client_order_id if n == 0 else f"{intent.client_order_id}-c{n}"
        request = OrderRequest(
            client_order_id=coid,
            intent_id=intent.client_order_id,
            token=intent.token,
            exchange_type=intent.exchange_type,
            side=intent.side,
            qty=qty,
            order_type=OrderType.MARKET,
            purpose=Purpose.ENTRY,
            product=self.ex.product,
            symbol=self._symbols.get(intent.token, ""),
            exchange_ts_ms=now_ms,
        )
        parent.n_children += 1
        parent.remaining -= qty
        parent.working.add(coid)
        self._send(request)

    def _finish(self, parent: Parent, reason: str) -> None:
        """A parent that stops with nothing working: tell the engine its intent is done
        (a report of our own, not the broker's: there is no order to journal)."""
        parent.stopped = True
        if parent.working:
            return  # the last child's terminal report carries final
        intent = parent.intent
        self._parents.pop(intent.client_order_id, None)
        if parent.slicer is not None:
            log.info("vwap_done", **msgspec.structs.asdict(parent.slicer.report()))
        self._rewatch(intent.token)
        self.sink(
            msgspec.structs.replace(
                _reject(intent, intent.client_order_id + "-end", reason, self.clock()),
                kind=ExecKind.CANCELLED,
            )
        )

    def _send(self, request: OrderRequest) -> None:
        try:
            self.journal.record_order(request)  # write-ahead, committed before the call
        except DuplicateOrder as exc:
            log.warning("order_duplicate", coid=request.client_order_id)
            self.on_broker_report(_reject_request(request, f"duplicate: {exc}", self.clock()))
            return
        except JournalWriteError as exc:
            self._journal_failed(exc, request.client_order_id)
            if request.purpose is Purpose.ENTRY:
                self.on_broker_report(
                    _reject_request(request, f"journal_write_failed: {exc.cause}", self.clock())
                )
                return
            # A protective exit goes out all the same; the next start's reconciliation
            # journals what the broker did with it.
            log.error("exit_sent_unjournaled", coid=request.client_order_id, token=request.token)
            self._unjournaled[request.client_order_id] = request
        self.stats["orders"] += 1
        self._spawn(self._place(request))

    async def _place(self, request: OrderRequest) -> None:
        broker = self.broker
        assert broker is not None
        coid = request.client_order_id
        why = ""
        for attempt in range(_PLACE_ATTEMPTS):
            if coid not in self._dont_send:
                await self.throttler.acquire()
            if coid in self._dont_send:
                self._dont_send.discard(coid)
                log.warning("order_not_sent", coid=coid, reason="kill switch")
                self.on_broker_report(
                    _cancelled_request(request, "kill switch before it reached the broker")
                )
                return
            try:
                broker_id = await broker.place(request)
                log.info("order_placed", coid=coid, broker_order_id=broker_id, attempt=attempt)
                if coid in self._dont_send:
                    # The kill switch came while the call was in flight.
                    self._dont_send.discard(coid)
                    await self._cancel(coid)
                return
            except BrokerReject as exc:
                why = str(exc)
                break
            except RateLimited as exc:
                why = str(exc)
                self.stats["retries"] += 1
                log.warning("order_rate_limited", coid=coid, attempt=attempt)
                await asyncio.sleep(1.0)
            except BrokerError as exc:
                # Outcome unknown: the broker may hold it. Look before sending again.
                why = str(exc)
                self.stats["retries"] += 1
                log.warning("order_outcome_unknown", coid=coid, attempt=attempt, error=why)
                await asyncio.sleep(0.5 * (attempt + 1))
                if await self._broker_has(coid):
                    log.warning("order_found_after_error", coid=coid)
                    return
        order = self.journal.order(coid)
        if order is None or order.status not in TERMINAL_STATUSES:
            self.on_broker_report(_reject_request(request, why or "not placed", self.clock()))

    async def _broker_has(self, coid: str) -> bool:
        assert self.broker is not None
        try:
            return any(o.client_order_id == coid for o in await self.broker.order_book())
        except BrokerError:
            return False

    # ---- reports ------------------------------------------------------------------------
    def on_broker_report(self, report: ExecutionReport) -> None:
        """Every report from the broker (or made here): journal, then the engine."""
        self.stats["reports"] += 1
        coid = report.client_order_id
        terminal = report.kind in (ExecKind.FILLED, ExecKind.REJECTED, ExecKind.CANCELLED)
        if not self._book(report, terminal):
            self.stats["duplicates"] += 1
            log.info("report_duplicate", coid=coid, kind=report.kind.value)
            return
        token = report.token
        if report.kind is ExecKind.REJECTED:
            self.stats["rejects"] += 1
        exits = self.exits
        if terminal:
            exits.order_ended(token, coid)
        final = False
        # An exit (bracket, strategy exit, square-off) names its entry's intent: it is no
        # child of the entry's parent, and its fills are none of the entry's.
        entry = report.purpose is Purpose.ENTRY
        parent = self._parents.get(report.intent_id) if entry else None
        if parent is not None:
            if terminal:
                parent.working.discard(coid)
                if report.kind is not ExecKind.FILLED:
                    parent.stopped = True  # a rejected or cancelled child ends the parent
            if parent.slicer is not None and report.fill is not None:
                parent.slicer.on_fill(report.fill.qty, report.fill.price)
            if not parent.working and (parent.stopped or parent.remaining <= 0):
                final = True
                del self._parents[report.intent_id]
                if parent.slicer is not None:
                    log.info("vwap_done", **msgspec.structs.asdict(parent.slicer.report()))
        elif terminal and entry:
            final = True  # an order from before a restart: nothing else works for it
        # The engine books the fill into the position book (the one the exits read) ...
        self.sink(msgspec.structs.replace(report, final=True) if final else report)
        if report.fill is not None:
            # ... and the bracket follows the position it made (its entry's ATR).
            exits.follow_fill(token, report.intent_id, parent.atr if parent is not None else 0.0)
        self._rewatch(token)
        if self._cancel_all_ns and not self.open_orders():
            took_us = (self.clock() - self._cancel_all_ns) / 1000
            self.kill_latencies_us.append(took_us)
            self._cancel_all_ns = 0
            log.warning("kill_switch_all_cancelled", latency_us=round(took_us, 1))

    def _book(self, report: ExecutionReport, terminal: bool) -> bool:
        """Journal a report; False for a duplicate. When the journal cannot write, the
        report still counts (the broker did it) and duplicates are caught in memory."""
        coid = report.client_order_id
        key = (coid, report.kind.value, report.fill.fill_id if report.fill is not None else "")
        if key in self._unbooked:
            return False
        if coid not in self._unjournaled:  # the journal does not know an unjournaled exit
            try:
                return self.journal.apply_report(report)
            except JournalWriteError as exc:
                self._journal_failed(exc, coid)
        self._unbooked.add(key)
        if report.kind is ExecKind.ACK or report.kind is ExecKind.PARTIAL:
            self._acked_unrecorded.add(coid)
        if terminal:
            self._unjournaled.pop(coid, None)
            self._ended_unrecorded.add(coid)
        return True

    def open_orders(self) -> list[str]:
        """Client ids of the orders open at the broker as far as we know: the journal's,
        less those whose end it could not record, plus exits sent unjournaled."""
        ended = self._ended_unrecorded
        out = [o.client_order_id for o in self.journal.open_orders()]
        return [c for c in out if c not in ended] + list(self._unjournaled)

    def _journal_failed(self, exc: JournalWriteError, coid: str) -> None:
        self.journal_failures += 1
        log.error("journal_write_failed", coid=coid, path=exc.path, error=str(exc.cause))
        self.on_journal_failure(str(exc.cause) or str(exc))

    def _set_risk(self, key: str, value: dict[str, Any]) -> None:
        """Risk state (brackets, the kill switch) is kept in memory whatever the disk does;
        a write that fails is reported, never raised into the tick path."""
        try:
            self.journal.set_risk(key, value)
        except JournalWriteError as exc:
            self._journal_failed(exc, key)

    # ---- ticks --------------------------------------------------------------------------
    def on_market(self, tick: Tick) -> None:
        """The broker sees an accepted tick before the engine steps on it (the engine's
        ``on_market``): a simulated exchange fills on it and its reports reach the engine
        first, as a real exchange's fills precede the next print."""
        self._matched = tick
        broker = self.broker
        if broker is not None:
            broker.on_tick(tick)

    def on_tick(self, tick: Tick, atr: float = math.nan) -> None:
        """Every accepted tick, after its decision is published."""
        token = tick.token
        self._last_tick[token] = tick
        broker = self.broker
        if broker is not None and tick is not self._matched:
            broker.on_tick(tick)  # not given to it before the step
        if token not in self._watch:
            return
        now = tick.exchange_ts_ms
        for parent in list(self._parents.values()):
            if parent.intent.token == token:
                self._work(parent, tick, now)
        self.exits.on_tick(tick, atr, now)

    def _stop_entries(self, token: str, purpose: Purpose) -> None:
        """Leaving while the entry is still being worked: no more children (they would
        reopen what the exit closes); those working are cancelled."""
        for parent in [p for p in self._parents.values() if p.intent.token == token]:
            parent.stopped = True
            for coid in list(parent.working):
                self._spawn(self._cancel(coid))
            if not parent.working:
                self._finish(parent, f"{purpose.value.lower()} before the entry was complete")

    def _rewatch(self, token: str) -> None:
        busy = self.exits.busy(token) or any(
            p.intent.token == token for p in self._parents.values()
        )
        if busy:
            self._watch.add(token)
        else:
            self._watch.discard(token)

    # ---- engine actions (kill switch, expiry, flatten) -----------------------------------
    def apply(self, actions: list[RouterCommand]) -> None:
        """Carry out the engine's commands in order (and clear the list)."""
        for command in actions:
            match command:
                case CancelIntent(intent_id):
                    self.cancel_intent(intent_id)
                case CancelAll(reason):
                    self.cancel_all(reason)
                case CancelEntries(reason):
                    for intent_id in list(self._parents):
                        self.cancel_intent(intent_id)
                    log.warning("entries_cancelled", reason=reason)
                case Flatten(reason, token):
                    self.flatten(reason, only=token or None)
                case ExitPosition(token, reason):
                    self.exits.strategy_exit(token, reason, self._last_ms(token))
                case ResumeRouting(reason):
                    self.halted = False
                    self._set_risk(KILL_SWITCH_KEY, {})
                    log.warning("router_resumed", reason=reason)
        actions.clear()

    def cancel_intent(self, intent_id: str) -> None:
        parent = self._parents.get(intent_id)
        if parent is None:
            return
        parent.stopped = True
        for coid in list(parent.working):
            self._spawn(self._cancel(coid))
        if not parent.working:
            del self._parents[intent_id]

    def cancel_all(self, reason: str) -> int:
        """Kill switch: stop every parent, cancel every open order, send nothing new (but
        a flatten) until resumed. Returns how many orders it cancels.

        An operator's halt is persisted in the journal, so a restart starts halted until
        someone resumes. A clean stop's halt is not (the next start trades), and meta-risk
        persists its own halts with their own expiry (a daily-loss halt ends with the day).
        """
        self.halted = True
        if not reason.startswith(("shutdown", "meta_risk", KILL_SWITCH_PERSISTED)):
            self._set_risk(KILL_SWITCH_KEY, {"reason": reason})
        for parent in self._parents.values():
            parent.stopped = True
        open_orders = [
            o for o in self.journal.open_orders() if o.client_order_id not in self._ended_unrecorded
        ]
        if open_orders or self._unjournaled:
            self._cancel_all_ns = self.clock()
        for order in open_orders:
            unsent = order.status is OrderStatus.PENDING and not order.broker_order_id
            if unsent and order.client_order_id not in self._acked_unrecorded:
                self._dont_send.add(order.client_order_id)  # its _place task drops it
            else:
                self._spawn(self._cancel(order.client_order_id))
        for coid in self._unjournaled:
            if coid in self._acked_unrecorded:
                self._spawn(self._cancel(coid))
            else:
                self._dont_send.add(coid)  # still queued for the broker: never sent
        n = len(open_orders) + len(self._unjournaled)
        log.warning("cancel_all", reason=reason, orders=n)
        return n

    def flatten(self, reason: str, only: str | None = None) -> int:
        """Close positions at market (every one, or only token ``only``)."""
        return self.exits.flatten(reason, only, self._last_ms)

    def _last_ms(self, token: str) -> int:
        """The exchange time of ``token``'s last tick (0 before the first)."""
        tick = self._last_tick.get(token)
        return tick.exchange_ts_ms if tick is not None else 0

    async def _cancel(self, coid: str) -> None:
        assert self.broker is not None
        await self.cancel_throttler.acquire()
        try:
            await self.broker.cancel(coid)
        except BrokerError as exc:
            log.error("cancel_failed", coid=coid, error=str(exc))

    # ---- start and stop ------------------------------------------------------------------
    async def connect(self) -> None:
        assert self.broker is not None
        await self.broker.connect()
        log.info("broker_connected", broker=self.broker.name, mode=self.cfg.mode)

    def persisted_halt(self) -> str:
        """The reason of an operator kill switch still in force from an earlier run."""
        return str((self.journal.get_risk(KILL_SWITCH_KEY) or {}).get("reason", ""))

    def follow_feed_headers(self, apply: Callable[[dict[str, str]], None]) -> None:
        """The broker session's market-data headers to ``apply``, now and after every later
        login (``chimera_execution.reconcile``)."""
        self.reconciler.follow_feed_headers(self.broker, apply)

    async def reconcile(self) -> Reconciliation:
        """Make the journal agree with the broker, or say what does not agree; the
        reconciled positions (and their brackets) are where the exits start from."""
        assert self.broker is not None
        return await self.reconciler.reconcile(self.broker)

    @property
    def positions(self) -> PositionBook:
        """The position book the router reads (the engine's once ``use_positions`` ran)."""
        return self.exits.positions

    def use_positions(self, book: PositionBook) -> None:
        """Read positions from ``book`` from now on: the engine's, which books every fill
        (the router books none). Called by the wiring before reconciliation."""
        self.exits.positions = book

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel open orders (when configured) and wait for the answers, then close."""
        if self.ex.cancel_on_stop and self.broker is not None and self.cancel_all("shutdown"):
            deadline = time.monotonic() + timeout_s
            while self.open_orders() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            left = self.open_orders()
            if left:
                log.error("stop_orders_left_open", orders=left)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)
        if self.broker is not None:
            await self.broker.close()

    def bracket_levels(self, token: str) -> tuple[float, ...]:
        """The stop and target held for ``token``'s position (none while it is flat or an
        exit is working): a backtest prints them when a bar's path passes through them."""
        return self.exits.bracket_levels(token)

    @property
    def tasks_in_flight(self) -> int:
        """Broker calls (place, cancel) still running: a backtest lets them finish before
        the next simulated tick."""
        return len(self._tasks)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router_task_failed", error=repr(task.exception()))


def _no_journal_alarm(error: str) -> None:
    log.error("journal_failure_unhandled", error=error)


def _nowhere(report: ExecutionReport) -> None:
    log.warning("report_without_sink", coid=report.client_order_id)


def _reject(intent: OrderIntent, coid: str, reason: str, at_ns: int) -> ExecutionReport:
    return ExecutionReport(
        kind=ExecKind.REJECTED,
        client_order_id=coid,
        intent_id=intent.client_order_id,
        token=intent.token,
        side=intent.side,
        order_qty=intent.qty,
        filled_qty=0,
        avg_price=0.0,
        reason=reason,
        final=True,
        exchange_ts_ms=intent.exchange_ts_ms,
        at_ns=at_ns,
    )


def _reject_request(request: OrderRequest, reason: str, at_ns: int) -> ExecutionReport:
    return report_for(request, ExecKind.REJECTED, reason=reason, at_ns=at_ns)


def _cancelled_request(request: OrderRequest, reason: str) -> ExecutionReport:
    return report_for(request, ExecKind.CANCELLED, reason=reason)


# ---- assembly ----------------------------------------------------------------------------
BROKER_ENV = ("CHIMERA_API_KEY", "CHIMERA_CLIENT_CODE", "CHIMERA_PASSWORD", "CHIMERA_TOTP_SECRET")


def build_router(
    cfg: Config,
    env: dict[str, str],
    instruments: Sequence[Instrument] = (),
    clock: Callable[[], int] = time.monotonic_ns,
    throttle_clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> OrderRouter:
    """The journal for this mode, the configured broker, and the router between them.
    ``instruments`` (resolved from the master) give tick sizes and F&O kinds by token;
    the clocks and ``sleep`` are the loop's, or a backtest's simulated ones."""
    ex = cfg.execution
    journal = Journal(Path(cfg.data_dir), cfg.mode, synchronous=ex.journal_sync,
                      starting_cash=ex.paper.starting_cash)  # fmt: skip
    router = OrderRouter(
        cfg,
        journal,
        clock=clock,
        instruments=instruments,
        throttle_clock=throttle_clock,
        sleep=sleep,
    )
    if ex.broker == "paper":
        from chimera_execution.brokers.paper import PaperBroker
        from chimera_execution.charges import ChargeCalculator

        # Each fill is charged by its segment's schedule (or the market's percent, fixed or
        # none model); [execution.charges] still states the NSE cash rates.
        kinds = {i.token: i.kind for i in instruments if i.kind in ("FUT", "OPT")}
        calculator = ChargeCalculator(equity=ex.charges, markets=cfg.markets, kinds=kinds)
        calculator.check_markets(sorted({ExchangeType(et).name for et, _ in feed_symbols(cfg)}))
        router.broker = PaperBroker(
            journal_path(Path(cfg.data_dir), cfg.mode),
            ex.paper,
            calculator,
            ex.product,
            router.on_broker_report,
            clock=clock,
            synchronous=ex.journal_sync,
        )
    else:
        missing = [k for k in BROKER_ENV if not env.get(k)]
        if missing:
            journal.close()
            raise ConfigError(
                f"execution.broker = 'angelone' needs {', '.join(missing)} in the environment "
                "or .env (never in chimera.toml)"
            )
        from chimera_execution.brokers.angelone import AngelOneBroker

        router.broker = AngelOneBroker(
            ex.angelone,
            api_key=env["CHIMERA_API_KEY"],
            client_code=env["CHIMERA_CLIENT_CODE"],
            password=env["CHIMERA_PASSWORD"],
            totp_secret=env["CHIMERA_TOTP_SECRET"],
            on_report=router.on_broker_report,
            # The SDK's logs/ and the ordertag map live with this mode's data.
            state_dir=Path(cfg.data_dir) / cfg.mode / "angelone",
        )
    return router
