"""``chimera research nightly``: the research loop the chimera-research.timer runs.

In order, within ``[research] budget_s`` of wall time:

1. refresh every ``[[research.history]]`` series (``chimera history fetch`` of the last
   ``days`` IST days up to yesterday, cached and resumable);
2. re-run every ``[[research.studies]]`` walk-forward (``chimera optimize``) as the study
   ``NAME-YYYYMMDD``: the same night's run resumes it, another night starts afresh on the
   refreshed data;
3. propose each finished study's candidate whose guards passed (``chimera genome propose``):
   a candidate genome version and a promotion in the approval queue, which a human still
   approves.

Each step runs as its own process with what is left of the budget as its timeout, so one
failing or slow step never takes the others down and a study cut off by the budget
resumes the next time the same night's study runs. What was done is logged (structlog
events ``research_*``) and written to ``<data_dir>/research/nightly-YYYYMMDD.json``.
Exit codes: 0 every step done, 1 some step failed or ran out of budget, 2 bad config.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from chimera_core.config import Config, ResearchStudy, default_config_path, load_config
from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)
IST = ZoneInfo("Asia/Kolkata")
STOP_GRACE_S = 10.0  # a step past the budget gets SIGINT, then SIGKILL after this


def _study_argv(s: ResearchStudy, name: str, cfg: Config, research_dir: Path) -> list[str]:
    argv = ["optimize"]
    for d in s.data:
        argv += ["--data", d]
    argv += [
        "--study", name, "--strategy", s.strategy, "--sampler", s.sampler,
        "--trials", str(s.trials), "--generation", str(s.generation),
        "--scheme", s.scheme, "--unit", s.unit,
        "--train", str(s.train), "--test", str(s.test), "--folds", str(s.folds),
        "--seed", str(s.seed), "--min-deflated-sharpe", str(s.min_deflated_sharpe),
        "--max-pbo", str(s.max_pbo), "--pbo-splits", str(s.pbo_splits),
        "--research-dir", str(research_dir), "--quiet",
    ]  # fmt: skip
    if s.space:
        argv += ["--space", s.space]
    r = cfg.research
    if r.ray:
        argv += ["--ray", r.ray]
    elif r.workers:
        argv += ["--workers", str(r.workers)]
    return argv


def _run_step(argv: list[str], left_s: float, cwd: Path) -> dict[str, Any]:
    """One chimera command as its own process, stopped (SIGINT, then SIGKILL) when the
    budget runs out; its outcome and the tail of what it said."""
    if left_s <= 0:
        return {"outcome": "skipped_budget"}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", *argv],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=left_s)
        outcome = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # a study stores what it did and resumes later
        try:
            out, err = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        outcome = "over_budget"
    return {
        "outcome": outcome,
        "returncode": proc.returncode,
        "seconds": round(time.monotonic() - started, 3),
        "stdout": out[-4_000:],
        "stderr": err[-4_000:],
    }


def nightly(
    cfg: Config, config_path: str | None, today: dt.date, cwd: Path | None = None
) -> dict[str, Any]:
    """Run the night's loop (module docstring); returns (and writes) its summary."""
    r = cfg.research
    cwd = cwd or Path.cwd()
    deadline = time.monotonic() + r.budget_s
    data_dir = Path(cfg.data_dir)
    research_dir = data_dir / "research"
    research_dir.mkdir(parents=True, exist_ok=True)
    conf = ["--config", config_path] if config_path else []
    summary: dict[str, Any] = {
        "date": today.isoformat(),
        "budget_s": r.budget_s,
        "history": [],
        "studies": [],
    }
    log.info("research_started", date=today.isoformat(), budget_s=r.budget_s,
             history=len(r.history), studies=len(r.studies))  # fmt: skip
    last = today - dt.timedelta(days=1)
    for h in r.history:
        first = last - dt.timedelta(days=h.days - 1)
        argv = ["history", "fetch", "--exchange", h.exchange, "--token", h.token,
                "--interval", h.interval, "--from", first.isoformat(), "--to", last.isoformat(),
                "--out", h.out, "--data-dir", str(data_dir), *conf]  # fmt: skip
        step = _run_step(argv, deadline - time.monotonic(), cwd)
        summary["history"].append({"token": h.token, "interval": h.interval, "out": h.out, **step})
        log.info("research_history", token=h.token, interval=h.interval,
                 outcome=step["outcome"], stderr=step.get("stderr", "")[-300:])  # fmt: skip
    genome_db = data_dir / cfg.mode / "genome.db"
    for s in r.studies:
        name = f"{s.name}-{today:%Y%m%d}"
        step = _run_step(_study_argv(s, name, cfg, research_dir), deadline - time.monotonic(),
                         cwd)  # fmt: skip
        entry: dict[str, Any] = {"study": name, **step}
        if step["outcome"] == "ok" and s.propose:
            proposed = _run_step(
                ["genome", "propose", name, "--family", s.family, "--db", str(genome_db),
                 "--research-dir", str(research_dir), *conf],
                max(deadline - time.monotonic(), 60.0),  # a proposal is seconds: always try
                cwd,
            )  # fmt: skip
            if proposed["outcome"] == "ok":
                entry["proposal"] = json.loads(proposed["stdout"])
                log.warning("research_candidate_proposed", study=name,
                            proposal_id=entry["proposal"]["proposal_id"],
                            version=entry["proposal"]["candidate_version"])  # fmt: skip
            else:
                entry["not_proposed"] = proposed["stderr"].strip()[-600:]
                log.info("research_not_proposed", study=name, why=entry["not_proposed"])
        summary["studies"].append(entry)
        log.info("research_study", study=name, outcome=step["outcome"], seconds=step.get("seconds"))
    steps = summary["history"] + summary["studies"]
    summary["ok"] = all(x["outcome"] == "ok" for x in steps)
    path = research_dir / f"nightly-{today:%Y%m%d}.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("research_done", ok=summary["ok"], summary=str(path),
             proposed=sum("proposal" in x for x in summary["studies"]))  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="chimera research",
        description="nightly research: refresh history, re-run studies, propose candidates",
    )
    sub = p.add_subparsers(dest="action", required=True)
    night = sub.add_parser("nightly", help="one night's loop ([research] in the config)")
    night.add_argument("--config", default=default_config_path(), help="chimera.toml")
    night.add_argument("--date", default=None, help="the night's IST date (default: today)")
    args = p.parse_args(argv)
    from chimera_core.logging import configure_logging

    configure_logging("INFO")
    try:
        cfg = load_config(args.config)
        today = dt.date.fromisoformat(args.date) if args.date else dt.datetime.now(IST).date()
    except (ChimeraError, ValueError) as exc:
        print(f"chimera research: {exc}", file=sys.stderr)
        return 2
    if not cfg.research.studies and not cfg.research.history:
        print(
            "chimera research: nothing to do: [research] names no history or studies "
            "(chimera.example.toml, [research])",
            file=sys.stderr,
        )
        return 2
    summary = nightly(cfg, args.config, today)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
