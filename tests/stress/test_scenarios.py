"""Every shipped scenario through event mode on the shipped sample (its first sessions),
judged; a deliberately broken limit shows a FAIL; bad scenario files are refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from chimera_core.config import load_config
from tools.backtest.data import load_bars
from tools.backtest.run import event_factory
from tools.stress.montecarlo import StressError
from tools.stress.scenarios import (
    JudgeLimits,
    StressBars,
    load_scenario,
    run_scenarios,
    shipped_scenarios,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "samples" / "sim_2885_5m.csv"
SESSION_BARS = 75  # 09:15-15:30 IST in 5-minute bars


def _sample(sessions: int) -> StressBars:
    b = load_bars(SAMPLE)
    n = sessions * SESSION_BARS
    return StressBars(
        np.asarray(b.ts_ms[:n]),
        np.asarray(b.open[:n]),
        np.asarray(b.high[:n]),
        np.asarray(b.low[:n]),
        np.asarray(b.close[:n]),
        np.asarray(b.volume[:n]),
        b.interval_ms,
        b.tz,
    )


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    cfg = load_config(ROOT / "chimera.example.toml")
    scenarios = [load_scenario(p) for p in shipped_scenarios()]
    rows = run_scenarios(
        cfg,
        _sample(8),
        scenarios,
        event_factory("ma_cross"),
        tmp_path_factory.mktemp("stress"),
        token="2885",
    )
    return {r["name"]: r for r in rows}


def test_the_six_kinds_ship_and_each_runs_and_is_judged(shipped):
    kinds = {r["kind"] for r in shipped.values()}
    assert kinds == {"none", "gap", "volatility", "depth", "outage", "rejects", "circuit_freeze"}
    base = shipped["baseline"]
    assert base["trades"] > 0, "the sample must trade for the scenarios to mean anything"
    for row in shipped.values():
        assert row["verdict"] in ("PASS", "FAIL")
        assert row["verdict"] == ("PASS" if all(row["checks"].values()) else "FAIL")
        # Whatever the market did, the journal must agree with what the node published.
        assert row["checks"]["journal_ok"], (row["name"], row["problems"])
        assert row["checks"]["caps_held"], (row["name"], row["problems"])


def test_each_scenario_changed_the_run(shipped):
    base = shipped["baseline"]
    assert shipped["gap_down"]["worst_day_loss_pct"] > base["worst_day_loss_pct"]
    assert shipped["broker_rejects"]["injected_rejects"] == 5
    assert shipped["feed_outage_60s"]["ticks"] < base["ticks"]
    for name in ("gap_up", "volatility_x3", "circuit_freeze"):
        assert shipped[name]["final_equity"] != base["final_equity"], name


def test_a_deliberately_broken_limit_shows_fail(tmp_path):
    cfg = load_config(ROOT / "chimera.example.toml")
    gap = load_scenario(ROOT / "tools/stress/scenarios/gap_down.toml")
    bars = _sample(4)
    fine = JudgeLimits(0.02, 1_000_000, 200_000.0, 1.0, True)
    broken = replace(fine, daily_loss_pct=1e-6, max_position_value=1.0)
    (_, g_ok) = run_scenarios(
        cfg, bars, [gap], event_factory("ma_cross"), tmp_path / "a", token="2885", limits=fine
    )
    (_, g_bad) = run_scenarios(
        cfg, bars, [gap], event_factory("ma_cross"), tmp_path / "b", token="2885", limits=broken
    )
    assert g_ok["checks"]["caps_held"] and g_ok["checks"]["journal_ok"]
    assert g_bad["verdict"] == "FAIL"
    assert not g_bad["checks"]["loss_within_daily_limit"]
    assert not g_bad["checks"]["caps_held"]
    assert any("daily_loss_pct" in p for p in g_bad["problems"])
    assert g_bad["worst_day_loss_pct"] == g_ok["worst_day_loss_pct"]  # same run, new judge


def test_bad_scenario_files_name_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "gap"\npct = -0.1\nsesion = 2\n')
    with pytest.raises(StressError, match="sesion"):
        load_scenario(bad)
    bad.write_text('name = "x"\nkind = "earthquake"\n')
    with pytest.raises(StressError, match="circuit_freeze"):
        load_scenario(bad)
    bad.write_text('name = "x"\nkind = "volatility"\nfactor = -3\n')
    with pytest.raises(StressError, match="factor"):
        load_scenario(bad)
    with pytest.raises(StressError, match="no such file"):
        load_scenario(tmp_path / "missing.toml")
