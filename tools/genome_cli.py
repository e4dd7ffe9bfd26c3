"""``chimera genome show|history|rollback``: inspect and roll back the strategy genome.

Exit codes: 0 done, 2 the request could not be served (no db, unknown family or
version, bad arguments). ``show`` and ``rollback`` print JSON; ``history`` prints a
table (or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import msgspec

from chimera_core.errors import ChimeraError
from chimera_governance.genome import (
    DEFAULT_FAMILY,
    GenomeError,
    GenomeStore,
    GenomeVersion,
    GenomeView,
)

DEFAULT_DB = "data/paper/genome.db"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chimera genome", description="the strategy genome")
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--family", default=DEFAULT_FAMILY, help="instrument family")
        p.add_argument("--db", default=DEFAULT_DB, help=f"genome SQLite file ({DEFAULT_DB})")

    common(sub.add_parser("show", help="the genome version in force"))
    history = sub.add_parser("history", help="every version, oldest first")
    common(history)
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rollback = sub.add_parser("rollback", help="restore an earlier version as a new one")
    common(rollback)
    rollback.add_argument("--to", type=int, help="version to restore (default: the parent)")
    rollback.add_argument("--reason", default="manual_rollback", help="recorded reason")
    return parser


def _json(obj: object) -> str:
    return msgspec.json.format(msgspec.json.encode(obj).decode(), indent=2)


def _fmt_params(params: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in sorted(params.items()))


def _table(versions: list[GenomeVersion]) -> str:
    header = ("version", "parent", "restored", "created_ts_ms", "reason", "trades", "mean_pnl")
    rows = [header]
    for v in versions:
        mean = v.metrics.get("mean_pnl")
        rows.append(
            (
                str(v.version),
                "-" if v.parent_version is None else str(v.parent_version),
                "-" if v.restored_from is None else str(v.restored_from),
                str(v.created_exchange_ts_ms),
                v.reason,
                str(v.metrics.get("trades", "-")),
                "-" if mean is None else f"{mean:.4g}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for line_no, v in enumerate(versions, start=1):
        lines[line_no] += "  " + _fmt_params(v.params)
    lines[0] += "  params"
    return "\n".join(line.rstrip() for line in lines)


def _run(args: argparse.Namespace) -> str:
    db = Path(args.db)
    if not db.is_file():
        raise GenomeError(f"no genome db at {db} (expected the file the engine writes; --db)")
    if args.action == "rollback":  # the only action that writes
        with GenomeStore(db) as store:
            _known_family(store, args.family)
            return _json(store.rollback(args.family, to_version=args.to, reason=args.reason))
    with GenomeView(db) as view:  # show and history only read
        _known_family(view, args.family)
        if args.action == "history":
            versions = view.history(args.family)
            return _json(versions) if args.json else _table(versions)
        cur = view.current_version(args.family)
        out = view.current(args.family)
        return _json(
            {
                "family": out.family,
                "version": out.version,
                "parent_version": cur.parent_version,
                "restored_from": cur.restored_from,
                "reason": cur.reason,
                "params": out.params,
                "metrics": cur.metrics,
                "closed_trades": out.closed_trades,
                "learning": out.learning,
                "created_exchange_ts_ms": cur.created_exchange_ts_ms,
            }
        )


def _known_family(store: GenomeStore | GenomeView, family: str) -> None:
    if family not in store.families():
        known = ", ".join(store.families()) or "none"
        raise GenomeError(f"unknown genome family {family!r} (known: {known})")


def main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage (or --help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        text = _run(args)
    except (ChimeraError, sqlite3.Error) as exc:
        print(f"chimera genome {args.action}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
