"""Scenarios on several instruments sharing one account (tools/stress/account.py): every
shipped scenario kind on the shipped 4-instrument sample, judged on the account with each
instrument's detail; on a small seeded universe (``synth``) a market-wide gap moves every
instrument and a one-symbol gap only that one; the portfolio's cluster cap is judged where
configured (and a broken one shows FAIL), the VaR limit reported; bad symbols are refused."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from chimera_core.config import Config, load_config
from tools.backtest.run import event_factory
from tools.backtest.synth import synth_universe, write_universe
from tools.backtest.universe import Universe, load_universe
from tools.stress.account import book_checks, changed_bars, closes_on, run_account_scenarios
from tools.stress.montecarlo import StressError
from tools.stress.scenarios import (
    Gap,
    load_scenario,
    session_numbers,
    shipped_scenarios,
    transform,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "samples" / "synth_4x5m.csv"
SESSION_BARS = 75  # 09:15-15:30 IST in 5-minute bars


def _cfg(**portfolio: float) -> Config:
    cfg = load_config(ROOT / "chimera.example.toml")
    port = msgspec.structs.replace(cfg.governance.portfolio, **portfolio)
    return msgspec.structs.replace(
        cfg, governance=msgspec.structs.replace(cfg.governance, portfolio=port)
    )


def _head(u: Universe, sessions: int, tmp: Path) -> Universe:
    """The universe's first ``sessions`` trading days (each instrument's first bars)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = sessions * SESSION_BARS
    rows = []
    for b in u.bars:
        for i in range(min(n, len(b))):
            rows.append((int(b.ts_ms[i]), b.symbol, b.open[i], b.high[i], b.low[i],
                         b.close[i], b.volume[i]))  # fmt: skip
    cols = list(zip(*rows, strict=True))
    table = pa.table({
        "timestamp": pa.array(cols[0], pa.timestamp("ms", tz="UTC")),
        "symbol": cols[1], "open": cols[2], "high": cols[3], "low": cols[4],
        "close": cols[5], "volume": cols[6],
    })  # fmt: skip
    path = tmp / "head.parquet"
    pq.write_table(table, path)
    return load_universe([path])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("account")
    u = _head(load_universe([SAMPLE]), 6, tmp)
    scenarios = [load_scenario(p) for p in shipped_scenarios()]
    rows = run_account_scenarios(_cfg(), u, scenarios, event_factory("ma_cross"), tmp / "w")
    return u, {r["name"]: r for r in rows}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synth")
    path = write_universe(synth_universe(6, 300, 3, (0.3, 0.8), "5m"), tmp / "u.parquet")
    return load_universe([path])


def test_every_shipped_kind_runs_on_the_account_and_is_judged(shipped):
    u, rows = shipped
    assert len(u) == 4
    kinds = {r["kind"] for r in rows.values()}
    assert kinds == {"none", "gap", "volatility", "depth", "outage", "rejects", "circuit_freeze"}
    base = rows["baseline"]
    traded = [t for t, d in base["instruments"].items() if d["trades"]]
    assert len(traded) >= 2, "the account must trade several instruments to mean anything"
    for row in rows.values():
        assert set(row["instruments"]) == set(u.tokens)
        assert row["verdict"] == ("PASS" if all(row["checks"].values()) else "FAIL")
        assert row["checks"]["journal_ok"], (row["name"], row["problems"])
        assert row["checks"]["caps_held"], (row["name"], row["problems"])
        # The account's trades are its instruments' trades.
        assert sum(d["trades"] for d in row["instruments"].values()) == row["trades"]
        # The account's exits worked exactly when every instrument's did.
        each = all(d["exits_worked"] for d in row["instruments"].values())
        assert row["checks"]["exits_worked"] == each, row["name"]
        assert "cluster_cap_held" not in row["checks"]  # not configured: not judged


def test_each_scenario_changed_the_account_run(shipped):
    _, rows = shipped
    base = rows["baseline"]
    assert rows["broker_rejects"]["injected_rejects"] == 5
    assert rows["feed_outage_60s"]["ticks"] < base["ticks"]
    assert rows["gap_down"]["worst_day_loss_pct"] > base["worst_day_loss_pct"]
    for name in ("gap_up", "volatility_x3", "circuit_freeze"):
        assert rows[name]["final_equity"] != base["final_equity"], name
    # Transforms with no symbol change every instrument; faults change no data.
    for name in ("gap_down", "gap_up", "volatility_x3", "circuit_freeze", "depth_div10"):
        assert all(d["changed_bars"] > 0 for d in rows[name]["instruments"].values()), name
    for name in ("baseline", "feed_outage_60s", "broker_rejects"):
        assert all(d["changed_bars"] == 0 for d in rows[name]["instruments"].values()), name


def test_a_market_wide_gap_moves_every_instrument_a_one_symbol_gap_only_that_one(synth, tmp_path):
    one = synth.tokens[2]
    scenarios = [
        Gap(name="market_gap", session=2, pct=-0.10),
        Gap(name="one_gap", session=2, pct=-0.10, symbol=synth.bars[2].symbol),
    ]
    rows = {r["name"]: r for r in run_account_scenarios(
        _cfg(), synth, scenarios, event_factory("ma_cross"), tmp_path)}  # fmt: skip
    base = rows["baseline"]
    market, single = rows["market_gap"], rows["one_gap"]
    assert market["symbol"] == "all" and single["symbol"] == synth.bars[2].symbol
    # The market-wide anchor is the first bar of day 2 with any position open; each
    # instrument moves from its bar at that time to its end, by exactly 1 - 10 %.
    a = market["anchor_bar"]
    for t, b in synth.pairs():
        assert market["instruments"][t]["changed_bars"] == len(b) - a
    moved = {t for t, d in single["instruments"].items() if d["changed_bars"]}
    assert moved == {one}
    # The one-symbol anchor is a bar with that symbol's position open in the baseline run
    # (its anchor is never before the market-wide one).
    assert single["anchor_bar"] >= a
    assert single["instruments"][one]["changed_bars"] == len(synth.bars[2]) - single["anchor_bar"]
    for row in rows.values():
        assert row["checks"]["journal_ok"] and row["checks"]["caps_held"], row["problems"]
    assert market["final_equity"] != base["final_equity"]


