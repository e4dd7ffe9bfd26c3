"""``chimera replay``: feed a recorded black-box session back through the same engine code.

Offline (the default): every recorded message, in order, into a fresh ``Engine`` built
from the session's own Config, with the recorded receive time as its clock. Feed events
bump the feed epoch, applied operator commands (halt, pause, resume) are re-applied,
every frame goes through ``Engine.on_frame`` — the identical hot path, nothing batched
or vectorised — so a replayed decision can be compared with the recorded one.

``--verify``: every replayed decision must equal the recorded one byte for byte
(msgpack), ignoring only ``decided_ns`` (a wall-clock latency stamp); a frame the live
engine dropped (recorded decision ``None``) must be dropped again. The first divergence
is printed field by field and the exit code is 1.

Incomplete sessions (publisher-sequence gaps listed by the recorder's manifest or seen
in the segments, CRC errors, torn tails) cannot in general be replayed exactly: a lost
tick changes every later decision (their ``seq`` at least). Policy: warn loudly, replay
anyway, and let the comparison decide — if every recorded decision is reproduced, the
lost messages demonstrably did not carry engine input (health, dropped frames) and the
exit code is 0 (with the warning); any divergence exits 1 and says a gap precedes it.

``--export csv|parquet``: one row per replayed decision (see ``EXPORT_COLUMNS``).

``--speed Nx``: re-serve the session's raw frames through the exchange simulator so a
live engine (and the cortex) can watch a past session. The simulator paces a tick file
at a constant rate, so the recorded pacing is approximated by its mean:
rate = frames / (last recv_ns − first recv_ns) × N; bursts and pauses are flattened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from chimera_core.commands import Command
from chimera_core.config import Config
from chimera_core.contracts import (
    ControlEvent,
    Decision,
    ExecutionReport,
    FeedEvent,
    GovernanceState,
    Reconciliation,
    SessionInfo,
    TickRecord,
)
from chimera_core.errors import ChimeraError, ProtocolError
from chimera_core.physics import warm_up_kernels
from chimera_core.store import restore_image
from chimera_core.telemetry import (
    TOPIC_CONTROL,
    TOPIC_EXEC,
    TOPIC_FEED,
    TOPIC_RAW,
    TOPIC_RECON,
    TOPIC_SESSION,
    TOPIC_STATE,
    TOPIC_TICK,
    Message,
    ReadReport,
    SessionCheck,
    check_session,
    decoder_for,
    read_manifest,
    read_session,
)
from chimera_governance.approvals import DECIDED_BY_HUMAN
from chimera_governance.pipeline import GovernancePipeline
from tools.node import build_node, build_parts

# Commands that change what the engine decides (flatten and flatten_token act only at the
# broker: their outcome is in the exec records).
REPLAYED_COMMANDS = frozenset(
    {
        Command.HALT,
        Command.PAUSE,
        Command.RESUME,
        Command.APPROVE,
        Command.REJECT,
        Command.RESET_HALT,
        "reduce",
        "reduce_clear",
    }
)
EXPORT_COLUMNS = (
    "seq", "token", "exchange_ts_ms", "tick_sequence", "bar_start_ms", "price", "energy", "z",
    "structure", "band", "band_mean", "band_std", "volatility", "atr", "signal_direction",
    "signal_reason", "state", "transitions", "intent_id", "intent_side", "intent_qty",
    "confidence", "feed_stale", "recv_ns", "decided_ns",
)  # fmt: skip


class ReplayError(ChimeraError):
    """The session cannot be replayed (missing, unreadable, no config)."""


@dataclass
class Gap:
    after_seq: int
    missed: int
    source: str  # "manifest" or "segments"


@dataclass
class Divergence:
    """The first replayed decision that differs from the recorded one."""

    index: int  # message index in the session (0-based, write order)
    seq: int  # publisher sequence number of that message
    topic: str
    recorded: Decision | None
    replayed: Decision | None
    fields: list[tuple[str, Any, Any]]  # (path, recorded, replayed), decided_ns ignored


@dataclass
class ReplayResult:
    session_dir: Path
    session_id: str
    config: Config
    messages: int = 0
    ticks: int = 0  # TickRecords fed to the engine
    decisions: int = 0  # replayed decisions (not None)
    compared: int = 0  # TickRecords whose outcome was compared (verify)
    identical: int = 0
    mismatched: int = 0
    divergence: Divergence | None = None
    gaps: list[Gap] = field(default_factory=list)
    read_report: ReadReport = field(default_factory=ReadReport)
    check: SessionCheck | None = None  # the recording judged against its manifest
    undecodable: int = 0
    feed_events: int = 0
    # "recorded": governance started from the session's own stores; "empty": the session
    # holds no state record (recorded before it existed, or too large to record).
    governance_state: str = "empty"
    control_applied: int = 0
    reports_applied: int = 0
    elapsed_s: float = 0.0
    # (replayed decision, recorded decided_ns or 0) when collect=True
    rows: list[tuple[Decision, int]] = field(default_factory=list)
    engine_stats: dict[str, int] = field(default_factory=dict)

    @property
    def ticks_per_s(self) -> float:
        return self.ticks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def incomplete(self) -> bool:
        rr = self.read_report
        return bool(self.gaps or rr.crc_errors or rr.torn or rr.damage)

    @property
    def damaged(self) -> list[str]:
        """Why the recording itself fails verification (damage, lost records), if it does."""
        return list(self.check.errors) if self.check is not None else []

    @property
    def verified(self) -> bool:
        return self.compared > 0 and self.mismatched == 0


# ---- locating and loading a session --------------------------------------------------


def resolve_session(session: str | Path, data_dir: str | Path = "data") -> Path:
    """A session directory, or a session name under ``<data_dir>/blackbox/``."""
    path = Path(session)
    if path.is_dir():
        return path
    candidate = Path(data_dir) / "blackbox" / str(session)
    if candidate.is_dir():
        return candidate
    root = Path(data_dir) / "blackbox"
    known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    hint = f"sessions under {root}: {', '.join(known[-10:])}" if known else f"no sessions in {root}"
    raise ReplayError(f"session {session!r} not found as a directory or under {root} ({hint})")


def _read_manifest(session_dir: Path) -> dict[str, Any] | None:
    manifest, error = read_manifest(session_dir)
    if error is not None:
        raise ReplayError(f"{session_dir}: {error}; move it aside to replay")
    return manifest


def _load_config(
    manifest: dict[str, Any] | None, messages: list[Message], session_dir: Path
) -> tuple[Config, str]:
    """The session's Config, exactly: the manifest's, else the first ``session`` message's."""
    if manifest is not None and manifest.get("config_json") is not None:
        raw = manifest["config_json"]
        try:
            if isinstance(raw, str | bytes):
                cfg = msgspec.json.decode(raw, type=Config)
            else:
                cfg = msgspec.convert(raw, Config)
        except msgspec.ValidationError as exc:
            raise ReplayError(
                f"{session_dir}/manifest.json: config_json is not a Config: {exc}"
            ) from None
        return cfg, str(manifest.get("session_id", session_dir.name))
    for message in messages:
        if message.topic == TOPIC_SESSION:
            try:
                info = _decode_session(message.payload)
            except ProtocolError as exc:
                raise ReplayError(f"{session_dir}: {exc}") from None
            try:
                cfg = msgspec.json.decode(info.config_json, type=Config)
            except msgspec.ValidationError as exc:
                raise ReplayError(
                    f"{session_dir}: session message's config is not a Config: {exc}"
                ) from None
            return cfg, info.session_id
    raise ReplayError(
        f"{session_dir}: no config to replay with (no manifest.json with config_json and no "
        "'session' message in the segments)"
    )


