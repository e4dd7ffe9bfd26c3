"""Read-only access to what other processes wrote: the recorder's files, the governance
SQLite databases, the execution journal. The stores are read through each store's own
read-only view (``mode=ro``: the cortex can never write the engine's state, and no SQL
here knows another package's tables). A file not there yet reads as empty; a damaged one,
or one whose schema this code does not read, raises an error naming it, so a page says
so instead of showing nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import orjson

from chimera_core.contracts import Decision
from chimera_execution.journal_view import DB_NAME, JournalReader
from chimera_governance.approvals import ApprovalsView
from chimera_governance.genome import GenomeView

NEURAL_STATE = "neural_state.json"
BLACKBOX = "blackbox"
APPROVALS_DB = "approvals.db"
GENOME_DB = "genome.db"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def proposals(mode_dir: Path) -> list[dict[str, Any]]:
    """Proposals that are not orders (a genome candidate's promotion, an assistant's genome
    change), oldest first; [] while there is no queue file."""
    from chimera_governance.approvals import proposals as read

    return read(Path(mode_dir) / APPROVALS_DB)


def neural_state(data_dir: Path) -> dict[str, Any] | None:
    """The recorder's latest snapshot (``data/neural_state.json``), or None."""
    return read_json(Path(data_dir) / NEURAL_STATE)


def approvals(mode_dir: Path, limit: int = 200) -> list[dict[str, Any]]:
    """The approval queue (pending oldest first, then decided newest first), one flat row
    per approval with its intent's token, side, qty and reference price. [] while there is
    no queue file (or the engine has not created its table yet); StoreError when the file
    is damaged or has a schema this code does not read — never an empty page for that."""
    path = Path(mode_dir) / APPROVALS_DB
    if not path.is_file():
        return []
    with ApprovalsView(path) as view:
        records = view.queue(limit)
    return [
        {
            "approval_id": r.approval_id,
            "client_order_id": r.intent.client_order_id,
            "value": r.value,
            "confidence": r.confidence,
            "reason": r.reason,
            "status": r.status,
            "created_ms": r.created_ms,
            "decided_ms": r.decided_ms,
            "decided_by": r.decided_by,
            "token": r.intent.token,
            "side": r.intent.side.value,
            "qty": r.intent.qty,
            "ref_price": r.intent.ref_price,
        }
        for r in records
    ]


def genome_versions(mode_dir: Path, limit: int = 200) -> list[dict[str, Any]]:
    """Every persisted genome version with its reason and metrics, by family, newest first.
    [] while there is no genome file or it holds no versions yet; GenomeError when it is
    damaged or has a schema this code does not read."""
    path = Path(mode_dir) / GENOME_DB
    if not path.is_file():
        return []
    with GenomeView(path, empty_ok=True) as view:
        return [msgspec.to_builtins(v) for v in view.versions(limit)]


JOURNAL_TABLES = ("orders", "fills", "positions", "cash_ledger")


def journal(mode_dir: Path, table: str, limit: int = 200) -> list[dict[str, Any]]:
    """Newest rows of the execution journal (``chimera.db``), newest first: orders, fills,
    positions (open or with realized P&L), cash_ledger. [] while there is no journal or no
    schema yet; StoreError when it is damaged or has a schema this code does not read."""
    if table not in JOURNAL_TABLES:
        raise ValueError(f"unknown journal table {table!r}; expected one of {JOURNAL_TABLES}")
    path = Path(mode_dir) / DB_NAME
    if not path.is_file():
        return []
    with JournalReader(path) as reader:
        rows: list[Any]
        if table == "orders":
            rows = reader.recent_orders(limit)
        elif table == "fills":
            rows = reader.recent_fills(limit)
        elif table == "positions":
            rows = reader.positions()[:limit]
        else:
            rows = reader.cash_movements(limit)
    return [msgspec.to_builtins(r) for r in rows]


def sessions(data_dir: Path) -> list[dict[str, Any]]:
    """Recorded black-box sessions (their manifests), newest first."""
    root = Path(data_dir) / BLACKBOX
    out: list[dict[str, Any]] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir():
            continue
        m = read_json(d / "manifest.json") or {}
        m.pop("config_json", None)
        m["path"] = str(d)
        m["name"] = d.name
        m["mtime"] = d.stat().st_mtime
        out.append(m)
    out.sort(key=lambda m: m["mtime"], reverse=True)
    return out


def load_session(session_dir: Path, max_points: int = 5_000) -> dict[str, Any]:
    """A recorded session for the replay page: every decision that moved something (with
    its full record), and a price series per symbol thinned to ``max_points``."""
    # The one telemetry reader; tick records decoded with the frame skipped.
    from chimera_core.errors import ProtocolError
    from chimera_core.telemetry import TOPIC_TICK, TickView, decoder_for, read_session

    decode_tick = decoder_for(TOPIC_TICK, TickView)
    prices: dict[str, list[tuple[int, float]]] = {}
    decisions: list[Decision] = []
    records = 0
    for message in read_session(Path(session_dir)):
        records += 1
        if not message.topic.startswith(TOPIC_TICK):
            continue
        try:
            rec = decode_tick(message.payload)
        except ProtocolError:
            continue
        d = rec.decision
        if d is None:
            continue
        prices.setdefault(d.token, []).append((d.exchange_ts_ms, d.physics.close))
        if (
            d.transitions
            or d.intent is not None
            or (d.meta_risk is not None and not d.meta_risk.allowed)
        ):
            decisions.append(d)
    thinned = {}
    for token, series in prices.items():
        step = max(1, len(series) // max_points)
        thinned[token] = series[::step]
    return {"records": records, "prices": thinned, "decisions": decisions}