def test_the_cluster_cap_is_judged_and_var_reported_where_configured(synth, tmp_path):
    cfg = _cfg(cluster_rho=0.5, cluster_max_exposure=0.5, var_limit=0.05)
    gap = Gap(name="market_gap", session=2, pct=-0.10)
    rows = run_account_scenarios(cfg, synth, [gap], event_factory("ma_cross"), tmp_path)
    for row in rows:
        assert row["checks"]["cluster_cap_held"], row
        assert "var_limit_held" not in row["checks"]  # reported, not judged (see book_checks)
        assert row["book"]["var_limit"]["worst_share_of_limit"] > 0
        assert row["verdict"] == "PASS", row["problems"]
        # The gate sizes entries up to the cap: the judge sees the book near it, not over.
        assert 0.5 < row["book"]["cluster_cap"]["worst_share_of_cap"] <= 1.03
        assert len(row["book"]["cluster_cap"]["cluster"]) >= 2


def test_a_book_over_its_cluster_cap_is_a_fail(synth, tmp_path):
    """The same fills judged against a cap a tenth of the one they were sized for."""
    import asyncio

    from chimera_execution.journal_view import journal_path
    from tools.backtest.event import run_instruments
    from tools.stress.account import decisions

    cfg = _cfg(cluster_rho=0.5, cluster_max_exposure=0.5)
    run = asyncio.run(run_instruments(cfg, synth.pairs(), 1, tmp_path,
                                      strategy=event_factory("ma_cross")))  # fmt: skip
    port = cfg.governance.portfolio
    decided = decisions(journal_path(tmp_path, "paper"))
    assert decided, "the run must enter for the cap to be judged"
    ok = book_checks(run, synth.pairs(), port, 75, 1.0, decided)["cluster_cap"]
    tight = msgspec.structs.replace(port, cluster_max_exposure=0.05)
    bad = book_checks(run, synth.pairs(), tight, 75, 1.0, decided)["cluster_cap"]
    assert ok["ok"] and not bad["ok"]
    assert bad["worst_share_of_cap"] == pytest.approx(10 * ok["worst_share_of_cap"], rel=1e-9)


def test_closes_and_changed_bars_against_a_direct_count(synth):
    cal = np.asarray(synth.ts_ms)
    closes = closes_on(synth.pairs(), cal)
    for i, b in enumerate(synth.bars):
        assert np.array_equal(closes[i, np.isin(cal, b.ts_ms)], np.asarray(b.close))
    b = synth.bars[0]
    assert changed_bars(b, b) == 0
    sessions = session_numbers(np.asarray(b.ts_ms), b.tz)
    gapped = transform(Gap(name="g", pct=0.1), b, 100, sessions)
    assert changed_bars(b, gapped) == len(b) - 100
    assert np.allclose(np.asarray(gapped.close[100:]), 1.1 * np.asarray(b.close[100:]))


def test_a_symbol_not_in_the_data_or_on_a_fault_is_refused(synth, tmp_path):
    with pytest.raises(StressError, match="not in the data"):
        run_account_scenarios(_cfg(), synth, [Gap(name="g", pct=0.1, symbol="NOPE")],
                              event_factory("ma_cross"), tmp_path)  # fmt: skip
    bad = tmp_path / "outage.toml"
    bad.write_text('name = "o"\nkind = "outage"\nsymbol = "SYN1"\n')
    with pytest.raises(StressError, match="whole feed"):
        load_scenario(bad)


def test_caps_are_judged_on_the_value_an_entry_was_decided_at(synth, tmp_path):
    from tools.stress.account import Decision, decided_peaks
    from tools.stress.scenarios import JudgeLimits, position_peaks

    fine = JudgeLimits(0.02, 1_000_000, 200_000.0, 1.0, True)
    broken = JudgeLimits(0.02, 1_000_000, 1.0, 1.0, True)
    (ok,) = run_account_scenarios(_cfg(), synth, [], event_factory("ma_cross"), tmp_path / "a",
                                  limits=fine)  # fmt: skip
    (bad,) = run_account_scenarios(_cfg(), synth, [], event_factory("ma_cross"), tmp_path / "b",
                                   limits=broken)  # fmt: skip
    assert ok["checks"]["caps_held"] and not bad["checks"]["caps_held"]
    assert bad["verdict"] == "FAIL" and any("as decided" in p for p in bad["problems"])
    for d in ok["instruments"].values():
        if d["trades"]:
            # decided on the intent's price, filled within a bar of it
            assert d["max_position_value_decided"] == pytest.approx(d["max_position_value"],
                                                                     rel=0.02)  # fmt: skip
    # With no decisions known every fill is valued at its own price: the fills' peaks.
    fills = [
        {"token": "A", "side": side, "qty": q, "price": px, "client_order_id": cid}
        for side, q, px, cid in (("BUY", 3, 10.0, "x"), ("BUY", 2, 12.0, "y"),
                                 ("SELL", 5, 11.0, "z"))
    ]  # fmt: skip
    assert decided_peaks(fills, {}) == {"A": position_peaks(fills)["A"][1]} == {"A": 60.0}
    assert decided_peaks(fills, {"y": Decision(11.0, 0, "A", 2)}) == {"A": 55.0}