def _manifest_gaps(manifest: dict[str, Any] | None) -> list[Gap]:
    gaps = []
    for g in (manifest or {}).get("gaps") or ():
        try:
            gaps.append(Gap(int(g["after_seq"]), int(g["missed"]), "manifest"))
        except (KeyError, TypeError, ValueError):
            gaps.append(Gap(-1, -1, "manifest"))
    return gaps


# ---- the replay ---------------------------------------------------------------------


_decode_tick = decoder_for(TOPIC_TICK, TickRecord)
_decode_feed = decoder_for(TOPIC_FEED, FeedEvent)
_decode_control = decoder_for(TOPIC_CONTROL, ControlEvent)
_decode_state = decoder_for(TOPIC_STATE, GovernanceState)
_decode_report = decoder_for(TOPIC_EXEC, ExecutionReport)
_decode_recon = decoder_for(TOPIC_RECON, Reconciliation)
_decode_session = decoder_for(TOPIC_SESSION, SessionInfo)


def _restore_governance_state(messages: Sequence[Message], state_dir: Path) -> str:
    """Write the session's recorded governance stores into ``state_dir`` (the first
    ``state`` record, right after the session record); "recorded" or "empty"."""
    for message in messages[:16]:  # it is published second; look a little further
        if message.topic == TOPIC_STATE:
            try:
                state = _decode_state(message.payload)
            except ProtocolError:
                return "empty"
            for name, image in state.files.items():
                if "/" in name or name.startswith("."):
                    raise ReplayError(f"state record names a file outside its dir: {name!r}")
                restore_image(state_dir / name, image)
            return "recorded"
    return "empty"


