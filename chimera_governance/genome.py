"""Strategy genome: slow, versioned, reversible learning of the strategy's parameters.

One genome per instrument family (tokens map to families; unmapped tokens use
``"default"``). Every version is a row in SQLite (WAL) with its parent, params, reason,
metrics and the exchange time it was created; history is never deleted — a rollback is a
new version whose params equal the target's exactly.

Learning rule (deterministic, documented here because it is ours):

* Each closed trade carries ``features``: values the caller measured at entry, named
  after the gene they speak to (``gene_features`` can rename), e.g. the energy at entry
  under ``"energy_threshold"``. A gene with no feature in the window does not move.
* Nothing moves before ``MIN_HISTORY`` (31) closed trades. After that, an update is tried
  once every ``update_every`` (10) trades: at closed-trade counts 31, 41, 51, ...
* For each gene, ``corr`` = Pearson correlation of its feature with P&L over the last
  ``learn_window`` (30) trades. If better trades had a higher feature, raising the gene
  (a threshold / lookback) keeps more of them: ``step = learning_rate * corr * (hi - lo)``.
* Hard clamp: no gene moves more than 20% of its current value in one step; genes stay
  within bounds; integer genes are rounded (never rounding past the 20% clamp).
* A learned version is on probation for ``rollback_window`` (20) trades: no further
  update until then. At exactly ``rollback_window`` trades, if its mean P&L is below the
  parent's mean P&L over the parent's last ``rollback_window`` trades, the parent's params
  are restored as a new version with reason ``"auto_rollback"`` and the numbers in metrics.

Rollback lineage: the new version's ``parent_version`` is the version that was current
(what it replaced) and ``restored_from`` is the version whose params it copies, so a
second default rollback undoes the first.

No wall clock: every timestamp is an exchange time passed in.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from chimera_core.config import StrategyConfig
from chimera_core.contracts import GenomeOutput
from chimera_core.errors import ChimeraError, StoreError
from chimera_core.store import Schema, open_readonly, open_store

MIN_HISTORY = 31  # closed trades before the genome may learn (design: > 30)
LEARNING_RATE = 0.01
MAX_STEP_FRACTION = 0.20  # of the gene's current value, per update step
UPDATE_EVERY = 10
LEARN_WINDOW = 30
ROLLBACK_WINDOW = 20
DEFAULT_FAMILY = "default"

REASON_INITIAL = "initial"
REASON_LEARN = "learn"
REASON_AUTO_ROLLBACK = "auto_rollback"
REASON_CANDIDATE = "candidate"
REASON_PROMOTE = "promote"

# A version's status: only ``active`` versions are ever in force (the newest of them). A
# ``candidate`` (from `chimera genome propose`) waits for a human in the approval queue;
# approving it writes a new active version from it and marks it ``promoted``; rejecting
# marks it ``rejected``. Nothing else moves a status.
ACTIVE = "active"
CANDIDATE = "candidate"
PROMOTED = "promoted"
REJECTED = "rejected"


class GenomeError(ChimeraError):
    """Unknown family or version, or a bad input to the genome."""


@dataclass(frozen=True, slots=True)
class Gene:
    """One tunable strategy parameter and the range learning may move it in."""

    name: str
    default: float
    lo: float
    hi: float
    integer: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.lo < self.hi):
            raise GenomeError(f"gene {self.name}: expected 0 < lo < hi, got [{self.lo}, {self.hi}]")
        if not (self.lo <= self.default <= self.hi):
            raise GenomeError(
                f"gene {self.name}: default {self.default} outside [{self.lo}, {self.hi}]"
            )


DEFAULT_GENES: tuple[Gene, ...] = (
    Gene("energy_threshold", 0.2, 0.01, 2.0),
    Gene("band_k", 2.0, 1.0, 4.0),
    Gene("energy_lookback", 20, 5, 100, integer=True),
    Gene("z_lookback", 60, 20, 200, integer=True),
    Gene("band_lookback", 140, 40, 240, integer=True),
)


def genes_from_strategy(
    strategy: StrategyConfig, genes: Sequence[Gene] = DEFAULT_GENES
) -> tuple[Gene, ...]:
    """The genes with their defaults taken from the configured strategy (clamped to bounds)."""
    out = []
    for g in genes:
        value = float(getattr(strategy, g.name, g.default))
        value = min(max(value, g.lo), g.hi)
        out.append(Gene(g.name, float(round(value)) if g.integer else value, g.lo, g.hi, g.integer))
    return tuple(out)


class GenomeVersion(msgspec.Struct, frozen=True):
    """One persisted genome version (a row of ``genome_version``)."""

    family: str
    version: int
    parent_version: int | None
    restored_from: int | None
    params: dict[str, float]
    reason: str
    metrics: dict[str, int | float]
    created_exchange_ts_ms: int
    status: str = ACTIVE
    # Where a candidate came from (study, trial, data hash, code version, guards); {}
    # for the engine's own versions.
    source: dict[str, Any] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------------------- pure rules


def window_metrics(pnls: Sequence[float]) -> dict[str, int | float]:
    """Trades, mean P&L and per-trade Sharpe (mean / population std; 0 if flat)."""
    n = len(pnls)
    if n == 0:
        return {"trades": 0, "mean_pnl": 0.0, "sharpe": 0.0}
    mean = math.fsum(pnls) / n
    std = math.sqrt(math.fsum((p - mean) ** 2 for p in pnls) / n)
    return {"trades": n, "mean_pnl": mean, "sharpe": mean / std if std > 0 else 0.0}


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation in [-1, 1]; 0 when either side is flat or there are < 2 points."""
    n = len(xs)
    if n < 2 or n != len(ys):
        return 0.0
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx <= 0 or syy <= 0:
        return 0.0
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def step_params(
    params: Mapping[str, float],
    genes: Sequence[Gene],
    direction: Mapping[str, float],
    learning_rate: float = LEARNING_RATE,
) -> dict[str, float]:
    """One update step: move each gene by ``learning_rate * direction * (hi - lo)``.

    Then the hard clamps: at most ``MAX_STEP_FRACTION`` of the current value, inside the
    bounds, integer genes rounded without crossing the 20% clamp.
    """
    out: dict[str, float] = {}
    for g in genes:
        old = float(params[g.name])
        d = float(direction.get(g.name, 0.0))
        if not math.isfinite(d) or d == 0.0:
            out[g.name] = old
            continue
        max_move = MAX_STEP_FRACTION * abs(old)
        move = max(-max_move, min(max_move, learning_rate * d * (g.hi - g.lo)))
        if g.integer:
            rounded = float(round(old + move))
            if abs(rounded - old) > max_move:
                rounded = old + math.copysign(math.floor(max_move), move)
            new = rounded
        else:
            new = old + move
        # old is inside the bounds, so clamping can only shrink the move.
        out[g.name] = min(max(new, g.lo), g.hi)
    return out


