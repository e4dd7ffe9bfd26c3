"""Reading telemetry: a recorded session as parsed messages, its verdict against the
manifest, and payload decoding by topic for live SUB messages.

Every reader of telemetry (recorder, replay, backtest, doctor, metrics, cortex) goes through
here and ``codec``: ``read_session`` (or ``check_session(..., keep_messages=True)``) for a
black-box session, ``parse`` and a ``TopicDecoder`` (or one ``decoder_for``) for a message
off the SUB socket. Views for the common partial decodes live here too (``TickView``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from chimera_core.contracts import Decision
from chimera_core.errors import ProtocolError
from chimera_core.telemetry.blackbox import ReadReport, iter_session, segments
from chimera_core.telemetry.codec import (
    PAYLOAD_TYPES,
    Message,
    PayloadDecoder,
    decoder_for,
    parse,
)


class TickView(msgspec.Struct, array_like=True, gc=False):
    """A TickRecord with its feed frame skipped (never copied into bytes): for readers that
    want the decision and the receive time only."""

    recv_ns: int
    frame: msgspec.Raw
    decision: Decision | None


def read_session(session_dir: Path, report: ReadReport | None = None) -> Iterator[Message]:
    """Every message of a recorded session, in write order, header parsed, payload not
    decoded (``message.decode()`` or a ``decoder_for`` does that). Damage is reported in
    ``report`` and never raised; records without a telemetry header are counted in
    ``report.malformed`` and skipped."""
    report = report if report is not None else ReadReport()
    for body in iter_session(Path(session_dir), report):
        try:
            yield parse(body)
        except ProtocolError:
            report.malformed += 1


class TopicDecoder:
    """Decode any known topic's payload, some kinds as views (``views={TOPIC_TICK: V}``;
    ``tick.*`` topics are all of kind TOPIC_TICK, ``raw`` is its own kind).

    ``decode(message)`` raises ProtocolError on an unknown topic or a bad payload.
    """

    def __init__(self, views: Mapping[bytes, type[Any]] | None = None) -> None:
        views = dict(views or {})
        unknown = sorted(k for k in views if k not in PAYLOAD_TYPES)
        if unknown:
            raise ProtocolError(
                f"views for unknown telemetry topic kinds {unknown} (known: "
                + ", ".join(repr(k) for k in PAYLOAD_TYPES)
                + ")"
            )
        self._by_kind: dict[bytes, PayloadDecoder[Any]] = {
            kind: decoder_for(kind, views[kind]) if kind in views else decoder_for(kind)
            for kind in PAYLOAD_TYPES
        }

    def decode(self, message: Message) -> Any:
        dec = self._by_kind.get(message.kind)
        if dec is None:
            return message.decode()  # raises the unknown-topic error
        return dec(message.payload)


# ---- checking a session against its manifest ------------------------------------------


@dataclass
class SessionCheck:
    """A session read back and compared with its manifest.

    ``errors`` make the session fail verification (damage, lost records, records of another
    engine run); ``notes`` do not (publisher gaps the recorder saw, a torn tail after an
    unclean stop, a missing manifest).
    """

    session_dir: Path
    report: ReadReport
    manifest: dict[str, Any] | None
    segments: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_seq: int | None = None
    last_seq: int | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (after seq, missed)
    steps_back: list[tuple[int, int, int]] = field(default_factory=list)  # (index, prev, seq)
    malformed: int = 0
    expected: int | None = None  # records the manifest says were written
    lost: int = 0  # records the manifest counts that could not be read back
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # with keep_messages=True

    @property
    def ok(self) -> bool:
        return not self.errors


def read_manifest(session_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), (None, None) when there is none, or (None, why it is unreadable)."""
    path = Path(session_dir) / "manifest.json"
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, f"{path.name} is unreadable ({exc})"
    if not isinstance(manifest, dict):
        return None, f"{path.name} is not a JSON object"
    return manifest, None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_session(session_dir: Path, keep_messages: bool = False) -> SessionCheck:
    """Read every record of a session and judge it against its manifest (see SessionCheck).

    A torn tail is harmless only at the end of the last segment of a session whose
    recorder did not stop cleanly (manifest ``complete`` false, or no manifest); anywhere
    else it is damage. Fewer records than the manifest says were written is a loss, counted.
    ``keep_messages`` keeps every parsed message in ``messages`` (replay reads them once).
    """
    session_dir = Path(session_dir)
    report = ReadReport()
    manifest, manifest_error = read_manifest(session_dir)
    segs = segments(session_dir)
    check = SessionCheck(session_dir, report, manifest, segments=len(segs))
    counts = check.counts
    keep = check.messages.append if keep_messages else None
    prev = 0
    for message in read_session(session_dir, report):
        if keep is not None:
            keep(message)
        seq = message.seq
        key = message.topic.decode("ascii", "replace")
        counts[key] = counts.get(key, 0) + 1
        if prev and seq > prev + 1:
            check.gaps.append((prev, seq - prev - 1))
        elif prev and seq <= prev:
            check.steps_back.append((report.records, prev, seq))
        prev = seq
        check.first_seq = seq if check.first_seq is None else check.first_seq
        check.last_seq = seq
    check.malformed = report.malformed

    errors, notes = check.errors, check.notes
    errors += [f"damage: {d}" for d in report.damage]
    errors += [f"crc mismatch at {where}" for where in report.crc_errors]
    complete = manifest.get("complete") if manifest is not None else None
    last_segment = segs[-1].name if segs else ""
    for where in report.torn:
        if not where.startswith(last_segment + "@"):
            errors.append(
                f"damage: record cut short at {where}, which is not the end of the last "
                "segment (a crash only ever tears the end of the last segment)"
            )
        elif complete is True:
            errors.append(
                f"damage: record cut short at {where}, but the recorder stopped this session "
                "cleanly (the file was truncated or damaged afterwards)"
            )
        else:
            notes.append(
                f"torn tail at {where}: the recorder did not stop cleanly (a crash leaves "
                "this); the records before it are intact"
            )
    for i, (at, before, seq) in enumerate(check.steps_back):
        if i == 3:
            errors.append(f"... {len(check.steps_back) - 3} more sequence steps back")
            break
        errors.append(
            f"sequence goes back from {before} to {seq} at record #{at}: messages of another "
            "engine run are filed in this session"
        )
    if manifest_error is not None:
        errors.append(f"manifest: {manifest_error}")
    elif manifest is None:
        notes.append("no manifest.json: records cannot be checked against what was written")
    else:
        _compare_manifest(check, manifest, complete)
    if check.first_seq is not None and check.first_seq > 1:
        notes.append(
            f"the session's first {check.first_seq - 1} message(s) were not recorded "
            f"(first recorded seq {check.first_seq})"
        )
    seen = _manifest_gaps(manifest)
    write_lost = _int_or_none((manifest or {}).get("records_lost")) or 0
    for after, missed in check.gaps:
        # The manifest lists what the publisher dropped, and counts what the recorder could
        # not write; any other gap is lost from the files.
        lost_here = manifest is not None and (after, missed) not in seen and not write_lost
        where = " (not in the manifest: lost from the files)" if lost_here else ""
        notes.append(f"gap after seq {after}: {missed} missed{where}")
    return check


