"""One trading node: the engine, its router (broker, journal) and telemetry, wired frame by
frame. The one place the order of a frame's work is written, shared by ``chimera live``,
the backtester's event mode and the tests, so what was tested is what trades.

Per accepted frame, in this order:

1. a simulated exchange (the paper broker) matches on the tick (``Engine.on_market`` →
   ``Router.on_market``); the reports it triggers reach the engine first;
2. the engine steps (``Engine.on_frame``) and its decision is published;
3. the deferred per-bar governance work runs (``Engine.after_publish``);
4. an intent goes to the router, then the router works the tick (slices, brackets,
   square-off);
5. the engine's queued commands (cancels, flattens, exits) go to the router.

A report from the broker (step 1, or later from the network) is applied by the engine,
published, and any command it queued (a kill switch) goes to the router at once.

One position book: the engine's. The engine books every fill (with the signal it entered
on), here and in a replay that has no router; the router reads the same book for its
brackets, exits and square-off and books nothing itself. The router hands a report to the
engine before it acts on the position the report moved, so both see one position.

This module imports nothing above ``chimera_core``: governance and the router come in
through their protocols (``chimera_core.governance``, ``chimera_core.execution``); the
composition root (``tools/node.py``) builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson
import structlog

from chimera_core.commands import Command
from chimera_core.contracts import (
    ControlEvent,
    Decision,
    ExecutionReport,
    Reconciliation,
    Transition,
)
from chimera_core.event_loop import DecisionSink, Engine
from chimera_core.execution import Router
from chimera_core.governance import Governance
from chimera_core.telemetry import TOPIC_CONTROL, TOPIC_EXEC

log = structlog.get_logger(__name__)

Publish = Callable[[bytes, Any], object]
PublishTick = Callable[[bytes, int, Decision | None], object]


class MakeNode(Protocol):
    """What ``chimera_core.live.run_live`` is given to build its node once the telemetry
    publisher exists: the composition root's ``build_node`` with its configuration and
    parts bound (``functools.partial(tools.node.build_node, cfg, parts)``)."""

    def __call__(
        self, *, sinks: list[DecisionSink], publish: Publish, publish_tick: PublishTick
    ) -> Node: ...


def _no_publish(topic: bytes, obj: Any) -> None:
    return None


def _no_tick(frame: bytes, recv_ns: int, decision: Decision | None) -> None:
    return None


class Node:
    """Engine + router + telemetry, frame by frame (see the module docstring).

    ``publish``/``publish_tick`` are the telemetry publisher's ``publish``/``tick`` (live,
    shadow) or nothing (a backtest). ``on_control`` applies an operator command and
    publishes it as a control event, so replay applies it where live did.
    """

    def __init__(
        self,
        engine: Engine,
        router: Router | None = None,
        governance: Governance | None = None,
        publish: Publish | None = None,
        publish_tick: PublishTick | None = None,
        on_journal_failure: str = "exits_only",
        on_transitions: Callable[[ExecutionReport, tuple[Transition, ...]], object] | None = None,
    ) -> None:
        self.engine = engine
        self.router = router
        self.governance = governance
        self.publish = publish or _no_publish
        # State-machine moves a report caused (FILLED, REJECTED, a kill switch): they ride on
        # the report, not on a decision; a backtest or a test may want them.
        self.on_transitions = on_transitions
        self.journal_error: list[str] = []
        self._journal_policy = on_journal_failure
        self.on_frame = self._build_on_frame(publish_tick or _no_tick)
        if router is not None:
            engine.reconciled = False  # no entries before the broker has been reconciled
            router.use_positions(engine.positions)  # one book: the engine books the fills
            router.sink = self.on_report
            engine.on_market = router.on_market  # a paper exchange fills before the step
            router.on_journal_failure = self._on_journal_failure

    def _build_on_frame(self, publish_tick: PublishTick) -> Callable[[bytes, int], Decision | None]:
        engine, router = self.engine, self.router
        on_frame_engine, after_publish, actions = (
            engine.on_frame,
            engine.after_publish,
            engine.actions,
        )
        if router is None:

            def on_frame_unrouted(frame: bytes, recv_ns: int) -> Decision | None:
                decision = on_frame_engine(frame, recv_ns)
                publish_tick(frame, recv_ns, decision)
                after_publish()
                if actions:
                    actions.clear()  # no router to take them (a replay has its answers)
                return decision

            return on_frame_unrouted
        submit, route_tick, apply_actions = router.submit, router.on_tick, router.apply

        def on_frame_routed(frame: bytes, recv_ns: int) -> Decision | None:
            decision = on_frame_engine(frame, recv_ns)
            publish_tick(frame, recv_ns, decision)
            after_publish()
            if decision is not None:
                if decision.intent is not None:
                    submit(decision.intent, decision.physics.atr)
                route_tick(engine.last_tick, decision.physics.atr)  # type: ignore[arg-type]
            if actions:
                apply_actions(actions)
            return decision

        return on_frame_routed

    def on_report(self, report: ExecutionReport) -> None:
        engine = self.engine
        moved = engine.on_report(report)
        if moved and self.on_transitions is not None:
            self.on_transitions(report, moved)
        self.publish(TOPIC_EXEC, report)
        self._hand_over_actions()

    def on_control(self, command: str, arg: str, by: str = "") -> tuple[bool, dict[str, Any]]:
        """Apply a command (from ``by``: who asked, "" for the engine's own) and record it."""
        engine = self.engine
        ok, result = engine.control(command, arg, by)
        self._hand_over_actions()  # kill switch: the cancels leave now
        if command != "status":
            self.publish(
                TOPIC_CONTROL,
                ControlEvent(
                    command, arg, ok, orjson.dumps(result).decode(), engine.clock(), by=by
                ),
            )
            log.warning("control_applied", command=command, arg=arg, by=by, ok=ok)
        return ok, result

    def _hand_over_actions(self) -> None:
        """The engine's queued commands go to the router; a node without one (a replay,
        whose router answers are in the recording) drops them, so none piles up."""
        actions = self.engine.actions
        if not actions:
            return
        if self.router is not None:
            self.router.apply(actions)
        else:
            actions.clear()

    def _on_journal_failure(self, error: str) -> None:
        # Nothing new that cannot be recorded: exits only (or a halt that cancels), as a
        # recorded command so replay reduces where live did.
        self.journal_error[:] = [error]
        if self._journal_policy == "halt":
            self.on_control(Command.HALT, f"journal_write_failed: {error}")
        elif "journal_write_failed" not in self.engine.exits_only:
            self.on_control("reduce", f"journal_write_failed: {error}")

    async def connect(
        self, follow_feed_headers: Callable[[dict[str, str]], None] | None = None
    ) -> Reconciliation | None:
        """Connect the broker and reconcile; the engine takes the result (entries only if it
        found nothing it could not make agree). ``None`` without a router.
        ``follow_feed_headers`` gets the broker session's market-data headers (live)."""
        router = self.router
        if router is None:
            return None
        await router.connect()
        if follow_feed_headers is not None:
            router.follow_feed_headers(follow_feed_headers)
        recon = await router.reconcile()
        self.engine.on_reconciled(recon)
        return recon

    def restore_halts(self) -> None:
        """Kill switches that outlive a restart, applied as recorded control commands so a
        replay starts where live did: the operator's, a drawdown halt (until reset), and
        today's daily-loss switch (exits only until the next session)."""
        router, governance = self.router, self.governance
        if router is not None and router.persisted_halt():
            self.on_control(Command.HALT, "kill_switch_persisted:" + router.persisted_halt())
        if governance is not None and governance.kill_switch == "max_drawdown":
            self.on_control("halt", "meta_risk_persisted:max_drawdown")
        elif governance is not None and governance.kill_switch in ("daily_loss", "order_rate"):
            self.on_control("reduce", "meta_risk:" + governance.kill_switch)
