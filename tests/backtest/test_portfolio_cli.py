"""`chimera backtest` with several instruments, as a user runs it: the shipped
multi-instrument sample with and without the portfolio rules side by side, a generated
universe through `chimera backtest synth`, one file per instrument, and the errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loopback import REPO

pytestmark = pytest.mark.timeout(600)
MULTI = REPO / "data" / "samples" / "synth_4x5m.csv"
RULES = """
[governance.portfolio]
cluster_rho = 0.3
cluster_max_exposure = 0.3
var_limit = 0.01
"""


def _chimera(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=580,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )  # fmt: skip


def test_the_shipped_sample_side_by_side_with_and_without_the_portfolio_rules(tmp_path):
    (tmp_path / "chimera.toml").write_text(RULES)
    out = tmp_path / "out"
    args = ("--compare-portfolio", "--param", "energy_threshold=0.05", "--report", str(out))
    done = _chimera("backtest", "--data", str(MULTI), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "with rules" in done.stdout and "veto cluster_exposure" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == "event-compare-portfolio"
    on, off = result["with_rules"], result["without_rules"]
    assert [i["token"] for i in result["data"]["instruments"]] == ["SYN0", "SYN1", "SYN2", "SYN3"]
    assert sum(on["portfolio_vetoes"].values()) > 0 and off["portfolio_vetoes"] == {}
    assert on["exposure"]["max_gross"] < off["exposure"]["max_gross"]
    for run in (on, off):
        assert sorted(run["instruments"]) == ["SYN0", "SYN1", "SYN2", "SYN3"]
        assert {t["token"] for t in run["trades"]} <= set(run["instruments"])
    page = (out / "report.html").read_text()
    for text in ("portfolio rules on", "portfolio rules off", "Vetoes by rule",
                 "cluster_exposure", "Per instrument", "SYN3"):  # fmt: skip
        assert text in page
    for run in ("with_rules", "without_rules"):  # each run's files, as one run's report
        assert json.loads((out / run / "result.json").read_text()) == result[run]
        header = (out / run / "equity.csv").read_text().splitlines()[0]
        assert header == "ts_ms,gross_exposure,equity"
    # ... which chimera stress takes: Monte Carlo on the account's returns and trades.
    stress = _chimera("stress", "--backtest", str(out / "with_rules"), "--paths", "200",
                      "--out", str(tmp_path / "stress"), "--quiet", cwd=tmp_path)  # fmt: skip
    assert stress.returncode == 0, stress.stderr[-3000:]
    assert (tmp_path / "stress" / "stress.json").is_file()


def test_a_generated_universe_and_one_file_per_instrument(tmp_path):
    args = ("--instruments", "3", "--bars", "200", "--seed", "2", "--rho", "0.4:0.6")
    done = _chimera("backtest", "synth", "--out", str(tmp_path / "u.parquet"), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 instruments x 200 bars, seed 2" in done.stdout
    # The same bars split into one file per instrument trade as the long file does.
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "u.parquet")
    files = []
    for s in ("SYN0", "SYN1", "SYN2"):
        part = table.filter(pc.equal(table.column("symbol"), s)).drop_columns(["symbol"])
        pacsv.write_csv(part, tmp_path / f"{s}.csv")
        files += ["--data", str(tmp_path / f"{s}.csv")]
    results = []
    for n, data in enumerate((["--data", str(tmp_path / "u.parquet")], files)):
        out = tmp_path / f"run{n}"
        done = _chimera("backtest", *data, "--strategy", "ma_cross", "--quiet", "--report",
                        str(out), cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads((out / "result.json").read_text()))
    long, split = results
    assert long["trades"] == split["trades"] and long["final_equity"] == split["final_equity"]
    assert long["trades"]


def test_what_several_instruments_cannot_do_is_said(tmp_path):
    done = _chimera("backtest", "--data", str(MULTI), "--fast", cwd=tmp_path)
    assert done.returncode == 2 and "event mode only: drop --fast" in done.stderr
    done = _chimera("backtest", "--data", str(MULTI), "--symbol-column", "ticker", cwd=tmp_path)
    assert done.returncode == 2 and "no symbol column 'ticker'" in done.stderr
