"""The same study on a real local Ray (2 CPUs, started here once for the module): it
listens on 127.0.0.1 only, and gives the trials and metrics a local run gives."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.optimize.conftest import trials_of, workload_of
from tests.optimize.test_study import _run, _spec
from tools.optimize.executors import RayExecutor, SerialExecutor, local_ray_init

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ray_local() -> Any:
    # Read by Ray when it is imported: set before anything imports it (local_ray_init does
    # too, but Ray may be imported already by then).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray")
    local_ray_init(num_cpus=2)
    yield ray
    ray.shutdown()


def _descendants(root: int) -> set[int]:
    """Every process under ``root`` (from /proc: Ray's gcs_server, raylet, workers ...)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out: set[int] = set()
    frontier = {root}
    while frontier:
        kids = {p for p, pp in parent.items() if pp in frontier and p not in out}
        out |= kids
        frontier = kids
    return out


def test_every_ray_socket_listens_on_loopback_only(ray_local):
    ray_local.get(ray_local.remote(lambda: 1).remote())  # a worker is up
    pids = _descendants(os.getpid())
    lines = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    ours = []
    for line in lines.splitlines():
        found = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if found & pids:
            local = line.split()[3]
            ours.append(local)
    assert len(ours) >= 3, f"no Ray listening sockets found under pid {os.getpid()}: {lines}"
    strays = [a for a in ours if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert not strays, f"Ray listens beyond loopback: {strays}"


def test_ray_gives_the_trials_and_metrics_a_local_run_gives(tmp_path, cfg, loaded, ray_local):
    w = workload_of(cfg, loaded, folds=2)
    spec = _spec(loaded, "onray")
    local, db1 = _run(tmp_path / "local", spec, w, SerialExecutor())
    executor = RayExecutor(address=None, min_batch=2)  # the module's Ray, already running
    on_ray, db2 = _run(tmp_path / "ray", spec, w, executor)
    assert executor.workers == 2
    assert trials_of(db2, "onray") == trials_of(db1, "onray")
    assert on_ray == local
