"""Where a study's evaluations run: this process, a local process pool, or Ray.

Each executor receives the study's ``Workload`` once (``start``) and then runs lists of
small ``Task``s in batches, one batch per worker task: a Ray task or a pool job of a
single trial costs more in scheduling than the trial (Ray's own guidance: tasks under
~10 ms do not pay for themselves), so ``run`` cuts the tasks into at most ``workers``
batches of at least ``min_batch`` tasks. Results come back in the order of the tasks,
and evaluation is a pure function of (workload, task): the executor changes how fast a
study runs, never its trials or metrics.

- ``SerialExecutor``: in this process (``--workers 1``).
- ``PoolExecutor``: ``concurrent.futures.ProcessPoolExecutor`` with spawned workers; the
  workload goes to each worker once, as the pool initializer's argument.
- ``RayExecutor``: ``ray.put`` the workload once into the object store and start one
  actor per CPU holding it; batches go to the actors. ``address="local"`` starts a
  private Ray on 127.0.0.1 only (``local_ray_init``); ``"auto"`` or ``HOST:PORT`` joins a
  running cluster (docs/OPTIMIZE.md, "A Ray cluster").
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

import structlog

from chimera_core.errors import ChimeraError
from tools.optimize.evaluate import Outcome, Task, Workload, evaluate_batch

log = structlog.get_logger(__name__)

MIN_BATCH = 8  # tasks per batch at least (a fast-mode trial is ~0.1-10 ms)


class ExecutorError(ChimeraError):
    """An executor that cannot start (no Ray cluster at the address, no CPUs)."""


class Executor(Protocol):
    workers: int
    name: str

    def start(self, workload: Workload) -> None: ...
    def run(self, tasks: Sequence[Task]) -> list[Outcome]: ...
    def submit(self, tasks: Sequence[Task]) -> Any:
        """Start evaluating ``tasks`` (a pool or Ray works on them meanwhile); the handle
        goes to ``collect``."""

    def collect(self, handle: Any) -> list[Outcome]:
        """The outcomes of a ``submit``, in task order (waits for them)."""

    def close(self) -> None: ...


def batches(tasks: Sequence[Task], workers: int, min_batch: int = MIN_BATCH) -> list[list[Task]]:
    """``tasks`` in order, cut into at most ``workers`` runs of about equal size (each at
    least ``min_batch`` long, except when there are fewer tasks)."""
    if not tasks:
        return []
    n = max(1, min(workers, math.ceil(len(tasks) / max(1, min_batch))))
    size = math.ceil(len(tasks) / n)
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]


class SerialExecutor:
    name = "serial"

    def __init__(self) -> None:
        self.workers = 1
        self._workload: Workload | None = None

    def start(self, workload: Workload) -> None:
        from tools.backtest.fast import warm_up

        warm_up()
        self._workload = workload

    def run(self, tasks: Sequence[Task]) -> list[Outcome]:
        assert self._workload is not None, "start() first"
        return evaluate_batch(self._workload, tasks)

    def submit(self, tasks: Sequence[Task]) -> Any:
        return list(tasks)  # one process: evaluated when collected

    def collect(self, handle: Any) -> list[Outcome]:
        return self.run(handle)

    def close(self) -> None:
        self._workload = None


# ---- the local pool -----------------------------------------------------------------------

_WORKER_LOAD: Workload | None = None


def _pool_init(workload: Workload) -> None:
    global _WORKER_LOAD
    from tools.backtest.fast import warm_up

    warm_up()  # the njit kernels from numba's on-disk cache, before the first batch
    if workload.account == "shared":  # event mode's node logs as chimera backtest's does
        from chimera_core.logging import configure_logging

        configure_logging("ERROR")
    _WORKER_LOAD = workload


def _pool_batch(tasks: list[Task]) -> list[Outcome]:
    assert _WORKER_LOAD is not None, "pool worker without its workload"
    return evaluate_batch(_WORKER_LOAD, tasks)


def _pool_ping(_: int) -> int:
    return os.getpid()


class PoolExecutor:
    name = "pool"

    def __init__(self, workers: int, min_batch: int = MIN_BATCH) -> None:
        if workers < 1:
            raise ExecutorError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.min_batch = min_batch
        self._pool: ProcessPoolExecutor | None = None

    def start(self, workload: Workload) -> None:
        import multiprocessing

        # spawn: a fresh interpreter per worker (no forked SQLite handle, threads or Ray).
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_pool_init,
            initargs=(workload,),
        )
        # Start every worker now (and load its workload) so the first batch is not slow.
        list(self._pool.map(_pool_ping, range(self.workers)))
        log.info("optimize_pool_started", workers=self.workers)

    def run(self, tasks: Sequence[Task]) -> list[Outcome]:
        return self.collect(self.submit(tasks))

    def submit(self, tasks: Sequence[Task]) -> Any:
        assert self._pool is not None, "start() first"
        pool = self._pool
        return [pool.submit(_pool_batch, p) for p in batches(tasks, self.workers, self.min_batch)]

    def collect(self, handle: Any) -> list[Outcome]:
        out: list[Outcome] = []
        for future in handle:
            out.extend(future.result())
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# ---- Ray ----------------------------------------------------------------------------------


def local_ray_init(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Start a private local Ray that listens and talks on 127.0.0.1 only.

    A plain ``ray.init()`` takes the machine's interface address and binds on every
    interface; ``_node_ip_address`` alone does not change that. With
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` set before Ray starts it does (measured with
    ``ss``; tests/optimize/test_ray.py holds it)."""
    import sys

    imported = "ray" in sys.modules
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if imported:
        from ray._private import ray_constants  # read once, when Ray is imported

        if ray_constants.ENABLE_RAY_CLUSTER:
            raise ExecutorError(
                "Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set, so a "
                "local start would listen beyond 127.0.0.1: set it in the environment (or "
                "before the first `import ray`)"
            )
    ray.init(
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        **kwargs,
    )


