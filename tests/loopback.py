"""Loopback helpers shared by the integration tests: ports, and chimera processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


REPO = Path(__file__).resolve().parents[1]


class ChimeraProcess(subprocess.Popen[bytes]):
    """A chimera process whose stdout/stderr go to temporary files, not pipes: a busy
    engine logs more than a pipe buffer holds, and a test that reads only at the end would
    otherwise block the engine on its next log line. ``communicate`` returns both files."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        super().__init__(argv, cwd=cwd, env=env, stdout=self._out, stderr=self._err)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[bytes, bytes]:
        self.wait(timeout=timeout)
        return self.output()

    def output(self) -> tuple[bytes, bytes]:
        """What the process has written so far (it may still be running)."""
        out = []
        for f in (self._out, self._err):
            f.seek(0)
            out.append(f.read())
        return out[0], out[1]


def chimera(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> ChimeraProcess:
    """`chimera ARGS` as a real process (this checkout on PYTHONPATH), output captured."""
    return ChimeraProcess(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGINT each process in turn (an operator's Ctrl-C) and wait; killed after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def wait_log(proc: ChimeraProcess, event: bytes, timeout: float = 60.0) -> None:
    """Block until ``proc`` has logged ``event`` (a structlog event name); fails at once
    with its stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while event not in b"".join(proc.output()):
        assert proc.poll() is None, proc.output()[1].decode()[-3000:]
        assert time.monotonic() < deadline, f"no {event!r} in the process's log"
        time.sleep(0.1)


async def start_order_sim(**kwargs: Any) -> Any:
    """An in-process `chimera sim` with its SmartAPI order side on a free REST port, filling
    market orders after 20 ms; the caller stops it."""
    from tools.sim.server import ExchangeSimulator

    sim = ExchangeSimulator(port=0, rate=500.0, rest_port=0, fill_delay_s=0.02, **kwargs)
    await sim.start()
    return sim
