"""A walk-forward study: one Optuna study per fold, searched on its train window only.

What a trial is (docs/OPTIMIZE.md, "Walk-forward"): one parameter set evaluated on ONE
fold's train window. Each fold has its own Optuna study (``<name>.fold00``, ...), so the
sampler of fold k learns from fold k's train window and nothing else: a single study
whose trials were scored on every fold's train windows would let the sampler steer fold
1's candidates with fold 3's train data, which contains fold 1's test window. The fold's
pick is its best trial on train (the best objective; NSGA-II: the Pareto-front trial with
the best ``pick`` metric), then scored once on the next test window.

Determinism: the sampler is seeded per trial (seed, fold, trial number), trials are asked
in generations of ``generation`` trials, evaluated (anywhere) and told in trial order, so
the same seed gives the same trials on one process, a pool or Ray, and an interrupted
study resumes where it stopped: the pending generation is completed and every trial left
running is evaluated with its stored parameters and told: none lost, none run twice.

Storage: Optuna's RDB storage in one SQLite file, ``<research_dir>/<name>.db``. The parent
study ``<name>`` (no trials) holds the spec, the data hashes, the code version and, when
the study ends, its result: folds, picks, guards, the candidate and whether it may be
proposed (``proposable``), which ``chimera genome propose`` reads.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import structlog

from chimera_core.errors import ChimeraError
from tools.optimize.evaluate import (
    MULTI_OBJECTIVES,
    OBJECTIVES,
    Outcome,
    Task,
    Workload,
    objective_value,
)
from tools.optimize.executors import Executor
from tools.optimize.folds import FoldSpec
from tools.optimize.space import Space, distributions, grid

log = structlog.get_logger(__name__)

SCHEMA = 1
Sampler = Literal["tpe", "random", "grid", "nsga2"]
SAMPLERS: tuple[str, ...] = ("tpe", "random", "grid", "nsga2")


class StudyError(ChimeraError):
    """A study that cannot run or be read: the message names the setting and the fix."""


class DataRef(msgspec.Struct, frozen=True):
    path: str
    sha256: str
    token: str
    segment: str


class GuardSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Thresholds a candidate must pass to be proposable (docs/OPTIMIZE.md, "Guards")."""

    min_deflated_sharpe: float = 0.95  # probability the true Sharpe beats the trials' max
    max_pbo: float = 0.5  # probability of backtest overfitting (CSCV)
    pbo_splits: int = 16  # CSCV's S (even)


class StudySpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything that decides a study's trials; stored on the study, checked on resume."""

    name: str
    strategy: str
    data: tuple[DataRef, ...]
    space: Space
    folds: FoldSpec
    sampler: Sampler = "tpe"
    objective: str = "sharpe"
    pick: str = "sharpe"
    n_trials: int = 100  # per fold
    generation: int = 32  # trials asked before any of them is told
    # Generations in flight while the next is asked: 1 lets the sampler work while the
    # workers evaluate (the sampler then sees results one generation later); 0 asks each
    # generation only after the one before is told (studies stored before lag existed).
    lag: int = 1
    seed: int = 0
    population: int = 32  # NSGA-II's population size
    long_only: bool = False
    # "separate": each instrument its own account (close mode); "shared": one account,
    # trials in event mode (docs/OPTIMIZE.md).
    account: str = "separate"
    fast_settings: dict[str, Any] = msgspec.field(default_factory=dict)
    config: str = ""
    settings_sha256: str = ""
    guards: GuardSpec = msgspec.field(default_factory=GuardSpec)

    @property
    def objectives(self) -> tuple[str, ...]:
        return MULTI_OBJECTIVES if self.sampler == "nsga2" else (self.objective,)

    def check(self) -> None:
        if self.sampler not in SAMPLERS:
            raise StudyError(f"--sampler {self.sampler!r}: one of {', '.join(SAMPLERS)}")
        for what, name in (("--objective", self.objective), ("--pick", self.pick)):
            if name not in OBJECTIVES:
                raise StudyError(f"{what} {name!r}: one of {', '.join(OBJECTIVES)}")
        if self.n_trials < 1:
            raise StudyError(f"--trials must be >= 1 per fold, got {self.n_trials}")
        if self.generation < 1:
            raise StudyError(f"--generation must be >= 1, got {self.generation}")
        if self.lag not in (0, 1):
            raise StudyError(f"--lag must be 0 or 1, got {self.lag}")
        if self.sampler == "nsga2" and self.population < 2:
            raise StudyError(f"--population must be >= 2 for NSGA-II, got {self.population}")
        g = self.guards
        if not (0.0 <= g.min_deflated_sharpe <= 1.0):
            raise StudyError(
                f"guards min_deflated_sharpe must be a probability in [0, 1], got "
                f"{g.min_deflated_sharpe}"
            )
        if not (0.0 <= g.max_pbo <= 1.0):
            raise StudyError(f"guards max_pbo must be a probability in [0, 1], got {g.max_pbo}")
        if g.pbo_splits < 2 or g.pbo_splits % 2:
            raise StudyError(f"guards pbo_splits must be even and >= 2, got {g.pbo_splits}")


