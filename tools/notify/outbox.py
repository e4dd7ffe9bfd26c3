"""The alert outbox: every alert for every channel, on disk before anything is sent.

One SQLite file (through chimera_core.store, like every store). A channel's alerts go out
in the order they were raised: its oldest pending row is retried (backing off) until it is
delivered, and only then the next, so a channel that was down, or a notify that restarted,
gets everything afterwards, in order, marked late. Rows delivered or dropped are then
published back on telemetry (the ``alert`` topic), also in order, once the engine answers.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from chimera_core.store import Schema, Store, open_store
from tools.notify.rules import Alert

SCHEMA = Schema(
    "notify_outbox",
    (
        """
CREATE TABLE alert (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel     TEXT NOT NULL,
    name        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    text        TEXT NOT NULL,
    raised_ns   INTEGER NOT NULL,
    status      TEXT NOT NULL,              -- pending | sent | dropped
    reason      TEXT NOT NULL DEFAULT '',   -- why dropped, or the last delivery failure
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try_ns INTEGER NOT NULL DEFAULT 0,
    done_ns     INTEGER,
    late        INTEGER NOT NULL DEFAULT 0,
    published   INTEGER NOT NULL DEFAULT 0  -- on the alert topic (the black box has it)
);
CREATE INDEX alert_pending ON alert (channel, status, seq);
CREATE INDEX alert_unpublished ON alert (published, seq);
CREATE TABLE memory (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL                 -- msgspec JSON (the rules' Memory)
);
""",
        # v2: a file sent with the alert where the channel takes attachments (the report).
        "ALTER TABLE alert ADD COLUMN attach TEXT NOT NULL DEFAULT '';",
    ),
)

PENDING, SENT, DROPPED = "pending", "sent", "dropped"


class OutboxRow(msgspec.Struct, frozen=True):
    seq: int
    channel: str
    name: str
    severity: str
    text: str
    raised_ns: int
    status: str
    reason: str
    attempts: int
    next_try_ns: int
    done_ns: int | None
    late: bool
    published: bool
    attach: str = ""

    @property
    def alert_id(self) -> str:
        return f"{self.channel}-{self.seq}"


_COLUMNS = (
    "seq, channel, name, severity, text, raised_ns, status, reason, attempts, next_try_ns, "
    "done_ns, late, published, attach"
)


def _row(r: tuple[object, ...]) -> OutboxRow:
    fields = dict(zip(OutboxRow.__struct_fields__, r, strict=True))
    fields["late"], fields["published"] = bool(fields["late"]), bool(fields["published"])
    return OutboxRow(**fields)  # type: ignore[arg-type]


class Outbox:
    """The outbox file; one writer (the notify process), every write its own transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._store: Store = open_store(self.path, SCHEMA, synchronous="FULL")
        self._db = self._store.db

    def add(self, channel: str, alert: Alert, status: str = PENDING, reason: str = "",
            now_ns: int = 0) -> int:  # fmt: skip
        """Queue ``alert`` for ``channel`` (or record it dropped, with why); its seq."""
        cur = self._db.execute(
            "INSERT INTO alert (channel, name, severity, text, raised_ns, status, reason,"
            " done_ns, attach) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                channel,
                alert.name,
                alert.severity,
                alert.text,
                alert.raised_ns,
                status,
                reason,
                None if status == PENDING else now_ns,
                alert.attach,
            ),
        )
        return int(cur.lastrowid or 0)

    def head(self, channel: str) -> OutboxRow | None:
        """The channel's oldest undelivered alert (the only one it may be sent next)."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM alert WHERE channel = ? AND status = ? ORDER BY seq LIMIT 1",
            (channel, PENDING),
        ).fetchall()
        return _row(rows[0]) if rows else None

    def sent(self, seq: int, now_ns: int, late: bool) -> None:
        self._db.execute(
            "UPDATE alert SET status = ?, done_ns = ?, late = ?, attempts = attempts + 1 "
            "WHERE seq = ?",
            (SENT, now_ns, int(late), seq),
        )

    def failed(self, seq: int, error: str, next_try_ns: int) -> None:
        self._db.execute(
            "UPDATE alert SET attempts = attempts + 1, reason = ?, next_try_ns = ? WHERE seq = ?",
            (error[:500], next_try_ns, seq),
        )

    def unpublished(self, limit: int = 100) -> list[OutboxRow]:
        """Delivered or dropped rows not yet on telemetry, in the order they were decided."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM alert WHERE published = 0 AND status != ? "
            "ORDER BY done_ns, seq LIMIT ?",
            (PENDING, limit),
        ).fetchall()
        return [_row(r) for r in rows]

    def published(self, seq: int) -> None:
        self._db.execute("UPDATE alert SET published = 1 WHERE seq = ?", (seq,))

    def rows(self, channel: str | None = None) -> list[OutboxRow]:
        sql = f"SELECT {_COLUMNS} FROM alert"
        args: tuple[object, ...] = ()
        if channel is not None:
            sql, args = sql + " WHERE channel = ?", (channel,)
        return [_row(r) for r in self._db.execute(sql + " ORDER BY seq", args).fetchall()]

    def prune(self, before_ns: int) -> int:
        """Forget alerts decided (and republished) before ``before_ns``; how many."""
        cur = self._db.execute(
            "DELETE FROM alert WHERE status != ? AND published = 1 AND done_ns < ?",
            (PENDING, before_ns),
        )
        return int(cur.rowcount)

    def remember(self, key: str, value: bytes) -> None:
        self._db.execute(
            "INSERT INTO memory (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def recall(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM memory WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
