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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.contracts import ApprovalOutput, OrderIntent
from chimera_core.errors import ChimeraError, StoreError, StoreSchemaError
from chimera_core.store import Schema, open_readonly, open_store

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


# Append only; files from before versioning hold version 1's table and are adopted.
SCHEMA = Schema(
    "approvals",
    (
        """
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
""",
        """
CREATE TABLE proposal (
    proposal_id TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,          -- 'genome_change'
    payload     TEXT NOT NULL,          -- JSON
    reason      TEXT NOT NULL,
    status      TEXT NOT NULL,          -- PENDING
    created_ms  INTEGER NOT NULL,
    proposed_by TEXT NOT NULL
)
""",
        # 3: a proposal is decided by a human (approve / reject), recorded like an intent's.
        """
ALTER TABLE proposal ADD COLUMN decided_ms INTEGER;
ALTER TABLE proposal ADD COLUMN decided_by TEXT NOT NULL DEFAULT '';
""",
    ),
    adopt_unversioned=True,
)
_COLUMNS = (
    "approval_id, intent, value, confidence, reason, status, created_ms, decided_ms, decided_by"
)
_intent_decoder = msgspec.json.Decoder(OrderIntent)
_ACTION = {APPROVED: "approve", REJECTED: "reject"}


class _ApprovalReads:
    """The reads the queue serves, shared by the engine's ApprovalQueue and the read-only
    ApprovalsView."""

    path: Path
    _db: sqlite3.Connection

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(args)).fetchall()

    def record(self, approval_id: str) -> ApprovalRecord:
        rows = self._rows(f"SELECT {_COLUMNS} FROM approval WHERE approval_id = ?", (approval_id,))
        if not rows:
            raise UnknownApproval(
                f"no approval with id {approval_id!r}; expected an id returned by check() "
                "or listed by pending()"
            )
        return self._record(rows[0])

    def pending(self) -> list[ApprovalRecord]:
        """PENDING intents, oldest first."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM approval WHERE status = ? ORDER BY created_ms, approval_id",
            (PENDING,),
        )
        return [self._record(r) for r in rows]

    def queue(self, limit: int = 200) -> list[ApprovalRecord]:
        """Pending intents oldest first (they expire first, and the list stays put as new
        ones queue), then decided ones newest first; at most ``limit``."""
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM approval ORDER BY (status = ?) DESC, "
            "CASE WHEN status = ? THEN created_ms ELSE -created_ms END LIMIT ?",
            (PENDING, PENDING, limit),
        )
        return [self._record(r) for r in rows]

    def _record(self, row: tuple[Any, ...]) -> ApprovalRecord:
        aid, intent, value, confidence, reason, status, created, decided_ms, decided_by = row
        try:
            decoded = _intent_decoder.decode(intent)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise StoreSchemaError(
                f"approvals: approval {aid} in {self.path} holds an intent this code cannot "
                f"read ({exc}); it was written by a Chimera version this code does not know",
                path=str(self.path),
            ) from None
        return ApprovalRecord(
            approval_id=str(aid),
            intent=decoded,
            value=float(value),
            confidence=float(confidence),
            reason=str(reason),
            status=str(status),
            created_ms=int(created),
            decided_ms=None if decided_ms is None else int(decided_ms),
            decided_by=str(decided_by),
        )


class ApprovalsView(_ApprovalReads):
    """A read-only view of the queue for the cortex and CLIs: SQLite ``mode=ro``, nothing
    created or written. A table or column this code reads that the file lacks (a schema
    change) is StoreSchemaError naming the file, never an empty queue; a damaged file is
    StoreDamaged."""

    def __init__(self, db_path: str | Path) -> None:
        self.path = Path(db_path)
        self._view = open_readonly(self.path, SCHEMA)
        self._db = self._view.db

    def has_queue(self) -> bool:
        """False while the engine has not created the queue yet (an empty file)."""
        return self._view.has_schema()

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if not self.has_queue():
            return []
        return self._view.rows(sql, args)

    def close(self) -> None:
        self._view.close()

    def __enter__(self) -> ApprovalsView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ApprovalQueue(_ApprovalReads):
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
        self.path = Path(db_path)
        # autocommit: every statement is its own transaction, so a crash loses nothing
        try:
            self._store = open_store(self.path, SCHEMA, synchronous="FULL", busy_timeout_s=5.0)
        except StoreError as exc:
            raise ApprovalError(str(exc)) from None
        self._db = self._store.db

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

    def proposal(self, proposal_id: str) -> Proposal:
        """A PENDING proposal (typed error when unknown or decided)."""
        return pending_proposal(self._db, proposal_id)

    def decide_proposal(self, proposal_id: str, status: str, by: str, now_ms: int) -> Proposal:
        return decide_proposal(self._db, proposal_id, status, by, now_ms)

    def pending_proposals(self) -> list[Proposal]:
        rows = self._db.execute(
            f"SELECT {_PROPOSAL_COLUMNS}, decided_ms, decided_by FROM proposal "
            "WHERE status = ? ORDER BY created_ms, proposal_id",
            (PENDING,),
        ).fetchall()
        return [_proposal(r) for r in rows]

    def close(self) -> None:
        self._store.close()

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


# Proposals that are not orders: kept beside the intent queue in the same store (SCHEMA's
# version 2; decided since version 3). Nothing acts on one by itself: a human approves or
# rejects it (`chimera approve prp-…` / `prm-…`), and the engine's governance carries it out.
# - genome_change {family, params}: an assistant's parameter change (a new version);
# - genome_promote {family, version}: a candidate from `chimera genome propose`;
# - promotion {candidate, family, params}: a shadow candidate that passed its gates.
PROPOSAL_KINDS = ("genome_change", "genome_promote", "promotion")
PROPOSAL_PREFIX = "prp-"
PROMOTION_PREFIX = "prm-"  # a shadow promotion's id (deterministic: queued once)
DECIDED_BY_HUMAN = (PROPOSAL_PREFIX, PROMOTION_PREFIX)
_PROPOSAL_COLUMNS = "proposal_id, kind, payload, reason, status, created_ms, proposed_by"


class Proposal(msgspec.Struct, frozen=True):
    proposal_id: str
    kind: str
    payload: dict[str, Any]
    reason: str
    status: str
    created_ms: int
    proposed_by: str
    decided_ms: int | None = None
    decided_by: str = ""


def _proposal(row: Sequence[Any]) -> Proposal:
    return Proposal(row[0], row[1], msgspec.json.decode(row[2]), *row[3:])


def pending_proposal(db: sqlite3.Connection, proposal_id: str) -> Proposal:
    """The proposal ``proposal_id`` on an open approvals store; a typed error when it is
    unknown or already decided."""
    rows = db.execute(
        f"SELECT {_PROPOSAL_COLUMNS}, decided_ms, decided_by FROM proposal WHERE proposal_id = ?",
        (proposal_id,),
    ).fetchall()
    if not rows:
        raise UnknownApproval(
            f"unknown proposal {proposal_id!r}: `chimera status` lists the pending ones "
            "(`chimera shadow status` a shadow's promotions)"
        )
    prop = _proposal(rows[0])
    if prop.status != PENDING:
        raise ApprovalNotPending(proposal_id, prop.status, "decide")
    return prop


def decide_proposal(
    db: sqlite3.Connection, proposal_id: str, status: str, by: str, now_ms: int
) -> Proposal:
    """Mark a PENDING proposal APPROVED or REJECTED (atomically: of two racing deciders one
    wins); a typed error when it is unknown or already decided."""
    if status not in (APPROVED, REJECTED) or not by:
        raise ApprovalError(f"a proposal is APPROVED or REJECTED by someone, got {status!r} {by!r}")
    pending_proposal(db, proposal_id)
    cur = db.execute(
        "UPDATE proposal SET status = ?, decided_ms = ?, decided_by = ?"
        " WHERE proposal_id = ? AND status = ?",
        (status, now_ms, by, proposal_id, PENDING),
    )
    if cur.rowcount == 0:
        raise ApprovalNotPending(proposal_id, "decided", _ACTION[status])
    log.info("approval.proposal_decided", proposal_id=proposal_id, status=status, by=by)
    rows = db.execute(
        f"SELECT {_PROPOSAL_COLUMNS}, decided_ms, decided_by FROM proposal WHERE proposal_id = ?",
        (proposal_id,),
    ).fetchall()
    return _proposal(rows[0])


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
    try:
        store = open_store(Path(db_path), SCHEMA, synchronous="FULL", busy_timeout_s=5.0)
        with store, store.transaction() as db:
            db.execute(
                f"INSERT OR IGNORE INTO proposal ({_PROPOSAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (proposal_id, kind, body, reason, PENDING, now_ms, by),
            )
    except (StoreError, sqlite3.Error) as exc:
        raise ApprovalError(f"approvals: {exc}") from None
    log.info("approval.proposed", proposal_id=proposal_id, kind=kind, by=by)
    return proposal_id


def proposals(db_path: str | Path) -> list[dict[str, object]]:
    """Every queued proposal, oldest first ([] when there is none), read-only."""
    if not Path(db_path).is_file():
        return []
    with open_readonly(Path(db_path), SCHEMA) as view:
        if view.version < 2:  # no proposal was ever made through this code
            return []
        # Decided by whom and when since schema version 3 (a file not yet migrated: none).
        cols = _PROPOSAL_COLUMNS + (", decided_ms, decided_by" if view.version >= 3 else "")
        rows = view.rows(f"SELECT {cols} FROM proposal ORDER BY created_ms, 1")
    names = cols.split(", ")
    return [
        {**dict(zip(names, r, strict=True)), "payload": msgspec.json.decode(r[2])} for r in rows
    ]


def queue_promotion(
    db_path: str | Path,
    candidate: str,
    family: str,
    params: dict[str, float],
    reason: str,
    now_ms: int,
    by: str = "shadow",
) -> tuple[str, bool]:
    """Queue a shadow candidate's genome for promotion (PENDING) once: the id follows from
    (candidate, family, params), so a candidate that keeps passing its gates is queued one
    time. Returns (proposal id, whether it was queued now)."""
    if not candidate or not family or not params:
        raise ApprovalError("a promotion needs a candidate name, a family and its params")
    payload = {"candidate": candidate, "family": family, "params": dict(sorted(params.items()))}
    body = msgspec.json.encode(payload).decode()
    proposal_id = PROMOTION_PREFIX + hashlib.sha256(body.encode()).hexdigest()[:20]
    try:
        store = open_store(Path(db_path), SCHEMA, synchronous="FULL", busy_timeout_s=5.0)
        with store, store.transaction() as db:
            cur = db.execute(
                f"INSERT OR IGNORE INTO proposal ({_PROPOSAL_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (proposal_id, "promotion", body, reason, PENDING, now_ms, by),
            )
            queued = cur.rowcount > 0
    except (StoreError, sqlite3.Error) as exc:
        raise ApprovalError(f"approvals: {exc}") from None
    if queued:
        log.info("approval.promotion_queued", proposal_id=proposal_id, candidate=candidate)
    return proposal_id, queued