def storage_path(research_dir: str | Path, name: str) -> Path:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise StudyError(
            f"study name {name!r}: use letters, digits, '-', '_' or '.' (it names a file)"
        )
    return Path(research_dir) / f"{name}.db"


def open_storage(path: Path, create: bool = True) -> Any:
    """Optuna's RDB storage on the SQLite file ``path``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not create and not path.exists():
        raise StudyError(f"no study database at {path} (run `chimera optimize` first)")
    path.parent.mkdir(parents=True, exist_ok=True)

    def connect() -> sqlite3.Connection:
        # WAL without an fsync per commit (synchronous=NORMAL): an Optuna trial is a few
        # commits, and at ~10 ms an fsync here they were the study's whole cost. A killed
        # process loses nothing committed; only a power cut can lose the last commits.
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect})


def fold_study_name(name: str, fold: int) -> str:
    return f"{name}.fold{fold:02d}"


def trial_seed(seed: int, fold: int, number: int) -> int:
    """The sampler's seed for one trial: a function of the study seed, fold and number."""
    return int(np.random.SeedSequence([seed, fold, number]).generate_state(1)[0])


def grid_sampler(search_space: Mapping[str, Sequence[Any]], seed: int) -> Any:
    """Optuna's GridSampler without its ``study.stop()`` after the last grid point (which
    raises outside ``study.optimize``; the driver stops at the grid's size itself)."""
    import optuna

    class _Grid(optuna.samplers.GridSampler):
        def after_trial(self, *args: Any, **kwargs: Any) -> None:
            return None

    return _Grid(dict(search_space), seed=seed)


def make_sampler(spec: StudySpec, seed: int) -> Any:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if spec.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.sampler == "grid":
            return grid_sampler(grid(spec.space), seed)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=spec.population)


def _directions(spec: StudySpec) -> list[Literal["minimize", "maximize"]]:
    return ["maximize" if OBJECTIVES[o] else "minimize" for o in spec.objectives]


def _spec_json(spec: StudySpec) -> dict[str, Any]:
    """The spec as it reads back from the study's JSON (lists, not tuples)."""
    out: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(spec))
    return out


def _differences(
    stored: Mapping[str, Any], given: Mapping[str, Any], prefix: str = ""
) -> list[str]:
    out: list[str] = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, given {b!r}")
    return out


@dataclass
class Progress:
    """What a progress bar shows: trials done of the total, the best objective so far."""

    total: int
    done: int = 0
    best: float | None = None
    callback: Callable[[Progress], None] | None = None

    def advance(self, n: int, best: float | None) -> None:
        self.done += n
        if best is not None:
            self.best = best
        if self.callback is not None:
            self.callback(self)


@dataclass
class FoldSearch:
    """A fold's trials after its search: numbers → params, train metrics, returns."""

    fold: int
    complete: dict[int, dict[str, Any]] = field(default_factory=dict)  # number -> params
    metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    values: dict[int, list[float]] = field(default_factory=dict)
    returns: dict[int, np.ndarray] = field(default_factory=dict)  # per trading day
    sharpe: dict[int, float] = field(default_factory=dict)  # per bar, not annualised
    failed: int = 0


