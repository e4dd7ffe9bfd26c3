"""A full disk stops new risk at once and loses no order (issue 11 §3).

The end-to-end test runs `chimera live` (paper) against the simulator with its data_dir on
a real 16 MB tmpfs, fills the filesystem while orders flow, and checks that the journal's
failure is a named event, that the engine goes exits-only (status and health say so),
that it keeps running, and that a clean stop leaves no order open. Mounting needs root
(CI runs as root); the router-level test below makes a real SQLite journal full without
root, through SQLite's own page limit, and runs everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from chimera_core.contracts import ExecKind
from chimera_core.control import ControlClient, read_token
from tests.execution.test_router import T0, Desk, intent, snap
from tests.loopback import chimera, free_port
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(180)


def _events(stderr: bytes) -> list[dict]:
    return [orjson.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]


@contextlib.contextmanager
def _tmpfs(path: Path, size_mb: int):
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the router-level full-journal "
            "test covers the logic without root"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(path: Path) -> Path:
    """Write zeros until the filesystem refuses: ENOSPC for everyone after this."""
    filler = path / "filler"
    chunk = b"\0" * (64 << 10)
    with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
        while True:
            f.write(chunk)
    return filler


async def test_a_full_disk_moves_the_engine_to_exits_only_and_a_stop_leaves_nothing_open(
    tmp_path,
):
    with _tmpfs(tmp_path / "disk", 16) as disk:
        async with ExchangeSimulator(port=0, rate=2000.0, seed=3) as sim:
            control = f"tcp://127.0.0.1:{free_port()}"
            cfg = tmp_path / "chimera.toml"
            cfg.write_text(
                f'data_dir = "{disk}"\n'
                f'[feed]\nurl = "{sim.url}"\nmode = "SNAP_QUOTE"\n'
                "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
                "cooldown_s = 5.0\nexecute_timeout_s = 5.0\n"
                "[governance]\nmin_confidence = 0.0\napproval_min_confidence = 0.0\n"
                '[logging]\ndecisions = "none"\n'
                f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
                "health_interval_s = 0.2\nwait_for_subscriber_s = 0.0\n"
                f'[control]\nendpoint = "{control}"\n'
            )
            proc = chimera("live", "--config", str(cfg), cwd=tmp_path)
            loop = asyncio.get_running_loop()

            def placed() -> int:
                return sum(e["event"] == "order_placed" for e in _events(proc.output()[1]))

            deadline = loop.time() + 60
            while placed() < 3 and loop.time() < deadline:
                assert proc.poll() is None, proc.output()[1].decode()[-3000:]
                await asyncio.sleep(0.2)
            assert placed() >= 3, "no orders flowed before the disk filled"
            filler = _fill(disk)
            assert shutil.disk_usage(disk).free < 64 << 10
            token = read_token({}, disk)
            status: dict = {}
            deadline = loop.time() + 60
            with ControlClient(control, token) as client:
                while loop.time() < deadline:
                    assert proc.poll() is None, proc.output()[1].decode()[-3000:]
                    status = client.request("status")
                    if "journal_write_failed" in status["result"].get("exits_only", ""):
                        break
                    await asyncio.sleep(0.2)
                assert "journal_write_failed" in status["result"]["exits_only"], status
                # It keeps running and decides on, with no new entries.
                before = status["result"]["stats"]["decisions"]
                await asyncio.sleep(1.0)
                after = client.request("status")["result"]
                assert after["stats"]["decisions"] > before
                assert proc.poll() is None
                filler.unlink()  # space comes back; the operator resumes
                resumed = client.request("resume")
                assert resumed["ok"], resumed
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    events = _events(err)
    names = [e["event"] for e in events]
    assert "journal_write_failed" in names
    assert "engine_exits_only" in names
    assert "frame_handler_failed" not in names, [e for e in events if "failed" in e["event"]][:3]
    assert "stop_orders_left_open" not in names, _story(events)
    assert names[-1] == "engine_stopped"


async def test_a_journal_that_cannot_write_refuses_entries_and_still_books_reports(tmp_path):
    """SQLite's page limit makes the real journal full: an entry is refused before the
    broker sees it (its REJECTED report names the failure) and the failure hook is told,
    while a fill of an order sent before the disk filled is still booked, once."""
    desk = Desk(tmp_path)
    failures: list[str] = []
    desk.router.on_journal_failure = failures.append
    await desk.start()
    await desk.tick(snap(T0))
    desk.router.submit(intent(T0, 10), atr=1.0)  # sent while the disk had room
    await desk.settle()
    journal = desk.router.journal
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # not one page more
    for i in range(1, 200):  # use up the last free page, then fail
        desk.router.submit(intent(T0 + i, 10, seq=i), atr=1.0)
        await desk.settle()
        if failures:
            break
    assert failures, "the journal never filled"
    refused = desk.reports[-1]
    assert refused.kind is ExecKind.REJECTED and "journal_write_failed" in refused.reason
    assert refused.client_order_id not in {
        o.client_order_id for o in await desk.router.broker.order_book()
    }
    await desk.tick(snap(T0 + 1000))  # the paper exchange fills what it accepted
    filled = [r for r in desk.reports if r.kind is ExecKind.FILLED]
    assert filled and all(r.fill is not None for r in filled)
    assert len({r.fill.fill_id for r in filled}) == len(filled)  # booked once each
    assert journal.check() == []


def _story(events: list[dict]) -> str:
    keep = {
        "stop_orders_left_open", "cancel_failed", "cancel_all", "router_task_failed",
        "store.write_failed", "journal_write_failed", "exit_sent_unjournaled",
        "order_placed", "paper.cancelled", "paper.fill",
    }  # fmt: skip
    return "\n".join(str(e) for e in events if e["event"] in keep)[-5000:]
