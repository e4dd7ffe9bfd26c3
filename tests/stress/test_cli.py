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
    r = _stress("--data", str(multi), "--reprice", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "drop --reprice" in r.stderr
    r = _stress("--data", str(multi), "--token", "X", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and "--token names one instrument" in r.stderr
    r = _stress("--data", str(multi), "--data", str(tmp_path / "nope.csv"), cwd=tmp_path)
    assert r.returncode == 2 and "nope.csv: no such file" in r.stderr


def test_both_kinds_on_the_account_of_the_four_instrument_sample(tmp_path):
    """--data on a long-format file: Monte Carlo on the account's run, and scenarios on
    the whole universe (a market-wide gap and a one-symbol one), byte-identical JSON."""
    multi = ROOT / "data" / "samples" / "synth_4x5m.csv"
    one = tmp_path / "gap_syn1.toml"
    one.write_text('name = "gap_syn1"\nkind = "gap"\nsession = 2\npct = -0.05\n'
                   'symbol = "SYN1"\n')  # fmt: skip
    args = ("--data", str(multi), "--strategy", "ma_cross", "--paths", "200",
            "--scenario", str(ROOT / "tools/stress/scenarios/gap_up.toml"),
            "--scenario", str(one), "--quiet")  # fmt: skip
    a = _stress(*args, "--out", str(tmp_path / "a"), cwd=tmp_path)
    b = _stress(*args, "--out", str(tmp_path / "b"), "--no-html", cwd=tmp_path)
    out = orjson.loads((tmp_path / "a" / "stress.json").read_bytes())
    assert a.returncode == (0 if out["verdict"] == "PASS" else 1), a.stderr
    ja = (tmp_path / "a" / "stress.json").read_bytes()
    jb = (tmp_path / "b" / "stress.json").read_bytes()
    assert b.returncode == a.returncode, b.stderr
    # The same bytes but for the output directory Monte Carlo names as its source.
    assert ja.replace(str(tmp_path / "a").encode(), b"OUT") == jb.replace(
        str(tmp_path / "b").encode(), b"OUT"
    )
    mc = out["monte_carlo"]
    assert mc["paths"] == 200 and mc["trade_order"]["trades"] > 0
    account = orjson.loads((tmp_path / "a" / "backtest" / "result.json").read_bytes())
    assert set(account["instruments"]) == {"SYN0", "SYN1", "SYN2", "SYN3"}
    assert mc["trade_order"]["trades"] == account["metrics"]["trades"]
    rows = {r["name"]: r for r in out["scenarios"]}
    assert set(rows) == {"baseline", "gap_up", "gap_syn1"}
    assert all(d["changed_bars"] > 0 for d in rows["gap_up"]["instruments"].values())
    moved = {t for t, d in rows["gap_syn1"]["instruments"].items() if d["changed_bars"]}
    assert moved == {"SYN1"} and rows["gap_syn1"]["symbol"] == "SYN1"
    assert b"Scenarios by instrument" in (tmp_path / "a" / "stress.html").read_bytes()