def replay_session(
    session_dir: str | Path,
    verify: bool = False,
    collect: bool = False,
    progress: bool = False,
) -> ReplayResult:
    """Replay a session offline through a fresh Engine; see the module docstring.

    ``collect`` keeps every replayed decision (for export); ``progress`` shows a tqdm bar
    on stderr.
    """
    session_dir = Path(session_dir)
    if not session_dir.is_dir():
        raise ReplayError(f"{session_dir} is not a session directory")
    check = check_session(session_dir, keep_messages=True)
    messages, report = check.messages, check.report
    if not messages:
        problems = "; ".join(check.errors)
        raise ReplayError(
            f"{session_dir}: no readable black-box records"
            + (f" ({problems})" if problems else " (no seg-*.chbb segments?)")
        )
    manifest = _read_manifest(session_dir)
    cfg, session_id = _load_config(manifest, messages, session_dir)
    result = ReplayResult(session_dir, session_id, cfg, read_report=report, check=check)
    result.gaps = _manifest_gaps(manifest)

    warm_up_kernels()  # load/compile the numba kernels outside the timed loop
    now = [0]
    # Governance starts from the stores the live session started with (its ``state``
    # record: genome, meta-risk, approvals); a session recorded before that record existed
    # starts from empty state. A halt loaded at start is also in the recording as a
    # control event, and is re-applied from there.
    state_dir = Path(tempfile.mkdtemp(prefix="chimera-replay-governance-"))
    result.governance_state = _restore_governance_state(messages, state_dir)
    # The node as the composition root builds it for live, without the router: what the
    # router did is in the recording (exec records), applied as reports below.
    parts = build_parts(cfg, {}, state_dir=state_dir, with_router=False)
    node = build_node(cfg, parts, clock=lambda: now[0])
    engine = node.engine
    # The router-less node runs a frame as live does (step, publish, per-bar work) and
    # drops the commands the engine queues: what the router did is in the exec records.
    on_frame = node.on_frame
    encode = msgspec.msgpack.encode
    replace = msgspec.structs.replace
    decode_tick = _decode_tick
    rows = result.rows
    seen_gaps: list[Gap] = []
    last_seq = 0
    ticks = decisions = compared = identical = mismatched = 0
    divergence: Divergence | None = None

    iterable: Iterable[Message] = messages
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(messages, total=len(messages), unit="msg", file=sys.stderr, mininterval=0.5)
        iterable = bar
    result.undecodable = check.malformed  # records without a telemetry header
    started = time.perf_counter()
    for index, message in enumerate(iterable):
        topic, seq, payload = message.topic, message.seq, message.payload
        # A jump is a gap (from 0: the recording started late); a step back is a
        # repeated/reordered record, replayed where it was written.
        if seq > last_seq + 1:
            seen_gaps.append(Gap(last_seq, seq - last_seq - 1, "segments"))
        last_seq = max(last_seq, seq)
        if topic == TOPIC_RAW or topic.startswith(TOPIC_TICK):
            try:
                rec = decode_tick(payload)
            except ProtocolError:
                result.undecodable += 1
                continue
            recv_ns = rec.recv_ns
            now[0] = recv_ns
            d = on_frame(rec.frame, recv_ns)
            ticks += 1
            recorded = rec.decision
            if d is not None:
                decisions += 1
                if collect:
                    rows.append((d, recorded.decided_ns if recorded is not None else 0))
            if verify:
                compared += 1
                if (d is None and recorded is None) or (
                    d is not None
                    and recorded is not None
                    and encode(replace(d, decided_ns=0)) == encode(replace(recorded, decided_ns=0))
                ):
                    identical += 1
                else:
                    mismatched += 1
                    if divergence is None:
                        divergence = Divergence(
                            index, seq, topic.decode(errors="replace"), recorded, d,
                            diff_decisions(recorded, d),
                        )  # fmt: skip
        elif topic == TOPIC_FEED:
            try:
                ev = _decode_feed(payload)
            except ProtocolError:
                result.undecodable += 1
                continue
            engine.on_feed_state(ev.connected)
            result.feed_events += 1
        elif topic == TOPIC_CONTROL:
            try:
                cev = _decode_control(payload)
            except ProtocolError:
                result.undecodable += 1
                continue
            if cev.ok and (cev.arg.startswith(DECIDED_BY_HUMAN) or cev.command == Command.ROLLBACK):
                # A proposal a human decided, or an operator's rollback: the genome from the
                # recorded result (with the version number the engine gave it), not from an
                # approval queue or a history this replay may not hold; a rejection changes
                # no decision.
                if _replay_promotion(parts.governance, cev):
                    result.control_applied += 1
            elif cev.ok and cev.command in REPLAYED_COMMANDS:
                node.on_control(cev.command, cev.arg, cev.by)
                result.control_applied += 1
        elif topic == TOPIC_EXEC:
            try:
                rep = _decode_report(payload)
            except ProtocolError:
                result.undecodable += 1
                continue
            node.on_report(rep)
            result.reports_applied += 1
        elif topic == TOPIC_RECON:
            try:
                recon = _decode_recon(payload)
            except ProtocolError:
                result.undecodable += 1
                continue
            engine.on_reconciled(recon)
        # session / health / unknown topics carry no engine input.
    result.elapsed_s = time.perf_counter() - started
    if bar is not None:
        bar.close()
    # Segment-detected gaps the manifest already lists are not reported twice.
    listed = {(g.after_seq, g.missed) for g in result.gaps}
    result.gaps.extend(g for g in seen_gaps if (g.after_seq, g.missed) not in listed)
    result.messages = len(messages)
    result.ticks = ticks
    result.decisions = decisions
    result.compared = compared
    result.identical = identical
    result.mismatched = mismatched
    result.divergence = divergence
    result.engine_stats = engine.stats.as_dict()
    parts.close()
    shutil.rmtree(state_dir, ignore_errors=True)
    return result


