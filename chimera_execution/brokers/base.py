"""The one protocol every broker speaks. The router only knows this; venue specifics live in
the adapters (paper.py, angelone.py).

A broker reports what happens to orders through the ``on_report`` callback it is built
with, on the event loop thread, as ``ExecutionReport``s (``final`` is left False: the
router decides when an intent is done). Calls raise typed errors from
``chimera_core.errors``: ``BrokerReject`` (refused, will not succeed as sent),
``RateLimited`` (try later), ``AuthError``, ``BrokerError`` (unknown outcome: reconcile
before retrying).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from chimera_core.contracts import (
    ExecKind,
    ExecutionReport,
    Fill,
    Order,
    OrderRequest,
    Position,
    Tick,
)

ReportSink = Callable[[ExecutionReport], None]


def report_for(
    order: OrderRequest,
    kind: ExecKind,
    *,
    filled_qty: int = 0,
    avg_price: float = 0.0,
    broker_order_id: str = "",
    fill: Fill | None = None,
    reason: str = "",
    exchange_ts_ms: int | None = None,
    at_ns: int = 0,
) -> ExecutionReport:
    """The report about ``order``; its identity fields come from the request, so no two
    places spell them out (``final`` stays False: the router decides)."""
    return ExecutionReport(
        kind=kind,
        client_order_id=order.client_order_id,
        intent_id=order.intent_id,
        token=order.token,
        side=order.side,
        order_qty=order.qty,
        filled_qty=filled_qty,
        avg_price=avg_price,
        purpose=order.purpose,
        broker_order_id=broker_order_id,
        fill=fill,
        reason=reason,
        exchange_ts_ms=order.exchange_ts_ms if exchange_ts_ms is None else exchange_ts_ms,
        at_ns=at_ns,
    )


class Broker(Protocol):
    name: str  # "paper" | "angelone"

    async def connect(self) -> None:
        """Log in / open the ledger, start the order-update stream."""

    async def close(self) -> None:
        """Stop streams and release resources; open orders stay as they are."""

    async def place(self, order: OrderRequest) -> str:
        """Send one order; return the broker's order id once accepted (an ACK report follows
        or has been emitted). Fills and rejects arrive later as reports."""

    async def cancel(self, client_order_id: str) -> None:
        """Cancel the open order (a CANCELLED report follows). Unknown/terminal: no-op."""

    async def order_book(self) -> list[Order]:
        """Today's orders as the broker sees them (for reconciliation)."""

    async def fills(self) -> list[Fill]:
        """Today's trades (trade book) as the broker sees them (for reconciliation)."""

    async def positions(self) -> list[Position]:
        """Net positions as the broker sees them (for reconciliation)."""

    def on_tick(self, tick: Tick) -> None:
        """Every accepted market tick, on the event loop (paper matches here; live: no-op)."""
