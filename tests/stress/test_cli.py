"""``chimera stress`` end to end in a real process: Monte Carlo on a result directory,
byte-identical JSON for the same seed, the HTML written, bad input refused with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.stress.test_montecarlo import _result_dir

ROOT = Path(__file__).resolve().parents[2]


def _stress(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "stress", "--config",
         str(ROOT / "chimera.example.toml"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_monte_carlo_on_a_result_directory_is_reproducible(tmp_path):
    bt = tmp_path / "bt"
    bt.mkdir()
    _result_dir(bt)
    a = _stress("--backtest", str(bt), "--paths", "300", "--out", str(tmp_path / "a"),
                "--quiet", cwd=tmp_path)  # fmt: skip
    assert a.returncode == 0, a.stderr
    b = _stress("--backtest", str(bt), "--paths", "300", "--out", str(tmp_path / "b"),
                "--quiet", "--no-html", cwd=tmp_path)  # fmt: skip
    assert b.returncode == 0, b.stderr
    ja, jb = (tmp_path / "a" / "stress.json").read_bytes(), (tmp_path / "b" / "stress.json")
    assert ja == jb.read_bytes()
    assert (tmp_path / "a" / "stress.html").stat().st_size > 100_000  # plotly inlined
    assert not (tmp_path / "b" / "stress.html").exists()
    out = orjson.loads(ja)
    assert out["monte_carlo"]["paths"] == 300
    assert out["monte_carlo"]["limits"]["daily_loss_pct"] == 0.02  # from [governance]
    assert out["verdict"] == "PASS" and out["scenarios"] == []


def test_bad_input_is_refused_with_a_message(tmp_path):
    r = _stress("--backtest", str(tmp_path), "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "equity.csv" in r.stderr
    r = _stress("--backtest", str(tmp_path), "--scenario", "x.toml", cwd=tmp_path)
    assert r.returncode == 2 and "give --data" in r.stderr
    multi = ROOT / "data" / "samples" / "synth_4x5m.csv"
    r = _stress("--data", str(multi), "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "scenarios run one instrument" in r.stderr
    assert "--backtest DIR/with_rules" in r.stderr