def _load_or_create(storage: Any, spec: StudySpec, data_meta: Mapping[str, Any]) -> Any:
    import optuna

    given = _spec_json(spec)
    try:
        parent = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:
        parent = optuna.create_study(study_name=spec.name, storage=storage)
        parent.set_user_attr("schema", SCHEMA)
        parent.set_user_attr("spec", given)
        for k, v in data_meta.items():
            parent.set_user_attr(k, v)
        log.info("optimize_study_created", study=spec.name)
        return parent
    stored = dict(parent.user_attrs.get("spec") or {})
    stored.setdefault("lag", 0)  # a study stored before the schedule had a lag (--lag 0)
    diffs = [d for d in _differences(stored, given) if not d.startswith("n_trials:")]
    if diffs:
        raise StudyError(
            f"study {spec.name!r} exists with other settings ({'; '.join(diffs[:6])}); resume it "
            "with the same ones, or give a new --study name"
        )
    if stored.get("n_trials") != spec.n_trials:
        parent.set_user_attr("spec", given)  # more (or fewer) trials per fold: allowed
    log.info("optimize_study_resumed", study=spec.name)
    return parent


class TrialWriter:
    """Writes finished trials to the SQLite study in trial order, on a thread of its own:
    an Optuna RDB insert is tens of ms of Python (SQLAlchemy), done while the driver waits
    for the next generation's evaluation on the workers. ``close`` waits for every trial
    queued and raises the first error (another process writing the same study). A trial
    queued but not written when the process dies is evaluated again on resume (the same
    parameters and result: nothing lost, nothing twice)."""

    def __init__(self, storage: Any, study_id: int, name: str, next_number: int) -> None:
        import queue
        import threading

        self._storage = storage
        self._study_id = study_id
        self._name = name
        self._next = next_number
        self._queue: queue.Queue[Any] = queue.Queue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="optimize-writer", daemon=True)
        self._thread.start()

    def put(self, frozen: Any) -> None:
        if self._error is not None:
            raise StudyError(f"study {self._name}: writing trials failed: {self._error}")
        self._queue.put(frozen)

    def _loop(self) -> None:
        while True:
            frozen = self._queue.get()
            if frozen is None:
                return
            if self._error is not None:
                continue
            try:
                if frozen.number != self._next:
                    raise StudyError(f"trial {frozen.number} queued, {self._next} expected")
                trial_id = self._storage.create_new_trial(self._study_id, template_trial=frozen)
                made = self._storage.get_trial_number_from_id(trial_id)
                if made != frozen.number:
                    raise StudyError(
                        f"trial {frozen.number} stored as {made}: is another process "
                        "running this study?"
                    )
                self._next += 1
            except BaseException as exc:  # kept for close(): the driver raises it
                self._error = exc

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise StudyError(f"study {self._name}: writing trials failed: {self._error}")


def _record(
    spec: StudySpec, fold: int, outcome: Outcome, stamp: Mapping[str, Any]
) -> tuple[dict[str, Any], list[float] | None]:
    """(the trial's "run" user attribute, its objective values or None when it failed)."""
    record: dict[str, Any] = {
        "fold": fold, "seed": trial_seed(spec.seed, fold, outcome.key[1]), **stamp,
    }  # fmt: skip
    if outcome.metrics is None:
        record["error"] = outcome.error
        return record, None
    record["train"] = outcome.metrics
    return record, [objective_value(outcome.metrics, o) for o in spec.objectives]