# ---------------------------------------------------------------------------- the store

# Append only; files from before versioning hold version 1's tables and are adopted.
SCHEMA = Schema(
    "genome",
    (
        """
CREATE TABLE IF NOT EXISTS genome_version (
    family TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent_version INTEGER,
    restored_from INTEGER,
    params TEXT NOT NULL,
    reason TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created_exchange_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (family, version)
);
CREATE TABLE IF NOT EXISTS genome_trade (
    family TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    pnl REAL NOT NULL,
    features TEXT NOT NULL,
    exchange_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (family, seq)
);
CREATE INDEX IF NOT EXISTS genome_trade_by_version ON genome_trade (family, version, seq);
""",
        # 2: candidates proposed from a study, promoted only through the approval queue.
        """
ALTER TABLE genome_version ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE genome_version ADD COLUMN source TEXT NOT NULL DEFAULT '{}';
""",
    ),
    adopt_unversioned=True,
)

_VERSION_COLS = (
    "family, version, parent_version, restored_from, params, reason, metrics, "
    "created_exchange_ts_ms, status, source"
)


def _dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=False)


def _row_to_version(row: tuple[Any, ...]) -> GenomeVersion:
    return GenomeVersion(
        family=row[0],
        version=row[1],
        parent_version=row[2],
        restored_from=row[3],
        params=json.loads(row[4]),
        reason=row[5],
        metrics=json.loads(row[6]),
        created_exchange_ts_ms=row[7],
        status=row[8],
        source=json.loads(row[9]),
    )


