"""Raw feed frames on disk: what the exchange sent, byte for byte, with the receive time.

Used to ship sample sessions, to drive the simulator's replay and the engine's offline
replay. Layout: an 8-byte magic, then records of ``<IIq`` (frame length, CRC32 of
receive-time + frame, receive time ns) followed by the frame. A torn last record (a
crash mid-write) is reported and skipped; nothing before it is lost.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from chimera_core.errors import ProtocolError

MAGIC = b"CHTICK1\n"
_RECORD = struct.Struct("<IIq")
_RECV = struct.Struct("<q")
MAX_FRAME = 1 << 20


class TickFileWriter:
    """Append frames to a tick file (creates it with the magic when new)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh: BinaryIO = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        if new:
            self._fh.write(MAGIC)
        self.frames = 0

    def write(self, recv_ns: int, frame: bytes) -> None:
        crc = zlib.crc32(frame, zlib.crc32(_RECV.pack(recv_ns)))
        self._fh.write(_RECORD.pack(len(frame), crc, recv_ns))
        self._fh.write(frame)
        self.frames += 1

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TickFileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TickFileReader:
    """Iterate ``(recv_ns, frame)`` records; ``torn_tail`` is set if the file ends mid-record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.torn_tail = False

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        data = self.path.read_bytes()
        if not data.startswith(MAGIC):
            raise ProtocolError(
                f"{self.path} is not a Chimera tick file (expected magic {MAGIC!r} at byte 0)"
            )
        pos = len(MAGIC)
        end = len(data)
        while pos < end:
            if end - pos < _RECORD.size:
                self.torn_tail = True
                return
            length, crc, recv_ns = _RECORD.unpack_from(data, pos)
            start = pos + _RECORD.size
            if length > MAX_FRAME:
                raise ProtocolError(
                    f"{self.path}: record at byte {pos} claims {length} bytes (max {MAX_FRAME}); "
                    "the file is corrupt"
                )
            if start + length > end:
                self.torn_tail = True
                return
            frame = data[start : start + length]
            if zlib.crc32(frame, zlib.crc32(_RECV.pack(recv_ns))) != crc:
                raise ProtocolError(f"{self.path}: CRC mismatch in record at byte {pos}")
            yield recv_ns, frame
            pos = start + length
