"""What the hot path's wiring asks of the execution layer. The router lives in
chimera_execution; run_live only knows this protocol, so chimera_core depends on nothing of
ours (as with governance)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from chimera_core.contracts import (
    ExecutionReport,
    OrderIntent,
    Reconciliation,
    RouterCommand,
    Tick,
)
from chimera_core.position_book import PositionBook


class Router(Protocol):
    sink: Callable[[ExecutionReport], None]  # where journaled reports go (the engine)
    # Told (with the error text) when a journal write fails: the wiring moves the engine to
    # exits only or halts it. The router keeps working in memory meanwhile.
    on_journal_failure: Callable[[str], None]

    def use_positions(self, book: PositionBook) -> None:
        """Read positions from ``book`` (the engine's, which books every fill); the router
        books none itself."""

    async def connect(self) -> None:
        """Open the broker session (login, order-update stream)."""

    def persisted_halt(self) -> str:
        """An operator kill switch still in force from an earlier run ("" if none)."""

    def follow_feed_headers(self, apply: Callable[[dict[str, str]], None]) -> None:
        """After connect: hand the broker session's market-data headers to ``apply`` now and
        after every re-login (Angel One's login issues the feed token and JWT); a broker
        without a session (paper) never calls it."""

    async def reconcile(self) -> Reconciliation:
        """Make the journal agree with the broker; trading waits for this."""

    def submit(self, intent: OrderIntent, atr: float) -> None:
        """An intent left the state machine (after its decision was published)."""

    def on_market(self, tick: Tick) -> None:
        """An accepted tick before the engine steps on it: a simulated exchange matches on
        it, so its reports arrive before the step (bar data: before the intent times out)."""

    def on_tick(self, tick: Tick, atr: float = ...) -> None:
        """Every accepted tick, after its decision was published (``atr``: the symbol's ATR
        then, for a restored position that needs a bracket)."""

    def apply(self, actions: list[RouterCommand]) -> None:
        """Carry out (and clear) the engine's queued actions: cancel, cancel_all, flatten,
        flatten_token, resume."""

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Cancel open orders when configured, wait for the answers, close the broker."""
