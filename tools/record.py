"""``chimera record``: the black-box recorder.

Subscribes to every telemetry topic and appends each message, byte for byte, to the
session's segment files (chimera_core.telemetry.blackbox), one directory per engine session
(``<data_dir>/blackbox/<session_id>/``). Alongside: an atomically rewritten
``manifest.json`` per session and ``<data_dir>/neural_state.json``, the latest decision of
every symbol for the cortex.

The recorder must never slow the engine: the publisher sends NOBLOCK, so a recorder that
falls behind costs it nothing but shows up here as gaps in the publisher sequence. The
loop therefore only receives, appends to a buffered file and keeps the latest state; all
JSON and fsync work runs on timers.

``chimera record --verify SESSION`` reads a session back and reports records per topic,
sequence gaps, CRC errors (exit 1) and torn tails (a warning: what a crash leaves).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import structlog
import zmq
from zmq.utils.monitor import recv_monitor_message

from chimera_core.config import default_config_path, load_config
from chimera_core.contracts import Decision, Health, SessionInfo
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.logging import configure_logging
from chimera_core.telemetry import (
    RECORDER_RECONNECT_MS,
    RECORDER_SUBSCRIPTION,
    TOPIC_HEALTH,
    TOPIC_SESSION,
    TOPIC_TICK,
    SegmentWriter,
    TickView,
    check_session,
    decoder_for,
    open_private,
    parse,
    segments,
)

log = structlog.get_logger(__name__)

MANIFEST = "manifest.json"
NEURAL_STATE = "neural_state.json"
MANIFEST_INTERVAL_S = 2.0
DISK_CHECK_S = 5.0
# Messages before the first SessionInfo wait this long for it (the engine repeats it with
# every health message), then go to an ``unknown-…`` session.
SESSION_WAIT_S = 2.0
PENDING_MAX_BYTES = 256 << 20
POLL_MS = 50
BATCH = 10_000  # messages drained per poll before timers get a turn

# Only these three are decoded (the frame skipped); every message is filed byte for byte.
_decode_tick = decoder_for(TOPIC_TICK, TickView)
_decode_health = decoder_for(TOPIC_HEALTH)
_decode_session = decoder_for(TOPIC_SESSION)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# The Decision's layer outputs neural_state.json carries per symbol (contracts.Decision).
LAYERS = ("drift", "capital", "meta_risk", "genome", "approval", "execution")


def _layer_state(entry: tuple[int, Any] | None) -> dict[str, Any] | None:
    """One layer's output as JSON, with the seq of the decision it came from."""
    if entry is None:
        return None
    seq, output = entry
    return {"seq": seq, **msgspec.to_builtins(output)}


def _utc_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Readers see the old file or the new one, never a partial one (0600, fsynced before
    the rename). NaN/inf become null. Raises OSError, leaving no temporary file behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    try:
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class StreamStats:
    """What one session's stream looked like: counts and publisher-sequence gaps."""

    first_seq: int | None = None
    last_seq: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    gaps: list[dict[str, int]] = field(default_factory=list)
    seq_resets: int = 0
    records: int = 0


