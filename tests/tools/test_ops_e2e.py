"""Operations end to end: `chimera metrics` scraped while `chimera live` trades a simulator
session (real processes, loopback only)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request

import pytest

from tests.loopback import chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(120)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    assert m, f"{name} not exported"
    return float(m.group(1))


def test_metrics_move_while_a_simulator_session_runs(tmp_path):
    sim_port, tel_port, ctl_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    (tmp_path / "chimera.toml").write_text(
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        # Short bars so the paper broker trades within seconds (orders, fills, P&L move).
        "[strategy]\nbar_interval_s = 5\nenergy_threshold = 0.006\n"
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
        "[governance]\napproval_size_limit = 1e9\napproval_min_confidence = 0.0\n"
    )
    procs = [chimera("sim", "--port", str(sim_port), "--rate", "2000", cwd=tmp_path)]
    try:
        wait_port(sim_port)
        procs.append(
            chimera(
                "metrics", "--config", "chimera.toml", "--port", str(metrics_port), cwd=tmp_path
            )
        )
        wait_port(metrics_port)
        procs.append(chimera("live", cwd=tmp_path))
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 90
        while True:
            first = urllib.request.urlopen(url, timeout=5).read().decode()
            if "chimera_ticks_total" in first and _metric(first, "chimera_ticks_total") > 0:
                break
            assert time.monotonic() < deadline, "no ticks reached the exporter"
            time.sleep(0.5)
        # Wait for the execution layer's first order (warm-up takes longer on a loaded box)
        # rather than a fixed two seconds.
        while True:
            time.sleep(1.0)
            second = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'chimera_order_reports_total{kind="ACK"}' in second or time.monotonic() > deadline:
                break
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    assert _metric(second, "chimera_ticks_total") > _metric(first, "chimera_ticks_total") + 1000
    assert _metric(second, "chimera_decision_latency_seconds_count") > 0
    assert _metric(second, "chimera_feed_connected") == 1.0
    assert _metric(second, "chimera_halted") == 0.0
    assert _metric(second, "chimera_tick_rate") > 500
    assert procs[1].returncode == 0, procs[1].output()[1].decode()[-2000:]
    # The execution layer's numbers: reconciled at start, orders accepted and filled.
    assert _metric(second, "chimera_reconciled") == 1.0
    assert _metric(second, 'chimera_order_reports_total{kind="ACK"}') > 0
    assert _metric(second, "chimera_fills_total") > 0
    assert "chimera_realized_pnl{" in second and "chimera_charges{" in second
