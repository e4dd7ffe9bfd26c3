"""``chimera metrics``: a Prometheus ``/metrics`` endpoint fed by the engine's telemetry.

A separate process, never in the hot path: it subscribes to every telemetry topic like the
recorder does and serves the numbers on 127.0.0.1 (default port 9108). Binding any other
address needs ``--allow-remote``: the metrics name instruments, states and P&L.

Keeping up with 20k ticks/s: the receive loop only decodes the few fields it needs (a
trimmed msgspec view of ``TickRecord``/``Decision``; the frame and every other layer are
skipped without building objects) and bumps plain Python ints and a bucket list. The
Prometheus metric families are built from those on each scrape by a custom collector in a
dedicated ``CollectorRegistry`` (never the global one), so a tick costs no locks.

What is exported (all prefixed ``chimera_``):

* from tick records: ``ticks_total`` (``tick.*`` and ``raw``), ``decisions_total``,
  ``dropped_frames_total`` (``raw``: frames the engine refused), ``orders_intents_total``,
  ``tick_rate`` (ticks/s over the last ~5 s), ``decision_latency_seconds`` (histogram of
  ``decided_ns - recv_ns``, 1 µs .. 10 ms) with ``decision_latency_p50_seconds`` and
  ``decision_latency_p99_seconds`` over the last 4096 decisions; per token: ``regime``
  (``token``, ``regime`` labels, 1 for the current regime, 0 for the others),
  ``leverage`` (capital ``target_leverage``), ``confidence``, ``pnl`` and ``drawdown``
  (meta-risk ``daily_pnl``/``drawdown``, only present once a decision carried meta-risk:
  real P&L arrives with the execution layer; until then these are governance's view).
* from ``health``: ``feed_connected``, ``feed_reconnects_total`` (connects - 1),
  ``feed_gaps`` (engine ``gaps``), ``feed_stale``, ``telemetry_dropped`` (publisher side),
  ``vetoes_total``, ``halted``, ``exits_only``, ``journal_write_failed``,
  ``position_unprotected{token}`` and ``positions_unprotected``, ``disk_free_bytes``,
  ``states{state}``, ``engine_counter{name}`` (every engine counter) and
  ``health_age_seconds``. These appear after the first health message.
* subscriber side: ``telemetry_gaps_total`` / ``telemetry_missed_total`` (publisher
  sequence gaps seen here), ``telemetry_messages_total{topic}``, ``decode_errors_total``.
* ``feed_events_total{connected}``, ``control_commands_total{command,ok}``,
  ``session_info{session_id,mode,code_version}``.
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgspec
import structlog
import zmq
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from chimera_core.config import default_config_path, load_config
from chimera_core.contracts import (
    ExecutionReport,
    Health,
    Regime,
    SessionInfo,
)
from chimera_core.errors import ChimeraError
from chimera_core.logging import configure_logging
from chimera_core.position_book import PositionBook
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_HEALTH,
    TOPIC_RAW,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_TICK,
    Message,
    TelemetrySubscriber,
    TopicDecoder,
    parse,
)

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
PREFIX = "chimera_"
# Decision latency buckets, seconds: 1 µs .. 10 ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2,
)  # fmt: skip
_BOUNDS_NS: tuple[int, ...] = tuple(round(b * 1e9) for b in LATENCY_BUCKETS_S)
LATENCY_WINDOW = 4096  # decisions behind the p50/p99 gauges
RATE_WINDOW_S = 5.0
RATE_SAMPLE_S = 0.25
POLL_MS = 100
BATCH = 10_000  # messages drained per poll before the rate sampler gets a turn
REGIMES: tuple[str, ...] = tuple(r.value for r in Regime)


# ---- trimmed views: only the fields the exporter reads are decoded ------------------------
class _Drift(msgspec.Struct, gc=False):
    regime: str


class _Capital(msgspec.Struct, gc=False):
    target_leverage: float


class _MetaRisk(msgspec.Struct, gc=False):
    drawdown: float
    daily_pnl: float


class _Decision(msgspec.Struct, gc=False):
    token: str
    recv_ns: int
    decided_ns: int
    confidence: float
    intent: msgspec.Raw  # msgpack nil (0xc0) when there is none; never decoded
    drift: _Drift | None = None
    capital: _Capital | None = None
    meta_risk: _MetaRisk | None = None


class _TickRecord(msgspec.Struct, array_like=True, gc=False):
    recv_ns: int
    frame: msgspec.Raw  # skipped, not copied into a bytes object
    decision: _Decision | None


_NIL = msgspec.Raw(b"\xc0")  # msgpack nil
_decoder = TopicDecoder({TOPIC_TICK: _TickRecord, TOPIC_RAW: _TickRecord})


class MetricsExporter(Collector):
    """Telemetry subscriber + Prometheus collector.

    ``handle(message)`` folds one raw telemetry message into plain counters (the receive
    loop's only work); ``collect()`` turns them into metric families at scrape time.
    ``poll()``/``run()`` drive the subscriber; ``serve()`` starts the HTTP endpoint.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        ctx: zmq.Context[Any] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.clock = clock
        self.sub = TelemetrySubscriber(endpoint, ctx=ctx) if endpoint else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None
        # tick records
        self.ticks = 0
        self.decisions = 0
        self.dropped_frames = 0
        self.intents = 0
        self.decode_errors = 0
        self.buckets = [0] * (len(_BOUNDS_NS) + 1)  # last = above 10 ms (+Inf only)
        self.latency_sum_ns = 0
        self.latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self.regime: dict[str, str] = {}
        self.leverage: dict[str, float] = {}
        self.confidence: dict[str, float] = {}
        self.pnl: dict[str, float] = {}
        self.drawdown: dict[str, float] = {}
        self.topics: dict[str, int] = {}
        # execution reports
        self.reports: dict[str, int] = {}  # by kind (ACK = orders accepted)
        self.fills = 0
        self.fill_qty = 0
        # Positions, net realized P&L and charges by average cost: the engine's own book,
        # kept here from the same reports (a separate process).
        self.book = PositionBook()
        self.reconciled: bool | None = None
        # everything else
        self.health: Health | None = None
        self.health_at = 0.0
        self.feed_connected: bool | None = None
        self.feed_events: dict[bool, int] = {}
        self.controls: dict[tuple[str, bool], int] = {}
        self.session: SessionInfo | None = None
        self._rate: deque[tuple[float, int]] = deque(maxlen=int(RATE_WINDOW_S / RATE_SAMPLE_S) + 2)
        self._next_sample = 0.0

    # ---- receive side ------------------------------------------------------------------
    def handle(self, message: bytes) -> None:
        """Fold one telemetry message (``topic NUL seq payload``) into the counters."""
        try:
            msg = parse(message)
        except ChimeraError:  # no topic/sequence header
            self.decode_errors += 1
            return
        self.fold(msg)

    def fold(self, msg: Message) -> None:
        """Fold one parsed telemetry message into the counters."""
        try:
            obj = _decoder.decode(msg)
        except ChimeraError:  # an unknown topic, a bad payload
            self.decode_errors += 1
            return
        kind = msg.kind
        if kind in (TOPIC_TICK, TOPIC_RAW):
            self._tick(obj)
        elif kind == TOPIC_HEALTH:
            self._on_health(obj)
        elif kind == TOPIC_FEED:
            self.feed_connected = obj.connected
            self.feed_events[obj.connected] = self.feed_events.get(obj.connected, 0) + 1
        elif kind == TOPIC_CONTROL:
            key = (obj.command, obj.ok)
            self.controls[key] = self.controls.get(key, 0) + 1
        elif kind == TOPIC_SESSION:
            self.session = obj
        elif kind == TOPIC_EXEC:
            self._on_report(obj)
        elif kind == TOPIC_RECON:
            self.reconciled = obj.ok
            for pos in obj.positions:
                held = self.book.get(pos.token)
                held.qty, held.avg_price = pos.qty, pos.avg_price
        name = "tick" if kind == TOPIC_TICK else msg.topic.decode("ascii", "replace")
        self.topics[name] = self.topics.get(name, 0) + 1

    def _tick(self, rec: _TickRecord) -> None:
        self.ticks += 1
        d = rec.decision
        if d is None:
            self.dropped_frames += 1
            return
        self.decisions += 1
        lat = d.decided_ns - d.recv_ns
        if lat >= 0:
            self.buckets[bisect.bisect_left(_BOUNDS_NS, lat)] += 1
            self.latency_sum_ns += lat
            self.latencies.append(lat)
        if d.intent != _NIL:
            self.intents += 1
        token = d.token
        self.confidence[token] = d.confidence
        if d.drift is not None:
            self.regime[token] = d.drift.regime
        if d.capital is not None:
            self.leverage[token] = d.capital.target_leverage
        if d.meta_risk is not None:
            self.pnl[token] = d.meta_risk.daily_pnl
            self.drawdown[token] = d.meta_risk.drawdown

    def _on_report(self, r: ExecutionReport) -> None:
        kind = r.kind.value
        self.reports[kind] = self.reports.get(kind, 0) + 1
        fill = r.fill
        if fill is None:
            return
        self.fills += 1
        self.fill_qty += fill.qty
        self.book.apply(fill)

    def _on_health(self, h: Health) -> None:
        self.health = h
        self.reconciled = h.reconciled  # periodic: a late subscriber still learns it
        self.health_at = self.clock()
        self.feed_connected = h.feed_connected

    def sample_rate(self) -> None:
        """Remember (now, ticks) every RATE_SAMPLE_S for the tick_rate gauge."""
        now = self.clock()
        if now >= self._next_sample:
            self._next_sample = now + RATE_SAMPLE_S
            self._rate.append((now, self.ticks))

    def poll(self, timeout_ms: int = POLL_MS) -> int:
        """Wait up to ``timeout_ms`` for telemetry, then drain up to BATCH messages."""
        sub = self.sub
        if sub is None:
            raise ChimeraError("MetricsExporter has no telemetry endpoint to poll")
        n = 0
        if sub.sock.poll(timeout_ms):
            recv = sub.sock.recv
            fold = self.fold
            last = sub.last_seq
            while n < BATCH:
                try:
                    message = recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                try:
                    msg = parse(message)
                except ChimeraError:
                    self.decode_errors += 1
                    continue
                # the subscriber's gap accounting (TelemetrySubscriber.recv), inlined
                seq = msg.seq
                if last and seq > last + 1:
                    sub.gaps += 1
                    sub.missed += seq - last - 1
                if seq > last:
                    last = seq
                fold(msg)
            sub.last_seq = last
        self.sample_rate()
        return n

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll()

    # ---- HTTP side ---------------------------------------------------------------------
    def serve(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
        """Start ``/metrics`` on host:port in a daemon thread; returns the bound port."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.sub is not None:
            self.sub.sock.close(linger=0)

    # ---- scrape side -------------------------------------------------------------------
    def tick_rate(self) -> float:
        now, ticks = self.clock(), self.ticks
        for t, n in list(self._rate):
            if now - t <= RATE_WINDOW_S:
                return (ticks - n) / (now - t) if now > t else 0.0
        return 0.0

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        yield CounterMetricFamily(p + "ticks", "Tick records received (tick.* and raw)", self.ticks)
        yield CounterMetricFamily(
            p + "decisions", "Tick records carrying a decision", self.decisions
        )
        yield CounterMetricFamily(
            p + "dropped_frames", "Frames the engine dropped (raw records)", self.dropped_frames
        )
        yield CounterMetricFamily(
            p + "orders_intents", "Decisions that emitted an order intent", self.intents
        )
        yield GaugeMetricFamily(
            p + "tick_rate", f"Ticks per second over the last {RATE_WINDOW_S:g} s", self.tick_rate()
        )
        yield CounterMetricFamily(
            p + "decode_errors", "Telemetry messages that could not be decoded", self.decode_errors
        )

        counts = list(self.buckets)
        total_ns = self.latency_sum_ns
        cumulative, acc = [], 0
        for bound, c in zip(LATENCY_BUCKETS_S, counts, strict=False):
            acc += c
            cumulative.append((repr(bound), acc))
        acc += counts[-1]
        cumulative.append(("+Inf", acc))
        yield HistogramMetricFamily(
            p + "decision_latency_seconds",
            "decided_ns - recv_ns of each decision",
            buckets=cumulative,
            sum_value=total_ns / 1e9,
        )
        window = sorted(list(self.latencies))
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            g = GaugeMetricFamily(
                f"{p}decision_latency_{name}_seconds",
                f"{name} decision latency over the last {LATENCY_WINDOW} decisions",
            )
            if window:
                g.add_metric([], window[min(len(window) - 1, int(q * len(window)))] / 1e9)
            yield g

        regime = GaugeMetricFamily(
            p + "regime", "1 for the token's current drift regime", labels=["token", "regime"]
        )
        for token, current in list(self.regime.items()):
            for r in REGIMES if current in REGIMES else (*REGIMES, current):
                regime.add_metric([token, r], 1.0 if r == current else 0.0)
        yield regime
        for name, doc, values in (
            ("leverage", "Capital brain target leverage", self.leverage),
            ("confidence", "Confidence of the latest decision", self.confidence),
            ("pnl", "Daily P&L as meta-risk sees it (closed trades)", self.pnl),
            ("drawdown", "Drawdown from peak equity, fraction (meta-risk)", self.drawdown),
        ):
            g = GaugeMetricFamily(p + name, doc, labels=["token"])
            for token, v in list(values.items()):
                g.add_metric([token], v)
            yield g

        orders = CounterMetricFamily(
            p + "order_reports", "Execution reports by kind (ACK = accepted)", labels=["kind"]
        )
        for kind, n in list(self.reports.items()):
            orders.add_metric([kind], n)
        yield orders
        yield CounterMetricFamily(p + "fills", "Fills reported", self.fills)
        yield CounterMetricFamily(p + "rejects", "Orders rejected", self.reports.get("REJECTED", 0))
        held = list(self.book.by_token().items())
        for name, doc, field in (
            ("realized_pnl", "Realized P&L net of charges, rupees", "realized"),
            ("charges", "Charges paid, rupees", "charges"),
            ("position", "Signed position, units", "qty"),
        ):
            g = GaugeMetricFamily(p + name, doc, labels=["token"])
            for token, pos in held:
                g.add_metric([token], float(getattr(pos, field)))
            yield g
        if self.reconciled is not None:
            yield GaugeMetricFamily(
                p + "reconciled", "1 when start-up reconciliation agreed", float(self.reconciled)
            )

        sub = self.sub
        if sub is not None:
            yield CounterMetricFamily(
                p + "telemetry_gaps", "Publisher-sequence gaps seen by this subscriber", sub.gaps
            )
            yield CounterMetricFamily(
                p + "telemetry_missed", "Telemetry messages this subscriber missed", sub.missed
            )
        topics = CounterMetricFamily(
            p + "telemetry_messages", "Telemetry messages received", labels=["topic"]
        )
        for name, n in list(self.topics.items()):
            topics.add_metric([name], n)
        yield topics

        if self.feed_connected is not None:
            yield GaugeMetricFamily(
                p + "feed_connected", "1 while the feed is connected", float(self.feed_connected)
            )
        feed = CounterMetricFamily(
            p + "feed_events", "Feed (dis)connect events", labels=["connected"]
        )
        for connected, n in list(self.feed_events.items()):
            feed.add_metric([str(connected).lower()], n)
        yield feed
        ctl = CounterMetricFamily(
            p + "control_commands", "Operator commands applied", labels=["command", "ok"]
        )
        for (command, ok), n in list(self.controls.items()):
            ctl.add_metric([command, str(ok).lower()], n)
        yield ctl
        if self.session is not None:
            yield _session_family(self.session)

        h = self.health
        if h is not None:
            yield from self._health_families(h)

    def _health_families(self, h: Health) -> Iterator[Metric]:
        p = PREFIX
        yield GaugeMetricFamily(p + "halted", "1 while the engine is halted", float(h.halted))
        yield GaugeMetricFamily(p + "feed_stale", "1 while the feed is stale", float(h.feed_stale))
        yield GaugeMetricFamily(
            p + "exits_only", "1 while no new entries are made (exits work)", float(h.exits_only)
        )
        state = GaugeMetricFamily(
            p + "trading_state", "1 for the engine's trading state", labels=["state"]
        )
        for name in ("ACTIVE", "REDUCING", "PAUSED", "HALTED"):
            state.add_metric([name], float(h.trading_state == name))
        yield state
        yield GaugeMetricFamily(
            p + "journal_write_failed", "1 while the journal's last write failed",
            float(bool(h.journal_error)),
        )  # fmt: skip
        unprotected = GaugeMetricFamily(
            p + "position_unprotected", "1 per token holding a position its feed no longer "
            "watches", labels=["token"],
        )  # fmt: skip
        for token in h.unprotected:
            unprotected.add_metric([token], 1.0)
        yield unprotected
        yield GaugeMetricFamily(
            p + "positions_unprotected", "Positions whose feed went dark", len(h.unprotected)
        )
        if h.disk_free_mb >= 0:
            yield GaugeMetricFamily(
                p + "disk_free_bytes", "Free space under data_dir", h.disk_free_mb * 1e6
            )
        yield CounterMetricFamily(
            p + "feed_reconnects", "Feed reconnects (connects - 1)", max(0, h.feed_connects - 1)
        )
        yield GaugeMetricFamily(
            p + "feed_gaps", "Feed sequence gaps the engine saw", h.engine.get("gaps", 0)
        )
        yield GaugeMetricFamily(
            p + "telemetry_dropped",
            "Messages the publisher's socket refused (a subscriber's overflow is its gap)",
            h.telemetry_dropped,
        )
        yield GaugeMetricFamily(
            p + "telemetry_sent", "Messages the publisher sent", h.telemetry_sent
        )
        if "vetoes" in h.engine:
            yield CounterMetricFamily(p + "vetoes", "Meta-risk vetoes", h.engine["vetoes"])
        states = GaugeMetricFamily(p + "states", "Symbols per execution state", labels=["state"])
        for state_name, n in h.states.items():
            states.add_metric([state_name], n)
        yield states
        eng = GaugeMetricFamily(p + "engine_counter", "Engine counters (health)", labels=["name"])
        for name, n in h.engine.items():
            eng.add_metric([name], n)
        yield eng
        yield GaugeMetricFamily(
            p + "health_age_seconds", "Seconds since the last health message",
            self.clock() - self.health_at,
        )  # fmt: skip


def _session_family(s: SessionInfo) -> Metric:
    g = GaugeMetricFamily(
        PREFIX + "session_info",
        "The engine session being watched",
        labels=["session_id", "mode", "code_version"],
    )
    g.add_metric([s.session_id, s.mode, s.code_version], 1.0)
    return g


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind unless explicitly allowed."""
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ChimeraError(
            f"refusing to serve metrics on non-loopback host {host!r}: they expose instruments, "
            "states and P&L; use 127.0.0.1 (and a reverse proxy) or pass --allow-remote"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera metrics", description="Prometheus /metrics from the engine's telemetry"
    )
    p.add_argument(
        "--config",
        default=default_config_path(),
        help="TOML config (default: ./chimera.toml if present, as every chimera command)",
    )
    p.add_argument("--endpoint", help="telemetry endpoint (default: config telemetry.endpoint)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"bind address (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT})")
    p.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_host(args.host, args.allow_remote)
        cfg = load_config(args.config)
    except ChimeraError as exc:
        print(f"chimera metrics: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level)
    endpoint = args.endpoint or cfg.telemetry.endpoint
    exporter = MetricsExporter(endpoint)
    try:
        port = exporter.serve(args.host, args.port)
    except OSError as exc:
        exporter.close()
        print(f"chimera metrics: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    log.info("metrics_serving", url=f"http://{args.host}:{port}/metrics", telemetry=endpoint)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("metrics_signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        exporter.run(stop)
    finally:
        exporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