def _replay_promotion(governance: GovernancePipeline | None, cev: ControlEvent) -> bool:
    """Put a recorded promotion's (or an operator rollback's) genome in force again."""
    if governance is None or cev.command not in (Command.APPROVE, Command.ROLLBACK):
        return False
    try:
        result = msgspec.json.decode(cev.result)
    except msgspec.DecodeError:
        return False
    if not isinstance(result, dict) or not isinstance(result.get("params"), dict):
        return False
    params = {str(k): float(v) for k, v in result["params"].items()}
    version = result.get("version")
    governance.activate_genome(
        str(result.get("family", "default")), params, "replay:" + cev.arg,
        version=int(version) if isinstance(version, int) else None,
    )  # fmt: skip
    return True


# ---- diffs --------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``msgspec.to_builtins`` flattened to paths: ``physics.energy``, ``transitions[0].event``."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list | tuple):
        if not obj:
            out[prefix] = []
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return type(a) is type(b) and a == b


def _flat_decision(d: Decision | None) -> dict[str, Any]:
    if d is None:
        return {"decision": None}
    flat = flatten(msgspec.to_builtins(d))
    flat.pop("decided_ns", None)  # wall latency stamp: never compared
    return flat


def diff_decisions(
    recorded: Decision | None, replayed: Decision | None
) -> list[tuple[str, Any, Any]]:
    """Field paths that differ (decided_ns ignored), in the recorded record's field order."""
    a, b = _flat_decision(recorded), _flat_decision(replayed)
    missing = object()
    out = []
    for path in [*a, *(p for p in b if p not in a)]:
        va, vb = a.get(path, missing), b.get(path, missing)
        if va is missing or vb is missing or not _same(va, vb):
            out.append((path, None if va is missing else va, None if vb is missing else vb))
    return out


