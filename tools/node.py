"""The composition root: the one place a trading node is assembled — governance, the
router with its broker and journal, the engine, and the frame-by-frame wiring
(``chimera_core.node.Node``) — for ``chimera live``, the backtester's event mode and
(later) shadow candidates. What differs between them is only what is passed in: the
configuration, the clocks (the loop's, or a simulated one) and where telemetry goes.

It lives above ``chimera_core`` because it imports governance and execution, which the
core must not.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimera_core.config import Config
from chimera_core.errors import ChimeraError
from chimera_core.event_loop import DecisionSink, Engine
from chimera_core.node import Node, Publish, PublishTick
from chimera_core.strategy import StrategyFactory, default_factory

if TYPE_CHECKING:
    from chimera_core.contracts import ExecutionReport, Transition
    from chimera_core.instruments import Instrument
    from chimera_execution.router import OrderRouter
    from chimera_governance.pipeline import GovernancePipeline


@dataclass
class Parts:
    """What a node is built from besides the engine; ``close()`` releases their files."""

    governance: GovernancePipeline | None
    router: OrderRouter | None

    def close(self) -> None:
        if self.router is not None:
            self.router.journal.close()
        if self.governance is not None:
            self.governance.close()


def build_parts(
    cfg: Config,
    env: dict[str, str],
    instruments: Sequence[Instrument] = (),
    clock: Callable[[], int] = time.monotonic_ns,
    throttle_clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    state_dir: Path | None = None,
    with_router: bool = True,
) -> Parts:
    """Governance (its state under ``state_dir``, default ``data_dir/<mode>``: paper and live
    never share it) and the router with the configured broker and this mode's journal.
    ``with_router=False`` leaves the router out whatever the config says (replay: what the
    router did is in the recording). On any failure what was opened is closed again and
    the error names the state."""
    governance = None
    router = None
    state_dir = state_dir or Path(cfg.data_dir) / cfg.mode
    try:
        if cfg.governance.enabled:
            from chimera_governance.pipeline import GovernancePipeline

            governance = GovernancePipeline(cfg, state_dir)
        if with_router and cfg.execution.enabled:
            from chimera_execution.router import build_router

            router = build_router(
                cfg, env, instruments, clock=clock, throttle_clock=throttle_clock, sleep=sleep
            )
    except BaseException as exc:
        if governance is not None:
            governance.close()
        if isinstance(exc, (sqlite3.Error, OSError)):
            # A store that does not name its file itself: one clean message, no traceback.
            raise ChimeraError(
                f"cannot open the state under {state_dir}: {exc}; `chimera doctor` names the "
                "damaged or unreadable file (docs/RUNBOOK.md, 'After a crash')"
            ) from exc
        raise
    return Parts(governance, router)


def build_node(
    cfg: Config,
    parts: Parts,
    clock: Callable[[], int] = time.monotonic_ns,
    sinks: list[DecisionSink] | None = None,
    publish: Publish | None = None,
    publish_tick: PublishTick | None = None,
    on_transitions: Callable[[ExecutionReport, tuple[Transition, ...]], object] | None = None,
    strategy: StrategyFactory = default_factory,
) -> Node:
    """The engine on ``parts``, wired frame by frame (``chimera_core.node``), running
    ``strategy`` (the default econophysics one unless a plug-in is named)."""
    engine = Engine(cfg, clock=clock, sinks=sinks, governance=parts.governance, strategy=strategy)
    return Node(
        engine,
        parts.router,
        parts.governance,
        publish=publish,
        publish_tick=publish_tick,
        on_journal_failure=cfg.execution.on_journal_failure,
        on_transitions=on_transitions,
    )
