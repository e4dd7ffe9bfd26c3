"""The black box on disk: append-only segment files of telemetry messages, each record
length-prefixed with a CRC32, plus a session manifest.

Layout: ``data/blackbox/<session>/manifest.json`` and ``seg-000001.chbb``, ``seg-000002.chbb``…
A segment starts with an 8-byte magic; each record is ``<II`` (body length, CRC32 of body)
followed by the body, which is one telemetry message exactly as published
(``topic NUL seq payload``, see chimera_core.telemetry). A torn last record (a crash
mid-write) is reported and skipped on read; nothing before it is lost.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from chimera_core.errors import ProtocolError

log = structlog.get_logger(__name__)

MAGIC = b"CHBBOX1\n"
RECORD = struct.Struct("<II")
MAX_RECORD = 16 << 20
SEGMENT_GLOB = "seg-*.chbb"


def segment_name(index: int) -> str:
    return f"seg-{index:06d}.chbb"


def segments(session_dir: Path) -> list[Path]:
    return sorted(Path(session_dir).glob(SEGMENT_GLOB))


class SegmentWriter:
    """Appends records; rotates to a new segment past ``max_segment_bytes``.

    ``flush()`` pushes to the OS, ``sync()`` also fsyncs (the recorder calls it on a timer).
    """

    def __init__(self, session_dir: Path, max_segment_bytes: int = 64 << 20) -> None:
        self.session_dir = Path(session_dir)
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        existing = segments(self.session_dir)
        self.index = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
        self.records = 0
        self._fh: BinaryIO | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        path = self.session_dir / segment_name(self.index)
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in rotate()/close()
        self._fh.write(MAGIC)
        self._size = len(MAGIC)

    def write(self, body: bytes) -> None:
        fh = self._fh
        assert fh is not None, "writer is closed"
        if self._size + RECORD.size + len(body) > self.max_segment_bytes and self._size > len(
            MAGIC
        ):
            self.rotate()
            fh = self._fh
            assert fh is not None
        fh.write(RECORD.pack(len(body), zlib.crc32(body)))
        fh.write(body)
        self._size += RECORD.size + len(body)
        self.records += 1

    def rotate(self) -> None:
        self.sync()
        assert self._fh is not None
        self._fh.close()
        self.index += 1
        self._open()

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None


@dataclass
class ReadReport:
    """What a read of a session found: records, bad CRCs, torn tails, per segment."""

    records: int = 0
    crc_errors: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.crc_errors


def iter_segment(path: Path, report: ReadReport | None = None) -> Iterator[bytes]:
    """Record bodies of one segment. A bad CRC mid-file is reported and skipped (the length
    prefix still frames the next record); a torn tail ends the segment with a warning."""
    report = report if report is not None else ReadReport()
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ProtocolError(f"{path} is not a Chimera black-box segment (no {MAGIC!r} magic)")
    pos, end = len(MAGIC), len(data)
    while pos < end:
        if end - pos < RECORD.size:
            report.torn.append(f"{path.name}@{pos}")
            log.warning("blackbox_torn_tail", segment=str(path), offset=pos)
            return
        length, crc = RECORD.unpack_from(data, pos)
        start = pos + RECORD.size
        if length > MAX_RECORD or start + length > end:
            report.torn.append(f"{path.name}@{pos}")
            log.warning("blackbox_torn_tail", segment=str(path), offset=pos, length=length)
            return
        body = data[start : start + length]
        pos = start + length
        if zlib.crc32(body) != crc:
            report.crc_errors.append(f"{path.name}@{start - RECORD.size}")
            log.warning("blackbox_crc_mismatch", segment=str(path), offset=start - RECORD.size)
            continue
        report.records += 1
        yield body


def iter_session(session_dir: Path, report: ReadReport | None = None) -> Iterator[bytes]:
    """Every record body of a session, in write order across segments."""
    report = report if report is not None else ReadReport()
    for seg in segments(Path(session_dir)):
        yield from iter_segment(seg, report)
