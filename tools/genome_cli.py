"""``chimera genome show|history|rollback|propose``: inspect and roll back the strategy
genome, and propose a study's trial as a candidate version.

``propose STUDY [FOLD:TRIAL]`` writes the trial's parameters (default: the study's
candidate) as a version with status ``candidate``, linked to its study and trial, and
queues its promotion in the approval queue; it goes into force only when a human approves
it (``chimera approve prp-…`` or the cortex). A study whose overfitting guards failed
cannot be proposed.

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
    rollback = sub.add_parser(
        "rollback",
        help="restore an earlier version as a new one, offline; with the engine running use "
        "`chimera rollback FAMILY[:VERSION]` (taken at its next bar, recorded, replayable)",
    )
    common(rollback)
    rollback.add_argument("--to", type=int, help="version to restore (default: the parent)")
    rollback.add_argument("--reason", default="manual_rollback", help="recorded reason")
    propose = sub.add_parser("propose", help="a study's trial as a candidate (to approve)")
    common(propose)
    propose.add_argument("study", help="study name (chimera optimize show STUDY)")
    propose.add_argument("trial", nargs="?", help="FOLD:TRIAL (default: the study's candidate)")
    propose.add_argument("--research-dir", default=None, help="default: <data_dir>/research")
    propose.add_argument("--config", default=None, help="chimera.toml (default: ./chimera.toml)")
    propose.add_argument(
        "--approvals", default=None, help="approval queue (default: approvals.db beside --db)"
    )
    return parser


def _json(obj: object) -> str:
    return msgspec.json.format(msgspec.json.encode(obj).decode(), indent=2)


def _fmt_params(params: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in sorted(params.items()))


def _table(versions: list[GenomeVersion]) -> str:
    header = (
        "version", "status", "parent", "restored", "created_ts_ms", "reason", "trades",
        "mean_pnl",
    )  # fmt: skip
    rows = [header]
    for v in versions:
        mean = v.metrics.get("mean_pnl")
        rows.append(
            (
                str(v.version),
                v.status,
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


def _propose(args: argparse.Namespace) -> str:
    """The study's trial as a candidate version, and its promotion in the approval queue."""
    import time

    from chimera_core.config import load_config
    from chimera_governance import approvals as apv
    from chimera_governance.genome import genes_from_strategy
    from tools.optimize.cli import open_study

    _, parent, spec = open_study(args.study, args.research_dir, args.config)
    result = parent.user_attrs.get("result")
    if not result:
        raise GenomeError(
            f"study {args.study!r} has not finished (no result): run the same "
            "`chimera optimize` command again to resume it, then propose"
        )
    if not result.get("proposable"):
        why = "; ".join(result.get("not_proposable_because", [])) or "guards failed"
        raise GenomeError(f"study {args.study!r} cannot be proposed: {why}")
    if spec.strategy != "default":
        raise GenomeError(
            f"study {args.study!r} searched strategy {spec.strategy!r}; the genome holds the "
            "default strategy's genes only"
        )
    picks = {f["pick"]["ref"]: f for f in result["folds"]}
    ref = args.trial or result["candidate"]["ref"]
    if ref not in picks:
        raise GenomeError(
            f"trial {ref} was no fold's pick, so it has no out-of-sample score; proposable: "
            f"{sorted(picks)} (the study's candidate: {result['candidate']['ref']})"
        )
    fold = picks[ref]
    cfg = load_config(spec.config or args.config)
    genes = genes_from_strategy(cfg.strategy)
    db = Path(args.db)
    with GenomeStore(db, genes=genes) as store:
        base = store.current(args.family).params
        searched = {**fold["pick"]["params"], **spec.space.fixed}
        params = {g.name: float(searched.get(g.name, base[g.name])) for g in genes}
        dsr = result["guards"]["deflated_sharpe"]
        source = {
            "study": args.study,
            "trial": ref,
            "strategy": spec.strategy,
            "seed": spec.seed,
            "data": [{"path": d.path, "sha256": d.sha256} for d in spec.data],
            "code_version": result.get("code_version", ""),
            "deflated_sharpe": dsr.get("value"),
            "pbo": result["guards"]["pbo"][-1].get("pbo"),
            "test_window_ts_ms": fold["test_ts_ms"],
        }
        metrics = {k: v for k, v in fold["pick"]["test"].items() if isinstance(v, int | float)}
        cand = store.propose(args.family, params, source, fold["test_ts_ms"][1], metrics)
    approvals = Path(args.approvals) if args.approvals else db.with_name("approvals.db")
    sharpe = fold["pick"]["test"].get("sharpe")
    proposal_id = apv.propose(
        approvals,
        "genome_promote",
        {"family": args.family, "version": cand.version},
        f"study {args.study} trial {ref}: out-of-sample Sharpe {sharpe}, deflated Sharpe "
        f"{source['deflated_sharpe']}, PBO {source['pbo']}",
        "chimera genome propose",
        int(time.time() * 1000),
    )
    return _json(
        {
            "family": args.family,
            "candidate_version": cand.version,
            "params": cand.params,
            "proposal_id": proposal_id,
            "then": f"chimera approve {proposal_id}   (or reject it; the cortex shows it too)",
        }
    )


def _run(args: argparse.Namespace) -> str:
    if args.action == "propose":
        return _propose(args)
    db = Path(args.db)
    if not db.is_file():
        raise GenomeError(f"no genome db at {db} (expected the file the engine writes; --db)")
    if args.action == "rollback":  # the only action that writes
        with GenomeStore(db) as store:
            _known_family(store, args.family)
            done = store.rollback(args.family, to_version=args.to, reason=args.reason)
        print(
            "chimera genome rollback: written to the file; a running engine keeps the version "
            "it loaded until it restarts: with one running, use `chimera rollback "
            f"{args.family}` instead",
            file=sys.stderr,
        )
        return _json(done)
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