def format_divergence(div: Divergence) -> str:
    lines = [
        f"DIVERGENCE at message #{div.index} (publisher seq {div.seq}, topic {div.topic})",
        "differing fields (recorded | replayed):",
    ]
    lines += [f"  {path}: {a!r} | {b!r}" for path, a, b in div.fields]
    a, b = _flat_decision(div.recorded), _flat_decision(div.replayed)
    paths = [*a, *(p for p in b if p not in a)]
    differing = {p for p, _, _ in div.fields}
    width = max((len(p) for p in paths), default=10)
    col = max((len(repr(a.get(p, ""))) for p in paths), default=10)
    col = min(max(col, len("recorded")), 48)
    lines.append("records side by side:")
    lines.append(f"  {'field':<{width}}  {'recorded':<{col}}  replayed")
    for p in paths:
        mark = "!" if p in differing else " "
        ra = repr(a[p]) if p in a else "-"
        rb = repr(b[p]) if p in b else "-"
        lines.append(f"{mark} {p:<{width}}  {ra:<{col}}  {rb}")
    return "\n".join(lines)


# ---- export -------------------------------------------------------------------------


def decision_row(d: Decision, recorded_decided_ns: int) -> tuple[Any, ...]:
    p = d.physics
    it = d.intent
    return (
        d.seq, d.token, d.exchange_ts_ms, d.tick_sequence, d.bar_start_ms, p.close, p.energy,
        p.z, p.structure.value, p.band.value, p.band_mean, p.band_std, p.volatility, p.atr,
        d.signal.direction, d.signal.reason, d.state,
        ";".join(f"{t.from_state}->{t.to_state}:{t.event}" for t in d.transitions),
        it.client_order_id if it else "", it.side.value if it else "", it.qty if it else 0,
        d.confidence, d.feed_stale, d.recv_ns, recorded_decided_ns,
    )  # fmt: skip


def export_csv(rows: list[tuple[Decision, int]], out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(EXPORT_COLUMNS)
        for d, decided in rows:
            w.writerow(decision_row(d, decided))
    return len(rows)


def export_parquet(rows: list[tuple[Decision, int]], out: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    i64, f64, s, b = pa.int64(), pa.float64(), pa.string(), pa.bool_()
    types = (
        i64, s, i64, i64, i64, f64, f64, f64, s, s, f64, f64, f64, f64, i64, s, s, s, s, s, i64,
        f64, b, i64, i64,
    )  # fmt: skip
    schema = pa.schema(list(zip(EXPORT_COLUMNS, types, strict=True)))
    columns = list(zip(*(decision_row(d, dec) for d, dec in rows), strict=True)) if rows else []
    arrays = [pa.array(list(columns[i]) if columns else [], type=t) for i, t in enumerate(types)]
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), out)
    return len(rows)


# ---- --speed: re-serve through the simulator --------------------------------------