def search_fold(
    storage: Any,
    spec: StudySpec,
    fold: int,
    executor: Executor,
    stamp: Mapping[str, Any],
    progress: Progress | None = None,
) -> FoldSearch:
    """Fold ``fold``'s search on its train window, resumed where an earlier run stopped.

    The sampler works on an in-memory copy of the fold's study (Optuna's SQLite storage
    costs several commits per ask and tell); every finished trial is written to the SQLite
    study in one commit, in trial order, so the file holds exactly the trials told. On a
    resume the stored trials are asked again generation by generation: the same seed and
    history give the same parameters (checked), their stored results are told, and only
    the trials never stored are evaluated."""
    import optuna
    from optuna.trial import TrialState

    directions = _directions(spec)
    stored_study = optuna.create_study(
        study_name=fold_study_name(spec.name, fold), storage=storage,
        directions=directions, load_if_exists=True,
    )  # fmt: skip
    stored_id = storage.get_study_id_from_name(stored_study.study_name)
    stored = stored_study.get_trials(deepcopy=False)
    if any(not t.state.is_finished() for t in stored):
        raise StudyError(
            f"study {stored_study.study_name}: trials not finished in the file (written by "
            "something other than chimera optimize?); use a new --study name"
        )
    memory = optuna.create_study(directions=directions, storage=optuna.storages.InMemoryStorage())
    dists = distributions(spec.space)
    target = spec.n_trials
    if spec.sampler == "grid":
        target = min(target, spec.space.grid_size())
    if len(stored) > target:
        target = len(stored)  # fewer trials asked than stored: keep every stored one
    result = FoldSearch(fold)
    best: float | None = None
    sign = 1.0 if OBJECTIVES[spec.objectives[0]] else -1.0
    number = 0
    if progress is not None and stored:
        progress.advance(0, None)
    writer = TrialWriter(storage, stored_id, stored_study.study_name, len(stored))

    def ask(first: int, upto: int) -> tuple[list[Any], Any]:
        """Ask trials ``first..upto-1`` and start evaluating those never stored."""
        asked = []
        for k in range(first, upto):
            memory.sampler = make_sampler(spec, trial_seed(spec.seed, fold, k))
            asked.append(memory.ask(dict(dists)))
        fresh: list[Task] = []
        for t in asked:
            if t.number < len(stored):
                if stored[t.number].params != t.params:
                    raise StudyError(
                        f"study {stored_study.study_name}, trial {t.number}: stored parameters "
                        f"{stored[t.number].params} but the sampler now draws {t.params} "
                        "(another Optuna version or sampler code?); use a new --study name"
                    )
            else:
                fresh.append(Task((fold, t.number), {**t.params, **spec.space.fixed}, fold))
        return asked, executor.submit(fresh)

    def tell(asked: list[Any], handle: Any) -> None:
        """Tell a generation's results in trial order (stored ones from the file)."""
        nonlocal best
        outcomes = {o.key[1]: o for o in executor.collect(handle)}
        for t in asked:
            params = {**t.params, **spec.space.fixed}
            if t.number < len(stored):
                old = stored[t.number]
                for key, value in old.user_attrs.items():
                    t.set_user_attr(key, value)
                record = dict(old.user_attrs.get("run", {}))
                values = list(old.values) if old.state == TrialState.COMPLETE else None
                returns, bar_sharpe = None, 0.0
            else:
                o = outcomes[t.number]
                record, values = _record(spec, fold, o, stamp)
                t.set_user_attr("run", record)
                returns, bar_sharpe = o.returns, o.bar_sharpe
            if values is None:
                memory.tell(t, state=TrialState.FAIL)
                result.failed += 1
            else:
                memory.tell(t, values)
                result.complete[t.number] = params
                result.metrics[t.number] = dict(record.get("train", {}))
                result.values[t.number] = values
                if returns is not None:
                    result.returns[t.number] = returns
                    result.sharpe[t.number] = bar_sharpe
                v = values[0] if len(values) == 1 else objective_value(
                    result.metrics[t.number], spec.pick
                )  # fmt: skip
                if best is None or sign * v > sign * best:
                    best = v
            if t.number >= len(stored):
                writer.put(memory.get_trials(deepcopy=False)[t.number])
        if progress is not None:
            progress.advance(len(asked), best)

    # The schedule decides what the sampler has seen at each ask, so it is part of the
    # study (``lag``), never of the executor: with lag 1 generation k+1 is asked (the
    # sampler working in this process) while the workers evaluate generation k, and is
    # told after it; the same seed gives the same trials in one process, a pool or Ray.
    # The first generation is told before the second is asked, so the sampler has seen
    # one generation before it overlaps (a small study would otherwise sample blind).
    in_flight: deque[tuple[list[Any], Any]] = deque()
    told = 0
    try:
        while number < target or in_flight:
            if number < target:
                upto = min(target, number + spec.generation)
                in_flight.append(ask(number, upto))
                number = upto
            if len(in_flight) > (spec.lag if told else 0) or number >= target:
                tell(*in_flight.popleft())
                told += 1
    finally:
        writer.close()  # every told trial in the file (or the writer's error raised)
    missing = [n for n in result.complete if n not in result.returns]
    if missing:  # trials told by an earlier run: their returns again (same numbers)
        tasks = [Task((fold, n), result.complete[n], fold) for n in missing]
        for o in executor.run(tasks):
            result.returns[o.key[1]] = o.returns
            result.sharpe[o.key[1]] = o.bar_sharpe
    return result


