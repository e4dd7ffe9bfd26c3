"""The files under Chimera's SQLite stores (opening them is ``chimera_core.store``).

Stores hold positions, cash, orders and approvals: they are created owner-only (files
0600, the directories Chimera creates 0700) at creation, not by umask. SQLite creates a
database's ``-wal`` and ``-shm`` with the database file's own permissions, so a 0600 file
keeps them 0600 too. ``file_state`` before and after a read says whether a writer touched
the file meanwhile; ``is_damaged`` tells a damaged file from a busy or full one.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: str | Path) -> Path:
    """``mkdir -p`` where every directory it creates is 0700 (``Path.mkdir(parents=True)``
    gives the parents the default mode). Directories that exist are left as they are."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise ChimeraError(f"{p} exists and is not a directory; expected a directory for {path}")
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:  # a concurrent creator won the race; same result
            pass
        else:
            os.chmod(d, PRIVATE_DIR)  # exact, whatever the umask
    return path


def private_file(path: str | Path) -> Path:
    """Create the database file 0600 before SQLite opens it (so it never exists wider), and
    tighten an existing one and its side files to 0600 (older versions created 0644)."""
    path = Path(path)
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for p in (path, *(path.with_name(path.name + s) for s in SIDE_FILES)):
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            os.chmod(p, PRIVATE_FILE)
            log.info("store_permissions_tightened", path=str(p), was=f"{mode:04o}")
    return path


def file_state(path: str | Path) -> tuple[int, int, int, bool]:
    """(inode, size, mtime_ns, has -wal): equal before and after a read means no writer
    touched the file meanwhile."""
    path = Path(path)
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, path.with_name(path.name + "-wal").exists()


def is_damaged(exc: BaseException) -> bool:
    """True when ``exc`` is SQLite saying the file itself is damaged (not busy or full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and (
        code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
        or "malformed" in str(exc)
        or "not a database" in str(exc)
    )