def session_frames(session_dir: Path) -> list[tuple[int, bytes]]:
    """Every recorded frame (kept or dropped by the engine) with its receive time, in order."""
    out = []
    for message in read_session(session_dir):
        if message.carries_frame:
            try:
                rec = _decode_tick(message.payload)
            except ProtocolError:
                continue
            out.append((rec.recv_ns, rec.frame))
    return out


def serve_rate(frames: list[tuple[int, bytes]], speed: float) -> float:
    """Constant rate approximating the recorded pacing × speed; 0 (flood) if no duration."""
    if len(frames) < 2:
        return 0.0
    duration_ns = frames[-1][0] - frames[0][0]
    if duration_ns <= 0:
        return 0.0
    return len(frames) / (duration_ns / 1e9) * speed


async def serve_session(
    session_dir: str | Path,
    speed: float,
    host: str = "127.0.0.1",
    port: int = 8765,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str, float, int], Any] | None = None,
) -> int:
    """Serve the session's frames through ``ExchangeSimulator`` until the replay is done
    (and every queued frame is sent) or ``stop`` is set. Returns frames sent to clients.
    ``on_ready(url, rate, frames)`` is called once the server listens."""
    from chimera_core.tickfile import TickFileWriter
    from tools.sim.server import ExchangeSimulator

    frames = session_frames(Path(session_dir))
    if not frames:
        raise ReplayError(f"{session_dir}: no recorded frames to serve")
    rate = serve_rate(frames, speed)
    stop = stop or asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="chimera-replay-") as tmp:
        tickfile = Path(tmp) / "session.chtick"
        with TickFileWriter(tickfile) as w:
            for recv_ns, frame in frames:
                w.write(recv_ns, frame)
        sim = ExchangeSimulator(host=host, port=port, replay=tickfile, rate=rate)
        await sim.start()
        try:
            if on_ready is not None:
                on_ready(sim.url, rate, len(frames))
            done = asyncio.ensure_future(sim.replay_done.wait())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({done, stopped}, return_when=asyncio.FIRST_COMPLETED)
            done.cancel()
            stopped.cancel()
            # The schedule is done; let the clients' writers drain their queues.
            last = -1
            while not stop.is_set() and sim.frames_sent != last:
                last = sim.frames_sent
                await asyncio.sleep(0.2)
        finally:
            await sim.stop()
    return sim.frames_sent


# ---- command line -----------------------------------------------------------------