def pick_of(spec: StudySpec, search: FoldSearch) -> int | None:
    """The fold's pick on train: the best objective (ties: the earliest trial); NSGA-II:
    the Pareto-front trial with the best ``pick`` metric."""
    if not search.complete:
        return None
    numbers = sorted(search.complete)
    if len(spec.objectives) == 1:
        sign = 1.0 if OBJECTIVES[spec.objectives[0]] else -1.0
        return min(numbers, key=lambda n: (-sign * search.values[n][0], n))
    signs = [1.0 if OBJECTIVES[o] else -1.0 for o in spec.objectives]
    pts = {n: [s * v for s, v in zip(signs, search.values[n], strict=True)] for n in numbers}

    def dominated(n: int) -> bool:
        a = pts[n]
        return any(
            all(x >= y for x, y in zip(pts[m], a, strict=True)) and pts[m] != a
            for m in numbers
            if m != n
        )

    front = [n for n in numbers if not dominated(n)]
    s = 1.0 if OBJECTIVES[spec.pick] else -1.0
    return min(front, key=lambda n: (-s * objective_value(search.metrics[n], spec.pick), n))


def pareto_front(spec: StudySpec, search: FoldSearch) -> list[int]:
    if len(spec.objectives) == 1:
        return []
    signs = [1.0 if OBJECTIVES[o] else -1.0 for o in spec.objectives]
    pts = {n: [s * v for s, v in zip(signs, search.values[n], strict=True)]
           for n in search.complete}  # fmt: skip
    return sorted(
        n for n, a in pts.items()
        if not any(all(x >= y for x, y in zip(b, a, strict=True)) and b != a
                   for m, b in pts.items() if m != n)
    )  # fmt: skip


def trial_ref(fold: int, number: int) -> str:
    return f"{fold}:{number}"


def parse_ref(ref: str, n_folds: int) -> tuple[int, int]:
    """``FOLD:TRIAL`` (or ``TRIAL`` when the study has one fold) → (fold, trial)."""
    fold_s, sep, num_s = ref.partition(":")
    try:
        if not sep:
            if n_folds != 1:
                raise ValueError
            return 0, int(fold_s)
        fold, number = int(fold_s), int(num_s)
    except ValueError:
        raise StudyError(
            f"trial {ref!r}: write FOLD:TRIAL (e.g. 2:17; `chimera optimize show` lists them)"
        ) from None
    if not (0 <= fold < n_folds):
        raise StudyError(f"trial {ref!r}: fold {fold} does not exist (folds 0..{n_folds - 1})")
    return fold, number


