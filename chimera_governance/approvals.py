"""Approvals: intents above a size limit or below a confidence level wait for a human.

The queue lives in SQLite (WAL) so the engine, the cortex and the CLI can share it and a
restart loses nothing. The approval id is derived from the intent's ``client_order_id``
and is the table's primary key (``client_order_id`` is UNIQUE too), so replaying or
re-checking the same intent never queues it twice: ``check`` returns where it stands.

Lifecycle: PENDING -> APPROVED | REJECTED | EXPIRED. A decision is final; deciding an
unknown, expired or already-decided id raises a typed error. Time is an input: the
intent's age is measured in exchange milliseconds passed by the caller.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import msgspec
import structlog

from chimera_core.contracts import ApprovalOutput, OrderIntent
from chimera_core.errors import ChimeraError
from chimera_core.sqlite_files import open_failure, private_file

log = structlog.get_logger(__name__)

NOT_REQUIRED = "NOT_REQUIRED"
PENDING = "PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
EXPIRED = "EXPIRED"


class ApprovalError(ChimeraError):
    """An approval decision that cannot be applied."""


class UnknownApproval(ApprovalError):
    """No approval with this id was ever queued."""


class ApprovalNotPending(ApprovalError):
    """The approval was already decided (APPROVED / REJECTED) or has EXPIRED."""

    def __init__(self, approval_id: str, status: str, action: str) -> None:
        self.approval_id = approval_id
        self.status = status
        super().__init__(
            f"cannot {action} approval {approval_id}: expected status PENDING, found {status}; "
            "a decision is final - queue a new intent if it is still wanted"
        )


class ApprovalRecord(msgspec.Struct, frozen=True):
    """One queued intent and where it stands (what a human reviews)."""

    approval_id: str
    intent: OrderIntent
    value: float  # qty x ref_price, rupees
    confidence: float
    reason: str
    status: str
    created_ms: int  # exchange time it was queued
    decided_ms: int | None = None
    decided_by: str = ""


def approval_id_for(client_order_id: str) -> str:
    """Deterministic id: the same intent always maps to the same approval."""
    return "apv-" + hashlib.sha256(client_order_id.encode()).hexdigest()[:20]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval (
    approval_id     TEXT PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    intent          BLOB NOT NULL,      -- msgspec JSON of the OrderIntent
    value           REAL NOT NULL,
    confidence      REAL NOT NULL,
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_ms      INTEGER NOT NULL,
    decided_ms      INTEGER,
    decided_by      TEXT NOT NULL DEFAULT ''
)
"""
_COLUMNS = (
    "approval_id, intent, value, confidence, reason, status, created_ms, decided_ms, decided_by"
)
_intent_decoder = msgspec.json.Decoder(OrderIntent)
_ACTION = {APPROVED: "approve", REJECTED: "reject"}


