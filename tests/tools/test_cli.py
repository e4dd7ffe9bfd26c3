"""`chimera live` as a real process against the simulator; CLI errors that say what to fix."""

from __future__ import annotations

import asyncio
import signal
import socket

import orjson
import pytest

from chimera_core.contracts import OrderStatus
from chimera_execution.journal import Journal
from tests.loopback import chimera, free_port
from tools.sim.server import ExchangeSimulator, Faults

pytestmark = pytest.mark.timeout(120)
SECRET_JWT = "eyJSECRET.JWT.VALUE"
SECRET_FEED = "feedtoken-SECRET-42"


def _local_endpoints() -> str:
    """Telemetry and control on free ports: tests never touch the default 7001/7002."""
    return (
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{free_port()}"\n'
    )


def _events(stderr: bytes) -> list[dict]:
    out = []
    for line in stderr.decode().splitlines():
        if line.startswith("{"):
            out.append(orjson.loads(line))
    return out


async def test_chimera_live_trades_on_paper_logs_decisions_and_stops_cleanly(tmp_path):
    async with ExchangeSimulator(port=0, rate=3000.0, seed=3) as sim:
        cfg = tmp_path / "chimera.toml"
        cfg.write_text(
            f'[feed]\nurl = "{sim.url}"\nmode = "SNAP_QUOTE"\n'
            "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
            '[logging]\ndecisions = "transitions"\nstats_interval_s = 1.0\n' + _local_endpoints()
        )
        env = {
            "CHIMERA_JWT": SECRET_JWT,
            "CHIMERA_FEED_TOKEN": SECRET_FEED,
            "CHIMERA_API_KEY": "apikey-SECRET",
            "CHIMERA_CLIENT_CODE": "A1234567",
        }
        proc = chimera("live", "--config", str(cfg), env=env, cwd=tmp_path)
        deadline = asyncio.get_running_loop().time() + 60
        while sim.frames_sent < 30_000 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    text = err.decode()
    for secret in (SECRET_JWT, SECRET_FEED, "apikey-SECRET"):
        assert secret not in text
    events = _events(err)
    names = [e["event"] for e in events]
    assert names[0] == "engine_started" or "engine_started" in names
    assert names[-1] == "engine_stopped"
    assert "engine_stats" in names
    fires = [e for e in events if e["event"] == "decision" and e["intent"]]
    assert fires, "no order intent in 30k ticks"
    assert all(e["intent"].startswith("CH-1-") and e["state"] == "EXECUTE" for e in fires)
    stopped = events[-1]
    assert stopped["decisions"] > 20_000 and stopped["malformed"] == 0