def _speed(text: str) -> float:
    raw = text.strip().lower().removesuffix("x")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a speed like 1x or 10x, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"speed must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera replay",
        description="Replay a black-box session through the engine (offline), verify it, "
        "export its decisions, or re-serve it through the simulator (--speed).",
    )
    p.add_argument("session", help="session directory, or a session name under DATA_DIR/blackbox/")
    p.add_argument("--verify", action="store_true", help="diff replayed vs recorded decisions")
    p.add_argument("--speed", type=_speed, metavar="Nx", help="serve the frames via the simulator")
    p.add_argument("--export", choices=("csv", "parquet"), help="write replayed decisions")
    p.add_argument("--out", type=Path, help="export path (default SESSION/decisions.EXT)")
    p.add_argument("--data-dir", default="data", help="where blackbox/ lives (default data)")
    p.add_argument("--host", default="127.0.0.1", help="--speed: simulator host")
    p.add_argument("--port", type=int, default=8765, help="--speed: simulator port (0 = any)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _warn(text: str) -> None:
    print(f"WARNING: {text}", file=sys.stderr)


def _describe_gaps(result: ReplayResult) -> str:
    parts = [
        f"after seq {g.after_seq}: {g.missed} missed ({g.source})" if g.missed >= 0 else
        f"unparseable gap entry ({g.source})"
        for g in result.gaps[:5]
    ]  # fmt: skip
    rr = result.read_report
    if rr.crc_errors:
        parts.append(f"{len(rr.crc_errors)} CRC-damaged records skipped")
    if rr.torn:
        parts.append(f"torn tail(s) at {', '.join(rr.torn)}")
    if rr.damage:
        parts.append(f"{len(rr.damage)} damaged region(s) skipped")
    more = f" (+{len(result.gaps) - 5} more gaps)" if len(result.gaps) > 5 else ""
    return "; ".join(parts) + more


def _run_speed(args: argparse.Namespace, session_dir: Path) -> int:
    stop = asyncio.Event()

    def ready(url: str, rate: float, frames: int) -> None:
        pace = f"{rate:,.0f} frames/s" if rate else "as fast as clients read (flood)"
        print(
            f"serving {frames} frames of {session_dir.name} at {pace} "
            f"({args.speed:g}x the recorded mean pace)\n"
            f'connect with feed.url = "{url}" (chimera live); '
            "the replay starts at the first subscription. Ctrl-C stops.",
            flush=True,
        )

    async def run() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await serve_session(session_dir, args.speed, args.host, args.port, stop, ready)

    sent = asyncio.run(run())
    print(f"replay served: {sent} frames sent")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from chimera_core.logging import configure_logging

    # The engine logs every dropped frame; a replay re-drops them all, so only errors.
    configure_logging("ERROR")
    try:
        session_dir = resolve_session(args.session, args.data_dir)
        if args.speed is not None:
            if args.verify or args.export:
                parser.error("--speed serves the session live; run --verify/--export separately")
            return _run_speed(args, session_dir)
        progress = not args.quiet and sys.stderr.isatty()
        result = replay_session(
            session_dir, verify=args.verify, collect=args.export is not None, progress=progress
        )
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.incomplete:
        _warn(
            f"session {result.session_id} is INCOMPLETE ({_describe_gaps(result)}): a replay "
            "across a gap cannot be exact; only a divergence-free verify shows the lost "
            "messages carried no engine input"
        )
    if result.undecodable:
        _warn(f"{result.undecodable} records could not be decoded and were skipped")
    for problem in result.damaged:
        _warn(f"recording damaged: {problem}")
    print(
        f"replayed session {result.session_id}: {result.messages} messages, {result.ticks} "
        f"ticks, {result.decisions} decisions, {result.feed_events} feed events, "
        f"{result.control_applied} operator commands, {result.reports_applied} execution "
        f"reports, governance from {result.governance_state} state, in "
        f"{result.elapsed_s:.3f} s = "
        f"{result.ticks_per_s:,.0f} ticks/s (Engine.on_frame per tick"
        + (", with verify)" if args.verify else ")")
    )
    if args.export:
        out = args.out or session_dir / f"decisions.{args.export}"
        n = (export_csv if args.export == "csv" else export_parquet)(result.rows, out)
        print(f"exported {n} decisions to {out}")
    if not args.verify:
        return 0
    if result.damaged:
        # A replay that matches what could be read proves nothing about what was lost.
        lost = result.check.lost if result.check is not None else 0
        print(
            f"VERIFY FAILED: the recording is damaged ({len(result.damaged)} problem(s)"
            + (f", {lost} record(s) lost" if lost else "")
            + f"): {result.damaged[0]}"
            + (
                f"; the {result.compared} readable tick records replay "
                + ("identically" if result.divergence is None else "with a divergence")
            )
        )
        return 1
    if result.divergence is not None:
        print(format_divergence(result.divergence))
        gap_note = " (the session has gaps; one may precede it)" if result.incomplete else ""
        print(
            f"VERIFY FAILED: {result.mismatched} of {result.compared} tick records differ"
            f"{gap_note}; first at message #{result.divergence.index} "
            f"(seq {result.divergence.seq})"
        )
        return 1
    if result.compared == 0:
        print("VERIFY FAILED: the session holds no tick records to compare")
        return 1
    print(
        f"VERIFY OK: {result.compared} tick records compared ({result.decisions} decisions, "
        f"{result.compared - result.decisions} dropped frames), {result.identical} identical "
        f"(100%), decided_ns ignored; {result.ticks_per_s:,.0f} ticks/s"
        + (" — despite the gaps above" if result.incomplete else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