def _running_cluster() -> bool:
    """A Ray cluster this machine knows of (RAY_ADDRESS, or a head started by `ray start`)."""
    if os.environ.get("RAY_ADDRESS"):
        return True
    from pathlib import Path

    return Path("/tmp/ray/ray_current_cluster").exists()


class _RayEvaluator:
    """A Ray actor holding the workload (deserialised once, in its constructor)."""

    def __init__(self, workload: Workload) -> None:
        from tools.backtest.fast import warm_up

        warm_up()
        self.workload = workload

    def run(self, tasks: list[Task]) -> list[Outcome]:
        return evaluate_batch(self.workload, tasks)

    def ready(self) -> int:
        return os.getpid()


class RayExecutor:
    """``address``: "local" (start a private 127.0.0.1 Ray with ``num_cpus``), "auto" or
    "HOST:PORT" (join a running cluster), or None to use a Ray already initialised in
    this process (tests share one)."""

    name = "ray"

    def __init__(
        self, address: str | None = "local", num_cpus: int | None = None,
        min_batch: int = MIN_BATCH,
    ) -> None:  # fmt: skip
        self.address = address
        self.num_cpus = num_cpus
        self.min_batch = min_batch
        self.workers = 0
        self._actors: list[Any] = []
        self._started_ray = False

    def start(self, workload: Workload) -> None:
        import sys

        running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        local = self.address in (None, "local") or (
            self.address == "auto" and not _running_cluster()
        )  # "auto" with no cluster on this machine: a private local one, no setup
        if not running:
            if local:
                local_ray_init(num_cpus=self.num_cpus)
            else:
                import ray

                try:
                    ray.init(address=self.address, log_to_driver=False, configure_logging=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ExecutorError(
                        f"--ray {self.address}: cannot join a Ray cluster there ({exc}); start "
                        "one with `ray start --head --node-ip-address=127.0.0.1` or pass "
                        "--ray local"
                    ) from None
            self._started_ray = True
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        if cpus < 1:
            raise ExecutorError("the Ray cluster has no CPUs")
        n = min(cpus, self.num_cpus) if self.num_cpus else cpus
        ref = ray.put(workload)  # once into the object store; each actor reads it once
        actor = ray.remote(num_cpus=1)(_RayEvaluator)
        self._actors = [actor.remote(ref) for _ in range(n)]
        ray.get([a.ready.remote() for a in self._actors])
        self.workers = n
        log.info("optimize_ray_started", actors=n, address=self.address)

    def run(self, tasks: Sequence[Task]) -> list[Outcome]:
        return self.collect(self.submit(tasks))

    def submit(self, tasks: Sequence[Task]) -> Any:
        parts = batches(tasks, self.workers, self.min_batch)
        return [self._actors[i % len(self._actors)].run.remote(p) for i, p in enumerate(parts)]

    def collect(self, handle: Any) -> list[Outcome]:
        import ray

        out: list[Outcome] = []
        for part in ray.get(handle):
            out.extend(part)
        return out

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def make_executor(ray_address: str | None, workers: int, min_batch: int = MIN_BATCH) -> Executor:
    """``--ray ADDRESS`` → Ray, else ``--workers N`` processes (1: this process)."""
    if min_batch < 1:
        raise ExecutorError(f"--batch must be >= 1 trial per task, got {min_batch}")
    if ray_address:
        cpus = workers if ray_address == "local" else None
        return RayExecutor(ray_address, num_cpus=cpus, min_batch=min_batch)
    if workers <= 1:
        return SerialExecutor()
    return PoolExecutor(workers, min_batch=min_batch)