def _manifest_gaps(manifest: dict[str, Any] | None) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for g in (manifest or {}).get("gaps") or ():
        if isinstance(g, dict):
            after, missed = _int_or_none(g.get("after_seq")), _int_or_none(g.get("missed"))
            if after is not None and missed is not None:
                out.add((after, missed))
    return out


def _compare_manifest(check: SessionCheck, manifest: dict[str, Any], complete: Any) -> None:
    read = check.report.records
    expected = _int_or_none(manifest.get("records"))
    check.expected = expected
    if expected is None:
        check.notes.append("manifest has no record count: cannot check for lost records")
        return
    if read < expected:
        check.lost = expected - read
        check.errors.append(
            f"{check.lost} record(s) lost: the manifest says {expected} were written, "
            f"{read} could be read back"
        )
    elif read > expected and complete is True:
        check.errors.append(
            f"{read - expected} record(s) more than the {expected} the manifest says were "
            "written (records appended after the recorder closed the session?)"
        )
    write_lost = _int_or_none(manifest.get("records_lost")) or 0
    if write_lost:
        check.notes.append(
            f"{write_lost} message(s) were received but could not be written "
            f"({manifest.get('write_error') or 'write failure'})"
        )
    last = _int_or_none(manifest.get("last_seq"))
    if (
        complete is True
        and not write_lost
        and last is not None
        and check.last_seq is not None
        and check.last_seq != last
        and not check.lost
    ):
        check.errors.append(
            f"last record has seq {check.last_seq}, the manifest says {last}: the end of "
            "the session is missing or foreign"
        )