class Recorder:
    """Session bookkeeping and files; ``main`` feeds it messages and timer ticks.

    ``now`` arguments are ``time.monotonic()`` seconds (injected so tests can drive it).
    """

    def __init__(
        self,
        data_dir: Path,
        segment_bytes: int,
        fsync_interval_s: float,
        neural_state_interval_s: float,
        now: float,
        session_wait_s: float = SESSION_WAIT_S,
        min_free_disk_mb: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blackbox_dir = self.data_dir / "blackbox"
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        self.neural_state_interval_s = neural_state_interval_s
        self.session_wait_s = session_wait_s
        self.min_free_disk_mb = min_free_disk_mb
        self.disk_free_mb: float | None = None
        self.disk_low = False
        self.json_write_errors = 0  # manifest / neural_state writes that failed
        self.last_write_error = ""
        self.records_lost = 0  # of sessions already closed (the open one: its writer)
        self._next_disk = now
        self.started_wall = _utc_iso()
        self.started_at = now
        self.unknown_name = "unknown-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")

        self.session: SessionInfo | None = None
        self.session_name: str | None = None
        self.session_dir: Path | None = None
        self.session_started_wall = ""
        self.writer: SegmentWriter | None = None
        self.stats = StreamStats()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.pending_since: float | None = None
        self.prev_seq = 0  # last publisher seq seen in the current engine run
        # The publisher's connection dropped (engine stopped or died): the next message that
        # does not continue its sequence, or a new SessionInfo, starts another engine run.
        self.publisher_gone = False
        # Set by ``run``: drains the socket monitor. A batch of messages is read without
        # looking at the monitor, so a break in the sequence asks it before deciding: the
        # old connection's disconnect is queued there before the new one's first message.
        self.poll_disconnects: Callable[[], None] | None = None
        self.engine_restarts = 0
        self.malformed = 0
        self.total = 0
        self.sessions_closed = 0

        self.latest: dict[str, Decision] = {}
        self.last_intent: dict[str, tuple[int, Any]] = {}
        self.last_transitions: dict[str, tuple[int, Any]] = {}
        # token -> layer -> (seq, output) of the last decision that carried it: some layers
        # speak only at a bar close or when a signal is about to fire.
        self.last_layers: dict[str, dict[str, tuple[int, Any]]] = {}
        self.health: Health | None = None
        self._state_dirty = False
        self._next_sync = now + fsync_interval_s
        self._next_manifest = now + MANIFEST_INTERVAL_S
        self._next_state = now

    # ---- per message ---------------------------------------------------------------
    def on_message(self, message: bytes, now: float) -> None:
        try:
            msg = parse(message)
            topic, seq, payload = msg.topic, msg.seq, msg.payload
            info: SessionInfo | None = _decode_session(payload) if topic == TOPIC_SESSION else None
            decision = _decode_tick(payload).decision if topic.startswith(TOPIC_TICK) else None
            health: Health | None = _decode_health(payload) if topic == TOPIC_HEALTH else None
        except ProtocolError as exc:
            self.malformed += 1
            log.warning("recorder_malformed", error=str(exc), size=len(message))
            return
        if self._new_engine_run(seq, info):
            # A restarted engine numbers from 1 again. Its messages must not land in the
            # previous session: that one ends here, and these wait for their SessionInfo.
            self.engine_restarts += 1
            log.info(
                "recorder_engine_restarted",
                previous_session=self.session_name,
                previous_seq=self.prev_seq,
                seq=seq,
            )
            self._end_engine_run(reason="engine_restarted")
        if info is not None:
            self._on_session(info, now)
        elif decision is not None:
            self._on_decision(decision)
        elif health is not None:
            self.health = health
            self._state_dirty = True
        self._track_seq(seq)
        key = topic.decode("ascii", "replace")
        counts = self.stats.counts
        counts[key] = counts.get(key, 0) + 1
        self.stats.records += 1
        self.total += 1
        if self.writer is not None:
            self.writer.write(message)
        else:
            if self.pending_since is None:
                self.pending_since = now
            self.pending.append(message)
            self.pending_bytes += len(message)
            if self.pending_bytes > PENDING_MAX_BYTES:
                self._open(None)

    def _new_engine_run(self, seq: int, info: SessionInfo | None) -> bool:
        """Does this message belong to another engine run than the session being recorded?

        ZeroMQ neither reorders nor repeats, so a sequence that does not go forward is a
        restarted publisher; after a disconnect, so is any sequence that does not continue.
        A SessionInfo names its session itself (``_on_session``).
        """
        prev = self.prev_seq
        if not prev:
            return False
        if info is not None:
            same = self.session is not None and info.session_id == self.session.session_id
            if same:
                self.publisher_gone = False
            return False
        if seq == prev + 1:
            return False
        if not self.publisher_gone and self.poll_disconnects is not None:
            self.poll_disconnects()
        return seq <= prev or self.publisher_gone

    def _end_engine_run(self, reason: str) -> None:
        if self.writer is not None:
            self.close_session(complete=True, reason=reason)
        elif self.pending:  # the previous run never named itself: file it on its own
            self._open(None)
            self.close_session(complete=True, reason=reason)
        self.session = None
        self.latest.clear()  # the old engine's state is history
        self.last_intent.clear()
        self.last_transitions.clear()
        self.last_layers.clear()
        self.prev_seq = 0
        self.publisher_gone = False

    def on_publisher_disconnected(self) -> None:
        """The telemetry connection dropped: the engine stopped, died or is restarting."""
        self.publisher_gone = True
        log.info("recorder_publisher_disconnected", session=self.session_name)

    def _track_seq(self, seq: int) -> None:
        st = self.stats
        prev = self.prev_seq
        if prev and seq > prev + 1:
            st.gaps.append({"after_seq": prev, "missed": seq - prev - 1})
            log.warning("recorder_gap", after_seq=prev, missed=seq - prev - 1)
        elif prev and seq <= prev:  # only a SessionInfo of a new run gets here first
            st.seq_resets += 1
            log.info("recorder_seq_reset", previous=prev, seq=seq)
        self.prev_seq = seq
        if st.first_seq is None:
            st.first_seq = seq
        st.last_seq = seq

    def _on_session(self, info: SessionInfo, now: float) -> None:
        if self.session is not None and info.session_id == self.session.session_id:
            return
        if self.session is not None:  # the engine restarted: its old state is history
            self.latest.clear()
            self.last_intent.clear()
            self.last_transitions.clear()
            self.last_layers.clear()
            self.prev_seq = 0
        if self.writer is not None:
            self.close_session(complete=True, reason="new_session")
        self.session = info
        self.publisher_gone = False
        self._open(info)

    def _on_decision(self, d: Decision | None) -> None:
        if d is None:
            return
        self.latest[d.token] = d
        if d.intent is not None:
            self.last_intent[d.token] = (d.seq, d.intent)
        if d.transitions:
            self.last_transitions[d.token] = (d.seq, d.transitions)
        layers = self.last_layers.setdefault(d.token, {})
        for name in LAYERS:
            output = getattr(d, name)
            if output is not None:
                layers[name] = (d.seq, output)
        self._state_dirty = True

    # ---- sessions ------------------------------------------------------------------
    def _open(self, info: SessionInfo | None) -> None:
        """Open the session directory (unknown when ``info`` is None) and write what waited."""
        name = _SAFE_NAME.sub("_", info.session_id) if info is not None else self.unknown_name
        self.session_name = name
        self.session_dir = self.blackbox_dir / name
        self.session_started_wall = _utc_iso()
        self.writer = SegmentWriter(self.session_dir, self.segment_bytes)
        for message in self.pending:
            self.writer.write(message)
        self.pending = []
        self.pending_bytes = 0
        self.pending_since = None
        self.write_manifest(complete=False)
        log.info("recorder_session_opened", session=name, known=info is not None)

    def close_session(self, complete: bool, reason: str) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.write_manifest(complete=complete, ended=True, reason=reason)
        log.info(
            "recorder_session_closed",
            session=self.session_name,
            records=self.writer.records,
            records_lost=self.writer.lost,
            gaps=len(self.stats.gaps),
            reason=reason,
        )
        self.records_lost += self.writer.lost
        self.writer = None
        self.session = None
        self.stats = StreamStats()
        self.sessions_closed += 1

    def manifest(self, complete: bool, ended: bool = False, reason: str = "") -> dict[str, Any]:
        info = self.session
        config: Any = None
        if info is not None:
            try:
                config = orjson.loads(info.config_json)
            except orjson.JSONDecodeError:
                config = info.config_json.decode("utf-8", "replace")
        st = self.stats
        return {
            "session_id": info.session_id if info is not None else None,
            "directory": self.session_name,
            "mode": info.mode if info is not None else None,
            "started_ns": info.started_ns if info is not None else None,
            "config_sha256": info.config_sha256 if info is not None else None,
            "config_json": config,
            "code_version": info.code_version if info is not None else None,
            "genome_version": info.genome_version if info is not None else None,
            "recorder_started": self.session_started_wall,
            "recorder_ended": _utc_iso() if ended else None,
            "end_reason": reason or None,
            "first_seq": st.first_seq,
            "last_seq": st.last_seq,
            "counts": dict(sorted(st.counts.items())),
            "records": self.writer.records if self.writer is not None else st.records,
            "segments": len(segments(self.session_dir)) if self.session_dir else 0,
            "gaps": list(st.gaps),
            "missed": sum(g["missed"] for g in st.gaps),
            "seq_resets": st.seq_resets,
            "malformed": self.malformed,
            "complete": complete,
            # What could not be written (ENOSPC, EFBIG, EIO): counted, never silently.
            "records_lost": self.writer.lost if self.writer is not None else 0,
            "write_failures": self.writer.failures if self.writer is not None else 0,
            "write_error": (self.writer.last_error or None) if self.writer is not None else None,
        }

    def write_manifest(self, complete: bool, ended: bool = False, reason: str = "") -> None:
        if self.session_dir is None:
            return
        if self.writer is not None:
            # The manifest's record count must be on disk (in the OS) before the manifest
            # says so: verification treats fewer records than it counts as a loss.
            self.writer.flush()
        self._write_json(self.session_dir / MANIFEST, self.manifest(complete, ended, reason))

    def _write_json(self, path: Path, obj: Any) -> bool:
        try:
            write_json_atomic(path, obj)
        except OSError as exc:
            self.json_write_errors += 1
            self.last_write_error = f"{path.name}: {exc.strerror or exc}"
            if self.json_write_errors % 100 == 1:
                log.error("recorder_write_failed", file=str(path), error=str(exc))
            return False
        return True

    def recorder_status(self) -> dict[str, Any]:
        w = self.writer
        lost = self.records_lost + (w.lost if w is not None else 0)
        return {
            "records_lost": lost,
            "writing": not (w is not None and w.failing),
            "write_error": (w.last_error if w is not None else "") or self.last_write_error or None,
            "json_write_errors": self.json_write_errors,
            "disk_free_mb": self.disk_free_mb,
            "disk_space_low": self.disk_low,
        }

    def check_disk(self) -> None:
        """Low free space under data_dir is a warning (before it becomes lost records)."""
        try:
            free = shutil.disk_usage(self.data_dir).free / (1 << 20)
        except OSError:
            return
        self.disk_free_mb = round(free, 1)
        low = free < self.min_free_disk_mb
        if low and not self.disk_low:
            log.warning(
                "disk_space_low",
                data_dir=str(self.data_dir),
                free_mb=self.disk_free_mb,
                min_free_disk_mb=self.min_free_disk_mb,
            )
        elif self.disk_low and not low:
            log.info("disk_space_ok", data_dir=str(self.data_dir), free_mb=self.disk_free_mb)
        if low != self.disk_low:
            self.disk_low = low
            self._state_dirty = True

    # ---- neural state --------------------------------------------------------------
    def neural_state(self) -> dict[str, Any]:
        symbols: dict[str, Any] = {}
        for token, d in self.latest.items():
            p = d.physics
            intent = self.last_intent.get(token)
            transitions = self.last_transitions.get(token)
            layers = self.last_layers.get(token, {})
            symbols[token] = {
                "seq": d.seq,
                "exchange_ts_ms": d.exchange_ts_ms,
                "price": p.close,
                "physics": {
                    "energy": p.energy,
                    "z": p.z,
                    "structure": p.structure.value,
                    "band": p.band.value,
                    "band_mean": p.band_mean,
                    "band_std": p.band_std,
                    "volatility": p.volatility,
                    "atr": p.atr,
                    "closed_bars": p.closed_bars,
                    "profile": msgspec.to_builtins(p.profile),
                },
                "signal": msgspec.to_builtins(d.signal),
                "state": d.state,
                "transitions": msgspec.to_builtins(d.transitions),
                "last_transitions": (
                    {"seq": transitions[0], "transitions": msgspec.to_builtins(transitions[1])}
                    if transitions
                    else None
                ),
                "last_intent": (
                    {
                        "seq": intent[0],
                        "client_order_id": intent[1].client_order_id,
                        "side": intent[1].side.value,
                        "qty": intent[1].qty,
                        "ref_price": intent[1].ref_price,
                    }
                    if intent
                    else None
                ),
                "confidence": d.confidence,
                "influence": d.influence,
                "feed_stale": d.feed_stale,
                # Each governance layer and execution as of the last decision that carried
                # it (its seq beside its output), or None if none has yet.
                **{name: _layer_state(layers.get(name)) for name in LAYERS},
            }
        return {
            "session_id": self.session.session_id if self.session is not None else None,
            "updated": _utc_iso(),
            "health": msgspec.to_builtins(self.health) if self.health is not None else None,
            "symbols": symbols,
            "recorder": self.recorder_status(),
        }

    def write_neural_state(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._write_json(self.data_dir / NEURAL_STATE, self.neural_state()):
            self._state_dirty = False

    # ---- timers --------------------------------------------------------------------
    def on_timer(self, now: float) -> None:
        if self.pending_since is not None and now - self.pending_since >= self.session_wait_s:
            log.warning("recorder_no_session_info", waited_s=self.session_wait_s)
            self._open(None)
        if self._state_dirty and now >= self._next_state:
            self.write_neural_state()
            self._next_state = now + self.neural_state_interval_s
        if now >= self._next_sync:
            if self.writer is not None:
                self.writer.sync()
            self._next_sync = now + self.fsync_interval_s
        if now >= self._next_disk:
            self.check_disk()
            self._next_disk = now + DISK_CHECK_S
        if now >= self._next_manifest:
            self.write_manifest(complete=False)
            self._next_manifest = now + MANIFEST_INTERVAL_S

    def stop(self) -> None:
        """Clean stop: whatever still waits for a session goes to ``unknown-…``."""
        if self.pending:
            self._open(None)
        if self._state_dirty:
            self.write_neural_state()
        self.close_session(complete=True, reason="stopped")


# ---- the process ----------------------------------------------------------------------
def run(
    endpoint: str, recorder: Recorder, stop: list[bool], ctx: zmq.Context[Any] | None = None
) -> None:
    """Receive until ``stop[0]``; then drain what already arrived and close cleanly."""
    ctx = ctx or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.setsockopt(zmq.LINGER, 0)
    # A restarted engine waits for us (TelemetryPublisher.wait_for_recorder) before its
    # first message: re-dial it quickly and at a fixed pace, never backing off.
    sock.setsockopt(zmq.RECONNECT_IVL, RECORDER_RECONNECT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.SUBSCRIBE, RECORDER_SUBSCRIPTION)  # "the black box is here"
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    sock.connect(endpoint)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    recv, monotonic = sock.recv, time.monotonic

    def poll_disconnects() -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                recorder.on_publisher_disconnected()

    recorder.poll_disconnects = poll_disconnects
    on_message, on_timer = recorder.on_message, recorder.on_timer
    log.info("recorder_started", endpoint=endpoint, data_dir=str(recorder.data_dir))
    try:
        while not stop[0]:
            ready = dict(poller.poll(POLL_MS))
            if monitor in ready:
                poll_disconnects()
            if sock in ready:
                now = monotonic()
                for _ in range(BATCH):
                    try:
                        message = recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    on_message(message, now)
            on_timer(monotonic())
        while True:  # what is already queued belongs to the record
            try:
                message = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            on_message(message, monotonic())
    finally:
        recorder.poll_disconnects = None
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        recorder.stop()
    log.info(
        "recorder_stopped",
        records=recorder.total,
        sessions=recorder.sessions_closed,
        engine_restarts=recorder.engine_restarts,
        malformed=recorder.malformed,
    )


def verify(session_dir: Path, out: Any = sys.stdout) -> int:
    """Read every record back and compare with the manifest: 1 on damage, lost records or
    records of another engine run, 0 otherwise (gaps and a crash's torn tail only warn)."""
    if not session_dir.is_dir() or not segments(session_dir):
        print(f"no black-box segments in {session_dir}", file=out)
        return 2
    check = check_session(session_dir)
    w = out.write
    w(f"session {session_dir}\n")
    expected = f" of {check.expected} written" if check.expected is not None else ""
    w(f"segments {check.segments}  records {check.report.records}{expected}\n")
    for key, n in sorted(check.counts.items()):
        w(f"  {key:<24} {n}\n")
    w(f"seq {check.first_seq}..{check.last_seq}  gaps {len(check.gaps)}  ")
    w(f"missed {sum(m for _, m in check.gaps)}\n")
    if check.malformed:
        w(f"malformed records {check.malformed}\n")
    for note in check.notes:
        w(f"WARNING {note}\n")
    for error in check.errors:
        w(f"ERROR {error}\n")
    if check.errors:
        lost = f"{check.lost} record(s) lost, " if check.lost else ""
        w(f"FAILED: {lost}{len(check.errors)} problem(s); the session is damaged\n")
        return 1
    w("OK\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chimera record", description="black-box recorder")
    p.add_argument(
        "--config",
        default=default_config_path(),
        help="TOML config (default: ./chimera.toml if present)",
    )
    p.add_argument("--data-dir", help="override config data_dir")
    p.add_argument("--endpoint", help="override config telemetry.endpoint")
    p.add_argument("--verify", metavar="SESSION", help="check a recorded session and exit")
    # Test/bench overrides, not part of the stable CLI.
    p.add_argument("--segment-bytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--session-wait-s", type=float, default=SESSION_WAIT_S, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ChimeraError as exc:
        print(f"chimera record: {exc}", file=sys.stderr)
        return 2
    configure_logging(cfg.logging.level)
    data_dir = Path(args.data_dir or cfg.data_dir)
    if args.verify:
        target = Path(args.verify)
        if not target.is_dir():
            target = data_dir / "blackbox" / args.verify
        return verify(target)

    endpoint = args.endpoint or cfg.telemetry.endpoint
    recorder = Recorder(
        data_dir,
        segment_bytes=args.segment_bytes or cfg.recorder.segment_mb << 20,
        fsync_interval_s=cfg.recorder.fsync_interval_s,
        neural_state_interval_s=cfg.recorder.neural_state_interval_s,
        now=time.monotonic(),
        session_wait_s=args.session_wait_s,
        min_free_disk_mb=cfg.min_free_disk_mb,
    )
    stop = [False]

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("recorder_signal", signal=signal.Signals(signum).name)
        stop[0] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    run(endpoint, recorder, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