def test_bad_config_stops_with_a_message_naming_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[feed]\nmode = "DEPTH"\n')
    proc = chimera("live", "--config", str(cfg), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "feed.mode" in err.decode() and "SNAP_QUOTE" in err.decode()


def test_live_mode_without_credentials_is_refused(tmp_path):
    cfg = tmp_path / "live.toml"
    cfg.write_text(
        'mode = "live"\n[feed]\nurl = "wss://smartapisocket.angelone.in/smart-stream"\n'
        '[execution]\nbroker = "angelone"\n'
    )
    env = {
        k: ""
        for k in ("CHIMERA_JWT", "CHIMERA_FEED_TOKEN", "CHIMERA_API_KEY", "CHIMERA_CLIENT_CODE")
    }
    proc = chimera("live", "--config", str(cfg), env=env, cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "CHIMERA_JWT" in err.decode() and ".env" in err.decode()


def test_cortex_refuses_a_non_loopback_address():
    proc = chimera("cortex", "--address", "0.0.0.0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "refusing to bind 0.0.0.0" in err.decode()


async def test_a_silent_feed_is_reported_stale_without_reconnecting(tmp_path):
    faults = Faults(stall_after_s=2.0, stall_for_s=2.5)  # repeats: 2 s on, 2.5 s silent
    async with ExchangeSimulator(port=0, rate=200.0, faults=faults) as sim:
        cfg = tmp_path / "chimera.toml"
        cfg.write_text(
            f'[feed]\nurl = "{sim.url}"\nstale_after_s = 1.0\n'
            '[logging]\ndecisions = "none"\nstats_interval_s = 0.5\n' + _local_endpoints()
        )
        proc = chimera("live", "--config", str(cfg), cwd=tmp_path)
        # Follow the simulator: frames flow, stop (the stall), flow again; then stop the
        # engine shortly after the feed came back, before the next stall.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        phase, last, still_since = "flowing", -1, loop.time()
        while phase != "recovered":
            assert loop.time() < deadline, f"stuck in phase {phase}"
            await asyncio.sleep(0.1)
            sent = sim.frames_sent
            if sent != last:
                if phase == "stalled":
                    phase = "recovered"
                last, still_since = sent, loop.time()
            elif sent > 0 and loop.time() - still_since > 1.5:
                phase = "stalled"
        await asyncio.sleep(1.2)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    events = _events(err)
    stale = [e for e in events if e["event"] == "feed_stale"]
    # silent_s is logged rounded to the millisecond: 1.0004 s of silence prints as 1.0.
    assert stale and all(e["connected"] for e in stale) and stale[0]["silent_s"] >= 1.0
    stats = [e for e in events if e["event"] == "engine_stats"]
    assert stats[-1]["feed_stale"] is False  # fresh again once the stall ended
    assert stats[-1]["feed_connects"] == 1


async def test_under_systemd_it_reports_ready_and_sigterm_halts_cleanly(tmp_path):
    """A real unix datagram socket stands in for systemd's NOTIFY_SOCKET. READY=1 comes
    after broker reconciliation; SIGTERM halts, cancels the open orders and journals the
    cancels before exit."""
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    try:
        async with ExchangeSimulator(port=0, rate=3000.0) as sim:
            cfg = tmp_path / "chimera.toml"
            cfg.write_text(
                f'data_dir = "{tmp_path / "data"}"\n'
                f'[feed]\nurl = "{sim.url}"\nmode = "SNAP_QUOTE"\n[logging]\ndecisions = "none"\n'
                "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.004\n"
                "execute_timeout_s = 100000\n"
                "[governance]\nenabled = false\n"
                # Orders rest at the paper broker, so there is something to cancel.
                "[execution.paper]\nlatency_ms = 100000000\n" + _local_endpoints()
            )
            proc = chimera("live", "--config", str(cfg), cwd=tmp_path,
                        env={"NOTIFY_SOCKET": str(notify_path)})  # fmt: skip
            ready = await asyncio.to_thread(notify.recv, 4096)
            assert ready.startswith(b"READY=1") and b"STATUS=trading paper" in ready
            assert any(e["event"] == "reconciled" for e in _events(proc.output()[1]))
            await asyncio.sleep(5.0)
            proc.send_signal(signal.SIGTERM)
            stopping = await asyncio.to_thread(notify.recv, 4096)
            _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        notify.close()
    assert stopping == b"STOPPING=1"
    assert proc.returncode == 0, err.decode()[-2000:]
    events = _events(err)
    names = [e["event"] for e in events]
    halted = [e for e in events if e["event"] == "engine_halted"]
    assert halted and halted[-1]["reason"] == "shutdown_sigterm"
    assert names.index("engine_halted") < names.index("engine_stopped")
    applied = [e for e in events if e["event"] == "control_applied"]
    assert applied and applied[-1]["command"] == "halt"  # published on telemetry too
    assert events[-1]["event"] == "engine_stopped" and events[-1]["decisions"] > 100
    # Everything the engine had working was cancelled and journaled before exit.
    with Journal(tmp_path / "data", "paper") as journal:
        orders = journal.orders()
        assert orders, "no order was placed: nothing tested the cancel on stop"
        assert not journal.open_orders()
        assert any(o.status is OrderStatus.CANCELLED for o in orders)
        assert journal.check() == []


def test_bench_help_lists_every_benchmark_and_each_one_has_a_main():
    import importlib
    import subprocess
    import sys

    from tests.loopback import REPO
    from tools.cli import BENCHMARKS

    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "bench", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(BENCHMARKS)
    for module, _ in BENCHMARKS.values():
        assert callable(importlib.import_module(module).main), module