class _GenomeReads:
    """The reads a genome file serves, shared by the engine's GenomeStore and the
    read-only GenomeView."""

    genes: tuple[Gene, ...]
    _db: sqlite3.Connection
    # The versions table as this file holds it: a file from before version 2 of the
    # schema (read through a view, which never migrates) has no status or source, and
    # every one of its versions was in force.
    _versions = "genome_version"

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(args)).fetchall()

    def families(self) -> list[str]:
        rows = self._rows(f"SELECT DISTINCT family FROM {self._versions} ORDER BY family")
        return [r[0] for r in rows]

    def current_version(self, family: str) -> GenomeVersion:
        version = self._latest(family)
        if version is None:
            raise _unknown_family(family)
        return version

    def history(self, family: str) -> list[GenomeVersion]:
        """Every version of the family, oldest first ([] for a family never seen)."""
        rows = self._rows(
            f"SELECT {_VERSION_COLS} FROM {self._versions} WHERE family = ? ORDER BY version",
            (family,),
        )
        return [_row_to_version(r) for r in rows]

    def versions(self, limit: int) -> list[GenomeVersion]:
        """Up to ``limit`` versions of every family: by family, newest version first."""
        rows = self._rows(
            f"SELECT {_VERSION_COLS} FROM {self._versions} ORDER BY family, version DESC LIMIT ?",
            (limit,),
        )
        return [_row_to_version(r) for r in rows]

    def version(self, family: str, version: int) -> GenomeVersion:
        rows = self._rows(
            f"SELECT {_VERSION_COLS} FROM {self._versions} WHERE family = ? AND version = ?",
            (family, version),
        )
        if not rows:
            if self._latest(family) is None:
                raise _unknown_family(family)
            known = [v.version for v in self.history(family)]
            raise GenomeError(
                f"unknown genome version {version} for family {family!r} (known: {known})"
            )
        return _row_to_version(rows[0])

    def candidates(self, family: str | None = None) -> list[GenomeVersion]:
        """Candidates waiting for a human (status ``candidate``), oldest first."""
        sql = f"SELECT {_VERSION_COLS} FROM {self._versions} WHERE status = ?"
        args: list[Any] = [CANDIDATE]
        if family is not None:
            sql += " AND family = ?"
            args.append(family)
        return [_row_to_version(r) for r in self._rows(sql + " ORDER BY family, version", args)]

    def trade_pnls(self, family: str, version: int | None = None) -> list[float]:
        """Closed-trade P&L, oldest first (all trades, or those closed under ``version``)."""
        if version is None:
            rows = self._rows(
                "SELECT pnl FROM genome_trade WHERE family = ? ORDER BY seq", (family,)
            )
        else:
            rows = self._rows(
                "SELECT pnl FROM genome_trade WHERE family = ? AND version = ? ORDER BY seq",
                (family, version),
            )
        return [r[0] for r in rows]

    def _latest(self, family: str) -> GenomeVersion | None:
        rows = self._rows(
            f"SELECT {_VERSION_COLS} FROM {self._versions} WHERE family = ? AND status = ? "
            "ORDER BY version DESC LIMIT 1",
            (family, ACTIVE),
        )
        return _row_to_version(rows[0]) if rows else None

    def _output(self, family: str) -> GenomeOutput:
        cur = self._latest(family)
        counted = self._rows("SELECT COUNT(*) FROM genome_trade WHERE family = ?", (family,))
        closed = int(counted[0][0]) if counted else 0
        if cur is None:
            params = {g.name: float(g.default) for g in self.genes}
            return GenomeOutput(family, 0, params, 0, False)
        return GenomeOutput(family, cur.version, dict(cur.params), closed, closed >= MIN_HISTORY)


def _unknown_family(family: str) -> GenomeError:
    return GenomeError(f"unknown genome family {family!r}: no version stored for it")


