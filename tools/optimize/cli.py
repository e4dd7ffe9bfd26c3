"""``chimera optimize``: walk-forward search of a strategy's parameters (docs/OPTIMIZE.md).

    chimera optimize --data data/samples/sim_2885_5m.csv --trials 50 --unit days \
        --train 10 --test 5                       # a local process pool
    chimera optimize --data FILE --ray auto ...   # the same study on Ray
    chimera optimize show STUDY                   # its trials
    chimera optimize rerun STUDY FOLD:TRIAL       # recompute one trial, compare exactly
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import structlog

from chimera_core.errors import ChimeraError

log = structlog.get_logger(__name__)


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera optimize",
        description="Walk-forward search of a strategy's parameters (Optuna) on a local "
        "process pool or Ray; `chimera optimize show|rerun STUDY ...` read a stored study.",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        help="OHLCV CSV / Parquet (repeat for several instruments: one book)",
    )
    p.add_argument("--strategy", default="default", help="default | ma_cross | module:attr")
    p.add_argument(
        "--space",
        default=None,
        help="search-space TOML (default: the strategy's "
        "parameters within the genome's gene bounds)",
    )
    p.add_argument(
        "--study",
        default=None,
        help="study name (default: from the settings, so the same command resumes the same study)",
    )
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid", "nsga2"])
    p.add_argument("--trials", type=int, default=100, help="trials per fold (default 100)")
    p.add_argument(
        "--generation",
        type=int,
        default=32,
        help="trials asked before any is told (default 32; part of the study)",
    )
    p.add_argument(
        "--lag",
        type=int,
        default=1,
        choices=[0, 1],
        help="generations in flight while the next is asked (default 1: the sampler works "
        "while the workers evaluate; 0: studies stored before this option); part of the study",
    )
    p.add_argument("--population", type=int, default=32, help="NSGA-II population size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--objective",
        default="sharpe",
        help="single-objective samplers: sharpe, "
        "sortino, calmar, total_return, annual_return, max_drawdown, turnover",
    )
    p.add_argument(
        "--pick",
        default="sharpe",
        help="NSGA-II: the Pareto-front trial with the best PICK is the fold's pick",
    )
    p.add_argument("--scheme", default="rolling", choices=["rolling", "anchored"])
    p.add_argument("--unit", default="bars", choices=["bars", "days"])
    p.add_argument("--train", type=int, default=1000, help="train window length (in --unit)")
    p.add_argument("--test", type=int, default=250, help="test window length (in --unit)")
    p.add_argument("--folds", type=int, default=0, help="at most this many (latest) folds")
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="local processes (default: the CPUs; 1: this process only)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|local|ADDRESS",
        help="run on Ray: local (a private 127.0.0.1 Ray), auto (the running "
        "cluster, else local), or HOST:PORT",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=8,
        help="trials per worker task at least (default 8: a fast trial is ms; use 1 when a "
        "trial takes a second)",
    )
    p.add_argument("--segment", default="NSE_CM", help="exchange segment (charges, calendar)")
    p.add_argument("--interval", default=None, help="bar interval when it cannot be inferred")
    p.add_argument("--tz", default=None, help="timezone of naive timestamps")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        dest="settings",
        help="a fast-mode setting (as chimera backtest --set)",
    )
    p.add_argument("--long-only", action="store_true")
    p.add_argument(
        "--account", default="separate", choices=("separate", "shared"),
        help="separate: each instrument its own account, close mode (fast); shared: all "
        "on one account in event mode, the [governance.portfolio] rules at work (slow)",
    )  # fmt: skip
    p.add_argument("--config", default=None, help="chimera.toml (default: ./chimera.toml)")
    p.add_argument("--research-dir", default=None, help="default: <data_dir>/research")
    p.add_argument(
        "--report", default=None, help="report directory (default: <research-dir>/<study>/)"
    )
    p.add_argument(
        "--min-deflated-sharpe",
        type=float,
        default=None,
        help="guard threshold (default 0.95, or [guards] in --space)",
    )
    p.add_argument(
        "--max-pbo",
        type=float,
        default=None,
        help="guard threshold (default 0.5, or [guards] in --space)",
    )
    p.add_argument("--pbo-splits", type=int, default=None, help="CSCV splits S (default 16)")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    return p


def _research_dir(arg: str | None, config: str | None) -> Path:
    if arg:
        return Path(arg)
    from chimera_core.config import default_config_path, load_config

    cfg = load_config(config or default_config_path())
    return Path(cfg.data_dir) / "research"


def _progress(total: int, quiet: bool) -> tuple[Any, Any]:
    """A rich progress bar (trials, ETA, best so far), or nothing when quiet / not a TTY."""
    from tools.optimize.study import Progress

    if quiet or not sys.stderr.isatty():
        return Progress(total=total), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    bar = Bar(
        TextColumn("optimize"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials"),
        TimeRemainingColumn(),
        TextColumn("best {task.fields[best]}"),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("optimize", total=total, best="-")
    bar.start()

    def show(p: Any) -> None:
        bar.update(task, completed=p.done, best="-" if p.best is None else f"{p.best:.4f}")

    return Progress(total=total, callback=show), bar.stop


def cmd_run(argv: list[str]) -> int:
    args = _run_parser().parse_args(argv)
    from chimera_core.config import default_config_path, load_config
    from chimera_core.logging import configure_logging
    from tools.backtest.cli import _settings
    from tools.backtest.data import code_version
    from tools.backtest.strategies import get
    from tools.optimize.executors import make_executor
    from tools.optimize.folds import FoldSpec
    from tools.optimize.inputs import build_workload, load_instruments
    from tools.optimize.report import importance, trial_points, write_report
    from tools.optimize.space import load_space, space_for
    from tools.optimize.study import (
        GuardSpec,
        StudyError,
        StudySpec,
        fold_study_name,
        open_storage,
        run_study,
        spec_hash,
        storage_path,
    )

    configure_logging("WARNING" if args.quiet else "INFO")
    config_path = args.config or default_config_path()
    cfg = load_config(config_path)
    strategy = get(args.strategy)
    guard_toml: dict[str, float] = {}
    if args.space:
        space, guard_toml = load_space(args.space, strategy)
    else:
        space = space_for(strategy)
    try:
        guards = msgspec.convert(guard_toml, GuardSpec)
    except msgspec.ValidationError as exc:
        raise StudyError(
            f"--space {args.space}: [guards] {exc}; allowed: min_deflated_sharpe, max_pbo, "
            "pbo_splits"
        ) from None
    overrides = {
        k: v
        for k, v in (
            ("min_deflated_sharpe", args.min_deflated_sharpe),
            ("max_pbo", args.max_pbo),
            ("pbo_splits", args.pbo_splits),
        )
        if v is not None
    }
    guards = msgspec.structs.replace(guards, **overrides)
    folds = FoldSpec(
        scheme=args.scheme,
        unit=args.unit,
        train=args.train,
        test=args.test,
        folds=args.folds,
        tz=args.tz or "Asia/Kolkata",
    )
    fast_settings = _settings(args.settings)
    loaded = load_instruments(args.data, args.segment, args.interval, args.tz)
    workload, settings_sha = build_workload(
        cfg,
        loaded,
        args.strategy,
        folds,
        args.long_only,
        fast_settings,
        args.account,
    )
    spec = StudySpec(
        name=args.study or "pending",
        strategy=args.strategy,
        data=tuple(r for r, _ in loaded),
        space=space,
        folds=folds,
        sampler=args.sampler,
        objective=args.objective,
        pick=args.pick,
        n_trials=args.trials,
        generation=args.generation,
        lag=args.lag,
        seed=args.seed,
        population=args.population,
        long_only=args.long_only,
        account=args.account,
        fast_settings=fast_settings,
        config=str(Path(config_path).resolve()) if config_path else "",
        settings_sha256=settings_sha,
        guards=guards,
    )
    if args.study is None:  # named by what decides its trials: the same command resumes it
        key = msgspec.to_builtins(msgspec.structs.replace(spec, n_trials=0))
        if key.get("account") == "separate":  # studies named before --account keep names
            key.pop("account")
        safe = "".join(c if c.isalnum() else "_" for c in args.strategy)
        spec = msgspec.structs.replace(spec, name=f"{safe}-{args.sampler}-{spec_hash(key)[:10]}")
    spec.check()
    research = _research_dir(args.research_dir, args.config)
    db = storage_path(research, spec.name)
    storage = open_storage(db)
    stamp = {"code_version": code_version(), "data_sha256": [r.sha256 for r in spec.data]}
    executor = make_executor(args.ray, args.workers, args.batch)
    total = spec.n_trials * len(workload.folds)
    if spec.sampler == "grid":
        total = min(spec.n_trials, space.grid_size()) * len(workload.folds)
    progress, stop = _progress(total, args.quiet)
    log.info(
        "optimize_start",
        study=spec.name,
        db=str(db),
        folds=len(workload.folds),
        trials_per_fold=spec.n_trials,
        executor=executor.name,
        sampler=spec.sampler,
    )
    try:
        executor.start(workload)
        result = run_study(spec, workload, executor, storage, stamp, progress)
    finally:
        stop()
        executor.close()
    last = fold_study_name(spec.name, workload.folds[-1].index)
    extra = {
        "importance": importance(storage, last, list(spec.objectives)),
        "trials_last_fold": trial_points(storage, last),
        "database": str(db),
    }
    out = Path(args.report) if args.report else research / spec.name
    paths = write_report(out, result, result["_series"], extra, html=not args.no_html)
    if args.quiet:
        print(paths["json"])
    else:
        _print_summary(result, paths, spec.name)
    return 0


def _print_summary(result: dict[str, Any], paths: dict[str, Path], name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"study {name}: in-sample vs out-of-sample of each fold's pick")
    for col in ("fold", "pick", "train sharpe", "test sharpe", "train return", "test return"):
        table.add_column(col, justify="right")
    for row in result["in_sample_vs_oos"]:
        ref = result["folds"][row["fold"]]["pick"]["ref"]
        table.add_row(
            str(row["fold"]),
            ref,
            *(_num(row[k]) for k in ("train_sharpe", "test_sharpe", "train_return", "test_return")),
        )
    console.print(table)
    g = result["guards"]
    console.print(
        f"deflated Sharpe {_num(g['deflated_sharpe'].get('value'))} "
        f"(>= {g['min_deflated_sharpe']}), PBO {_num(g['pbo'][-1].get('pbo'))} "
        f"(<= {g['max_pbo']}); candidate {result['candidate']['ref']}: "
        + (
            "proposable"
            if result["proposable"]
            else "NOT proposable: " + "; ".join(result["not_proposable_because"])
        )
    )
    for kind, path in paths.items():
        console.print(f"{kind:5} {path}")


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.4g}"


# ---- show / rerun -------------------------------------------------------------------------


def open_study(study: str, research_dir: str | None, config: str | None) -> tuple[Any, Any, Any]:
    """A stored study: (Optuna storage, the parent study, its StudySpec)."""
    import optuna

    from tools.optimize.study import StudyError, StudySpec, open_storage, storage_path

    db = storage_path(_research_dir(research_dir, config), study)
    storage = open_storage(db, create=False)
    try:
        parent = optuna.load_study(study_name=study, storage=storage)
    except KeyError:
        raise StudyError(f"{db} holds no study {study!r}") from None
    spec = msgspec.convert(parent.user_attrs["spec"], StudySpec)
    return storage, parent, spec


def cmd_show(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="chimera optimize show", description="a study's trials")
    p.add_argument("study")
    p.add_argument("--research-dir", default=None)
    p.add_argument("--config", default=None)
    p.add_argument("--fold", type=int, default=None, help="only this fold")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args(argv)
    import optuna
    from rich.console import Console
    from rich.table import Table

    from tools.optimize.study import fold_study_name, trial_ref

    storage, parent, spec = open_study(args.study, args.research_dir, args.config)
    result = parent.user_attrs.get("result") or {}
    picks = {f["pick"]["ref"] for f in result.get("folds", [])}
    candidate = (result.get("candidate") or {}).get("ref")
    summaries = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    fold = 0
    table = Table(title=f"study {spec.name} · {spec.strategy} · {spec.sampler}")
    for col in ("trial", "state", *spec.space.names, *spec.objectives, "trades", "note"):
        table.add_column(col, justify="right")
    console = Console()
    while fold_study_name(spec.name, fold) in summaries:
        if args.fold is None or args.fold == fold:
            study = optuna.load_study(study_name=fold_study_name(spec.name, fold), storage=storage)
            for t in study.get_trials(deepcopy=False):
                ref = trial_ref(fold, t.number)
                run = t.user_attrs.get("run", {})
                note = "candidate" if ref == candidate else "pick" if ref in picks else ""
                if run.get("error"):
                    note = run["error"][:60]
                if args.json:
                    print(
                        msgspec.json.encode(
                            {
                                "ref": ref,
                                "state": t.state.name,
                                "params": t.params,
                                "values": t.values,
                                "run": run,
                                "note": note,
                            }
                        ).decode()
                    )
                    continue
                table.add_row(
                    ref,
                    t.state.name,
                    *(_cell(t.params.get(n)) for n in spec.space.names),
                    *(_cell(v) for v in (t.values or [None] * len(spec.objectives))),
                    _cell(run.get("train", {}).get("trades")),
                    note,
                )
        fold += 1
    if not args.json:
        console.print(table)
        if result:
            console.print(
                f"candidate {candidate}: "
                + (
                    "proposable"
                    if result.get("proposable")
                    else "NOT proposable: " + "; ".join(result.get("not_proposable_because", []))
                )
            )
        else:
            console.print("not finished (no result yet): run the same command again to resume")
    return 0


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def cmd_rerun(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="chimera optimize rerun",
        description="recompute one trial's metrics from its stored parameters and compare "
        "them with the stored ones, exactly (exit 1 when they differ)",
    )
    p.add_argument("study")
    p.add_argument("trial", help="FOLD:TRIAL (as `chimera optimize show` lists them)")
    p.add_argument("--research-dir", default=None)
    p.add_argument("--config", default=None)
    args = p.parse_args(argv)
    import optuna

    from chimera_core.config import load_config
    from chimera_core.logging import configure_logging
    from tools.backtest.data import code_version
    from tools.optimize.evaluate import Task, evaluate
    from tools.optimize.inputs import build_workload, load_instruments
    from tools.optimize.study import StudyError, fold_study_name, parse_ref

    configure_logging("WARNING")
    storage, parent, spec = open_study(args.study, args.research_dir, args.config)
    cfg = load_config(spec.config or None)
    loaded = load_instruments([d.path for d in spec.data], spec.data[0].segment)
    for ref, d in zip((r for r, _ in loaded), spec.data, strict=True):
        if ref.sha256 != d.sha256:
            raise StudyError(
                f"{d.path}: its bars changed since the study (sha256 {ref.sha256[:12]}, "
                f"stored {d.sha256[:12]}): the trial cannot be reproduced on other data"
            )
    workload, settings_sha = build_workload(
        cfg,
        loaded,
        spec.strategy,
        spec.folds,
        spec.long_only,
        spec.fast_settings,
        spec.account,
    )
    if settings_sha != spec.settings_sha256:
        raise StudyError(
            f"the fast-mode settings from {spec.config or 'the config'} differ from the "
            "study's (charges, caps, calendar or --set changed): restore them to rerun"
        )
    fold, number = parse_ref(args.trial, len(workload.folds))
    study = optuna.load_study(study_name=fold_study_name(spec.name, fold), storage=storage)
    trials = study.get_trials(deepcopy=False)
    if not (0 <= number < len(trials)):
        raise StudyError(f"trial {args.trial}: fold {fold} has trials 0..{len(trials) - 1}")
    t = trials[number]
    run = t.user_attrs.get("run", {})
    params = {**t.params, **spec.space.fixed}
    checks: list[tuple[str, Any, Any]] = []
    got = evaluate(workload, Task((fold, number), params, fold, "train"))
    if run.get("error") is not None or got.error is not None:
        checks.append(("error", run.get("error"), got.error))
    else:
        checks.append(("train metrics", run.get("train"), got.metrics))
    result = parent.user_attrs.get("result") or {}
    for f in result.get("folds", []):
        if f["pick"]["ref"] == f"{fold}:{number}":
            test = evaluate(workload, Task((fold, number), params, fold, "test"))
            from tools.backtest.report import clean

            checks.append(("test metrics", f["pick"]["test"], clean(test.metrics)))
    ok = True
    for what, stored, now in checks:
        if stored == now:
            print(f"{args.trial} {what}: identical")
            continue
        ok = False
        if isinstance(stored, dict) and isinstance(now, dict):
            for k in sorted(set(stored) | set(now)):
                if stored.get(k) != now.get(k):
                    print(f"{args.trial} {what}: {k} stored {stored.get(k)!r} now {now.get(k)!r}")
        else:
            print(f"{args.trial} {what}: stored {stored!r} now {now!r}")
    if run.get("code_version") and run.get("code_version") != code_version():
        print(f"note: stored by code {run['code_version']}, rerun on {code_version()}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "show":
        return cmd_show(argv[1:])
    if argv and argv[0] == "rerun":
        return cmd_rerun(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return cmd_run(argv)


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ChimeraError as exc:
        print(f"chimera optimize: {exc}", file=sys.stderr)
        sys.exit(2)
