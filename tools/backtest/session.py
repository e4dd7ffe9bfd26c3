"""Event mode on tick data: a recorded black-box session (or a tick file) through a fresh
node — the same composition as live, its own paper broker and journal, on a simulated
clock — instead of replaying the recorded execution reports as ``chimera replay`` does.

For a session the node runs on the session's own configuration, receives each frame at its
recorded receive time, and takes the recorded feed events and operator commands where they
happened; its fills are its own. Every decision is compared with the recorded one
(``decided_ns``, a wall-clock stamp, and ``execution``, whose working-order count moves with
when the live event loop delivered each report, are left out): a paper session recorded by
``chimera live`` comes out the same, which is what shows the backtester runs the live logic.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.config import Config
from chimera_core.contracts import ControlEvent, Decision, ExecutionReport, FeedEvent, TickRecord
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.feed.smartapi_v2 import decode
from chimera_core.strategy import StrategyFactory, default_factory
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_RAW,
    Message,
    check_session,
    decoder_for,
)
from tools.backtest.event import SimNode, Trade, _RoundTrips
from tools.replay import REPLAYED_COMMANDS

log = structlog.get_logger(__name__)

_tick = decoder_for(TOPIC_RAW, TickRecord)
_feed = decoder_for(TOPIC_FEED, FeedEvent)
_control = decoder_for(TOPIC_CONTROL, ControlEvent)
_encode = msgspec.msgpack.encode


def comparable(d: Decision) -> bytes:
    """A decision without the fields that depend on wall time or on when the live event
    loop happened to deliver a report (see the module docstring)."""
    return _encode(msgspec.structs.replace(d, decided_ns=0, execution=None))


@dataclass
class SessionRun:
    """What a recorded session did when run through a fresh node."""

    session: str
    ticks: int = 0
    decisions: int = 0
    compared: int = 0
    identical: int = 0
    first_divergence: dict[str, Any] | None = None
    control_applied: int = 0
    recorded_fills: int = 0
    fills: list[dict[str, Any]] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    final_equity: float = 0.0
    final_state: str = ""

    @property
    def reproduced(self) -> bool:
        return self.compared > 0 and self.identical == self.compared


async def run_session(
    session_dir: Path,
    work_dir: Path | None = None,
    strategy: StrategyFactory = default_factory,
    progress: Callable[[int], None] | None = None,
) -> SessionRun:
    """Run a black-box session's frames through a fresh paper node (module docstring)."""
    from tools.replay import ReplayError, _load_config, _read_manifest

    session_dir = Path(session_dir)
    check = check_session(session_dir, keep_messages=True)
    if not check.messages:
        raise ChimeraError(f"{session_dir}: no readable black-box records ({check.errors})")
    try:
        cfg, session_id = _load_config(_read_manifest(session_dir), check.messages, session_dir)
    except ReplayError as exc:
        raise ChimeraError(str(exc)) from None
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="chimera-backtest-session-")
        work_dir = Path(tmp.name)
    try:
        return await _run(cfg, session_id, check.messages, Path(work_dir), strategy, progress)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _node_config(cfg: Config, work_dir: Path) -> Config:
    """The session's configuration on a throwaway state directory, paper, no telemetry."""
    execution = msgspec.structs.replace(cfg.execution, enabled=True, broker="paper",
                                        journal_sync="NORMAL")  # fmt: skip
    telemetry = msgspec.structs.replace(cfg.telemetry, wait_for_subscriber_s=0.0)
    return msgspec.structs.replace(cfg, mode="paper", data_dir=str(work_dir),
                                   execution=execution, telemetry=telemetry)  # fmt: skip


