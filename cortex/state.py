"""What the cortex knows: bounded, per-symbol state folded from the engine's telemetry.

``CortexState.handle(message, now_ns)`` folds one raw telemetry message (``topic NUL seq
payload``) into deques and small dicts; the Streamlit pages read copies taken under the
lock with ``snapshot()``. Nothing here grows without bound, so a cortex left open for a
day holds the same memory as one opened a minute ago.

Lag: every tick record carries the engine's ``recv_ns`` (``time.monotonic_ns()``, which
on Linux is one system-wide clock, so it is comparable across processes on one box).
``now - recv_ns`` when the cortex folds a message is how far behind the engine it is.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from chimera_core.commands import Command
from chimera_core.contracts import (
    ControlEvent,
    Decision,
    ExecutionReport,
    FeedEvent,
    Health,
    Reconciliation,
    SessionInfo,
)
from chimera_core.errors import ProtocolError
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_RAW,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_TICK,
    TickView,
    TopicDecoder,
    parse,
)
from cortex.names import label

# The decision hierarchy, top to bottom, as the neural map draws it.
LAYERS: tuple[str, ...] = (
    "physics",
    "drift",
    "capital",
    "meta_risk",
    "genome",
    "state",
    "execution",
)

TICKS_PER_SYMBOL = 2_000
BARS_PER_SYMBOL = 400
MARKERS_PER_SYMBOL = 400
NOTABLE_DECISIONS = 300
RECENT_DECISIONS = 50
LATENCY_SAMPLES = 20_000
TIMELINE = 1_000
EVENTS = 500
LAG_SAMPLES = 2_000
LATENCY_BOUNDS_NS: tuple[int, ...] = (
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
)


# Tick records decoded with the raw frame skipped (never copied into bytes).
_decoder = TopicDecoder({TOPIC_TICK: TickView, TOPIC_RAW: TickView})


@dataclass
class BarPoint:
    """One bar as the market page draws it: OHLC from the live close, last physics."""

    start_ms: int
    open: float
    high: float
    low: float
    close: float
    energy: float
    z: float
    band_mean: float
    band_std: float


@dataclass
class Marker:
    """An entry, exit or veto on the price chart."""

    ts_ms: int
    price: float
    kind: str  # ENTRY | EXIT | VETO | APPROVAL | HALT
    label: str


@dataclass
class SymbolState:
    token: str
    latest: Decision | None = None
    last_signal: Decision | None = None  # the latest decision with a signal (direction != 0)
    ticks: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=TICKS_PER_SYMBOL))
    bars: deque[BarPoint] = field(default_factory=lambda: deque(maxlen=BARS_PER_SYMBOL))
    markers: deque[Marker] = field(default_factory=lambda: deque(maxlen=MARKERS_PER_SYMBOL))
    regimes: deque[tuple[int, str]] = field(default_factory=lambda: deque(maxlen=TIMELINE))
    leverage: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=TIMELINE))
    decisions: int = 0
    last_position_qty: int = 0


@dataclass
class ApprovalSeen:
    """A pending (or decided) approval as the decisions reported it."""

    approval_id: str
    token: str
    status: str
    reason: str
    ts_ms: int
    seq: int
    side: str
    qty: int
    price: float
    confidence: float


def health_alerts(
    h: Health | None, min_free_disk_mb: float = 0.0, names: dict[str, str] | None = None
) -> list[str]:
    """The red banners the engine's health calls for; [] when it is healthy (or unknown).
    Tokens are named as ``cortex.names.label`` does when ``names`` knows them."""
    if h is None:
        return []
    alerts = []
    if h.exits_only:
        alerts.append(f"EXITS ONLY: {h.exits_only_reason or 'no reason given'}")
    if h.journal_error:
        alerts.append(f"JOURNAL WRITE FAILED: {h.journal_error}")
    if h.unprotected:
        alerts.append(
            "UNPROTECTED POSITIONS (feed dark, stop and target not watched): "
            + ", ".join(label(t, names or {}) for t in h.unprotected)
        )
    if 0 <= h.disk_free_mb < min_free_disk_mb:
        alerts.append(f"DISK LOW: {disk_free_text(h)} (warning below {min_free_disk_mb:g} MB)")
    return alerts


def disk_free_text(h: Health | None) -> str:
    """Free space under data_dir as the engine measured it, or "" when it did not."""
    if h is None or h.disk_free_mb < 0:
        return ""
    if h.disk_free_mb >= 10_240:
        return f"disk free {h.disk_free_mb / 1024:,.1f} GB"
    return f"disk free {h.disk_free_mb:,.0f} MB"


@dataclass
class Snapshot:
    """A consistent copy of the state for one page render."""

    session: SessionInfo | None
    health: Health | None
    health_local_ns: int
    symbols: dict[str, SymbolState]
    notable: list[Decision]
    recent: list[Decision]
    vetoes: list[dict[str, Any]]
    approvals: dict[str, ApprovalSeen]
    controls: list[ControlEvent]
    feed_events: list[FeedEvent]
    exec_reports: list[ExecutionReport]
    orders: dict[str, ExecutionReport]
    recon: Reconciliation | None
    latency_ns: list[int]
    latency_buckets: list[int]
    counters: dict[str, int]
    lag: dict[str, float]
    health_history: list[tuple[int, int, int]]


class CortexState:
    """Telemetry folded into bounded state; ``handle`` runs on the subscriber thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._reset_session()
        self.messages = 0
        self.decode_errors = 0
        self.gaps = 0
        self.missed = 0
        self.last_seq = 0
        self.publisher_restarts = 0
        self.lag_ns: deque[tuple[int, int]] = deque(maxlen=LAG_SAMPLES)  # (local ns, lag ns)
        self.max_lag_ns = 0
        self.last_lag_ns = 0

    def _reset_session(self) -> None:
        self.session: SessionInfo | None = None
        self.health: Health | None = None
        self.health_local_ns = 0
        self.symbols: dict[str, SymbolState] = {}
        self.notable: deque[Decision] = deque(maxlen=NOTABLE_DECISIONS)
        self.recent: deque[Decision] = deque(maxlen=RECENT_DECISIONS)
        self.vetoes: deque[dict[str, Any]] = deque(maxlen=EVENTS)
        self.approvals: dict[str, ApprovalSeen] = {}
        self.controls: deque[ControlEvent] = deque(maxlen=EVENTS)
        self.feed_events: deque[FeedEvent] = deque(maxlen=EVENTS)
        self.exec_reports: deque[ExecutionReport] = deque(maxlen=EVENTS)
        self.orders: dict[str, ExecutionReport] = {}
        self.recon: Reconciliation | None = None
        self.latency_ns: deque[int] = deque(maxlen=LATENCY_SAMPLES)
        self.latency_buckets = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        self.health_history: deque[tuple[int, int, int]] = deque(maxlen=TIMELINE)
        self.ticks = 0
        self.raw = 0
        # Decisions folded this session: an int the pages read without the lock to learn
        # that the first one is in (a page waiting for it polls this, not a snapshot).
        self.decided = 0

    # ---- receive side (subscriber thread, lock held by the caller) ---------------------
    def handle(self, message: bytes, now_ns: int) -> None:
        """Fold one telemetry message. Malformed messages are counted, never raised."""
        self.messages += 1
        try:
            msg = parse(message)
        except ProtocolError:
            self.decode_errors += 1
            return
        seq = msg.seq
        if seq <= self.last_seq:
            self.publisher_restarts += 1  # a new engine: its sequence starts again at 1
        elif self.last_seq and seq > self.last_seq + 1:
            self.gaps += 1
            self.missed += seq - self.last_seq - 1
        self.last_seq = seq
        try:
            obj = _decoder.decode(msg)  # an unknown topic or a bad payload raises
        except ProtocolError:
            self.decode_errors += 1
            return
        kind = msg.kind
        if kind in (TOPIC_TICK, TOPIC_RAW):
            lag = now_ns - obj.recv_ns
            self.last_lag_ns = lag
            if lag > self.max_lag_ns:
                self.max_lag_ns = lag
            self.ticks += 1
            if obj.decision is None:
                self.raw += 1
            else:
                self._decision(obj.decision)
        elif kind == TOPIC_HEALTH:
            self.health = obj
            self.health_local_ns = now_ns
            self.health_history.append((obj.at_ns, obj.telemetry_sent, obj.telemetry_dropped))
        elif kind == TOPIC_SESSION:
            if self.session is None or obj.session_id != self.session.session_id:
                if self.session is not None:
                    self._reset_session()
                self.session = obj
        elif kind == TOPIC_FEED:
            self.feed_events.append(obj)
        elif kind == TOPIC_CONTROL:
            self._control(obj)
        elif kind == TOPIC_EXEC:
            self._exec(obj)
        elif kind == TOPIC_RECON:
            self.recon = obj

    def sample_lag(self, now_ns: int) -> None:
        """Record the current lag once per batch (the lag chart's points)."""
        self.lag_ns.append((now_ns, self.last_lag_ns))

    def _symbol(self, token: str) -> SymbolState:
        s = self.symbols.get(token)
        if s is None:
            s = self.symbols[token] = SymbolState(token)
        return s

    def _decision(self, d: Decision) -> None:
        s = self._symbol(d.token)
        s.latest = d
        if d.signal.direction:
            s.last_signal = d
        s.decisions += 1
        self.decided += 1
        self.recent.append(d)
        lat = d.decided_ns - d.recv_ns
        self.latency_ns.append(lat)
        i = 0
        for bound in LATENCY_BOUNDS_NS:
            if lat <= bound:
                break
            i += 1
        self.latency_buckets[i] += 1
        p = d.physics
        ts = d.exchange_ts_ms
        price = p.close
        s.ticks.append((ts, price))
        bars = s.bars
        if bars and bars[-1].start_ms == d.bar_start_ms:
            b = bars[-1]
            if price > b.high:
                b.high = price
            if price < b.low:
                b.low = price
            b.close = price
            b.energy, b.z, b.band_mean, b.band_std = p.energy, p.z, p.band_mean, p.band_std
        else:
            bars.append(
                BarPoint(
                    d.bar_start_ms,
                    price,
                    price,
                    price,
                    price,
                    p.energy,
                    p.z,
                    p.band_mean,
                    p.band_std,
                )
            )
            # Regime and leverage refresh at bar close: one point per bar is enough.
            if d.drift is not None and (not s.regimes or s.regimes[-1][1] != d.drift.regime.value):
                s.regimes.append((ts, d.drift.regime.value))
            if d.capital is not None:
                s.leverage.append((ts, d.capital.target_leverage))
        notable = bool(d.transitions) or d.intent is not None
        if d.intent is not None:
            s.markers.append(Marker(ts, price, "ENTRY", f"{d.intent.side.value} {d.intent.qty}"))
        mr = d.meta_risk
        if mr is not None and not mr.allowed:
            notable = True
            rules = ", ".join(f"{v.rule} {v.value:.4g} vs {v.limit:.4g}" for v in mr.vetoes)
            s.markers.append(Marker(ts, price, "VETO", rules or "veto"))
            self.vetoes.append(
                {
                    "exchange_ts_ms": ts,
                    "token": d.token,
                    "seq": d.seq,
                    "halt": mr.halt,
                    "rules": [v.rule for v in mr.vetoes],
                    "reasons": rules,
                    "details": "; ".join(v.detail for v in mr.vetoes if v.detail),
                }
            )
        a = d.approval
        if a is not None and a.approval_id:
            notable = True
            prev = self.approvals.get(a.approval_id)
            if prev is None or prev.status != a.status:
                if prev is None and a.status == "PENDING":
                    s.markers.append(Marker(ts, price, "APPROVAL", a.approval_id))
                qty = d.capital.qty if d.capital is not None else 0
                self.approvals[a.approval_id] = ApprovalSeen(
                    a.approval_id,
                    d.token,
                    a.status,
                    a.reason,
                    ts,
                    d.seq,
                    "BUY" if d.signal.direction > 0 else "SELL",
                    qty,
                    price,
                    d.confidence,
                )
                if len(self.approvals) > EVENTS:
                    self.approvals.pop(next(iter(self.approvals)))
        ex = d.execution
        if ex is not None:
            if s.last_position_qty != 0 and ex.position_qty == 0:
                s.markers.append(Marker(ts, price, "EXIT", ex.last_report or "flat"))
                notable = True
            s.last_position_qty = ex.position_qty
        for t in d.transitions:
            if t.to_state == "HALT":
                s.markers.append(Marker(ts, price, "HALT", t.reason))
                break
        if notable:
            self.notable.append(d)

    def _control(self, c: ControlEvent) -> None:
        self.controls.append(c)
        if c.command in (Command.APPROVE, Command.REJECT) and c.ok:
            seen = self.approvals.get(c.arg)
            if seen is not None:
                seen.status = "APPROVED" if c.command == Command.APPROVE else "REJECTED"

    def _exec(self, r: ExecutionReport) -> None:
        self.exec_reports.append(r)
        self.orders[r.client_order_id] = r
        if len(self.orders) > EVENTS:
            self.orders.pop(next(iter(self.orders)))
        if r.fill is not None and r.purpose.value != "ENTRY":
            s = self._symbol(r.token)
            s.markers.append(
                Marker(
                    r.fill.exchange_ts_ms,
                    r.fill.price,
                    "EXIT",
                    f"{r.purpose.value} {r.side.value} {r.fill.qty}",
                )
            )

    # ---- read side (page renders) ------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self.lock:
            symbols = {
                t: SymbolState(
                    t,
                    s.latest,
                    s.last_signal,
                    deque(s.ticks),
                    deque(BarPoint(**vars(b)) for b in s.bars),
                    deque(s.markers),
                    deque(s.regimes),
                    deque(s.leverage),
                    s.decisions,
                    s.last_position_qty,
                )
                for t, s in sorted(self.symbols.items())
            }
            lags = [lag for _, lag in self.lag_ns]
            return Snapshot(
                session=self.session,
                health=self.health,
                health_local_ns=self.health_local_ns,
                symbols=symbols,
                notable=list(self.notable),
                recent=list(self.recent),
                vetoes=list(self.vetoes),
                approvals={k: ApprovalSeen(**vars(v)) for k, v in self.approvals.items()},
                controls=list(self.controls),
                feed_events=list(self.feed_events),
                exec_reports=list(self.exec_reports),
                orders=dict(self.orders),
                recon=self.recon,
                latency_ns=list(self.latency_ns),
                latency_buckets=list(self.latency_buckets),
                counters={
                    "messages": self.messages,
                    "ticks": self.ticks,
                    "raw": self.raw,
                    "decode_errors": self.decode_errors,
                    "gaps": self.gaps,
                    "missed": self.missed,
                    "publisher_restarts": self.publisher_restarts,
                },
                lag={
                    "last_s": self.last_lag_ns / 1e9,
                    "max_s": self.max_lag_ns / 1e9,
                    "p99_s": _percentile(lags, 99) / 1e9 if lags else 0.0,
                },
                health_history=list(self.health_history),
            )


def _percentile(values: list[int], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return float(ordered[k])


def percentiles_us(latency_ns: list[int]) -> dict[str, float]:
    """p50 / p99 / p99.9 / max of hot-path decision latency, microseconds."""
    if not latency_ns:
        return {}
    ordered = sorted(latency_ns)
    n = len(ordered) - 1
    return {
        "p50": ordered[round(0.50 * n)] / 1e3,
        "p99": ordered[round(0.99 * n)] / 1e3,
        "p99.9": ordered[round(0.999 * n)] / 1e3,
        "max": ordered[-1] / 1e3,
    }


def now_ns() -> int:
    return time.monotonic_ns()
