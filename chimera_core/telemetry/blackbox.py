"""The black box on disk: append-only segment files of telemetry messages, each record
length-prefixed with a CRC32.

Layout: ``data/blackbox/<session>/manifest.json`` and ``seg-000001.chbb``, ``seg-000002.chbb``…
A segment starts with an 8-byte magic; each record is ``<II`` (body length, CRC32 of body)
followed by the body, which is one telemetry message exactly as published
(``topic NUL seq payload``, see ``codec``). Reading never raises on damage: a torn last
record (a crash mid-write) is reported and skipped, a broken frame elsewhere is reported and
reading resumes at the next intact record. Judging a session against its manifest, and
reading it as parsed messages, is ``reader``'s.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

MAGIC = b"CHBBOX1\n"
RECORD = struct.Struct("<II")
MAX_RECORD = 16 << 20
SEGMENT_GLOB = "seg-*.chbb"


def segment_name(index: int) -> str:
    return f"seg-{index:06d}.chbb"


def segments(session_dir: Path) -> list[Path]:
    return sorted(Path(session_dir).glob(SEGMENT_GLOB))


DIR_MODE = 0o700  # the black box holds the account's whole trading history
FILE_MODE = 0o600
FLUSH_BYTES = 256 << 10  # buffered records go to the OS past this much, or on flush()


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` whose new directories (and ``path`` itself) are 0700 whatever the umask."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for d in [*missing, path]:
        os.chmod(d, DIR_MODE)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """A file descriptor on ``path``, created 0600 (an existing file is made 0600 too)."""
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class SegmentWriter:
    """Appends records; rotates to a new segment past ``max_segment_bytes``.

    Records are buffered here and go to the OS on ``flush()`` (or past FLUSH_BYTES);
    ``sync()`` also fsyncs (the recorder calls it on a timer). A write that fails (a full
    disk: ENOSPC, a file size limit: EFBIG, EIO) never raises: the file is cut back to its
    last whole record, the records that did not make it are counted in ``lost``, and the
    next flush tries again, so writing resumes by itself when space returns.
    ``records`` counts records in the files (flushed), ``pending`` those still buffered.
    """

    def __init__(self, session_dir: Path, max_segment_bytes: int = 64 << 20) -> None:
        self.session_dir = Path(session_dir)
        make_private_dir(self.session_dir)
        self.max_segment_bytes = max_segment_bytes
        existing = segments(self.session_dir)
        self.index = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        self.records = 0
        self.pending = 0
        self.lost = 0  # records that could not be written
        self.failures = 0  # failed flushes
        self.failing = False
        self.last_error = ""
        self._fd: int | None = None
        self._closed = False
        self._size = 0  # bytes of the current segment in the file
        self._buf = bytearray()

    def _segment_path(self) -> Path:
        return self.session_dir / segment_name(self.index)

    def write(self, body: bytes) -> None:
        assert not self._closed, "writer is closed"
        used = (self._size or len(MAGIC)) + len(self._buf)
        if used + RECORD.size + len(body) > self.max_segment_bytes and used > len(MAGIC):
            self.rotate()
        self._buf += RECORD.pack(len(body), zlib.crc32(body))
        self._buf += body
        self.pending += 1
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()

    def rotate(self) -> None:
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._size = 0
            self.index += 1

    def flush(self) -> bool:
        """Buffered records to the OS; False (and counted, logged) when the write failed."""
        if not self._buf:
            return True
        try:
            if self._fd is None:
                self._fd = open_private(self._segment_path())
                self._size = 0
            data = bytes(self._buf) if self._size else MAGIC + bytes(self._buf)
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(data)
        self.records += self.pending
        self.pending = 0
        self._buf.clear()
        if self.failing:
            self.failing = False
            log.warning("recorder_write_resumed", segment=str(self._segment_path()), lost=self.lost)
        return True

    def _failed(self, exc: OSError) -> None:
        lost, self.pending = self.pending, 0
        self._buf.clear()
        self.lost += lost
        self.failures += 1
        self.last_error = f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror}"
        if self._fd is not None:
            try:  # no partial record left behind: the file ends on a whole record again
                if self._size:
                    os.ftruncate(self._fd, self._size)
                else:  # a segment without even its magic is no segment: start it again later
                    os.close(self._fd)
                    self._fd = None
                    self._segment_path().unlink(missing_ok=True)
            except OSError:
                pass
        if not self.failing or self.failures % 100 == 0:
            log.error(
                "recorder_write_failed",
                segment=str(self._segment_path()),
                error=self.last_error,
                records_lost=self.lost,
                hint="free space under the data dir; writing resumes by itself",
            )
        self.failing = True

    def sync(self) -> bool:
        ok = self.flush()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failures += 1
                self.last_error = f"fsync: {exc.strerror}"
                log.error("recorder_write_failed", op="fsync", error=self.last_error)
                return False
        return ok

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._closed = True


@dataclass
class ReadReport:
    """What a read of a session found, per segment: records read, bad CRCs, torn tails
    (a record cut short at the very end of a segment: what a crash mid-write leaves) and
    damage (framing broken anywhere else: a bad length prefix, zero fill, a missing magic
    header, an unreadable tail). Whether a torn tail is harmless depends on where it is and
    how the session ended; ``check_session`` decides that."""

    records: int = 0
    crc_errors: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    damage: list[str] = field(default_factory=list)
    malformed: int = 0  # intact records without a telemetry header (reader.read_session)

    @property
    def ok(self) -> bool:
        return not self.crc_errors and not self.damage


# A body is one telemetry message, ``topic NUL seq(8) payload``: never shorter than this.
# (A zero-filled header would otherwise read as a valid empty record: crc32(b"") == 0.)
MIN_BODY = 1 + 1 + 8
# Where a record body could start when hunting for the next intact record after damage:
# a lowercase topic name followed by NUL (overlapping matches: every start is tried).
_BODY_START = re.compile(rb"(?=[a-z][a-z0-9._-]{0,63}\x00)")


def _record_at(data: bytes, pos: int, end: int) -> int:
    """Length of the intact record (plausible length, matching CRC) at ``pos``, else -1."""
    if end - pos < RECORD.size + MIN_BODY:
        return -1
    length, crc = RECORD.unpack_from(data, pos)
    start = pos + RECORD.size
    if length < MIN_BODY or length > MAX_RECORD or start + length > end:
        return -1
    return length if zlib.crc32(data[start : start + length]) == crc else -1


def _resync(data: bytes, pos: int, end: int) -> int | None:
    """Offset of the next intact record at or after ``pos`` (None: nothing readable left).
    A false match needs a plausible length and a 32-bit CRC to agree by chance."""
    for m in _BODY_START.finditer(data, pos + RECORD.size):
        candidate = m.start() - RECORD.size
        if _record_at(data, candidate, end) >= 0:
            return candidate
    return None


def iter_segment(path: Path, report: ReadReport | None = None) -> Iterator[bytes]:
    """Record bodies of one segment, never raising on damage: every problem is reported.

    A bad CRC whose length prefix still frames an intact next record skips that record;
    any other break (bad length, zero fill, no magic) resumes at the next intact record
    and is damage. Unreadable bytes running to the end are a torn tail only when they look
    like one record cut short; zeros or anything else are damage.
    """
    report = report if report is not None else ReadReport()
    path = Path(path)
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.damage.append(f"{name}: unreadable ({exc.strerror or exc})")
        log.warning("blackbox_damage", segment=str(path), error=str(exc))
        return
    end = len(data)
    pos = len(MAGIC)
    if end < pos and MAGIC.startswith(data):
        # Killed between opening a segment and its first write (the header is written with
        # the first records): nothing was in it, as with a torn tail.
        report.torn.append(f"{name}@{end}")
        log.warning("blackbox_torn_tail", segment=str(path), offset=end, length=0)
        return
    if not data.startswith(MAGIC):
        first = _resync(data, 0, end)
        where = f"records resume at @{first}" if first is not None else "no readable record in it"
        report.damage.append(
            f"{name}: no {MAGIC!r} magic header: not a Chimera black-box segment, or its "
            f"first bytes are damaged ({where})"
        )
        log.warning("blackbox_damage", segment=str(path), offset=0, kind="no_magic")
        if first is None:
            return
        pos = first
    while pos < end:
        length = _record_at(data, pos, end)
        start = pos + RECORD.size
        if length >= 0:
            report.records += 1
            pos = start + length
            yield data[start:pos]
            continue
        claimed = RECORD.unpack_from(data, pos)[0] if end - pos >= RECORD.size else -1
        after = start + claimed
        if MIN_BODY <= claimed <= MAX_RECORD and (
            after == end or (after < end and _record_at(data, after, end) >= 0)
        ):
            # The length prefix frames the next record intact: only this body is bad.
            report.crc_errors.append(f"{name}@{pos}")
            log.warning("blackbox_crc_mismatch", segment=str(path), offset=pos)
            pos = after
            continue
        nxt = _resync(data, pos + 1, end)
        if nxt is not None:
            report.damage.append(
                f"{name}@{pos}: broken record framing (length prefix {claimed}); "
                f"{nxt - pos} bytes skipped, reading resumed at @{nxt}"
            )
            log.warning("blackbox_damage", segment=str(path), offset=pos, resumed=nxt)
            pos = nxt
            continue
        if end - pos >= RECORD.size and not data[pos:].strip(b"\x00"):
            report.damage.append(
                f"{name}@{pos}: zero-filled tail ({end - pos} bytes of zeros where records "
                "should be)"
            )
            log.warning("blackbox_damage", segment=str(path), offset=pos, kind="zero_fill")
        elif claimed < 0 or (MIN_BODY <= claimed <= MAX_RECORD and after > end):
            report.torn.append(f"{name}@{pos}")
            log.warning("blackbox_torn_tail", segment=str(path), offset=pos, length=claimed)
        else:
            report.damage.append(
                f"{name}@{pos}: unreadable tail ({end - pos} bytes, length prefix {claimed})"
            )
            log.warning("blackbox_damage", segment=str(path), offset=pos, kind="tail")
        return


def iter_session(session_dir: Path, report: ReadReport | None = None) -> Iterator[bytes]:
    """Every record body of a session, in write order across segments."""
    report = report if report is not None else ReadReport()
    for seg in segments(Path(session_dir)):
        yield from iter_segment(seg, report)