async def _run(cfg: Config, session_id: str, messages: Iterable[Message], work_dir: Path,
               strategy: StrategyFactory,
               progress: Callable[[int], None] | None) -> SessionRun:  # fmt: skip
    node_cfg = _node_config(cfg, work_dir)
    run = SessionRun(session_id)
    trips = _RoundTrips()

    def published(topic: bytes, obj: Any) -> None:
        if topic == TOPIC_EXEC and obj.fill is not None:
            report: ExecutionReport = obj
            f = report.fill
            assert f is not None  # checked above
            run.fills.append({"ts_ms": f.exchange_ts_ms, "token": f.token, "side": f.side.value,
                              "qty": f.qty, "price": f.price, "charges": f.charges,
                              "purpose": report.purpose.value})  # fmt: skip
            trips.on_fill(f.token, f.side, f.qty, f.price, f.charges, f.exchange_ts_ms,
                          report.purpose.value)  # fmt: skip

    sim = SimNode(node_cfg, 0, strategy, publish=published)
    engine = sim.engine
    try:
        await sim.start()
        last_ts = 0
        for message in messages:
            topic, payload = message.topic, message.payload
            if message.carries_frame:
                try:
                    rec = _tick(payload)
                except ProtocolError:
                    continue
                try:  # the clock follows the exchange; a corrupt frame does not move it
                    last_ts = max(last_ts, decode(rec.frame, 0).exchange_ts_ms)
                except ProtocolError:
                    pass
                d = await sim.frame(rec.frame, last_ts, rec.recv_ns)
                run.ticks += 1
                if progress is not None and run.ticks % 1000 == 0:
                    progress(run.ticks)
                recorded = rec.decision
                if d is not None:
                    run.decisions += 1
                run.compared += 1
                if (d is None and recorded is None) or (
                    d is not None and recorded is not None and comparable(d) == comparable(recorded)
                ):
                    run.identical += 1
                elif run.first_divergence is None:
                    run.first_divergence = {
                        "tick": run.ticks,
                        "recorded": msgspec.to_builtins(recorded),
                        "got": msgspec.to_builtins(d),
                    }
            elif topic == TOPIC_FEED:
                try:
                    engine.on_feed_state(_feed(payload).connected)
                except ProtocolError:
                    continue
            elif topic == TOPIC_CONTROL:
                try:
                    ev = _control(payload)
                except ProtocolError:
                    continue
                if ev.ok and ev.command in REPLAYED_COMMANDS:  # as replay re-applies them
                    sim.node.on_control(ev.command, ev.arg, ev.by)
                    await sim.settle()
                    run.control_applied += 1
            elif topic == TOPIC_EXEC:
                run.recorded_fills += _has_fill(payload)
        snapshot = engine.account_snapshot()
        for token, pos in list(trips.open.items()):
            mark = engine.symbols[token].physics.last_price if token in engine.symbols else None
            trips.close_open(token, float(mark) if mark is not None else pos.avg, last_ts)
        run.trades = trips.trades
        run.final_equity = snapshot.equity
        run.final_state = engine.trading_state.value
    finally:
        await sim.close()
    return run


async def run_tick_file(
    cfg: Config,
    path: Path,
    work_dir: Path | None = None,
    strategy: StrategyFactory = default_factory,
) -> SessionRun:
    """A tick file's frames (``chimera sim --record-sent``, or converted history) through a
    fresh paper node on ``cfg``, at their recorded receive times; nothing to compare."""
    from tools.backtest.data import load_ticks

    source = load_ticks(path)
    messages = (
        Message(TOPIC_RAW, i, _encode(TickRecord(recv_ns, frame, None)))
        for i, (frame, recv_ns) in enumerate(source, start=1)
    )
    tmp = None
    if work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="chimera-backtest-ticks-")
        work_dir = Path(tmp.name)
    try:
        run = await _run(cfg, f"{Path(path).name} {source.sha256}", messages,
                         Path(work_dir), strategy, None)  # fmt: skip
    finally:
        if tmp is not None:
            tmp.cleanup()
    run.compared = run.identical = 0  # no recorded decisions to compare with
    run.first_divergence = None
    return run


_report = decoder_for(TOPIC_EXEC, ExecutionReport)


def _has_fill(payload: bytes) -> bool:
    try:
        return _report(payload).fill is not None
    except ProtocolError:
        return False
