"""The shadow process: candidate genomes trading the primary's tick telemetry on paper.

Out of the hot path: it subscribes to the engine's telemetry (never the feed), and each
tick record's frame goes, at its recorded receive time, through one node per candidate
built by the composition root (``tools/node.py``) — the same node as live and the
backtester's event mode — on a simulated clock that follows the primary's receive times
(as ``chimera replay`` does), with its own paper broker and journal under
``data/shadow/<candidate>/paper/``.

Per candidate, everything it publishes (its session, reconciliation, tick records with its
decisions, execution reports, control events) is

- recorded in its own black box, ``data/shadow/<candidate>/blackbox/<session>/``, in the
  primary's format and topics, so ``chimera replay`` replays a candidate's session like
  the primary's;
- published on the shadow's own XPUB (``[shadow] endpoint``) as ``shadow.<candidate>.<topic>``,
  with ``shadow.<candidate>.divergence`` (one per frame it decided otherwise than the
  primary, and why) and ``shadow.<candidate>.status`` (the figures and the gates).

The primary's feed events and operator commands reach every candidate as they reached the
primary (a promotion's approval excepted), so a candidate equal to the active genome
decides exactly what the primary decided. The gates are judged every ``check_interval_s``
against the ``active`` candidate; one that passes is queued for promotion in the primary's
approval queue (``chimera approve prm-...`` activates it at the primary's next bar).

When the primary trades through a real broker, the ``active`` candidate is its paper twin:
the primary's execution reports and the twin's are paired order by order
(``tools/shadow/twin.py``) into ``data/shadow/active/twin.json`` and
``shadow.active.twin``, the data to calibrate the paper broker with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import structlog

from chimera_core.commands import Command
from chimera_core.config import Config
from chimera_core.contracts import (
    ControlEvent,
    Decision,
    ExecutionReport,
    FeedEvent,
    SessionInfo,
    TickRecord,
)
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.event_loop import session_info
from chimera_core.markets import calendar_for
from chimera_core.physics import warm_up_kernels
from chimera_core.telemetry import (
    SEP,
    SEQ,
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_RAW,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_TICK,
    TelemetryPublisher,
    TelemetrySubscriber,
    decoder_for,
    split,
)
from chimera_execution.journal_view import journal_path
from chimera_governance.approvals import DECIDED_BY_HUMAN, queue_promotion
from tools.backtest.event import SimClock, _RoundTrips
from tools.node import Parts, build_node, build_parts
from tools.record import Recorder, write_json_atomic
from tools.shadow.candidates import ACTIVE, Candidate, candidate_config, resolve
from tools.shadow.divergence import Divergence, compare
from tools.shadow.gates import GateVerdict, judge
from tools.shadow.twin import TOPIC_TWIN, TWIN_FILE, TwinBook, summary

log = structlog.get_logger(__name__)

TOPIC_DIVERGENCE = b"divergence"  # a candidate's own black box and shadow.<name>.divergence
TOPIC_STATUS = b"status"
STATUS_FILE = "status.json"
_SETTLE_ROUNDS = 10_000
# Commands of the primary's that are its own engine's events, not the operator's.
_NOT_FOLLOWED = frozenset({"status", "reduce", "reduce_clear"})

_decode_tick = decoder_for(TOPIC_TICK, TickRecord)
_decode_feed = decoder_for(TOPIC_FEED, FeedEvent)
_decode_control = decoder_for(TOPIC_CONTROL, ControlEvent)
_decode_session = decoder_for(TOPIC_SESSION, SessionInfo)
_decode_exec = decoder_for(TOPIC_EXEC, ExecutionReport)
_encode = msgspec.msgpack.Encoder().encode


class ShadowError(ChimeraError):
    """The shadow cannot run as asked."""


class Track(msgspec.Struct, kw_only=True):
    """What the gates judge a candidate on, kept across the primary's sessions and the
    shadow's restarts (``data/shadow/<candidate>/track.json``): its equity at each bar
    close, the trading days it saw, its closed trades before this session."""

    bar_ts: list[int] = msgspec.field(default_factory=list)
    equity: list[float] = msgspec.field(default_factory=list)
    days: list[str] = msgspec.field(default_factory=list)
    trades: int = 0
    pnl: float = 0.0
    violations: int = 0
    promotion: str = ""


TRACK_FILE = "track.json"


def load_track(path: Path) -> Track:
    """The saved track, or a new one when there is none; a damaged file is an error that
    names it (figures are never silently reset)."""
    if not path.is_file():
        return Track()
    try:
        return msgspec.json.decode(path.read_bytes(), type=Track)
    except (OSError, msgspec.DecodeError) as exc:
        raise ShadowError(
            f"{path} is unreadable ({exc}); move it aside to start this candidate's figures anew"
        ) from None


class CandidateNode:
    """One candidate: its node on a simulated clock, its black box and its figures."""

    def __init__(
        self,
        candidate: Candidate,
        cfg: Config,
        out: Callable[[bytes, bytes], None],
        now: Callable[[], float] = time.monotonic,
        track: Track | None = None,
    ) -> None:
        self.candidate = candidate
        self.name = candidate.name
        self.cfg = cfg
        self.dir = Path(cfg.data_dir)
        self._out = out  # (topic, message body) to the shadow's XPUB
        self._now = now
        self.recorder = Recorder(
            self.dir,
            cfg.recorder.segment_mb << 20,
            cfg.recorder.fsync_interval_s,
            cfg.recorder.neural_state_interval_s,
            now(),
        )
        self.clock = SimClock(0)
        self.parts: Parts | None = None
        self.node: Any = None
        self._seq = 0
        self.trips = _RoundTrips()
        self.ticks = 0
        self.decisions = 0
        self.divergences = 0
        self.last_divergence: Divergence | None = None
        self.fills = 0
        track = track if track is not None else load_track(self.dir / TRACK_FILE)
        self.equity: list[float] = list(track.equity)
        self.bar_ts: list[int] = list(track.bar_ts)
        self.days: set[str] = set(track.days)
        self.prior_trades, self.prior_pnl = track.trades, track.pnl
        self.violations = track.violations
        self._kill_switch = ""
        self.joined_late = False
        self.started_equity = cfg.execution.paper.starting_cash
        self.verdict: GateVerdict | None = None
        self.promotion: str = track.promotion
        self.session_id = ""
        self.on_exec: Callable[[ExecutionReport], None] | None = None  # the paper twin's

    # ---- publishing: black box + shadow XPUB ------------------------------------------
    def publish(self, topic: bytes, obj: Any) -> None:
        self._seq += 1
        message = b"".join((topic, SEP, SEQ.pack(self._seq), _encode(obj)))
        self.recorder.on_message(message, self._now())
        self._out(topic, message)
        if topic == TOPIC_EXEC:
            self._on_report(obj)

    def publish_tick(self, frame: bytes, recv_ns: int, decision: Decision | None) -> None:
        topic = TOPIC_RAW if decision is None else TOPIC_TICK + decision.token.encode()
        self.publish(topic, TickRecord(recv_ns, frame, decision))

    def _on_report(self, report: ExecutionReport) -> None:
        if self.on_exec is not None:
            self.on_exec(report)
        fill = report.fill
        if fill is None:
            return
        self.fills += 1
        self.trips.on_fill(
            report.token, fill.side, fill.qty, fill.price, fill.charges,
            fill.exchange_ts_ms, report.purpose.value,
        )  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self, primary: SessionInfo) -> None:
        """Build the node for the primary's session ``primary`` and publish our own."""
        cfg = self.cfg
        info = session_info(cfg)
        self.session_id = f"{primary.session_id}-{self.name}"
        self.publish(TOPIC_SESSION, msgspec.structs.replace(info, session_id=self.session_id))
        clock = self.clock
        self.parts = parts = build_parts(
            cfg, {}, clock=clock.ns, throttle_clock=clock.seconds, sleep=clock.sleep
        )
        self.node = build_node(
            cfg, parts, clock=clock.ns, publish=self.publish, publish_tick=self.publish_tick
        )
        recon = await self.node.connect()
        if recon is not None:
            self.publish(TOPIC_RECON, recon)
        self.node.restore_halts()
        log.info("shadow_candidate_started", candidate=self.name, session=self.session_id)

    async def close(self, reason: str = "stopped") -> None:
        if self.parts is None:
            return
        try:
            if self.parts.router is not None:
                await self.parts.router.stop(timeout_s=0.0)
        finally:
            self.parts.close()
            self.parts = None
            self.recorder.stop()
            log.info("shadow_candidate_stopped", candidate=self.name, reason=reason)

    async def settle(self) -> None:
        router = self.parts.router if self.parts is not None else None
        if router is None:
            return
        for _ in range(_SETTLE_ROUNDS):
            if router.tasks_in_flight <= self.clock.sleeping:
                return
            await asyncio.sleep(0)
        raise ShadowError(
            f"candidate {self.name}: the router still has {router.tasks_in_flight} broker "
            f"call(s) running after {_SETTLE_ROUNDS} event-loop turns"
        )

    # ---- the primary's messages ----------------------------------------------------------
    async def on_tick(self, rec: TickRecord) -> Divergence | None:
        recv_ns = rec.recv_ns
        self.clock.advance(recv_ns)
        await self.settle()  # throttled orders whose wait ran out go now
        if self.ticks == 0 and rec.decision is not None and rec.decision.seq > 1:
            self.joined_late = True
            log.warning("shadow_joined_late", candidate=self.name, first_seq=rec.decision.seq)
        mine = self.node.on_frame(rec.frame, recv_ns)
        await self.settle()
        self.ticks += 1
        if mine is not None:
            self.decisions += 1
            self._observe(mine)
        div = compare(self.name, rec.decision, mine)
        if div is not None:
            self.divergences += 1
            self.last_divergence = div
            self.publish(TOPIC_DIVERGENCE, div)
        return div

    def _observe(self, d: Decision) -> None:
        if not self.bar_ts or d.bar_start_ms > self.bar_ts[-1]:
            # A new bar began: the equity at the previous bar's close is what was held now.
            self.bar_ts.append(d.bar_start_ms)
            self.equity.append(self.node.engine.account_snapshot().equity)
            zone = calendar_for(self.cfg.markets, d.exchange_type).timezone
            day = datetime.fromtimestamp(d.exchange_ts_ms / 1000, ZoneInfo(zone)).date()
            self.days.add(day.isoformat())
        ks = d.meta_risk.kill_switch if d.meta_risk is not None else ""
        if ks and ks != self._kill_switch:
            self.violations += 1
        self._kill_switch = ks

    def on_feed(self, ev: FeedEvent) -> None:
        engine = self.node.engine
        engine.on_feed_state(ev.connected)
        self.publish(TOPIC_FEED, FeedEvent(ev.connected, engine.feed_epoch, self.clock.ns()))

    def on_control(self, ev: ControlEvent) -> None:
        if not ev.ok or ev.command in _NOT_FOLLOWED:
            return
        if ev.arg.startswith(DECIDED_BY_HUMAN) or ev.command == Command.ROLLBACK:
            self._follow_promotion(ev)
            return
        self.node.on_control(ev.command, ev.arg, ev.by)

    def _follow_promotion(self, ev: ControlEvent) -> None:
        """The primary approved a promotion: the active genome is now the promoted one, so
        the ``active`` candidate takes the same genes at the same point of the stream (its
        next bar close, as the primary) and goes on matching the primary. An operator's
        rollback in the primary is followed the same way; the other candidates keep theirs."""
        governance = self.node.governance
        if self.name != ACTIVE or governance is None:
            return
        if ev.command not in (Command.APPROVE, Command.ROLLBACK):
            return
        result = msgspec.json.decode(ev.result)
        params = result.get("params") if isinstance(result, dict) else None
        if not isinstance(params, dict):
            return
        family = str(result.get("family", "default"))
        governance.activate_genome(
            family, {k: float(v) for k, v in params.items()}, f"promotion:{ev.arg}"
        )
        self.candidate = Candidate(self.name, family, dict(params), self.candidate.source)
        self.publish(
            TOPIC_CONTROL,
            ControlEvent(ev.command, ev.arg, True, ev.result, self.clock.ns(), by=ev.by),
        )
        log.warning("shadow_active_promoted", proposal_id=ev.arg, family=family, params=params)

    @property
    def trades(self) -> int:
        return self.prior_trades + len(self.trips.trades)

    @property
    def pnl(self) -> float:
        return self.prior_pnl + sum(t.pnl for t in self.trips.trades)

    def track(self) -> Track:
        return Track(
            bar_ts=list(self.bar_ts), equity=list(self.equity), days=sorted(self.days),
            trades=self.trades, pnl=self.pnl, violations=self.violations,
            promotion=self.promotion,
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        v = self.verdict
        engine = self.node.engine if self.node is not None else None
        return {
            "candidate": self.name,
            "source": self.candidate.source,
            "family": self.candidate.family,
            "params": self.candidate.params,
            "session": self.session_id,
            "ticks": self.ticks,
            "decisions": self.decisions,
            "divergences": self.divergences,
            "last_divergence": msgspec.to_builtins(self.last_divergence),
            "fills": self.fills,
            "trades": self.trades,
            "pnl": round(self.pnl, 2),
            "equity": engine.account_snapshot().equity if engine is not None else None,
            "days": len(self.days),
            "violations": self.violations,
            "trading_state": engine.trading_state.value if engine is not None else None,
            "joined_late": self.joined_late,
            "gates": None if v is None else msgspec.to_builtins(v),
            "promotion": self.promotion,
        }


class Shadow:
    """Every candidate on the primary's telemetry (see the module docstring)."""

    def __init__(
        self,
        primary: Config,
        candidates: list[Candidate],
        shadow_dir: Path | None = None,
        publisher: TelemetryPublisher | None = None,
    ) -> None:
        self.primary = primary
        self.candidates = candidates
        self.dir = shadow_dir or Path(primary.data_dir) / "shadow"
        self.publisher = publisher
        self.nodes: list[CandidateNode] = []
        self.session: SessionInfo | None = None
        self.messages = 0
        self._prefixes = {c.name: b"shadow." + c.name.encode() + b"." for c in candidates}
        self._approvals = Path(primary.data_dir) / primary.mode / "approvals.db"
        self._last_ts_ms = 0
        # The paper twin: only when the primary trades through a real broker (on the paper
        # broker the active candidate IS the primary, and there is nothing to compare).
        self.twin: TwinBook | None = None
        self.twin_off = ""
        self._twin_cached: tuple[tuple[int, str], dict[str, Any]] | None = None
        self._twin_written: dict[str, Any] | None = None

    def _out_for(self, name: str) -> Callable[[bytes, bytes], None]:
        prefix = self._prefixes[name]
        publisher = self.publisher

        def out(topic: bytes, message: bytes) -> None:
            if publisher is not None:
                _, _, payload = split(message)
                publisher.publish(prefix + topic, msgspec.Raw(payload))

        return out

    async def on_message(self, message: bytes) -> None:
        try:
            topic, _, payload = split(message)
            self.messages += 1
            if topic == TOPIC_SESSION:
                await self._on_session(_decode_session(payload))
            elif not self.nodes:
                return  # before the primary's session message: nothing to run on
            elif topic == TOPIC_RAW or topic.startswith(TOPIC_TICK):
                rec = _decode_tick(payload)
                if rec.decision is not None:
                    self._last_ts_ms = max(self._last_ts_ms, rec.decision.exchange_ts_ms)
                    if self.twin is not None:
                        self.twin.on_decision(rec.decision)
                for n in self.nodes:
                    await n.on_tick(rec)
            elif topic == TOPIC_EXEC:
                if self.twin is not None:
                    self.twin.on_live(_decode_exec(payload))
            elif topic == TOPIC_FEED:
                ev = _decode_feed(payload)
                for n in self.nodes:
                    n.on_feed(ev)
            elif topic == TOPIC_CONTROL:
                cev = _decode_control(payload)
                for n in self.nodes:
                    n.on_control(cev)
                    await n.settle()
        except ProtocolError as exc:
            log.warning("shadow_bad_message", error=str(exc))

    async def _on_session(self, info: SessionInfo) -> None:
        """The primary (re)started: every candidate starts a session of its own beside it,
        on the primary's config as this session recorded it. The engine repeats its session
        message for late subscribers: the same session goes on."""
        if self.session is not None and info.session_id == self.session.session_id:
            return
        tracks = {n.name: n.track() for n in self.nodes}  # the figures go on
        await self.close("primary_restarted")
        try:
            primary = msgspec.json.decode(info.config_json, type=Config)
        except msgspec.ValidationError as exc:
            raise ShadowError(f"the primary's session config is not a Config: {exc}") from None
        self.session = info
        self.primary = primary
        # The active genome as the primary runs it now (a promotion may have changed it).
        self.candidates = [
            resolve(ACTIVE, primary) if c.name == ACTIVE else c for c in self.candidates
        ]
        self.nodes = []
        for c in self.candidates:
            node = CandidateNode(
                c, candidate_config(primary, c, self.dir), self._out_for(c.name),
                track=tracks.get(c.name),
            )  # fmt: skip
            await node.start(info)
            self.nodes.append(node)
        self._start_twin(primary)
        log.info(
            "shadow_session", primary=info.session_id, candidates=[c.name for c in self.candidates]
        )

    def _start_twin(self, primary: Config) -> None:
        active = next((n for n in self.nodes if n.name == ACTIVE), None)
        ex = primary.execution
        if active is None:
            self.twin, self.twin_off = None, "no active candidate in the shadow"
        elif not ex.enabled or ex.broker == "paper":
            self.twin = None
            self.twin_off = (
                "the primary trades on the paper broker itself: the active candidate is the "
                "primary, there is no real fill to compare"
                if ex.enabled else "the primary's execution is off"
            )  # fmt: skip
        else:
            if self.twin is None:
                self.twin = TwinBook()
            self.twin.seed(journal_path(primary.data_dir, primary.mode),
                           journal_path(active.cfg.data_dir, active.cfg.mode))  # fmt: skip
            active.on_exec = self.twin.on_paper
            self.twin_off = ""
            log.info("shadow_twin_started", broker=ex.broker, mode=primary.mode)

    def _twin_summary(self) -> dict[str, Any] | None:
        """The twin's figures, recomputed only when a report or an intent came in since."""
        if self.twin is None:
            return None
        key = (self.twin.changes, self.session.session_id if self.session else "")
        if self._twin_cached is not None and self._twin_cached[0] == key:
            return self._twin_cached[1]
        ex = self.primary.execution
        made = summary(self.twin.rows(), mode=self.primary.mode, broker=ex.broker,
                       session=key[1])  # fmt: skip
        self._twin_cached = (key, made)
        return made

    def _write_twin(self, active: CandidateNode, twin: dict[str, Any] | None) -> None:
        if twin is None or twin is self._twin_written:
            return  # nothing new since the last write
        self._twin_written = twin
        write_json_atomic(active.dir / TWIN_FILE, twin)
        if self.publisher is not None:
            self.publisher.publish(self._prefixes[active.name] + TOPIC_TWIN, twin)

    def check(self, now: float) -> None:
        """Judge the gates, write each candidate's status, queue the ones that pass."""
        active = next((n for n in self.nodes if n.name == ACTIVE), None)
        gates = self.primary.shadow.gates
        twin = self._twin_summary()
        for n in self.nodes:
            n.recorder.on_timer(now)
            if active is not None and n is not active:
                mine, theirs = paired(n, active)
                n.verdict = judge(
                    gates, mine, theirs, n.started_equity, n.trades, len(n.days), n.violations,
                    twin,
                )  # fmt: skip
                if n.verdict.passed and not n.promotion:
                    n.promotion, queued = queue_promotion(
                        self._approvals, n.name, n.candidate.family, n.candidate.params,
                        n.verdict.summary(), self._last_ts_ms,
                    )  # fmt: skip
                    if queued:
                        log.warning(
                            "shadow_promotion_queued", candidate=n.name, proposal_id=n.promotion,
                            hint=f"chimera approve {n.promotion}",
                        )  # fmt: skip
            status = n.status()
            if n is active:
                status["twin"] = self.twin is not None
                status["twin_off"] = self.twin_off
                self._write_twin(n, twin)
            write_json_atomic(n.dir / STATUS_FILE, status)
            write_json_atomic(n.dir / TRACK_FILE, msgspec.to_builtins(n.track()))
            if self.publisher is not None:
                self.publisher.publish(self._prefixes[n.name] + TOPIC_STATUS, status)

    async def close(self, reason: str = "stopped") -> None:
        for n in self.nodes:
            await n.close(reason)


def paired(n: CandidateNode, active: CandidateNode) -> tuple[list[float], list[float]]:
    """The two equity curves at the bar closes both saw (a candidate added later, or one
    whose history was moved aside, is judged on what they share)."""
    theirs = dict(zip(active.bar_ts, active.equity, strict=True))
    pairs = [(e, theirs[t]) for t, e in zip(n.bar_ts, n.equity, strict=True) if t in theirs]
    return [p[0] for p in pairs], [p[1] for p in pairs]


async def run(
    shadow: Shadow,
    endpoint: str,
    stop: asyncio.Event,
    check_interval_s: float,
) -> None:
    """Receive the primary's telemetry until ``stop``; then close every candidate cleanly."""
    # Subscribe first (ZeroMQ queues what comes meanwhile; it re-dials an engine that is
    # not up yet every 100 ms), then compile the kernels.
    sub = TelemetrySubscriber(endpoint)
    warm_up_kernels()
    log.info("shadow_subscribed", endpoint=endpoint, candidates=[c.name for c in shadow.candidates])
    recv = sub.recv
    next_check = time.monotonic() + check_interval_s
    try:
        while not stop.is_set():
            got = 0
            while got < 2_000:
                message = recv(0)
                if message is None:
                    break
                await shadow.on_message(message)
                got += 1
            now = time.monotonic()  # side-process timers only, never the candidates' logic
            if now >= next_check:
                shadow.check(now)
                next_check = now + check_interval_s
            if not got:
                await asyncio.sleep(0.002)
        while (message := recv(0)) is not None:  # what already arrived
            await shadow.on_message(message)
        shadow.check(time.monotonic())
    finally:
        sub.close()
        await shadow.close()
        log.info("shadow_stopped", messages=shadow.messages, gaps=sub.gaps, missed=sub.missed)
