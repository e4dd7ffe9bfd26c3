"""Read-only access to what other processes wrote: the recorder's files, the governance
SQLite databases, the execution journal. Every reader tolerates the file (or table) being
absent and opens SQLite with ``mode=ro`` so the cortex can never write the engine's state.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import orjson

from chimera_core.contracts import Decision

NEURAL_STATE = "neural_state.json"
BLACKBOX = "blackbox"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def neural_state(data_dir: Path) -> dict[str, Any] | None:
    """The recorder's latest snapshot (``data/neural_state.json``), or None."""
    return read_json(Path(data_dir) / NEURAL_STATE)


def _query(db: Path, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows as dicts from a read-only connection; [] when the file or table is absent."""
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return []
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, args).fetchall()]
    except sqlite3.Error:
        return []
    finally:
        con.close()


def approvals(mode_dir: Path, limit: int = 200) -> list[dict[str, Any]]:
    """The approval queue (pending oldest first, then decided newest first), intents decoded."""
    rows = _query(
        Path(mode_dir) / "approvals.db",
        "SELECT approval_id, client_order_id, intent, value, confidence, reason, status,"
        " created_ms, decided_ms, decided_by FROM approval"
        # Pending oldest first (they expire first, and the list stays put as new ones
        # queue), then decided ones newest first.
        " ORDER BY (status = 'PENDING') DESC,"
        " CASE WHEN status = 'PENDING' THEN created_ms ELSE -created_ms END LIMIT ?",
        (limit,),
    )
    for r in rows:
        try:
            intent = orjson.loads(r.pop("intent"))
        except (orjson.JSONDecodeError, TypeError):
            intent = {}
        r["token"] = intent.get("token", "")
        r["side"] = intent.get("side", "")
        r["qty"] = intent.get("qty", 0)
        r["ref_price"] = intent.get("ref_price", 0.0)
    return rows


def genome_versions(mode_dir: Path, limit: int = 200) -> list[dict[str, Any]]:
    """Every persisted genome version with its reason and metrics, newest first."""
    rows = _query(
        Path(mode_dir) / "genome.db",
        "SELECT family, version, parent_version, restored_from, params, reason, metrics,"
        " created_exchange_ts_ms FROM genome_version ORDER BY family, version DESC LIMIT ?",
        (limit,),
    )
    for r in rows:
        for key in ("params", "metrics"):
            try:
                r[key] = orjson.loads(r[key])
            except (orjson.JSONDecodeError, TypeError):
                pass
    return rows


def journal(mode_dir: Path, table: str, limit: int = 200) -> list[dict[str, Any]]:
    """Newest rows of the execution journal (``chimera.db``): orders, fills, positions,
    cash_ledger."""
    if table not in ("orders", "fills", "positions", "cash_ledger"):
        raise ValueError(f"unknown journal table {table!r}")
    return _query(
        Path(mode_dir) / "chimera.db",
        f"SELECT * FROM {table} ORDER BY rowid DESC LIMIT ?",
        (limit,),
    )


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


class _Tick(msgspec.Struct, array_like=True, gc=False):
    recv_ns: int
    frame: msgspec.Raw
    decision: Decision | None


_tick_decoder = msgspec.msgpack.Decoder(_Tick)


def load_session(session_dir: Path, max_points: int = 5_000) -> dict[str, Any]:
    """A recorded session for the replay page: every decision that moved something (with
    its full record), and a price series per symbol thinned to ``max_points``."""
    from chimera_core.telemetry import SEP, SEQ, TOPIC_TICK
    from tools.blackbox import iter_session  # the black-box file format, nothing else

    prices: dict[str, list[tuple[int, float]]] = {}
    decisions: list[Decision] = []
    records = 0
    for body in iter_session(Path(session_dir)):
        records += 1
        cut = body.find(SEP)
        if cut <= 0 or not body.startswith(TOPIC_TICK):
            continue
        try:
            rec = _tick_decoder.decode(body[cut + 1 + SEQ.size :])
        except msgspec.DecodeError:
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
