"""One way to open a SQLite store, and one way to read one without touching it.

Every Chimera store (journal, paper ledger, meta-risk state, genome, approvals) is a
``Schema`` — its name, its append-only migrations, where its version is kept — opened by
``open_store`` for the process that owns it and by ``open_readonly`` for everything else
(cortex, doctor, CLIs).

``open_store``: the file created owner-only (``private_file``), WAL, the synchronous level
asked for, a busy timeout, then the migrations: each runs in its own ``BEGIN IMMEDIATE``
transaction together with the version bump, and the version is re-read inside that
transaction, so two processes opening a fresh file at once cannot both run a step. The
version lives in ``PRAGMA user_version`` (the file's owner) or, for a second store sharing
a file (the paper ledger beside the journal), in a ``schema_version`` row of a key/value
table of its own. A store whose tables predate versioning (version 0 with tables present)
is *adopted*: when its tables and columns are exactly those some version's migrations
create (replayed in memory), that version is stamped without running anything. A file
newer than the code is refused. ``Store.transaction()`` groups writes into one
``BEGIN IMMEDIATE … COMMIT``.

``open_readonly``: SQLite ``mode=ro`` (no write is possible), works beside a writer in WAL,
never creates or migrates; ``snapshot=True`` and no writer open also avoids ``-wal`` /
``-shm`` appearing (the file is read as immutable; ``unchanged()`` says whether a writer
started meanwhile). Its ``rows`` turn a missing table or column into ``StoreSchemaError``
naming the file, so a reader never shows a schema change as an empty page.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import structlog

from chimera_core.errors import (
    StoreBusy,
    StoreDamaged,
    StoreError,
    StoreMissing,
    StoreSchemaError,
    StoreTooNew,
    StoreWriteError,
)
from chimera_core.sqlite_files import file_state, is_damaged, private_file

log = structlog.get_logger(__name__)

T = TypeVar("T")
Migration = str | Callable[[sqlite3.Connection], None]
Synchronous = Literal["NORMAL", "FULL"]
SYNCHRONOUS: tuple[Synchronous, ...] = ("NORMAL", "FULL")
VERSION_KEY = "schema_version"

DAMAGED_ADVICE = (
    "stop every chimera process, move it aside with its -wal and -shm (keep them), salvage "
    "with `sqlite3 <moved file> .recover | sqlite3 {path}`; see docs/RUNBOOK.md, 'After a crash'"
)


@dataclass(frozen=True)
class Schema:
    """What a store's file holds and how it got there.

    ``migrations`` are append-only: never edit a step that has shipped, add one. A step is
    SQL (one or more statements) or a function of the connection; it runs inside the
    transaction that records it, so it must not commit. ``version_table`` None keeps the
    version in ``PRAGMA user_version``; a table name keeps it in that key/value table's
    ``schema_version`` row (for a store sharing another store's file). ``adopt_unversioned``:
    a version-0 file whose tables are exactly those of version N (the store kept no
    version before) is stamped N without running anything.
    ``damaged_advice`` (with ``{path}``) is what the error for a damaged file says to do.
    """

    name: str
    migrations: tuple[Migration, ...]
    version_table: str | None = None
    adopt_unversioned: bool = False
    damaged_advice: str = DAMAGED_ADVICE

    @property
    def version(self) -> int:
        return len(self.migrations)


# ---- schema inspection (for adopt functions and readers) --------------------------------


def tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    """The table's columns in order ([] when there is no such table)."""
    return [r[0] for r in db.execute("SELECT name FROM pragma_table_info(?)", (table,))]


def _table_shapes(db: sqlite3.Connection) -> dict[str, list[str]]:
    return {t: columns(db, t) for t in tables(db) if not t.startswith("sqlite_")}


@functools.cache
def version_shapes(schema: Schema) -> list[dict[str, list[str]]]:
    """The tables and columns each version of ``schema`` holds (index i: version i + 1),
    found by running its migrations on an in-memory database."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    try:
        shapes = []
        for step in schema.migrations:
            _apply(mem, step)
            shapes.append(_table_shapes(mem))
        return shapes
    finally:
        mem.close()


def recognise_version(db: sqlite3.Connection, schema: Schema, path: Path) -> int:
    """For a file with no schema version: the version whose tables (and their columns)
    it holds exactly, 0 when it holds none of the schema's tables. Anything else is a
    StoreSchemaError: stamping a guess would let the next migration run on the wrong
    tables."""
    shapes = version_shapes(schema)
    known = {t for shape in shapes for t in shape}
    found = {t: cols for t, cols in _table_shapes(db).items() if t in known}
    if not found:
        return 0
    for version in range(len(shapes), 0, -1):
        if found == shapes[version - 1]:
            return version
    raise StoreSchemaError(
        f"{schema.name}: {path} has tables {found} without a schema version, and they match "
        f"no version this code knows ({len(shapes)}); it was not written by Chimera, or by a "
        "version this code does not know — move it aside or open it with that version",
        path=str(path),
    )


def _statements(sql: str) -> Iterator[str]:
    # executescript() would COMMIT first: run a SQL migration statement by statement
    # inside the migration's own transaction instead.
    buf = ""
    for piece in sql.split(";"):
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            if _has_code(buf):
                yield buf
            buf = ""
    if _has_code(buf):
        raise ValueError(f"incomplete SQL statement in a migration: {buf!r}")


def _has_code(sql: str) -> bool:
    lines = (line.split("--", 1)[0] for line in sql.splitlines())
    return bool("".join(lines).strip(" \t\n;"))


def _apply(db: sqlite3.Connection, step: Migration) -> None:
    if isinstance(step, str):
        for statement in _statements(step):
            db.execute(statement)
    else:
        step(db)


def read_version(db: sqlite3.Connection, schema: Schema) -> int:
    """The schema version the file says it has (0: none yet)."""
    if schema.version_table is None:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    if schema.version_table not in tables(db):
        return 0
    row = db.execute(
        f"SELECT value FROM {schema.version_table} WHERE key=?", (VERSION_KEY,)
    ).fetchone()
    return 0 if row is None else int(row[0])


def _write_version(db: sqlite3.Connection, schema: Schema, version: int) -> None:
    if schema.version_table is None:
        db.execute(f"PRAGMA user_version={int(version)}")
        return
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {schema.version_table} "
        "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    db.execute(
        f"INSERT OR REPLACE INTO {schema.version_table} VALUES (?, ?)", (VERSION_KEY, str(version))
    )


def _too_new(path: Path, schema: Schema, found: int) -> StoreTooNew:
    return StoreTooNew(
        f"{schema.name}: {path} has schema {found}, this code knows up to {schema.version}; "
        "run the newer Chimera version that wrote it",
        path=str(path),
    )


def _open_error(path: Path, schema_name: str, exc: sqlite3.Error, advice: str) -> StoreError:
    """The typed error for a sqlite3 failure while opening or reading ``path``."""
    text = str(exc)
    if is_damaged(exc):
        return StoreDamaged(
            f"{schema_name}: {path} is damaged ({exc}); refusing to use it. To recover: "
            + advice.format(path=path),
            path=str(path),
            cause=exc,
        )
    if "locked" in text or "busy" in text:
        return StoreBusy(
            f"{schema_name}: {path} is locked by another process ({exc}); is another chimera "
            "process holding it? Retry when it is done",
            path=str(path),
        )
    if "no such table" in text or "no such column" in text:
        return StoreSchemaError(
            f"{schema_name}: {path} does not have the schema this code reads ({exc}); it was "
            "written by a Chimera version this code does not know",
            path=str(path),
        )
    return StoreError(f"{schema_name}: cannot open {path}: {exc}", path=str(path))


# ---- the owner's connection -------------------------------------------------------------


class Store:
    """An open store: ``db`` is an autocommit connection (every statement outside
    ``transaction()`` commits by itself); ``transaction()`` groups writes."""

    def __init__(
        self,
        path: Path,
        schema: Schema,
        db: sqlite3.Connection,
        write_error: type[StoreWriteError],
    ) -> None:
        self.path = path
        self.schema = schema
        self.db = db
        self._write_error_type = write_error

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` (the write lock up front) … ``COMMIT``, ``ROLLBACK`` on any
        error. A failure of SQLite itself (full disk, I/O error) comes out as the store's
        write error after the rollback; IntegrityError passes through (a duplicate key is
        the caller's to name), and so does any error of ours."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._rollback()
            raise self.write_error(exc, "begin") from exc
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                raise self.write_error(exc, "write") from exc
            raise

    def _rollback(self) -> None:
        # On SQLITE_FULL / IOERR SQLite may already have rolled back by itself; a second
        # ROLLBACK would raise "no transaction is active" and hide the real cause.
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error(
                "store.rollback_failed", store=self.schema.name, path=str(self.path), error=str(exc)
            )

    def write_error(self, exc: sqlite3.Error, stage: str) -> StoreWriteError:
        text = str(exc)
        if "full" in text:
            advice = f"free disk space under {self.path.parent}"
        elif is_damaged(exc):
            advice = self.schema.damaged_advice.format(path=self.path)
        elif "readonly" in text or "read-only" in text:
            advice = f"make {self.path} and its directory writable by this user"
        else:
            advice = f"check the disk holding {self.path} (dmesg, smartctl)"
        log.error(
            "store.write_failed",
            store=self.schema.name,
            path=str(self.path),
            stage=stage,
            error=text,
        )
        return self._write_error_type(
            f"{self.schema.name}: write to {self.path} failed ({stage}): {text}; the "
            f"transaction was rolled back, nothing of it was recorded — {advice}",
            str(self.path),
            exc,
        )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_store(
    path: str | Path,
    schema: Schema,
    *,
    synchronous: Synchronous = "FULL",
    busy_timeout_s: float = 10.0,
    quick_check: bool = False,
    check_same_thread: bool = True,
    write_error: type[StoreWriteError] = StoreWriteError,
) -> Store:
    """Create (0600, in 0700 directories) or open the store at ``path``, in WAL with
    ``synchronous``, migrated to ``schema.version``. ``quick_check`` runs SQLite's
    ``quick_check`` before anything writes (O(file size): for the journal, where a damaged
    page must be a clean refusal, not an error mid-trading). Errors: StoreDamaged,
    StoreBusy, StoreTooNew, StoreSchemaError (adoption refused), StoreError."""
    if synchronous not in SYNCHRONOUS:
        raise StoreError(
            f"{schema.name}: expected synchronous NORMAL or FULL, got {synchronous!r}",
            path=str(path),
        )
    path = Path(path)
    # 0600 before SQLite opens it: SQLite itself would create it 0644, and gives -wal and
    # -shm the file's mode.
    private_file(path)
    try:
        db = sqlite3.connect(
            path, isolation_level=None, timeout=busy_timeout_s, check_same_thread=check_same_thread
        )
    except sqlite3.Error as exc:
        raise _open_error(path, schema.name, exc, schema.damaged_advice) from exc
    store = Store(path, schema, db, write_error)
    try:
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if quick_check:
            problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)").fetchall()]
            if problems != ["ok"]:
                problem = "; ".join(problems)
                raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
        _precheck(store)  # a file it refuses is left as it was, not even switched to WAL
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        _migrate(store)
    except sqlite3.Error as exc:
        db.close()
        raise _open_error(path, schema.name, exc, schema.damaged_advice) from exc
    except StoreWriteError as exc:
        db.close()
        cause = exc.cause
        if isinstance(cause, sqlite3.Error):
            raise _open_error(path, schema.name, cause, schema.damaged_advice) from cause
        raise
    except BaseException:
        db.close()
        raise
    return store


def _precheck(store: Store) -> None:
    schema, db, path = store.schema, store.db, store.path
    found = read_version(db, schema)
    if found > schema.version:
        raise _too_new(path, schema, found)
    if found == 0 and schema.adopt_unversioned:
        recognise_version(db, schema, path)  # raises for tables of no known version


def _migrate(store: Store) -> None:
    schema, db, path = store.schema, store.db, store.path
    found = read_version(db, schema)
    if found > schema.version:
        raise _too_new(path, schema, found)
    while found < schema.version:
        with store.transaction():
            # Re-read under the write lock: another process may have migrated meanwhile.
            found = read_version(db, schema)
            if found > schema.version:
                raise _too_new(path, schema, found)
            if found == schema.version:
                break
            if found == 0 and schema.adopt_unversioned:
                adopted = recognise_version(db, schema, path)
                if adopted:
                    _write_version(db, schema, adopted)
                    log.info("store.adopted", store=schema.name, path=str(path), version=adopted)
                    found = adopted
                    continue
            _apply(db, schema.migrations[found])
            _write_version(db, schema, found + 1)  # in the same transaction as the step
            found += 1
        log.info("store.migrated", store=schema.name, path=str(path), to_version=found)


# ---- everyone else's view ---------------------------------------------------------------


class StoreView:
    """A read-only connection to a store file (see ``open_readonly``)."""

    def __init__(
        self, path: Path, schema: Schema | None, db: sqlite3.Connection, state: tuple[Any, ...]
    ) -> None:
        self.path = path
        self.schema = schema
        self.db = db
        self._state = state
        self._ready = False

    @property
    def name(self) -> str:
        return self.schema.name if self.schema is not None else "store"

    @property
    def version(self) -> int:
        """The schema version the file holds: the one it records, or for a file from before
        its store kept one (``adopt_unversioned``) the version its tables are; 0 before
        the owner's first open created anything."""
        schema = self.schema or Schema(self.name, ())

        def read() -> int:
            found = read_version(self.db, schema)
            if found == 0 and schema.adopt_unversioned:
                found = recognise_version(self.db, schema, self.path)
            return found

        return self._guard(read)

    def has_schema(self) -> bool:
        """True once the owner has created the schema (it is committed together with its
        version, so once seen it stays)."""
        if not self._ready:
            self._ready = self.version >= 1
        return self._ready

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """All rows of one query; a missing table or column is StoreSchemaError, a damaged
        file StoreDamaged — never an empty result."""
        return self._guard(lambda: self.db.execute(sql, tuple(args)).fetchall())

    def one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._guard(
            lambda: self.db.execute(sql, tuple(args)).fetchone()
        )
        return row

    def integrity_check(self) -> list[str]:
        """SQLite's ``integrity_check``: ["ok"] when healthy."""
        return [str(r[0]) for r in self.rows("PRAGMA integrity_check")]

    def unchanged(self) -> bool:
        """True when no writer has touched the file since this view opened it."""
        try:
            return file_state(self.path) == self._state
        except FileNotFoundError:
            return False

    def _guard(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except sqlite3.Error as exc:
            advice = self.schema.damaged_advice if self.schema is not None else DAMAGED_ADVICE
            raise _open_error(self.path, self.name, exc, advice) from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StoreView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def image_of(path: str | Path) -> bytes:
    """A consistent image of the SQLite file at ``path`` (its committed state, the WAL
    included), read-only: what ``restore_image`` writes back as a file."""
    src = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    mem = sqlite3.connect(":memory:")
    try:
        src.backup(mem)
        image = bytearray(mem.serialize())
    finally:
        mem.close()
        src.close()
    # The header's read/write format versions (offsets 18, 19) say WAL when the source is
    # in WAL mode, and an image in WAL format cannot be opened from memory: mark it a
    # rollback-journal file (1, 1); the store that opens the restored file sets WAL again.
    if len(image) >= 20:
        image[18] = image[19] = 1
    return bytes(image)


def restore_image(path: str | Path, image: bytes) -> None:
    """Write ``image`` (from ``image_of``) as the SQLite file ``path`` (replacing it)."""
    mem = sqlite3.connect(":memory:")
    dst = sqlite3.connect(Path(path))
    try:
        mem.deserialize(image)
        mem.backup(dst)
    finally:
        dst.close()
        mem.close()


def open_readonly(
    path: str | Path,
    schema: Schema | None = None,
    *,
    snapshot: bool = False,
    timeout_s: float = 5.0,
) -> StoreView:
    """A read-only view of the store at ``path`` (``mode=ro``: SQLite refuses every
    write). Never creates the file, its directory or its schema. With ``schema``, a file
    newer than the code is StoreTooNew. ``snapshot=True`` and no ``-wal`` beside the file:
    opened immutable, so not even ``-wal`` / ``-shm`` appear; ``unchanged()`` then says
    whether the reads can be trusted. A missing file is StoreMissing."""
    path = Path(path)
    name = schema.name if schema is not None else "store"
    if not path.is_file():
        raise StoreMissing(f"{name}: no such store file {path}", path=str(path))
    state = file_state(path)
    uri = f"{path.resolve().as_uri()}?mode=ro"
    if snapshot and not path.with_name(path.name + "-wal").exists():
        uri += "&immutable=1"
    advice = schema.damaged_advice if schema is not None else DAMAGED_ADVICE
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout_s)
    except sqlite3.Error as exc:
        raise _open_error(path, name, exc, advice) from exc
    view = StoreView(path, schema, db, state)
    try:
        db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if schema is not None:
            found = view.version
            if found > schema.version:
                raise _too_new(path, schema, found)
    except sqlite3.Error as exc:
        db.close()
        raise _open_error(path, name, exc, advice) from exc
    except BaseException:
        db.close()
        raise
    return view
