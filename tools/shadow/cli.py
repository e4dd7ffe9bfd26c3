"""``chimera shadow [run] [CANDIDATE ...]`` and ``chimera shadow status``.

``run`` (the default) subscribes to the engine's telemetry (``[telemetry] endpoint``) and
runs the active genome and every candidate named here or in ``[shadow] candidates`` on
paper until SIGINT/SIGTERM. ``status`` prints each candidate's figures, gates and
promotion from ``data/shadow/<candidate>/status.json`` (what the running shadow wrote),
and, when the primary trades through a real broker, the paper twin's comparison with the
real fills from ``data/shadow/active/twin.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from chimera_core.config import default_config_path, load_config
from chimera_core.errors import ChimeraError
from chimera_core.logging import configure_logging

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chimera shadow", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=default_config_path(), help="TOML config")
    sub = p.add_subparsers(dest="action")
    run = sub.add_parser("run", help="run the candidates on the live telemetry (default)")
    run.add_argument("candidates", nargs="*", help="FAMILY@VERSION | vN | candidate.toml")
    run.add_argument("--config", default=argparse.SUPPRESS, help="TOML config")
    status = sub.add_parser("status", help="each candidate's figures, gates and promotion")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument("--config", default=argparse.SUPPRESS, help="TOML config")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "status", "-h", "--help", "--config"):
        argv = ["run", *argv]
    elif argv[0] == "--config" and len(argv) > 2 and argv[2] not in ("run", "status"):
        argv = [*argv[:2], "run", *argv[2:]]
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config)
    if args.action == "status":
        return _status(
            Path(cfg.data_dir) / "shadow", Path(cfg.data_dir) / cfg.mode / "approvals.db", args.json
        )
    return _run(cfg, list(cfg.shadow.candidates) + list(args.candidates or ()))


def _run(cfg: Any, specs: list[str]) -> int:
    import uvloop

    from chimera_core.telemetry import TelemetryPublisher
    from tools.shadow.candidates import resolve_all
    from tools.shadow.runner import Shadow, run

    configure_logging(cfg.logging.level)
    candidates = resolve_all(specs, cfg)
    publisher = TelemetryPublisher(cfg.shadow.endpoint, cfg.telemetry.hwm)
    shadow = Shadow(cfg, candidates, publisher=publisher)
    log.info(
        "shadow_started",
        telemetry=cfg.telemetry.endpoint,
        publishes=publisher.endpoint,
        candidates={c.name: c.source for c in candidates},
    )

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(shadow, cfg.telemetry.endpoint, stop, cfg.shadow.check_interval_s)

    try:
        uvloop.run(main_async())
    finally:
        publisher.close()
    return 0


def _status(shadow_dir: Path, approvals_db: Path, as_json: bool) -> int:
    from chimera_governance.approvals import proposals

    decided = {str(p["proposal_id"]): str(p["status"]) for p in proposals(approvals_db)}
    rows = []
    for path in sorted(shadow_dir.glob("*/status.json")):
        try:
            row = json.loads(path.read_text())
            row["promotion_status"] = decided.get(row.get("promotion") or "", "")
            if row.get("twin"):
                row["twin_summary"] = _twin_summary(path.with_name("twin.json"))
            rows.append(row)
        except (OSError, ValueError) as exc:
            raise ChimeraError(
                f"{path} is unreadable ({exc}); is `chimera shadow` writing it?"
            ) from None
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no shadow candidates under {shadow_dir} (is `chimera shadow` running?)")
        return 0
    for r in rows:
        gates = r.get("gates") or {}
        verdict = "n/a" if not gates else ("PASS" if gates.get("passed") else "fail")
        print(
            f"{r['candidate']:16} ticks {r['ticks']:>8} divergences {r['divergences']:>6} "
            f"trades {r['trades']:>4} pnl {r['pnl']:>10.2f} equity {r['equity'] or 0:>12.2f} "
            f"days {r['days']:>3} gates {verdict}"
            + (
                f" promotion {r['promotion']} {r['promotion_status']}".rstrip()
                if r.get("promotion")
                else ""
            )
        )
        for check in gates.get("checks") or ():
            print(f"    {check['name']:12} {'ok  ' if check['ok'] else 'FAIL'} {check['detail']}")
        last = r.get("last_divergence")
        if last:
            print(f"    last divergence seq {last['seq']}: {last['reason']}")
        if r.get("twin_off"):
            print(f"    paper twin: off ({r['twin_off']})")
        elif r.get("twin_summary"):
            for line in _twin_lines(r["twin_summary"]):
                print(f"    {line}")
    return 0


def _twin_summary(path: Path) -> dict[str, Any]:
    """twin.json without its per-order rows."""
    try:
        twin = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ChimeraError(
            f"{path} is unreadable ({exc}); is `chimera shadow` writing it?"
        ) from None
    twin.pop("rows", None)
    return dict(twin)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _twin_lines(t: dict[str, Any]) -> list[str]:
    def dist(name: str, unit: str) -> str:
        d = t.get(name) or {}
        if not d.get("n"):
            return f"{name} -"
        return (f"{name} p50 {d['p50']:.2f} p90 {d['p90']:.2f} p99 {d['p99']:.2f} "
                f"mean {d['mean']:.2f} {unit} (n {d['n']})")  # fmt: skip

    return [
        f"paper twin vs {t.get('broker', '?')} ({t.get('mode', '?')}): orders {t['orders']} "
        f"paired {t['paired']} (by sequence {t['paired_by_sequence']}) live only "
        f"{t['live_only']} paper only {t['paper_only']}; fill rate live "
        f"{_rate(t['live_fill_rate'])} paper {_rate(t['paper_fill_rate'])}",
        dist("price_diff_bps", "bps (live worse > 0)"),
        dist("live_slippage_bps", "bps"),
        dist("paper_slippage_bps", "bps"),
        dist("live_latency_ms", "ms"),
        dist("paper_latency_ms", "ms"),
    ]