class GenomeView(_GenomeReads):
    """A read-only view of a genome file (cortex, ``chimera genome show|history``): SQLite
    ``mode=ro`` as a snapshot when no writer has it open (not even a ``-wal`` / ``-shm``
    appears), no schema created, nothing written. A file without genome tables, or one
    whose tables this code does not know, is a GenomeError naming it."""

    def __init__(
        self, path: str | Path, *, genes: Sequence[Gene] = DEFAULT_GENES, empty_ok: bool = False
    ) -> None:
        """``empty_ok``: a file the engine has not created the tables in yet reads as no
        versions at all (the cortex) instead of a GenomeError (the CLI)."""
        self.path = Path(path)
        self.genes = tuple(genes)
        self._empty = False
        try:
            self._view = open_readonly(self.path, SCHEMA, snapshot=True)
        except StoreError as exc:
            raise GenomeError(f"cannot read genome db {self.path}: {exc}") from None
        try:
            version = self._view.version
        except StoreError as exc:
            self._view.close()
            raise GenomeError(f"cannot read genome db {self.path}: {exc}") from None
        self._empty = version == 0
        if self._empty and not empty_ok:
            self._view.close()
            raise GenomeError(
                f"{self.path} holds no genome tables (not a genome db, or the engine has not "
                "written one yet); nothing was changed"
            )
        self._db = self._view.db
        if self._view.version == 1:
            self._versions = "(SELECT *, 'active' AS status, '{}' AS source FROM genome_version)"

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self._empty and not self._view.has_schema():
            return []
        self._empty = False
        try:
            return self._view.rows(sql, args)
        except StoreError as exc:
            raise GenomeError(f"cannot read genome db {self.path}: {exc}") from None

    def current(self, family: str) -> GenomeOutput:
        """The genome in force; version 0 (defaults) for a family never persisted."""
        return self._output(family)

    def close(self) -> None:
        self._view.close()

    def __enter__(self) -> GenomeView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GenomeStore(_GenomeReads):
    """The genomes of all instrument families, persisted in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        genes: Sequence[Gene] = DEFAULT_GENES,
        token_families: Mapping[str, str] | None = None,
        gene_features: Mapping[str, str] | None = None,
        learning_rate: float = LEARNING_RATE,
        update_every: int = UPDATE_EVERY,
        learn_window: int = LEARN_WINDOW,
        rollback_window: int = ROLLBACK_WINDOW,
    ) -> None:
        if update_every < 1 or learn_window < 2 or rollback_window < 1:
            raise GenomeError(
                "expected update_every >= 1, learn_window >= 2, rollback_window >= 1; got "
                f"{update_every}, {learn_window}, {rollback_window}"
            )
        self.genes = tuple(genes)
        self.token_families = dict(token_families or {})
        # gene name -> feature name it learns from (default: the gene's own name)
        self.gene_features = {g.name: g.name for g in self.genes} | dict(gene_features or {})
        self.learning_rate = learning_rate
        self.update_every = update_every
        self.learn_window = learn_window
        self.rollback_window = rollback_window
        self.path = Path(path)
        try:
            # check_same_thread=False: the CLI's and the engine's reads may come from another
            # thread than the one that opened it.
            self._store = open_store(
                self.path,
                SCHEMA,
                synchronous="NORMAL",
                busy_timeout_s=5.0,
                check_same_thread=False,
            )
        except StoreError as exc:
            raise GenomeError(f"genome: {exc}") from None
        self._db = self._store.db
        # current() is cached; PRAGMA data_version changes when another connection (the
        # CLI's rollback) commits, which invalidates the cache.
        self._cache: dict[str, GenomeOutput] = {}
        self._data_version = self._read_data_version()

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> GenomeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reads

    def family_for(self, token: str) -> str:
        return self.token_families.get(token, DEFAULT_FAMILY)

    def current(self, family: str) -> GenomeOutput:
        """The genome in force; version 0 (defaults, not yet persisted) before any trade."""
        dv = self._read_data_version()
        if dv != self._data_version:
            self._cache.clear()
            self._data_version = dv
        out = self._cache.get(family)
        if out is None:
            out = self._output(family)
            self._cache[family] = out
        return out

    # ------------------------------------------------------------------ writes

    def on_trade_closed(
        self, family: str, pnl: float, features: Mapping[str, float], exchange_ts_ms: int
    ) -> GenomeOutput:
        """Record a closed trade; maybe auto-roll back or learn. Returns the genome in force."""
        if not math.isfinite(pnl):
            raise GenomeError(f"closed-trade pnl must be finite, got {pnl!r}")
        clean = {k: float(v) for k, v in features.items() if math.isfinite(float(v))}
        with self._write():
            cur = self._ensure(family, exchange_ts_ms)
            (seq,) = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM genome_trade WHERE family = ?", (family,)
            ).fetchone()
            self._db.execute(
                "INSERT INTO genome_trade VALUES (?, ?, ?, ?, ?, ?)",
                (family, seq, cur.version, float(pnl), _dumps(clean), exchange_ts_ms),
            )
            if seq >= MIN_HISTORY:
                self._govern(cur, seq, exchange_ts_ms)
        return self.current(family)

    def rollback(
        self,
        family: str,
        to_version: int | None = None,
        reason: str = "rollback",
        exchange_ts_ms: int | None = None,
    ) -> GenomeVersion:
        """Restore ``to_version``'s params (default: the current version's parent) as a new
        version. ``exchange_ts_ms`` defaults to the family's latest known exchange time."""
        with self._write():
            cur = self.current_version(family)
            if to_version is None:
                if cur.parent_version is None:
                    raise GenomeError(
                        f"family {family!r} v{cur.version} has no parent; pass to_version"
                    )
                to_version = cur.parent_version
            target = self.version(family, to_version)
            if target.status != ACTIVE:
                raise GenomeError(
                    f"{family!r} v{to_version} is {target.status}, never in force: a candidate "
                    "goes live only through the approval queue (`chimera approve`)"
                )
            if exchange_ts_ms is None:
                (last_trade,) = self._db.execute(
                    "SELECT MAX(exchange_ts_ms) FROM genome_trade WHERE family = ?", (family,)
                ).fetchone()
                exchange_ts_ms = max(cur.created_exchange_ts_ms, last_trade or 0)
            metrics = window_metrics(self.trade_pnls(family, cur.version)[-self.rollback_window :])
            return self._insert(cur, target.params, reason, metrics, exchange_ts_ms, target.version)

    def new_version(
        self,
        family: str,
        params: Mapping[str, float],
        reason: str,
        exchange_ts_ms: int,
        version: int | None = None,
    ) -> GenomeVersion:
        """Put ``params`` in force for ``family`` as a new version (a promotion, an operator's
        change). Every gene must be present and inside its bounds. ``version`` numbers it
        (a recorded promotion followed by replay); it must be above every number stored."""
        self._check_params(family, params)
        with self._write():
            cur = self._ensure(family, exchange_ts_ms)
            return self._insert(cur, params, reason, {}, exchange_ts_ms, None, number=version)

    def propose(
        self,
        family: str,
        params: Mapping[str, float],
        source: Mapping[str, Any],
        exchange_ts_ms: int,
        metrics: Mapping[str, int | float] | None = None,
    ) -> GenomeVersion:
        """Store ``params`` as a ``candidate`` version of ``family`` (never in force by
        itself), linked to ``source`` (its study and trial); its parent is the version in
        force now. Every gene must be present and inside its bounds."""
        self._check_params(family, params)
        with self._write():
            cur = self._ensure(family, exchange_ts_ms)
            return self._insert(
                cur, params, REASON_CANDIDATE, dict(metrics or {}), exchange_ts_ms, None,
                status=CANDIDATE, source=source,
            )  # fmt: skip

    def promote(self, family: str, version: int, by: str, exchange_ts_ms: int) -> GenomeVersion:
        """Put candidate ``version``'s params in force as a new active version (a human
        approved it) and mark the candidate ``promoted``."""
        with self._write():
            cand = self._candidate(family, version)
            cur = self._ensure(family, exchange_ts_ms)
            self._db.execute(
                "UPDATE genome_version SET status = ? WHERE family = ? AND version = ?",
                (PROMOTED, family, version),
            )
            source = {**cand.source, "candidate": version, "approved_by": by}
            return self._insert(
                cur, cand.params, REASON_PROMOTE, cand.metrics, exchange_ts_ms, version,
                source=source,
            )  # fmt: skip

    def reject(self, family: str, version: int) -> GenomeVersion:
        """Mark candidate ``version`` ``rejected`` (it stays in the history)."""
        with self._write():
            cand = self._candidate(family, version)
            self._db.execute(
                "UPDATE genome_version SET status = ? WHERE family = ? AND version = ?",
                (REJECTED, family, version),
            )
        return msgspec.structs.replace(cand, status=REJECTED)

    def _candidate(self, family: str, version: int) -> GenomeVersion:
        cand = self.version(family, version)
        if cand.status != CANDIDATE:
            raise GenomeError(
                f"{family!r} v{version} is {cand.status}, not a candidate: nothing to decide"
            )
        return cand

    def _check_params(self, family: str, params: Mapping[str, float]) -> None:
        missing = {g.name for g in self.genes} - set(params)
        if missing:
            raise GenomeError(f"params for {family!r} lack genes {sorted(missing)}")
        unknown = set(params) - {g.name for g in self.genes}
        if unknown:
            raise GenomeError(
                f"params for {family!r} name no gene: {sorted(unknown)} (genes: "
                f"{[g.name for g in self.genes]})"
            )
        for g in self.genes:
            value = float(params[g.name])
            if not (g.lo <= value <= g.hi):
                raise GenomeError(
                    f"gene {g.name}={value} is outside its bounds [{g.lo}, {g.hi}] for {family!r}"
                )
            if g.integer and value != int(value):
                raise GenomeError(f"gene {g.name} is an integer, got {value} for {family!r}")

    # ------------------------------------------------------------------ internals

    def _govern(self, cur: GenomeVersion, closed: int, ts: int) -> None:
        on_current = self.trade_pnls(cur.family, cur.version)
        if cur.reason == REASON_LEARN and cur.parent_version is not None:
            if len(on_current) < self.rollback_window:
                return  # on probation: no new step until it has been judged
            if len(on_current) == self.rollback_window and self._auto_rollback(cur, on_current, ts):
                return
        if (closed - MIN_HISTORY) % self.update_every != 0:
            return
        rows = self._db.execute(
            "SELECT pnl, features FROM genome_trade WHERE family = ? ORDER BY seq DESC LIMIT ?",
            (cur.family, self.learn_window),
        ).fetchall()
        rows.reverse()
        pnls = [r[0] for r in rows]
        feats = [json.loads(r[1]) for r in rows]
        direction: dict[str, float] = {}
        for g in self.genes:
            name = self.gene_features.get(g.name, g.name)
            pairs = [(f[name], p) for f, p in zip(feats, pnls, strict=True) if name in f]
            direction[g.name] = pearson([x for x, _ in pairs], [y for _, y in pairs])
        new = step_params(cur.params, self.genes, direction, self.learning_rate)
        if new == cur.params:
            return
        metrics = window_metrics(pnls) | {f"corr_{k}": v for k, v in sorted(direction.items())}
        self._insert(cur, new, REASON_LEARN, metrics, ts, None)

    def _auto_rollback(self, cur: GenomeVersion, child: list[float], ts: int) -> bool:
        assert cur.parent_version is not None
        parent = self.trade_pnls(cur.family, cur.parent_version)[-self.rollback_window :]
        if not parent:
            return False
        child_m = window_metrics(child)
        parent_m = window_metrics(parent)
        if not child_m["mean_pnl"] < parent_m["mean_pnl"]:
            return False
        target = self.version(cur.family, cur.parent_version)
        metrics: dict[str, int | float] = {
            "trades": child_m["trades"],
            "mean_pnl": child_m["mean_pnl"],
            "sharpe": child_m["sharpe"],
            "parent_trades": parent_m["trades"],
            "parent_mean_pnl": parent_m["mean_pnl"],
            "parent_sharpe": parent_m["sharpe"],
        }
        self._insert(cur, target.params, REASON_AUTO_ROLLBACK, metrics, ts, target.version)
        return True

    def _ensure(self, family: str, ts: int) -> GenomeVersion:
        cur = self._latest(family)
        if cur is not None:
            return cur
        params = {g.name: float(g.default) for g in self.genes}
        self._db.execute(
            f"INSERT INTO genome_version ({_VERSION_COLS}) "
            "VALUES (?, 1, NULL, NULL, ?, ?, ?, ?, ?, ?)",
            (family, _dumps(params), REASON_INITIAL, _dumps({}), ts, ACTIVE, _dumps({})),
        )
        return GenomeVersion(family, 1, None, None, params, REASON_INITIAL, {}, ts)

    def _insert(
        self,
        cur: GenomeVersion,
        params: Mapping[str, float],
        reason: str,
        metrics: Mapping[str, int | float],
        ts: int,
        restored_from: int | None,
        status: str = ACTIVE,
        source: Mapping[str, Any] | None = None,
        number: int | None = None,
    ) -> GenomeVersion:
        # Numbers run over every row (candidates too), so a version number names one row.
        (top,) = self._db.execute(
            "SELECT MAX(version) FROM genome_version WHERE family = ?", (cur.family,)
        ).fetchone()
        nxt = max(int(top or 0), cur.version) + 1
        if number is not None and number < nxt:
            raise GenomeError(
                f"{cur.family!r} v{number} cannot be written: versions up to {nxt - 1} exist"
            )
        new = GenomeVersion(
            family=cur.family,
            version=nxt if number is None else number,
            parent_version=cur.version,
            restored_from=restored_from,
            params=dict(params),
            reason=reason,
            metrics=dict(metrics),
            created_exchange_ts_ms=ts,
            status=status,
            source=dict(source or {}),
        )
        self._db.execute(
            f"INSERT INTO genome_version ({_VERSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.family,
                new.version,
                new.parent_version,
                new.restored_from,
                _dumps(new.params),
                new.reason,
                _dumps(new.metrics),
                new.created_exchange_ts_ms,
                new.status,
                _dumps(new.source),
            ),
        )
        return new

    def _read_data_version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[None]:
        # IMMEDIATE: take the write lock up front so version numbers cannot race with
        # another process (the CLI) writing the same family.
        with self._store.transaction():
            yield
        self._cache.clear()
