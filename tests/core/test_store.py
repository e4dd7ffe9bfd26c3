"""chimera_core.store on real SQLite files: migrations, versions, adoption, transactions,
the read-only view and the errors for damaged, locked, missing, newer and unknown files."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.errors import (
    StoreBusy,
    StoreDamaged,
    StoreMissing,
    StoreSchemaError,
    StoreTooNew,
    StoreWriteError,
)
from chimera_core.store import Schema, open_readonly, open_store

V1 = "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT NOT NULL); -- first; with a comment"
V2 = "ALTER TABLE a ADD COLUMN y REAL NOT NULL DEFAULT 0; CREATE TABLE b (k TEXT PRIMARY KEY)"


def _v3(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX a_by_x ON a (x)")


SCHEMA = Schema("test store", (V1, V2, _v3), adopt_unversioned=True)


def shapes(path: Path) -> dict[str, list[str]]:
    """Tables and columns, read with plain sqlite3 (not the code under test)."""
    db = sqlite3.connect(path)
    try:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {n: [c[1] for c in db.execute(f"PRAGMA table_info({n})")] for n in names}
    finally:
        db.close()


def pragma(path: Path, name: str) -> object:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_fresh_store_runs_every_migration_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "s.db"
    with open_store(path, SCHEMA, synchronous="NORMAL") as store:
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert pragma(path, "user_version") == 3 and pragma(path, "journal_mode") == "wal"
    assert shapes(path) == {"a": ["id", "x", "y"], "b": ["k"]}
    with open_store(path, SCHEMA) as store:  # reopening runs nothing
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_failing_migration_leaves_the_file_at_the_version_before(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_store(path, Schema("s", (V1,))).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (z)")
        raise RuntimeError("step 2 fails halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        open_store(path, Schema("s", (V1, broken)))
    assert pragma(path, "user_version") == 1
    assert shapes(path) == {"a": ["id", "x"]}  # the half step was rolled back with it


def test_a_newer_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_store(path, SCHEMA).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=7")
    db.close()
    before = digest(path)
    with pytest.raises(StoreTooNew) as err:
        open_store(path, SCHEMA)
    assert str(path) in str(err.value) and "7" in str(err.value) and "newer" in str(err.value)
    with pytest.raises(StoreTooNew):
        open_readonly(path, SCHEMA)
    assert digest(path) == before


def test_two_stores_in_one_file_keep_their_own_versions(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    owner = Schema("owner", ("CREATE TABLE o (v)", "CREATE TABLE o2 (v)"))
    guest = Schema("guest", ("CREATE TABLE g_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",),
                   version_table="g_meta")  # fmt: skip
    open_store(path, owner).close()
    open_store(path, guest).close()
    open_store(path, owner).close()  # the guest's version did not move the owner's
    assert pragma(path, "user_version") == 2
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM g_meta WHERE key='schema_version'").fetchone() == ("1",)
    db.close()
    assert set(shapes(path)) == {"o", "o2", "g_meta"}


def test_unversioned_tables_are_adopted_as_the_version_they_are(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)  # what a store wrote before it kept a version
    db.executescript(V1 + "\nINSERT INTO a (x) VALUES ('kept');")
    db.close()
    assert pragma(path, "user_version") == 0
    with open_readonly(path, SCHEMA) as view:  # a reader sees the version it holds ...
        assert view.version == 1 and view.rows("SELECT x FROM a") == [("kept",)]
    assert pragma(path, "user_version") == 0  # ... and writes nothing
    open_store(path, SCHEMA).close()
    assert pragma(path, "user_version") == 3  # adopted as 1, then 2 and 3 ran
    assert shapes(path) == {"a": ["id", "x", "y"], "b": ["k"]}
    db = sqlite3.connect(path)
    assert db.execute("SELECT x, y FROM a").fetchall() == [("kept", 0.0)]
    db.close()


def test_unversioned_tables_of_no_known_version_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE a (id INTEGER PRIMARY KEY, other TEXT)")  # not v1's columns
    db.close()
    before = digest(path)
    with pytest.raises(StoreSchemaError) as err:
        open_store(path, SCHEMA)
    assert str(path) in str(err.value) and "'a'" in str(err.value)
    assert digest(path) == before and pragma(path, "user_version") == 0


def test_transaction_rolls_back_and_names_a_full_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(path, SCHEMA) as store:
        with pytest.raises(KeyError), store.transaction() as db:
            db.execute("INSERT INTO a (x) VALUES ('gone')")
            raise KeyError("ours")
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as db:
            db.execute("INSERT INTO a (id, x) VALUES (1, 'one')")
            db.execute("INSERT INTO a (id, x) VALUES (1, 'again')")  # passes through, typed
        assert store.db.execute("SELECT COUNT(*) FROM a").fetchone() == (0,)
        (pages,) = store.db.execute("PRAGMA page_count").fetchone()
        store.db.execute(f"PRAGMA max_page_count={pages}")
        with pytest.raises(StoreWriteError) as err, store.transaction() as db:
            db.executemany("INSERT INTO a (x) VALUES (?)", [("x" * 2000,)] * 50)
        assert err.value.path == str(path) and "full" in str(err.value)
        assert "rolled back" in str(err.value) and not store.db.in_transaction
        assert store.db.execute("SELECT COUNT(*) FROM a").fetchone() == (0,)


def test_a_locked_store_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write, holding the lock
    try:
        with pytest.raises(StoreBusy) as err:
            open_store(path, SCHEMA, busy_timeout_s=0.05)
        assert str(path) in str(err.value) and "locked" in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_damaged_file_is_a_clear_error(tmp_path: Path, readonly: bool) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(bytes(range(256)) * 32)
    with pytest.raises(StoreDamaged) as err:
        if readonly:
            assert open_readonly(path, SCHEMA).version < 0  # never reached
        else:
            open_store(path, SCHEMA)
    assert str(path) in str(err.value) and "RUNBOOK" in str(err.value)
    assert path.read_bytes() == bytes(range(256)) * 32


def test_the_read_only_view_never_creates_or_writes(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "s.db"
    with pytest.raises(StoreMissing) as err:
        open_readonly(missing, SCHEMA)
    assert str(missing) in str(err.value) and not missing.parent.exists()
    path = tmp_path / "s.db"
    open_store(path, SCHEMA).close()
    before = sorted(p.name for p in tmp_path.iterdir())
    with open_readonly(path, SCHEMA, snapshot=True) as view:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            view.db.execute("INSERT INTO a (x) VALUES ('no')")
        assert view.integrity_check() == ["ok"] and view.unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # not even -wal / -shm


def test_the_read_only_view_reads_beside_a_writer_in_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_store(path, SCHEMA) as store, open_readonly(path, SCHEMA) as view:
        assert view.rows("SELECT x FROM a") == []
        with store.transaction() as db:
            db.execute("INSERT INTO a (x) VALUES ('committed')")
        assert view.rows("SELECT x FROM a") == [("committed",)]
        store.db.execute("BEGIN IMMEDIATE")  # the writer holds its lock: reads go on
        store.db.execute("INSERT INTO a (x) VALUES ('uncommitted')")
        assert view.rows("SELECT x FROM a") == [("committed",)]
        store.db.execute("ROLLBACK")


def test_a_missing_column_is_a_schema_error_not_an_empty_read(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_store(path, SCHEMA).close()
    with open_readonly(path, SCHEMA) as view:
        with pytest.raises(StoreSchemaError) as err:
            view.rows("SELECT x, z FROM a")
        assert "no such column: z" in str(err.value) and str(path) in str(err.value)
        with pytest.raises(StoreSchemaError):
            view.rows("SELECT * FROM missing_table")


def _open_in_process(path: str, barrier: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    open_store(path, SCHEMA, busy_timeout_s=20.0).close()


def test_processes_opening_a_fresh_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_open_in_process, args=(str(path), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert pragma(path, "user_version") == 3
    assert shapes(path) == {"a": ["id", "x", "y"], "b": ["k"]}


# ---- any history of migrations: a file at any version, with or without its version
# recorded, opens to the schema a fresh file gets (reference: the DDL run by
# executescript on a plain in-memory database).

_names = st.sampled_from(["p", "q", "r", "s"])
_types = st.sampled_from(["INTEGER", "REAL", "TEXT"])


@st.composite
def histories(draw: st.DrawFn) -> list[str]:
    steps: list[str] = []
    cols: dict[str, list[str]] = {}
    for _ in range(draw(st.integers(1, 6))):
        table = draw(_names)
        if table not in cols:
            cols[table] = ["c0"]
            steps.append(f"CREATE TABLE {table} (c0 {draw(_types)})")
        else:
            col = f"c{len(cols[table])}"
            cols[table].append(col)
            steps.append(f"ALTER TABLE {table} ADD COLUMN {col} {draw(_types)}")
    return steps


def _reference(steps: list[str]) -> dict[str, list[str]]:
    db = sqlite3.connect(":memory:")
    db.executescript(";\n".join(steps))
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {n: [c[1] for c in db.execute(f"PRAGMA table_info({n})")] for n in names}


@settings(max_examples=40, deadline=None)
@given(steps=histories(), data=st.data())
def test_any_version_opens_to_the_fresh_schema(
    tmp_path_factory: pytest.TempPathFactory, steps: list[str], data: st.DataObject
) -> None:
    d = tmp_path_factory.mktemp("h")
    schema = Schema("h", tuple(steps), adopt_unversioned=True)
    at = data.draw(st.integers(0, len(steps)), label="version on disk")
    forget = data.draw(st.booleans(), label="written before versions were kept")
    path = d / "h.db"
    open_store(path, Schema("h", tuple(steps[:at]))).close()
    if forget:
        db = sqlite3.connect(path)
        db.execute("PRAGMA user_version=0")
        db.close()
    open_store(path, schema).close()
    assert shapes(path) == _reference(steps)
    assert pragma(path, "user_version") == len(steps)