def _stitched(w: Workload, tests: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(returns, equity, bar times) of the test windows, in order."""
    r = np.concatenate([o.returns for o in tests]) if tests else np.empty(0)
    ts = np.concatenate(
        [w.grid_ts_ms[w.folds[o.key[0]].test_start : w.folds[o.key[0]].test_end] for o in tests]
    ) if tests else np.empty(0, dtype=np.int64)  # fmt: skip
    equity = w.initial_equity() * np.cumprod(1.0 + r)
    return r, equity, ts


def run_guards(
    spec: StudySpec, w: Workload, searches: Sequence[FoldSearch], oos: np.ndarray
) -> dict[str, Any]:
    """The deflated Sharpe of the stitched out-of-sample returns for every trial tried, and
    the PBO (CSCV) of each fold's trials on its train window; the thresholds applied."""
    from tools.optimize import guards

    out: dict[str, Any] = {
        "min_deflated_sharpe": spec.guards.min_deflated_sharpe,
        "max_pbo": spec.guards.max_pbo,
    }
    sharpes = np.asarray(
        [s.sharpe[n] for s in searches for n in sorted(s.complete)],
        dtype=np.float64,
    )
    out["n_trials"] = int(sharpes.size)
    try:
        dsr = guards.deflated_sharpe(oos, sharpes, periods_per_year=w.periods_per_year)
        out["deflated_sharpe"] = {
            "value": dsr.value, "detail": dsr.detail,
            "passed": bool(dsr.value >= spec.guards.min_deflated_sharpe),
        }  # fmt: skip
    except ChimeraError as exc:
        out["deflated_sharpe"] = {"value": None, "passed": None, "error": str(exc)}
    pbos: list[dict[str, Any]] = []
    for s in searches:
        numbers = sorted(s.complete)
        entry: dict[str, Any] = {"fold": s.fold, "n_trials": len(numbers)}
        try:
            # A trial that never trades has a flat curve: no Sharpe to rank, no column.
            moving = [n for n in numbers if np.std(s.returns[n]) > 0]
            entry["flat_trials_left_out"] = len(numbers) - len(moving)
            if len(moving) < 2:
                raise StudyError(
                    f"PBO needs at least 2 trials whose returns move in the fold; "
                    f"{len(moving)} of {len(numbers)} do (the others never trade)"
                )
            perf = np.column_stack([s.returns[n] for n in moving])
            res = guards.pbo_cscv(perf, n_splits=spec.guards.pbo_splits)
            entry.update(
                pbo=res.pbo, n_combinations=res.n_combinations, logits=res.logits,
                detail=res.detail, passed=bool(res.pbo <= spec.guards.max_pbo),
            )  # fmt: skip
        except ChimeraError as exc:
            entry.update(pbo=None, passed=None, error=str(exc))
        pbos.append(entry)
    out["pbo"] = pbos
    return out


def run_study(
    spec: StudySpec,
    workload: Workload,
    executor: Executor,
    storage: Any,
    stamp: Mapping[str, Any],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Search every fold, score the picks, run the guards; store and return the result."""
    from tools.backtest import metrics as bt_metrics
    from tools.backtest.report import clean

    spec.check()
    parent = _load_or_create(storage, spec, stamp)
    clock = time.perf_counter()
    searches = [
        search_fold(storage, spec, f.index, executor, stamp, progress) for f in workload.folds
    ]
    timings = {"search_s": time.perf_counter() - clock}
    picks = {s.fold: pick_of(spec, s) for s in searches}
    if any(p is None for p in picks.values()):
        empty = [f for f, p in picks.items() if p is None]
        raise StudyError(
            f"folds {empty}: no trial completed (every parameter set failed: see `chimera "
            "optimize show`); widen the space or fix the strategy's constraint"
        )
    tasks = [Task((s.fold, picks[s.fold] or 0), s.complete[picks[s.fold] or 0], s.fold, "test")
             for s in searches]  # fmt: skip
    tests = executor.run(tasks)
    bad = [o for o in tests if o.metrics is None]
    if bad:
        raise StudyError(f"test window of fold {bad[0].key[0]}: {bad[0].error}")
    oos_r, oos_eq, oos_ts = _stitched(workload, tests)
    oos_metrics = msgspec.to_builtins(
        bt_metrics.compute(oos_eq, ts_ms=oos_ts, periods=workload.periods_per_year,
                           initial_equity=workload.initial_equity())
    )  # fmt: skip
    # The stitched curve's trade figures are the test windows' own, summed (the equity
    # alone has none); ratios over trades are left to each fold's test metrics.
    for key in ("trades", "open_trades", "charges", "traded_value"):
        oos_metrics[key] = sum(o.metrics[key] for o in tests if o.metrics is not None)
    for key in ("win_rate", "profit_factor", "exposure", "turnover"):
        oos_metrics[key] = None
    timings["test_s"] = time.perf_counter() - clock - timings["search_s"]
    guard = run_guards(spec, workload, searches, oos_r)
    timings["guards_s"] = time.perf_counter() - clock - timings["search_s"] - timings["test_s"]
    folds_out: list[dict[str, Any]] = []
    for s, o in zip(searches, tests, strict=True):
        f = workload.folds[s.fold]
        n = picks[s.fold] or 0
        folds_out.append({
            "fold": s.fold,
            "train": [f.train_start, f.test_start], "test": [f.test_start, f.test_end],
            "train_ts_ms": [int(workload.grid_ts_ms[f.train_start]),
                            int(workload.grid_ts_ms[f.test_start - 1])],
            "test_ts_ms": [int(workload.grid_ts_ms[f.test_start]),
                           int(workload.grid_ts_ms[f.test_end - 1])],
            "trials": len(s.complete), "failed": s.failed,
            "pick": {"trial": n, "ref": trial_ref(s.fold, n), "params": s.complete[n],
                     "train": s.metrics[n], "test": o.metrics},
            "pareto": pareto_front(spec, s),
        })  # fmt: skip
    last = folds_out[-1]
    reasons: list[str] = []
    dsr = guard["deflated_sharpe"]
    if dsr.get("passed") is None:
        reasons.append(f"deflated Sharpe not computed: {dsr.get('error')}")
    elif not dsr["passed"]:
        reasons.append(
            f"deflated Sharpe {dsr['value']:.4f} < {spec.guards.min_deflated_sharpe} "
            f"({guard['n_trials']} trials)"
        )
    pbo_last = guard["pbo"][-1]
    if pbo_last.get("passed") is None:
        reasons.append(f"PBO of fold {last['fold']} not computed: {pbo_last.get('error')}")
    elif not pbo_last["passed"]:
        reasons.append(f"PBO {pbo_last['pbo']:.4f} > {spec.guards.max_pbo} (fold {last['fold']})")
    candidate = {
        "ref": last["pick"]["ref"], "fold": last["fold"], "trial": last["pick"]["trial"],
        "params": last["pick"]["params"], "train": last["pick"]["train"],
        "test": last["pick"]["test"], "strategy": spec.strategy,
    }  # fmt: skip
    result: dict[str, Any] = clean({
        "schema": SCHEMA, "study": spec.name, "strategy": spec.strategy,
        "sampler": spec.sampler, "objectives": list(spec.objectives), "seed": spec.seed,
        "n_trials_per_fold": spec.n_trials, "folds": folds_out,
        "oos": {"metrics": oos_metrics, "bars": int(oos_r.size)},
        "in_sample_vs_oos": [
            {"fold": f["fold"], "train_sharpe": f["pick"]["train"].get("sharpe"),
             "test_sharpe": f["pick"]["test"].get("sharpe"),
             "train_return": f["pick"]["train"].get("total_return"),
             "test_return": f["pick"]["test"].get("total_return")}
            for f in folds_out
        ],
        "guards": guard, "candidate": candidate, "proposable": not reasons,
        "not_proposable_because": reasons, **dict(stamp),
    })  # fmt: skip
    parent.set_user_attr("result", result)
    parent.set_user_attr("proposable", not reasons)
    log.info(
        "optimize_study_done", study=spec.name, candidate=candidate["ref"],
        proposable=not reasons, reasons=reasons,
    )  # fmt: skip
    result["_series"] = {"oos_equity": oos_eq, "oos_ts_ms": oos_ts}
    result["_timings"] = timings  # wall clock: not stored (the result is reproducible)
    return result


def spec_hash(obj: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(obj)).hexdigest()
