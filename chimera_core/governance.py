"""What the hot path asks of governance. The layers live in chimera_governance; the engine
only knows this protocol, so chimera_core depends on nothing of ours."""

from __future__ import annotations

from typing import Protocol

import msgspec

from chimera_core.contracts import (
    AccountSnapshot,
    ApprovalOutput,
    Bar,
    CapitalOutput,
    DriftOutput,
    GenomeOutput,
    MetaRiskOutput,
    OrderIntent,
    PhysicsState,
)


class GateVerdict(msgspec.Struct, frozen=True, gc=False):
    """Governance's answer for an intent about to fire."""

    allowed: bool
    qty: int  # the size to trade (capital brain), 0 if it cannot be sized
    reason: str  # why not, when not allowed ("" when allowed)
    # non-empty: a kill switch is in force ("meta_risk:<rule>"): daily_loss → REDUCING for
    # the session, max_drawdown → HALT until an operator resets it
    halt_reason: str
    meta_risk: MetaRiskOutput | None
    approval: ApprovalOutput | None


class Governance(Protocol):
    def on_bar(self, token: str, bar: Bar, physics: PhysicsState, equity: float) -> None:
        """A bar closed: refresh the per-bar layers (drift, capital) at the account's
        ``equity``."""

    def layers(
        self, token: str
    ) -> tuple[DriftOutput | None, CapitalOutput | None, GenomeOutput | None]:
        """The latest per-bar outputs for ``token`` (cheap: read on every tick)."""

    def weigh(self, token: str, confidence: float) -> tuple[float, dict[str, float]]:
        """The decision's confidence after the layers, and each layer's influence weight."""

    def gate(
        self,
        intent: OrderIntent,
        physics: PhysicsState,
        confidence: float,
        spread_pct: float,
        feed_stale: bool,
        account: AccountSnapshot,
    ) -> GateVerdict:
        """Size the intent inside the exposure caps and decide whether it may go (meta-risk,
        then approvals), judged on the account as it is now."""

    def observe(self, equity: float, exchange_ts_ms: int) -> str:
        """The account's equity now (per closed bar, per closed trade): returns the kill
        switch in force ("", "daily_loss", "max_drawdown")."""

    @property
    def kill_switch(self) -> str:
        """The kill switch in force ("", "daily_loss", "max_drawdown")."""

    def on_trade_closed(
        self, token: str, pnl: float, exchange_ts_ms: int, features: dict[str, float]
    ) -> None:
        """A round trip closed (net P&L after charges): meta-risk and the genome learn."""

    @property
    def halted(self) -> bool:
        """A persisted kill switch is in force (the engine starts halted)."""

    def snapshot(self) -> dict[str, bytes]:
        """Images of governance's stores now (file name → SQLite image), recorded at a
        session's start so replay starts from the same state."""

    def control(
        self, command: str, arg: str, by: str = ""
    ) -> tuple[bool, dict[str, object]] | None:
        """Handle approve/reject (and other governance commands; ``by`` is who asked and is
        recorded on a decision); None if not ours."""