class ApprovalQueue:
    """Gate intents that need a human, and record the human's decision."""

    def __init__(
        self,
        db_path: str | Path,
        size_limit_value: float = 100_000.0,
        min_confidence: float = 0.5,
        ttl_s: float = 120,
    ) -> None:
        if ttl_s <= 0:
            raise ApprovalError(f"ttl_s must be > 0 seconds, got {ttl_s}")
        self.size_limit_value = size_limit_value
        self.min_confidence = min_confidence
        self.ttl_ms = int(ttl_s * 1000)
        # 0600 (and 0700 for directories it creates) before SQLite opens it; -wal / -shm
        # take the file's mode.
        private_file(db_path)
        # autocommit: every statement is its own transaction, so a crash loses nothing
        self._db = sqlite3.connect(str(db_path), isolation_level=None, timeout=5.0)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise ApprovalError(f"approvals: {open_failure(db_path, exc)}") from None

    def check(self, intent: OrderIntent, confidence: float, exchange_ts_ms: int) -> ApprovalOutput:
        """NOT_REQUIRED, or queue the intent (once) and return its current status."""
        value = intent.qty * intent.ref_price
        reasons = []
        if value > self.size_limit_value:
            reasons.append(f"value {value:.2f} > size limit {self.size_limit_value:.2f}")
        if confidence < self.min_confidence:
            reasons.append(f"confidence {confidence:.3f} < minimum {self.min_confidence:.3f}")
        if not reasons:
            return ApprovalOutput(required=False, status=NOT_REQUIRED)
        approval_id = approval_id_for(intent.client_order_id)
        reason = "; ".join(reasons)
        cur = self._db.execute(
            "INSERT OR IGNORE INTO approval (approval_id, client_order_id, intent, value,"
            " confidence, reason, status, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                approval_id,
                intent.client_order_id,
                msgspec.json.encode(intent),
                value,
                confidence,
                reason,
                PENDING,
                exchange_ts_ms,
            ),
        )
        if cur.rowcount:
            log.info(
                "approval.queued",
                approval_id=approval_id,
                client_order_id=intent.client_order_id,
                reason=reason,
            )
        rec = self.record(approval_id)
        return ApprovalOutput(
            required=True, status=rec.status, approval_id=approval_id, reason=rec.reason
        )

    def approve(self, approval_id: str, by: str, *, now_ms: int | None = None) -> ApprovalRecord:
        """Approve a PENDING intent. With ``now_ms``, one past its TTL is expired first."""
        return self._decide(approval_id, APPROVED, by, now_ms)

    def reject(self, approval_id: str, by: str, *, now_ms: int | None = None) -> ApprovalRecord:
        return self._decide(approval_id, REJECTED, by, now_ms)

    def expire(self, now_ms: int) -> list[str]:
        """Mark every PENDING intent older than the TTL as EXPIRED; return their ids."""
        cutoff = now_ms - self.ttl_ms
        rows = self._db.execute(
            "UPDATE approval SET status = ?, decided_ms = ?, decided_by = 'ttl'"
            " WHERE status = ? AND created_ms < ? RETURNING approval_id",
            (EXPIRED, now_ms, PENDING, cutoff),
        ).fetchall()
        ids = sorted(r[0] for r in rows)
        if ids:
            log.info("approval.expired", approval_ids=ids, now_ms=now_ms)
        return ids

    def status(self, approval_id: str) -> ApprovalOutput:
        rec = self.record(approval_id)
        return ApprovalOutput(
            required=True, status=rec.status, approval_id=approval_id, reason=rec.reason
        )

    def record(self, approval_id: str) -> ApprovalRecord:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM approval WHERE approval_id = ?", (approval_id,)
        ).fetchone()
        if row is None:
            raise UnknownApproval(
                f"no approval with id {approval_id!r}; expected an id returned by check() "
                "or listed by pending()"
            )
        return _record(row)

    def pending(self) -> list[ApprovalRecord]:
        """PENDING intents, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM approval WHERE status = ? ORDER BY created_ms, approval_id",
            (PENDING,),
        ).fetchall()
        return [_record(r) for r in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ApprovalQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _decide(self, approval_id: str, status: str, by: str, now_ms: int | None) -> ApprovalRecord:
        if not by:
            raise ApprovalError(f"{_ACTION[status]} needs who decided (by=...), got an empty name")
        if now_ms is not None:
            self.expire(now_ms)
        # The status guard makes the decision atomic: of two racing deciders, one wins.
        cur = self._db.execute(
            "UPDATE approval SET status = ?, decided_ms = ?, decided_by = ?"
            " WHERE approval_id = ? AND status = ?",
            (status, now_ms, by, approval_id, PENDING),
        )
        rec = self.record(approval_id)  # raises UnknownApproval
        if cur.rowcount == 0:
            raise ApprovalNotPending(approval_id, rec.status, _ACTION[status])
        log.info("approval.decided", approval_id=approval_id, status=status, by=by)
        return rec


def _record(row: tuple[object, ...]) -> ApprovalRecord:
    aid, intent, value, confidence, reason, status, created, decided_ms, decided_by = row
    return ApprovalRecord(
        approval_id=str(aid),
        intent=_intent_decoder.decode(intent),  # type: ignore[arg-type]
        value=float(value),  # type: ignore[arg-type]
        confidence=float(confidence),  # type: ignore[arg-type]
        reason=str(reason),
        status=str(status),
        created_ms=int(created),  # type: ignore[call-overload]
        decided_ms=None if decided_ms is None else int(decided_ms),  # type: ignore[call-overload]
        decided_by=str(decided_by),
    )


# Proposals that are not orders (an assistant's genome change): kept beside the intent
# queue in the same file, for a human to read; nothing acts on them by itself.
_PROPOSAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposal (
    proposal_id TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,          -- 'genome_change'
    payload     TEXT NOT NULL,          -- JSON
    reason      TEXT NOT NULL,
    status      TEXT NOT NULL,          -- PENDING
    created_ms  INTEGER NOT NULL,
    proposed_by TEXT NOT NULL
)
"""
PROPOSAL_KINDS = ("genome_change",)


def propose(
    db_path: str | Path, kind: str, payload: dict[str, object], reason: str, by: str, now_ms: int
) -> str:
    """Queue a non-order proposal for a human (PENDING); return its id."""
    if kind not in PROPOSAL_KINDS:
        raise ApprovalError(f"proposal kind {kind!r} is not allowed (allowed: {PROPOSAL_KINDS})")
    if not reason or not by:
        raise ApprovalError("a proposal needs a reason and who proposed it (by=...)")
    body = msgspec.json.encode(payload).decode()
    proposal_id = "prp-" + hashlib.sha256(f"{kind}{body}{now_ms}".encode()).hexdigest()[:20]
    private_file(db_path)
    db = sqlite3.connect(str(db_path), isolation_level=None, timeout=5.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(_PROPOSAL_SCHEMA)
        db.execute(
            "INSERT OR IGNORE INTO proposal VALUES (?, ?, ?, ?, ?, ?, ?)",
            (proposal_id, kind, body, reason, PENDING, now_ms, by),
        )
    except sqlite3.Error as exc:
        raise ApprovalError(f"approvals: {open_failure(db_path, exc)}") from None
    finally:
        db.close()
    log.info("approval.proposed", proposal_id=proposal_id, kind=kind, by=by)
    return proposal_id


def proposals(db_path: str | Path) -> list[dict[str, object]]:
    """Every queued proposal, oldest first ([] when there is none)."""
    if not Path(db_path).is_file():
        return []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM proposal ORDER BY created_ms, proposal_id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [{**dict(r), "payload": msgspec.json.decode(r["payload"])} for r in rows]
