"""The recorder on a full disk (a real 4 MiB tmpfs, and without root a file size limit):
it keeps running, counts and reports what it could not write, resumes when space
returns, and what it wrote verifies. Its files are private (0600 / 0700)."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chimera_core.contracts import Health, SessionInfo
from chimera_core.telemetry import (
    TOPIC_HEALTH,
    TOPIC_SESSION,
    TelemetryPublisher,
    iter_session,
    segments,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def _wait(cond: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _health(n: int) -> Health:
    padding = {f"counter_{i:03d}": i for i in range(70)}  # about 1 kB a message
    return Health(n, {"frames": n, **padding}, True, 1, False, n, 0, False, {})


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


class Box:
    """A recorder process writing under ``data``, and a publisher feeding it."""

    def __init__(self, tmp: Path, data: Path, preexec: Callable[[], None] | None = None):
        self.data = data
        self.log = tmp / "recorder.log"
        conf = tmp / "rec.toml"
        conf.write_text(
            "min_free_disk_mb = 3\n[recorder]\nfsync_interval_s = 0.05\n"
            "neural_state_interval_s = 0.05\n",
            encoding="utf-8",
        )
        self.pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
        cmd = [sys.executable, "-m", "tools.record", "--config", str(conf), "--data-dir"]
        cmd += [str(data), "--endpoint", self.pub.endpoint, "--segment-bytes", "300000"]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=out, stderr=out, preexec_fn=preexec,
            )  # fmt: skip
        _wait(lambda: (self.pub.drain_subscriptions(), self.pub.recorders)[1], what="recorder")
        self.sent = 0
        self.pub.publish(TOPIC_SESSION, SessionInfo("disk", 1, "paper", b"{}", "ab", "t", ""))
        self.sent += 1
        self.session = data / "blackbox" / "disk"

    def publish(self, n: int) -> None:
        for i in range(n):
            assert self.pub.publish(TOPIC_HEALTH, _health(self.sent))
            self.sent += 1
            if i % 50 == 49:
                time.sleep(0.005)

    def manifest(self) -> Any:
        return _json(self.session / "manifest.json")

    def logged(self, event: str) -> bool:
        return f'"event": "{event}"' in self.log.read_text()

    def stop(self) -> None:
        assert self.proc.poll() is None, "the recorder died: " + self.log.read_text()[-3000:]
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=20) == 0, self.log.read_text()[-3000:]
        self.pub.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.pub.close()


def _verify(session: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.record", "--verify", str(session)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:  # test_file_size_limit below covers the no-root case
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Take every free byte of the filesystem."""
    with open(path, "wb", buffering=0) as fh:
        chunk = b"\0" * (64 << 10)
        while True:
            try:
                fh.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_full_disk_costs_only_what_could_not_be_written(tmp_path: Path, small_fs: Path) -> None:
    os.umask(old := os.umask(0o022))  # the default umask: modes come from the recorder
    box = Box(tmp_path, small_fs / "data")
    try:
        box.publish(400)
        _wait(lambda: (box.manifest() or {}).get("records") == box.sent, what="first records")
        _fill(small_fs / "filler")
        before_full = box.sent
        box.publish(600)  # the disk is full: these cannot be written
        _wait(lambda: box.logged("recorder_write_failed"), what="recorder_write_failed")
        _wait(lambda: box.logged("disk_space_low"), what="disk_space_low")
        assert box.proc.poll() is None, "the recorder died on ENOSPC"
        (small_fs / "filler").unlink()  # space returns
        box.publish(300)
        after = box.sent
        _wait(lambda: (box.manifest() or {}).get("last_seq") == after, what="resumed manifest")
        _wait(lambda: box.logged("recorder_write_resumed"), what="recorder_write_resumed")
        state = _wait(
            lambda: (
                (s := _json(small_fs / "data" / "neural_state.json"))
                and s["recorder"]["records_lost"] > 0
                and s["recorder"]["writing"]
                and s
            ),
            what="neural_state reporting the loss",
        )
        box.stop()
    finally:
        box.kill()
    os.umask(old)

    manifest = box.manifest()
    got = list(iter_session(box.session))
    assert manifest["complete"] is True and manifest["records"] == len(got)
    lost = manifest["records_lost"]
    assert 0 < lost <= 600 and manifest["records"] + lost == box.sent  # every one accounted
    assert manifest["write_error"].startswith("ENOSPC")
    assert state["recorder"]["records_lost"] == lost
    seqs = [int.from_bytes(b[b.index(b"\0") + 1 :][:8], "little") for b in got]
    assert seqs[:before_full] == list(range(1, before_full + 1))  # before: all there
    assert seqs[-300:] == list(range(after - 299, after + 1))  # after: writing resumed
    out = _verify(box.session)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{lost} message(s) were received but could not be written (ENOSPC" in out.stdout
    assert "Traceback" not in box.log.read_text()

    # Private files: the black box is the account's trading history.
    assert _mode(small_fs / "data" / "blackbox") == 0o700
    assert _mode(box.session) == 0o700
    for f in [*segments(box.session), box.session / "manifest.json"]:
        assert _mode(f) == 0o600, f
    assert _mode(small_fs / "data" / "neural_state.json") == 0o600


def test_file_size_limit_without_root(tmp_path: Path) -> None:
    """No mount needed: RLIMIT_FSIZE in the recorder process makes writes past 200 kB
    fail (EFBIG), as a full disk does. It keeps running, counts, and what it wrote verifies."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))

    box = Box(tmp_path, tmp_path / "data", preexec=limit)
    try:
        box.publish(600)  # about 600 kB into 300 kB segments: the first hits the limit
        _wait(lambda: box.logged("recorder_write_failed"), what="recorder_write_failed")
        time.sleep(0.3)
        assert box.proc.poll() is None, "the recorder died on EFBIG"
        box.stop()
    finally:
        box.kill()
    manifest = box.manifest()
    got = list(iter_session(box.session))
    assert manifest["records"] == len(got) > 0
    assert (
        manifest["records_lost"] > 0 and manifest["records"] + manifest["records_lost"] == box.sent
    )
    assert manifest["write_error"].startswith("EFBIG")
    out = _verify(box.session)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "could not be written (EFBIG" in out.stdout
    assert _mode(box.session) == 0o700 and _mode(tmp_path / "data" / "blackbox") == 0o700
    assert all(_mode(f) == 0o600 for f in [*segments(box.session), box.session / "manifest.json"])
