"""`chimera backtest` as a user runs it: the shipped sample through both modes, the metrics
table on stdout, the report on disk, byte-identical JSON for the same inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.loopback import REPO

pytestmark = pytest.mark.timeout(300)
SAMPLE = REPO / "data" / "samples" / "sim_2885_5m.csv"


def _backtest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "backtest", "--data", str(SAMPLE), *args],
        cwd=cwd, capture_output=True, text=True, timeout=280,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("ma_cross", ()),
        ("default", ("--param", "energy_threshold=0.05")),
        ("ma_cross", ("--fast",)),
    ],
)
def test_a_backtest_prints_its_metrics_and_writes_the_same_report_twice(tmp_path, strategy, extra):
    runs = []
    for n in range(2):
        out = tmp_path / f"run{n}"
        done = _backtest("--strategy", strategy, *extra, "--report", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        for name in ("sharpe", "max_drawdown", "profit_factor", "charges", "trades"):
            assert name in done.stdout
        runs.append(out)
    first, second = ((r / "result.json").read_bytes() for r in runs)
    assert first == second  # the same inputs give byte-identical JSON
    result = json.loads(first)
    assert result["data"]["sha256"] and result["code_version"]
    assert result["mode"] == ("fast" if "--fast" in extra else "event")
    m = result["metrics"]
    assert m["trades"] == len([t for t in result["trades"] if t.get("exit_bar", -1) != -1]) > 0
    # The books agree: final equity is the start plus every closed trade's net P&L.
    pnl = sum(t["pnl"] for t in result["trades"] if t["pnl"] is not None)
    assert m["final_equity"] == pytest.approx(m["initial_equity"] + pnl, abs=0.05)
    html = (runs[0] / "report.html").read_text()
    assert "plotly" in html.lower() and "Equity" in html
    trades_csv = (runs[0] / "trades.csv").read_text().splitlines()
    assert len(trades_csv) == len(result["trades"]) + 1


def test_bad_input_says_what_to_fix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-01-02T09:15:00+05:30,100,101,99,100,10\n"
        "2024-01-02T09:10:00+05:30,100,101,99,100,10\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "backtest", "--data", str(bad)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "row 2" in (done.stderr + done.stdout) and "Traceback" not in done.stderr
    done = _backtest("--strategy", "nope", cwd=tmp_path)
    assert done.returncode != 0 and "unknown strategy 'nope'" in done.stderr
    done = _backtest("--strategy", "ma_cross", "--param", "fast=40", cwd=tmp_path)
    assert done.returncode != 0 and "must be shorter than slow" in done.stderr


def test_a_tick_file_runs_through_a_fresh_paper_node(tmp_path):
    """The shipped tick file's frames at their recorded receive times (about 9 s apart per
    token, so the feed's staleness limit is raised, as a trader replaying it would)."""
    (tmp_path / "chimera.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n[feed]\nstale_after_s = 60\n'
        "[strategy]\nbar_interval_s = 30\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "backtest", "--data",
         str(REPO / "data" / "samples" / "sim_seed7.chtick"), "--strategy", "ma_cross",
         "--param", "fast=3", "--param", "slow=8", "--report", str(tmp_path / "out")],
        cwd=tmp_path, capture_output=True, text=True, timeout=200,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_bytes())
    assert result["ticks"] == 2850 and result["mode"] == "event-ticks"
    assert len(result["trades"]) > 5 and len(result["fills"]) >= len(result["trades"])
    pnl = sum(t["pnl"] for t in result["trades"])
    assert result["final_equity"] == pytest.approx(1_000_000.0 + pnl, abs=0.05)


@pytest.mark.parametrize(
    ("strategy", "params"),
    [("ma_cross", {"fast": 5, "slow": 20}), ("default", {"energy_threshold": 0.05})],
)
def test_both_modes_make_the_same_trades_through_the_cli_path(strategy, params):
    """`chimera backtest` with and without --fast on the shipped sample, on the NSE calendar
    (entry cut-off, square-off, nights and a weekend), governance off: the same trades
    (the default strategy decided per print in fast mode, as the node does)."""
    from chimera_core.config import parse_config
    from tools.backtest.data import load_bars
    from tools.backtest.run import run_backtest

    cfg = parse_config('[governance]\nenabled = false\n[logging]\ndecisions = "none"\n')
    bars = load_bars(SAMPLE)
    event, _ = run_backtest(cfg, bars, strategy, params, token="2885")
    fast, _ = run_backtest(cfg, bars, strategy, params, fast=True, token="2885")
    assert "differs_from_event_mode" not in fast

    def key(t):
        side = t["side"] if isinstance(t["side"], str) else ("LONG" if t["side"] > 0 else "SHORT")
        return (t["entry_bar"], t["exit_bar"], side, t["qty"])

    assert len(event["trades"]) > 30
    assert [key(t) for t in event["trades"]] == [key(t) for t in fast["trades"]]
    assert event["metrics"]["final_equity"] == pytest.approx(fast["metrics"]["final_equity"],
                                                             abs=0.05)  # fmt: skip


def test_fast_mode_fills_and_sizing_are_settings():
    """`--set` reaches fast mode's settings: fill at the close instead of the next open,
    and sizing by a fraction of equity (whole units, charges included)."""
    from chimera_core.config import parse_config
    from chimera_core.errors import ChimeraError
    from tools.backtest.data import load_bars
    from tools.backtest.run import run_backtest

    cfg = parse_config('[governance]\nenabled = false\n[logging]\ndecisions = "none"\n')
    bars = load_bars(SAMPLE)
    slip = cfg.execution.paper.slippage_bps / 10_000

    def run(**settings):
        result, _ = run_backtest(cfg, bars, "ma_cross", {}, fast=True, token="2885",
                                 fast_settings=settings)  # fmt: skip
        return result["trades"]

    for t in run(fill="close"):
        i, buy = t["entry_bar"], t["side"] > 0
        assert t["entry_price"] == pytest.approx(bars.close[i] * (1 + slip if buy else 1 - slip))
    for t in run(fill="next_open"):  # at the open; after a night, at the first leg's end
        i, buy = t["entry_bar"], t["side"] > 0
        prints = (bars.open[i], bars.low[i], bars.high[i])
        moved = [p * (1 + slip if buy else 1 - slip) for p in prints]
        assert any(t["entry_price"] == pytest.approx(m) for m in moved), t
    sized = run(sizing="equity_fraction", equity_fraction=0.5)
    assert min(t["qty"] for t in sized) > 100  # ~500k of a ~1,100 price, not the 1 unit
    assert all(t["qty"] * t["entry_price"] <= 0.5 * 1_010_000 for t in sized)
    with pytest.raises(ChimeraError, match="not a fast-mode setting"):
        run(nope=1)
    with pytest.raises(ChimeraError, match="add --fast"):
        run_backtest(cfg, bars, "ma_cross", {}, token="2885", fast_settings={"fill": "close"})
