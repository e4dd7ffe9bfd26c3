"""Start-up reconciliation: make the journal agree with the broker before trading starts,
or say exactly what does not agree (the engine makes no entry then).

Fills the broker has and the journal lacks are recovered; journaled orders take the
broker's status (one journaled but never sent is closed as such, not resent); orders the
broker holds that the journal never knew are adopted or cancelled
(``execution.orphans``); positions are compared and the journal checked. The reconciled
positions, with the brackets the journal kept for them, are handed to the exits.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from chimera_core.config import Config
from chimera_core.contracts import (
    TERMINAL_STATUSES,
    ExecKind,
    ExecutionReport,
    Order,
    OrderStatus,
    Purpose,
    Reconciliation,
)
from chimera_execution.brokers.base import Broker
from chimera_execution.exits import Exits
from chimera_execution.journal import Journal
from chimera_execution.smart_execution import Throttler

log = structlog.get_logger(__name__)

_STATUS_KIND = {
    OrderStatus.OPEN: ExecKind.ACK,
    OrderStatus.PARTIAL: ExecKind.PARTIAL,
    OrderStatus.FILLED: ExecKind.FILLED,
    OrderStatus.CANCELLED: ExecKind.CANCELLED,
    OrderStatus.REJECTED: ExecKind.REJECTED,
}


class Reconciler:
    """Reconciles ``journal`` with a broker at login; cancels go through
    ``cancel_throttler`` (the router's), restored positions to ``exits``."""

    def __init__(
        self,
        cfg: Config,
        journal: Journal,
        exits: Exits,
        cancel_throttler: Throttler,
        clock: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.exits = exits
        self.cancel_throttler = cancel_throttler
        self.clock = clock

    def follow_feed_headers(
        self, broker: Broker | None, apply: Callable[[dict[str, str]], None]
    ) -> None:
        """Give the broker session's market-data headers to ``apply`` now and after every
        later login (angelone: its login issues the feed's JWT and feed token); paper has
        none and never calls it."""
        headers_of = getattr(broker, "feed_headers", None)
        if broker is None or not callable(headers_of):
            return

        def on_login() -> None:
            headers = headers_of()
            if headers:
                apply(headers)

        broker.on_login = on_login  # type: ignore[attr-defined]
        on_login()

    async def reconcile(self, broker: Broker) -> Reconciliation:
        """Make the journal agree with the broker, or say what does not agree."""
        journal = self.journal
        book = {o.client_order_id: o for o in await broker.order_book()}
        broker_fills = await broker.fills()
        broker_positions = {p.token: p for p in await broker.positions()}
        known = {f.fill_id for f in journal.fills()}
        recovered = 0
        for fill in broker_fills:
            if fill.fill_id in known:
                continue
            order = journal.order(fill.client_order_id) or book.get(fill.client_order_id)
            intent_id = order.intent_id if order is not None else ""
            purpose = order.purpose if order is not None else Purpose.ENTRY
            if journal.record_fill(fill, intent_id, purpose):
                recovered += 1
        never_sent: list[str] = []
        for order in journal.open_orders():
            theirs = book.get(order.client_order_id)
            if theirs is None:
                if order.status is OrderStatus.PENDING:
                    # Journaled, then the process died before the broker got it. Not resent:
                    # the signal that wanted it is gone.
                    never_sent.append(order.client_order_id)
                    journal.apply_report(
                        _status_report(order, OrderStatus.REJECTED, "never reached the broker")
                    )
                continue
            journal.apply_report(_status_report(order, theirs.status, theirs.reason, theirs))
        adopted: list[str] = []
        cancelled: list[str] = []
        for coid, theirs in book.items():
            if theirs.status in TERMINAL_STATUSES or journal.order(coid) is not None:
                continue
            if self.cfg.execution.orphans == "adopt":
                journal.apply_report(_status_report(theirs, theirs.status, "adopted", theirs))
                adopted.append(coid)
            else:
                await self.cancel_throttler.acquire()
                await broker.cancel(coid)
                cancelled.append(coid)
        positions = journal.positions()
        mismatches = []
        for token in {p.token for p in positions} | set(broker_positions):
            ours = next((p.qty for p in positions if p.token == token), 0)
            theirs_qty = broker_positions[token].qty if token in broker_positions else 0
            if ours != theirs_qty:
                mismatches.append(f"position {token}: journal {ours}, broker {theirs_qty}")
        mismatches.extend(journal.check())
        self.exits.restore(positions, journal.get_risk)
        open_orders = tuple(journal.open_orders())
        recon = Reconciliation(
            mode=self.cfg.mode,
            ok=not mismatches,
            positions=tuple(p for p in positions if p.qty),
            open_orders=open_orders,
            adopted=tuple(adopted),
            cancelled=tuple(cancelled),
            never_sent=tuple(never_sent),
            fills_recovered=recovered,
            mismatches=tuple(mismatches),
            cash=journal.cash(),
            at_ns=self.clock(),
        )
        (log.info if recon.ok else log.error)(
            "reconciled",
            ok=recon.ok,
            positions={p.token: p.qty for p in recon.positions},
            open_orders=len(open_orders),
            adopted=len(adopted),
            cancelled=len(cancelled),
            never_sent=len(never_sent),
            fills_recovered=recovered,
            mismatches=list(mismatches),
        )
        return recon


def _status_report(
    order: Order, status: OrderStatus, reason: str, theirs: Order | None = None
) -> ExecutionReport:
    src = theirs or order
    return ExecutionReport(
        kind=_STATUS_KIND.get(status, ExecKind.ACK),
        client_order_id=order.client_order_id,
        intent_id=order.intent_id,
        token=order.token,
        side=order.side,
        order_qty=order.qty,
        filled_qty=src.filled_qty,
        avg_price=src.avg_fill_price,
        purpose=order.purpose,
        broker_order_id=src.broker_order_id,
        reason=reason,
    )
